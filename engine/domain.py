"""The labelled domain: which tiles look like the labelled training tiles (docs/downstream.md).

A head trained on 300 labelled tiles of a city predicts something for every tile of the mosaic, the sea
and the clouds included; only tiles that resemble the training tiles get a prediction the training
says anything about. Two tests, both measured against the training tiles themselves:

* embedding distance: the mean Euclidean distance of a tile's embedding to its ``k`` nearest training
  embeddings (scikit-learn ``NearestNeighbors``, on embeddings standardised with the training tiles'
  mean and std), against the training tiles' own leave-one-out distances: beyond their ``q`` quantile a
  tile is out of the domain. By construction about ``1 - q`` of the training tiles fall out.
* tile statistics: a tile whose per-band mean (of the tile as the encoder sees it) lies outside the
  training tiles' range in any band is out: no labelled tile was that bright, that dark or that
  coloured.

Wide embeddings are first projected on their first :data:`PCA_DIMS` principal components (fitted on
the training tiles; standardised features keep more than 90 % of their variance there on the real
and synthetic cities of benchmarks/RESULTS.md): kNN in 512 dimensions costs 8 times as much and its
distances say no more; beyond :data:`MAX_REFERENCE` training tiles a seeded random subset of them is
the reference (benchmarks/domain_speed.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sklearn.decomposition import PCA
from sklearn.neighbors import NearestNeighbors

__all__ = ["Domain", "labelled_domain", "DOMAIN_K", "DOMAIN_Q", "PCA_DIMS", "MAX_REFERENCE"]

DOMAIN_K = 5  # neighbours averaged: one near duplicate in the training tiles does not make a tile familiar
DOMAIN_Q = 0.99  # quantile of the training tiles' own leave-one-out distances that bounds the domain
PCA_DIMS = 64
# Training tiles the kNN compares against, at most: a random subset beyond it (seeded). The cost of the test
# grows with tiles x reference tiles (benchmarks/domain_speed.py: 100,000 tiles take about 9 s against
# 10,000 reference tiles on 2 cores, 2-3 s against 2,000), and 2,000 tiles pin a 0.99 quantile well enough.
MAX_REFERENCE = 2_000


@dataclass(frozen=True)
class Domain:
    """The result for ``N`` tiles.

    Attributes:
        in_domain: ``[N]`` bool, both tests passed.
        distance: ``[N]`` mean distance to the ``k`` nearest training embeddings.
        threshold: the training tiles' ``q`` quantile of their leave-one-out distances.
        far: ``[N]`` bool, out by the embedding distance.
        unusual: ``[N]`` bool, out by the tile statistics (all False when none were given).
    """

    in_domain: np.ndarray
    distance: np.ndarray
    threshold: float
    far: np.ndarray
    unusual: np.ndarray

    def summary(self, split: np.ndarray | None = None) -> str:
        """``"312 of 1089 tiles outside the labelled domain (...)"``; with ``split`` ``[N]`` of
        ``train``/``val``/``test``/"" also the share of training, validation and scored test-root tiles out."""
        n, out = len(self.in_domain), int((~self.in_domain).sum())
        text = (
            f"{out} of {n} tiles outside the labelled domain ({int(self.far.sum())} by embedding distance, "
            f"{int(self.unusual.sum())} by band means outside the training tiles' range)"
        )
        if split is not None:
            parts = []
            for side, word in (("train", "training"), ("val", "validation"), ("test", "scored test-root")):
                mask = np.asarray(split) == side
                if mask.any():
                    parts.append(f"{100 * float((~self.in_domain[mask]).mean()):.1f} % of {word} tiles")
            if parts:
                text += "; out: " + ", ".join(parts)
        return text


def _knn_distance(nn: NearestNeighbors, x: np.ndarray, k: int, self_index: np.ndarray) -> np.ndarray:
    """Mean distance of each row of ``x`` ``[N, D]`` to its ``k`` nearest training points, leaving out the
    training point ``self_index[i]`` (``-1``: none), so that a training tile is measured as its peers are."""
    dist, idx = nn.kneighbors(x, n_neighbors=min(k + 1, nn.n_samples_fit_))
    keep = idx != self_index[:, None]
    # At most one entry per row is the tile itself; keep the first k others.
    keep &= np.cumsum(keep, axis=1) <= k
    return np.where(keep, dist, 0.0).sum(axis=1) / np.maximum(keep.sum(axis=1), 1)


def labelled_domain(
    train_emb: np.ndarray,
    emb: np.ndarray,
    train_stats: np.ndarray | None = None,
    stats: np.ndarray | None = None,
    self_index: np.ndarray | None = None,
    k: int = DOMAIN_K,
    q: float = DOMAIN_Q,
) -> Domain:
    """Which of ``emb`` ``[N, D]`` lie inside the domain of the training embeddings ``train_emb`` ``[M, D]``.

    Args:
        train_stats / stats: ``[M, C]`` / ``[N, C]`` per-band means of the tiles (optional; both or neither).
        self_index: ``[N]`` the row of ``train_emb`` that each tile is (a training tile on the map), -1 for
            the others; a training tile's distance then leaves itself out, as the threshold's do.
        k: neighbours averaged (at most ``M - 1``); q: quantile of the training tiles' leave-one-out
            distances beyond which a tile is far.
    """
    x_tr = np.asarray(train_emb, np.float32)
    x = np.asarray(emb, np.float32)
    own = np.full(len(x), -1) if self_index is None else np.asarray(self_index).copy()
    if len(x_tr) > MAX_REFERENCE:
        pick = np.sort(np.random.default_rng(0).choice(len(x_tr), MAX_REFERENCE, replace=False))
        new_row = np.full(len(x_tr), -1)
        new_row[pick] = np.arange(MAX_REFERENCE)
        own = np.where(own >= 0, new_row[np.maximum(own, 0)], -1)
        x_tr = x_tr[pick]
    mean, std = x_tr.mean(axis=0), x_tr.std(axis=0)
    std = np.where(std > 0, std, 1.0)
    x_tr, x = (x_tr - mean) / std, (x - mean) / std
    if x_tr.shape[1] > PCA_DIMS and len(x_tr) > PCA_DIMS:
        pca = PCA(n_components=PCA_DIMS, random_state=0).fit(x_tr)
        x_tr, x = pca.transform(x_tr).astype(np.float32), pca.transform(x).astype(np.float32)
    k = max(1, min(k, len(x_tr) - 1))
    nn = NearestNeighbors(n_neighbors=k, algorithm="brute").fit(x_tr)
    threshold = float(np.quantile(_knn_distance(nn, x_tr, k, np.arange(len(x_tr))), q))
    dist = _knn_distance(nn, x, k, own)
    far = dist > threshold
    unusual = np.zeros(len(x), dtype=bool)
    if train_stats is not None and stats is not None:
        lo, hi = np.min(train_stats, axis=0), np.max(train_stats, axis=0)
        unusual = ((np.asarray(stats) < lo) | (np.asarray(stats) > hi)).any(axis=1)
    return Domain(~(far | unusual), dist, threshold, far, unusual)
