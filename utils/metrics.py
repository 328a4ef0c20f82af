"""Downstream metrics, computed directly (no scikit-learn): regression (population, GDP) and
distributions (urban function proportions)."""

from __future__ import annotations

import numpy as np

__all__ = ["regression_metrics", "distribution_metrics"]


def regression_metrics(y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, float]:
    """MAE, RMSE and R² of ``[N]`` predictions.

    R² = 1 - SS_res / SS_tot (SS_tot about the mean of ``y_true``); NaN when ``y_true`` is constant.
    """
    y_true = np.asarray(y_true, dtype=np.float64).reshape(-1)
    y_pred = np.asarray(y_pred, dtype=np.float64).reshape(-1)
    err = y_pred - y_true
    ss_res = float(np.sum(err ** 2))
    ss_tot = float(np.sum((y_true - y_true.mean()) ** 2))
    return {
        "MAE": float(np.mean(np.abs(err))),
        "RMSE": float(np.sqrt(np.mean(err ** 2))),
        "R2": 1.0 - ss_res / ss_tot if ss_tot > 0 else float("nan"),
    }


def distribution_metrics(p_true: np.ndarray, p_pred: np.ndarray, eps: float = 1e-8) -> dict[str, float]:
    """L1, KL divergence and cosine similarity of ``[N, K]`` predicted distributions, averaged over tiles.

    Per tile: ``L1 = sum_k |p_k - q_k|`` (0..2), ``KL = sum_k p_k log(p_k / q_k)`` (true ``p`` against the
    prediction ``q``; terms with ``p_k = 0`` contribute 0, ``q`` is floored at ``eps`` so a hard zero
    stays finite), ``cos = p.q / (|p| |q|)``. These are the metrics of the urban-function literature.
    """
    p = np.asarray(p_true, dtype=np.float64)
    q = np.asarray(p_pred, dtype=np.float64)
    if p.ndim == 1:
        p, q = p[None], q[None]
    l1 = np.abs(p - q).sum(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        kl = np.where(p > 0, p * (np.log(np.maximum(p, eps)) - np.log(np.maximum(q, eps))), 0.0).sum(axis=1)
    cos = (p * q).sum(axis=1) / np.maximum(np.linalg.norm(p, axis=1) * np.linalg.norm(q, axis=1), eps)
    return {"L1": float(l1.mean()), "KL": float(kl.mean()), "cos": float(cos.mean())}
