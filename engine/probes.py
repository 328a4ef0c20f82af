"""Fast probes on exported region embeddings: closed-form ridge regression and kNN (NumPy only).

The second evaluation protocol (beside the trained head of res_pop.py / res_func.py): embeddings are
computed once (embed.py), then each target is predicted from the training tiles' embeddings in
milliseconds. Features are standardised with the training tiles' mean and std.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from data.downstream import read_list, read_target, select_fraction
from utils.errors import UserError
from utils.metrics import distribution_metrics, regression_metrics

__all__ = ["ridge_fit_predict", "knn_predict", "load_targets", "probe_target"]


def _standardise(x_train: np.ndarray, x_test: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    mu = x_train.mean(axis=0)
    sd = x_train.std(axis=0)
    sd = np.where(sd > 1e-8, sd, 1.0)  # constant columns (e.g. dead ReLUs) carry nothing, keep them at 0
    return (x_train - mu) / sd, (x_test - mu) / sd


def ridge_fit_predict(x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray,
                      alphas: np.ndarray | None = None) -> tuple[np.ndarray, float]:
    """Ridge regression with the penalty chosen by leave-one-out error, in closed form.

    Args:
        x_train: ``[N, D]`` features; y_train: ``[N, K]`` targets; x_test: ``[M, D]``.
        alphas: penalties to try (default ``N * logspace(-4, 2, 13)``, on standardised features).

    Returns:
        ``([M, K] predictions, chosen alpha)``. With the SVD ``A = U S V^T`` of the standardised,
        centred features, the hat matrix is ``U diag(s²/(s²+α)) U^T`` and the leave-one-out residual
        is ``(y - ŷ) / (1 - h_ii)`` (``h_ii`` plus ``1/N`` for the fitted intercept), so every alpha
        costs one matrix product.
    """
    a, b = _standardise(np.asarray(x_train, np.float64), np.asarray(x_test, np.float64))
    y = np.asarray(y_train, np.float64).reshape(len(a), -1)
    n = len(a)
    y_mean = y.mean(axis=0)
    yc = y - y_mean
    u, s, vt = np.linalg.svd(a, full_matrices=False)
    uty = u.T @ yc
    if alphas is None:
        alphas = n * np.logspace(-4, 2, 13)
    best = (np.inf, float(alphas[0]))
    for alpha in alphas:
        f = s ** 2 / (s ** 2 + alpha)
        fitted = u @ (f[:, None] * uty)
        h = (u ** 2) @ f + 1.0 / n
        loo = (yc - fitted) / np.maximum(1.0 - h, 1e-6)[:, None]
        err = float(np.mean(loo ** 2))
        if err < best[0]:
            best = (err, float(alpha))
    alpha = best[1]
    w = vt.T @ ((s / (s ** 2 + alpha))[:, None] * uty)
    return b @ w + y_mean, alpha


def knn_predict(x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, k: int = 10) -> np.ndarray:
    """Mean target of the ``k`` nearest training tiles by cosine similarity of standardised features.

    ``[N, D], [N, K], [M, D] -> [M, K]``. The mean of distributions is a distribution, so the same
    probe serves proportions.
    """
    a, b = _standardise(np.asarray(x_train, np.float64), np.asarray(x_test, np.float64))
    a /= np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)
    b /= np.maximum(np.linalg.norm(b, axis=1, keepdims=True), 1e-12)
    y = np.asarray(y_train, np.float64).reshape(len(a), -1)
    k = min(k, len(a))
    nn = np.argpartition(-(b @ a.T), k - 1, axis=1)[:, :k]  # [M, k]
    return y[nn].mean(axis=1)


def load_targets(root: Path, target_dir: str, names: list[str]) -> np.ndarray:
    """``[N, K]`` targets of the named tiles from ``root/target_dir/STEM.txt``."""
    tdir = Path(root) / target_dir
    if not tdir.is_dir():
        raise UserError(f"target directory {tdir} does not exist; check the target names")
    rows = [read_target(tdir / (Path(n).stem + ".txt")) for n in names]
    if len({r.shape for r in rows}) != 1:
        raise UserError(f"target files in {tdir} hold different numbers of values; each must hold the same count")
    return np.stack(rows).astype(np.float64)


def probe_target(features: np.ndarray, names: list[str], root: Path, target_dir: str, train_list: str, val_list: str,
                 k: int = 10, log_target: bool = False, label_fraction: float = 1.0, seed: int = 0) -> dict[str, dict[str, float]]:
    """Ridge and kNN probes of one target directory: fit on the training list, score on the validation list.

    ``features`` ``[N, D]`` has one row per name in ``names`` (the export order). Targets with one
    value are scored as regression (MAE/RMSE/R², original units; ``log_target`` fits ``log1p``; ridge
    predictions are clipped to the training targets' range),
    targets with several as distributions (L1/KL/cos; ridge outputs are clipped at 0 and renormalised).
    Returns ``{"ridge": metrics, "knn": metrics}``.
    """
    index = {Path(n).stem: i for i, n in enumerate(names)}
    root = Path(root)
    tr = select_fraction(read_list(root / train_list), label_fraction, seed)
    va = read_list(root / val_list)
    missing = [n for n in tr + va if Path(n).stem not in index]
    if missing:
        raise UserError(f"{len(missing)} listed tiles have no exported embedding (first: {missing[0]}); export every listed tile")
    x_tr = features[[index[Path(n).stem] for n in tr]]
    x_va = features[[index[Path(n).stem] for n in va]]
    y_tr, y_va = load_targets(root, target_dir, tr), load_targets(root, target_dir, va)
    out: dict[str, dict[str, float]] = {}
    if y_tr.shape[1] == 1:
        fwd, inv = (np.log1p, np.expm1) if log_target else (lambda v: v, lambda v: v)
        ridge, alpha = ridge_fit_predict(x_tr, fwd(y_tr), x_va)
        # A linear probe extrapolates freely; keep it inside the training targets' range (in fitting
        # units) so one outlying tile cannot dominate R² after expm1.
        ridge = np.clip(ridge, fwd(y_tr).min(), fwd(y_tr).max())
        out["ridge"] = {**regression_metrics(y_va[:, 0], inv(ridge)[:, 0]), "alpha": alpha}
        out["knn"] = regression_metrics(y_va[:, 0], inv(knn_predict(x_tr, fwd(y_tr), x_va, k))[:, 0])
    else:
        ridge, alpha = ridge_fit_predict(x_tr, y_tr, x_va)
        ridge = np.clip(ridge, 1e-6, None)
        ridge /= ridge.sum(axis=1, keepdims=True)
        out["ridge"] = {**distribution_metrics(y_va, ridge), "alpha": alpha}
        out["knn"] = distribution_metrics(y_va, knn_predict(x_tr, y_tr, x_va, k))
    return out
