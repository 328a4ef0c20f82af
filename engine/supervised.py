"""The end-to-end trainer: a ResNet and the downstream head trained together on labelled tiles.

Tiles are decoded once into ``uint8 [N, 3, H, W]`` (:func:`load_tiles`) and every training view is drawn
as a batch on the device (data.gpu_augment.GPUAugment: per-image crops and flips), so an epoch costs
the network's passes and almost nothing else. This is the project's one end-to-end trainer
(:class:`EndToEnd`): the comparison's supervised upper bound, its fine-tuned and from-scratch rows at
each label fraction (engine/compare/), ``res_pop.py --finetune`` / ``res_func.py --finetune``
(engine/downstream.py) and benchmarks/city_bound.py train with it; every encoder's embeddings for the
probes come from :func:`backbone_embeddings` over the same decoded tiles.
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

__all__ = ["load_tiles", "normalise", "backbone_embeddings", "task_for", "EndToEnd", "train_supervised"]


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


class EndToEnd:
    """One backbone + task head trained end to end on decoded tiles: set up here, then :meth:`train_epoch` per
    epoch and :meth:`predict` whenever the caller evaluates.

    Args:
        encoder: the image encoder to start from (pretrained: fine-tuning; freshly built: from scratch); its
            projection ``fc`` is replaced by the published head ``Linear(d, d/2) -> ReLU -> Linear(d/2, K)``,
            drawn from the global RNG (seed it first).
        task: the downstream task (engine/tasks.py), already fitted to the training targets.
        train_images: ``uint8 [N, 3, H, W]`` training tiles; y_train: ``[N, K]`` targets (original units).
        lr: Adam lr of the head; backbone_lr: of every other parameter (default ``lr``: one lr for all).
        epochs, schedule, cos: the lr of epoch ``e`` is each group's lr times utils.schedule.lr_at's factor.
        augment: True: ``RandomResizedCrop(img_size, scale (0.2, 1))`` + horizontal flip per image, batched on
            ``device`` (GPUAugment without colour jitter or greyscale: the downstream training transform of
            data/transforms.py); False: the whole tile, as validated.
        head_bias_init: start the head's output bias at the mean training target (``--head_bias_init mean``).
        lr_flag: the flag a user lowers when the loss stops being finite (named in the error).

    BatchNorm trains (train mode) with every parameter; incomplete last batches are dropped; the order of
    the tiles and the crops come from one generator seeded with ``seed``.
    """

    def __init__(
        self,
        encoder: ImageEncoder,
        task: Task,
        train_images: torch.Tensor,
        y_train: torch.Tensor,
        *,
        img_size: int,
        batch_size: int,
        epochs: int,
        lr: float,
        seed: int,
        device: torch.device,
        backbone_lr: float | None = None,
        schedule: list[int] | tuple[int, ...] = (),
        cos: bool = True,
        augment: bool = True,
        precision: str = "fp32",
        channels_last: bool = False,
        head_bias_init: bool = False,
        lr_flag: str = "--lr",
    ):
        n = len(train_images)
        if n < batch_size:
            raise UserError(f"{n} training tiles are fewer than one batch of {batch_size}; lower --batch_size")
        self.task, self.device, self.batch_size = task, device, batch_size
        self.epochs, self.schedule, self.cos = epochs, list(schedule), cos
        self.precision, self.channels_last, self.lr_flag = precision, channels_last, lr_flag
        self.memory = torch.channels_last if channels_last else torch.contiguous_format
        model = with_task_head(encoder, y_train.shape[1], freeze_backbone=False)
        if head_bias_init:
            task.init_head(model.encoder.fc[-1], task.to_train(y_train))
        self.model = model.to(device, memory_format=self.memory)
        head = list(self.model.encoder.fc.parameters())
        head_ids = {id(p) for p in head}
        backbone = [p for p in self.model.parameters() if id(p) not in head_ids]
        self.opt = torch.optim.Adam(
            [
                {"params": head, "base_lr": lr},
                {"params": backbone, "base_lr": lr if backbone_lr is None else backbone_lr},
            ],
            lr=lr,
        )
        self.augment = GPUAugment(img_size, p_jitter=0.0, p_gray=0.0) if augment else None
        self.order = torch.Generator().manual_seed(seed)
        self.images, self.y = train_images.to(device), y_train.to(device)

    def train_epoch(self, epoch: int) -> float:
        """One pass over the training tiles at the lr of (0-based) ``epoch``; returns the mean training loss."""
        factor = lr_at(epoch, 1.0, self.epochs, self.schedule, self.cos)
        for g in self.opt.param_groups:
            g["lr"] = g["base_lr"] * factor
        self.model.train()
        n, total, steps = len(self.images), 0.0, 0
        perm = torch.randperm(n, generator=self.order)
        for idx in perm[: n // self.batch_size * self.batch_size].split(self.batch_size):
            idx_dev = idx.to(self.device)
            if self.augment is not None:
                x = self.augment(self.images[idx_dev], generator=self.order, channels_last=self.channels_last)
            else:
                x = normalise(self.images[idx_dev]).contiguous(memory_format=self.memory)
            with autocast(self.device, self.precision):
                out = self.model(x)
            loss = self.task.loss(out.float(), self.task.to_train(self.y[idx_dev]))
            if not torch.isfinite(loss):
                raise UserError(f"the training loss became {loss.item()} at epoch {epoch + 1}; lower {self.lr_flag}")
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            self.opt.step()
            total, steps = total + loss.item(), steps + 1
        return total / steps

    @torch.no_grad()
    def predict(self, images: torch.Tensor, batch_size: int = 256) -> np.ndarray:
        """Eval-mode predictions on whole tiles ``uint8 [M, 3, H, W]`` -> ``[M, K]`` in original units (float64)."""
        self.model.eval()
        raw = torch.cat(
            [
                self.task.predict(
                    self.model(
                        normalise(images[i : i + batch_size].to(self.device)).contiguous(memory_format=self.memory)
                    ).float()
                ).cpu()
                for i in range(0, len(images), batch_size)
            ]
        )
        return self.task.to_original(raw.numpy().astype(np.float64))


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
    encoder: ImageEncoder | None = None,
    backbone_lr: float | None = None,
    log: bool = True,
) -> dict:
    """Train one backbone + head end to end (:class:`EndToEnd`) and score the last epoch on the validation tiles.

    Args:
        train_images: ``uint8 [N, 3, H, W]`` training tiles; y_train: ``[N, K]`` targets (original units).
        val_images: ``uint8 [M, 3, H', W']`` validation tiles (scored whole); y_val: ``[M, K]``.
        task: the downstream task (engine/tasks.py), not yet fitted; it is fitted to ``y_train`` here.
        encoder: where training starts (a pretrained encoder: fine-tuning, with the backbone at
            ``backbone_lr``); default: a torchvision ``resnet`` from random initialisation (from scratch).

    After ``seed_everything(seed)`` the random encoder (if any) and then the head are drawn, in that order.
    Returns the task's metrics, ``pred_std_over_true_std``, ``train_seconds`` and the predictions ``[M, K]``
    (original units).
    """
    seed_everything(seed)
    task = task.fit(task.to_train(y_train))
    trainer = EndToEnd(
        ImageEncoder(resnet) if encoder is None else encoder,
        task,
        train_images,
        y_train,
        img_size=img_size,
        batch_size=batch_size,
        epochs=epochs,
        lr=lr,
        backbone_lr=backbone_lr,
        seed=seed,
        device=device,
        schedule=schedule,
        cos=cos,
        precision=precision,
        channels_last=channels_last,
    )
    t0 = time.perf_counter()
    for epoch in range(epochs):
        mean_loss = trainer.train_epoch(epoch)
        if log:
            print(f"    epoch {epoch + 1}/{epochs} loss {mean_loss:.4f}", flush=True)
    seconds = time.perf_counter() - t0
    pred = trainer.predict(val_images)
    out = {**task.metrics(y_val, pred), "train_seconds": round(seconds, 1)}
    if y_val.shape[1] == 1:
        out["pred_std_over_true_std"] = float(pred[:, 0].std() / max(float(y_val[:, 0].std()), 1e-12))
    out["predictions"] = pred
    return out
