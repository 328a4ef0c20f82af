"""Probes (scikit-learn) and metrics against slow versions written from the formulas and direct sklearn
calls; spatially grouped cross-validation folds."""

from pathlib import Path

import numpy as np
import pytest
from sklearn.linear_model import RidgeCV
from sklearn.metrics import mean_absolute_error, r2_score, root_mean_squared_error
from sklearn.neighbors import KNeighborsRegressor
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from engine.probes import cv_folds, knn_predict, load_targets, probe_target, probe_target_cv, ridge_fit_predict
from prepare.splits import block_ids
from prepare.tile_index import read_tile_index
from utils.errors import UserError
from utils.metrics import distribution_metrics, regression_metrics, std_ratio


def _standardise(a, b):
    mu, sd = a.mean(0), a.std(0)
    sd = np.where(sd > 1e-8, sd, 1.0)
    return (a - mu) / sd, (b - mu) / sd


def test_ridge_matches_normal_equations_and_loo():
    rng = np.random.default_rng(0)
    x, xt = rng.normal(size=(40, 7)), rng.normal(size=(5, 7))
    y = x @ rng.normal(size=(7, 2)) + 0.1 * rng.normal(size=(40, 2)) + 3.0
    alphas = np.array([0.1, 1.0, 10.0, 100.0])
    pred, alpha = ridge_fit_predict(x, y, xt, alphas)
    a, b = _standardise(x, xt)

    def fit(a_, y_, al):
        w = np.linalg.solve(a_.T @ a_ + al * np.eye(a_.shape[1]), a_.T @ (y_ - y_.mean(0)))
        return w, y_.mean(0)

    # Leave-one-out by brute force (refitting without each row, standardisation of the full set kept).
    def loo(al):
        errs = []
        for i in range(len(a)):
            keep = np.arange(len(a)) != i
            ac = a[keep] - a[keep].mean(0)
            w = np.linalg.solve(ac.T @ ac + al * np.eye(a.shape[1]), ac.T @ (y[keep] - y[keep].mean(0)))
            errs.append(((a[i] - a[keep].mean(0)) @ w + y[keep].mean(0) - y[i]) ** 2)
        return np.mean(errs)

    assert alpha == alphas[np.argmin([loo(al) for al in alphas])]
    w, ym = fit(a, y, alpha)
    np.testing.assert_allclose(pred, b @ w + ym, rtol=1e-8, atol=1e-8)


def test_knn_is_mean_of_cosine_neighbours():
    rng = np.random.default_rng(1)
    x, xt, y = rng.normal(size=(20, 4)), rng.normal(size=(3, 4)), rng.random((20, 3))
    pred = knn_predict(x, y, xt, k=4)
    a, b = _standardise(x, xt)
    for j in range(3):
        sims = [a[i] @ b[j] / np.linalg.norm(a[i]) / np.linalg.norm(b[j]) for i in range(20)]
        nn = np.argsort(sims)[::-1][:4]
        np.testing.assert_allclose(pred[j], y[nn].mean(0))


def test_distribution_metrics_slow_loop():
    rng = np.random.default_rng(2)
    p = rng.dirichlet(np.ones(4), size=6)
    p[0, 1] = 0.0
    p[0] /= p[0].sum()
    q = rng.dirichlet(np.ones(4), size=6)
    m = distribution_metrics(p, q)
    l1 = np.mean([sum(abs(p[i, k] - q[i, k]) for k in range(4)) for i in range(6)])
    kl = np.mean([sum(p[i, k] * np.log(p[i, k] / q[i, k]) for k in range(4) if p[i, k] > 0) for i in range(6)])
    cos = np.mean([p[i] @ q[i] / np.linalg.norm(p[i]) / np.linalg.norm(q[i]) for i in range(6)])
    assert m == pytest.approx({"L1": l1, "KL": kl, "cos": cos})
    assert distribution_metrics(p, p) == pytest.approx({"L1": 0.0, "KL": 0.0, "cos": 1.0})


def _probe_layout(root, n_side=8, tile=100.0, index=True):
    """An n_side x n_side grid of tiles with a smooth target, lists and (optionally) a tile index."""
    rng = np.random.default_rng(3)
    (root / "pop1km").mkdir(parents=True)
    names, rows = [], ["name,minx,miny,maxx,maxy"]
    for i in range(n_side):
        for j in range(n_side):
            name = f"r{i}c{j}.png"
            names.append(name)
            rows.append(f"{name},{j * tile},{i * tile},{(j + 1) * tile},{(i + 1) * tile}")
            (root / "pop1km" / f"r{i}c{j}.txt").write_text(f"{100 * i + 10 * j + rng.random():.4f}\n")
    if index:
        (root / "tile_index.csv").write_text("\n".join(rows) + "\n")
    (root / "train-wuhan.txt").write_text("\n".join(names[::2]) + "\n")
    (root / "val-wuhan.txt").write_text("\n".join(names[1::2]) + "\n")
    y = np.array([float((root / "pop1km" / f"{Path(n).stem}.txt").read_text()) for n in names])
    feats = np.c_[y / 100 + rng.normal(0, 0.5, len(y)), rng.normal(size=(len(y), 5))]
    return names, feats


def test_probe_equals_a_direct_sklearn_call(tmp_path):
    names, feats = _probe_layout(tmp_path)
    out = probe_target(feats, names, tmp_path, "pop1km", "train-wuhan.txt", "val-wuhan.txt", k=3)
    y = load_targets(tmp_path, "pop1km", names)[:, 0]
    tr, va = np.arange(0, 64, 2), np.arange(1, 64, 2)
    ridge = make_pipeline(StandardScaler(), RidgeCV(alphas=32 * np.logspace(-4, 2, 13))).fit(feats[tr], y[tr])
    pred = np.clip(ridge.predict(feats[va]), y[tr].min(), y[tr].max())
    assert out["ridge"]["R2"] == pytest.approx(r2_score(y[va], pred), abs=1e-12)
    assert out["ridge"]["alpha"] == ridge[-1].alpha_
    knn = make_pipeline(StandardScaler(), KNeighborsRegressor(3, metric="cosine")).fit(feats[tr], y[tr])
    assert out["knn"]["R2"] == pytest.approx(r2_score(y[va], knn.predict(feats[va])), abs=1e-12)
    assert out["ridge"]["R2"] > 0.5  # the target is in the first feature: the probe finds it


def test_spatially_grouped_folds_never_split_a_block(tmp_path):
    names, feats = _probe_layout(tmp_path)
    folds, how = cv_folds(tmp_path, names, 4, block_tiles=2)
    assert "spatial blocks of 2x2" in how and len(folds) == 4
    block = {n: (int(n[1]) // 2, int(n[3]) // 2) for n in names}  # r<i>c<j>: row i, column j
    seen = set()
    for tr, te in folds:
        test_blocks = {block[names[i]] for i in te}
        assert not test_blocks & {block[names[i]] for i in tr}  # no block on both sides
        seen |= set(te)
    assert seen == set(range(64))  # every tile is tested once
    index = read_tile_index(tmp_path)  # the CSV form: positions without a CRS
    assert index.crs is None
    pos = index.locate(names)
    groups = block_ids(index.rows[pos], index.cols[pos], 2)
    assert len(np.unique(groups)) == 16
    with pytest.raises(UserError, match="fewer than --cv 5"):
        cv_folds(tmp_path, names, 5, block_tiles=4)  # 4 blocks of 4x4 tiles
    cv = probe_target_cv(feats, names, tmp_path, "pop1km", ["train-wuhan.txt", "val-wuhan.txt"], 4, k=3, block_tiles=2)
    assert cv["folds"] == 4 and set(cv["ridge"]) == {"MAE", "RMSE", "R2"} and len(cv["ridge"]["R2"]) == 2
    assert set(cv["pooled"]["knn"]) == {"MAE", "RMSE", "R2"}


def test_folds_without_a_tile_index_are_random(tmp_path):
    names, _ = _probe_layout(tmp_path, index=False)
    folds, how = cv_folds(tmp_path, names, 4)
    assert "random folds" in how and sorted(np.concatenate([te for _, te in folds]).tolist()) == list(range(64))


def test_regression_metrics_are_sklearns_and_std_ratio():
    rng = np.random.default_rng(4)
    y, p = rng.normal(size=30), rng.normal(size=30)
    m = regression_metrics(y, p)
    assert m == {"MAE": mean_absolute_error(y, p), "RMSE": root_mean_squared_error(y, p), "R2": r2_score(y, p)}
    assert np.isnan(regression_metrics(np.ones(4), np.arange(4.0))["R2"])  # constant truth: no R²
    assert std_ratio(y, np.full(30, 3.0)) == 0 and std_ratio(y, 2 * y) == pytest.approx(2.0)
    t, q = rng.random((10, 3)), rng.random((10, 3))
    assert std_ratio(t, q) == pytest.approx(np.mean(q.std(0) / t.std(0)))
