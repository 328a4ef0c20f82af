"""Shared fixtures: a tiny hand-made data set in both published layouts (no generator involved)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from prepare.graph import delaunay_edges  # noqa: E402

torch.set_num_threads(1)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked ``slow`` (seconds each: they run the real scripts in subprocesses) run first.

    pytest-xdist hands out two tests at a time (``--maxschedchunk 2`` in pytest.ini), so the long tests
    start early on whichever process is free and the run ends on short ones: both processes finish
    together. In collection order a 50 s test near the end kept one core idle meanwhile (issue 20). The
    sort is stable, so the order is otherwise the collection's, the same in every worker as xdist needs.
    """
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)


def make_layout(
    root: Path,
    n_tiles: int = 12,
    size: int = 32,
    poi_dim: int = 8,
    seed: int = 0,
    weights: bool = True,
    zero_poi: tuple[int, ...] = (0, 5),
) -> Path:
    """Write ``n_tiles`` random tiles with POI graphs (tiles in ``zero_poi`` have none) and targets."""
    rng = np.random.default_rng(seed)
    for d in ("sub_shanghai_img", "sub_shanghai_emb", "sub_shanghai_edge", "img", "pop1km"):
        (root / d).mkdir(parents=True, exist_ok=True)
    if weights:
        (root / "sub_shanghai_weight").mkdir(exist_ok=True)
    names = []
    for i in range(n_tiles):
        name = f"t{i:03d}"
        names.append(name + ".png")
        arr = rng.integers(0, 256, size=(size, size, 3), dtype=np.uint8)
        Image.fromarray(arr).save(root / "sub_shanghai_img" / f"{name}.png")
        Image.fromarray(arr).save(root / "img" / f"{name}.png")
        n = 0 if i in zero_poi else int(rng.integers(1, 9))
        xy = rng.random((n, 2))
        ei, w = delaunay_edges(xy)
        torch.save(
            torch.from_numpy(rng.standard_normal((n, poi_dim)).astype(np.float32)),
            root / "sub_shanghai_emb" / f"{name}.tensor",
        )
        torch.save(torch.from_numpy(ei), root / "sub_shanghai_edge" / f"{name}.tensor")
        if weights:
            torch.save(torch.from_numpy(w), root / "sub_shanghai_weight" / f"{name}.tensor")
        (root / "pop1km" / f"{name}.txt").write_text(f"{float(arr.mean()):.4f}\n")
    (root / "train-wuhan.txt").write_text("\n".join(names[: n_tiles * 2 // 3]) + "\n")
    (root / "val-wuhan.txt").write_text("\n".join(names[n_tiles * 2 // 3 :]) + "\n")
    return root


@pytest.fixture
def tiny_data(tmp_path: Path) -> Path:
    return make_layout(tmp_path / "data")


def run_script(args: list[str], cwd: Path, timeout: int = 300):
    """Run one of the repository's scripts as a user would, from ``cwd``."""
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    return subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
