"""Soak test: many short epochs, random SIGKILLs, resume each time; the final weights must equal an
uninterrupted run's, bit for bit, and the per-step record must hold every step exactly once.

    python benchmarks/soak.py --kills 20            # small CPU configuration (below), a few minutes

Each interrupted run is started with ``--resume auto``; once it has trained a step (its record file
grew), it is killed with SIGKILL after a random delay drawn from ``--seed`` (a fraction
``--startup_kills`` of the kills land at a random time from the start instead, often before any
step), so kills land anywhere: a step, a checkpoint write, a record line, start-up. Stops when
``--kills`` kills have landed, then lets the last run finish.
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from synthetic.city import ensure_city  # noqa: E402


def run_cmd(data: Path, model: Path, a: argparse.Namespace) -> list[str]:
    return [
        sys.executable,
        str(ROOT / "mmgr.py"),
        "--data_path",
        str(data),
        "--model_path",
        str(model),
        "--batch_size",
        "4",
        "--resnet",
        "resnet18",
        "--img_size",
        str(a.img_size),
        "--device",
        a.device,
        "--workers",
        str(a.workers),
        "--projection_dim",
        "16",
        "--lr",
        "1e-3",
        "--total_epoch",
        str(a.epochs),
        "--save_every",
        "5",
        "--keep_last",
        "2",
        "--save_every_steps",
        str(a.save_every_steps),
        "--deterministic",
        "--train_record",
        "rec.txt",
        "--resume",
        "auto",
    ]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--kills", type=int, default=20, help="SIGKILLs to land before letting a run finish (default 20)")
    p.add_argument("--epochs", type=int, default=60, help="epochs of the run (default 60)")
    p.add_argument("--n_tiles", type=int, default=8, help="tiles of the synthetic city (default 8: 2 steps per epoch)")
    p.add_argument("--img_size", type=int, default=24, help="crop size (default 24)")
    p.add_argument("--workers", type=int, default=0, help="DataLoader workers (default 0)")
    p.add_argument(
        "--device", default="cpu", help="device of the runs (default cpu; cuda needs --deterministic's kernels)"
    )
    p.add_argument(
        "--save_every_steps", type=int, default=1, help="mid-epoch resumable checkpoints (default every step)"
    )
    p.add_argument(
        "--max_delay", type=float, default=4.0, help="longest delay after the first step before a kill, s (default 4)"
    )
    p.add_argument(
        "--startup_kills",
        type=float,
        default=0.2,
        help="fraction of kills timed from the start, U(0, 20 s) (default 0.2)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the kill delays (default 0)")
    p.add_argument("--out", default="soak_run", help="work directory (default ./soak_run)")
    a = p.parse_args()
    sys.exit(run_soak(a))


def run_soak(a: argparse.Namespace) -> int:
    """The reference run, then the killed-and-resumed runs; prints the figures, returns the exit status."""
    out = Path(a.out).resolve()
    data = ensure_city(out / "city", n_tiles=a.n_tiles, tile_size=32, seed=0)
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    ref, soak = out / "reference", out / "soak"
    for d in (ref, soak):
        if d.exists():
            subprocess.run(["rm", "-rf", str(d)], check=True)
        d.mkdir(parents=True)

    t0 = time.time()
    r = subprocess.run(run_cmd(data, ref / "model", a), cwd=ref, env=env, capture_output=True, text=True)
    if r.returncode != 0:
        print(f"reference run failed:\n{r.stderr}", file=sys.stderr)
        return 1
    ref_seconds = time.time() - t0

    t0 = time.time()
    runs, kills, landed_at = kill_and_resume(data, soak / "model", soak, env, a)
    soak_seconds = time.time() - t0
    same, rec_same = same_run(ref, soak, a.epochs)
    n_lines = len((soak / "train-records" / "rec.txt").read_text().splitlines())
    log_epochs = len((soak / "model" / "train_log.jsonl").read_text().splitlines())
    steps = a.epochs * (a.n_tiles // 4)
    print(
        f"config: {a.epochs} epochs x {a.n_tiles // 4} steps (batch 4, {a.n_tiles} tiles, {a.img_size} px, resnet18, "
        f"--device {a.device}, --workers {a.workers}, --save_every_steps {a.save_every_steps}, --deterministic), kill "
        f"delays U(0, {a.max_delay}) s after the first step ({a.startup_kills:.0%} U(0, 20) s from the start), seed {a.seed}"
    )
    print(f"reference run: {ref_seconds:.1f}s; soak: {runs} runs, {kills} SIGKILLs survived, {soak_seconds:.1f}s")
    print(f"checkpoint on disk at each kill (epochs done.steps into the next): {' '.join(landed_at)}")
    print(
        f"final weights bit-identical: {same}; per-step record identical: {rec_same} ({n_lines}/{steps} lines); "
        f"train_log epochs: {log_epochs}/{a.epochs}"
    )
    return 0 if same and rec_same and log_epochs == a.epochs else 1


def kill_and_resume(
    data: Path, model: Path, soak: Path, env: dict, a: argparse.Namespace
) -> tuple[int, int, list[str]]:
    """Start the run with --resume auto and SIGKILL it ``a.kills`` times, then let it finish; (runs, kills, where)."""
    rng = random.Random(a.seed)
    kills, runs, landed_at = 0, 0, []
    while True:
        runs += 1
        proc = subprocess.Popen(
            run_cmd(data, model, a), cwd=soak, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
        )
        if kills < a.kills:
            record = soak / "train-records" / "rec.txt"
            size0 = record.stat().st_size if record.exists() else 0
            from_start = rng.random() < a.startup_kills
            delay = rng.uniform(0, 20.0 if from_start else a.max_delay)
            deadline = time.time() + delay if from_start else None
            while proc.poll() is None:
                if deadline is None and record.exists() and record.stat().st_size > size0:
                    deadline = time.time() + delay  # it trains: kill somewhere in the next seconds
                if deadline is not None and time.time() >= deadline:
                    proc.send_signal(signal.SIGKILL)
                    break
                time.sleep(0.02)
        _, err = proc.communicate()
        if proc.returncode == -signal.SIGKILL:
            kills += 1
            ck = model / "checkpoint_last.pt"
            if ck.is_file():
                c = torch.load(ck, weights_only=True)
                landed_at.append(f"{c['epoch']}.{c['step']}")
            else:
                landed_at.append("none")
            continue
        if proc.returncode != 0:
            sys.exit(f"run {runs} failed (exit {proc.returncode}):\n{err}")
        return runs, kills, landed_at


def same_run(ref: Path, soak: Path, epochs: int) -> tuple[bool, bool]:
    """(final weights bit-identical, per-step records byte-identical) of the reference and the soak."""
    same = True
    for kind in ("img", "poi"):
        x = torch.load(ref / "model" / f"wuhan_{kind}_{epochs}.tar", weights_only=True)
        y = torch.load(soak / "model" / f"wuhan_{kind}_{epochs}.tar", weights_only=True)
        same &= x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)
    rec_same = (ref / "train-records" / "rec.txt").read_bytes() == (soak / "train-records" / "rec.txt").read_bytes()
    return same, rec_same


if __name__ == "__main__":
    main()
