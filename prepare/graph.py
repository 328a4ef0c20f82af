"""POI graphs: the Delaunay network of a tile's POI locations and its edge weights.

The MMGR authors build each tile's POI graph with a Delaunay triangulation of the POI positions
(docs/method.md §1). This module is the one place that does it, for the synthetic city and for
``prepare_pois.py`` alike, so both write identical graphs for identical points.

Edge weight (inverse-distance kernel, documented in docs/real_data.md, "Graph and edge weights"):

    w_ij = 1 / (1 + d_ij / s)

where ``d_ij`` is the Euclidean distance between the two POIs and ``s`` is the median length of the
tile's Delaunay edges (``s = 1`` when every edge has length 0). Weights lie in (0, 1]; coincident
POIs get weight 1; the kernel is scale-free, so metres and degrees give the same weights.
"""

from __future__ import annotations

import numpy as np
from scipy.spatial import Delaunay, QhullError

__all__ = ["delaunay_edges", "edge_weights"]


def _chain_edges(xy: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """Edges joining consecutive points of ``idx`` ordered along their main direction -> ``[K, 2]``.

    Used where a triangulation does not exist (2 points, or all points on one line).
    """
    pts = xy[idx]
    centred = pts - pts.mean(axis=0)
    # Direction of largest spread: first right-singular vector.
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    order = idx[np.argsort(centred @ vt[0], kind="stable")]
    return np.stack([order[:-1], order[1:]], axis=1)


def delaunay_edges(xy: np.ndarray, max_length: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Undirected Delaunay graph of a point set, as a directed edge list with both directions.

    Args:
        xy: ``[N, 2]`` float point coordinates (any N >= 0; duplicates and collinear sets allowed).
        max_length: if given, edges longer than this are cut (same units as ``xy``).

    Returns:
        ``(edge_index, edge_weight)``: ``edge_index`` is int64 ``[2, E]`` holding each undirected edge
        in both directions, sorted by (source, target); ``edge_weight`` is float32 ``[E]`` (see the
        module docstring). Fewer than two points give ``E = 0``. Duplicate points are joined to the
        first point at the same location (distance 0, weight 1) and do not take part in the
        triangulation; a set whose distinct points are collinear is joined as a chain.
    """
    xy = np.asarray(xy, dtype=np.float64).reshape(-1, 2)
    n = xy.shape[0]
    # Candidate undirected edges as [K, 2] blocks; deduplicated below with one np.unique on
    # lo * n + hi (array work instead of a Python set: the 1M-POI benchmark calls this per tile).
    parts: list[np.ndarray] = []
    if n >= 2:
        _, first, inverse = np.unique(xy, axis=0, return_index=True, return_inverse=True)
        inverse = inverse.reshape(-1)
        reps = np.sort(first)  # one representative (the first occurrence) per location
        rep_of = first[inverse]  # for every point, the representative of its location
        dup = np.flatnonzero(rep_of != np.arange(n))
        if dup.size:
            parts.append(np.stack([rep_of[dup], dup], axis=1))
        if reps.size == 2:
            parts.append(reps.reshape(1, 2))
        elif reps.size >= 3:
            pts = xy[reps]
            spread = pts - pts.mean(axis=0)
            sv = np.linalg.svd(spread, compute_uv=False)
            if sv[1] <= 1e-12 * max(sv[0], 1e-300):
                parts.append(_chain_edges(xy, reps))
            else:
                try:
                    tri = Delaunay(pts)
                    s = reps[tri.simplices]  # [T, 3] original indices
                    parts.append(np.concatenate([s[:, [0, 1]], s[:, [1, 2]], s[:, [0, 2]]], axis=0))
                except QhullError:  # numerically degenerate: treat as a line
                    parts.append(_chain_edges(xy, reps))
    if not parts:
        return np.zeros((2, 0), dtype=np.int64), np.zeros((0,), dtype=np.float32)
    cand = np.concatenate(parts, axis=0).astype(np.int64)
    lo, hi = np.minimum(cand[:, 0], cand[:, 1]), np.maximum(cand[:, 0], cand[:, 1])
    key = np.unique(lo * n + hi)  # sorted by (lo, hi), like sorted() of the pairs
    und = np.stack([key // n, key % n], axis=1)  # [E/2, 2]
    lengths = np.linalg.norm(xy[und[:, 0]] - xy[und[:, 1]], axis=1)
    if max_length is not None:
        keep = lengths <= max_length
        und, lengths = und[keep], lengths[keep]
        if und.shape[0] == 0:
            return np.zeros((2, 0), dtype=np.int64), np.zeros((0,), dtype=np.float32)
    both = np.concatenate([und, und[:, ::-1]], axis=0)
    both_len = np.concatenate([lengths, lengths])
    order = np.lexsort((both[:, 1], both[:, 0]))
    edge_index = np.ascontiguousarray(both[order].T)
    return edge_index, edge_weights(both_len[order])


def edge_weights(lengths: np.ndarray) -> np.ndarray:
    """Inverse-distance kernel ``1 / (1 + d / median(d))`` of ``[E]`` edge lengths -> float32 ``[E]``."""
    lengths = np.asarray(lengths, dtype=np.float64)
    if lengths.size == 0:
        return np.zeros((0,), dtype=np.float32)
    s = float(np.median(lengths))
    if not s > 0:
        s = 1.0
    return (1.0 / (1.0 + lengths / s)).astype(np.float32)
