"""Downstream tasks as objects: everything that distinguishes one task from another, so that the loop
(engine/downstream.py) and the reports (engine/reports.py) never ask which task they run.

A task's hooks, in the order a run uses them:

* :meth:`Task.check` — validate the targets read from disk (``[N, K]``), before anything trains;
* :meth:`Task.to_train` — original targets -> training units (identity unless ``--log_target``);
* :meth:`Task.fit` — a copy of the task that knows the training targets (their mean and std for
  ``--target_norm zscore``);
* :meth:`Task.init_head` — ``--head_bias_init mean``: start the head's output at the mean target;
* :meth:`Task.loss` — raw head output and targets in training units -> scalar loss;
* :meth:`Task.predict` — raw head output -> prediction in training units;
* :meth:`Task.to_original` — predictions in training units -> original units (what metrics and files see);
* :meth:`Task.metrics` — named floats of the predictions in original units;
* :meth:`Task.warning` — a sentence when the predictions show a known failure (a dead head), else None.

Two tasks: :class:`RegressionTask` (population, GDP: one value, ReLU output, MSE; docs/downstream.md)
and :class:`DistributionTask` (urban functions: K proportions, softmax output, KL loss).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from engine.maps import write_distribution_map, write_prediction_map, write_prediction_tif
from prepare.tile_index import TileIndex
from utils.errors import UserError
from utils.metrics import distribution_metrics, regression_metrics

__all__ = ["Task", "RegressionTask", "DistributionTask", "regression_task", "distribution_task", "TARGET_NORMS"]


@dataclass(frozen=True)
class Task:
    """Base class: identity units, no checks, no warning. Subclasses set the class attributes.

    Attributes:
        name: short name used in messages.
        columns: names of the K target columns (CSV headers).
        best_key / higher_is_better: the metric that picks the best epoch.
        scatter: whether a predicted-vs-true scatter plot makes sense (one value per tile).
        log_scale: draw that plot on symlog axes (targets trained in log units).
    """

    columns: tuple[str, ...] = ("value",)
    name = "task"
    best_key = ""
    higher_is_better = True
    scatter = False
    log_scale = False

    def check(self, y: torch.Tensor, where: Path) -> torch.Tensor:
        """Targets ``[N, K]`` read from ``where`` -> the targets to use (raises UserError when invalid)."""
        return y

    def to_train(self, y: torch.Tensor) -> torch.Tensor:
        """Original targets ``[N, K]`` -> training units."""
        return y

    def to_original(self, p: np.ndarray) -> np.ndarray:
        """Predictions ``[N, K]`` in training units -> original units."""
        return p

    def fit(self, y_train: torch.Tensor) -> Task:
        """The task to train with, given the training targets ``[N, K]`` in training units (itself here)."""
        return self

    def describe(self) -> str:
        """What the head learns, for the run's opening line ("" when there is nothing to add)."""
        return ""

    def predict(self, out: torch.Tensor) -> torch.Tensor:
        """Raw head output ``[B, K]`` -> prediction in training units ``[B, K]``."""
        raise NotImplementedError

    def loss(self, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Raw head output ``[B, K]`` and targets in training units ``[B, K]`` -> scalar."""
        raise NotImplementedError

    def metrics(self, y: np.ndarray, p: np.ndarray) -> dict[str, float]:
        """True ``[N, K]`` and predicted ``[N, K]`` in original units -> named floats."""
        raise NotImplementedError

    def init_head(self, last: torch.nn.Linear, y_train: torch.Tensor) -> None:
        """``--head_bias_init mean``: set the head's last bias from the training targets ``[N, K]``
        (training units); the weights keep their initialisation."""
        raise NotImplementedError

    def warning(self, pred: np.ndarray) -> str | None:
        """A sentence naming a failure visible in the predictions ``[N, K]`` (original units), or None."""
        return None

    def explain_metrics(self) -> str:
        """How to read the metrics, in one sentence (printed under comparisons)."""
        return ""

    def write_map(
        self,
        index: TileIndex,
        names: list[str],
        truth: np.ndarray,
        pred: np.ndarray,
        pred_std: np.ndarray,
        in_domain: np.ndarray | None,
        stem: Path,
        split: list[str],
        title: str,
        label: str = "value",
    ) -> list[Path]:
        """Maps of ``pred`` ``[N, K]`` and its spread ``pred_std`` ``[N, K]`` against ``truth`` ``[N, K]``
        (NaN rows: unlabelled tiles) on the tiles ``names`` of ``index``, with ``in_domain`` ``[N]`` (None: not
        known) (engine/maps.py): ``<stem>.gpkg``, ``<stem>.png`` and what else the task writes; returns the
        paths written. ``label`` names the values (the target)."""
        raise NotImplementedError


def _nonnegative(y: torch.Tensor, where: Path) -> torch.Tensor:
    if (y < 0).any():
        raise UserError(
            f"{where} holds negative targets, which --log_target (log1p) cannot take; drop the flag or fix the files"
        )
    return y


TARGET_NORMS = ("zscore", "none")


@dataclass(frozen=True)
class RegressionTask(Task):
    """Population/GDP: one value per tile, MSE, MAE/RMSE/R² in original units (docs/downstream.md).

    ``target_norm="none"`` is the published head: prediction = ReLU(h) for the head's output ``h``,
    loss = MSE(ReLU(h), y). ``target_norm="zscore"`` (ours, the default of res_pop.py) trains ``h`` on
    ``(y - mu) / sigma``, the mean and std of the training targets (set by :meth:`fit`), with
    loss = MSE(h, (y - mu) / sigma), and predicts ReLU(mu + sigma * h): the ReLU stays on the prediction
    in target units, so tiles below the mean remain representable and no tile's gradient is cut.
    With ``log_target`` the head learns ``log1p(y)`` (mu and sigma are then those of ``log1p(y)``);
    predictions are mapped back with ``expm1`` before the metrics, so figures stay comparable.
    """

    log_target: bool = False
    target_norm: str = "zscore"
    mu: float = 0.0
    sigma: float = 1.0
    name = "regression"
    best_key = "R2"
    higher_is_better = True
    scatter = True

    def __post_init__(self) -> None:
        if self.target_norm not in TARGET_NORMS:
            raise UserError(f"--target_norm must be one of {', '.join(TARGET_NORMS)}, got {self.target_norm!r}")

    @property
    def log_scale(self) -> bool:  # type: ignore[override]
        return self.log_target

    def check(self, y: torch.Tensor, where: Path) -> torch.Tensor:
        return _nonnegative(y, where) if self.log_target else y

    def to_train(self, y: torch.Tensor) -> torch.Tensor:
        return torch.log1p(y) if self.log_target else y

    def to_original(self, p: np.ndarray) -> np.ndarray:
        return np.expm1(p) if self.log_target else p

    def fit(self, y_train: torch.Tensor) -> RegressionTask:
        if self.target_norm == "none":
            return self
        y = y_train.double()
        sigma = float(y.std(unbiased=False))
        # Constant training targets: nothing to scale; keep the unit so the head still trains.
        return replace(self, mu=float(y.mean()), sigma=sigma if sigma > 0 else 1.0)

    def describe(self) -> str:
        if self.target_norm == "none":
            return ""
        units = "log1p(target)" if self.log_target else "target"
        return f"; head trained on z-scores of the {units} (training mean {self.mu:.6g}, std {self.sigma:.6g})"

    def _z(self, y: torch.Tensor) -> torch.Tensor:
        return (y - self.mu) / self.sigma

    def predict(self, out: torch.Tensor) -> torch.Tensor:
        if self.target_norm == "none":
            return F.relu(out)
        return F.relu(self.mu + self.sigma * out)

    def loss(self, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if self.target_norm == "none":
            return F.mse_loss(F.relu(out), y)
        return F.mse_loss(out, self._z(y))

    def metrics(self, y: np.ndarray, p: np.ndarray) -> dict[str, float]:
        return regression_metrics(y[:, 0], p[:, 0])

    @torch.no_grad()
    def init_head(self, last: torch.nn.Linear, y_train: torch.Tensor) -> None:
        # The output h starts at the mean of what it learns: the target, or its z-score (about 0).
        target = y_train.float() if self.target_norm == "none" else self._z(y_train.double()).float()
        last.bias.copy_(target.mean(dim=0))

    def explain_metrics(self) -> str:
        return (
            "R2 = fraction of the variance explained (1 perfect, 0 no better than the validation tiles' own mean; "
            "higher is better); MAE, RMSE in target units (lower is better)."
        )

    def warning(self, pred: np.ndarray) -> str | None:
        # With z-scored targets the loss has no ReLU, so the head cannot die.
        if pred.any() or self.target_norm != "none":
            return None
        return (
            "every prediction is 0: the head's output is below zero for every tile, so its ReLU passes no gradient "
            "(a dead head); try --target_norm zscore, --head_bias_init mean, a lower --lr or another --seed"
        )

    def write_map(
        self,
        index: TileIndex,
        names: list[str],
        truth: np.ndarray,
        pred: np.ndarray,
        pred_std: np.ndarray,
        in_domain: np.ndarray | None,
        stem: Path,
        split: list[str],
        title: str,
        label: str = "value",
    ) -> list[Path]:
        """GeoPackage, PNG and a GeoTIFF of prediction and pred_std, one pixel per tile (engine/maps.py)."""
        gpkg, png, tif = (stem.with_name(stem.name + ext) for ext in (".gpkg", ".png", ".tif"))
        write_prediction_map(
            index, names, truth[:, 0], pred[:, 0], gpkg, png, split, title, label, pred_std[:, 0], in_domain
        )
        write_prediction_tif(index, names, pred[:, 0], pred_std[:, 0], tif, label)
        return [png, gpkg, tif]


@dataclass(frozen=True)
class DistributionTask(Task):
    """Urban functions: prediction = softmax(output), loss KL(true || predicted), L1/KL/cos metrics."""

    name = "distribution"
    best_key = "KL"
    higher_is_better = False

    def check(self, y: torch.Tensor, where: Path) -> torch.Tensor:
        """Proportions: non-negative, rows renormalised to sum 1 (files rounded to a few decimals)."""
        sums = y.sum(dim=1)
        if (y < 0).any() or (sums <= 0).any():
            raise UserError(
                f"{where} holds a negative proportion or an all-zero row; each NAME.txt must hold K "
                "non-negative proportions summing to 1"
            )
        if ((sums - 1).abs() > 0.05).any():
            raise UserError(
                f"{where} holds rows summing to {float(sums[(sums - 1).abs().argmax()]):.3f}, not 1; "
                "each NAME.txt must hold the tile's K proportions"
            )
        return y / sums[:, None]

    def predict(self, out: torch.Tensor) -> torch.Tensor:
        return torch.softmax(out, dim=1)

    def loss(self, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        # batchmean: the KL divergence of each tile's distribution, averaged over tiles.
        return F.kl_div(F.log_softmax(out, dim=1), y, reduction="batchmean")

    def metrics(self, y: np.ndarray, p: np.ndarray) -> dict[str, float]:
        return distribution_metrics(y, p)

    def explain_metrics(self) -> str:
        return (
            "L1 and KL = distance between the predicted and the true mix of types (0 = identical; lower is "
            "better); cos = cosine similarity of the two mixes (1 = same mix; higher is better)."
        )

    @torch.no_grad()
    def init_head(self, last: torch.nn.Linear, y_train: torch.Tensor) -> None:
        # softmax(log mean) is the mean distribution
        last.bias.copy_(torch.log(y_train.float().mean(dim=0).clamp_min(1e-6)))

    def write_map(
        self,
        index: TileIndex,
        names: list[str],
        truth: np.ndarray,
        pred: np.ndarray,
        pred_std: np.ndarray,
        in_domain: np.ndarray | None,
        stem: Path,
        split: list[str],
        title: str,
        label: str = "value",
    ) -> list[Path]:
        """GeoPackage and PNG of the shares, their spread and the dominant class (engine/maps.py)."""
        gpkg, png = stem.with_name(stem.name + ".gpkg"), stem.with_name(stem.name + ".png")
        write_distribution_map(
            index, names, truth, pred, self.columns, gpkg, png, split, title, pred_std=pred_std, in_domain=in_domain
        )
        return [png, gpkg]


def regression_task(log_target: bool = False, target_norm: str = "zscore") -> RegressionTask:
    """The scalar regression task of ``res_pop.py`` (see :class:`RegressionTask`)."""
    return RegressionTask(log_target=log_target, target_norm=target_norm)


def distribution_task(columns: tuple[str, ...]) -> DistributionTask:
    """The distribution task of ``res_func.py`` with K named columns (see :class:`DistributionTask`)."""
    return DistributionTask(columns=tuple(columns))
