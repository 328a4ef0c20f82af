"""The pretraining data set: image tiles and their POI graphs, in a :class:`data.layout.PretrainLayout`
(the published folder layout by default; docs/data_layout.md)."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset
from torch_geometric.data import Batch, Data

from data.layout import PretrainLayout, tensor_name
from utils.errors import UserError
from utils.fileio import load_file

__all__ = [
    "IMAGE_EXTENSIONS",
    "PretrainDataset",
    "PretrainBatch",
    "collate_pretrain",
    "open_rgb",
    "list_images",
    "load_graph",
    "check_tensor",
    "has_pois",
]

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")


def open_rgb(path: Path) -> Image.Image:
    """Open an image tile as 8-bit RGB (grayscale, palette, RGBA and 16-bit tiles are converted)."""
    try:
        with Image.open(path) as im:
            im.load()
            if im.mode in ("I;16", "I;16B", "I;16L", "I"):
                # 16/32-bit single band: rescale to 8 bits instead of clipping.
                a = np.asarray(im, dtype=np.float64)
                lo, hi = float(a.min()), float(a.max())
                a = ((a - lo) / (hi - lo) * 255.0) if hi > lo else np.zeros_like(a)
                im = Image.fromarray(a.astype("uint8"))
            return im.convert("RGB")
    except (OSError, SyntaxError, ValueError) as exc:
        raise UserError(f"{path} is not a readable image ({exc}); replace or remove this tile") from None


def list_images(folder: Path) -> list[Path]:
    """Image files of ``folder``, sorted by name (deterministic order on every file system)."""
    if not folder.is_dir():
        raise UserError(f"{folder} is not a directory; check --data_path and the image directory flag")
    # Sorted as names, then made paths: the same order as sorting the paths, without pathlib's slow
    # comparisons (this runs at every launch, over up to millions of tiles).
    names = sorted(
        n for n in os.listdir(folder) if os.path.splitext(n)[1].lower() in IMAGE_EXTENSIONS and not n.startswith(".")
    )
    if not names:
        raise UserError(f"{folder} holds no image tiles (.png/.jpg/.tif); check --data_path")
    return [folder / n for n in names]


def check_tensor(t: object, path: Path, *, dtype_kind: str, rank: int, width: int | None = None) -> torch.Tensor:
    if not isinstance(t, torch.Tensor) or t.dim() != rank:
        shape = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
        raise UserError(
            f"{path} should hold a rank-{rank} tensor but holds {shape}; regenerate it with prepare_pois.py"
        )
    if dtype_kind == "float" and not t.is_floating_point():
        t = t.float()
    if width is not None and t.shape[-1] != width:
        raise UserError(
            f"{path} has embeddings of width {t.shape[-1]} but other tiles have {width}; use one category embedding table for all tiles"
        )
    return t


def load_graph(emb_path: Path, edge_path: Path, w_path: Path | None, poi_dim: int | None) -> Data:
    """Load and validate one tile's POI graph -> ``Data(x=[n_poi, F], edge_index=[2, n_edge], edge_weight=[n_edge])``.

    Raises :class:`UserError` naming the file and what is wrong (rank, width ``poi_dim``, NaN/Inf,
    edge shape or range, number of weights). Tiles with zero POIs are valid.
    """
    x = check_tensor(load_file(emb_path, "POI embedding file"), emb_path, dtype_kind="float", rank=2, width=poi_dim)
    if not torch.isfinite(x).all():
        raise UserError(f"{emb_path} contains NaN or Inf embeddings; regenerate it with prepare_pois.py")
    ei = check_tensor(load_file(edge_path, "POI edge file"), edge_path, dtype_kind="long", rank=2)
    if ei.shape[0] != 2:
        raise UserError(
            f"{edge_path} should hold a [2, n_edge] edge index but has shape {tuple(ei.shape)}; regenerate it with prepare_pois.py"
        )
    ei = ei.long()
    if ei.numel() and (int(ei.min()) < 0 or int(ei.max()) >= x.shape[0]):
        raise UserError(
            f"{edge_path} refers to POI nodes outside 0..{x.shape[0] - 1} (its tile's embedding and edge files do not match); regenerate both with prepare_pois.py"
        )
    data = Data(x=x.float(), edge_index=ei, num_nodes=x.shape[0])
    if w_path is not None:
        w = check_tensor(load_file(w_path, "edge weight file"), w_path, dtype_kind="float", rank=1)
        if w.shape[0] != ei.shape[1]:
            raise UserError(
                f"{w_path} has {w.shape[0]} edge weights for {ei.shape[1]} edges; regenerate it with prepare_pois.py"
            )
        data.edge_weight = w.float()
    return data


def has_pois(graphs: Batch) -> torch.Tensor:
    """``bool [B]``: which graphs of a collated batch hold at least one POI (on the batch's device; a
    CPU batch costs no device synchronisation). Tiles without POIs are valid data (docs/method.md,
    "Tiles without POIs")."""
    return graphs.ptr[1:] > graphs.ptr[:-1]


@dataclass
class PretrainBatch:
    """A collated batch: two image views ``[B, 3, H, W]`` each and the tiles' POI graphs."""

    view1: torch.Tensor
    view2: torch.Tensor
    graphs: Batch

    @property
    def has_pois(self) -> torch.Tensor:
        """``bool [B]``: the tiles with at least one POI."""
        return has_pois(self.graphs)

    def pin_memory(self) -> PretrainBatch:
        return PretrainBatch(self.view1.pin_memory(), self.view2.pin_memory(), self.graphs.pin_memory())


def collate_pretrain(samples: list[tuple[torch.Tensor, torch.Tensor, Data]]) -> PretrainBatch:
    """Stack views and batch the POI graphs (zero-node graphs included)."""
    v1, v2, graphs = zip(*samples, strict=True)
    return PretrainBatch(torch.stack(v1), torch.stack(v2), Batch.from_data_list(list(graphs)))


class PretrainDataset(Dataset):
    """Image tiles with their POI graphs; each item is two independent augmented views + the graph.

    Args:
        layout: where the files are (:class:`data.layout.PretrainLayout`, or a data root with the
            published sub-folder names). Edge weights are used when the weight folder exists.
        transform: augmentation applied twice, independently, to each tile.
        images, poi_dim: the tiles to use and their embedding width, when a pre-scan
            (:mod:`data.scan`) already checked them; default: every tile of the image folder.
        without_pois: how many of ``images`` have no POI, as the pre-scan counted them (None: not
            counted); read by ``mmgr.py`` before training (``--empty_poi_tiles``).

    Items: ``(view1 [3, H, W], view2 [3, H, W], Data(x=[n_poi, F], edge_index=[2, n_edge],
    edge_weight=[n_edge] | None))``.
    """

    def __init__(
        self,
        layout: PretrainLayout | str | Path,
        transform: Callable,
        images: list[Path] | None = None,
        poi_dim: int | None = None,
        without_pois: int | None = None,
    ):
        self.without_pois = without_pois
        self.layout = layout = PretrainLayout.of(layout)
        self.root = layout.root
        if not self.root.is_dir():
            raise UserError(
                f"data directory {self.root} does not exist; pass --data_path (or --demo for the built-in synthetic city)"
            )
        self.transform = transform
        self.images = list(images) if images is not None else list_images(layout.img)
        self.emb_dir, self.edge_dir = layout.emb, layout.edge
        self.weight_dir = layout.weight if layout.has_weights else None  # looked up once, not per item
        for d in (self.emb_dir, self.edge_dir):
            if not d.is_dir():
                raise UserError(
                    f"{d} does not exist; the pretraining layout needs {layout.emb_dir}/ and {layout.edge_dir}/ "
                    f"beside {layout.img_dir}/"
                )
        if images is not None and poi_dim is not None:
            self.poi_dim: int = poi_dim
            return
        missing = [
            p.name
            for p in self.images
            if not (self.emb_dir / tensor_name(p)).is_file() or not (self.edge_dir / tensor_name(p)).is_file()
        ]
        if missing:
            raise UserError(
                f"{len(missing)} tiles have no POI tensors in {self.emb_dir} / {self.edge_dir} "
                f"(first: {missing[0]}); run prepare_pois.py or remove those tiles"
            )
        first = self.emb_dir / tensor_name(self.images[0])
        self.poi_dim = int(
            check_tensor(load_file(first, "POI embedding file"), first, dtype_kind="float", rank=2).shape[1]
        )

    def __len__(self) -> int:
        return len(self.images)

    def graph(self, index: int) -> Data:
        """The POI graph of tile ``index``, validated."""
        name = tensor_name(self.images[index])
        return load_graph(
            self.emb_dir / name,
            self.edge_dir / name,
            self.weight_dir / name if self.weight_dir is not None else None,
            self.poi_dim,
        )

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor, Data]:
        img = open_rgb(self.images[index])
        return self.transform(img), self.transform(img), self.graph(index)
