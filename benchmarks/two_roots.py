"""Does pretraining on two roots cost more per tile than on one? (README "Two cities")

    OMP_NUM_THREADS=1 python benchmarks/two_roots.py --out OUT [--tiles 96] [--repeats 3]

The synthetic city is generated twice (once per style, ``--tiles`` tiles of 64 px each, seed 0) in
``OUT/a`` and ``OUT/b``, and ``OUT/ab`` holds the same files of both in one folder (hard links, names
prefixed ``a_``/``b_``): the very same tiles as one root or as two. For each layout, alternated
``--repeats`` times, on CPU, in this process:

* ``load``: one pass of the data loader over an epoch (``--workers 0``: decoding, two augmented views,
  POI graphs and collation in this process), seconds per tile;
* ``step``: one epoch of pretraining (ResNet-18, 32 px crops, batch 16), seconds per tile, from the
  epoch's own timing (the loader included).

Each in wall-clock and in this process's CPU time (all the work runs in it; other jobs on a shared
machine stretch the first, hardly the second). Printed: the median of each over the repeats, one root
and two, and their ratio. The pre-scan is not timed (it reads each file once, whatever the roots).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

import mmgr  # noqa: E402
from data.layout import PUBLISHED_PRETRAIN_DIRS  # noqa: E402
from engine.pretrain import Pretrainer, prepare_data  # noqa: E402
from synthetic.city import ensure_city  # noqa: E402
from utils.distributed import DistInfo  # noqa: E402

CONFIG = [
    "--resnet", "resnet18", "--img_size", "32", "--batch_size", "16", "--projection_dim", "32", "--workers", "0",
    "--lr", "1e-3", "--total_epoch", "1", "--device", "cpu", "--channels_last", "false",
]  # fmt: skip


def merged(a: Path, b: Path, out: Path) -> Path:
    """``out``: the pretraining files of ``a`` and ``b`` in one root (hard links, names prefixed)."""
    if (out / ".complete").is_file():
        return out
    for sub in PUBLISHED_PRETRAIN_DIRS.values():
        if not (a / sub).is_dir():
            continue
        (out / sub).mkdir(parents=True, exist_ok=True)
        for tag, src in (("a_", a), ("b_", b)):
            for f in (src / sub).iterdir():
                dst = out / sub / (tag + f.name)
                if not dst.exists():
                    os.link(f, dst)
    (out / ".complete").write_text("")
    return out


def measure(roots: list[Path], model_path: Path) -> tuple[float, float, float, float]:
    """Per tile on ``roots``: (loader wall s, loader CPU s, pretraining-epoch wall s, epoch CPU s).

    CPU time is this process's (``--workers 0``, one thread: all the work is here), which other jobs on a
    shared machine do not inflate as they do the wall-clock time.
    """
    args = mmgr.parse_args(["--data_path", *map(str, roots), "--model_path", str(model_path), *CONFIG])
    info = DistInfo()
    trainer = Pretrainer(args, prepare_data(args, info), info, torch.device("cpu"), mmgr.training_step)
    n = trainer.steps_per_epoch * trainer.global_batch
    trainer.sampler.set_epoch(0, 0)
    t0, c0 = time.perf_counter(), time.process_time()
    for _ in trainer.loader:
        pass
    t1, c1 = time.perf_counter(), time.process_time()
    trainer.train_one_epoch()
    t2, c2 = time.perf_counter(), time.process_time()
    return (t1 - t0) / n, (c1 - c0) / n, (t2 - t1) / n, (c2 - c1) / n


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="work folder: the two cities, the merged root, run folders")
    p.add_argument("--tiles", type=int, default=96, help="tiles per city (default 96)")
    p.add_argument("--repeats", type=int, default=3, help="alternated measurements of each layout (default 3)")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    os.chdir(out)  # the per-step records (./train-records/) stay in the work folder
    a = ensure_city(out / "a", n_tiles=args.tiles, tile_size=64, seed=0, style="a")
    b = ensure_city(out / "b", n_tiles=args.tiles, tile_size=64, seed=0, style="b")
    ab = merged(a, b, out / "ab")
    runs: dict[str, list[tuple[float, ...]]] = {"one root": [], "two roots": []}
    for k in range(args.repeats):
        for label, roots in (("one root", [ab]), ("two roots", [a, b])):
            runs[label].append(measure(roots, out / f"run_{label.replace(' ', '_')}_{k}"))
    med = {label: [statistics.median(x[i] for x in r) for i in range(4)] for label, r in runs.items()}
    print(
        f"{2 * args.tiles} tiles of 64 px, ResNet-18 at 32 px, batch 16, CPU, {torch.get_num_threads()} thread(s), "
        f"medians of {args.repeats}, ms per tile (wall / CPU of this process):"
    )
    for label, m in med.items():
        print(
            f"  {label:>9}: loader {m[0] * 1e3:.2f} / {m[1] * 1e3:.2f}, pretraining epoch {m[2] * 1e3:.2f} / {m[3] * 1e3:.2f}"
        )
    for label, r in runs.items():
        print(f"  {label:>9}: epoch CPU ms/tile of each repeat: {', '.join(f'{x[3] * 1e3:.2f}' for x in r)}")
    one, two = med["one root"], med["two roots"]
    print(
        f"  two / one: loader {two[0] / one[0]:.3f} / {two[1] / one[1]:.3f}, "
        f"pretraining epoch {two[2] / one[2]:.3f} / {two[3] / one[3]:.3f}"
    )


if __name__ == "__main__":
    main()
