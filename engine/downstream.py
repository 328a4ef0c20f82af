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
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from pyproj import CRS
from torch.utils.data import DataLoader

from data.downstream import TileTargetDataset, read_list, select_fraction
from data.layout import DownstreamLayout, resolve_img_dir
from data.pretrain import IMAGE_EXTENSIONS
from data.resumable import epoch_seed
from data.roots import check_test_root, root_labels
from data.transforms import downstream_train_transform, eval_transform
from engine.domain import Domain, labelled_domain
from engine.embeddings import TileImages
from engine.head_ensemble import HeadEnsemble, member_predictions
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
    write_map_reports,
    write_reports,
)
from engine.run_folder import consistent_image_checkpoint
from engine.supervised import EndToEnd, load_tiles, normalise
from engine.tasks import Task, distribution_task, regression_task
from models.heads import regression_head, with_task_head
from models.image_encoder import RESNETS, ImageEncoder, infer_resnet
from models.loading import load_image_encoder, load_image_state
from prepare.tile_index import TileIndex, read_tile_index
from utils.args import common_parser, parse_with_demo, resolve_device, str2bool
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
    "parse_downstream",
    "PROTOCOLS",
    "STABLE",
    "TestRoot",
    "load_test_root",
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


PROTOCOLS = ("stable", "published")
# --protocol stable (the default, ours; docs/downstream.md, measured in benchmarks/RESULTS.md): whole tiles, so that
# the frozen backbone's features are computed once; the head sees them standardised with the training tiles' mean
# and std; Adam at 1e-3, batches of 16, 100 epochs on a cosine schedule; an ensemble of 5 heads (prediction = their
# mean, pred_std = their spread); only the final model is evaluated, nothing is chosen on the validation tiles.
STABLE = {"augment": False, "lr": 1e-3, "batch_size": 16, "total_epoch": 100, "cos": True, "heads": 5}
# Flags the demo sets that are the protocol's business: under --protocol stable the protocol's values win.
_PROTOCOL_KEYS = ("augment", "total_epoch", "schedule", "lr", "batch_size", "eval_from", "cos")


def parse_downstream(
    parser: argparse.ArgumentParser, argv: list[str] | None, demo_defaults: dict
) -> argparse.Namespace:
    """Parse the flags of res_pop.py / res_func.py: the protocol's defaults first (``--protocol stable``:
    :data:`STABLE`; ``published``: the published res-pop flags), then ``--demo``'s; flags given explicitly win.

    ``--finetune`` keeps the published defaults whatever the protocol (the stable protocol is a frozen-head one).
    """
    pre, _ = parser.parse_known_args(argv)
    stable = pre.protocol == "stable" and not pre.finetune
    if stable:
        parser.set_defaults(**STABLE)
        demo_defaults = {k: v for k, v in demo_defaults.items() if k not in _PROTOCOL_KEYS}
    args = parse_with_demo(parser, argv, demo_defaults)
    if args.eval_from is None:
        args.eval_from = args.total_epoch if stable else 5
    if args.heads is None:
        args.heads = 1
    args.stable = stable
    if stable and args.augment:
        raise UserError(
            "--protocol stable trains its heads on the frozen features of whole tiles, computed once; "
            "drop --augment, or pass --protocol published for the published random crops"
        )
    if args.heads < 1:
        raise UserError(f"--heads must be at least 1, got {args.heads}")
    if args.heads > 1 and not stable:
        raise UserError("--heads > 1 (an ensemble of heads) belongs to --protocol stable; drop --heads or the protocol")
    return args


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
    for action in common._actions:  # the protocol changes these defaults: say so where they are described
        if action.dest in STABLE:
            action.help += f"; {STABLE[action.dest]} under --protocol stable, the default"
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
    g.add_argument(
        "--test_data_path",
        default=None,
        help="a second city's data folder (with a tile index, as prepare_pois.py writes): after training on "
        "--data_path's lists, every tile of it is predicted and mapped (GeoPackage, PNG, GeoTIFF, pred_std, "
        "in_domain against the training tiles) and its labelled tiles (NAME.txt under its --target_dir) are "
        "scored as 'test root'; default none (ours; README 'Two cities')",
    )


def _training_flags(p: argparse.ArgumentParser, train_record: str) -> None:
    """How the head (or, with --finetune, the whole encoder) trains and when it is evaluated; ``train_record``
    is the script's record name (docs/downstream.md)."""
    g = p.add_argument_group("training and evaluation")
    g.add_argument(
        "--protocol",
        default="stable",
        choices=PROTOCOLS,
        help="stable (default, ours; docs/downstream.md, measured in benchmarks/RESULTS.md): whole tiles, frozen "
        "features computed once and standardised with the training tiles' mean and std, Adam lr 1e-3, batch 16, "
        "100 epochs, cosine decay, an ensemble of --heads 5 heads, the final model only (nothing chosen on the "
        "validation tiles); published: the published res-pop protocol (random crops, lr 5e-2, batch 48, 40 "
        "epochs, steps at 20 and 30, one head, every epoch from --eval_from on evaluated). Flags given "
        "explicitly win; --finetune always starts from the published values",
    )
    g.add_argument(
        "--heads",
        type=int,
        default=None,
        help="heads in the ensemble of --protocol stable (default 5 there; 1 under --protocol published): "
        "the prediction is their mean and pred_std their spread",
    )
    g.add_argument(
        "--eval_from",
        type=int,
        default=None,
        help="first epoch evaluated on the validation list (default 5, published; under --protocol stable the "
        "last epoch only)",
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
        "published; off under --protocol stable); off: on the whole tile, as validated, so that with a frozen backbone each tile's "
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
def tile_features(
    model: ImageEncoder, files: list[Path], batch_size: int, device: torch.device
) -> tuple[torch.Tensor, np.ndarray]:
    """Eval-mode backbone features ``[N, d]`` (on ``device``) and per-band means ``[N, 3]`` of whole tiles
    ``files`` (as the encoder sees them: normalised), for the map and its labelled domain."""
    model.eval()
    feats, stats = [], []
    for x, _ in DataLoader(TileImages(files), batch_size=batch_size, shuffle=False):
        feats.append(model.features(x.to(device, non_blocking=True)))
        stats.append(x.double().mean(dim=(2, 3)))
    return torch.cat(feats), torch.cat(stats).numpy()


def tile_domain(
    tiles: MapTiles, train_names: list[str], feats: np.ndarray, stats: np.ndarray, seed: int
) -> Domain | None:
    """The labelled domain (engine/domain.py) of every mapped tile, against the seed's training tiles that
    are on the map; None when fewer than two of them are."""
    row = {Path(n).stem: i for i, n in enumerate(tiles.names)}
    ref = np.array([row[Path(n).stem] for n in train_names if Path(n).stem in row], dtype=np.int64)
    if len(ref) < 2:
        return None
    own = np.full(len(tiles.names), -1)
    own[ref] = np.arange(len(ref))
    return labelled_domain(feats[ref], feats, stats[ref], stats, self_index=own)


def _map_seed(run: SeedRun, tiles: MapTiles, batch_size: int, device: torch.device, result: SeedResult) -> None:
    """The seed's final predictions, their spread and the labelled domain on every mapped tile."""
    feats, stats = tile_features(run.model, tiles.files, batch_size, device)
    result.map_pred, result.map_std = head_predictions(run, feats, batch_size)
    names = run.train_loader.dataset.names
    result.domain = tile_domain(tiles, names, feats.float().cpu().numpy(), stats, run.seed)


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
    if getattr(args, "stable", False):
        # --protocol stable: an ensemble of heads on standardised features replaces the published head, drawn
        # after it so that the published path draws exactly what it always drew.
        heads = [regression_head(model.feature_dim, len(task.columns)) for _ in range(args.heads)]
        if args.head_bias_init == "mean":
            for h in heads:
                task.init_head(h[-1], task.to_train(train_set.targets))
        feats = run.train_feats
        model.encoder.fc = HeadEnsemble(heads, feats.mean(dim=0), feats.std(dim=0, unbiased=False)).to(device)
        run.opt = _optimizer(args, model)
    return run


def _loss(task: Task, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The task's loss of one head (``out`` ``[B, K]``), or the sum of every member's (``[H, B, K]``): each
    member learns from its own loss only."""
    if out.dim() == 3:
        return torch.stack([task.loss(o, y) for o in out]).sum()
    return task.loss(out, y)


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
    members = 1
    for out, y in _train_batches(run, run.train_loader.batch_size, device):
        loss = _loss(run.task, out, run.task.to_train(y))
        if not torch.isfinite(loss):
            raise UserError(f"the training loss became {loss.item()} at epoch {epoch + 1}; lower --lr")
        run.opt.zero_grad(set_to_none=True)
        loss.backward()
        run.opt.step()
        members = out.shape[0] if out.dim() == 3 else 1
        total, n = total + loss.item() * len(y), n + len(y)
    return total / n / members  # per tile and head


@torch.no_grad()
def evaluate(run: SeedRun, device: torch.device) -> np.ndarray:
    """Validation predictions ``[N_val, K]`` in original units (the head on the cached backbone features; an
    ensemble's mean)."""
    run.model.eval()
    return head_predictions(run, run.val_feats, len(run.val_feats))[0]


@torch.no_grad()
def head_predictions(run: SeedRun, feats: torch.Tensor, batch_size: int) -> tuple[np.ndarray, np.ndarray | None]:
    """The head on backbone features ``[N, d]`` -> ``(prediction [N, K], spread [N, K] or None)`` in original
    units: an ensemble's mean and the std of its members, or the one head's output and None. The features go
    through the head ``batch_size`` at a time, as the images of a loader would."""
    fc = run.model.encoder.fc
    if isinstance(fc, HeadEnsemble):
        members = member_predictions(fc, run.task, feats, batch_size)
        return members.mean(axis=0), (members.std(axis=0) if len(members) > 1 else None)
    out = torch.cat([run.task.predict(fc(part)).float().cpu() for part in feats.split(batch_size)]).numpy()
    return run.task.to_original(out), None


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
    test: TestRoot | None = None,
) -> SeedResult:
    """Train a head (or the whole encoder) with one seed; evaluate from ``--eval_from`` on; with ``tiles``,
    predict every tile of the map at the end; with ``test``, every tile of the test root too (scored where
    labelled, printed and recorded)."""
    if args.finetune:
        return _finetune_one_seed(args, layout, task, encoder, seed, train_names, val_set, device, record, tiles, test)
    run = setup_seed(args, layout, task, encoder, seed, train_names, val_set, device)
    with _head_threads(run):
        result = _epochs(args, layout, encoder, run, val_set.targets.numpy(), device, record)
    if tiles is not None:
        _map_seed(run, tiles, args.batch_size, device, result)
    _best_last_lines(result, task)
    if test is not None:
        train_files = [layout.root / layout.img_dir / n for n in run.train_loader.dataset.names]
        feats_a, stats_a = tile_features(run.model, train_files, args.batch_size, device)
        feats_b, stats_b = tile_features(run.model, test.tiles.files, args.batch_size, device)
        pred, std = head_predictions(run, feats_b, args.batch_size)
        _test_seed(args, encoder, layout, task, test, record, result, pred, std, (feats_a, stats_a, feats_b, stats_b))
    return result


@dataclass(frozen=True)
class TestRoot:
    """``--test_data_path``: another city's folder, mapped (and scored where labelled) by the model trained on
    ``--data_path``. ``tiles`` are every tile of its tile index with an image; ``labelled`` ``[T]`` marks
    those with a target file (their truth in ``tiles.truth``); ``label`` names its output files."""

    __test__ = False  # not a pytest class

    root: Path
    label: str
    tiles: MapTiles
    labelled: np.ndarray


def _first_tile_header(folder: Path) -> tuple[Path, tuple[int, int], int] | None:
    """``(file, (width, height), bands)`` of the first image in ``folder`` (its header only), or None."""
    try:
        names = sorted(n for n in folder.iterdir() if n.suffix.lower() in IMAGE_EXTENSIONS)
    except OSError:
        return None
    for f in names:
        try:
            with Image.open(f) as im:
                return f, (int(im.size[0]), int(im.size[1])), len(im.getbands())
        except (OSError, SyntaxError, ValueError):
            continue
    return None


def _tile_side(index: TileIndex | None) -> tuple[float, str] | None:
    """The median tile width of a tile index, in metres when its CRS names its unit (``(side, "m")``), in the
    index's own units without a CRS (``(side, "units")``); None without tiles or for a CRS in degrees."""
    if index is None or not len(index):
        return None
    side = float(np.median(index.bounds[:, 2] - index.bounds[:, 0]))
    if index.crs is None:
        return side, "units"
    crs = CRS(index.crs)
    if not crs.is_projected or not crs.axis_info:
        return None
    return side * crs.axis_info[0].unit_conversion_factor, "m"


def _check_tile_sides(test: Path, train: Path, test_index: TileIndex) -> None:
    """Refuse a test root whose tiles cover another ground size than ``--data_path``'s (targets per tile scale
    with the area: a head trained on 300 m tiles reads 500 m tiles wrongly). Compared only when both roots
    have a tile index in comparable units (both with a projected CRS, or both without one)."""
    a, b = _tile_side(read_tile_index(train)), _tile_side(test_index)
    if a is None or b is None or a[1] != b[1]:
        return
    if abs(a[0] - b[0]) > 0.01 * max(a[0], b[0]):
        raise UserError(
            f"--test_data_path {test} has tiles of {b[0]:g} {b[1]} but --data_path {train} has {a[0]:g} {a[1]}; "
            "prepare both with the same --tile_size_m (prepare_pois.py)"
        )


def load_test_root(args: argparse.Namespace, layout: DownstreamLayout, task: Task) -> TestRoot | None:
    """``--test_data_path`` checked before anything is written (None without the flag). Refused, in one
    sentence naming the root and the fix: a folder that is missing, is ``--data_path`` itself, has no tile
    index, or whose tiles differ from ``--data_path``'s in size (pixels, or ground size where both have a tile
    index) or band count."""
    if not getattr(args, "test_data_path", None):
        return None
    root = Path(args.test_data_path)
    check_test_root(root, layout.root)
    img_dir = resolve_img_dir(root, args.img_dir)
    a = _first_tile_header(layout.root / layout.img_dir)
    b = _first_tile_header(root / img_dir)
    if b is None:
        raise UserError(
            f"--test_data_path {root} has no readable tile in {root / img_dir}; prepare it with prepare_pois.py"
        )
    if a is not None and a[1] != b[1]:
        raise UserError(
            f"--test_data_path {root} has tiles of {b[1][0]}x{b[1][1]} px but --data_path {layout.root} has "
            f"{a[1][0]}x{a[1][1]} px; prepare both with the same --tile_px (prepare_pois.py)"
        )
    if a is not None and a[2] != b[2]:
        raise UserError(
            f"--test_data_path {root} has tiles of {b[2]} band(s) but --data_path {layout.root} has {a[2]}; "
            "prepare both with the same --bands (prepare_pois.py)"
        )
    tiles = map_tiles(DownstreamLayout(root, img_dir, layout.target_dir, "", ""), [], [], task)
    if tiles is None:
        raise UserError(
            f"--test_data_path {root}: no tile of its tile index has an image in {root / img_dir}; prepare it "
            "again with prepare_pois.py"
        )
    _check_tile_sides(root, layout.root, tiles.index)
    label = root_labels([layout.root, root])[1].replace("/", "_")
    labelled = np.isfinite(tiles.truth).all(axis=1)
    # On the test root's map and tile CSV, "test" marks the tiles that are scored (those with a target).
    tiles = replace(tiles, split=["test" if ok else "" for ok in labelled])
    return TestRoot(root, label, tiles, labelled)


def _test_seed(
    args: argparse.Namespace,
    encoder: Encoder,
    layout: DownstreamLayout,
    task: Task,
    test: TestRoot,
    record: Path,
    result: SeedResult,
    pred: np.ndarray,
    std: np.ndarray | None,
    features: tuple,
) -> None:
    """The final model on every tile of the test root: predictions ``[T, K]``, their spread, the labelled
    domain against the seed's training tiles of ``--data_path``; metrics on its labelled tiles, printed and
    recorded (``"evaluated_on": "test root B"``)."""
    feats_a, stats_a, feats_b, stats_b = (
        f.float().cpu().numpy() if isinstance(f, torch.Tensor) else np.asarray(f) for f in features
    )
    domain = labelled_domain(feats_a, feats_b, stats_a, stats_b) if len(feats_a) >= 2 else None
    result.test = SeedResult(result.seed, map_pred=pred, map_std=std, domain=domain)
    if not test.labelled.any():
        return
    m = task.metrics(test.tiles.truth[test.labelled], pred[test.labelled])
    result.test.history.append(m)
    n, total = int(test.labelled.sum()), len(test.labelled)
    print(
        f"test root {test.root}: {metric_text(m)}  ({n} labelled of {total} tiles; the final model, trained on "
        f"{layout.root})",
        flush=True,
    )
    h = {"evaluated_on": f"test root {test.root}", "tiles": n, **m}
    with record.open("a") as rec:
        rec.write(_record_line(args, encoder, layout, result.seed, h))


def _best_last_lines(result: SeedResult, task: Task) -> None:
    """The final model's metrics, and the best epoch's when several were evaluated, labelled as chosen on the
    validation tiles (optimistic: the choice has seen the tiles it is scored on)."""
    if not result.history:
        return
    last = result.history[-1]
    best = result.best(task)
    if len(result.history) > 1:
        print(
            f"best epoch {best['epoch']}: {metric_text(best)}  (chosen on the validation tiles: optimistic)", flush=True
        )
    print(f"last epoch {last['epoch']}: {metric_text(last)}  (the final model)", flush=True)


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
    test: TestRoot | None = None,
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
        result.map_pred, feats, stats = _finetuned_tiles(trainer, tiles.files, args.workers, device)
        result.domain = tile_domain(tiles, train_set.names, feats, stats, seed)
    _best_last_lines(result, task)
    if test is not None:
        _, feats_a, stats_a = _finetuned_tiles(
            trainer, [layout.root / layout.img_dir / n for n in train_set.names], args.workers, device
        )
        pred, feats_b, stats_b = _finetuned_tiles(trainer, test.tiles.files, args.workers, device)
        _test_seed(args, encoder, layout, task, test, record, result, pred, None, (feats_a, stats_a, feats_b, stats_b))
    return result


def _finetuned_tiles(
    trainer: EndToEnd, files: list[Path], workers: int, device: torch.device
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A fine-tuned model on whole tiles ``files``, decoded 1024 at a time: ``(predictions [N, K], backbone
    features [N, d], per-band means [N, 3])``."""
    preds, feats, stats = [], [], []
    for i in range(0, len(files), 1024):
        images = load_tiles(files[i : i + 1024], workers)
        preds.append(trainer.predict(images))
        with torch.no_grad():
            trainer.model.eval()
            x = normalise(images.to(device))
            feats.append(trainer.model.features(x).float().cpu().numpy())
            stats.append(x.double().mean(dim=(2, 3)).cpu().numpy())
    return np.concatenate(preds), np.concatenate(feats), np.concatenate(stats)


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


def _check_writable(folder: Path, what: str) -> None:
    """Refuse, before anything trains, an output folder that cannot be created or written to."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".write-test-"):
            pass
    except OSError as e:
        raise UserError(
            f"cannot write to {folder} ({what}): {e.strerror or e}; run from a folder you can write to, or "
            "point --train_record/--pred_csv/--plot elsewhere"
        ) from None


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
    test = load_test_root(args, layout, task)
    record = Path("train-records") / args.train_record
    _check_writable(record.parent, "--train_record's folder train-records/ (in the current directory)")
    outputs = _outputs(args, record)
    for path, flag in ((outputs.pred_csv, "--pred_csv"), (outputs.plot, "--plot")):
        if path is not None:
            _check_writable(path.parent, f"the folder of {flag}")
    seeds = args.seeds if args.seeds else [args.seed]

    tiles = map_tiles(layout, train_names, val_set.names, task)

    if test is not None and not test.labelled.any():
        print(
            f"test root {test.root}: no target files in {test.root / layout.target_dir}, so maps only, no metrics",
            flush=True,
        )

    def run_all(enc: Encoder, mapped: MapTiles | None = None, tested: TestRoot | None = None) -> list[SeedResult]:
        return [
            train_one_seed(args, layout, task, enc, s, train_names, val_set, device, record, mapped, tested)
            for s in seeds
        ]

    # --baselines: a random encoder of the checkpoint's architecture (none when the run's encoder is random).
    random_enc = encoder.architecture() if args.baselines and encoder.ckpt is not None else None
    if random_enc is not None:
        print(baseline_intro(encoder.label, random_enc.resnet, layout.target_dir), flush=True)
    results = run_all(encoder, tiles, test)
    summary = summarize(results, task)
    for line in summary_lines(summary, len(seeds)):
        print(line, flush=True)
    write_reports(
        outputs,
        task,
        val_set.names,
        val_set.targets.numpy(),
        results,
        summary,
        f"{layout.target_dir}: {encoder.short}",
        tiles,
    )
    test_summary = _test_reports(test, task, results, outputs, f"{layout.target_dir}: {encoder.short}", layout)
    baselines: dict[str, list[SeedResult]] = {}
    if random_enc is not None:
        print(f"--- (2) the same head on a randomly initialised {random_enc.resnet} (the lower bound)", flush=True)
        baselines["random init"] = run_all(random_enc)
    # Always against the mean predictor (free), and against a random encoder with --baselines.
    label = f"pretrained ({encoder.short})" if encoder.ckpt else f"random init ({encoder.resnet})"
    for line in comparison_lines(task, val_set.targets.numpy(), results, baselines, label, layout.target_dir):
        print(line, flush=True)
    return {"results": results, "summary": summary, "baselines": baselines, "test": test_summary}


def _test_reports(
    test: TestRoot | None, task: Task, results: list[SeedResult], outputs: Outputs, label: str, layout: DownstreamLayout
) -> dict | None:
    """The test root's mean ± std over seeds (several seeds, labelled tiles), the mean predictor there (each
    seed's training mean of ``--data_path`` for every labelled tile: the reference a transfer has to beat), and
    its map, written beside the run's reports as ``<record stem>_test_<root>_*``; returns ``{"root",
    "labelled", "metrics": {metric: (mean, std)} or None, "mean_predictor": {metric: mean over seeds} or
    None}``."""
    if test is None:
        return None
    runs = [r.test for r in results if r.test is not None]
    metrics = mean_predictor = None
    n = int(test.labelled.sum())
    if test.labelled.any():
        rows = [r.history[-1] for r in runs]
        metrics = {
            k: (
                float(np.mean([r[k] for r in rows])),
                float(np.std([r[k] for r in rows], ddof=1)) if len(rows) > 1 else 0.0,
            )
            for k in rows[0]
        }
        if len(rows) > 1:
            text = "  ".join(f"{k} {m:.4f} ± {s:.4f}" for k, (m, s) in metrics.items())
            print(f"test root {test.root}: mean ± std over {len(rows)} seeds: {text}", flush=True)
        truth = test.tiles.truth[test.labelled]
        means = [task.metrics(truth, np.repeat(r.train_mean[None], n, axis=0)) for r in results]
        mean_predictor = {k: float(np.mean([m[k] for m in means])) for k in means[0]}
        print(
            f"test root {test.root}: mean predictor (the training mean of {layout.root} for every tile): "
            f"{metric_text(mean_predictor)}  ({n} labelled tiles)",
            flush=True,
        )
    stem = outputs.stem.with_name(f"{outputs.stem.name}_test_{test.label}")
    write_map_reports(
        Outputs(outputs.pred_csv, None, stem),
        task,
        test.tiles,
        runs,
        f"{label} (trained on {layout.root.name})",
        f"test: the {n} labelled tiles scored" if n else "no labels: map only",
        f"labelled domain of {layout.root.name}'s training tiles",
    )
    return {"root": str(test.root), "labelled": n, "metrics": metrics, "mean_predictor": mean_predictor}
