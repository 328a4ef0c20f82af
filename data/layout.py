"""Folder layouts of the data, each one value (docs/data_layout.md).

Pretraining, one sample per image tile (the published names are the defaults)::

    ROOT/sub_shanghai_img/NAME.png        RGB tile
    ROOT/sub_shanghai_emb/NAME.tensor     float [n_poi, F]: the category embedding of each POI
    ROOT/sub_shanghai_edge/NAME.tensor    long [2, n_edge]: the tile's POI graph
    ROOT/sub_shanghai_weight/NAME.tensor  optional float [n_edge]: edge weights, used when the folder exists

Downstream::

    ROOT/img/NAME.png, ROOT/<target>/NAME.txt, ROOT/train-wuhan.txt, ROOT/val-wuhan.txt

The tensor and target names are the image name with its extension replaced. Downstream names that
are not given are found in the folder (:class:`DownstreamLayout`): the published lists
``train-wuhan.txt``/``val-wuhan.txt`` when present, else ``train.txt``/``val.txt`` (what prepare_pois.py
writes); the tiles in ``img/`` when present, else in the pretraining layout's ``sub_shanghai_img/``.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass
from pathlib import Path

from utils.errors import UserError

__all__ = [
    "PUBLISHED_PRETRAIN_DIRS",
    "PretrainLayout",
    "add_layout_flags",
    "tensor_name",
    "DownstreamLayout",
    "resolve_img_dir",
    "resolve_list",
    "LIST_NAMES",
    "IMG_DIRS",
    "PREPARE_SUMMARY",
    "CATEGORY_TABLE",
    "is_prepared_folder",
    "available_targets",
    "check_target",
]

# Sub-folder names of the published pretraining layout (the authors' sample is a part of Shanghai).
PUBLISHED_PRETRAIN_DIRS = {
    "img_dir": "sub_shanghai_img",
    "emb_dir": "sub_shanghai_emb",
    "edge_dir": "sub_shanghai_edge",
    "weight_dir": "sub_shanghai_weight",
}


def tensor_name(image: str | Path) -> str:
    """``NAME.png`` -> ``NAME.tensor`` (the published naming of a tile's POI files)."""
    return Path(image).stem + ".tensor"


@dataclass(frozen=True)
class PretrainLayout:
    """Where the pretraining files of one data root are: the root and its four sub-folder names."""

    root: Path
    img_dir: str = PUBLISHED_PRETRAIN_DIRS["img_dir"]
    emb_dir: str = PUBLISHED_PRETRAIN_DIRS["emb_dir"]
    edge_dir: str = PUBLISHED_PRETRAIN_DIRS["edge_dir"]
    weight_dir: str = PUBLISHED_PRETRAIN_DIRS["weight_dir"]

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root))

    @classmethod
    def of(cls, where: PretrainLayout | str | Path) -> PretrainLayout:
        """``where`` itself if it is a layout, else the published layout under the root ``where``."""
        return where if isinstance(where, PretrainLayout) else cls(Path(where))

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> PretrainLayout:
        """The layout named by ``--data_path --img_dir --emb_dir --edge_dir --weight_dir`` (one root)."""
        return cls(Path(args.data_path), args.img_dir, args.emb_dir, args.edge_dir, args.weight_dir)

    @classmethod
    def all_from_args(cls, args: argparse.Namespace) -> list[PretrainLayout]:
        """One layout per root of ``--data_path`` (one path or several), all with the same sub-folder names."""
        roots = [args.data_path] if isinstance(args.data_path, (str, os.PathLike)) else list(args.data_path)
        return [cls(Path(r), args.img_dir, args.emb_dir, args.edge_dir, args.weight_dir) for r in roots]

    @property
    def img(self) -> Path:
        return self.root / self.img_dir

    @property
    def emb(self) -> Path:
        return self.root / self.emb_dir

    @property
    def edge(self) -> Path:
        return self.root / self.edge_dir

    @property
    def weight(self) -> Path:
        return self.root / self.weight_dir

    @property
    def has_weights(self) -> bool:
        """Edge weights are optional: used when their folder exists."""
        return self.weight.is_dir()

    def poi_files(self, image: str | Path) -> tuple[Path, Path, Path | None]:
        """``(embedding, edge, weight or None)`` files of the tile whose image is ``image``."""
        name = tensor_name(image)
        return self.emb / name, self.edge / name, self.weight / name if self.has_weights else None

    def make_dirs(self, weights: bool = True) -> None:
        """Create the sub-folders (for writers of this layout)."""
        for d in (self.img, self.emb, self.edge, *((self.weight,) if weights else ())):
            d.mkdir(parents=True, exist_ok=True)


def add_layout_flags(p: argparse.ArgumentParser) -> None:
    """``--img_dir --emb_dir --edge_dir --weight_dir`` with the published names as defaults."""
    p.add_argument(
        "--img_dir",
        default=PUBLISHED_PRETRAIN_DIRS["img_dir"],
        help="tile directory under --data_path (default published)",
    )
    p.add_argument(
        "--emb_dir", default=PUBLISHED_PRETRAIN_DIRS["emb_dir"], help="POI embedding directory (default published)"
    )
    p.add_argument(
        "--edge_dir", default=PUBLISHED_PRETRAIN_DIRS["edge_dir"], help="POI edge directory (default published)"
    )
    p.add_argument(
        "--weight_dir",
        default=PUBLISHED_PRETRAIN_DIRS["weight_dir"],
        help="optional edge-weight directory, used when present (default 'sub_shanghai_weight')",
    )


# Written last by prepare_pois.py into its --out: the mark of a folder it prepared (docs/real_data.md).
PREPARE_SUMMARY = "prepare_summary.json"
# The category vectors the POI tensors were written with (prepare_pois.py, the synthetic city; copied
# into a pack): roots trained on together must agree on them (data/roots.py).
CATEGORY_TABLE = "category_embeddings.csv"


def is_prepared_folder(root: str | Path | list[str | Path]) -> bool:
    """Whether ``root`` was written by ``prepare_pois.py`` (it holds :data:`PREPARE_SUMMARY`); for several
    roots (``mmgr.py --data_path A B``), whether every one of them was."""
    if isinstance(root, (list, tuple)):
        return bool(root) and all(is_prepared_folder(r) for r in root)
    return (Path(root) / PREPARE_SUMMARY).is_file()


def available_targets(root: str | Path) -> list[str]:
    """The target folders of a data folder, sorted: sub-folders other than the tile and POI folders that
    hold ``STEM.txt`` files (only the first entries of each are looked at)."""
    root = Path(root)
    skip = {*IMG_DIRS, *PUBLISHED_PRETRAIN_DIRS.values()}
    out = []
    try:
        subdirs = [e for e in os.scandir(root) if e.is_dir() and e.name not in skip and not e.name.startswith(".")]
    except OSError:
        return []
    for d in subdirs:
        with os.scandir(d.path) as it:
            for k, e in enumerate(it):
                if e.name.endswith(".txt"):
                    out.append(d.name)
                    break
                if k >= 100:  # not a target folder (a run folder, a tile folder of another name)
                    break
    return sorted(out)


def _no_target_reason(root: Path) -> str:
    """Why a data folder without target folders has none, and how to get one."""
    if is_prepared_folder(root):
        return (
            f"{root} was prepared by prepare_pois.py without --target, so it has no target and no train/val "
            "lists; prepare it again with --target NAME=FILE:COLUMN (e.g. pop1km=census.gpkg:POP; docs/real_data.md)"
        )
    return f"{root} holds no target folder (NAME/STEM.txt files); check --data_path"


def check_target(root: str | Path, target_dir: str, flag: str = "--target_dir") -> None:
    """Raise a :class:`UserError` naming the targets ``root`` has when it has no folder ``target_dir``."""
    root = Path(root)
    if (root / target_dir).is_dir():
        return
    have = available_targets(root)
    if have:
        raise UserError(
            f"{root} has no target {target_dir!r} (no folder {root / target_dir}); its targets are "
            f"{', '.join(have)}: pass one with {flag}"
        )
    raise UserError(f"{root} has no target {target_dir!r}: {_no_target_reason(root)}")


# Looked for in this order when no list flag is given: the published names, then prepare_pois.py's.
LIST_NAMES = {"train": ("train-wuhan.txt", "train.txt"), "val": ("val-wuhan.txt", "val.txt")}
# Tile folders in this order when --img_dir is not given: the downstream layout, then the pretraining one.
IMG_DIRS = ("img", PUBLISHED_PRETRAIN_DIRS["img_dir"])


def resolve_img_dir(root: Path, img_dir: str | None) -> str:
    """``--img_dir`` or, when not given, ``img`` if present under ``root``, else ``sub_shanghai_img``."""
    if img_dir:
        return img_dir
    for cand in IMG_DIRS:
        if (Path(root) / cand).is_dir():
            return cand
    raise UserError(
        f"{root} holds neither img/ nor sub_shanghai_img/; pass --data_path of a published layout or --img_dir"
    )


def resolve_list(root: Path, list_file: str | None, split: str) -> str:
    """The ``split`` ("train" or "val") list: ``list_file`` when given, else the first of
    ``<split>-wuhan.txt`` (published) and ``<split>.txt`` (prepare_pois.py) present under ``root``."""
    if list_file:
        return list_file
    for cand in LIST_NAMES[split]:
        if (Path(root) / cand).is_file():
            return cand
    published, prepared = LIST_NAMES[split]
    if is_prepared_folder(root) and not available_targets(root):
        raise UserError(f"{root} has no {split} list: {_no_target_reason(Path(root))}")
    raise UserError(
        f"{root} holds neither {published} nor {prepared}; write the {split} list (one image file name "
        f"per line) or pass --{split}_list"
    )


@dataclass(frozen=True)
class DownstreamLayout:
    """Where one downstream data set is: the root, its tile folder, a target folder and the two lists."""

    root: Path
    img_dir: str
    target_dir: str
    train_list: str
    val_list: str

    @classmethod
    def find(
        cls,
        root: str | Path,
        target_dir: str,
        img_dir: str | None = None,
        train_list: str | None = None,
        val_list: str | None = None,
    ) -> DownstreamLayout:
        """The layout under ``root``; names not given are looked up (module docstring). Explicit names win."""
        root = Path(root)
        if not root.is_dir():
            raise UserError(f"data directory {root} does not exist; pass --data_path (or --demo)")
        img_dir = resolve_img_dir(root, img_dir)
        check_target(root, target_dir)
        return cls(
            root,
            img_dir,
            target_dir,
            resolve_list(root, train_list, "train"),
            resolve_list(root, val_list, "val"),
        )

    @property
    def targets(self) -> Path:
        return self.root / self.target_dir
