"""Probes and distribution metrics against slow versions written from the formulas."""

import numpy as np
import pytest

from utils.metrics import distribution_metrics
from engine.probes import knn_predict, ridge_fit_predict


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
