"""The downstream loop shared by ``res_pop.py`` (scalar regression) and ``res_func.py`` (distributions).

Both scripts parse the same flags (:func:`downstream_parser`, defined once, STYLE 2) and run the
same loop (:func:`run_downstream`); they differ only in their :class:`Task`: the head width, how
the raw head output becomes a prediction, the loss, and the metrics.

Published protocol (SPEC §2), the default: the pretrained encoder's ``fc`` is replaced by
``Linear(d, d/2) -> ReLU -> Linear(d/2, K)``, the backbone is frozen and stays in eval mode
(BatchNorm statistics frozen), Adam, step decay, metrics on the validation list from ``--eval_from``
on, best and last epoch printed. Opt-in additions: ``--finetune`` (the whole encoder trains, BatchNorm
in train mode, backbone at ``--backbone_lr``), ``--label_fraction`` (few-label study), ``--seeds``
(repeats, mean ± std), a per-tile predictions CSV, a predicted-vs-true scatter plot (regression).

Fast path: with a frozen backbone in eval mode the validation tiles' backbone features never
change, so they are computed once and each evaluation only runs the head (same numbers, a fraction
of the time).
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from data.downstream import TileTargetDataset, read_list
from data.resumable import epoch_seed
from data.transforms import downstream_train_transform, eval_transform
from models.heads import with_task_head
from models.image_encoder import ImageEncoder
from models.loading import load_image_encoder
from engine.checkpoints import newest_image_checkpoint
from utils.args import common_parser, resolve_device, str2bool
from utils.fileio import atomic_write_bytes, atomic_write_text
from utils.errors import UserError
from utils.metrics import distribution_metrics, regression_metrics
from utils.reproducibility import seed_everything, worker_init
from utils.schedule import lr_at

__all__ = ["Task", "regression_task", "distribution_task", "downstream_parser", "select_fraction", "run_downstream", "SeedResult"]


@dataclass(frozen=True)
class Task:
    """What distinguishes one downstream task from another.

    Attributes:
        name: short name used in messages and file names.
        predict: raw head output ``[B, K]`` -> prediction in training units ``[B, K]``.
        loss: ``(raw output [B, K], training target [B, K]) -> scalar``.
        metrics: ``(true [N, K], predicted [N, K])`` in original units -> named floats.
        best_key / higher_is_better: the metric that picks the best epoch.
        to_train: original targets ``[N, K]`` -> training units (identity unless log targets).
        to_original: predictions in training units -> original units.
        columns: names of the K target columns (CSV headers).
    """

    name: str
    predict: Callable[[torch.Tensor], torch.Tensor]
    loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    metrics: Callable[[np.ndarray, np.ndarray], dict[str, float]]
    best_key: str
    higher_is_better: bool
    to_train: Callable[[torch.Tensor], torch.Tensor] = lambda y: y
    to_original: Callable[[np.ndarray], np.ndarray] = lambda p: p
    columns: tuple[str, ...] = ("value",)
    scatter: bool = False
    validate: Callable[[torch.Tensor, Path], torch.Tensor] = lambda y, where: y


def _nonnegative(y: torch.Tensor, where: Path) -> torch.Tensor:
    if (y < 0).any():
        raise UserError(f"{where} holds negative targets, which --log_target (log1p) cannot take; drop the flag or fix the files")
    return y


def _distributions(y: torch.Tensor, where: Path) -> torch.Tensor:
    """Proportions: non-negative, rows renormalised to sum 1 (files rounded to a few decimals)."""
    sums = y.sum(dim=1)
    if (y < 0).any() or (sums <= 0).any():
        raise UserError(f"{where} holds a negative proportion or an all-zero row; each NAME.txt must hold K "
                        "non-negative proportions summing to 1")
    if ((sums - 1).abs() > 0.05).any():
        raise UserError(f"{where} holds rows summing to {float(sums[(sums - 1).abs().argmax()]):.3f}, not 1; "
                        "each NAME.txt must hold the tile's K proportions")
    return y / sums[:, None]


def regression_task(log_target: bool = False) -> Task:
    """Population/GDP: prediction = ReLU(output), MSE (published), MAE/RMSE/R² in original units.

    With ``log_target`` the head learns ``log1p(y)``; predictions are mapped back with ``expm1``
    before the metrics, so figures stay comparable with and without the option.
    """
    def predict(out: torch.Tensor) -> torch.Tensor:
        return F.relu(out)

    def loss(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.mse_loss(F.relu(out), y)

    def metrics(y: np.ndarray, p: np.ndarray) -> dict[str, float]:
        return regression_metrics(y[:, 0], p[:, 0])

    if log_target:
        return Task("regression", predict, loss, metrics, "R2", True, torch.log1p, np.expm1, scatter=True,
                    validate=_nonnegative)
    return Task("regression", predict, loss, metrics, "R2", True, scatter=True)


def distribution_task(columns: tuple[str, ...]) -> Task:
    """Urban functions: prediction = softmax(output), loss KL(true || predicted), L1/KL/cos metrics."""
    def predict(out: torch.Tensor) -> torch.Tensor:
        return torch.softmax(out, dim=1)

    def loss(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        # batchmean: the KL divergence of each tile's distribution, averaged over tiles.
        return F.kl_div(F.log_softmax(out, dim=1), y, reduction="batchmean")

    return Task("distribution", predict, loss, distribution_metrics, "KL", False, columns=tuple(columns),
                validate=_distributions)


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
    p.add_argument("--train_list", default="train-wuhan.txt", help="training list file (default 'train-wuhan.txt', published)")
    p.add_argument("--val_list", default="val-wuhan.txt", help="validation list file (default 'val-wuhan.txt', published)")
    p.add_argument("--eval_from", type=int, default=5, help="first epoch evaluated on the validation list (default 5, published)")
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
                   help="predicted-vs-true scatter PNG, regression only (default: train-records/<record name>_scatter.png; "
                        "'none' skips it)")
    return p


def select_fraction(names: list[str], fraction: float, seed: int) -> list[str]:
    """A seeded subset of ``round(fraction * len(names))`` names (at least one), in list order."""
    if not 0.0 < fraction <= 1.0:
        raise UserError(f"--label_fraction must lie in (0, 1], got {fraction}")
    if fraction >= 1.0:
        return list(names)
    k = max(1, int(round(fraction * len(names))))
    idx = np.sort(np.random.default_rng(seed).choice(len(names), size=k, replace=False))
    return [names[i] for i in idx]


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
class SeedResult:
    """One run: per-evaluation metrics and the last epoch's validation predictions (original units)."""

    seed: int
    history: list[dict] = field(default_factory=list)
    pred: np.ndarray | None = None  # [N_val, K]
    dead_warned: bool = False  # the dead-head warning is printed once per run

    def best(self, task: Task) -> dict:
        def score(h: dict) -> float:
            v = h[task.best_key]
            return -np.inf if np.isnan(v) else (v if task.higher_is_better else -v)
        return max(self.history, key=score)


def _metric_text(m: dict) -> str:
    return "  ".join(f"{k} {v:.4f}" for k, v in m.items() if k not in ("epoch", "seed"))


@torch.no_grad()
def init_head_bias(last: torch.nn.Linear, task: Task, y_train: torch.Tensor) -> None:
    """``--head_bias_init mean``: the head's last bias becomes the mean training target (``y_train``
    ``[N, K]`` in training units; its log for distributions); the weights keep their initialisation."""
    mean = y_train.float().mean(dim=0)
    last.bias.copy_(torch.log(mean.clamp_min(1e-6)) if task.name == "distribution" else mean)


def train_one_seed(args: argparse.Namespace, task: Task, seed: int, ckpt: Path, train_names: list[str],
                   val_set: TileTargetDataset, device: torch.device, record: Path) -> SeedResult:
    """Train a head (or the whole encoder) with one seed; evaluate from ``--eval_from`` on."""
    seed_everything(seed)
    names = select_fraction(train_names, args.label_fraction, seed)
    train_set = TileTargetDataset(args.data_path, args.train_list, downstream_train_transform(args.img_size),
                                  args.img_dir, args.target_dir, names=names)
    train_set.targets = task.validate(train_set.targets, Path(args.data_path) / args.target_dir)
    if len(train_set) < args.batch_size:
        raise UserError(f"{args.train_list} (x label fraction {args.label_fraction:g}) gives {len(train_set)} tiles, fewer than one "
                        f"batch of {args.batch_size}; lower --batch_size")
    loader_kw = dict(num_workers=args.workers, pin_memory=device.type == "cuda", worker_init_fn=worker_init)
    order = torch.Generator()
    # The published loader drops the incomplete last batch during training.
    train_loader = DataLoader(train_set, batch_size=args.batch_size, shuffle=True, drop_last=True, generator=order, **loader_kw)
    val_loader = DataLoader(val_set, batch_size=args.batch_size, shuffle=False, **loader_kw)

    model = with_task_head(load_image_encoder(ckpt), out_dim=len(task.columns), freeze_backbone=not args.finetune).to(device)
    if args.head_bias_init == "mean":
        init_head_bias(model.encoder.fc[-1], task, task.to_train(train_set.targets))
    head = list(model.encoder.fc.parameters())
    groups = [{"params": head, "base_lr": args.lr}]
    if args.finetune:
        head_ids = {id(p) for p in head}
        groups.append({"params": [p for p in model.parameters() if id(p) not in head_ids], "base_lr": args.backbone_lr})
    opt = torch.optim.Adam(groups, lr=args.lr)
    print(f"seed {seed}: {ckpt} ({model.resnet}); {len(train_set)} training and {len(val_set)} validation tiles; "
          f"{'fine-tuning the whole encoder' if args.finetune else 'frozen backbone'}", flush=True)
    # Fast path: a frozen, eval-mode backbone maps each validation tile to the same features every epoch.
    val_feats = None if args.finetune else backbone_features(model, val_loader, device)
    y_val = val_set.targets.numpy()
    result = SeedResult(seed)
    for epoch in range(args.total_epoch):
        factor = lr_at(epoch, 1.0, args.total_epoch, args.schedule, args.cos)
        for g in opt.param_groups:
            g["lr"] = g["base_lr"] * factor
        seed_everything(epoch_seed(seed, epoch))
        order.manual_seed(epoch_seed(seed, epoch))
        # Frozen backbone: eval mode, BatchNorm keeps its pretrained statistics (published protocol).
        model.train(args.finetune)
        t0, total, n = time.time(), 0.0, 0
        for x, y, _ in train_loader:
            x, y = x.to(device, non_blocking=True), task.to_train(y.to(device, non_blocking=True))
            loss = task.loss(model(x), y)
            if not torch.isfinite(loss):
                raise UserError(f"the training loss became {loss.item()} at epoch {epoch + 1}; lower --lr")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total, n = total + loss.item() * len(x), n + len(x)
        line = f"epoch {epoch + 1}/{args.total_epoch}  lr {args.lr * factor:.2e}  train loss {total / n:.4f}  {time.time() - t0:.1f}s"
        if epoch + 1 >= args.eval_from or epoch + 1 == args.total_epoch:
            if val_feats is not None:
                model.eval()
                with torch.no_grad():
                    pred = task.predict(model.encoder.fc(val_feats)).float().cpu().numpy()
            else:
                pred = predict_loader(model, val_loader, task, device)
            result.pred = task.to_original(pred)
            if task.name == "regression" and not result.pred.any() and not result.dead_warned:
                result.dead_warned = True
                print(f"warning: epoch {epoch + 1}: every prediction is 0: the head's output is below zero for every "
                      "tile, so its ReLU passes no gradient (a dead head); try --head_bias_init mean, a lower --lr "
                      "or another --seed", file=sys.stderr, flush=True)
            if epoch + 1 >= args.eval_from:
                m = task.metrics(y_val, result.pred)
                result.history.append({"epoch": epoch + 1, **m})
                line += f"  |  val {_metric_text(m)}"
                with record.open("a") as rec:
                    rec.write(json.dumps({"ckpt": str(ckpt), "target": args.target_dir, "seed": seed,
                                          "finetune": bool(args.finetune), "label_fraction": args.label_fraction,
                                          **result.history[-1]}) + "\n")
        print(line, flush=True)
    if result.history:
        for tag, h in (("best", result.best(task)), ("last", result.history[-1])):
            print(f"{tag} epoch {h['epoch']}: {_metric_text(h)}", flush=True)
    return result


def summarize(results: list[SeedResult], task: Task) -> dict[str, dict[str, tuple[float, float]]]:
    """``{"best"|"last": {metric: (mean, std)}}`` over seeds (sample std, 0 for one seed)."""
    out: dict[str, dict[str, tuple[float, float]]] = {}
    for tag in ("best", "last"):
        rows = [r.best(task) if tag == "best" else r.history[-1] for r in results if r.history]
        if not rows:
            continue
        keys = [k for k in rows[0] if k != "epoch"]
        out[tag] = {}
        for k in keys:
            v = np.array([r[k] for r in rows], dtype=np.float64)
            out[tag][k] = (float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else 0.0)
    return out


def write_predictions(path: Path, names: list[str], y_true: np.ndarray, results: list[SeedResult], task: Task) -> None:
    """CSV, one row per (seed, tile): ``name,seed,true_<col>...,pred_<col>...`` (original units)."""
    header = ["name", "seed"] + [f"true_{c}" for c in task.columns] + [f"pred_{c}" for c in task.columns]
    lines = [",".join(header)]
    for r in results:
        if r.pred is None:
            continue
        for i, name in enumerate(names):
            vals = [f"{v:.6g}" for v in y_true[i]] + [f"{v:.6g}" for v in r.pred[i]]
            lines.append(",".join([name, str(r.seed), *vals]))
    atomic_write_text("\n".join(lines) + "\n", path)


def scatter_plot(path: Path, y_true: np.ndarray, results: list[SeedResult], title: str, log: bool) -> None:
    """Predicted vs true (last epoch, every seed), with the identity line; PNG via the Agg backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.5, 4.5), dpi=120)
    lo, hi = float(np.min(y_true)), float(np.max(y_true))
    for r in results:
        if r.pred is not None:
            ax.scatter(y_true[:, 0], r.pred[:, 0], s=8, alpha=0.6, label=f"seed {r.seed}")
            lo, hi = min(lo, float(r.pred.min())), max(hi, float(r.pred.max()))
    ax.plot([lo, hi], [lo, hi], "k--", lw=1, label="y = x")
    if log:
        ax.set_xscale("symlog")
        ax.set_yscale("symlog")
    ax.set_xlabel("true")
    ax.set_ylabel("predicted")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    atomic_write_bytes(buf.getvalue(), path)


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
    val_set = TileTargetDataset(args.data_path, args.val_list, eval_transform(), args.img_dir, args.target_dir)
    if len(task.columns) != val_set.targets.shape[1]:
        raise UserError(f"{Path(args.data_path) / args.target_dir} holds {val_set.targets.shape[1]} value(s) per tile but this "
                        f"task expects {len(task.columns)}; check --target_dir")
    val_set.targets = task.validate(val_set.targets, Path(args.data_path) / args.target_dir)
    record = Path("train-records") / args.train_record
    record.parent.mkdir(parents=True, exist_ok=True)
    seeds = args.seeds if args.seeds else [args.seed]
    results = [train_one_seed(args, task, s, ckpt, train_names, val_set, device, record) for s in seeds]
    summary = summarize(results, task)
    if len(seeds) > 1:
        for tag, stats in summary.items():
            text = "  ".join(f"{k} {m:.4f} ± {s:.4f}" for k, (m, s) in stats.items())
            print(f"mean ± std over {len(seeds)} seeds ({tag}): {text}", flush=True)
    stem = Path(args.train_record).stem
    y_val = val_set.targets.numpy()
    pred_csv = Path(args.pred_csv) if args.pred_csv else record.parent / f"{stem}_pred.csv"
    write_predictions(pred_csv, val_set.names, y_val, results, task)
    print(f"predictions: {pred_csv}", flush=True)
    if task.scatter and (args.plot or "").lower() != "none":
        plot = Path(args.plot) if args.plot else record.parent / f"{stem}_scatter.png"
        last = summary.get("last", {})
        r2 = f"  R2 {last['R2'][0]:.3f}" if "R2" in last else ""
        scatter_plot(plot, y_val, results, f"{args.target_dir}: {ckpt.name}{r2} (last epoch)",
                     log=bool(getattr(args, "log_target", False)))
        print(f"scatter plot: {plot}", flush=True)
    return {"results": results, "summary": summary}
