"""Decode-only pretraining items for device-side augmentation (``--augment gpu``).

The CPU workers only decode each tile to ``uint8 [3, H, W]`` (torchvision.io: libpng/libjpeg
straight into a tensor, faster than PIL plus a conversion); the two views are cropped, jittered
and normalised as a batch on the training device by :class:`data.gpu_augment.GPUAugment`. uint8
batches are also 4x smaller to pin and copy than float views, and one decoded tile serves both views.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch_geometric.data import Batch, Data
from torchvision.io import ImageReadMode, decode_image

from data.layout import PretrainLayout
from data.pretrain import PretrainDataset, has_pois, open_rgb
from utils.errors import UserError

# torchvision 0.29 marks its decoders deprecated in favour of TorchCodec (not installed here); they
# still work, and decode_rgb falls back to PIL should they ever be removed or fail.
warnings.filterwarnings(
    "ignore", message="The image decoding and encoding capabilities of TorchVision", category=DeprecationWarning
)

__all__ = ["decode_rgb", "RawBatch", "collate_raw", "RawPretrainDataset"]


def decode_rgb(path: Path) -> torch.Tensor:
    """An image tile as ``uint8 [3, H, W]`` RGB, pixel for pixel what :func:`data.pretrain.open_rgb` gives.

    torchvision.io decodes 8-bit PNG/JPEG (grey, palette and alpha converted like PIL's ``convert('RGB')``);
    anything else (16-bit, TIFF, BMP, or a file it cannot read) goes through the PIL path, which
    also reports unreadable files as user errors.
    """
    if path.suffix.lower() in (".png", ".jpg", ".jpeg"):
        try:
            t = decode_image(str(path), mode=ImageReadMode.RGB)
            if t.dtype == torch.uint8 and t.shape[0] == 3:
                return t
        except (RuntimeError, ValueError, ImportError, AttributeError):
            pass  # the PIL path below either reads it or reports it
    return torch.from_numpy(np.array(open_rgb(path), dtype=np.uint8)).permute(2, 0, 1).contiguous()


@dataclass
class RawBatch:
    """A collated batch of decoded tiles ``uint8 [B, 3, H, W]`` and their POI graphs."""

    images: torch.Tensor
    graphs: Batch

    @property
    def has_pois(self) -> torch.Tensor:
        """``bool [B]``: the tiles with at least one POI."""
        return has_pois(self.graphs)

    def pin_memory(self) -> RawBatch:
        return RawBatch(self.images.pin_memory(), self.graphs.pin_memory())


def collate_raw(samples: list[tuple[torch.Tensor, Data]]) -> RawBatch:
    """Stack decoded tiles (they must share one size) and batch their POI graphs."""
    images, graphs = zip(*samples, strict=True)
    sizes = {tuple(im.shape) for im in images}
    if len(sizes) > 1:
        raise UserError(
            f"tiles of different sizes in one batch ({sorted(sizes)[:2]}...); "
            "--augment gpu needs tiles of one size: resize them, or use the default --augment cpu"
        )
    return RawBatch(torch.stack(images), Batch.from_data_list(list(graphs)))


class RawPretrainDataset(PretrainDataset):
    """A pretraining layout (see :class:`data.pretrain.PretrainDataset`), items decoded only.

    Items: ``(uint8 [3, H, W] tile, Data(x, edge_index[, edge_weight]))``.
    """

    def __init__(
        self,
        layout: PretrainLayout | str | Path,
        images: list[Path] | None = None,
        poi_dim: int | None = None,
        without_pois: int | None = None,
    ):
        super().__init__(layout, lambda im: im, images=images, poi_dim=poi_dim, without_pois=without_pois)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, Data]:  # type: ignore[override]
        return decode_rgb(self.images[index]), self.graph(index)
