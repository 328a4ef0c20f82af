"""Training throughput: samples/s and peak memory of full MMGR training steps.

    python benchmarks/train_throughput.py --device cpu --resnet resnet50 --img_size 224 --batch_size 16
    python benchmarks/train_throughput.py ... --published_style        # the published pipeline's choices
    python benchmarks/train_throughput.py --device cuda --batch_size 256 --precision bf16 --augment gpu --workers 8
    torchrun --nproc_per_node 8 benchmarks/train_throughput.py --device cuda --batch_size 256 --precision bf16 --augment gpu

Under torchrun (several GPUs, NCCL; or CPU processes, gloo) the step is ``mmgr.py``'s distributed one:
DDP-wrapped encoders and NT-Xent over the negatives gathered from every process; ``--batch_size`` is
per process, as in ``mmgr.py``, each process draws its own tiles, and rank 0 alone reports: its median
step time (the processes wait for each other in every step's collectives) and the global samples/s.

One step = fetch a batch from the DataLoader (waiting for workers if they are behind) + forward of
two views and the POI graphs + both losses + backward + both Adam steps + reading the loss (as
``mmgr.py`` does). A sample is one tile, i.e. two augmented views and one POI graph. Reported:
median step time over ``--iters`` steps after ``--warmup`` steps, samples/s = batch / median, and
the peak memory (CUDA allocator peak, or the process's peak resident size on CPU).

Data: synthetic tiles held in memory as uint8 (``--tile_size`` px, smooth colour fields plus noise)
with random POI graphs, so no disk is read and the two modes get identical input:

* default: ``mmgr.training_step`` itself — ``--augment gpu`` (workers hand over uint8 tiles, the
  views are made on ``--device``) or ``--augment cpu`` (PIL in the workers), the matmul NT-Xent,
  ``--channels_last``, ``--precision``, ``--compile``;
* ``--published_style``: per-sample PIL augmentation in the workers, the ``[2B, 2B, D]`` broadcast
  loss, fp32, default memory layout (docs/method.md §1), regardless of the other speed flags.

``--data_only`` times the input pipeline alone (DataLoader + augmentation, no model).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import sys
import time

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, RandomSampler
from torch_geometric.data import Data

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import mmgr  # noqa: E402
from benchmarks.published_reference import broadcast_nt_xent  # noqa: E402
from data.gpu_augment import GPUAugment  # noqa: E402
from data.pretrain import collate_pretrain  # noqa: E402
from data.raw import collate_raw  # noqa: E402
from data.transforms import pretrain_transform  # noqa: E402
from models.image_encoder import RESNETS, ImageEncoder  # noqa: E402
from models.poi_encoder import build_poi_encoder  # noqa: E402
from prepare.graph import delaunay_edges  # noqa: E402
from utils.args import str2bool  # noqa: E402
from utils.distributed import DistInfo, cleanup, init_from_env  # noqa: E402
from utils.speed import PRECISIONS, default_channels_last, make_scaler, prepare_models  # noqa: E402


class SyntheticTiles(Dataset):
    """``n`` in-memory uint8 tiles ``[3, T, T]`` with POI graphs (0-24 POIs, Delaunay edges, weights).

    ``transform`` None -> ``(uint8 tile, graph)``; a PIL transform -> ``(view1, view2, graph)``.
    """

    def __init__(self, n: int, tile: int, poi_dim: int = 64, seed: int = 0, transform=None):
        rng = np.random.default_rng(seed)
        # Smooth colour fields (an 8x8 grid upsampled) plus noise: compresses and decodes like imagery.
        coarse = torch.from_numpy(rng.integers(0, 256, (n, 3, 8, 8)).astype(np.float32))
        smooth = torch.nn.functional.interpolate(coarse, size=(tile, tile), mode="bilinear", align_corners=False)
        noise = torch.from_numpy(rng.normal(0, 12, (n, 3, tile, tile)).astype(np.float32))
        self.tiles = (smooth + noise).clamp(0, 255).to(torch.uint8)
        self.graphs = []
        for _ in range(n):
            k = int(rng.integers(0, 25))
            ei, w = delaunay_edges(rng.random((k, 2)))
            self.graphs.append(
                Data(
                    x=torch.from_numpy(rng.standard_normal((k, poi_dim)).astype(np.float32)),
                    edge_index=torch.from_numpy(ei),
                    edge_weight=torch.from_numpy(w),
                    num_nodes=k,
                )
            )
        self.transform = transform

    def __len__(self) -> int:
        return self.tiles.shape[0]

    def __getitem__(self, i: int):
        if self.transform is None:
            return self.tiles[i], self.graphs[i]
        pil = Image.fromarray(self.tiles[i].permute(1, 2, 0).numpy())
        return self.transform(pil), self.transform(pil), self.graphs[i]


def published_step(batch, img_model, poi_model, device):
    """The published objective: fp32, contiguous layout, broadcast loss (docs/method.md §1)."""
    v1 = batch.view1.to(device, non_blocking=True)
    v2 = batch.view2.to(device, non_blocking=True)
    g = batch.graphs.to(device, non_blocking=True)
    z1, z2 = img_model(v1), img_model(v2)
    zp = poi_model(g.x, g.edge_index, g.batch, g.num_graphs, g.edge_weight)
    loss_inter, loss_intra = broadcast_nt_xent(z1, zp, 0.5), broadcast_nt_xent(z1, z2, 0.5)
    return 0.5 * loss_inter + 0.5 * loss_intra, loss_inter, loss_intra


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB on Linux


def time_data_path(
    loader: DataLoader, augment: GPUAugment | None, sync, steps: int, warmup: int, gpu_aug: bool, device: torch.device
) -> list[float]:
    """Seconds per batch of the input path alone (loading, and the device augmentation when on)."""
    times: list[float] = []
    it = iter(loader)
    for i in range(steps):
        t0 = time.perf_counter()
        batch = next(it)
        if gpu_aug:
            images = batch.images.to(device, non_blocking=True)
            augment(images), augment(images)
            sync()
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    return times


def time_training(
    loader: DataLoader,
    augment: GPUAugment | None,
    sync,
    steps: int,
    args: argparse.Namespace,
    cfg: dict,
    info: DistInfo,
    device: torch.device,
) -> tuple[list[float], float]:
    """Seconds per full training step (ours through mmgr.training_step, or the published style) and the last loss."""
    published = args.published_style
    img_model = ImageEncoder(args.resnet, 128).to(device)
    poi_model = build_poi_encoder("set2set", 64, 128).to(device)
    if not published and args.channels_last:
        img_model = img_model.to(memory_format=torch.channels_last)
    opt_img = torch.optim.Adam(img_model.parameters(), lr=1e-4)
    opt_poi = torch.optim.Adam(poi_model.parameters(), lr=1e-4)
    # DDP under torchrun (else the plain modules), then torch.compile: as mmgr.py builds them.
    img_train, poi_train = prepare_models(
        img_model, poi_model, argparse.Namespace(compile=cfg["compile"]), info, device
    )
    scaler = make_scaler(device, cfg["precision"])
    step_args = argparse.Namespace(
        temperature=0.5,
        img_lmd=0.5,
        empty_poi_tiles="exclude",  # mmgr.py's default
        channels_last=args.channels_last,
        precision=args.precision,
    )
    img_model.train()
    poi_model.train()
    times: list[float] = []
    it = iter(loader)
    for i in range(steps):
        if i == args.warmup and device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        sync()
        t0 = time.perf_counter()
        batch = next(it)
        if published:
            loss, _, _ = published_step(batch, img_model, poi_model, device)
        else:
            loss, _, _, _ = mmgr.training_step(batch, img_train, poi_train, step_args, device, augment)
        opt_img.zero_grad(set_to_none=True)
        opt_poi.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(opt_img)
        scaler.step(opt_poi)
        scaler.update()
        value = loss.item()  # mmgr.py reads the loss every step (records), which synchronises
        sync()
        if i >= args.warmup:
            times.append(time.perf_counter() - t0)
        if not np.isfinite(value):
            raise RuntimeError(f"non-finite loss {value} at step {i}")
    return times, value


def run(args: argparse.Namespace, info: DistInfo | None = None) -> dict:
    info = info or DistInfo()
    device = torch.device(args.device)
    if args.channels_last is None:
        args.channels_last = default_channels_last(device)
    torch.manual_seed(info.rank)
    published = args.published_style
    if published and info.enabled:
        raise SystemExit(
            "--published_style runs in one process (the published multi-GPU code never worked, docs/method.md §4)"
        )
    # mmgr.py turns cuDNN autotuning on; the published script leaves PyTorch's defaults.
    torch.backends.cudnn.benchmark = device.type == "cuda" and not published
    gpu_aug = args.augment == "gpu" and not published
    transform = None if gpu_aug else pretrain_transform(args.img_size)
    steps = args.warmup + args.iters
    ds = SyntheticTiles(max(2 * args.batch_size, 64), args.tile_size, seed=info.rank, transform=transform)
    loader = DataLoader(
        ds,
        batch_size=args.batch_size,
        sampler=RandomSampler(ds, replacement=True, num_samples=steps * args.batch_size),
        drop_last=True,
        num_workers=args.workers,
        collate_fn=collate_raw if gpu_aug else collate_pretrain,
        pin_memory=device.type == "cuda",
        prefetch_factor=4 if args.workers else None,
    )
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)
    augment = GPUAugment(args.img_size) if gpu_aug else None
    cfg = {
        "device": str(device),
        "resnet": args.resnet,
        "img_size": args.img_size,
        "tile_size": args.tile_size,
        "batch_size": args.batch_size,
        "workers": args.workers,
        "threads": torch.get_num_threads(),
        "mode": "published_style" if published else "ours",
        "precision": "fp32" if published else args.precision,
        "channels_last": False if published else args.channels_last,
        "augment": "cpu (PIL, per sample)" if not gpu_aug else "gpu (batched, on device)",
        "loss": "broadcast [2B,2B,D]" if published else "matmul",
        "compile": bool(args.compile and not published),
        "world_size": info.world_size,
    }
    if device.type == "cuda":
        cfg["gpu"] = torch.cuda.get_device_name(device)

    if args.data_only:
        times = time_data_path(loader, augment, sync, steps, args.warmup, gpu_aug, device)
        cfg["what"] = "data path only"
    else:
        times, value = time_training(loader, augment, sync, steps, args, cfg, info, device)
        cfg["what"] = "full training step"
        cfg["last_loss"] = round(value, 4)
    med = statistics.median(times)
    global_batch = args.batch_size * info.world_size
    cfg.update(
        {
            "iters": len(times),
            "median_step_s": round(med, 4),
            "samples_per_s": round(global_batch / med, 2),
            "mean_samples_per_s": round(global_batch * len(times) / sum(times), 2),
            "peak_mem_mb": round(peak_memory_mb(device), 1),
        }
    )
    if args.data_only:
        cfg["samples_per_s_per_worker_core"] = round(cfg["samples_per_s"] / max(1, args.workers), 2)
    return cfg


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description="Samples/s and peak memory of MMGR training steps on synthetic in-memory data."
    )
    p.add_argument(
        "--device",
        default="cuda" if torch.cuda.is_available() else "cpu",
        help="cpu or cuda (default: cuda if available)",
    )
    p.add_argument("--resnet", default="resnet50", choices=RESNETS, help="image backbone (default resnet50, published)")
    p.add_argument("--img_size", type=int, default=224, help="crop size (default 224, published)")
    p.add_argument("--tile_size", type=int, default=256, help="synthetic tile side in px (default 256)")
    p.add_argument("--batch_size", type=int, default=16, help="tiles per step (default 16)")
    p.add_argument("--precision", default="fp32", choices=tuple(PRECISIONS), help="autocast precision (default fp32)")
    p.add_argument(
        "--channels_last",
        type=str2bool,
        nargs="?",
        const=True,
        default=None,
        help="channels-last layout (default: on for CUDA, off on CPU, as mmgr.py)",
    )
    p.add_argument(
        "--augment", default="cpu", choices=("cpu", "gpu"), help="where views are made (default cpu = PIL in workers)"
    )
    p.add_argument(
        "--compile",
        type=str2bool,
        nargs="?",
        const=True,
        default=False,
        help="torch.compile the image encoder (default off)",
    )
    p.add_argument(
        "--published_style",
        action="store_true",
        help="the published pipeline: PIL per sample, broadcast loss, fp32, NCHW",
    )
    p.add_argument("--data_only", action="store_true", help="time the input pipeline alone")
    p.add_argument("--workers", type=int, default=0, help="DataLoader workers (default 0: data in the main process)")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps first (default 2)")
    p.add_argument("--iters", type=int, default=5, help="timed steps (default 5)")
    p.add_argument(
        "--json_out", default=None, help="append the result as one JSON line to this file (default: print only)"
    )
    return p


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    info, device = init_from_env(torch.device(args.device))  # torchrun: process group, this rank's GPU
    args.device = str(device)
    try:
        res = run(args, info)
    finally:
        cleanup()
    if not info.is_main:
        return
    if info.enabled:
        res["samples_per_s_per_process"] = round(res["samples_per_s"] / info.world_size, 2)
        res["global_batch"] = args.batch_size * info.world_size
    line = json.dumps(res)
    print(line, flush=True)
    if args.json_out:
        with open(args.json_out, "a") as f:
            f.write(line + "\n")


if __name__ == "__main__":
    main()
