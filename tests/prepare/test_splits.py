"""Train/val split: whole blocks on one side, the asked fraction, seeds, random split."""

import numpy as np
import pytest

from prepare.splits import split_tiles
from utils.errors import UserError


def grid(n_rows, n_cols):
    r, c = np.divmod(np.arange(n_rows * n_cols), n_cols)
    return r, c


def test_blocks_go_wholly_to_one_side():
    rows, cols = grid(20, 20)
    is_val = split_tiles(rows, cols, "block", block_tiles=4, val_fraction=0.2, seed=3)
    block = (rows // 4) * 5 + cols // 4
    for b in np.unique(block):
        assert len(set(is_val[block == b])) == 1  # a block is never split
    assert is_val.sum() == 80  # 25 blocks of 16 tiles: 5 blocks = exactly 20 %
    again = split_tiles(rows, cols, "block", block_tiles=4, val_fraction=0.2, seed=3)
    other = split_tiles(rows, cols, "block", block_tiles=4, val_fraction=0.2, seed=4)
    assert np.array_equal(is_val, again) and not np.array_equal(is_val, other)


def test_uneven_blocks_and_edge_cases():
    rows, cols = grid(10, 7)  # blocks of 16, 12, 8, 6 tiles...
    rng = np.random.default_rng(0)
    keep = rng.random(70) < 0.8  # labelled tiles only
    is_val = split_tiles(rows[keep], cols[keep], "block", 4, 0.25, 0)
    assert abs(is_val.mean() - 0.25) < 0.1 and 0 < is_val.sum() < keep.sum()
    # one block: no split possible, everything trains; zero fraction: no validation
    assert not split_tiles(*grid(2, 2), "block", 4, 0.2, 0).any()
    assert not split_tiles(*grid(8, 8), "block", 4, 0.0, 0).any()
    # two blocks and a tiny fraction: each side still gets one
    assert split_tiles(*grid(4, 8), "block", 4, 0.05, 0).sum() == 16


def test_random_split_count():
    rows, cols = grid(10, 10)
    is_val = split_tiles(rows, cols, "random", val_fraction=0.2, seed=1)
    assert is_val.sum() == 20
    assert split_tiles(*grid(1, 2), "random", val_fraction=0.01, seed=0).sum() == 1
    with pytest.raises(UserError, match="--split must be one of block, random"):
        split_tiles(rows, cols, "kfold")
    with pytest.raises(UserError, match=r"--val_fraction must be in \[0, 1\)"):
        split_tiles(rows, cols, val_fraction=1.0)
