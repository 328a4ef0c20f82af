"""Region embeddings of every tile from a pretrained MMGR checkpoint (used by embed.py and the benchmarks).

Three embeddings per tile, all without augmentation (the tile at full size, ImageNet-normalised):

* ``backbone`` ``[N, d]`` — the image encoder's pooled ResNet features (d = 512 or 2048), what the
  downstream heads read;
* ``projection`` ``[N, P]`` — the image projection head's output (the contrastive space);
* ``poi`` ``[N, P]`` — the POI encoder's output for the tile's POI graph (same contrastive space).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from torch_geometric.data import Batch
from tqdm import tqdm

from data.downstream import read_list
from data.layout import PretrainLayout, resolve_img_dir
from data.pretrain import PretrainDataset, list_images, open_rgb
from data.transforms import IMAGENET_MEAN, IMAGENET_STD, eval_transform
from engine.checkpoints import RESUME_NAME
from models.image_encoder import ImageEncoder, infer_resnet
from models.loading import load_image_encoder, load_image_state, load_poi_encoder
from prepare.tile_index import TileIndex
from utils.errors import UserError
from utils.fileio import atomic_write_text, load_file

__all__ = [
    "poi_checkpoint_for",
    "TileImages",
    "image_embeddings",
    "random_image_embeddings",
    "encode_tiles",
    "poi_embeddings",
    "tile_poi_counts",
    "resolve_img_dir",
]


def poi_checkpoint_for(img_ckpt: Path) -> Path:
    """The POI checkpoint written with an image checkpoint: ``<prefix>_poi_<epoch>.tar`` beside
    ``<prefix>_img_<epoch>.tar``, or the resumable checkpoint itself (it holds both)."""
    img_ckpt = Path(img_ckpt)
    if img_ckpt.name == RESUME_NAME or img_ckpt.suffix == ".pt":
        return img_ckpt
    name, n = re.subn(r"_img_(\d+)\.tar$", r"_poi_\1.tar", img_ckpt.name)
    if not n:
        raise UserError(f"cannot tell which POI checkpoint belongs to {img_ckpt}; pass --poi_ckpt")
    return img_ckpt.with_name(name)


class TileImages(Dataset):
    """Tiles of one directory at full size, normalised: items ``(image [3, H, W], index)``."""

    def __init__(self, files: list[Path]):
        self.files = files
        self.transform = eval_transform()

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.transform(open_rgb(self.files[i])), i


def tile_files(root: Path, img_dir: str, list_files: list[str] | None = None) -> list[Path]:
    """Image files to export: every tile of ``img_dir`` (sorted), or those named in the list files."""
    folder = Path(root) / img_dir
    files = list_images(folder)
    if list_files:
        wanted: list[str] = []
        for lf in list_files:
            wanted += read_list(Path(root) / lf)
        by_name = {p.name: p for p in files}
        missing = [n for n in wanted if n not in by_name]
        if missing:
            raise UserError(
                f"{len(missing)} listed tiles are missing from {folder} (first: {missing[0]}); fix the "
                "list or --img_dir"
            )
        files = [by_name[n] for n in dict.fromkeys(wanted)]
    return files


@torch.no_grad()
def encode_tiles(
    model: ImageEncoder,
    files: list[Path],
    device: torch.device,
    batch_size: int = 64,
    workers: int = 0,
    projected: bool = False,
    progress: bool = True,
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Backbone (and optionally projection) embeddings of ``files`` by ``model``, and each tile's brightness.

    Returns ``({"backbone": [N, d], "projection": [N, P]}, brightness [N])`` (projection only when asked);
    brightness is the mean of the tile's darkest channel in 0..255, for the clustering rules of embed.py.
    """
    model = model.to(device).eval()
    loader = DataLoader(TileImages(files), batch_size=batch_size, shuffle=False, num_workers=workers)
    mean, std = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    feats, projs, bright = [], [], []
    for x, _ in tqdm(loader, desc="image embeddings", disable=not progress or None, mininterval=1.0):
        try:
            f = model.features(x.to(device))
        except RuntimeError as exc:
            raise UserError(
                f"the tiles in {files[0].parent} could not be encoded ({str(exc).splitlines()[0]}); "
                "tiles of one export must share one size"
            ) from None
        feats.append(f.float().cpu())
        # the darkest channel's mean: water is dark in near-infrared (or red), not in blue
        bright.append(((x * std + mean).mean(dim=(2, 3)).amin(dim=1) * 255.0).float())
        if projected:
            projs.append(model.encoder.fc(f).float().cpu())
    out = {"backbone": torch.cat(feats).numpy()}
    if projected:
        out["projection"] = torch.cat(projs).numpy()
    return out, torch.cat(bright).numpy()


def image_embeddings(
    ckpt: Path,
    files: list[Path],
    device: torch.device,
    batch_size: int = 64,
    workers: int = 0,
    projected: bool = False,
    progress: bool = True,
) -> tuple[dict[str, np.ndarray], str, np.ndarray]:
    """Backbone (and optionally projection) embeddings of ``files`` by the encoder of ``ckpt``.

    Returns ``({"backbone": [N, d], "projection": [N, P]}, resnet, brightness [N])`` (projection only when
    asked; brightness: :func:`encode_tiles`).
    """
    model = load_image_encoder(ckpt)
    arrays, brightness = encode_tiles(model, files, device, batch_size, workers, projected, progress)
    return arrays, model.resnet, brightness


def random_image_embeddings(
    ckpt: Path,
    files: list[Path],
    device: torch.device,
    batch_size: int = 64,
    workers: int = 0,
    seed: int = 0,
    progress: bool = True,
) -> np.ndarray:
    """Backbone embeddings ``[N, d]`` of ``files`` by a randomly initialised encoder of ``ckpt``'s architecture
    (torchvision's initialisation, drawn from ``seed``): the reference a pretrained encoder must beat."""
    resnet, proj = infer_resnet(load_image_state(ckpt)[0])
    torch.manual_seed(seed)
    arrays, _ = encode_tiles(ImageEncoder(resnet, proj), files, device, batch_size, workers, False, progress)
    return arrays["backbone"]


@torch.no_grad()
def poi_embeddings(
    poi_ckpt: Path,
    root: Path,
    img_dir: str,
    files: list[Path],
    device: torch.device,
    batch_size: int = 64,
    progress: bool = True,
) -> np.ndarray:
    """POI-encoder embeddings ``[N, P]`` of the tiles' POI graphs (``sub_shanghai_emb``/``_edge``/``_weight``
    looked up by tile name, in whichever layout the images are)."""
    model = load_poi_encoder(poi_ckpt).to(device).eval()
    ds = PretrainDataset(PretrainLayout(Path(root), img_dir=img_dir), eval_transform())
    index = {p.name: i for i, p in enumerate(ds.images)}
    if ds.poi_dim != model.in_dim:
        raise UserError(
            f"{poi_ckpt} expects {model.in_dim}-d POI embeddings but {ds.emb_dir} holds {ds.poi_dim}-d "
            "ones; use the POI data the encoder was trained on"
        )
    out = []
    starts = range(0, len(files), batch_size)
    for start in tqdm(starts, desc="POI embeddings", disable=not progress or None, mininterval=1.0):
        graphs = Batch.from_data_list([ds.graph(index[p.name]) for p in files[start : start + batch_size]]).to(device)
        out.append(
            model(graphs.x, graphs.edge_index, graphs.batch, graphs.num_graphs, getattr(graphs, "edge_weight", None))
            .float()
            .cpu()
        )
    return torch.cat(out).numpy()


def tile_poi_counts(root: Path, img_dir: str, names: list[str], index: TileIndex | None = None) -> np.ndarray | None:
    """``[N]`` POIs in each named tile: the tile index's ``n_poi`` column (prepare_pois.py and the synthetic city
    write it), else the rows of each tile's ``sub_shanghai_emb`` tensor; None when the folder has neither."""
    if index is not None and "n_poi" in index.columns:
        return np.asarray(index.columns["n_poi"], np.int64)[index.locate(names)]
    layout = PretrainLayout(Path(root), img_dir=img_dir)
    if not layout.emb.is_dir():
        return None
    return np.array([load_file(layout.poi_files(n)[0], "POI embedding file").shape[0] for n in names], np.int64)


def write_meta(path: Path, meta: dict) -> None:
    atomic_write_text(json.dumps(meta, indent=2) + "\n", path)
