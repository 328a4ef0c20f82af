"""The downstream loop shared by ``res_pop.py`` (scalar regression) and ``res_func.py`` (distributions).

Both scripts parse the same flags (:func:`downstream_parser`, defined once) and run the same loop
(:func:`run_downstream`); they differ only in their task (engine/tasks.py): the head width, how the raw
head output becomes a prediction, the loss, the metrics, the checks of the targets.

The protocol (docs/downstream.md) is the published one: the encoder's ``fc`` is replaced by
``Linear(d, d/2) -> ReLU -> Linear(d/2, K)``, the backbone is frozen and stays in eval mode (BatchNorm
statistics frozen), training views are random crops and flips, Adam, step decay, metrics on the
validation list from ``--eval_from`` on, best and last epoch printed; except that scalar targets are
standardised for training by default (the task's ``--target_norm``). Opt-in additions: ``--finetune``
(the whole encoder trains, BatchNorm in train mode, backbone at ``--backbone_lr``; through the project's one
end-to-end trainer, engine/supervised.py, on tiles decoded once), ``--ckpt random
(a random encoder drawn from the run's seed), ``--augment false`` (whole tiles), ``--label_fraction``
(few-label study), ``--seeds`` (repeats, mean ± std), ``--baselines`` (the same head on a random encoder
and the mean predictor, compared), a per-tile predictions CSV and a scatter plot (engine/reports.py).

The seams: :func:`setup_seed` (data, loaders, model, optimiser), :func:`train_one_epoch`,
:func:`evaluate`, :func:`train_one_seed` (the epoch loop of one seed) and :func:`run_downstream`
(every seed, the reports, the baselines).

Fast path: with a frozen backbone in eval mode the validation tiles' backbone features never
change, so they are computed once and each evaluation only runs the head (same numbers, a fraction
of the time); without augmentation the same holds for the training tiles.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from data.downstream import TileTargetDataset, read_list, select_fraction
from data.layout import DownstreamLayout
from data.resumable import epoch_seed
from data.transforms import downstream_train_transform, eval_transform
from engine.embeddings import TileImages
from engine.reports import (
    MapTiles,
    Outputs,
    SeedResult,
    baseline_intro,
    comparison_lines,
    map_tiles,
    metric_text,
    summarize,
    summary_lines,
    write_reports,
)
from engine.run_folder import consistent_image_checkpoint
from engine.supervised import EndToEnd, load_tiles
from engine.tasks import Task, distribution_task, regression_task
from models.heads import with_task_head
from models.image_encoder import RESNETS, ImageEncoder, infer_resnet
from models.loading import load_image_encoder, load_image_state
from utils.args import common_parser, resolve_device, str2bool
from utils.errors import UserError
from utils.reproducibility import seed_everything, worker_init
from utils.schedule import lr_at
from utils.speed import default_channels_last

__all__ = [
    "DOWNSTREAM_DEMO",
    "Task",
    "regression_task",
    "distribution_task",
    "downstream_parser",
    "select_fraction",
    "run_downstream",
    "downstream_layout",
    "Encoder",
    "SeedResult",
    "SeedRun",
    "setup_seed",
    "train_one_epoch",
    "evaluate",
    "train_one_seed",
    "backbone_features",
]

# --demo of both scripts: CPU-sized, ours (docs/downstream.md). Whole tiles (no crops), so that the frozen
# backbone's features are computed once and 30 epochs of the head take about a second; the pretrained encoder
# is compared with a random one of the same architecture and with the mean predictor (--baselines).
DOWNSTREAM_DEMO = {
    "augment": False,
    "total_epoch": 30,
    "schedule": [20],
    "lr": 1e-3,
    "batch_size": 16,
    "eval_from": 1,
    "workers": 2,
    "baselines": True,
}


def downstream_parser(*, target_dir: str, train_record: str, description: str) -> argparse.ArgumentParser:
    """Flags of the downstream scripts (published res-pop defaults; ``target_dir``/``train_record``
    are the only per-task defaults)."""
    common = common_parser(
        data_path="./DATA",
        model_path="./checkpoints",
        batch_size=48,
        lr=5e-2,
        total_epoch=40,
        schedule=[20, 30],
        img_size=224,
        origin="published res-pop",
    )
    p = argparse.ArgumentParser(description=description, parents=[common])
    _encoder_and_data_flags(p, target_dir)
    _training_flags(p, train_record)
    _study_flags(p)
    _report_flags(p)
    return p


def _encoder_and_data_flags(p: argparse.ArgumentParser, target_dir: str) -> None:
    """Which encoder, and where the data are (names not given are found in --data_path: docs/downstream.md)."""
    g = p.add_argument_group("encoder and data")
    g.add_argument(
        "--ckpt",
        default=None,
        help="image checkpoint (*_img_<epoch>.tar, ours or the published script's, or checkpoint_last.pt), "
        "or 'random': a randomly initialised encoder of --resnet/--projection_dim drawn from each "
        "run's seed (the lower bound; with --finetune the supervised upper bound); default: the "
        "newest *_img_*.tar in --model_path",
    )
    g.add_argument(
        "--resnet",
        default="resnet50",
        choices=RESNETS,
        help="architecture of --ckpt random (default resnet50, published; a checkpoint brings its own)",
    )
    g.add_argument(
        "--projection_dim",
        type=int,
        default=128,
        help="projection width of --ckpt random (default 128, published; replaced by the head anyway)",
    )
    g.add_argument(
        "--img_dir",
        default=None,
        help="tile directory under --data_path (default 'img' when present (published), else "
        "'sub_shanghai_img', the pretraining layout)",
    )
    g.add_argument(
        "--target_dir",
        default=target_dir,
        help=f"per-tile target directory under --data_path, NAME.txt per tile (default {target_dir!r})",
    )
    g.add_argument(
        "--train_list",
        default=None,
        help="training list file (default 'train-wuhan.txt' when present (published), else 'train.txt', "
        "what prepare_pois.py writes)",
    )
    g.add_argument(
        "--val_list",
        default=None,
        help="validation list file (default 'val-wuhan.txt' when present (published), else 'val.txt')",
    )


def _training_flags(p: argparse.ArgumentParser, train_record: str) -> None:
    """How the head (or, with --finetune, the whole encoder) trains and when it is evaluated; ``train_record``
    is the script's record name (docs/downstream.md)."""
    g = p.add_argument_group("training and evaluation (the published protocol unless said)")
    g.add_argument(
        "--eval_from", type=int, default=5, help="first epoch evaluated on the validation list (default 5, published)"
    )
    g.add_argument(
        "--train_record",
        default=train_record,
        help=f"metrics record file under ./train-records/ (default {train_record!r}); the predictions CSV "
        "and plot are written beside it unless --pred_csv/--plot say otherwise",
    )
    g.add_argument(
        "--augment",
        type=str2bool,
        nargs="?",
        const=True,
        default=True,
        help="train on random crops (RandomResizedCrop(--img_size, scale 0.2-1)) and flips (default on, "
        "published); off: on the whole tile, as validated, so that with a frozen backbone each tile's "
        "features are computed once and an epoch only trains the head (the demo's setting)",
    )
    g.add_argument(
        "--finetune",
        type=str2bool,
        nargs="?",
        const=True,
        default=False,
        help="train the whole encoder (BatchNorm in train mode) instead of the frozen-backbone probe "
        "(default off: the published protocol)",
    )
    g.add_argument(
        "--backbone_lr",
        type=float,
        default=1e-4,
        help="Adam lr of the backbone with --finetune; the head keeps --lr (default 1e-4, ours: "
        "the paper gives no fine-tuning lr)",
    )
    g.add_argument(
        "--label_fraction",
        type=float,
        default=1.0,
        help="train on this fraction of the training list, a subset drawn with each run's seed "
        "(default 1.0: all labels, published)",
    )


def _study_flags(p: argparse.ArgumentParser) -> None:
    """``--seeds --head_bias_init --baselines``: repeated runs and what the encoder is compared with."""
    g = p.add_argument_group("repeats and baselines")
    g.add_argument(
        "--seeds",
        type=int,
        nargs="+",
        default=None,
        help="repeat the run with each seed and report mean ± std (default: one run with --seed)",
    )
    g.add_argument(
        "--head_bias_init",
        default="default",
        choices=("default", "mean"),
        help="default: PyTorch's init of the head (published); mean: start the head's output bias at the "
        "mean training target (log-mean proportions for functions), so that a ReLU-output head cannot "
        "start dead, i.e. below zero for every tile (with --target_norm zscore the head learns "
        "z-scores, whose mean is 0, and cannot die anyway)",
    )
    g.add_argument(
        "--baselines",
        type=str2bool,
        nargs="?",
        const=True,
        default=False,
        help="also train the same head, same seeds, on a randomly initialised encoder of the checkpoint's "
        "architecture, and compare both with the mean predictor (default off; on with --demo)",
    )


def _report_flags(p: argparse.ArgumentParser) -> None:
    """Where the per-tile predictions CSV and the scatter plot go (engine/reports.py)."""
    g = p.add_argument_group("reports")
    g.add_argument(
        "--pred_csv",
        default=None,
        help="per-tile validation predictions of the last epoch, every seed (default: "
        "train-records/<record name>_pred.csv)",
    )
    g.add_argument(
        "--plot",
        default=None,
        help="predicted-vs-true scatter PNG, regression only (default: "
        "train-records/<record name>_scatter.png; 'none' skips it)",
    )


@torch.no_grad()
def backbone_features(model: ImageEncoder, loader: DataLoader, device: torch.device) -> torch.Tensor:
    """Eval-mode backbone features of a loader's images -> ``[N, d]`` in loader order (on ``device``)."""
    model.eval()
    return torch.cat([model.features(batch[0].to(device, non_blocking=True)) for batch in loader])


@torch.no_grad()
def predict_loader(model: ImageEncoder, loader: DataLoader, task: Task, device: torch.device) -> np.ndarray:
    """Predictions (training units) over a loader of ``(image, ...)`` batches -> ``[N, K]`` in loader order."""
    model.eval()
    return torch.cat(
        [task.predict(model(batch[0].to(device, non_blocking=True))).float().cpu() for batch in loader]
    ).numpy()


@torch.no_grad()
def predict_tiles(run: SeedRun, files: list[Path], batch_size: int, device: torch.device) -> np.ndarray:
    """The seed's final predictions ``[N, K]`` (original units) on whole tiles ``files``, for the map."""
    loader = DataLoader(TileImages(files), batch_size=batch_size, shuffle=False)
    return run.task.to_original(predict_loader(run.model, loader, run.task, device))


@dataclass(frozen=True)
class Encoder:
    """The image encoder a run starts from: a checkpoint file, or (``ckpt=None``) a random initialisation
    of ``resnet``/``projection_dim``, drawn from the run's seed (``--ckpt random``)."""

    ckpt: Path | None
    resnet: str = "resnet50"
    projection_dim: int = 128

    @property
    def label(self) -> str:
        """As printed and recorded: the checkpoint path, or ``random init``."""
        return str(self.ckpt) if self.ckpt else "random init"

    @property
    def short(self) -> str:
        return self.ckpt.name if self.ckpt else "random init"

    def build(self) -> ImageEncoder:
        """The encoder (weights loaded, or fresh from the current RNG state)."""
        return load_image_encoder(self.ckpt) if self.ckpt else ImageEncoder(self.resnet, self.projection_dim)

    def architecture(self) -> Encoder:
        """A random encoder of this encoder's architecture (read from the checkpoint's keys and shapes)."""
        if self.ckpt is None:
            return self
        resnet, proj = infer_resnet(load_image_state(self.ckpt)[0])
        return Encoder(None, resnet, proj)


@dataclass
class SeedRun:
    """What one seed trains and evaluates: built by :func:`setup_seed`.

    ``task`` is fitted to the seed's training targets; ``order`` reseeds the training loader's shuffling
    each epoch; ``val_feats`` ``[N_val, d]`` are the cached validation features of the fast path;
    ``train_mean`` ``[K]`` is the mean training target (original units).
    """

    seed: int
    task: Task
    model: ImageEncoder
    opt: torch.optim.Optimizer
    train_loader: DataLoader
    val_loader: DataLoader
    order: torch.Generator
    train_mean: np.ndarray
    val_feats: torch.Tensor | None = None
    train_feats: torch.Tensor | None = None  # [N_train, d] without --augment
    train_y: torch.Tensor | None = None  # [N_train, K] their targets (original units)


def _training_set(
    args: argparse.Namespace, layout: DownstreamLayout, task: Task, seed: int, train_names: list[str]
) -> TileTargetDataset:
    """The seed's labelled training tiles (``--label_fraction`` of the list), targets checked."""
    names = select_fraction(train_names, args.label_fraction, seed)
    transform = downstream_train_transform(args.img_size) if args.augment else eval_transform()
    train_set = TileTargetDataset(
        layout.root, layout.train_list, transform, layout.img_dir, layout.target_dir, names=names
    )
    train_set.targets = task.check(train_set.targets, layout.targets)
    if len(train_set) < args.batch_size:
        raise UserError(
            f"{layout.train_list} (x label fraction {args.label_fraction:g}) gives {len(train_set)} tiles, "
            f"fewer than one batch of {args.batch_size}; lower --batch_size"
        )
    return train_set


def _optimizer(args: argparse.Namespace, model: ImageEncoder) -> torch.optim.Optimizer:
    """Adam over the head at ``--lr``; its ``base_lr`` is scaled by the schedule every epoch."""
    return torch.optim.Adam([{"params": list(model.encoder.fc.parameters()), "base_lr": args.lr}], lr=args.lr)


def setup_seed(
    args: argparse.Namespace,
    layout: DownstreamLayout,
    task: Task,
    encoder: Encoder,
    seed: int,
    train_names: list[str],
    val_set: TileTargetDataset,
    device: torch.device,
) -> SeedRun:
    """Seed everything, then build the seed's training set, loaders, model (encoder + task head) and optimiser."""
    seed_everything(seed)
    train_set = _training_set(args, layout, task, seed, train_names)
    task = task.fit(task.to_train(train_set.targets))
    loader_kw = dict(num_workers=args.workers, pin_memory=device.type == "cuda", worker_init_fn=worker_init)
    order = torch.Generator()
    # The published loader drops the incomplete last batch during training.
    train_loader = DataLoader(
        train_set, batch_size=args.batch_size, shuffle=True, drop_last=True, generator=order, **loader_kw
    )
    val_loader = DataLoader(val_set, batch_size=args.batch_size, shuffle=False, **loader_kw)
    model = with_task_head(encoder.build(), out_dim=len(task.columns), freeze_backbone=True)
    model = model.to(device)
    if args.head_bias_init == "mean":
        task.init_head(model.encoder.fc[-1], task.to_train(train_set.targets))
    run = SeedRun(
        seed,
        task,
        model,
        _optimizer(args, model),
        train_loader,
        val_loader,
        order,
        train_set.targets.double().mean(dim=0).numpy(),
    )
    print(
        f"seed {seed}: {encoder.label} ({model.resnet}); {len(train_set)} training and {len(val_set)} validation "
        f"tiles; frozen backbone{task.describe()}",
        flush=True,
    )
    # Fast path: a frozen, eval-mode backbone maps each validation tile to the same features every epoch,
    # and each training tile too when it is not augmented.
    run.val_feats = backbone_features(model, val_loader, device)
    if not args.augment:
        plain = DataLoader(train_set, batch_size=args.batch_size, shuffle=False, **loader_kw)
        run.train_feats, run.train_y = backbone_features(model, plain, device), train_set.targets.to(device)
    return run


def _train_batches(run: SeedRun, batch_size: int, device: torch.device) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """``(head output [B, K], target [B, K] in original units)`` of each training batch of an epoch, in the
    order drawn from ``run.order``; incomplete last batches dropped (published)."""
    if run.train_feats is None:
        for x, y, _ in run.train_loader:
            yield run.model(x.to(device, non_blocking=True)), y.to(device, non_blocking=True)
        return
    order = torch.randperm(len(run.train_feats), generator=run.order)
    for idx in order[: len(order) // batch_size * batch_size].split(batch_size):
        yield run.model.encoder.fc(run.train_feats[idx]), run.train_y[idx]


def train_one_epoch(run: SeedRun, epoch: int, lr_factor: float, device: torch.device) -> float:
    """One pass over the training loader at ``base_lr * lr_factor``; returns the mean training loss per tile."""
    for g in run.opt.param_groups:
        g["lr"] = g["base_lr"] * lr_factor
    seed_everything(epoch_seed(run.seed, epoch))
    run.order.manual_seed(epoch_seed(run.seed, epoch))
    # Frozen backbone: eval mode, BatchNorm keeps its pretrained statistics (published protocol).
    run.model.eval()
    total, n = 0.0, 0
    for out, y in _train_batches(run, run.train_loader.batch_size, device):
        loss = run.task.loss(out, run.task.to_train(y))
        if not torch.isfinite(loss):
            raise UserError(f"the training loss became {loss.item()} at epoch {epoch + 1}; lower --lr")
        run.opt.zero_grad(set_to_none=True)
        loss.backward()
        run.opt.step()
        total, n = total + loss.item() * len(y), n + len(y)
    return total / n


@torch.no_grad()
def evaluate(run: SeedRun, device: torch.device) -> np.ndarray:
    """Validation predictions ``[N_val, K]`` in original units (the head on the cached backbone features)."""
    run.model.eval()
    return run.task.to_original(run.task.predict(run.model.encoder.fc(run.val_feats)).float().cpu().numpy())


def _record_line(args: argparse.Namespace, encoder: Encoder, layout: DownstreamLayout, seed: int, h: dict) -> str:
    ckpt = str(encoder.ckpt) if encoder.ckpt else "random"
    return (
        json.dumps(
            {
                "ckpt": ckpt,
                "target": layout.target_dir,
                "seed": seed,
                "finetune": bool(args.finetune),
                "label_fraction": args.label_fraction,
                **h,
            }
        )
        + "\n"
    )


def train_one_seed(
    args: argparse.Namespace,
    layout: DownstreamLayout,
    task: Task,
    encoder: Encoder,
    seed: int,
    train_names: list[str],
    val_set: TileTargetDataset,
    device: torch.device,
    record: Path,
    tiles: MapTiles | None = None,
) -> SeedResult:
    """Train a head (or the whole encoder) with one seed; evaluate from ``--eval_from`` on; with ``tiles``,
    predict every tile of the map at the end."""
    if args.finetune:
        return _finetune_one_seed(args, layout, task, encoder, seed, train_names, val_set, device, record, tiles)
    run = setup_seed(args, layout, task, encoder, seed, train_names, val_set, device)
    with _head_threads(run):
        result = _epochs(args, layout, encoder, run, val_set.targets.numpy(), device, record)
    if tiles is not None:
        result.map_pred = predict_tiles(run, tiles.files, args.batch_size, device)
    if result.history:
        for tag, h in (("best", result.best(task)), ("last", result.history[-1])):
            print(f"{tag} epoch {h['epoch']}: {metric_text(h)}", flush=True)
    return result


def _finetune_one_seed(
    args: argparse.Namespace,
    layout: DownstreamLayout,
    task: Task,
    encoder: Encoder,
    seed: int,
    train_names: list[str],
    val_set: TileTargetDataset,
    device: torch.device,
    record: Path,
    tiles: MapTiles | None,
) -> SeedResult:
    """``--finetune``: the whole encoder and the head train through the project's one end-to-end trainer
    (engine.supervised.EndToEnd: tiles decoded once, crops drawn as a batch on the device), with the backbone
    at ``--backbone_lr`` and the head at ``--lr``; printed and recorded per epoch as the frozen loop does."""
    seed_everything(seed)
    train_set = _training_set(args, layout, task, seed, train_names)
    task = task.fit(task.to_train(train_set.targets))
    with torch.random.fork_rng():  # decoding draws no weights: a random encoder and the head are as before
        images = load_tiles([layout.root / layout.img_dir / n for n in train_set.names], args.workers)
        val_images = load_tiles([layout.root / layout.img_dir / n for n in val_set.names], args.workers)
    trainer = EndToEnd(
        encoder.build(),
        task,
        images,
        train_set.targets,
        img_size=args.img_size,
        batch_size=args.batch_size,
        epochs=args.total_epoch,
        lr=args.lr,
        backbone_lr=args.backbone_lr,
        seed=seed,
        device=device,
        schedule=args.schedule,
        cos=args.cos,
        augment=args.augment,
        channels_last=default_channels_last(device),
        head_bias_init=args.head_bias_init == "mean",
    )
    print(
        f"seed {seed}: {encoder.label} ({trainer.model.resnet}); {len(train_set)} training and {len(val_set)} "
        f"validation tiles; fine-tuning the whole encoder{task.describe()}",
        flush=True,
    )
    y_val = val_set.targets.numpy()
    result = SeedResult(seed, train_mean=train_set.targets.double().mean(dim=0).numpy())
    for epoch in range(args.total_epoch):
        t0 = time.time()
        loss = trainer.train_epoch(epoch)
        factor = lr_at(epoch, 1.0, args.total_epoch, args.schedule, args.cos)
        line = (
            f"epoch {epoch + 1}/{args.total_epoch}  lr {args.lr * factor:.2e}  train loss {loss:.4f}  "
            f"{time.time() - t0:.1f}s"
        )
        if epoch + 1 >= args.eval_from or epoch + 1 == args.total_epoch:
            result.pred = trainer.predict(val_images)
            warning = task.warning(result.pred)
            if warning and not result.dead_warned:
                result.dead_warned = True
                print(f"warning: epoch {epoch + 1}: {warning}", file=sys.stderr, flush=True)
        if epoch + 1 >= args.eval_from:
            m = task.metrics(y_val, result.pred)
            result.history.append({"epoch": epoch + 1, **m})
            line += f"  |  val {metric_text(m)}"
            with record.open("a") as rec:
                rec.write(_record_line(args, encoder, layout, seed, result.history[-1]))
        print(line, flush=True)
    if tiles is not None:  # the map: every tile of the index, decoded a chunk at a time
        chunks = [tiles.files[i : i + 1024] for i in range(0, len(tiles.files), 1024)]
        result.map_pred = np.concatenate([trainer.predict(load_tiles(c, args.workers)) for c in chunks])
    if result.history:
        for tag, h in (("best", result.best(task)), ("last", result.history[-1])):
            print(f"{tag} epoch {h['epoch']}: {metric_text(h)}", flush=True)
    return result


@contextmanager
def _head_threads(run: SeedRun) -> Iterator[None]:
    """One intra-op thread while only the head trains on cached CPU features: an MLP of ~0.1 M parameters on
    batches of 16 gains nothing from more, and on a busy CPU the threads' spin-waits cost up to seconds per
    epoch (docs/downstream.md)."""
    if run.train_feats is None or run.train_feats.device.type != "cpu":
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _epochs(
    args: argparse.Namespace,
    layout: DownstreamLayout,
    encoder: Encoder,
    run: SeedRun,
    y_val: np.ndarray,
    device: torch.device,
    record: Path,
) -> SeedResult:
    """The epoch loop of one seed: train, evaluate from ``--eval_from`` on, print and record."""
    result = SeedResult(run.seed, train_mean=run.train_mean)
    for epoch in range(args.total_epoch):
        factor = lr_at(epoch, 1.0, args.total_epoch, args.schedule, args.cos)
        t0 = time.time()
        loss = train_one_epoch(run, epoch, factor, device)
        line = (
            f"epoch {epoch + 1}/{args.total_epoch}  lr {args.lr * factor:.2e}  train loss {loss:.4f}  "
            f"{time.time() - t0:.1f}s"
        )
        if epoch + 1 >= args.eval_from or epoch + 1 == args.total_epoch:
            result.pred = evaluate(run, device)
            warning = run.task.warning(result.pred)
            if warning and not result.dead_warned:
                result.dead_warned = True
                print(f"warning: epoch {epoch + 1}: {warning}", file=sys.stderr, flush=True)
        if epoch + 1 >= args.eval_from:
            m = run.task.metrics(y_val, result.pred)
            result.history.append({"epoch": epoch + 1, **m})
            line += f"  |  val {metric_text(m)}"
            with record.open("a") as rec:
                rec.write(_record_line(args, encoder, layout, run.seed, result.history[-1]))
        print(line, flush=True)
    return result


def downstream_layout(args: argparse.Namespace) -> DownstreamLayout:
    """The data of a run: ``--data_path`` with the flags' names, or the names found there (docs/downstream.md)."""
    return DownstreamLayout.find(args.data_path, args.target_dir, args.img_dir, args.train_list, args.val_list)


def _encoder(args: argparse.Namespace) -> Encoder:
    if args.ckpt == "random":
        return Encoder(None, args.resnet, args.projection_dim)
    return Encoder(Path(args.ckpt) if args.ckpt else consistent_image_checkpoint(args.model_path))


def _validation_set(layout: DownstreamLayout, task: Task) -> TileTargetDataset:
    """The validation tiles with checked targets; their width must be the task's."""
    val_set = TileTargetDataset(layout.root, layout.val_list, eval_transform(), layout.img_dir, layout.target_dir)
    if len(task.columns) != val_set.targets.shape[1]:
        raise UserError(
            f"{layout.targets} holds {val_set.targets.shape[1]} value(s) per tile but this task expects "
            f"{len(task.columns)}; check --target_dir"
        )
    val_set.targets = task.check(val_set.targets, layout.targets)
    return val_set


def _outputs(args: argparse.Namespace, record: Path) -> Outputs:
    stem = Path(args.train_record).stem
    pred_csv = Path(args.pred_csv) if args.pred_csv else record.parent / f"{stem}_pred.csv"
    plot = Path(args.plot) if args.plot else record.parent / f"{stem}_scatter.png"
    if (args.plot or "").lower() == "none":
        plot = None
    return Outputs(pred_csv, plot, record.parent / stem)


def run_downstream(args: argparse.Namespace, task: Task) -> dict:
    """The whole downstream run for every seed; prints per-epoch lines, best/last and mean ± std; with
    ``--baselines`` also a random encoder of the same architecture and the mean predictor, then the comparison.

    Returns ``{"results": [SeedResult], "summary": summarize(...), "baselines": {name: [SeedResult]}}``.
    """
    device = resolve_device(args.device)
    if args.demo and not Path(args.data_path).is_dir():
        raise UserError(f"{args.data_path} does not exist; run `python mmgr.py --demo` first")
    encoder = _encoder(args)
    layout = downstream_layout(args)
    train_names = read_list(layout.root / layout.train_list)
    val_set = _validation_set(layout, task)
    record = Path("train-records") / args.train_record
    record.parent.mkdir(parents=True, exist_ok=True)
    seeds = args.seeds if args.seeds else [args.seed]

    tiles = map_tiles(layout, train_names, val_set.names, len(task.columns))

    def run_all(enc: Encoder, mapped: MapTiles | None = None) -> list[SeedResult]:
        return [train_one_seed(args, layout, task, enc, s, train_names, val_set, device, record, mapped) for s in seeds]

    # --baselines: a random encoder of the checkpoint's architecture (none when the run's encoder is random).
    random_enc = encoder.architecture() if args.baselines and encoder.ckpt is not None else None
    if random_enc is not None:
        print(baseline_intro(encoder.label, random_enc.resnet, layout.target_dir), flush=True)
    results = run_all(encoder, tiles)
    summary = summarize(results, task)
    for line in summary_lines(summary, len(seeds)):
        print(line, flush=True)
    write_reports(
        _outputs(args, record),
        task,
        val_set.names,
        val_set.targets.numpy(),
        results,
        summary,
        f"{layout.target_dir}: {encoder.short}",
        tiles,
    )
    baselines: dict[str, list[SeedResult]] = {}
    if random_enc is not None:
        print(f"--- (2) the same head on a randomly initialised {random_enc.resnet} (the lower bound)", flush=True)
        baselines["random init"] = run_all(random_enc)
    if args.baselines:
        label = f"pretrained ({encoder.short})" if encoder.ckpt else f"random init ({encoder.resnet})"
        for line in comparison_lines(task, val_set.targets.numpy(), results, baselines, label, layout.target_dir):
            print(line, flush=True)
    return {"results": results, "summary": summary, "baselines": baselines}
