"""The paper's comparison, one command: bounds, pretraining variants, repeated seeds, paired tests.

    OMP_NUM_THREADS=1 python benchmarks/compare.py --out /tmp/cmp   # CPU configuration (~60-90 min on 2 cores)
    python benchmarks/compare.py --full --device cuda              # published sizes (GPU)
    bash benchmarks/gpu_compare.sh                                 # GPU-scale comparison in one go (<= 8 min)
    python benchmarks/compare.py --data_path DATA --targets pop1km # your own data in the published layouts

Rows (``--variants``; all but ``mmgr_gcn`` by default):
  mean        lower bound: the mean training target for every tile (no image; seed-free)
  random      lower bound: the same backbone with random weights (seeded), the same probe
  simclr      image-only contrastive pretraining, λ = 1 (SimCLR-style: only the image–image term)
  img_poi     image–POI contrastive only, λ = 0
  mmgr        MMGR, λ = 0.5 (published), released Set2Set POI encoder
  mmgr_gcn    MMGR, λ = 0.5, GCN POI encoder (the paper's description)
  poi_encoder reference, POI only: the POI-encoder embedding of the mmgr run
  poi_counts  reference, POI only: log(1 + count) of each POI category in the tile (no learning; seed-free)
  supervised  upper bound: the same backbone trained end to end on the training tiles' labels, one model
              per task and seed, same split, same crop size, same budget (below)

Protocol of the probed rows (random, pretrained, POI): each encoder embeds every tile once (backbone
features of the full tile, no augmentation), then a ridge probe (primary; penalty by leave-one-out) and a
kNN probe (secondary) are fit on the training list and scored on the validation list (engine/probes.py).
Primary metrics: R² for scalar targets (population, GDP), KL(true ‖ predicted) for distributions (urban
functions). The supervised bound is scored on the same validation tiles (full tile, last epoch, no
selection on the validation list), with the downstream tasks' targets, losses and metrics
(engine/tasks.py: z-scored scalar targets, ReLU(μ + σ·h) in original units; softmax + KL for functions).

Same budget: the supervised model trains ``--bound_epochs`` epochs (default: the pretraining's
``--epochs``) at the pretraining's batch size and crop size, with Adam and the same lr schedule shape
(cosine or steps) over its epochs, i.e. as many passes over its (labelled) tiles as each pretraining run
makes over its (unlabelled) tiles; its lr is ``--bound_lr``.

Statistics (engine/stats.py): every cell is the mean over the seeds ± the half-width of the 95 % Student-t
interval; MMGR against image-only, image–POI only and random init is compared seed by seed (seed ``s`` of
two rows shares data, split and probe): paired differences, paired t-test p-value and the exact Wilcoxon
signed-rank p-value as a check. Gap closed = (row − random init) / (supervised − random init) on the means
(0 = no better than random weights, 1 = as good as end-to-end supervision).

Pretraining runs ``mmgr.py`` itself: in its own process per run (``--jobs N`` at once, e.g. several on one
GPU) or, with ``--jobs 0``, in this process one after another (no process start-up: tiny runs and tests).
A run whose final checkpoint exists is reused, and each supervised run's result is kept in
OUT/supervised/, so an interrupted comparison continues where it stopped.

Writes OUT/results.json (every number, the configuration, city version, machine, timings),
OUT/results.md (the tables and the command) and OUT/compare.png (primary metric, 95 % intervals drawn).
How to read the tables: docs/downstream.md, "The comparison".
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import hashlib
import json
import os
import platform
import shlex
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from torch.utils.data import DataLoader, Dataset

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import mmgr  # noqa: E402
from data.downstream import read_list  # noqa: E402
from data.gpu_augment import GPUAugment  # noqa: E402
from data.pack import is_packed, pack  # noqa: E402
from data.pretrain import list_images, open_rgb  # noqa: E402
from data.synthetic import ensure_city  # noqa: E402
from data.transforms import normalize_batch  # noqa: E402
from engine.embeddings import poi_embeddings  # noqa: E402
from engine.probes import load_targets, probe_target, score  # noqa: E402
from engine.stats import format_ci, gap_closed, mean_ci, paired_comparison  # noqa: E402
from engine.tasks import Task, distribution_task, regression_task  # noqa: E402
from models.heads import with_task_head  # noqa: E402
from models.image_encoder import RESNETS, ImageEncoder  # noqa: E402
from models.loading import load_image_encoder  # noqa: E402
from utils.errors import UserError, run_main  # noqa: E402
from utils.fileio import atomic_save, atomic_write_text, load_file  # noqa: E402
from utils.reproducibility import seed_everything  # noqa: E402
from utils.schedule import lr_at  # noqa: E402
from utils.speed import PRECISIONS, autocast, default_channels_last  # noqa: E402

# variant -> extra mmgr.py flags
PRETRAINED = {
    "simclr": ["--img_lmd", "1"],
    "img_poi": ["--img_lmd", "0"],
    "mmgr": ["--img_lmd", "0.5"],
    "mmgr_gcn": ["--img_lmd", "0.5", "--poi_encoder", "gcn"],
}
VARIANTS = ("mean", "random", "simclr", "img_poi", "mmgr", "mmgr_gcn", "poi_encoder", "poi_counts", "supervised")
DEFAULT_VARIANTS = tuple(v for v in VARIANTS if v != "mmgr_gcn")
LABELS = {
    "mean": "mean predictor (lower bound)",
    "random": "random init (lower bound)",
    "simclr": "image only (λ=1)",
    "img_poi": "image–POI only (λ=0)",
    "mmgr": "MMGR (λ=0.5)",
    "mmgr_gcn": "MMGR, GCN POI encoder",
    "poi_encoder": "POI only: MMGR POI encoder (ref.)",
    "poi_counts": "POI only: category counts (ref.)",
    "supervised": "supervised end to end (upper bound)",
}
# MMGR against each of these, seed by seed (when both rows ran).
PAIRS = (("mmgr", "simclr"), ("mmgr", "img_poi"), ("mmgr", "random"))
# Rows not read through a probe: the same values in the ridge and the kNN table.
PROTOCOL = {"mean": "mean", "supervised": "end_to_end"}
LOWER_IS_BETTER = {"KL", "L1", "MAE", "RMSE"}

# The CPU configuration (ours; docs/downstream.md, "The comparison"): city version 2 at the size whose
# supervised bound was measured (benchmarks/RESULTS.md), pretraining epochs chosen so that the whole
# default comparison takes about 60-90 min on 2 cores (benchmarks/RESULTS_compare.md).
CPU = {
    "n_tiles": 400,
    "tile_size": 96,
    "resnet": "resnet18",
    "img_size": 64,
    "batch_size": 32,
    "epochs": 15,
    "schedule": [],
    "cos": True,
    "lr": 1e-3,
    "seeds": [0, 1, 2, 3, 4],
}
FULL = {
    "n_tiles": 1000,
    "tile_size": 256,
    "resnet": "resnet50",
    "img_size": 224,
    "batch_size": 128,
    "epochs": 120,
    "schedule": [90, 110],
    "cos": False,
    "lr": 1e-2,
    "seeds": [0, 1, 2, 3, 4],
}


def build_parser() -> argparse.ArgumentParser:
    """compare.py's flags, one group per theme (CPU defaults; ``--full``: the published sizes)."""
    p = argparse.ArgumentParser(description="MMGR vs its baselines and bounds on population, GDP and urban functions.")
    _data_flags(p)
    _city_flags(p)
    _pretraining_flags(p)
    _row_flags(p)
    _speed_flags(p)
    return p


def _data_flags(p: argparse.ArgumentParser) -> None:
    """Where the results go and what data the comparison reads (default: the synthetic city in OUT/city)."""
    g = p.add_argument_group("output and data")
    g.add_argument("--out", default="compare_out", help="output directory (default './compare_out')")
    g.add_argument(
        "--data_path",
        default=None,
        help="data root holding both published layouts (default: the synthetic city, generated in OUT/city)",
    )
    g.add_argument(
        "--pretrain_data",
        default=None,
        help="what mmgr.py reads for pretraining, e.g. a pack of --data_path (python -m data.pack) "
        "(default: --data_path)",
    )
    g.add_argument(
        "--pack",
        type=int,
        default=0,
        help="1: pack the pretraining layout of the data into OUT/packed (data.pack: memory-mapped shards, "
        "no file opened per tile) and pretrain from it (default 0; the GPU script uses 1)",
    )


def _city_flags(p: argparse.ArgumentParser) -> None:
    """``--full`` (published sizes instead of the CPU configuration) and the synthetic city's size and seed."""
    g = p.add_argument_group("configuration and synthetic city")
    g.add_argument(
        "--full",
        action="store_true",
        help=f"published sizes instead of the CPU configuration ({FULL}); explicit flags still win",
    )
    g.add_argument(
        "--n_tiles",
        type=int,
        default=None,
        help=f"synthetic city tiles (default {CPU['n_tiles']}; --full {FULL['n_tiles']})",
    )
    g.add_argument(
        "--tile_size",
        type=int,
        default=None,
        help=f"synthetic tile pixels (default {CPU['tile_size']}; --full {FULL['tile_size']})",
    )
    g.add_argument("--city_seed", type=int, default=0, help="synthetic city seed (default 0)")


def _pretraining_flags(p: argparse.ArgumentParser) -> None:
    """Backbone, crop, batch, epochs, lr schedule and seeds shared by pretraining and the supervised bound
    (None: taken from CPU or FULL by :func:`parse_args`)."""
    g = p.add_argument_group("pretraining and supervised bound (default: the CPU configuration)")
    g.add_argument(
        "--resnet",
        default=None,
        choices=RESNETS,
        help=f"image backbone (default {CPU['resnet']}; --full {FULL['resnet']}, published)",
    )
    g.add_argument(
        "--img_size",
        type=int,
        default=None,
        help=f"crop size of pretraining and of the supervised bound (default {CPU['img_size']}; --full 224, published)",
    )
    g.add_argument(
        "--batch_size",
        type=int,
        default=None,
        help=f"batch of pretraining and of the supervised bound (default {CPU['batch_size']}; --full 128, published)",
    )
    g.add_argument(
        "--epochs",
        type=int,
        default=None,
        help=f"pretraining epochs (default {CPU['epochs']}, ours; --full 120, published)",
    )
    g.add_argument(
        "--schedule",
        type=int,
        nargs="*",
        default=None,
        help="lr drop epochs (x0.1) when --cos is off (default none; --full 90 110, published)",
    )
    g.add_argument(
        "--cos", type=int, default=None, help="1: cosine lr decay over the epochs (default 1, ours; --full 0)"
    )
    g.add_argument(
        "--lr",
        type=float,
        default=None,
        help=f"pretraining Adam lr (default {CPU['lr']:g}: the published 1e-2 collapses small CPU runs; "
        "--full 1e-2, published)",
    )
    g.add_argument(
        "--seeds",
        type=int,
        nargs="+",
        default=None,
        help=f"seeds of every seeded row: pretraining, random init, supervised (default {CPU['seeds']})",
    )


def _row_flags(p: argparse.ArgumentParser) -> None:
    """Which rows and targets, the supervised bound's budget and lr, and the probes' settings."""
    g = p.add_argument_group("rows, targets, bound and probes")
    g.add_argument(
        "--variants",
        nargs="+",
        default=list(DEFAULT_VARIANTS),
        choices=VARIANTS,
        help=f"rows to run (default {' '.join(DEFAULT_VARIANTS)}; mmgr_gcn on request)",
    )
    g.add_argument(
        "--targets",
        nargs="+",
        default=["pop1km", "gdp1km", "func"],
        help="target directories (default pop1km gdp1km func; one value = regression, several = distribution)",
    )
    g.add_argument(
        "--bound_epochs",
        type=int,
        default=None,
        help="epochs of the supervised bound (default: --epochs, the same budget as pretraining)",
    )
    g.add_argument(
        "--bound_lr",
        type=float,
        default=1e-3,
        help="Adam lr of the supervised bound (default 1e-3, ours: the lr its city check used)",
    )
    g.add_argument(
        "--log_target",
        type=int,
        default=0,
        help="1: probes fit log1p of scalar targets (metrics in original units); default 0: raw values",
    )
    g.add_argument("--knn", type=int, default=10, help="kNN neighbours of the secondary probe (default 10)")


def _speed_flags(p: argparse.ArgumentParser) -> None:
    """How the runs are spread over processes and which device and precision they use."""
    g = p.add_argument_group("speed and device (no effect on the method)")
    g.add_argument(
        "--jobs",
        type=int,
        default=1,
        help="pretraining runs at once, each an mmgr.py process (default 1); 0: one after another in this "
        "process (no start-up cost, for tiny runs); with 2 or more the supervised bound trains in "
        "this process meanwhile",
    )
    g.add_argument(
        "--workers",
        type=int,
        default=0,
        help="DataLoader workers of each pretraining run and of tile decoding (default 0: measured fastest "
        "on the shared 2-core machine)",
    )
    g.add_argument("--device", default="cpu", help="device of pretraining, bound and embeddings (default cpu)")
    g.add_argument(
        "--precision",
        default="fp32",
        choices=tuple(PRECISIONS),
        help="autocast precision of pretraining and of the bound's training (default fp32; bf16 on GPUs)",
    )
    g.add_argument(
        "--channels_last",
        type=int,
        default=None,
        help="1/0: channels-last layout for pretraining and bound (default: mmgr.py's rule, "
        "utils.speed.default_channels_last: on for CUDA and AVX-512 CPUs)",
    )
    g.add_argument(
        "--augment",
        default="cpu",
        choices=("cpu", "gpu"),
        help="mmgr.py --augment: cpu (PIL in workers, default) or gpu (batched on --device)",
    )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    args = build_parser().parse_args(argv)
    base = FULL if args.full else CPU
    for k, v in base.items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    args.cos = bool(args.cos)
    if args.bound_epochs is None:
        args.bound_epochs = args.epochs
    if args.jobs < 0:
        raise UserError(f"--jobs must be 0 (in this process) or a positive count, got {args.jobs}")
    return args


# --------------------------------------------------------------------------------------------------
# Tiles, decoded once


class _DecodedTiles(Dataset):
    """``uint8 [3, H, W]`` of each file (decoding only; workers share it out)."""

    def __init__(self, files: list[Path]):
        self.files = files

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> torch.Tensor:
        return torch.from_numpy(np.array(open_rgb(self.files[i]), dtype=np.uint8)).permute(2, 0, 1).contiguous()


def load_tiles(files: list[Path], workers: int = 0) -> torch.Tensor:
    """Every tile of ``files`` decoded once -> ``uint8 [N, 3, H, W]``.

    The supervised bound and every encoder's embeddings read these instead of decoding the PNGs again
    (at 4,000 tiles of 256 px a decode pass costs seconds, the ResNet pass over them a fraction of one).
    """
    tiles = list(DataLoader(_DecodedTiles(files), batch_size=None, shuffle=False, num_workers=workers))
    shapes = {tuple(t.shape) for t in tiles}
    if len(shapes) != 1:
        raise UserError(
            f"the tiles in {files[0].parent} have {len(shapes)} different sizes ({sorted(shapes)[:3]}); "
            "tiles of one comparison must share one size"
        )
    return torch.stack(tiles)


def normalise(images: torch.Tensor) -> torch.Tensor:
    """``uint8 [B, 3, H, W]`` -> float ImageNet-normalised (as data.transforms.eval_transform)."""
    return normalize_batch(images.float() / 255.0)


@torch.no_grad()
def backbone_embeddings(
    model: ImageEncoder, images: torch.Tensor, device: torch.device, batch_size: int = 256
) -> np.ndarray:
    """Eval-mode backbone features of whole tiles ``uint8 [N, 3, H, W]`` -> ``[N, d]`` (fp32)."""
    model = model.to(device).eval()
    out = [
        model.features(normalise(images[i : i + batch_size].to(device))).float().cpu()
        for i in range(0, len(images), batch_size)
    ]
    return torch.cat(out).numpy()


# --------------------------------------------------------------------------------------------------
# The supervised upper bound (also used by benchmarks/city_bound.py)


def task_for(y: np.ndarray | torch.Tensor, target: str, log_target: bool = False) -> Task:
    """The downstream task of targets ``[N, K]`` of a folder: distributions (several values, or ``func``) or a
    z-scored scalar (of ``log1p(y)`` with ``log_target``), as res_func.py / res_pop.py train them."""
    width = y.shape[1]
    if width > 1 or target == "func":
        return distribution_task(tuple(f"type_{k}" for k in range(width)))
    return regression_task(log_target=log_target, target_norm="zscore")


def train_supervised(
    train_images: torch.Tensor,
    y_train: torch.Tensor,
    val_images: torch.Tensor,
    y_val: np.ndarray,
    task: Task,
    *,
    resnet: str,
    img_size: int,
    batch_size: int,
    epochs: int,
    lr: float,
    seed: int,
    device: torch.device,
    schedule: list[int] | tuple[int, ...] = (),
    cos: bool = True,
    precision: str = "fp32",
    channels_last: bool = False,
    log: bool = True,
) -> dict:
    """Train one backbone + head end to end on labelled tiles and score the last epoch on the validation tiles.

    Args:
        train_images: ``uint8 [N, 3, H, W]`` training tiles; y_train: ``[N, K]`` targets (original units).
        val_images: ``uint8 [M, 3, H', W']`` validation tiles (scored whole); y_val: ``[M, K]``.
        task: the downstream task (engine/tasks.py), not yet fitted; it is fitted to ``y_train`` here.

    Model: torchvision ResNet from random initialisation with the published head
    ``Linear(d, d/2) -> ReLU -> Linear(d/2, K)``, BatchNorm in training mode. Views:
    ``RandomResizedCrop(img_size, scale (0.2, 1))`` + horizontal flip with per-image draws, batched on
    ``device`` (data.gpu_augment.GPUAugment without colour jitter or greyscale: the downstream training
    transform of data/transforms.py). Adam at ``lr``, scaled per epoch by utils.schedule.lr_at; incomplete
    last batches dropped. Returns the task's metrics, ``pred_std_over_true_std``, ``train_seconds`` and the
    predictions ``[M, K]`` (original units).
    """
    seed_everything(seed)
    task = task.fit(task.to_train(y_train))
    n = len(train_images)
    if n < batch_size:
        raise UserError(f"{n} training tiles are fewer than one batch of {batch_size}; lower --batch_size")
    memory = torch.channels_last if channels_last else torch.contiguous_format
    model = with_task_head(ImageEncoder(resnet), y_train.shape[1], freeze_backbone=False)
    model = model.to(device, memory_format=memory)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    augment = GPUAugment(img_size, p_jitter=0.0, p_gray=0.0)
    order = torch.Generator().manual_seed(seed)
    images, y_dev = train_images.to(device), y_train.to(device)
    t0 = time.perf_counter()
    for epoch in range(epochs):
        for g in opt.param_groups:
            g["lr"] = lr_at(epoch, lr, epochs, schedule, cos)
        model.train()
        mean_loss = _supervised_epoch(
            model, opt, task, augment, images, y_dev, batch_size, order, device, precision, channels_last
        )
        if log:
            print(f"    epoch {epoch + 1}/{epochs} loss {mean_loss:.4f}", flush=True)
    seconds = time.perf_counter() - t0
    pred = task.to_original(_supervised_predict(model, task, val_images, device, memory).astype(np.float64))
    out = {**task.metrics(y_val, pred), "train_seconds": round(seconds, 1)}
    if y_val.shape[1] == 1:
        out["pred_std_over_true_std"] = float(pred[:, 0].std() / max(float(y_val[:, 0].std()), 1e-12))
    out["predictions"] = pred
    return out


def _supervised_epoch(
    model: torch.nn.Module,
    opt: torch.optim.Optimizer,
    task: Task,
    augment: GPUAugment,
    images: torch.Tensor,
    y_dev: torch.Tensor,
    batch_size: int,
    order: torch.Generator,
    device: torch.device,
    precision: str,
    channels_last: bool,
) -> float:
    """One epoch of :func:`train_supervised` over ``images`` ``uint8 [N, 3, H, W]`` / ``y_dev`` ``[N, K]`` (on
    ``device``), in an order and with crops drawn from ``order``; incomplete last batch dropped. -> mean loss."""
    n = len(images)
    total, steps = 0.0, 0
    perm = torch.randperm(n, generator=order)
    for idx in perm[: n // batch_size * batch_size].split(batch_size):
        idx_dev = idx.to(device)
        x = augment(images[idx_dev], generator=order, channels_last=channels_last)
        with autocast(device, precision):
            out = model(x)
        loss = task.loss(out.float(), task.to_train(y_dev[idx_dev]))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        total, steps = total + loss.item(), steps + 1
    return total / steps


def _supervised_predict(
    model: torch.nn.Module, task: Task, val_images: torch.Tensor, device: torch.device, memory: torch.memory_format
) -> np.ndarray:
    """Eval-mode predictions (training units) on whole tiles ``uint8 [M, 3, H, W]`` -> ``[M, K]`` (fp32)."""
    model.eval()
    with torch.no_grad():
        return torch.cat(
            [
                task.predict(
                    model(normalise(val_images[i : i + 256].to(device)).contiguous(memory_format=memory)).float()
                ).cpu()
                for i in range(0, len(val_images), 256)
            ]
        ).numpy()


# --------------------------------------------------------------------------------------------------
# Pretraining


def pretrain_argv(args: argparse.Namespace, data: Path, out: Path, variant: str, seed: int) -> list[str]:
    """mmgr.py's flags for one (variant, seed)."""
    argv = [
        "--data_path",
        str(data.resolve()),
        "--model_path",
        str((out / "ckpt" / f"{variant}_s{seed}").resolve()),
        "--resnet",
        args.resnet,
        "--img_size",
        str(args.img_size),
        "--batch_size",
        str(args.batch_size),
        "--total_epoch",
        str(args.epochs),
        "--lr",
        str(args.lr),
        "--seed",
        str(seed),
        "--workers",
        str(args.workers),
        "--device",
        args.device,
        "--save_every",
        str(args.epochs),
        "--train_record",
        str((out / "train-records" / f"{variant}_s{seed}.txt").resolve()),
        "--resume",
        "auto",
        "--precision",
        args.precision,
        "--augment",
        args.augment,
    ]
    argv += ["--cos", "true"] if args.cos else ["--schedule", *map(str, args.schedule)]
    if args.channels_last is not None:
        argv += ["--channels_last", "true" if args.channels_last else "false"]
    return argv + PRETRAINED[variant]


def final_checkpoint(args: argparse.Namespace, out: Path, variant: str, seed: int) -> Path:
    return out / "ckpt" / f"{variant}_s{seed}" / f"wuhan_img_{args.epochs}.tar"


def pretrain(args: argparse.Namespace, data: Path, out: Path, variant: str, seed: int) -> Path:
    """Run mmgr.py for one (variant, seed) unless its final checkpoint exists; returns the image checkpoint."""
    final = final_checkpoint(args, out, variant, seed)
    if final.is_file():
        return final
    argv = pretrain_argv(args, data, out, variant, seed)
    log = out / "logs" / f"{variant}_s{seed}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    if args.jobs == 0:
        ok = True
        with open(log, "w") as f, contextlib.redirect_stdout(f), contextlib.redirect_stderr(f):
            try:
                mmgr.main(argv)
            except UserError as exc:
                print(f"error: {exc}")
                ok = False
        text = log.read_text()
    else:
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        r = subprocess.run(
            [sys.executable, str(ROOT / "mmgr.py"), *argv], cwd=out, env=env, capture_output=True, text=True
        )
        text = r.stdout + r.stderr
        log.write_text(text)
        ok = r.returncode == 0
    if not ok or not final.is_file():
        raise UserError(f"pretraining {variant} (seed {seed}) failed, see {log}")
    last = [ln for ln in text.splitlines() if ln.startswith("epoch ")][-1:]
    print(f"  pretrained {variant} seed {seed} in {time.time() - t0:.0f} s: {last[0] if last else ''}", flush=True)
    return final


def random_checkpoint(args: argparse.Namespace, out: Path, seed: int) -> Path:
    """A randomly initialised encoder (torchvision's init, seeded), saved like a pretrained one."""
    path = out / "ckpt" / f"random_s{seed}" / "wuhan_img_0.tar"
    if not path.is_file():
        torch.manual_seed(seed)
        atomic_save(ImageEncoder(args.resnet, 128).state_dict(), path)
    return path


def category_counts(data: Path, files: list[Path]) -> np.ndarray:
    """``[N, C+1]``: log(1 + count) of each POI category per tile, and log(1 + total).

    Categories are recovered from the POI embedding tensors themselves (each distinct category
    vector is one category), so this works on any data in the published layout.
    """
    rows = [load_file(data / "sub_shanghai_emb" / (p.stem + ".tensor"), "POI embedding file").float() for p in files]
    vocab: dict[bytes, int] = {}
    ids = []
    for x in rows:
        keys = [r.numpy().round(5).tobytes() for r in x]
        ids.append([vocab.setdefault(k, len(vocab)) for k in keys])
    counts = np.zeros((len(files), len(vocab) + 1))
    for i, t in enumerate(ids):
        np.add.at(counts[i], t, 1.0)
        counts[i, -1] = len(t)
    return np.log1p(counts)


# --------------------------------------------------------------------------------------------------
# Statistics and tables


def ci_text(values: list[float]) -> str:
    """Mean ± 95 % half-width of ``values``: 3 decimals, or none for values of 100 and more (persons, yuan)."""
    m, half = mean_ci(values)
    return format_ci(m, half, 0 if np.isfinite(m) and abs(m) >= 100 else 3)


def flatten(probe: dict[str, dict[str, dict[str, float]]]) -> dict[str, float]:
    """``{target: {method: {metric: v}}}`` -> ``{"target/method/metric": v}``."""
    return {f"{t}/{m}/{k}": v for t, d in probe.items() for m, mm in d.items() for k, v in mm.items() if k != "alpha"}


def row_values(results: dict, variant: str, target: str, metric: str, method: str = "ridge") -> list[float]:
    """Per-seed values of one cell, in seed order. The bounds' rows have no probe: the mean predictor and the
    supervised bound give the same values in the ridge and the kNN table."""
    key = f"{target}/{PROTOCOL.get(variant, method)}/{metric}"
    seeds = results.get(variant, {})
    return [seeds[s][key] for s in sorted(seeds, key=int) if key in seeds[s]]


def primary_metric(results: dict, target: str) -> str:
    """R² for scalar targets, KL for distributions (whichever the rows hold)."""
    for seeds in results.values():
        for vals in seeds.values():
            if any(k.startswith(f"{target}/") and k.endswith("/KL") for k in vals):
                return "KL"
    return "R2"


def summarise(results: dict, targets: list[str], variants: list[str], method: str = "ridge") -> dict:
    """``{variant: {target: {"metric", "n", "mean", "ci", "gap_closed"}}}`` for the primary metric of each target."""
    out: dict = {}
    for t in targets:
        metric = primary_metric(results, t)
        lo = mean_ci(row_values(results, "random", t, metric, method))[0]
        hi = mean_ci(row_values(results, "supervised", t, metric, method))[0]
        for v in variants:
            vals = row_values(results, v, t, metric, method)
            if not vals:
                continue
            m, ci = mean_ci(vals)
            out.setdefault(v, {})[t] = {
                "metric": metric,
                "n": len(vals),
                "mean": m,
                "ci": ci,
                "gap_closed": gap_closed(m, lo, hi),
            }
    return out


def paired_tests(results: dict, targets: list[str], method: str = "ridge") -> dict:
    """``{"mmgr-simclr": {target: paired_comparison(...) + metric, per-seed differences, seeds better}}``."""
    out: dict = {}
    for a, b in PAIRS:
        if a not in results or b not in results:
            continue
        seeds = sorted(set(results[a]) & set(results[b]), key=int)
        for t in targets:
            metric = primary_metric(results, t)
            key = f"{t}/{method}/{metric}"
            if len(seeds) < 2 or any(key not in results[v][s] for v in (a, b) for s in seeds):
                continue
            x = [results[a][s][key] for s in seeds]
            y = [results[b][s][key] for s in seeds]
            cmp = paired_comparison(x, y)
            sign = -1.0 if metric in LOWER_IS_BETTER else 1.0
            diffs = [xi - yi for xi, yi in zip(x, y, strict=True)]
            cmp.update(
                {
                    "metric": metric,
                    "seeds": [int(s) for s in seeds],
                    "diffs": diffs,
                    "better": int(sum(sign * d > 0 for d in diffs)),
                }
            )
            cmp["verdict"] = verdict(cmp)
            out.setdefault(f"{a}-{b}", {})[t] = cmp
    return out


def verdict(cmp: dict) -> str:
    """Plain words for one paired test: established only if p < 0.05 and every seed points the same way."""
    better = cmp["better"] * 2 > cmp["n"]
    direction = "better" if better else "worse"
    unanimous = cmp["better"] in (0, cmp["n"])
    if cmp["p_t"] < 0.05 and unanimous:
        return f"{direction} (p < 0.05, all {cmp['n']} seeds)"
    if cmp["p_t"] < 0.05:
        return f"{direction} (p < 0.05, but not on every seed)"
    return "not established (p >= 0.05)"


def main_table(summary: dict, targets: list[str], variants: list[str]) -> str:
    """Rows x targets: mean ± 95 % CI of the primary metric, and the gap closed."""
    cols = [(t, next((summary[v][t]["metric"] for v in summary if t in summary[v]), "R2")) for t in targets]
    head = (
        "| row | n | "
        + " | ".join(
            f"{t} {'R²' if m == 'R2' else m} {'↓' if m in LOWER_IS_BETTER else '↑'} | {t} gap closed" for t, m in cols
        )
        + " |"
    )
    lines = [head, "|---|---:|" + "---:|---:|" * len(cols)]
    for v in variants:
        if v not in summary:
            continue
        n = max(c["n"] for c in summary[v].values())
        cells = []
        for t, _ in cols:
            c = summary[v].get(t)
            if c is None:
                cells += ["–", "–"]
                continue
            g = {"random": "0 (def.)", "supervised": "1 (def.)"}.get(
                v, f"{c['gap_closed']:.2f}" if np.isfinite(c["gap_closed"]) else "–"
            )
            cells += [format_ci(c["mean"], c["ci"]), g]
        lines.append(f"| {LABELS[v]} | {n} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def paired_table(paired: dict) -> str:
    lines = [
        "| comparison | target | metric | per-seed difference (seeds) | mean diff ± 95 % CI | seeds better | "
        "paired t p | Wilcoxon p | verdict |",
        "|---|---|---|---|---:|---:|---:|---:|---|",
    ]
    for pair, per_target in paired.items():
        a, b = pair.split("-")
        for t, c in per_target.items():
            diffs = ", ".join(f"{d:+.3f}" for d in c["diffs"])
            metric = "R²" if c["metric"] == "R2" else c["metric"]
            seeds = ", ".join(map(str, c["seeds"]))
            lines.append(
                f"| {LABELS[a]} − {LABELS[b]} | {t} | {metric} | {diffs} ({seeds}) "
                f"| {format_ci(c['diff'], c['ci'])} | {c['better']}/{c['n']} "
                f"| {c['p_t']:.3g} | {c['p_wilcoxon']:.3g} | {c['verdict']} |"
            )
    return "\n".join(lines)


def secondary_table(results: dict, targets: list[str], variants: list[str], method: str) -> str:
    """Every metric of every target, mean ± 95 % CI."""
    metrics = []
    for t in targets:
        keys = ("R2", "MAE", "RMSE") if primary_metric(results, t) == "R2" else ("KL", "L1", "cos")
        metrics += [(t, k) for k in keys]
    lines = ["| row | " + " | ".join(f"{t} {k}" for t, k in metrics) + " |", "|---|" + "---:|" * len(metrics)]
    for v in variants:
        if v not in results:
            continue
        cells = [ci_text(row_values(results, v, t, k, method)) for t, k in metrics]
        lines.append(f"| {LABELS[v]} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def per_seed_table(results: dict, targets: list[str], variants: list[str]) -> str:
    seeds = sorted({s for v in results.values() for s in v}, key=int)
    lines = ["| row | target | " + " | ".join(f"seed {s}" for s in seeds) + " |", "|---|---|" + "---:|" * len(seeds)]
    for v in variants:
        if v not in results:
            continue
        for t in targets:
            metric = primary_metric(results, t)
            proto = PROTOCOL.get(v, "ridge")
            cells = [f"{results[v][s][f'{t}/{proto}/{metric}']:.3f}" if s in results[v] else "" for s in seeds]
            lines.append(f"| {LABELS[v]} | {t} {'R²' if metric == 'R2' else metric} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(summary: dict, targets: list[str], variants: list[str], path: Path, title: str) -> None:
    """One panel per target: the primary metric of each row, with its 95 % interval as an error bar."""
    vs = [v for v in variants if v in summary]
    fig = Figure(figsize=(3.6 * len(targets), 4.2), dpi=110)
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(targets), squeeze=False)
    colours = {"mean": "0.75", "random": "0.55", "supervised": "0.25", "poi_encoder": "C7", "poi_counts": "C7"}
    for ax, t in zip(axes[0], targets, strict=True):
        rows = [v for v in vs if t in summary[v]]
        if not rows:
            continue
        metric = summary[rows[0]][t]["metric"]
        means = [summary[v][t]["mean"] for v in rows]
        cis = [summary[v][t]["ci"] if np.isfinite(summary[v][t]["ci"]) else 0.0 for v in rows]
        ax.bar(
            range(len(rows)), means, yerr=cis, capsize=3, color=[colours.get(v, f"C{i}") for i, v in enumerate(rows)]
        )
        ax.set_xticks(range(len(rows)))
        ax.set_xticklabels(rows, rotation=60, ha="right", fontsize=7)
        ax.axhline(0, color="black", linewidth=0.5)
        arrow = "lower is better" if metric in LOWER_IS_BETTER else "higher is better"
        ax.set_title(f"{t} {'R²' if metric == 'R2' else metric} ({arrow})\nmean ± 95 % CI over seeds", fontsize=8)
    fig.suptitle(title, fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)


def machine() -> dict:
    """What ran it: CPU model and the flags that matter, GPU, versions, load."""
    info = {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpus": os.cpu_count(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "torch_threads": torch.get_num_threads(),
    }
    try:
        text = Path("/proc/cpuinfo").read_text()
        model = next((ln.split(":", 1)[1].strip() for ln in text.splitlines() if ln.startswith("model name")), "?")
        flags = next((ln.split(":", 1)[1].split() for ln in text.splitlines() if ln.startswith("flags")), [])
        info["cpu"] = model
        info["cpu_flags"] = [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile") if f in flags]
    except OSError:
        info["cpu"] = platform.processor()
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def _load() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "?"


# --------------------------------------------------------------------------------------------------
# The run


class Comparison:
    """State of one comparison: data, decoded tiles, results so far, written after every row."""

    def __init__(
        self,
        args: argparse.Namespace,
        data: Path,
        out: Path,
        where: str,
        argv: list[str] | None,
        started: float,
        phases: dict[str, float],
    ):
        self.args, self.data, self.out, self.where, self.argv = args, data, out, where, argv
        self.started, self.phases = started, phases
        self.device = torch.device(args.device)
        self.files = list_images(data / "img")
        self.names = [p.name for p in self.files]
        t0 = time.perf_counter()
        self.images = load_tiles(self.files, args.workers)
        phases["decode"] = time.perf_counter() - t0
        self.index = {n: i for i, n in enumerate(self.names)}
        self.results: dict[str, dict[str, dict[str, float]]] = {}
        self.extra: dict = {"supervised_std_ratio": {}, "supervised_seconds": {}}

    def rows_of(self, list_file: str) -> list[int]:
        wanted = read_list(self.data / list_file)
        missing = [n for n in wanted if n not in self.index]
        if missing:
            raise UserError(
                f"{len(missing)} tiles of {self.data / list_file} are missing from {self.data / 'img'} "
                f"(first: {missing[0]}); fix the list"
            )
        return [self.index[n] for n in wanted]

    def record(self, variant: str, seed: int, values: dict[str, float]) -> None:
        self.results.setdefault(variant, {})[str(seed)] = values
        shown = {
            k: round(v, 3) for k, v in values.items() if k.split("/")[2] in ("R2", "KL") and k.split("/")[1] != "knn"
        }
        print(f"  {variant} seed {seed}: {shown}", flush=True)

    def probe(self, variant: str, seed: int, feats: np.ndarray) -> None:
        probe = {
            t: probe_target(
                feats,
                self.names,
                self.data,
                t,
                "train-wuhan.txt",
                "val-wuhan.txt",
                k=self.args.knn,
                log_target=bool(self.args.log_target),
            )
            for t in self.args.targets
        }
        self.record(variant, seed, flatten(probe))

    def mean_predictor(self) -> None:
        tr, va = read_list(self.data / "train-wuhan.txt"), read_list(self.data / "val-wuhan.txt")
        values = {}
        for t in self.args.targets:
            y_tr, y_va = load_targets(self.data, t, tr), load_targets(self.data, t, va)
            m = score(y_va, np.repeat(y_tr.mean(0, keepdims=True), len(y_va), 0))
            values.update({f"{t}/mean/{k}": v for k, v in m.items()})
        self.record("mean", 0, values)

    def supervised(self, seed: int) -> None:
        """One end-to-end model per target for this seed (cached in OUT/supervised/)."""
        a = self.args
        config = {
            "data": self.where,
            **{
                k: getattr(a, k)
                for k in (
                    "resnet",
                    "img_size",
                    "batch_size",
                    "bound_epochs",
                    "bound_lr",
                    "schedule",
                    "cos",
                    "precision",
                )
            },
        }
        key = hashlib.sha1(json.dumps(config, sort_keys=True).encode()).hexdigest()[:10]
        tr, va = self.rows_of("train-wuhan.txt"), self.rows_of("val-wuhan.txt")
        values: dict[str, float] = {}
        for t in a.targets:
            cache = self.out / "supervised" / f"{t}_s{seed}_{key}.json"
            if cache.is_file():
                res = json.loads(cache.read_text())
            else:
                y_tr = load_targets(self.data, t, [self.names[i] for i in tr])
                y_va = load_targets(self.data, t, [self.names[i] for i in va])
                print(f"  supervised {t} seed {seed}: {a.resnet}, {a.bound_epochs} epochs", flush=True)
                res = train_supervised(
                    self.images[tr],
                    torch.from_numpy(y_tr).float(),
                    self.images[va],
                    y_va,
                    task_for(y_tr, t),
                    resnet=a.resnet,
                    img_size=a.img_size,
                    batch_size=a.batch_size,
                    epochs=a.bound_epochs,
                    lr=a.bound_lr,
                    seed=seed,
                    device=self.device,
                    schedule=a.schedule,
                    cos=a.cos,
                    precision=a.precision,
                    channels_last=bool(a.channels_last)
                    if a.channels_last is not None
                    else default_channels_last(self.device),
                    log=False,
                )
                res.pop("predictions")
                atomic_write_text(json.dumps({"config": config, **res}) + "\n", cache)
            for k, v in res.items():
                if k in ("R2", "MAE", "RMSE", "KL", "L1", "cos"):
                    values[f"{t}/end_to_end/{k}"] = v
            self.extra["supervised_std_ratio"].setdefault(t, {})[str(seed)] = res.get("pred_std_over_true_std")
            self.extra["supervised_seconds"].setdefault(t, {})[str(seed)] = res.get("train_seconds")
        self.record("supervised", seed, values)

    def encoder_row(self, variant: str, seed: int, ckpt: Path) -> None:
        feats = backbone_embeddings(load_image_encoder(ckpt), self.images, self.device)
        self.probe(variant, seed, feats)

    def save(self) -> dict:
        a = self.args
        variants = [v for v in VARIANTS if v in a.variants]
        summary = summarise(self.results, a.targets, variants)
        blob = {
            "city_version": city_version_of(self.data),
            "data": self.where,
            "args": vars(a),
            "command": self.command(),
            "machine": machine(),
            "started": datetime.datetime.fromtimestamp(self.started, datetime.timezone.utc).isoformat(
                timespec="seconds"
            ),
            "seconds": round(time.time() - self.started, 1),
            "phase_seconds": {k: round(v, 1) for k, v in self.phases.items()},
            "results": self.results,
            "summary": summary,
            "summary_knn": summarise(self.results, a.targets, variants, "knn"),
            "paired": paired_tests(self.results, a.targets),
            "paired_knn": paired_tests(self.results, a.targets, "knn"),
            **self.extra,
        }
        atomic_write_text(json.dumps(blob, indent=1, default=float) + "\n", self.out / "results.json")
        return blob

    def command(self) -> str:
        argv = sys.argv[1:] if self.argv is None else self.argv
        return "python benchmarks/compare.py " + " ".join(shlex.quote(x) for x in argv)


def bound_check(results: dict) -> str | None:
    pops = row_values(results, "supervised", "pop1km", "R2")
    if not pops:
        return None
    m, ci = mean_ci(pops)
    ok = m >= 0.7
    return (
        f"Supervised bound on population: R² {format_ci(m, ci)} over {len(pops)} seeds (min {min(pops):.3f}); "
        f"requirement R² ≥ 0.7: {'met' if ok else 'NOT met'}."
    )


def report(blob: dict, load_start: str, load_end: str) -> str:
    a = argparse.Namespace(**blob["args"])
    results, variants = blob["results"], [v for v in VARIANTS if v in a.variants]
    mach = blob["machine"]
    hw = f"{mach.get('gpu') or mach.get('cpu')}" + (
        f" (flags: {', '.join(mach.get('cpu_flags', [])) or 'none'})" if "gpu" not in mach else ""
    )
    sched = "cosine decay" if a.cos else f"lr x0.1 at epochs {a.schedule}"
    lines = [
        f"Command: `{blob['command']}`",
        "",
        f"Data: {blob['data']}.",
        f"Pretraining: {a.resnet}, {a.img_size} px crops, batch {a.batch_size}, {a.epochs} epochs, Adam lr "
        f"{a.lr:g}, {sched}, precision {a.precision}, augmentation on {a.augment}; seeds {a.seeds}.",
        f"Probed rows: ridge (primary) and kNN (k = {a.knn}) on frozen backbone embeddings of the whole tile, fit "
        f"on train-wuhan.txt, scored on val-wuhan.txt{', scalar targets fit as log1p' if a.log_target else ''}.",
        f"Supervised bound: the same {a.resnet} from random init trained end to end per task, {a.bound_epochs} "
        f"epochs (same budget: pretraining's epochs, batch, crop size and schedule), Adam lr {a.bound_lr:g}, "
        f"last epoch on the validation tiles.",
        f"Machine: {hw}; {mach['platform']}; torch {mach['torch']}; OMP_NUM_THREADS={mach['omp_num_threads']}; "
        f"load average at start {load_start}, at end {load_end}. Started {blob['started']}; "
        f"total {blob['seconds'] / 60:.1f} min ("
        + ", ".join(f"{k} {v:.0f} s" for k, v in blob["phase_seconds"].items())
        + ").",
        "",
    ]
    check = bound_check(results)
    if check:
        lines += [check, ""]
    lines += [
        "Primary metrics (ridge probe), mean ± 95 % CI over seeds (Student t); gap closed = (row − random "
        "init) / (supervised − random init) on the means:",
        "",
        main_table(blob["summary"], a.targets, variants),
        "",
    ]
    if blob["paired"]:
        lines += [
            "Paired by seed (ridge, primary metric; difference = first − second; for KL a negative difference "
            "means the first is better; 'established' needs p < 0.05 and every seed the same way):",
            "",
            paired_table(blob["paired"]),
            "",
        ]
    lines += [
        "Every metric, ridge probe (mean ± 95 % CI):",
        "",
        secondary_table(results, a.targets, variants, "ridge"),
        "",
        f"Secondary: kNN probe (k = {a.knn}, cosine), mean ± 95 % CI (bounds' rows as above):",
        "",
        secondary_table(results, a.targets, variants, "knn"),
        "",
    ]
    if blob["paired_knn"]:
        lines += ["kNN, paired by seed:", "", paired_table(blob["paired_knn"]), ""]
    lines += ["Per seed (primary metric; ridge for probed rows):", "", per_seed_table(results, a.targets, variants), ""]
    return "\n".join(lines)


def city_version_of(data: Path) -> int | None:
    """The synthetic city version recorded in a data folder written by data/synthetic.py (None otherwise)."""
    try:
        return int(json.loads((data / ".complete").read_text())["city_version"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def prepare(args: argparse.Namespace, out: Path, phases: dict) -> tuple[Path, Path, str]:
    """The data (the synthetic city, generated once, or --data_path), what pretraining reads, and a description."""
    t0 = time.perf_counter()
    if args.data_path is None:
        data = ensure_city(out / "city", args.n_tiles, args.tile_size, args.city_seed)
    else:
        data = Path(args.data_path)
        if not data.is_dir():
            raise UserError(f"data directory {data} does not exist; pass --data_path of a published layout")
    version = city_version_of(data)
    where = (
        f"synthetic city version {version} ({args.n_tiles} tiles of {args.tile_size} px, seed {args.city_seed})"
        if args.data_path is None
        else str(data) + (f" (synthetic city version {version})" if version else "")
    )
    phases["data"] = time.perf_counter() - t0
    pretrain_data = Path(args.pretrain_data) if args.pretrain_data else data
    if args.pack:
        t0 = time.perf_counter()
        pretrain_data = out / "packed"
        if not is_packed(pretrain_data):
            pack(data, pretrain_data, workers=args.workers, progress=False)
        phases["pack"] = time.perf_counter() - t0
    return data, pretrain_data, where


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    started, load_start, phases = time.time(), _load(), {}
    data, pretrain_data, where = prepare(args, out, phases)
    print(
        f"comparison on {where}: {args.resnet}, crops {args.img_size}, batch {args.batch_size}, {args.epochs} "
        f"pretraining epochs, lr {args.lr:g}, bound {args.bound_epochs} epochs; seeds {args.seeds}; rows "
        f"{' '.join(v for v in VARIANTS if v in args.variants)}; jobs {args.jobs}; threads {torch.get_num_threads()}",
        flush=True,
    )
    cmp = Comparison(args, data, out, where, argv, started, phases)
    print(f"decoded {len(cmp.files)} tiles in {phases['decode']:.1f} s", flush=True)
    if "mean" in args.variants:
        cmp.mean_predictor()

    # Pretraining runs: with 2 or more --jobs all are queued at once and the bound trains here meanwhile;
    # otherwise each runs when its row is due (seed by seed, so results.json fills as the runs finish).
    todo = [
        (v, s)
        for s in args.seeds
        for v in PRETRAINED
        if v in args.variants or (v == "mmgr" and "poi_encoder" in args.variants)
    ]
    pool = ThreadPoolExecutor(max_workers=max(1, args.jobs))
    futures = {vs: pool.submit(pretrain, args, pretrain_data, out, *vs) for vs in todo} if args.jobs >= 2 else {}

    def checkpoint(variant: str, seed: int) -> Path:
        if (variant, seed) in futures:
            return futures[(variant, seed)].result()
        return pretrain(args, pretrain_data, out, variant, seed)

    try:
        # The bound first: had it failed the city check, the configuration (not the city) would need work,
        # which is worth knowing before the pretraining hour.
        t0 = time.perf_counter()
        if "supervised" in args.variants:
            for seed in args.seeds:
                cmp.supervised(seed)
            cmp.save()
        phases["supervised"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        counts = None
        for seed in args.seeds:
            for variant in [v for v in VARIANTS if v in args.variants and v not in ("mean", "supervised")]:
                if variant == "poi_counts":  # no learning: one row, like the mean predictor
                    if counts is None:
                        counts = category_counts(data, cmp.files)
                        cmp.probe(variant, 0, counts)
                elif variant == "random":
                    cmp.encoder_row(variant, seed, random_checkpoint(args, out, seed))
                elif variant == "poi_encoder":
                    ckpt = checkpoint("mmgr", seed)
                    poi = ckpt.with_name(ckpt.name.replace("_img_", "_poi_"))
                    cmp.probe(variant, seed, poi_embeddings(poi, data, "img", cmp.files, cmp.device, progress=False))
                else:
                    cmp.encoder_row(variant, seed, checkpoint(variant, seed))
                cmp.save()
        phases["pretraining and probes"] = time.perf_counter() - t0
    finally:
        pool.shutdown(wait=True, cancel_futures=True)

    blob = cmp.save()
    text = report(blob, load_start, _load())
    atomic_write_text(text, out / "results.md")
    variants = [v for v in VARIANTS if v in args.variants]
    plot(
        blob["summary"],
        args.targets,
        variants,
        out / "compare.png",
        f"{where}; {args.resnet}, {args.epochs} epochs; ridge probe; n = {len(args.seeds)} seeds",
    )
    print("\n" + text, flush=True)
    print(
        f"wrote {out / 'results.md'}, {out / 'results.json'}, {out / 'compare.png'} ({blob['seconds'] / 60:.1f} min)",
        flush=True,
    )
    return blob


if __name__ == "__main__":
    run_main(main)
