"""The paper's comparison, one command: pretrain each variant, export embeddings, probe every task.

    python benchmarks/compare.py                       # CPU-sized, on the synthetic city (about 20-30 min on 2 cores)
    python benchmarks/compare.py --full                # published sizes (GPU): 1000 tiles of 256 px, resnet50, 120 epochs
    python benchmarks/compare.py --data_path DATA --targets pop1km   # your own data in the published layouts

Variants (rows of the table):
  random      randomly initialised image encoder (no pretraining)
  simclr      image-only contrastive pretraining, λ = 1 (SimCLR-style: only the image–image term)
  img_poi     image–POI contrastive only, λ = 0
  mmgr        MMGR, λ = 0.5 (published), released Set2Set POI encoder
  mmgr_gcn    MMGR, λ = 0.5, GCN POI encoder (the paper's description)
  poi_encoder POI-only: the POI-encoder embedding of the mmgr run
  poi_counts  POI-only: log(1 + count) of each POI category in the tile (no learning; seed-free)

Protocol (fast, "embedding probe"): each pretrained encoder embeds every tile once (backbone features,
no augmentation, full tile), then closed-form ridge (penalty by leave-one-out) and kNN probes are fit
on the training list and scored on the validation list, for each target directory. Each pretraining
seed gives one value; the table shows mean ± std (sample std) over seeds. Pretraining runs
``mmgr.py`` itself (a subprocess per run, its records under OUT/train-records); a finished run is
reused when its final checkpoint exists, so an interrupted comparison continues where it stopped.

Writes OUT/results.json (every number), OUT/results.md (the Markdown tables and the command) and
OUT/compare.png (the figure).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from data.pretrain import list_images  # noqa: E402
from data.synthetic import ensure_city  # noqa: E402
from models.image_encoder import ImageEncoder  # noqa: E402
from utils.fileio import atomic_save, atomic_write_text, load_file  # noqa: E402
from engine.embeddings import image_embeddings, poi_embeddings  # noqa: E402
from utils.errors import UserError, run_main  # noqa: E402
from engine.probes import probe_target  # noqa: E402

# variant -> extra mmgr.py flags (None: no pretraining of its own)
PRETRAINED = {
    "simclr": ["--img_lmd", "1"],
    "img_poi": ["--img_lmd", "0"],
    "mmgr": ["--img_lmd", "0.5"],
    "mmgr_gcn": ["--img_lmd", "0.5", "--poi_encoder", "gcn"],
}
VARIANTS = ("random", "simclr", "img_poi", "mmgr", "mmgr_gcn", "poi_encoder", "poi_counts")
LABELS = {"random": "random init", "simclr": "image only (λ=1)", "img_poi": "image–POI only (λ=0)",
          "mmgr": "MMGR (λ=0.5)", "mmgr_gcn": "MMGR, GCN POI encoder", "poi_encoder": "POI only: MMGR POI encoder",
          "poi_counts": "POI only: category counts"}

CPU = {"n_tiles": 320, "tile_size": 64, "resnet": "resnet18", "img_size": 48, "batch_size": 32, "epochs": 5,
       "schedule": [4], "lr": 1e-3, "seeds": [0, 1]}
FULL = {"n_tiles": 1000, "tile_size": 256, "resnet": "resnet50", "img_size": 224, "batch_size": 128, "epochs": 120,
        "schedule": [90, 110], "lr": 1e-2, "seeds": [0, 1, 2]}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="MMGR vs its baselines on population, GDP and urban functions.")
    p.add_argument("--out", default="compare_out", help="output directory (default './compare_out')")
    p.add_argument("--data_path", default=None,
                   help="data root holding both published layouts (default: the synthetic city, generated in OUT/city)")
    p.add_argument("--full", action="store_true",
                   help=f"published sizes instead of the CPU-sized defaults ({FULL}); explicit flags still win")
    p.add_argument("--n_tiles", type=int, default=None, help=f"synthetic city tiles (default {CPU['n_tiles']}; --full {FULL['n_tiles']})")
    p.add_argument("--tile_size", type=int, default=None, help=f"synthetic tile pixels (default {CPU['tile_size']}; --full {FULL['tile_size']})")
    p.add_argument("--city_seed", type=int, default=0, help="synthetic city seed (default 0)")
    p.add_argument("--resnet", default=None, help=f"image backbone (default {CPU['resnet']}; --full {FULL['resnet']}, published)")
    p.add_argument("--img_size", type=int, default=None, help=f"pretraining crop (default {CPU['img_size']}; --full 224, published)")
    p.add_argument("--batch_size", type=int, default=None, help=f"pretraining batch (default {CPU['batch_size']}; --full 128, published)")
    p.add_argument("--epochs", type=int, default=None, help=f"pretraining epochs (default {CPU['epochs']}; --full 120, published)")
    p.add_argument("--schedule", type=int, nargs="*", default=None, help=f"lr drop epochs (default {CPU['schedule']}; --full 90 110)")
    p.add_argument("--lr", type=float, default=None,
                   help=f"pretraining Adam lr (default {CPU['lr']:g}: the published 1e-2 collapses small CPU runs; --full 1e-2, published)")
    p.add_argument("--seeds", type=int, nargs="+", default=None, help=f"pretraining seeds (default {CPU['seeds']}; --full 0 1 2)")
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS, help="rows to run (default all)")
    p.add_argument("--targets", nargs="+", default=["pop1km", "gdp1km", "func"],
                   help="target directories (default pop1km gdp1km func; scalar = regression, several values = distribution)")
    p.add_argument("--log_target", type=int, default=0,
                   help="1: ridge/kNN fit log1p of scalar targets (metrics still in original units, where expm1 of a "
                        "log-space fit predicts the geometric mean, biased low); default 0: fit raw values, as res_pop.py does")
    p.add_argument("--knn", type=int, default=10, help="kNN neighbours (default 10)")
    p.add_argument("--workers", type=int, default=2, help="DataLoader workers of pretraining and embedding (default 2)")
    p.add_argument("--device", default="cpu", help="device of pretraining and embedding (default cpu)")
    return p


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    args = build_parser().parse_args(argv)
    base = FULL if args.full else CPU
    for k, v in base.items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    return args


def pretrain(args: argparse.Namespace, data: Path, out: Path, variant: str, seed: int) -> Path:
    """Run mmgr.py for one (variant, seed) unless its final checkpoint exists; returns the image checkpoint."""
    model_path = out / "ckpt" / f"{variant}_s{seed}"
    final = model_path / f"wuhan_img_{args.epochs}.tar"
    if final.is_file():
        return final
    cmd = [sys.executable, str(ROOT / "mmgr.py"), "--data_path", str(data.resolve()), "--model_path", str(model_path.resolve()),
           "--resnet", args.resnet, "--img_size", str(args.img_size), "--batch_size", str(args.batch_size),
           "--total_epoch", str(args.epochs), "--schedule", *map(str, args.schedule), "--lr", str(args.lr),
           "--seed", str(seed), "--workers", str(args.workers), "--device", args.device, "--save_every", str(args.epochs),
           "--train_record", f"{variant}_s{seed}.txt", "--resume", "auto", *PRETRAINED[variant]]
    t0 = time.time()
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    r = subprocess.run(cmd, cwd=out, env=env, capture_output=True, text=True)
    (out / "logs").mkdir(exist_ok=True)
    (out / "logs" / f"{variant}_s{seed}.log").write_text(r.stdout + r.stderr)
    if r.returncode != 0:
        raise UserError(f"pretraining {variant} (seed {seed}) failed, see {out / 'logs' / f'{variant}_s{seed}.log'}")
    last = [ln for ln in r.stdout.splitlines() if ln.startswith("epoch ")][-1:]
    print(f"  pretrained {variant} seed {seed} in {time.time() - t0:.0f}s: {last[0] if last else ''}", flush=True)
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


def flatten(probe: dict[str, dict[str, dict[str, float]]]) -> dict[str, float]:
    """``{target: {method: {metric: v}}}`` -> ``{"target/method/metric": v}``."""
    return {f"{t}/{m}/{k}": v for t, d in probe.items() for m, mm in d.items() for k, v in mm.items() if k != "alpha"}


def columns_for(targets: list[str], values: dict) -> list[tuple[str, str]]:
    """Table columns ``(key suffix, header)`` per target: R² for scalars, KL and cos for distributions."""
    cols = []
    for t in targets:
        if f"{t}/ridge/R2" in values:
            cols.append((f"{t}/{{m}}/R2", f"{t} R²"))
        else:
            cols += [(f"{t}/{{m}}/KL", f"{t} KL"), (f"{t}/{{m}}/cos", f"{t} cos"), (f"{t}/{{m}}/L1", f"{t} L1")]
    return cols


def markdown(results: dict, targets: list[str], method: str, variants: list[str]) -> str:
    first = next(iter(next(iter(results.values())).values()))
    cols = columns_for(targets, first)
    lines = ["| variant | " + " | ".join(h for _, h in cols) + " |", "|---|" + "---:|" * len(cols)]
    for v in variants:
        if v not in results:
            continue
        cells = []
        for key, _ in cols:
            vals = np.array([r[key.format(m=method)] for r in results[v].values()])
            std = vals.std(ddof=1) if len(vals) > 1 else 0.0
            cells.append(f"{vals.mean():.3f} ± {std:.3f}")
        lines.append(f"| {LABELS[v]} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(results: dict, targets: list[str], variants: list[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    first = next(iter(next(iter(results.values())).values()))
    cols = [(k, h) for k, h in columns_for(targets, first) if not h.endswith("L1")]
    vs = [v for v in variants if v in results]
    fig, axes = plt.subplots(1, len(cols), figsize=(3.2 * len(cols), 3.6), dpi=110, squeeze=False)
    for ax, (key, head) in zip(axes[0], cols):
        means, stds = [], []
        for v in vs:
            vals = np.array([r[key.format(m="ridge")] for r in results[v].values()])
            means.append(vals.mean())
            stds.append(vals.std(ddof=1) if len(vals) > 1 else 0.0)
        ax.bar(range(len(vs)), means, yerr=stds, color=[f"C{i}" for i in range(len(vs))], capsize=3)
        ax.set_xticks(range(len(vs)))
        ax.set_xticklabels(vs, rotation=60, ha="right", fontsize=7)
        ax.set_title(f"{head} (ridge; {'lower' if head.endswith('KL') else 'higher'} is better)", fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.time()
    if args.data_path is None:
        data = ensure_city(out / "city", args.n_tiles, args.tile_size, args.city_seed)
        where = f"synthetic city ({args.n_tiles} tiles of {args.tile_size} px, seed {args.city_seed})"
    else:
        data = Path(args.data_path)
        if not data.is_dir():
            raise UserError(f"data directory {data} does not exist; pass --data_path of a published layout")
        where = str(data)
    print(f"comparison on {where}: {args.resnet}, crops {args.img_size}, batch {args.batch_size}, {args.epochs} epochs, "
          f"lr {args.lr:g}, seeds {args.seeds}", flush=True)
    files = list_images(data / "img")
    names = [p.name for p in files]
    device = torch.device(args.device)
    results: dict[str, dict[int, dict[str, float]]] = {}
    counts = None

    def evaluate(variant: str, seed: int, feats: np.ndarray) -> None:
        probe = {t: probe_target(feats, names, data, t, "train-wuhan.txt", "val-wuhan.txt", k=args.knn,
                                 log_target=bool(args.log_target)) for t in args.targets}
        results.setdefault(variant, {})[seed] = flatten(probe)
        shown = {k: round(v, 3) for k, v in results[variant][seed].items() if "/ridge/" in k and not k.endswith("L1")}
        print(f"  {variant} seed {seed}: {shown}", flush=True)
        atomic_write_text(json.dumps({"args": vars(args), "results": results}, indent=1) + "\n", out / "results.json")

    for seed in args.seeds:
        for variant in args.variants:
            if variant == "poi_counts":
                counts = category_counts(data, files) if counts is None else counts
                evaluate(variant, seed, counts)
                continue
            if variant == "random":
                ckpt = random_checkpoint(args, out, seed)
            else:
                ckpt = pretrain(args, data, out, "mmgr" if variant == "poi_encoder" else variant, seed)
            if variant == "poi_encoder":
                poi = ckpt.with_name(ckpt.name.replace("_img_", "_poi_"))
                feats = poi_embeddings(poi, data, "img", files, device, progress=False)
            else:
                feats = image_embeddings(ckpt, files, device, workers=args.workers, progress=False)[0]["backbone"]
            evaluate(variant, seed, feats)

    command = "python benchmarks/compare.py " + " ".join(shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))
    text = [f"Command: `{command.strip()}`", "", f"Data: {where}. Pretraining: {args.resnet}, {args.img_size} px crops, batch "
            f"{args.batch_size}, {args.epochs} epochs, Adam lr {args.lr:g}, steps at {args.schedule}; seeds {args.seeds}. "
            f"Probes on frozen backbone embeddings (full tile), fit on train-wuhan.txt, scored on val-wuhan.txt"
            f"{', scalar targets fit as log1p' if args.log_target else ''}. Mean ± std over seeds.", "",
            "Ridge probe (penalty by leave-one-out):", "", markdown(results, args.targets, "ridge", args.variants), "",
            f"kNN probe (k = {args.knn}, cosine):", "", markdown(results, args.targets, "knn", args.variants), "",
            f"Total time {time.time() - t_start:.0f} s."]
    atomic_write_text("\n".join(text) + "\n", out / "results.md")
    plot(results, args.targets, args.variants, out / "compare.png")
    print("\n".join(text), flush=True)
    print(f"wrote {out / 'results.md'}, {out / 'results.json'}, {out / 'compare.png'}", flush=True)
    return results


if __name__ == "__main__":
    run_main(main)
