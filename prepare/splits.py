"""Train/validation split of the labelled tiles (docs/real_data.md).

Neighbouring tiles look alike and have similar targets (spatial autocorrelation). A random split
puts the neighbours of most validation tiles in the training set, so validation scores measure
interpolation between known neighbours rather than prediction for a new area, and come out
optimistic. The default ``block`` split keeps whole blocks of ``block_tiles`` x ``block_tiles`` tiles on
one side: only the tiles along block edges have a neighbour on the other side.
"""

from __future__ import annotations

import numpy as np

from utils.errors import UserError

__all__ = ["block_ids", "split_tiles", "SPLITS"]

SPLITS = ("block", "random")


def block_ids(rows: np.ndarray, cols: np.ndarray, block_tiles: int) -> np.ndarray:
    """Block of each tile: tiles whose ``(row // block_tiles, col // block_tiles)`` agree share one id.

    ``[T]`` grid rows and columns -> ``[T]`` int64 ids ``0..B-1`` (the blocks in sorted order). Splits and
    spatially grouped cross-validation use the same blocks, so neither puts two tiles of one block on both
    sides and lets the spatial autocorrelation of neighbours leak from training into validation.
    """
    rows, cols = np.asarray(rows, np.int64), np.asarray(cols, np.int64)
    if rows.size == 0:
        return np.zeros(0, np.int64)
    _, block = np.unique(np.stack([rows // block_tiles, cols // block_tiles], axis=1), axis=0, return_inverse=True)
    return block.reshape(-1).astype(np.int64)


def split_tiles(
    rows: np.ndarray,
    cols: np.ndarray,
    method: str = "block",
    block_tiles: int = 4,
    val_fraction: float = 0.2,
    seed: int = 0,
) -> np.ndarray:
    """Which of the labelled tiles go to validation.

    ``block``: tiles are grouped into blocks ``(row // block_tiles, col // block_tiles)``; the blocks, in
    an order shuffled by ``seed``, go to validation one by one as long as that brings the number of
    validation tiles closer to ``val_fraction`` of all. ``random``: ``round(val_fraction * T)`` tiles drawn
    at random. With at least two blocks (tiles) and ``0 < val_fraction``, both sides get at least one.

    Args:
        rows, cols: ``[T]`` grid position of each labelled tile.

    Returns:
        ``[T]`` bool, True = validation.
    """
    if method not in SPLITS:
        raise UserError(f"--split must be one of {', '.join(SPLITS)}, not {method!r}.")
    if not 0.0 <= val_fraction < 1.0:
        raise UserError(f"--val_fraction must be in [0, 1), not {val_fraction}.")
    if block_tiles < 1:
        raise UserError(f"--block_tiles must be at least 1, not {block_tiles}.")
    rows, cols = np.asarray(rows, np.int64), np.asarray(cols, np.int64)
    t = rows.size
    is_val = np.zeros(t, dtype=bool)
    if t == 0 or val_fraction == 0:
        return is_val
    rng = np.random.default_rng(seed)
    if method == "random":
        n_val = int(round(val_fraction * t))
        if t >= 2:
            n_val = min(max(n_val, 1), t - 1)
        is_val[rng.permutation(t)[:n_val]] = True
        return is_val
    block = block_ids(rows, cols, block_tiles)
    size = np.bincount(block)
    target = val_fraction * t
    chosen = []
    n_val = 0
    for b in rng.permutation(size.size):
        if abs(n_val + size[b] - target) < abs(n_val - target):
            chosen.append(b)
            n_val += size[b]
    if size.size >= 2:
        if not chosen:  # every block is larger than twice the target: the smallest one goes
            chosen = [int(np.argmin(size))]
        elif len(chosen) == size.size:
            chosen = chosen[:-1]
    is_val[np.isin(block, chosen)] = True
    return is_val
