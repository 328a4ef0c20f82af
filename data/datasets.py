"""One place that picks the pretraining data set for a layout and an augmentation mode.

Three sources give equal items: the folder layout decoded with PIL (the published path), the folder
layout decoded to uint8 only (augmentation on the device, ``--augment gpu``), and a pack written by
``python -m data.pack`` (recognised by its ``mmgr_pack.json``), in either mode.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from torch.utils.data import Dataset

from data.layout import PretrainLayout
from data.pack import PackedPretrainDataset, is_packed
from data.pretrain import PretrainDataset, collate_pretrain
from data.raw import RawPretrainDataset, collate_raw
from data.roots import MultiRootDataset
from data.transforms import pretrain_transform

__all__ = ["AUGMENT_MODES", "build_pretrain_dataset", "build_union", "collate_for"]

# cpu: two PIL-augmented views per item (published); gpu: decoded uint8 tiles, views drawn on the device.
AUGMENT_MODES = ("cpu", "gpu")


def build_pretrain_dataset(
    layout: PretrainLayout,
    augment: str,
    img_size: int,
    tiles: list[Path] | None = None,
    poi_dim: int | None = None,
    without_pois: int | None = None,
) -> Dataset:
    """The data set of ``layout`` for ``--augment`` mode ``augment``.

    ``tiles``/``poi_dim``/``without_pois``: the pre-scan's good tiles, POI width and count of tiles without
    POIs (folder layouts only; a pack was validated when it was written and counts its own). Items:
    ``(view1, view2, graph)`` for ``cpu``, ``(uint8 [3, H, W], graph)`` for ``gpu``. Every data set has
    ``without_pois`` (int, or None when not counted).
    """
    if augment not in AUGMENT_MODES:
        raise ValueError(f"augment must be one of {AUGMENT_MODES}, got {augment!r}")
    if is_packed(layout.root):
        return PackedPretrainDataset(layout.root, None if augment == "gpu" else pretrain_transform(img_size))
    if augment == "gpu":
        return RawPretrainDataset(layout, images=tiles, poi_dim=poi_dim, without_pois=without_pois)
    return PretrainDataset(
        layout, pretrain_transform(img_size), images=tiles, poi_dim=poi_dim, without_pois=without_pois
    )


def build_union(
    layouts: list[PretrainLayout],
    augment: str,
    img_size: int,
    tiles: list[list[Path] | None],
    poi_dim: int | None = None,
    without_pois: list[int | None] | None = None,
) -> Dataset:
    """The data set of several roots (``mmgr.py --data_path A B``): their union in root order.

    ``tiles[k]``/``without_pois[k]``: root ``k``'s good tiles and tiles without POIs from its pre-scan (None
    for a pack, which counts its own). One root gives exactly :func:`build_pretrain_dataset`'s data set, so
    a run on one root is the run it always was.
    """
    empty = [None] * len(layouts) if without_pois is None else without_pois
    parts = [
        build_pretrain_dataset(lay, augment, img_size, t, poi_dim, n)
        for lay, t, n in zip(layouts, tiles, empty, strict=True)
    ]
    if len(parts) == 1:
        return parts[0]
    return MultiRootDataset([lay.root for lay in layouts], parts)


def collate_for(augment: str) -> Callable:
    """The collate function of :func:`build_pretrain_dataset`'s items in mode ``augment``."""
    return collate_raw if augment == "gpu" else collate_pretrain
