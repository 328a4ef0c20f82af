"""The downstream tasks' hooks (engine/tasks.py), and the z-scored regression head against its formula."""

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from engine.tasks import distribution_task, regression_task
from utils.errors import UserError

TYPES = ("residential", "commercial", "water")


def test_hooks_the_loop_calls_instead_of_asking_which_task_it_runs():
    pub, logreg, dist = regression_task(target_norm="none"), regression_task(log_target=True), distribution_task(TYPES)
    assert "dead head" in pub.warning(np.zeros((3, 1))) and "--target_norm zscore" in pub.warning(np.zeros((3, 1)))
    assert pub.warning(np.array([[0.0], [2.0]])) is None and dist.warning(np.zeros((2, 3))) is None
    assert regression_task().warning(np.zeros((3, 1))) is None  # z-scored: no ReLU in the loss, the head cannot die
    assert pub.scatter and not dist.scatter and logreg.log_scale and not pub.log_scale
    y = torch.tensor([[0.0], [np.e - 1]])
    assert torch.allclose(logreg.to_train(y), torch.tensor([[0.0], [1.0]]))
    np.testing.assert_allclose(logreg.to_original(np.array([[1.0]])), [[np.e - 1]])
    with pytest.raises(UserError, match="negative targets"):
        logreg.check(torch.tensor([[-1.0]]), Path("pop1km"))
    rows = dist.check(torch.tensor([[0.2, 0.2, 0.62]]), Path("func"))  # rounded files are renormalised
    assert torch.allclose(rows.sum(1), torch.ones(1))
    out = torch.tensor([[-1.0, 2.0, 0.5]])
    assert torch.allclose(dist.predict(out), torch.softmax(out, 1))
    assert torch.equal(pub.predict(out[:, :1]), torch.zeros(1, 1))
    assert dist.fit(torch.rand(4, 3)) is dist and pub.fit(torch.rand(4, 1)) is pub
    with pytest.raises(UserError, match="--target_norm"):
        regression_task(target_norm="minmax")


def test_published_head_formulas():
    """target_norm none: prediction ReLU(h), loss MSE(ReLU(h), y) on raw targets (the published head)."""
    task = regression_task(target_norm="none").fit(torch.tensor([[100.0], [3000.0]]))
    h, y = torch.tensor([[-5.0], [7.0]]), torch.tensor([[1.0], [2.0]])
    assert torch.equal(task.predict(h), F.relu(h)) and torch.equal(task.loss(h, y), F.mse_loss(F.relu(h), y))
    assert task.describe() == ""


@pytest.mark.parametrize("log_target", [False, True])
def test_zscore_head_formulas(log_target):
    """target_norm zscore: h learns (y - mu) / sigma of the training targets (training units) and the
    prediction is ReLU(mu + sigma h), mapped to original units by the task."""
    y_orig = torch.tensor([[0.0], [120.0], [3000.0], [48000.0]])
    task = regression_task(log_target=log_target)
    fitted = task.fit(task.to_train(y_orig))
    y = task.to_train(y_orig).double()
    assert fitted.mu == pytest.approx(float(y.mean())) and fitted.sigma == pytest.approx(float(y.std(unbiased=False)))
    h = torch.tensor([[-3.0], [-0.5], [0.0], [1.2]])
    expected = torch.clamp(fitted.mu + fitted.sigma * h, min=0)  # tiles below the mean stay representable
    assert torch.allclose(fitted.predict(h), expected)
    assert fitted.predict(h)[0, 0] == 0 and fitted.predict(h)[1, 0] > 0
    z = (task.to_train(y_orig) - fitted.mu) / fitted.sigma
    assert torch.allclose(fitted.loss(h, task.to_train(y_orig)), ((h - z) ** 2).mean())
    # h = z reproduces the training targets (in original units after to_original)
    back = fitted.to_original(fitted.predict(z).numpy())
    np.testing.assert_allclose(back, y_orig.numpy(), rtol=1e-4, atol=1e-2)
    assert "z-scores" in fitted.describe()
    # constant training targets: sigma falls back to 1 instead of dividing by 0
    assert regression_task().fit(torch.full((3, 1), 7.0)).sigma == 1.0


def test_head_bias_init_mean_starts_at_the_mean_target():
    last = torch.nn.Linear(8, 1)
    y = torch.tensor([[2.0], [4.0], [9.0]])
    regression_task(target_norm="none").init_head(last, y)
    assert torch.allclose(last.bias, torch.tensor([5.0]))
    task = regression_task().fit(y)
    task.init_head(last, y)
    assert torch.allclose(last.bias, torch.zeros(1), atol=1e-6)  # the mean z-score
    last = torch.nn.Linear(8, 3)
    y = torch.tensor([[0.5, 0.5, 0.0], [0.1, 0.3, 0.6]])
    distribution_task(("a", "b", "c")).init_head(last, y)
    # softmax of the bias alone is the mean distribution
    assert torch.allclose(torch.softmax(last.bias, 0), y.mean(0), atol=1e-5)
