"""Several data roots read as one: the checks that make their union one training set (README "Two cities").

``mmgr.py --data_path A B`` pretrains on the tiles of every root, in root order. Each root is a
folder in the pretraining layout (prepared by ``prepare_pois.py``, the synthetic city, the published
layout) or a pack (``python -m data.pack``). Before anything is written, :func:`check_roots` refuses,
in one sentence naming the roots and the fix:

* a root given twice (the same folder under two spellings included);
* roots whose tiles differ in size or band count (the first tile of each root is read: its header
  only; a pack records its tile shape);
* roots whose POI embeddings differ in width (the first embedding file of each root; a pack's
  ``poi_dim``);
* roots whose category tables (``category_embeddings.csv``, written by prepare_pois.py and the
  synthetic city) give one category two different vectors or differ in width: their POI encoders
  would read two languages. ``prepare_pois.py --embeddings A/category_embeddings.csv`` for B is the
  fix (docs/real_data.md, "One vocabulary for several cities").

Also here, for the scripts that read another city's tiles (a test root of the downstream scripts,
``embed.py`` over several roots): :func:`check_test_root` (a root to map: it exists, is not the
training root, has a tile index), :func:`tile_index_file` / :func:`require_tile_index` (a root's tile
index, written by prepare_pois.py as ``tile_index.gpkg``/``tile_index.csv``; reading it is
``prepare.tile_index.read_tile_index``'s job, a floor above this one: ``[read_tile_index(r) for r in
data_roots(...)]``) and :func:`root_labels`, short unique names of the roots for the columns and file
names of their outputs.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from torch.utils.data import ConcatDataset, Dataset

from data.layout import CATEGORY_TABLE, PretrainLayout, is_prepared_folder, tensor_name
from data.pack import PACK_META, is_packed
from data.pretrain import IMAGE_EXTENSIONS, check_tensor
from utils.errors import UserError
from utils.fileio import load_file

__all__ = [
    "CATEGORY_TABLE",
    "TILE_INDEX_FILES",
    "RootFacts",
    "MultiRootDataset",
    "data_roots",
    "check_distinct",
    "root_facts",
    "check_roots",
    "read_category_table",
    "check_vocabulary",
    "root_labels",
    "tile_index_file",
    "require_tile_index",
    "check_test_root",
    "describe_counts",
]

# The tile index prepare_pois.py writes (prepare/tile_index.py), with its CRS first, then positions only.
TILE_INDEX_FILES = ("tile_index.gpkg", "tile_index.csv")
# Vectors of one category in two tables: equal when within this (tables round-trip through text).
_VECTOR_ATOL = 1e-6


def data_roots(value: str | os.PathLike | Sequence[str | os.PathLike]) -> list[Path]:
    """``--data_path`` as a list of roots: one path (the published flag) or several."""
    if isinstance(value, (str, os.PathLike)):
        return [Path(value)]
    return [Path(v) for v in value]


def _names(roots: Sequence[Path]) -> str:
    return ", ".join(str(r) for r in roots)


def check_distinct(roots: Sequence[Path], flag: str = "--data_path") -> None:
    """Refuse a root given twice (compared after resolving links and ``..``): its tiles would count double."""
    seen: dict[Path, Path] = {}
    for r in roots:
        key = Path(os.path.realpath(r))
        if key in seen:
            same = f"{r} is given twice" if str(seen[key]) == str(r) else f"{seen[key]} and {r} are the same folder"
            raise UserError(f"{flag} {_names(roots)}: {same}; give each root once")
        seen[key] = r


@dataclass(frozen=True)
class RootFacts:
    """What must agree between the roots of one run, read from the first tile of each root."""

    root: Path
    tile_size: tuple[int, int] | None  # (width, height) in px; None when the root has no readable tile
    bands: int | None
    poi_dim: int | None
    table: Path | None  # its category table, when it has one


def _first_tile(layout: PretrainLayout) -> Path | None:
    try:
        names = sorted(n for n in os.listdir(layout.img) if os.path.splitext(n)[1].lower() in IMAGE_EXTENSIONS)
    except OSError:
        return None
    return layout.img / names[0] if names else None


def root_facts(layout: PretrainLayout) -> RootFacts:
    """Tile size, band count, POI width and category table of one root (a pack's from its metadata).

    Only headers and one small tensor are read; a root that is missing or empty gets ``None`` facts
    (the pre-scan then names what is wrong with it).
    """
    root = layout.root
    table = root / CATEGORY_TABLE if (root / CATEGORY_TABLE).is_file() else None
    if is_packed(root):
        try:
            meta = json.loads((root / PACK_META).read_text())
            bands, h, w = meta["tile_shape"]
            return RootFacts(root, (int(w), int(h)), int(bands), int(meta["poi_dim"]), table)
        except (OSError, ValueError, KeyError, TypeError):
            return RootFacts(root, None, None, None, table)  # opening the pack names what is wrong with it
    size = bands = poi_dim = None
    tile = _first_tile(layout)
    if tile is not None:
        try:
            with Image.open(tile) as im:
                size, bands = (int(im.size[0]), int(im.size[1])), len(im.getbands())
        except (OSError, SyntaxError, ValueError):
            pass  # the pre-scan reports the damaged tile
        emb = layout.emb / tensor_name(tile)
        if emb.is_file():
            try:
                poi_dim = int(
                    check_tensor(load_file(emb, "POI embedding file"), emb, dtype_kind="float", rank=2).shape[1]
                )
            except UserError:
                pass  # idem
    return RootFacts(root, size, bands, poi_dim, table)


def _refuse_difference(facts: Sequence[RootFacts], attr: str, what: str, fix: str, show=str) -> None:
    known = [f for f in facts if getattr(f, attr) is not None]
    values = {getattr(f, attr) for f in known}
    if len(values) > 1:
        listed = ", ".join(f"{f.root} {show(getattr(f, attr))}" for f in known)
        raise UserError(f"--data_path roots differ in {what} ({listed}); {fix}")


def check_roots(layouts: Sequence[PretrainLayout]) -> list[RootFacts]:
    """The refusals of the module docstring, before anything is written; returns each root's facts.

    One root is never refused here (it behaves as before several roots existed).
    """
    roots = [lay.root for lay in layouts]
    check_distinct(roots)
    facts = [root_facts(lay) for lay in layouts]
    if len(layouts) < 2:
        return facts
    _refuse_difference(
        facts,
        "tile_size",
        "tile size",
        "prepare them with the same --tile_px (prepare_pois.py) or --tile_size (synthetic city)",
        lambda s: f"{s[0]}x{s[1]} px",
    )
    _refuse_difference(
        facts,
        "bands",
        "band count",
        "prepare them with the same number of --bands (prepare_pois.py)",
        lambda b: f"{b} band(s)",
    )
    _refuse_difference(
        facts,
        "poi_dim",
        "POI embedding width",
        "prepare every root with one category table: prepare_pois.py --embeddings A/category_embeddings.csv",
        lambda d: f"{d}-d",
    )
    check_vocabulary([f.table for f in facts if f.table is not None])
    return facts


def read_category_table(path: Path) -> tuple[list[str], np.ndarray]:
    """``(categories [C], vectors [C, D] float32)`` of a ``category,v0..`` table, as prepare_pois.py writes it."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            rows = [r for r in csv.reader(f) if r]
        cats = [r[0].strip() for r in rows[1:]]
        vecs = np.asarray([[float(v) for v in r[1:]] for r in rows[1:]], dtype=np.float32)
        width = len(rows[0]) - 1
    except (OSError, IndexError, ValueError, UnicodeDecodeError):
        raise UserError(
            f"{path} is not a category table (category,v0,v1,... with one row per category); prepare its root "
            "again with prepare_pois.py"
        ) from None
    return cats, vecs.reshape(len(cats), width)


def check_vocabulary(tables: Sequence[Path]) -> None:
    """Refuse category tables that differ in width or give one category two vectors (naming ``--embeddings``)."""
    if len(tables) < 2:
        return
    first_path = tables[0]
    first_cats, first_vecs = read_category_table(first_path)
    seen: dict[str, tuple[Path, np.ndarray]] = {c: (first_path, v) for c, v in zip(first_cats, first_vecs, strict=True)}
    for path in tables[1:]:
        cats, vecs = read_category_table(path)
        if vecs.shape[1] != first_vecs.shape[1]:
            raise UserError(
                f"the category tables {first_path} ({first_vecs.shape[1]}-d) and {path} ({vecs.shape[1]}-d) differ "
                f"in width; {_vocabulary_fix(path, first_path)}"
            )
        for c, v in zip(cats, vecs, strict=True):
            if c in seen and not np.allclose(seen[c][1], v, atol=_VECTOR_ATOL, rtol=0):
                other = seen[c][0]
                raise UserError(
                    f"the category tables {other} and {path} give category {c!r} different vectors; "
                    f"{_vocabulary_fix(path, other)}"
                )
            seen.setdefault(c, (path, v))


def _vocabulary_fix(path: Path, shared: Path) -> str:
    """How the root of table ``path`` gets the vocabulary of table ``shared``: by prepare_pois.py, or, for a
    root it did not prepare (the synthetic city), by whatever wrote its table."""
    if is_prepared_folder(path.parent):
        return (
            f"prepare {path.parent} again with prepare_pois.py --embeddings {shared} so the roots share one "
            "vocabulary (docs/real_data.md)"
        )
    return (
        f"the roots must share one vocabulary: write {path.parent} with the table {shared} (synthetic cities: "
        "the same --seed; a city of yours: prepare_pois.py --embeddings, docs/real_data.md)"
    )


class MultiRootDataset(ConcatDataset):
    """The union of several roots' pretraining data sets, in root order (items as each root's own).

    Attributes: ``roots`` (the roots, in order), ``counts`` (tiles per root), ``poi_dim`` (the
    roots' common POI embedding width, checked by :func:`check_roots`) and ``without_pois`` (tiles without
    POIs over all roots; None when a root did not count them).
    """

    def __init__(self, roots: Sequence[Path], datasets: Sequence[Dataset]):
        super().__init__(list(datasets))
        self.roots = list(roots)
        self.counts = [len(d) for d in datasets]
        self.poi_dim: int = int(datasets[0].poi_dim)
        empty = [getattr(d, "without_pois", None) for d in datasets]
        self.without_pois: int | None = None if any(n is None for n in empty) else sum(empty)


def describe_counts(roots: Sequence[Path], counts: Sequence[int]) -> str:
    """``'2 roots: 120 tiles from A, 80 from B, 200 in all'`` (the start line of a run on several roots)."""
    parts = [
        f"{n} tiles from {r}" if k == 0 else f"{n} from {r}" for k, (r, n) in enumerate(zip(roots, counts, strict=True))
    ]
    return f"data: {len(roots)} roots: {', '.join(parts)}, {sum(counts)} in all"


def root_labels(roots: Sequence[Path]) -> list[str]:
    """Short unique labels of the roots: each folder's name, with its parents' names added until unique
    (``city_a``, ``city_b``; ``x/half``, ``y/half``)."""
    parts = [Path(os.path.realpath(r)).parts for r in roots]
    depth = 1
    while True:
        labels = ["/".join(p[-depth:]) for p in parts]
        if len(set(labels)) == len(labels) or depth >= max(len(p) for p in parts):
            return labels
        depth += 1


def tile_index_file(root: str | os.PathLike) -> Path | None:
    """The tile index of ``root`` (``tile_index.gpkg``, else ``tile_index.csv``), or None."""
    for name in TILE_INDEX_FILES:
        if (Path(root) / name).is_file():
            return Path(root) / name
    return None


def require_tile_index(root: str | os.PathLike, flag: str = "--test_data_path") -> Path:
    """The tile index of ``root``, or a :class:`UserError` naming ``flag`` and the fix (a map needs one)."""
    found = tile_index_file(root)
    if found is None:
        raise UserError(
            f"{flag} {root} has no tile index ({' or '.join(TILE_INDEX_FILES)}), so its tiles cannot be placed "
            "on a map; prepare it with prepare_pois.py, which writes one"
        )
    return found


def check_test_root(
    test_root: str | os.PathLike, train_root: str | os.PathLike, flag: str = "--test_data_path"
) -> Path:
    """A root to map (and score where labelled) with a model trained on ``train_root``: it exists, is not
    the training root, and has a tile index (:func:`require_tile_index`); returns that index's path.

    For the downstream scripts' ``--test_data_path`` (train on one city, map another): called before
    anything is written, so a wrong root costs no training.
    """
    test_root = Path(test_root)
    if not test_root.is_dir():
        raise UserError(f"{flag} {test_root} does not exist; pass the data folder of the city to map")
    if os.path.realpath(test_root) == os.path.realpath(train_root):
        raise UserError(
            f"{flag} {test_root} is --data_path {train_root} itself, whose validation tiles are scored already; "
            "pass the data folder of another city"
        )
    return require_tile_index(test_root, flag)
