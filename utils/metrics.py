"""Downstream metrics: regression (population, GDP) through scikit-learn, distributions (urban function
proportions) and the spread of predictions, which scikit-learn does not provide."""

from __future__ import annotations

import numpy as np
from sklearn.metrics import mean_absolute_error, r2_score, root_mean_squared_error

__all__ = ["regression_metrics", "distribution_metrics", "std_ratio"]


def regression_metrics(y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, float]:
    """MAE, RMSE and R² of ``[N]`` predictions (scikit-learn).

    R² = 1 - SS_res / SS_tot (SS_tot about the mean of ``y_true``); NaN when ``y_true`` is constant
    (scikit-learn would report 0 or 1 there, which reads like a result).
    """
    y_true = np.asarray(y_true, dtype=np.float64).reshape(-1)
    y_pred = np.asarray(y_pred, dtype=np.float64).reshape(-1)
    constant = bool(np.all(y_true == y_true[0]))
    return {
        "MAE": float(mean_absolute_error(y_true, y_pred)),
        "RMSE": float(root_mean_squared_error(y_true, y_pred)),
        "R2": float("nan") if constant else float(r2_score(y_true, y_pred)),
    }


def distribution_metrics(p_true: np.ndarray, p_pred: np.ndarray, eps: float = 1e-8) -> dict[str, float]:
    """L1, KL divergence and cosine similarity of ``[N, K]`` predicted distributions, averaged over tiles.

    Per tile: ``L1 = sum_k |p_k - q_k|`` (0..2), ``KL = sum_k p_k log(p_k / q_k)`` (true ``p`` against the
    prediction ``q``; terms with ``p_k = 0`` contribute 0, ``q`` is floored at ``eps`` so a hard zero
    stays finite), ``cos = p.q / (|p| |q|)``. These are the metrics of the urban-function literature;
    scikit-learn has none of them per row.
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


def std_ratio(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """``std(pred[:, k]) / std(true[:, k])`` averaged over the K columns of ``[N, K]`` (or ``[N]``) arrays.

    0 for a prediction that is the same for every tile, about 1 when the predictions spread like the
    truth; columns whose truth is constant are left out (NaN when all are).
    """
    t = np.asarray(y_true, dtype=np.float64).reshape(len(y_true), -1)
    p = np.asarray(y_pred, dtype=np.float64).reshape(len(y_pred), -1)
    sd_t, sd_p = t.std(axis=0), p.std(axis=0)
    keep = sd_t > 0
    return float(np.mean(sd_p[keep] / sd_t[keep])) if keep.any() else float("nan")
