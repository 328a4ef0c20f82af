"""Input-pipeline speed per CPU core: the published folder + PIL path vs decode-only and packed paths.

    OMP_NUM_THREADS=1 python benchmarks/data_path.py [--tiles 300] [--tile_size 256] [--img_size 224]

Writes a synthetic data set in the published folder layout to a temporary directory (PNG tiles of
smooth colour fields plus noise, POI tensors of 0-24 POIs with Delaunay edges and weights), packs it
with ``data.pack``, then reads every item in the main process (one core, no workers) and reports
items/s for:

* ``folder + PIL x2`` — the published dataset: PIL decode, two PIL augmentations, three torch files;
* ``folder, decode only`` — ``--augment gpu`` on the folder layout: torchvision.io decode + POI files;
* ``packed, decode only`` — ``--augment gpu`` on a pack: two memory-map slices per item;
* ``packed + PIL x2`` — ``--augment cpu`` on a pack;
* ``batched augment on CPU`` — for reference, what ``GPUAugment`` costs per sample when run on the
  CPU (on a GPU it runs on the device instead).

The first pass over the files warms the page cache; the second is timed (both paths alike).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import torch
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.train_throughput import SyntheticTiles  # noqa: E402
from data.gpu_augment import GPUAugment  # noqa: E402
from data.pack import PackedPretrainDataset, pack  # noqa: E402
from data.pretrain import PretrainDataset  # noqa: E402
from data.raw import RawPretrainDataset  # noqa: E402
from data.transforms import pretrain_transform  # noqa: E402


def write_layout(root: str, n: int, tile: int) -> None:
    """The published folder layout with ``n`` synthetic tiles."""
    ds = SyntheticTiles(n, tile, poi_dim=64, seed=1)
    for d in ("sub_shanghai_img", "sub_shanghai_emb", "sub_shanghai_edge", "sub_shanghai_weight"):
        os.makedirs(os.path.join(root, d), exist_ok=True)
    for i in range(n):
        img, g = ds[i]
        Image.fromarray(img.permute(1, 2, 0).numpy()).save(os.path.join(root, "sub_shanghai_img", f"t{i:06d}.png"))
        torch.save(g.x, os.path.join(root, "sub_shanghai_emb", f"t{i:06d}.tensor"))
        torch.save(g.edge_index, os.path.join(root, "sub_shanghai_edge", f"t{i:06d}.tensor"))
        torch.save(g.edge_weight, os.path.join(root, "sub_shanghai_weight", f"t{i:06d}.tensor"))


def items_per_s(ds, passes: int = 2) -> float:
    n = len(ds)
    for _ in range(passes):
        t0 = time.perf_counter()
        for i in range(n):
            ds[i]
        dt = time.perf_counter() - t0
    return n / dt


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tiles", type=int, default=300, help="synthetic tiles (default 300)")
    p.add_argument(
        "--tile_size", type=int, default=256, help="tile side in px (default 256, the public sample's tiles)"
    )
    p.add_argument(
        "--img_size", type=int, default=224, help="crop size of the PIL augmentation (default 224, published)"
    )
    p.add_argument(
        "--dir", default=None, help="where to write the data set (default: a temporary directory, removed after)"
    )
    args = p.parse_args()
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        folder, packed = os.path.join(tmp, "folder"), os.path.join(tmp, "packed")
        write_layout(folder, args.tiles, args.tile_size)
        pack(folder, packed, progress=False)
        size_mb = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(folder) for f in fs) / 2**20
        pack_mb = sum(os.path.getsize(os.path.join(packed, f)) for f in os.listdir(packed)) / 2**20
        t = pretrain_transform(args.img_size)
        rows = [
            ("folder + PIL x2 (published)", PretrainDataset(folder, t)),
            ("folder, decode only (--augment gpu)", RawPretrainDataset(folder)),
            ("packed, decode only (--augment gpu)", PackedPretrainDataset(packed)),
            ("packed + PIL x2 (--augment cpu)", PackedPretrainDataset(packed, t)),
        ]
        print(
            f"{args.tiles} tiles of {args.tile_size} px: folder {size_mb:.1f} MB, pack {pack_mb:.1f} MB; "
            f"one core (torch threads {torch.get_num_threads()}), second pass timed"
        )
        base = None
        for name, ds in rows:
            r = items_per_s(ds)
            base = base or r
            print(f"  {name:<40} {r:8.1f} items/s per core  ({r / base:5.1f}x published)")
        # The batched augmentation itself, on the CPU (on a GPU it runs on the device).
        raw = PackedPretrainDataset(packed)
        images = torch.stack([raw[i][0] for i in range(min(64, len(raw)))])
        aug = GPUAugment(args.img_size)
        aug(images), aug(images)
        t0 = time.perf_counter()
        reps = 3
        for _ in range(reps):
            aug(images), aug(images)
        r = reps * images.shape[0] / (time.perf_counter() - t0)
        print(f"  {'batched augment x2 on CPU (reference)':<40} {r:8.1f} items/s per core")


if __name__ == "__main__":
    main()
