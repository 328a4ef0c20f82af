"""The downstream loop shared by ``res_pop.py`` (scalar regression) and ``res_func.py`` (distributions).

Both scripts parse the same flags (:func:`downstream_parser`, defined once) and run the same loop
(:func:`run_downstream`); they differ only in their task (engine/tasks.py): the head width, how the raw
head output becomes a prediction, the loss, the metrics, the checks of the targets.

Published protocol (docs/downstream.md), the default: the pretrained encoder's ``fc`` is replaced by
``Linear(d, d/2) -> ReLU -> Linear(d/2, K)``, the backbone is frozen and stays in eval mode
(BatchNorm statistics frozen), Adam, step decay, metrics on the validation list from ``--eval_from``
on, best and last epoch printed. Opt-in additions: ``--finetune`` (the whole encoder trains, BatchNorm
in train mode, backbone at ``--backbone_lr``), ``--label_fraction`` (few-label study), ``--seeds``
(repeats, mean ± std), a per-tile predictions CSV and a predicted-vs-true scatter plot (engine/reports.py).

The seams: :func:`setup_seed` (data, loaders, model, optimiser), :func:`train_one_epoch`,
:func:`evaluate`, :func:`train_one_seed` (the epoch loop of one seed) and :func:`run_downstream`
(every seed, then the reports).

Fast path: with a frozen backbone in eval mode the validation tiles' backbone features never
change, so they are computed once and each evaluation only runs the head (same numbers, a fraction
of the time).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from data.downstream import TileTargetDataset, read_list, select_fraction
from data.resumable import epoch_seed
from data.transforms import downstream_train_transform, eval_transform
from engine.checkpoints import newest_image_checkpoint
from engine.reports import Outputs, SeedResult, metric_text, summarize, summary_lines, write_reports
from engine.tasks import Task, distribution_task, regression_task
from models.heads import with_task_head
from models.image_encoder import ImageEncoder
from models.loading import load_image_encoder
from utils.args import common_parser, resolve_device, str2bool
from utils.errors import UserError
from utils.reproducibility import seed_everything, worker_init
from utils.schedule import lr_at

__all__ = ["Task", "regression_task", "distribution_task", "downstream_parser", "select_fraction", "run_downstream",
           "SeedResult", "SeedRun", "setup_seed", "train_one_epoch", "evaluate", "train_one_seed", "backbone_features"]


def downstream_parser(*, target_dir: str, train_record: str, description: str) -> argparse.ArgumentParser:
    """Flags of the downstream scripts (published res-pop defaults; ``target_dir``/``train_record``
    are the only per-task defaults)."""
    common = common_parser(data_path="./DATA", model_path="./checkpoints", batch_size=48, lr=5e-2, total_epoch=40,
                           schedule=[20, 30], img_size=224, origin="published res-pop")
    p = argparse.ArgumentParser(description=description, parents=[common])
    p.add_argument("--ckpt", default=None,
                   help="image checkpoint (*_img_<epoch>.tar, ours or the published script's, or checkpoint_last.pt); "
                        "default: the newest *_img_*.tar in --model_path")
    p.add_argument("--img_dir", default="img", help="tile directory under --data_path (default 'img', published)")
    p.add_argument("--target_dir", default=target_dir,
                   help=f"per-tile target directory under --data_path, NAME.txt per tile (default {target_dir!r})")
    p.add_argument("--train_list", default="train-wuhan.txt",
                   help="training list file (default 'train-wuhan.txt', published)")
    p.add_argument("--val_list", default="val-wuhan.txt",
                   help="validation list file (default 'val-wuhan.txt', published)")
    p.add_argument("--eval_from", type=int, default=5,
                   help="first epoch evaluated on the validation list (default 5, published)")
    p.add_argument("--train_record", default=train_record,
                   help=f"metrics record file under ./train-records/ (default {train_record!r}); the predictions CSV "
                        "and plot are written beside it unless --pred_csv/--plot say otherwise")
    p.add_argument("--finetune", type=str2bool, nargs="?", const=True, default=False,
                   help="train the whole encoder (BatchNorm in train mode) instead of the frozen-backbone probe "
                        "(default off: the published protocol)")
    p.add_argument("--backbone_lr", type=float, default=1e-4,
                   help="Adam lr of the backbone with --finetune; the head keeps --lr (default 1e-4, ours: "
                        "the paper gives no fine-tuning lr)")
    p.add_argument("--label_fraction", type=float, default=1.0,
                   help="train on this fraction of the training list, a subset drawn with each run's seed "
                        "(default 1.0: all labels, published)")
    p.add_argument("--seeds", type=int, nargs="+", default=None,
                   help="repeat the run with each seed and report mean ± std (default: one run with --seed)")
    p.add_argument("--head_bias_init", default="default", choices=("default", "mean"),
                   help="default: PyTorch's init of the head (published); mean: start the head's output bias at the "
                        "mean training target (log-mean proportions for functions), so that a ReLU-output head cannot "
                        "start dead, i.e. below zero for every tile")
    p.add_argument("--pred_csv", default=None,
                   help="per-tile validation predictions of the last epoch, every seed (default: "
                        "train-records/<record name>_pred.csv)")
    p.add_argument("--plot", default=None,
                   help="predicted-vs-true scatter PNG, regression only (default: "
                        "train-records/<record name>_scatter.png; 'none' skips it)")
    return p


@torch.no_grad()
def backbone_features(model: ImageEncoder, loader: DataLoader, device: torch.device) -> torch.Tensor:
    """Eval-mode backbone features of a loader's images -> ``[N, d]`` in loader order (on ``device``)."""
    model.eval()
    return torch.cat([model.features(x.to(device, non_blocking=True)) for x, _, _ in loader])


@torch.no_grad()
def predict_loader(model: ImageEncoder, loader: DataLoader, task: Task, device: torch.device) -> np.ndarray:
    """Predictions (training units) over a loader -> ``[N, K]`` in loader order."""
    model.eval()
    return torch.cat([task.predict(model(x.to(device, non_blocking=True))).float().cpu() for x, _, _ in loader]).numpy()


@dataclass
class SeedRun:
    """What one seed trains and evaluates: built by :func:`setup_seed`.

    ``order`` reseeds the training loader's shuffling each epoch; ``val_feats`` ``[N_val, d]`` are the
    cached validation features of the fast path (None with ``--finetune``).
    """

    seed: int
    model: ImageEncoder
    opt: torch.optim.Optimizer
    train_loader: DataLoader
    val_loader: DataLoader
    order: torch.Generator
    val_feats: torch.Tensor | None = None


def _training_set(args: argparse.Namespace, task: Task, seed: int, train_names: list[str]) -> TileTargetDataset:
    """The seed's labelled training tiles (``--label_fraction`` of the list), targets checked."""
    names = select_fraction(train_names, args.label_fraction, seed)
    train_set = TileTargetDataset(args.data_path, args.train_list, downstream_train_transform(args.img_size),
                                  args.img_dir, args.target_dir, names=names)
    train_set.targets = task.check(train_set.targets, Path(args.data_path) / args.target_dir)
    if len(train_set) < args.batch_size:
        raise UserError(f"{args.train_list} (x label fraction {args.label_fraction:g}) gives {len(train_set)} tiles, "
                        f"fewer than one batch of {args.batch_size}; lower --batch_size")
    return train_set


def _optimizer(args: argparse.Namespace, model: ImageEncoder) -> torch.optim.Optimizer:
    """Adam over the head at ``--lr`` (and the backbone at ``--backbone_lr`` with ``--finetune``); each
    group's ``base_lr`` is scaled by the schedule every epoch."""
    head = list(model.encoder.fc.parameters())
    groups = [{"params": head, "base_lr": args.lr}]
    if args.finetune:
        head_ids = {id(p) for p in head}
        groups.append({"params": [p for p in model.parameters() if id(p) not in head_ids], "base_lr": args.backbone_lr})
    return torch.optim.Adam(groups, lr=args.lr)


def setup_seed(args: argparse.Namespace, task: Task, seed: int, ckpt: Path, train_names: list[str],
               val_set: TileTargetDataset, device: torch.device) -> SeedRun:
    """Seed everything, then build the seed's training set, loaders, model (encoder + task head) and optimiser."""
    seed_everything(seed)
    train_set = _training_set(args, task, seed, train_names)
    loader_kw = dict(num_workers=args.workers, pin_memory=device.type == "cuda", worker_init_fn=worker_init)
    order = torch.Generator()
    # The published loader drops the incomplete last batch during training.
    train_loader = DataLoader(train_set, batch_size=args.batch_size, shuffle=True, drop_last=True, generator=order,
                              **loader_kw)
    val_loader = DataLoader(val_set, batch_size=args.batch_size, shuffle=False, **loader_kw)
    model = with_task_head(load_image_encoder(ckpt), out_dim=len(task.columns), freeze_backbone=not args.finetune)
    model = model.to(device)
    if args.head_bias_init == "mean":
        task.init_head(model.encoder.fc[-1], task.to_train(train_set.targets))
    run = SeedRun(seed, model, _optimizer(args, model), train_loader, val_loader, order)
    print(f"seed {seed}: {ckpt} ({model.resnet}); {len(train_set)} training and {len(val_set)} validation tiles; "
          f"{'fine-tuning the whole encoder' if args.finetune else 'frozen backbone'}", flush=True)
    # Fast path: a frozen, eval-mode backbone maps each validation tile to the same features every epoch.
    run.val_feats = None if args.finetune else backbone_features(model, val_loader, device)
    return run


def train_one_epoch(run: SeedRun, task: Task, epoch: int, lr_factor: float, finetune: bool,
                    device: torch.device) -> float:
    """One pass over the training loader at ``base_lr * lr_factor``; returns the mean training loss per tile."""
    for g in run.opt.param_groups:
        g["lr"] = g["base_lr"] * lr_factor
    seed_everything(epoch_seed(run.seed, epoch))
    run.order.manual_seed(epoch_seed(run.seed, epoch))
    # Frozen backbone: eval mode, BatchNorm keeps its pretrained statistics (published protocol).
    run.model.train(finetune)
    total, n = 0.0, 0
    for x, y, _ in run.train_loader:
        x, y = x.to(device, non_blocking=True), task.to_train(y.to(device, non_blocking=True))
        loss = task.loss(run.model(x), y)
        if not torch.isfinite(loss):
            raise UserError(f"the training loss became {loss.item()} at epoch {epoch + 1}; lower --lr")
        run.opt.zero_grad(set_to_none=True)
        loss.backward()
        run.opt.step()
        total, n = total + loss.item() * len(x), n + len(x)
    return total / n


@torch.no_grad()
def evaluate(run: SeedRun, task: Task, device: torch.device) -> np.ndarray:
    """Validation predictions ``[N_val, K]`` in original units (the head on cached features when frozen)."""
    if run.val_feats is not None:
        run.model.eval()
        pred = task.predict(run.model.encoder.fc(run.val_feats)).float().cpu().numpy()
    else:
        pred = predict_loader(run.model, run.val_loader, task, device)
    return task.to_original(pred)


def train_one_seed(args: argparse.Namespace, task: Task, seed: int, ckpt: Path, train_names: list[str],
                   val_set: TileTargetDataset, device: torch.device, record: Path) -> SeedResult:
    """Train a head (or the whole encoder) with one seed; evaluate from ``--eval_from`` on."""
    run = setup_seed(args, task, seed, ckpt, train_names, val_set, device)
    y_val = val_set.targets.numpy()
    result = SeedResult(seed)
    for epoch in range(args.total_epoch):
        factor = lr_at(epoch, 1.0, args.total_epoch, args.schedule, args.cos)
        t0 = time.time()
        loss = train_one_epoch(run, task, epoch, factor, args.finetune, device)
        line = (f"epoch {epoch + 1}/{args.total_epoch}  lr {args.lr * factor:.2e}  train loss {loss:.4f}  "
                f"{time.time() - t0:.1f}s")
        if epoch + 1 >= args.eval_from or epoch + 1 == args.total_epoch:
            result.pred = evaluate(run, task, device)
            warning = task.warning(result.pred)
            if warning and not result.dead_warned:
                result.dead_warned = True
                print(f"warning: epoch {epoch + 1}: {warning}", file=sys.stderr, flush=True)
        if epoch + 1 >= args.eval_from:
            m = task.metrics(y_val, result.pred)
            result.history.append({"epoch": epoch + 1, **m})
            line += f"  |  val {metric_text(m)}"
            with record.open("a") as rec:
                rec.write(json.dumps({"ckpt": str(ckpt), "target": args.target_dir, "seed": seed,
                                      "finetune": bool(args.finetune), "label_fraction": args.label_fraction,
                                      **result.history[-1]}) + "\n")
        print(line, flush=True)
    if result.history:
        for tag, h in (("best", result.best(task)), ("last", result.history[-1])):
            print(f"{tag} epoch {h['epoch']}: {metric_text(h)}", flush=True)
    return result


def _validation_set(args: argparse.Namespace, task: Task) -> TileTargetDataset:
    """The validation tiles with checked targets; their width must be the task's."""
    val_set = TileTargetDataset(args.data_path, args.val_list, eval_transform(), args.img_dir, args.target_dir)
    where = Path(args.data_path) / args.target_dir
    if len(task.columns) != val_set.targets.shape[1]:
        raise UserError(f"{where} holds {val_set.targets.shape[1]} value(s) per tile but this task expects "
                        f"{len(task.columns)}; check --target_dir")
    val_set.targets = task.check(val_set.targets, where)
    return val_set


def _outputs(args: argparse.Namespace, record: Path) -> Outputs:
    stem = Path(args.train_record).stem
    pred_csv = Path(args.pred_csv) if args.pred_csv else record.parent / f"{stem}_pred.csv"
    plot = Path(args.plot) if args.plot else record.parent / f"{stem}_scatter.png"
    if (args.plot or "").lower() == "none":
        plot = None
    return Outputs(pred_csv, plot, record.parent / stem)


def run_downstream(args: argparse.Namespace, task: Task) -> dict:
    """The whole downstream run for every seed; prints per-epoch lines, best/last and mean ± std.

    Returns ``{"results": [SeedResult], "summary": summarize(...)}``.
    """
    device = resolve_device(args.device)
    if args.demo and not Path(args.data_path).is_dir():
        raise UserError(f"{args.data_path} does not exist; run `python mmgr.py --demo` first")
    ckpt = Path(args.ckpt) if args.ckpt else newest_image_checkpoint(args.model_path)
    if not Path(args.data_path).is_dir():
        raise UserError(f"data directory {args.data_path} does not exist; pass --data_path (or --demo)")
    train_names = read_list(Path(args.data_path) / args.train_list)
    val_set = _validation_set(args, task)
    record = Path("train-records") / args.train_record
    record.parent.mkdir(parents=True, exist_ok=True)
    seeds = args.seeds if args.seeds else [args.seed]
    results = [train_one_seed(args, task, s, ckpt, train_names, val_set, device, record) for s in seeds]
    summary = summarize(results, task)
    for line in summary_lines(summary, len(seeds)):
        print(line, flush=True)
    write_reports(_outputs(args, record), task, val_set.names, val_set.targets.numpy(), results, summary,
                  f"{args.target_dir}: {ckpt.name}")
    return {"results": results, "summary": summary}
