"""NT-Xent against slow versions written straight from the formula, over batch sizes and temperatures."""

import math
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from models.loss import nt_xent, nt_xent_gathered
from utils import distributed as du


def nt_xent_loop(z_a: torch.Tensor, z_b: torch.Tensor, t: float) -> torch.Tensor:
    """SimCLR's NT-Xent, one anchor at a time: -log(exp(s_ip/t) / sum_{k != i} exp(s_ik/t)), mean over 2B."""
    z = torch.cat([z_a, z_b]).double()
    n = z.shape[0]
    b = n // 2
    total = torch.zeros((), dtype=torch.float64)
    for i in range(n):
        p = (i + b) % n
        sims = [torch.dot(z[i], z[k]) / (z[i].norm() * z[k].norm()) / t for k in range(n)]
        den = sum(torch.exp(sims[k]) for k in range(n) if k != i)
        total = total - torch.log(torch.exp(sims[p]) / den)
    return total / n


def nt_xent_broadcast(z_a: torch.Tensor, z_b: torch.Tensor, t: float) -> torch.Tensor:
    """The published formulation: a [2B, 2B, D] broadcast cosine, positives vs negatives, summed CE / 2B."""
    b = z_a.shape[0]
    n = 2 * b
    z = torch.cat([z_a, z_b])
    sim = torch.nn.CosineSimilarity(dim=2)(z.unsqueeze(1), z.unsqueeze(0)) / t
    pos = torch.cat([torch.diag(sim, b), torch.diag(sim, -b)]).reshape(n, 1)
    mask = torch.ones(n, n, dtype=torch.bool)
    mask.fill_diagonal_(False)
    for i in range(b):
        mask[i, b + i] = False
        mask[b + i, i] = False
    neg = sim[mask].reshape(n, -1)
    logits = torch.cat([pos, neg], dim=1)
    return torch.nn.functional.cross_entropy(logits, torch.zeros(n, dtype=torch.long), reduction="sum") / n


@pytest.mark.parametrize("b", [1, 2, 3, 8, 33])
@pytest.mark.parametrize("t", [0.07, 0.5, 1.0])
def test_matches_formula_and_published(b, t):
    g = torch.Generator().manual_seed(b * 100 + int(t * 100))
    z_a, z_b = torch.randn(b, 16, generator=g), torch.randn(b, 16, generator=g)
    ours = nt_xent(z_a, z_b, t)
    assert ours.shape == ()
    assert torch.allclose(ours.double(), nt_xent_loop(z_a, z_b, t), atol=1e-5)
    assert torch.allclose(ours, nt_xent_broadcast(z_a, z_b, t), atol=1e-5)


def test_gradients_match_published():
    g = torch.Generator().manual_seed(0)
    za, zb = torch.randn(6, 8, generator=g, requires_grad=True), torch.randn(6, 8, generator=g, requires_grad=True)
    ga = torch.autograd.grad(nt_xent(za, zb, 0.5), (za, zb))
    gb = torch.autograd.grad(nt_xent_broadcast(za, zb, 0.5), (za, zb))
    for x, y in zip(ga, gb, strict=True):
        assert torch.allclose(x, y, atol=1e-6)


def test_known_values():
    # Identical embeddings everywhere: every logit equal, loss = ln(2B - 1).
    z = torch.ones(4, 3)
    assert math.isclose(nt_xent(z, z, 0.5).item(), math.log(7), rel_tol=1e-6)
    # Perfectly separated pairs at low temperature: loss -> 0.
    e = torch.eye(4)
    assert nt_xent(e, e, 0.01).item() < 1e-6


def test_scale_invariance_and_symmetry():
    g = torch.Generator().manual_seed(1)
    za, zb = torch.randn(5, 4, generator=g), torch.randn(5, 4, generator=g)
    assert torch.allclose(nt_xent(za, zb), nt_xent(3 * za, 0.5 * zb), atol=1e-6)
    assert torch.allclose(nt_xent(za, zb), nt_xent(zb, za), atol=1e-6)


def test_shape_mismatch_is_refused():
    with pytest.raises(ValueError):
        nt_xent(torch.randn(4, 8), torch.randn(5, 8))


def nt_xent_autograd(z_a: torch.Tensor, z_b: torch.Tensor, t: float) -> torch.Tensor:
    """The matmul form left to autograd: cross-entropy of masked z z^T / t (the hand-written backward's reference)."""
    z = torch.nn.functional.normalize(torch.cat([z_a, z_b]).double(), dim=1)
    n = z.shape[0]
    logits = (z @ z.t() / t).masked_fill(torch.eye(n, dtype=torch.bool), float("-inf"))
    return torch.nn.functional.cross_entropy(logits, torch.arange(n).roll(n // 2))


@pytest.mark.parametrize("b", [1, 2, 7, 64])
@pytest.mark.parametrize("t", [0.07, 0.5])
def test_hand_written_backward_matches_autograd(b, t):
    g = torch.Generator().manual_seed(7 * b)
    za, zb = torch.randn(b, 12, generator=g, requires_grad=True), torch.randn(b, 12, generator=g, requires_grad=True)
    ours = nt_xent(za, zb, t)
    grads = torch.autograd.grad(3.0 * ours, (za, zb))  # a non-unit upstream gradient
    ref = nt_xent_autograd(za, zb, t)
    ref_grads = torch.autograd.grad(3.0 * ref, (za, zb))
    assert torch.allclose(ours.double(), ref, atol=1e-5)
    for x, y in zip(grads, ref_grads, strict=True):
        assert x.dtype == torch.float32
        assert torch.allclose(x, y, atol=1e-5, rtol=1e-4)


def test_gradient_reaches_shared_input_and_repeats_with_retain_graph():
    # MMGR feeds view 1's embedding to both terms: gradients of the two terms must add up.
    g = torch.Generator().manual_seed(3)
    z1, z2, zp = (torch.randn(5, 8, generator=g, requires_grad=True) for _ in range(3))
    loss = 0.5 * nt_xent(z1, zp) + 0.5 * nt_xent(z1, z2)
    loss.backward(retain_graph=True)
    first = z1.grad.clone()
    ref = 0.5 * nt_xent_autograd(z1, zp, 0.5) + 0.5 * nt_xent_autograd(z1, z2, 0.5)
    assert torch.allclose(first, torch.autograd.grad(ref, z1)[0], atol=1e-6)
    z1.grad = None
    loss.backward()  # the saved softmax is not modified by the first backward
    assert torch.equal(z1.grad, first)


def test_fp32_inside_autocast_and_for_half_inputs():
    g = torch.Generator().manual_seed(4)
    za, zb = torch.randn(16, 32, generator=g), torch.randn(16, 32, generator=g)
    ref = nt_xent(za, zb, 0.1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        inside = nt_xent(za, zb, 0.1)
    assert inside.dtype == torch.float32 and torch.allclose(inside, ref, atol=1e-6)
    za_h, zb_h = za.bfloat16().requires_grad_(), zb.bfloat16().requires_grad_()
    half = nt_xent(za_h, zb_h, 0.1)
    half.backward()
    assert half.dtype == torch.float32 and za_h.grad.dtype == torch.bfloat16
    assert torch.allclose(half, nt_xent(za_h.detach().float(), zb_h.detach().float(), 0.1), atol=1e-6)


# ---------------------------------------------------------------------------------------- keep mask
# --empty_poi_tiles exclude: pairs outside ``keep`` (tiles without POIs) take no part in the term.


def nt_xent_masked_loop(z_a: torch.Tensor, z_b: torch.Tensor, t: float, keep: torch.Tensor) -> torch.Tensor:
    """The masked loss from its definition: over the anchors i of kept pairs only,
    -log(exp(s_ip/t) / sum_{k kept, k != i} exp(s_ik/t)), mean over the 2K kept rows; 0 when K < 2."""
    z = torch.cat([z_a, z_b]).double()
    b = z_a.shape[0]
    rows = [i for i in range(2 * b) if keep[i % b]]
    if len(rows) < 4:  # fewer than 2 kept pairs
        return torch.zeros((), dtype=torch.float64)
    total = torch.zeros((), dtype=torch.float64)
    for i in rows:
        p = (i + b) % (2 * b)
        sim = {k: torch.dot(z[i], z[k]) / (z[i].norm() * z[k].norm()) / t for k in rows}
        den = sum(torch.exp(sim[k]) for k in rows if k != i)
        total = total - torch.log(torch.exp(sim[p]) / den)
    return total / len(rows)


def _masks(b: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(b)
    return [
        torch.ones(b, dtype=torch.bool),
        torch.rand(b, generator=g) < 0.7,
        torch.arange(b) % 3 == 0,
        torch.arange(b) == b - 1,  # one kept pair
        torch.zeros(b, dtype=torch.bool),
    ]


@pytest.mark.parametrize("b", [1, 2, 5, 12])
@pytest.mark.parametrize("t", [0.07, 0.5, 1.0])
def test_masked_matches_definition(b, t):
    g = torch.Generator().manual_seed(b * 10 + int(t * 100))
    za, zb = torch.randn(b, 8, generator=g), torch.randn(b, 8, generator=g)
    for keep in _masks(b):
        ours = nt_xent(za, zb, t, keep)
        assert ours.shape == () and ours.dtype == torch.float32
        assert torch.allclose(ours.double(), nt_xent_masked_loop(za, zb, t, keep), atol=1e-5), keep


def test_masked_equals_loss_on_kept_rows_only():
    g = torch.Generator().manual_seed(5)
    za, zb = torch.randn(9, 6, generator=g), torch.randn(9, 6, generator=g)
    keep = torch.tensor([1, 0, 1, 1, 0, 0, 1, 1, 0], dtype=torch.bool)
    assert torch.allclose(nt_xent(za, zb, 0.5, keep), nt_xent(za[keep], zb[keep], 0.5), atol=1e-7)
    # what a dropped row holds changes nothing
    za2, zb2 = za.clone(), zb.clone()
    za2[~keep], zb2[~keep] = 100.0, -3.0
    assert torch.equal(nt_xent(za2, zb2, 0.5, keep), nt_xent(za, zb, 0.5, keep))


def test_all_kept_is_the_published_loss_bit_for_bit():
    g = torch.Generator().manual_seed(6)
    za = torch.randn(16, 32, generator=g, requires_grad=True)
    zb = torch.randn(16, 32, generator=g, requires_grad=True)
    plain = nt_xent(za, zb, 0.5)
    masked = nt_xent(za, zb, 0.5, torch.ones(16, dtype=torch.bool))
    assert torch.equal(plain, masked)
    for x, y in zip(torch.autograd.grad(plain, (za, zb)), torch.autograd.grad(masked, (za, zb)), strict=True):
        assert torch.equal(x, y)


def test_dropped_rows_get_zero_gradient_and_kept_rows_the_subset_gradient():
    g = torch.Generator().manual_seed(7)
    za = torch.randn(10, 8, generator=g, requires_grad=True)
    zb = torch.randn(10, 8, generator=g, requires_grad=True)
    keep = torch.arange(10) % 4 != 1
    ga, gb = torch.autograd.grad(nt_xent(za, zb, 0.2, keep), (za, zb))
    assert torch.equal(ga[~keep], torch.zeros_like(ga[~keep])) and torch.equal(gb[~keep], torch.zeros_like(gb[~keep]))
    assert ga[keep].abs().sum() > 0 and gb[keep].abs().sum() > 0
    sa = za.detach()[keep].requires_grad_()
    sb = zb.detach()[keep].requires_grad_()
    ref = torch.autograd.grad(nt_xent_autograd(sa, sb, 0.2), (sa, sb))
    assert torch.allclose(ga[keep], ref[0], atol=1e-5) and torch.allclose(gb[keep], ref[1], atol=1e-5)


@pytest.mark.parametrize("n_kept", [0, 1])
def test_fewer_than_two_kept_pairs_give_zero_without_nan(n_kept):
    g = torch.Generator().manual_seed(8)
    za = torch.randn(6, 8, generator=g, requires_grad=True)
    zb = torch.randn(6, 8, generator=g, requires_grad=True)
    keep = torch.arange(6) < n_kept
    loss = nt_xent(za, zb, 0.5, keep)
    assert loss.item() == 0.0 and loss.requires_grad
    # in the MMGR objective the other term still trains; the masked term adds exactly nothing
    total = 0.5 * loss + 0.5 * nt_xent(za, zb, 0.5)
    total.backward()
    ref_a, ref_b = torch.autograd.grad(0.5 * nt_xent(za, zb, 0.5), (za, zb))
    assert torch.isfinite(za.grad).all() and torch.allclose(za.grad, ref_a) and torch.allclose(zb.grad, ref_b)


def test_bad_mask_shape_is_refused():
    with pytest.raises(ValueError, match="keep"):
        nt_xent(torch.randn(4, 8), torch.randn(4, 8), 0.5, torch.ones(3, dtype=torch.bool))


# Under torchrun: 2 gloo CPU processes, 4 pairs each; rank 1 keeps one pair, rank 0 three, and in the
# second case no pair anywhere (the term must be 0 on every rank, with gradients, and no NaN).
_WORLD, _B = 2, 4
_KEEPS = (
    torch.tensor([1, 0, 1, 1, 0, 0, 1, 0], dtype=torch.bool),
    torch.zeros(8, dtype=torch.bool),
    torch.ones(8, dtype=torch.bool),
)


def _pairs() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(11)
    return torch.randn(_WORLD * _B, 6, generator=g), torch.randn(_WORLD * _B, 6, generator=g)


def _masked_worker(rank: int, init_file: str, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=_WORLD)
    try:
        results = []
        for keep in _KEEPS:
            za, zb = (x[rank * _B : (rank + 1) * _B].clone().requires_grad_() for x in _pairs())
            loss = nt_xent_gathered(za, zb, 0.3, keep[rank * _B : (rank + 1) * _B])
            loss.backward()  # gather_rows' backward sums every rank's share onto these rows
            results.append({"loss": du.all_reduce_mean(loss.detach()), "ga": za.grad, "gb": zb.grad})
        torch.save(results, f"{out}.{rank}")
    finally:
        du.cleanup()


def test_gathered_masked_equals_single_process_on_the_global_batch(tmp_path: Path):
    out = str(tmp_path / "res")
    mp.spawn(_masked_worker, args=(str(tmp_path / "init"), out), nprocs=_WORLD, join=True)
    for i, keep in enumerate(_KEEPS):
        za, zb = (x.clone().requires_grad_() for x in _pairs())
        ref = nt_xent(za, zb, 0.3, keep)
        # Each rank's rows get the gradient of the ranks' summed losses, W x their mean (which DDP then
        # divides by W when it averages the parameter gradients).
        ga, gb = (g * _WORLD for g in torch.autograd.grad(ref, (za, zb)))
        for r in range(_WORLD):
            res = torch.load(f"{out}.{r}", weights_only=True)[i]
            rows = slice(r * _B, (r + 1) * _B)
            assert torch.allclose(res["loss"], ref.detach(), atol=1e-6), (i, res["loss"], ref)
            assert torch.isfinite(res["ga"]).all() and torch.isfinite(res["gb"]).all()
            assert torch.allclose(res["ga"], ga[rows], atol=1e-6) and torch.allclose(res["gb"], gb[rows], atol=1e-6)
