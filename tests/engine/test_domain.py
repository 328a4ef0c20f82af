"""The labelled-domain test (engine/domain.py): a slow loop written from its definition, and its behaviour."""

import numpy as np
import pytest

from engine import domain as dom
from engine.domain import labelled_domain


def slow_distance(train: np.ndarray, x: np.ndarray, k: int, own: int) -> float:
    """Mean distance of ``x`` to its ``k`` nearest rows of ``train`` other than row ``own`` (-1: none)."""
    d = np.sqrt(((train - x) ** 2).sum(axis=1))
    if own >= 0:
        d = np.delete(d, own)
    return float(np.sort(d)[:k].mean())


def standardised(train: np.ndarray, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    mean, std = train.mean(axis=0), train.std(axis=0)
    return (train - mean) / std, (x - mean) / std


def test_distances_and_threshold_match_a_slow_loop():
    rng = np.random.default_rng(0)
    train = rng.normal(size=(40, 6)).astype(np.float32)
    tiles = np.concatenate([train[:5], rng.normal(size=(7, 6)).astype(np.float32) * 3])
    own = np.r_[np.arange(5), np.full(7, -1)]  # the first five tiles are training tiles 0-4
    out = labelled_domain(train, tiles, self_index=own, k=3, q=0.9)
    tr, x = standardised(train.astype(np.float64), tiles.astype(np.float64))
    loo = [slow_distance(tr, tr[i], 3, i) for i in range(len(tr))]
    assert out.threshold == pytest.approx(np.quantile(loo, 0.9), rel=1e-4)
    expected = [slow_distance(tr, x[i], 3, own[i]) for i in range(len(x))]
    np.testing.assert_allclose(out.distance, expected, rtol=1e-4)
    # a training tile is measured without itself, as the threshold's distances are
    np.testing.assert_allclose(out.distance[:5], loo[:5], rtol=1e-4)
    assert (out.in_domain == ~(out.far | out.unusual)).all() and not out.unusual.any()


def test_far_tiles_and_unusual_bands_are_out_training_tiles_in():
    rng = np.random.default_rng(1)
    train = rng.normal(size=(200, 32))
    near = rng.normal(size=(50, 32))
    sea = rng.normal(size=(30, 32)) + 8.0  # another kind of tile altogether
    stats_train = rng.uniform(0.2, 0.8, size=(200, 3))
    stats = np.concatenate([rng.uniform(0.3, 0.7, size=(80, 3)), stats_train[:20]])
    stats[:3, 1] = 0.95  # three tiles brighter in band 2 than any training tile
    tiles = np.concatenate([near, sea, train[:20]])
    own = np.r_[np.full(80, -1), np.arange(20)]
    out = labelled_domain(train, tiles, stats_train, stats, self_index=own)
    assert out.far[50:80].all() and out.far[:50].mean() < 0.1
    assert out.unusual[:3].all() and not out.unusual[3:].any()
    assert out.in_domain[80:].mean() >= 0.9
    text = out.summary(np.array([""] * 80 + ["train"] * 20))
    assert text.startswith(f"{int((~out.in_domain).sum())} of 100 tiles outside the labelled domain")
    assert "% of training tiles" in text


def test_wide_embeddings_and_many_training_tiles_go_through_pca_and_a_subset(monkeypatch):
    monkeypatch.setattr(dom, "MAX_REFERENCE", 100)
    monkeypatch.setattr(dom, "PCA_DIMS", 8)
    rng = np.random.default_rng(2)
    basis = rng.normal(size=(4, 40))
    train = rng.normal(size=(300, 4)) @ basis + 0.05 * rng.normal(size=(300, 40))
    odd = rng.normal(size=(10, 40)) * 5
    out = labelled_domain(train, np.concatenate([train, odd]), self_index=np.r_[np.arange(300), np.full(10, -1)])
    assert out.far[300:].all() and out.in_domain[:300].mean() > 0.95
