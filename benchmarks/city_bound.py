"""Supervised upper bound on the synthetic city: do its images carry its targets?

    OMP_NUM_THREADS=1 python benchmarks/city_bound.py                       # the CPU configuration, 20 epochs
                                                                            # (3 tasks x 1 seed: ~6 min, 2 shared cores)
    python benchmarks/city_bound.py --tasks pop1km --seeds 0 1 2            # population only, 3 seeds
    python benchmarks/city_bound.py --data_path DATA --tasks pop1km         # any data in the downstream layout

For each task the comparison's supervised upper bound (``engine.supervised.train_supervised``: one
implementation for both scripts) is trained and scored: the same backbone as the comparison (torchvision
ResNet via ``models.image_encoder.ImageEncoder``, random initialisation, the published downstream head
``Linear(d, d/2) -> ReLU -> Linear(d/2, K)`` in place of the projection), trained end to end on the labels
of the training list and scored on the validation list after a fixed budget of epochs (the last epoch,
no selection on the validation tiles). Training views: ``RandomResizedCrop(--img_size, scale=(0.2, 1))``
+ flip, drawn per image and applied to the decoded tiles as a batch; evaluation on the full tile.
Optimiser: Adam ``--lr`` with a cosine decay over the epochs.

Targets (engine/tasks.py, as res_pop.py and res_func.py): scalar targets are z-scored on the training
tiles (MSE on ``(y - mu) / sigma``), and the prediction in original units is ``ReLU(mu + sigma * h)``;
``--log_target`` trains on ``log1p(y)`` instead (predictions mapped back with ``expm1``). Metrics are
always in original units (R², MAE, RMSE; scikit-learn); for ``func`` the head ends in a softmax, the loss
is KL(true || predicted) and the metrics are KL, L1 and cosine (``utils.metrics.distribution_metrics``).

The figures of benchmarks/RESULTS.md were measured with this script's first trainer (PIL crops in a
DataLoader, the cosine decay per step); the comparison (benchmarks/RESULTS_compare.md) measures the bound
again with the shared trainer.

On the synthetic city (it writes ``truth_components.csv``) the script also prints the *visible-only
oracle*: the R² of the true visible part of each target (floor area x persons or output per m2 of
each building kind, times the training tiles' mean invisible factor) -- the ceiling for any image
model -- the share of each target's log variance that is invisible, and, for reference, a ridge probe
on POI category counts (log1p of the count of each category in the tile), to show what POIs alone
carry. Figures and the configuration used are recorded in benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from data.downstream import read_list  # noqa: E402
from data.pretrain import list_images  # noqa: E402
from engine.compare.run import category_counts  # noqa: E402
from engine.probes import load_targets, probe_target  # noqa: E402
from engine.supervised import load_tiles, task_for, train_supervised  # noqa: E402
from models.image_encoder import RESNETS  # noqa: E402
from synthetic.city import CITY_VERSION, ensure_city  # noqa: E402
from utils.errors import UserError, run_main  # noqa: E402
from utils.fileio import atomic_write_text  # noqa: E402
from utils.metrics import regression_metrics  # noqa: E402

# Proposed CPU configuration of the comparison (docs/synthetic_city.md); every value is a flag.
CPU = {
    "n_tiles": 400,
    "tile_size": 96,
    "img_size": 64,
    "epochs": 20,
    "batch_size": 32,
    "lr": 1e-3,
    "resnet": "resnet18",
}
TASKS = ("pop1km", "gdp1km", "func")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description="Supervised upper bound (end-to-end ResNet) and visible-only oracle on the city."
    )
    p.add_argument(
        "--data_path", default=None, help="downstream layout root (default: the synthetic city, generated in OUT/city)"
    )
    p.add_argument(
        "--out", default="city_bound_out", help="output folder: city, results.json (default 'city_bound_out')"
    )
    p.add_argument(
        "--n_tiles", type=int, default=CPU["n_tiles"], help=f"synthetic city tiles (default {CPU['n_tiles']}, ours)"
    )
    p.add_argument(
        "--tile_size", type=int, default=CPU["tile_size"], help=f"synthetic tile px (default {CPU['tile_size']}, ours)"
    )
    p.add_argument("--city_seed", type=int, default=0, help="synthetic city seed (default 0)")
    p.add_argument(
        "--tasks",
        nargs="*",
        default=list(TASKS),
        help="target folders to train on (default pop1km gdp1km func; none: only the oracle and the POI reference)",
    )
    p.add_argument(
        "--resnet",
        choices=RESNETS,
        default=CPU["resnet"],
        help=f"backbone (default {CPU['resnet']}, the CPU comparison's)",
    )
    p.add_argument(
        "--img_size", type=int, default=CPU["img_size"], help=f"training crop px (default {CPU['img_size']}, ours)"
    )
    p.add_argument(
        "--epochs", type=int, default=CPU["epochs"], help=f"fixed training budget (default {CPU['epochs']}, ours)"
    )
    p.add_argument(
        "--batch_size", type=int, default=CPU["batch_size"], help=f"batch size (default {CPU['batch_size']}, ours)"
    )
    p.add_argument(
        "--lr", type=float, default=CPU["lr"], help=f"Adam lr, cosine decay to 0 (default {CPU['lr']:g}, ours)"
    )
    p.add_argument(
        "--log_target", action="store_true", help="train scalar targets on log1p(y) (default off: z-scored raw y)"
    )
    p.add_argument("--seeds", type=int, nargs="+", default=[0], help="training seeds, one run each (default 0)")
    p.add_argument(
        "--workers", type=int, default=0, help="DataLoader workers (default 0: decoding is cheap next to the ResNet)"
    )
    return p


def train_and_score(args: argparse.Namespace, data: Path, task: str, seed: int, tiles: dict) -> dict:
    """Train one end-to-end model on ``task`` (engine.supervised.train_supervised, the comparison's own
    bound) and score the last epoch on the validation list."""
    names = {"train": read_list(data / "train-wuhan.txt"), "val": read_list(data / "val-wuhan.txt")}
    y_tr = load_targets(data, task, names["train"])
    y_va = load_targets(data, task, names["val"])
    out = train_supervised(
        tiles["train"],
        torch.from_numpy(y_tr).float(),
        tiles["val"],
        y_va,
        task_for(y_tr, task, args.log_target),
        resnet=args.resnet,
        img_size=args.img_size,
        batch_size=args.batch_size,
        epochs=args.epochs,
        lr=args.lr,
        seed=seed,
        device=torch.device("cpu"),
    )
    pred = out.pop("predictions")
    out = {"task": task, "seed": seed, "n_train": len(y_tr), "n_val": len(y_va), **out}
    out["predictions"] = {n: [round(float(v), 6) for v in row] for n, row in zip(names["val"], pred, strict=True)}
    print(
        f"  {task} seed {seed}: "
        + "  ".join(
            f"{k} {out[k]:.4g}" for k in ("R2", "MAE", "RMSE", "KL", "L1", "cos", "pred_std_over_true_std") if k in out
        )
        + f"  ({out['train_seconds']:.0f} s)",
        flush=True,
    )
    return out


def oracle(data: Path) -> dict | None:
    """Visible-only oracle and invisible variance shares from ``truth_components.csv`` (None without it)."""
    path = data / "truth_components.csv"
    if not path.is_file():
        return None
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    val_names = set(read_list(data / "val-wuhan.txt"))
    train_names = set(read_list(data / "train-wuhan.txt"))
    out = {}
    # Shares over the tiles with a positive target, and over those with at least 1,000 persons (GDP:
    # 100 million yuan), where near-empty tiles no longer stretch the log scale.
    for target, visible, factor, floor in (
        ("pop1km", "pop_visible", "occupancy", 1000.0),
        ("gdp1km", "gdp_visible", "productivity", 100.0),
    ):
        col = "population" if target == "pop1km" else "gdp"
        vis = np.array([float(r[visible]) for r in rows])
        fac = np.array([float(r[factor]) for r in rows])
        y = np.array([float(r[col]) for r in rows])
        is_val = np.array([r["name"] in val_names for r in rows])
        is_train = np.array([r["name"] in train_names for r in rows])
        c = float(fac[is_train].mean())  # the best constant stand-in for the invisible factor
        shares = {}
        for key, keep in (("invisible_log_var_share", y > 0), ("invisible_log_var_share_large", y >= floor)):
            shares[key] = float(np.var(np.log(fac[keep])) / np.var(np.log(y[keep]))) if keep.sum() > 1 else float("nan")
        out[target] = {
            **regression_metrics(y[is_val], c * vis[is_val]),
            **shares,
            "large_from": floor,
            "zero_share": float((y == 0).mean()),
            "percentiles": dict(
                zip(
                    ("p25", "p50", "p75", "p90", "p95", "p99", "max"),
                    np.percentile(y, [25, 50, 75, 90, 95, 99, 100]).round(1).tolist(),
                    strict=True,
                )
            ),
        }
    return out


def poi_counts_probe(data: Path) -> dict | None:
    """The comparison's POI reference: ridge probe (engine.probes, penalty by leave-one-out) on log(1 + count)
    of each POI category per tile (engine.compare.run.category_counts), fit on train-wuhan.txt, scored on val-wuhan.txt."""
    if not (data / "sub_shanghai_emb").is_dir():
        return None
    files = list_images(data / "img")
    feats, names = category_counts(data, files), [p.name for p in files]
    out = {}
    for task in ("pop1km", "gdp1km"):
        ridge = probe_target(feats, names, data, task, "train-wuhan.txt", "val-wuhan.txt")["ridge"]
        out[task] = {k: v for k, v in ridge.items() if k != "alpha"}
    return out


def _mean_ci(values: list[float]) -> str:
    v = np.array(values, dtype=float)
    if v.size == 1:
        return f"{v[0]:.3f}"
    return f"{v.mean():.3f} ± {v.std(ddof=1):.3f}"


def main(argv: list[str] | None = None) -> dict:
    args = build_parser().parse_args(argv)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    out = Path(args.out)
    if args.data_path is None:
        data = ensure_city(out / "city", n_tiles=args.n_tiles, tile_size=args.tile_size, seed=args.city_seed)
        where = f"synthetic city version {CITY_VERSION} ({args.n_tiles} tiles of {args.tile_size} px, seed {args.city_seed})"
    else:
        data = Path(args.data_path)
        if not data.is_dir():
            raise UserError(
                f"data directory {data} does not exist; pass a folder in the downstream layout to "
                "--data_path, or leave it out for the synthetic city"
            )
        where = str(data)
    print(
        f"data: {where}; {args.resnet} from random init, end to end, {args.img_size} px crops, batch "
        f"{args.batch_size}, {args.epochs} epochs, Adam lr {args.lr:g} (cosine), "
        f"{'log1p' if args.log_target else 'z-scored raw'} scalar targets, threads {torch.get_num_threads()}",
        flush=True,
    )

    runs = []
    if args.tasks:
        tiles = {
            split: load_tiles([data / "img" / n for n in read_list(data / f"{split}-wuhan.txt")], args.workers)
            for split in ("train", "val")
        }
        runs = [train_and_score(args, data, task, seed, tiles) for task in args.tasks for seed in args.seeds]
    orc = oracle(data)
    poi = poi_counts_probe(data)

    lines = [""]
    if runs:
        lines.append(f"supervised upper bound, last epoch, validation list, mean ± sample std over seeds ({where}):")
    for task in args.tasks:
        rs = [r for r in runs if r["task"] == task]
        keys = ("KL", "L1", "cos") if "KL" in rs[0] else ("R2", "MAE", "RMSE")
        lines.append(
            f"  {task:8s} "
            + "  ".join(f"{k} {_mean_ci([r[k] for r in rs])}" for k in keys)
            + f"  (seeds {', '.join(str(r['seed']) for r in rs)}; {np.mean([r['train_seconds'] for r in rs]):.0f} s training each)"
        )
    if orc:
        lines.append("visible-only oracle (true visible part x mean training invisible factor), validation list:")
        for task, m in orc.items():
            lines.append(
                f"  {task:8s} R2 {m['R2']:.3f}  MAE {m['MAE']:.1f}  RMSE {m['RMSE']:.1f}  invisible share of the "
                f"log variance over all tiles: {m['invisible_log_var_share']:.3f} (y > 0), "
                f"{m['invisible_log_var_share_large']:.3f} (y >= {m['large_from']:g})"
            )
            lines.append(
                f"  {'':8s} all tiles: zero {m['zero_share']:.3f}, "
                + ", ".join(f"{k} {v:,.0f}" for k, v in m["percentiles"].items())
            )
    if poi:
        lines.append("reference: ridge on log1p POI category counts, validation list:")
        for task, m in poi.items():
            lines.append(f"  {task:8s} R2 {m['R2']:.3f}  MAE {m['MAE']:.1f}  RMSE {m['RMSE']:.1f}")
    pops = [r["R2"] for r in runs if r["task"] == "pop1km" and "R2" in r]
    if pops:
        ok = min(pops) >= 0.7
        lines.append(f"population bound R2 >= 0.7: {'yes' if ok else 'NO'} (min over seeds {min(pops):.3f})")
    print("\n".join(lines))
    result = {
        "data": where,
        "config": vars(args),
        "runs": runs,
        "oracle": orc,
        "poi_counts": poi,
        "city_version": CITY_VERSION if args.data_path is None else None,
    }
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(json.dumps(result, indent=2) + "\n", out / "results.json")
    return result


if __name__ == "__main__":
    run_main(main)
