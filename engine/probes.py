"""Fast probes on exported region embeddings, with scikit-learn: ridge regression and kNN.

The second evaluation protocol (beside the trained head of res_pop.py / res_func.py): embeddings are
computed once (embed.py), then each target is predicted from the training tiles' embeddings in
milliseconds. Features are standardised with the training tiles' mean and std (``StandardScaler``;
constant columns, e.g. dead ReLUs, stay at 0).

* ridge: ``RidgeCV``, the penalty chosen among ``N * logspace(-4, 2, 13)`` by its efficient exact
  leave-one-out error; scalar predictions are clipped to the training targets' range, distribution
  predictions clipped at 0 and renormalised;
* kNN: ``KNeighborsRegressor``, the mean target of the ``k`` nearest training tiles by cosine distance
  (a mean of distributions is a distribution).

Scored on the validation list (:func:`probe_target`) and, optionally, by K-fold cross-validation over
every labelled tile (:func:`probe_target_cv`), with folds grouped by spatial blocks when the data folder
has a tile index (docs/downstream.md).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from sklearn.linear_model import RidgeCV
from sklearn.model_selection import GroupKFold, KFold
from sklearn.neighbors import KNeighborsRegressor
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler

from data.downstream import read_list, read_target, select_fraction
from data.layout import check_target
from prepare.splits import block_ids
from prepare.tile_index import read_tile_index
from utils.errors import UserError
from utils.metrics import distribution_metrics, regression_metrics

__all__ = [
    "ridge_fit_predict",
    "knn_predict",
    "load_targets",
    "probe_target",
    "probe_target_cv",
    "cv_folds",
    "mean_predictor_scores",
]


def default_alphas(n: int) -> np.ndarray:
    """Penalties tried by the ridge probe on ``n`` standardised training tiles."""
    return n * np.logspace(-4, 2, 13)


def ridge_fit_predict(
    x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, alphas: np.ndarray | None = None
) -> tuple[np.ndarray, float]:
    """Ridge regression on standardised features, penalty by exact leave-one-out error (``RidgeCV``).

    Args:
        x_train: ``[N, D]`` features; y_train: ``[N, K]`` targets; x_test: ``[M, D]``.
        alphas: penalties to try (default :func:`default_alphas`); one penalty serves all K columns.

    Returns:
        ``([M, K] predictions, chosen alpha)``.
    """
    y = np.asarray(y_train, np.float64).reshape(len(x_train), -1)
    alphas = default_alphas(len(x_train)) if alphas is None else np.asarray(alphas, np.float64)
    model: Pipeline = make_pipeline(StandardScaler(), RidgeCV(alphas=alphas))
    model.fit(np.asarray(x_train, np.float64), y)
    pred = model.predict(np.asarray(x_test, np.float64)).reshape(len(x_test), -1)
    return pred, float(model[-1].alpha_)


def knn_predict(x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, k: int = 10) -> np.ndarray:
    """Mean target of the ``k`` nearest training tiles by cosine distance of standardised features.

    ``[N, D], [N, K], [M, D] -> [M, K]``.
    """
    y = np.asarray(y_train, np.float64).reshape(len(x_train), -1)
    knn = KNeighborsRegressor(n_neighbors=min(k, len(y)), metric="cosine", algorithm="brute")
    model = make_pipeline(StandardScaler(), knn).fit(np.asarray(x_train, np.float64), y)
    return model.predict(np.asarray(x_test, np.float64)).reshape(len(x_test), -1)


def load_targets(root: Path, target_dir: str, names: list[str]) -> np.ndarray:
    """``[N, K]`` targets of the named tiles from ``root/target_dir/STEM.txt``."""
    tdir = Path(root) / target_dir
    check_target(root, target_dir, "--probe")
    rows = [read_target(tdir / (Path(n).stem + ".txt")) for n in names]
    if len({r.shape for r in rows}) != 1:
        raise UserError(f"target files in {tdir} hold different numbers of values; each must hold the same count")
    return np.stack(rows).astype(np.float64)


def fit_predict(
    x_tr: np.ndarray, y_tr: np.ndarray, x_va: np.ndarray, k: int = 10, log_target: bool = False
) -> tuple[dict[str, np.ndarray], float]:
    """Ridge and kNN fitted on ``(x_tr [N, D], y_tr [N, K])``: ``({"ridge": [M, K], "knn": [M, K]}, alpha)``,
    predictions for ``x_va`` in original units.

    One value per tile: ``log_target`` fits ``log1p`` (mapped back with ``expm1``); a linear probe
    extrapolates freely, so ridge is clipped to the training targets' range in fitting units (one outlying
    tile cannot dominate R² after ``expm1``). Several values (distributions): ridge clipped at 0 and
    renormalised.
    """
    if y_tr.shape[1] == 1:
        fwd, inv = (np.log1p, np.expm1) if log_target else (lambda v: v, lambda v: v)
        ridge, alpha = ridge_fit_predict(x_tr, fwd(y_tr), x_va)
        ridge = np.clip(ridge, fwd(y_tr).min(), fwd(y_tr).max())
        return {"ridge": inv(ridge), "knn": inv(knn_predict(x_tr, fwd(y_tr), x_va, k))}, alpha
    ridge, alpha = ridge_fit_predict(x_tr, y_tr, x_va)
    ridge = np.clip(ridge, 1e-6, None)
    ridge /= ridge.sum(axis=1, keepdims=True)
    return {"ridge": ridge, "knn": knn_predict(x_tr, y_tr, x_va, k)}, alpha


def score(y: np.ndarray, p: np.ndarray) -> dict[str, float]:
    """MAE/RMSE/R² of one value per tile, L1/KL/cos of distributions (``[N, K]`` both, original units)."""
    return regression_metrics(y[:, 0], p[:, 0]) if y.shape[1] == 1 else distribution_metrics(y, p)


def fit_and_score(
    x_tr: np.ndarray, y_tr: np.ndarray, x_va: np.ndarray, y_va: np.ndarray, k: int = 10, log_target: bool = False
) -> dict[str, dict[str, float]]:
    """:func:`fit_predict` scored on ``y_va``: ``{"ridge": metrics + alpha, "knn": metrics}``."""
    pred, alpha = fit_predict(x_tr, y_tr, x_va, k, log_target)
    return {"ridge": {**score(y_va, pred["ridge"]), "alpha": alpha}, "knn": score(y_va, pred["knn"])}


def _rows(features: np.ndarray, names: list[str], wanted: list[str]) -> np.ndarray:
    """Rows of ``features`` (one per exported name) for the ``wanted`` tiles, matched by file stem."""
    index = {Path(n).stem: i for i, n in enumerate(names)}
    missing = [n for n in wanted if Path(n).stem not in index]
    if missing:
        raise UserError(
            f"{len(missing)} listed tiles have no exported embedding (first: {missing[0]}); export every listed tile"
        )
    return features[[index[Path(n).stem] for n in wanted]]


def probe_target(
    features: np.ndarray,
    names: list[str],
    root: Path,
    target_dir: str,
    train_list: str,
    val_list: str,
    k: int = 10,
    log_target: bool = False,
    label_fraction: float = 1.0,
    seed: int = 0,
) -> dict[str, dict[str, float]]:
    """Ridge and kNN probes of one target directory: fit on the training list, score on the validation list.

    ``features`` ``[N, D]`` has one row per name in ``names`` (the export order); see :func:`fit_and_score`.
    Returns ``{"ridge": metrics, "knn": metrics}``.
    """
    root = Path(root)
    tr = select_fraction(read_list(root / train_list), label_fraction, seed)
    va = read_list(root / val_list)
    x_tr, x_va = _rows(features, names, tr), _rows(features, names, va)
    return fit_and_score(
        x_tr, load_targets(root, target_dir, tr), x_va, load_targets(root, target_dir, va), k, log_target
    )


def mean_predictor_scores(root: Path, target_dir: str, train_list: str, val_list: str) -> dict[str, float]:
    """The scores of predicting every validation tile by the training tiles' mean target (the floor a probe
    must clear: R² about 0 on one value per tile, the spread of the targets on distributions)."""
    root = Path(root)
    y_tr = load_targets(root, target_dir, read_list(root / train_list))
    y_va = load_targets(root, target_dir, read_list(root / val_list))
    return score(y_va, np.repeat(y_tr.mean(axis=0, keepdims=True), len(y_va), axis=0))


def cv_folds(
    root: Path, tiles: list[str], n_folds: int, block_tiles: int = 4, seed: int = 0
) -> tuple[list[tuple[np.ndarray, np.ndarray]], str]:
    """``n_folds`` (train indices, test indices) pairs over ``tiles`` and a phrase saying how they were made.

    With a tile index in ``root`` (:func:`prepare.tile_index.read_tile_index`): ``GroupKFold`` over spatial
    blocks of ``block_tiles`` x ``block_tiles`` tiles of its grid (:func:`prepare.splits.block_ids`, the
    blocks of prepare_pois.py's split), so that no block is split between training and test. Without
    one: shuffled ``KFold`` (seeded), which lets neighbouring tiles fall on both sides.
    """
    index = read_tile_index(root)
    idx = np.arange(len(tiles))
    if index is None:
        folds = KFold(n_splits=n_folds, shuffle=True, random_state=seed).split(idx)
        return list(folds), "random folds (no tile index, so neighbouring tiles may fall on both sides)"
    pos = index.locate(tiles)
    groups = block_ids(index.rows[pos], index.cols[pos], block_tiles)
    if len(np.unique(groups)) < n_folds:
        raise UserError(
            f"the labelled tiles fall into {len(np.unique(groups))} spatial blocks of {block_tiles}x"
            f"{block_tiles} tiles, fewer than --cv {n_folds}; lower --cv or --block_tiles"
        )
    folds = GroupKFold(n_splits=n_folds).split(idx, groups=groups)
    return list(folds), f"folds grouped by spatial blocks of {block_tiles}x{block_tiles} tiles"


def probe_target_cv(
    features: np.ndarray,
    names: list[str],
    root: Path,
    target_dir: str,
    lists: list[str],
    n_folds: int,
    k: int = 10,
    log_target: bool = False,
    block_tiles: int = 4,
    seed: int = 0,
) -> dict:
    """K-fold cross-validated ridge and kNN probes over every tile of ``lists`` (the labelled tiles).

    Returns ``{"folds": K, "grouping": phrase, "ridge": {metric: [mean, std]}, "knn": {...},
    "pooled": {"ridge": metrics, "knn": metrics}}``: mean and sample std of the per-fold metrics, and the
    metrics of all out-of-fold predictions together (a held-out region whose own mean differs from the
    rest's gets a low per-fold R² even where the pooled predictions follow the truth).
    """
    root = Path(root)
    tiles = list(dict.fromkeys(n for lf in lists for n in read_list(root / lf)))
    if not 2 <= n_folds <= len(tiles):
        raise UserError(f"--cv must lie between 2 and the {len(tiles)} labelled tiles, got {n_folds}")
    x, y = _rows(features, names, tiles), load_targets(root, target_dir, tiles)
    folds, grouping = cv_folds(root, tiles, n_folds, block_tiles, seed)
    out: dict = {"folds": n_folds, "grouping": grouping, "pooled": {}}
    oof = {m: np.zeros_like(y) for m in ("ridge", "knn")}
    per_fold = []
    for tr, te in folds:
        pred, _ = fit_predict(x[tr], y[tr], x[te], k, log_target)
        per_fold.append({m: score(y[te], p) for m, p in pred.items()})
        for m, p in pred.items():
            oof[m][te] = p
    for method in ("ridge", "knn"):
        values = {key: np.array([f[method][key] for f in per_fold]) for key in per_fold[0][method]}
        out[method] = {key: [float(v.mean()), float(v.std(ddof=1))] for key, v in values.items()}
        out["pooled"][method] = score(y, oof[method])
    return out
