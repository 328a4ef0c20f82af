"""POI category embeddings: a user's table, or vectors learned from the city's own POI co-location.

The MMGR authors embed second-level POI categories with the "semantics-preserved POI embedding" of
Huang et al. (IJGIS 2022): 64-d category vectors learned from which categories sit next to each other
on a Delaunay network of the POIs (docs/method.md §3). We learn vectors from the same signal with a count-based
method that is deterministic and fast on millions of POIs (Levy & Goldberg's PPMI + SVD, the closed-form
counterpart of skip-gram with negative sampling):

1. ``M[a, b]`` = number of Delaunay edges (city-wide network) joining a POI of category ``a`` and one
   of category ``b`` (both directions, so ``M`` is symmetric; same-category edges count on the diagonal).
2. With a two-level hierarchy, each parent becomes one more row/column of ``M`` (a context word):
   category ``a`` co-occurs with its parent ``h * sum_b M[a, b]`` times (``h`` =
   ``--hierarchy_weight``, 0.5 by default). Siblings share this context and non-siblings never do,
   so siblings end up closer; rare categories borrow strength from their parent. Only the category
   rows of the factorisation are kept.
3. ``PPMI[a, b] = max(0, log(P(a, b) / (P(a) P'(b))))`` from the counts (0 where ``M`` is 0).
4. Truncated SVD ``PPMI = U S V^T``; vector of ``a`` = row ``a`` of ``(U + V)[:, :D] sqrt(S[:D])``
   (word + context vectors, Levy, Goldberg & Dagan 2015: categories that neighbour each other are
   close, not only categories with the same neighbours); each column's sign is fixed so its
   largest-magnitude entry is positive (the SVD alone leaves it arbitrary); then L2-normalised (only
   directions matter to a cosine-trained encoder). With fewer than ``D`` categories, or a rank-deficient
   PPMI, the remaining columns are zeros; a category with no edge at all gets the zero vector.

The table is saved as CSV ``category,v0,...,v{D-1}`` so it can be reused with ``--embeddings``. With a
hierarchy, each parent's own vector of the same factorisation (its row of step 4, as a context word)
follows the categories' rows, unless a category has the parent's name: a city that shares this table
gives its categories missing from it their parent's vector (:func:`parent_candidates`).

A shared table (``--embeddings``, docs/real_data.md "One vocabulary for several cities"): a category
of the city missing from the table takes the vector of the first of :func:`parent_candidates` that the
table has, else its POIs are dropped (counted in the summary).
"""

from __future__ import annotations

import csv
import io
import os

import numpy as np

from prepare.poi_io import InputError, csv_header
from utils.fileio import atomic_write_text

__all__ = ["cooccurrence", "learn_embeddings", "parent_candidates", "read_table", "write_table"]


def cooccurrence(codes: np.ndarray, edges: np.ndarray, n_cat: int) -> np.ndarray:
    """Category co-occurrence counts over a graph.

    Args:
        codes: ``[N]`` int category code of each node.
        edges: ``[2, E]`` int edge list (each undirected edge once or in both directions).
        n_cat: number of categories C.

    Returns:
        ``[C, C]`` float64 symmetric counts.
    """
    a, b = codes[edges[0]].astype(np.int64), codes[edges[1]].astype(np.int64)
    m = np.bincount(a * n_cat + b, minlength=n_cat * n_cat).reshape(n_cat, n_cat).astype(np.float64)
    return m + m.T  # symmetric whatever the edge convention; the scale cancels in PMI


def learn_embeddings(
    counts: np.ndarray,
    dim: int = 64,
    parent_codes: np.ndarray | None = None,
    hierarchy_weight: float = 0.5,
    with_parents: bool = False,
) -> np.ndarray:
    """PPMI + truncated SVD category vectors (module docstring, steps 2-4).

    Args:
        counts: ``[C, C]`` co-occurrence counts.
        dim: output width D.
        parent_codes: ``[C]`` int parent code of each category, or None (no hierarchy).
        hierarchy_weight: ``h``, the category-parent count relative to the category's edge ends.
        with_parents: also return the parents' rows (after the categories', in parent-code order).

    Returns:
        ``[C, D]`` float32 vectors, unit length (or zero for categories without edges); with
        ``with_parents`` and a hierarchy ``[C + n_parents, D]``.
    """
    m = np.asarray(counts, dtype=np.float64)
    c = m.shape[0]
    if parent_codes is not None and hierarchy_weight > 0:
        # Parents become extra context words: category a co-occurs with its parent h * (its edge ends)
        # times. Siblings share that context, non-siblings never do.
        parent_codes = np.asarray(parent_codes, dtype=np.int64)
        n_par = int(parent_codes.max()) + 1
        ext = np.zeros((c + n_par, c + n_par))
        ext[:c, :c] = m
        link = hierarchy_weight * m.sum(axis=1)
        ext[np.arange(c), c + parent_codes] = link
        ext[c + parent_codes, np.arange(c)] = link
        m = ext
    keep = m.shape[0] if with_parents else c  # the parents' rows, when asked, follow the categories'
    total = m.sum()
    out = np.zeros((m.shape[0], dim), dtype=np.float64)
    if total <= 0:
        return out[:keep].astype(np.float32)
    row, col = m.sum(axis=1, keepdims=True), m.sum(axis=0, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        pmi = np.log(m * total / (row * col))
    ppmi = np.where(m > 0, np.maximum(pmi, 0.0), 0.0)
    u, s, vt = np.linalg.svd(ppmi)
    k = min(dim, int((s > 1e-10 * max(s[0], 1e-300)).sum()))
    # "w + c": category (row) plus context (column) vectors. The row part alone only makes two
    # categories close when they have the same neighbours; adding the context part also makes
    # categories that are each other's neighbours close (first-order co-location).
    vec = (u[:, :k] + vt[:k].T) * np.sqrt(s[:k])
    sign = np.sign(vec[np.abs(vec).argmax(axis=0), np.arange(k)])
    vec = vec * np.where(sign == 0, 1.0, sign)
    norm = np.linalg.norm(vec, axis=1, keepdims=True)
    out[:, :k] = np.divide(vec, norm, out=np.zeros_like(vec), where=norm > 0)
    return out[:keep].astype(np.float32)


def parent_candidates(category: str, data_parent: str | None = None) -> list[str]:
    """The names whose vector a category missing from a shared table borrows, most specific first.

    ``"food/asian/thai"`` -> ``["food/asian", "food"]`` (a path of categories); ``"amenity=cafe"`` ->
    ``["amenity"]`` (an OpenStreetMap ``key=value``); then ``data_parent``, the parent the city's own
    data give the category (``--parent_col``; for an ``.osm.pbf`` extract the OSM key), unless it is the
    category itself (a POI without a parent is its own parent).
    """
    out: list[str] = []
    parts = category.split("/")
    out += ["/".join(parts[:k]) for k in range(len(parts) - 1, 0, -1)]
    if "=" in category:
        out.append(category.split("=", 1)[0])
    if data_parent and data_parent != category:
        out.append(data_parent)
    return [c for k, c in enumerate(out) if c and c not in out[:k]]


def write_table(path: str, categories: list[str], vectors: np.ndarray) -> None:
    """Save ``[C, D]`` vectors as CSV ``category,v0..v{D-1}``, atomically (utils/fileio.py)."""
    f = io.StringIO(newline="")
    w = csv.writer(f)
    w.writerow(["category"] + [f"v{k}" for k in range(vectors.shape[1])])
    for cat, v in zip(categories, vectors, strict=True):
        w.writerow([cat] + [repr(float(x)) for x in v])
    atomic_write_text(f.getvalue(), path, durable=False)


def read_table(path: str) -> tuple[list[str], np.ndarray]:
    """Read a category table: a ``category`` column followed by the vector (any width, any names).

    Returns:
        ``(categories [C], vectors [C, D] float32)``.
    """
    if not os.path.isfile(path):
        raise InputError(f"embedding table {path} does not exist; check --embeddings.")
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.reader(f)
        header = csv_header(reader, f"embedding table {path} is empty; give a CSV with columns category,v0,v1,...")
        if header[0] != "category" or len(header) < 2:
            raise InputError(
                f"embedding table {path} must start with a 'category' column followed by the "
                f"vector columns; its header is {','.join(header[:5])}."
            )
        cats, rows = [], []
        for k, r in enumerate(reader, start=2):
            if not r:
                continue
            if len(r) != len(header):
                raise InputError(
                    f"line {k} of embedding table {path} has {len(r)} fields, the header "
                    f"{len(header)}; every row needs a category and the full vector."
                )
            try:
                rows.append([float(v) for v in r[1:]])
            except ValueError:
                raise InputError(
                    f"line {k} of embedding table {path} has a non-numeric vector entry; fix it."
                ) from None
            cats.append(r[0].strip())
    if not cats:
        raise InputError(f"embedding table {path} has no rows; give one row per category.")
    if len(set(cats)) != len(cats):
        dup = next(c for c in cats if cats.count(c) > 1)
        raise InputError(f"embedding table {path} lists category {dup!r} twice; keep one row per category.")
    vecs = np.asarray(rows, dtype=np.float32)
    if not np.isfinite(vecs).all():
        raise InputError(f"embedding table {path} holds NaN or infinite values; fix them.")
    return cats, vecs
