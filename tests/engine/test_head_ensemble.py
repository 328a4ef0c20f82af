"""The stable protocol's head (engine/head_ensemble.py): stacked members equal separate published heads."""

import torch

from engine.head_ensemble import HeadEnsemble, member_predictions
from engine.tasks import regression_task
from models.heads import regression_head


def test_stacked_members_equal_separate_heads_forward_and_after_training():
    torch.manual_seed(0)
    heads = [regression_head(12, 2) for _ in range(3)]
    copies = [regression_head(12, 2) for _ in range(3)]
    for c, h in zip(copies, heads, strict=True):
        c.load_state_dict(h.state_dict())
    x = torch.randn(20, 12) * torch.linspace(0.1, 10, 12)  # dimensions of very different scales
    mean, std = x.mean(0), x.std(0, unbiased=False)
    ens = HeadEnsemble(heads, mean, std)
    z = (x - mean) / std
    out = ens(x)
    assert out.shape == (3, 20, 2)
    for m, c in enumerate(copies):
        torch.testing.assert_close(out[m], c(z), rtol=1e-5, atol=1e-6)
    # Training together on a summed loss == training each member alone (Adam is per parameter).
    y = torch.randn(20, 2)
    opt = torch.optim.Adam(ens.parameters(), lr=1e-2)
    opts = [torch.optim.Adam(c.parameters(), lr=1e-2) for c in copies]
    for _ in range(3):
        loss = torch.stack([torch.nn.functional.mse_loss(o, y) for o in ens(x)]).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
        for c, o in zip(copies, opts, strict=True):
            o.zero_grad()
            torch.nn.functional.mse_loss(c(z), y).backward()
            o.step()
    for m, c in enumerate(copies):
        torch.testing.assert_close(ens(x)[m], c(z), rtol=1e-4, atol=1e-5)


def test_member_predictions_in_original_units():
    torch.manual_seed(1)
    task = regression_task().fit(torch.tensor([[10.0], [30.0]]))  # mu 20, sigma 10
    ens = HeadEnsemble.draw(4, 1, 2, torch.zeros(4), torch.ones(4))
    x = torch.randn(5, 4)
    preds = member_predictions(ens, task, x, chunk=2)
    assert preds.shape == (2, 5, 1)
    with torch.no_grad():
        expected = torch.relu(20 + 10 * ens(x)).numpy()
    torch.testing.assert_close(torch.from_numpy(preds), torch.from_numpy(expected))
