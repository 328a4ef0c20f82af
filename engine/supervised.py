"""The end-to-end trainer: a ResNet and the downstream head trained together on labelled tiles.

Tiles are decoded once into ``uint8 [N, 3, H, W]`` (:func:`load_tiles`) and every training view is drawn
as a batch on the device (data.gpu_augment.GPUAugment: per-image crops and flips), so an epoch costs
the network's passes and almost nothing else. The comparison's supervised upper bound
(engine/compare/) and benchmarks/city_bound.py train with :func:`train_supervised`; every encoder's
embeddings for the probes come from :func:`backbone_embeddings` over the same decoded tiles.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from data.gpu_augment import GPUAugment
from data.pretrain import open_rgb
from data.transforms import normalize_batch
from engine.tasks import Task, distribution_task, regression_task
from models.heads import with_task_head
from models.image_encoder import ImageEncoder
from utils.errors import UserError
from utils.reproducibility import seed_everything
from utils.schedule import lr_at
from utils.speed import autocast

__all__ = ["load_tiles", "normalise", "backbone_embeddings", "task_for", "train_supervised"]


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
