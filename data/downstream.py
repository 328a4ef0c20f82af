"""Downstream data in the published layout (docs/downstream.md).

``DATA/img/NAME.png`` tiles, ``DATA/<target_dir>/NAME.txt`` targets (``pop1km``: one float, the
tile's population), and list files (``train-wuhan.txt``, ``val-wuhan.txt``) naming one image file per
line. Targets may be vectors (several floats on a line, e.g. function proportions).

Names that are not given are found in the data folder (:class:`DownstreamLayout`): the published lists
``train-wuhan.txt``/``val-wuhan.txt`` when present, else ``train.txt``/``val.txt`` (what prepare_pois.py
writes); the tiles in ``img/`` when present, else in the pretraining layout's ``sub_shanghai_img/``.
An optional ``tile_index.csv`` (``name,minx,miny,maxx,maxy``) gives the tiles' positions.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch.utils.data import Dataset

from data.pretrain import open_rgb
from utils.errors import UserError

__all__ = ["read_list", "read_target", "select_fraction", "TileTargetDataset", "DownstreamLayout", "resolve_img_dir",
           "resolve_list", "read_tile_positions", "spatial_blocks"]

# Looked for in this order when no list flag is given: the published names, then prepare_pois.py's.
LIST_NAMES = {"train": ("train-wuhan.txt", "train.txt"), "val": ("val-wuhan.txt", "val.txt")}
# Tile folders in this order when --img_dir is not given: the downstream layout, then the pretraining one.
IMG_DIRS = ("img", "sub_shanghai_img")
TILE_INDEX = "tile_index.csv"


def resolve_img_dir(root: Path, img_dir: str | None) -> str:
    """``--img_dir`` or, when not given, ``img`` if present under ``root``, else ``sub_shanghai_img``."""
    if img_dir:
        return img_dir
    for cand in IMG_DIRS:
        if (Path(root) / cand).is_dir():
            return cand
    raise UserError(f"{root} holds neither img/ nor sub_shanghai_img/; pass --data_path of a published layout or "
                    "--img_dir")


def resolve_list(root: Path, list_file: str | None, split: str) -> str:
    """The ``split`` ("train" or "val") list: ``list_file`` when given, else the first of
    ``<split>-wuhan.txt`` (published) and ``<split>.txt`` (prepare_pois.py) present under ``root``."""
    if list_file:
        return list_file
    for cand in LIST_NAMES[split]:
        if (Path(root) / cand).is_file():
            return cand
    published, prepared = LIST_NAMES[split]
    raise UserError(f"{root} holds neither {published} nor {prepared}; write the {split} list (one image file name "
                    f"per line) or pass --{split}_list")


@dataclass(frozen=True)
class DownstreamLayout:
    """Where one downstream data set is: the root, its tile folder, a target folder and the two lists."""

    root: Path
    img_dir: str
    target_dir: str
    train_list: str
    val_list: str

    @classmethod
    def find(cls, root: str | Path, target_dir: str, img_dir: str | None = None, train_list: str | None = None,
             val_list: str | None = None) -> DownstreamLayout:
        """The layout under ``root``; names not given are looked up (module docstring). Explicit names win."""
        root = Path(root)
        if not root.is_dir():
            raise UserError(f"data directory {root} does not exist; pass --data_path (or --demo)")
        return cls(root, resolve_img_dir(root, img_dir), target_dir, resolve_list(root, train_list, "train"),
                   resolve_list(root, val_list, "val"))

    @property
    def targets(self) -> Path:
        return self.root / self.target_dir


def read_list(path: Path) -> list[str]:
    """Tile file names of a list file, one per line (blank lines ignored)."""
    if not path.is_file():
        raise UserError(f"list file {path} does not exist; check --data_path and the list flags")
    names = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    if not names:
        raise UserError(f"list file {path} is empty; it should name one image tile per line")
    return names


def select_fraction(names: list[str], fraction: float, seed: int) -> list[str]:
    """A seeded subset of ``round(fraction * len(names))`` names (at least one), in list order."""
    if not 0.0 < fraction <= 1.0:
        raise UserError(f"--label_fraction must lie in (0, 1], got {fraction}")
    if fraction >= 1.0:
        return list(names)
    k = max(1, int(round(fraction * len(names))))
    idx = np.sort(np.random.default_rng(seed).choice(len(names), size=k, replace=False))
    return [names[i] for i in idx]


def read_target(path: Path) -> np.ndarray:
    """Floats of a target file (whitespace or comma separated) -> float32 ``[K]``."""
    try:
        values = np.array([float(v) for v in path.read_text().replace(",", " ").split()], dtype=np.float32)
    except FileNotFoundError:
        raise UserError(f"target file {path} does not exist; every listed tile needs one") from None
    except ValueError:
        raise UserError(f"target file {path} does not hold numbers; it should hold the tile's value(s)") from None
    if values.size == 0 or not np.isfinite(values).all():
        raise UserError(f"target file {path} is empty or holds NaN/Inf; fix or drop this tile from the list")
    return values


class TileTargetDataset(Dataset):
    """Listed tiles with their targets: items ``(image [3, H, W], target [K], index)``.

    Targets are read once at construction so that a missing or malformed file is reported before
    training starts.
    """

    def __init__(self, root: str | Path, list_file: str, transform: Callable, img_dir: str = "img",
                 target_dir: str = "pop1km", names: list[str] | None = None):
        self.root = Path(root)
        if not self.root.is_dir():
            raise UserError(f"data directory {self.root} does not exist; pass --data_path (or --demo)")
        self.names = names if names is not None else read_list(self.root / list_file)
        self.img_dir = self.root / img_dir
        self.transform = transform
        tdir = self.root / target_dir
        if not tdir.is_dir():
            raise UserError(f"target directory {tdir} does not exist; check --target_dir")
        missing = [n for n in self.names if not (self.img_dir / n).is_file()]
        if missing:
            raise UserError(f"{len(missing)} listed tiles are missing from {self.img_dir} (first: {missing[0]}); fix "
                            "the list or the image directory")
        targets = [read_target(tdir / (Path(n).stem + ".txt")) for n in self.names]
        if len({t.shape for t in targets}) != 1:
            raise UserError(f"target files in {tdir} hold different numbers of values; each must hold the same count")
        self.targets = torch.from_numpy(np.stack(targets))  # [N, K]

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor, int]:
        return self.transform(open_rgb(self.img_dir / self.names[index])), self.targets[index], index


def read_tile_positions(root: str | Path) -> dict[str, tuple[float, float, float, float]] | None:
    """``{name: (minx, miny, maxx, maxy)}`` from ``root/tile_index.csv``, or None when there is none.

    The synthetic city and prepare_pois.py write this file; any CRS, any units (only relative positions
    are used).
    """
    path = Path(root) / TILE_INDEX
    if not path.is_file():
        return None
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    try:
        return {r["name"]: (float(r["minx"]), float(r["miny"]), float(r["maxx"]), float(r["maxy"])) for r in rows}
    except (KeyError, TypeError, ValueError):
        raise UserError(f"{path} is not a tile index with columns name,minx,miny,maxx,maxy of numbers; fix or remove "
                        "it") from None


def spatial_blocks(names: list[str], positions: dict[str, tuple[float, float, float, float]],
                   block_tiles: int = 4) -> np.ndarray:
    """Block id ``[N]`` of each named tile: tiles fall into squares of ``block_tiles`` x ``block_tiles``
    tile widths (the median tile width), counted from the lower-left corner of all tiles.

    Folds grouped by these ids never put two tiles of one block on both sides, so that the spatial
    autocorrelation of neighbouring tiles does not leak from training into validation.
    """
    missing = [n for n in names if n not in positions]
    if missing:
        raise UserError(f"{len(missing)} tiles are missing from {TILE_INDEX} (first: {missing[0]}); add them or remove "
                        "the tile index")
    box = np.array([positions[n] for n in names], dtype=np.float64)  # [N, 4]
    size = float(np.median(box[:, 2] - box[:, 0])) * block_tiles
    if not size > 0:
        raise UserError(f"the tiles in {TILE_INDEX} have no width (maxx <= minx); fix or remove the tile index")
    cx, cy = (box[:, 0] + box[:, 2]) / 2, (box[:, 1] + box[:, 3]) / 2
    bx = np.floor((cx - box[:, 0].min()) / size).astype(np.int64)
    by = np.floor((cy - box[:, 1].min()) / size).astype(np.int64)
    return bx * (int(by.max()) + 1) + by
