"""Regression metrics of the population/GDP task, computed directly (no scikit-learn)."""

from __future__ import annotations

import numpy as np

__all__ = ["regression_metrics"]


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
