"""Downstream data in the published layout (docs/downstream.md).

``DATA/img/NAME.png`` tiles, ``DATA/<target_dir>/NAME.txt`` targets (``pop1km``: one float, the
tile's population), and list files (``train-wuhan.txt``, ``val-wuhan.txt``) naming one image file per
line. Targets may be vectors (several floats on a line, e.g. function proportions).

Names that are not given are found in the data folder (:class:`data.layout.DownstreamLayout`).
The tiles' positions, where known, come from the folder's tile index (prepare/tile_index.py).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from data.layout import check_target
from data.pretrain import open_rgb
from utils.errors import UserError

__all__ = ["read_list", "read_target", "select_fraction", "TileTargetDataset"]


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

    def __init__(
        self,
        root: str | Path,
        list_file: str,
        transform: Callable,
        img_dir: str = "img",
        target_dir: str = "pop1km",
        names: list[str] | None = None,
    ):
        self.root = Path(root)
        if not self.root.is_dir():
            raise UserError(f"data directory {self.root} does not exist; pass --data_path (or --demo)")
        self.names = names if names is not None else read_list(self.root / list_file)
        self.img_dir = self.root / img_dir
        self.transform = transform
        tdir = self.root / target_dir
        check_target(self.root, target_dir)
        missing = [n for n in self.names if not (self.img_dir / n).is_file()]
        if missing:
            raise UserError(
                f"{len(missing)} listed tiles are missing from {self.img_dir} (first: {missing[0]}); fix "
                "the list or the image directory"
            )
        targets = [read_target(tdir / (Path(n).stem + ".txt")) for n in self.names]
        if len({t.shape for t in targets}) != 1:
            raise UserError(f"target files in {tdir} hold different numbers of values; each must hold the same count")
        self.targets = torch.from_numpy(np.stack(targets))  # [N, K]

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor, int]:
        return self.transform(open_rgb(self.img_dir / self.names[index])), self.targets[index], index
