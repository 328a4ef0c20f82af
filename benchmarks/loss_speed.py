"""NT-Xent speed and memory: our normalised-matmul loss vs the published broadcast formulation.

    python benchmarks/loss_speed.py [--batches 128 512 1024] [--dim 128] [--repeats 5] [--device cpu]

Forward + backward of one loss term on random ``[B, D]`` embeddings, median of ``--repeats`` runs
after one warm-up; peak memory of the loss alone (CUDA: allocator peak; CPU: growth of the peak
resident size of a fresh process). Each (loss, batch) runs in its own subprocess so peaks do not
mix. The broadcast loss is skipped where its ``[2B, 2B, D]`` tensors would exceed ``--max_gb``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from benchmarks.published_reference import broadcast_nt_xent  # noqa: E402
from models.loss import nt_xent  # noqa: E402


def _measure(loss_name: str, b: int, d: int, repeats: int, device: str) -> dict:
    fn = {"ours": nt_xent, "broadcast": broadcast_nt_xent}[loss_name]
    dev = torch.device(device)
    g = torch.Generator().manual_seed(0)
    za = torch.randn(b, d, generator=g).to(dev).requires_grad_()
    zb = torch.randn(b, d, generator=g).to(dev).requires_grad_()
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    base_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
        base_cuda = torch.cuda.memory_allocated()
    times = []
    for i in range(repeats + 1):
        sync()
        t0 = time.perf_counter()
        fn(za, zb, 0.5).backward()
        sync()
        if i:  # the first run warms up
            times.append(time.perf_counter() - t0)
        za.grad = zb.grad = None
    peak = (
        (torch.cuda.max_memory_allocated() - base_cuda)
        if dev.type == "cuda"
        else (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base_rss) * 1024
    )
    return {"loss": loss_name, "batch": b, "ms": statistics.median(times) * 1e3, "peak_mb": peak / 2**20}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--batches", type=int, nargs="+", default=[128, 512, 1024], help="batch sizes B (default 128 512 1024)"
    )
    p.add_argument("--dim", type=int, default=128, help="embedding width D (default 128, published projection)")
    p.add_argument("--repeats", type=int, default=5, help="timed runs per point, after one warm-up (default 5)")
    p.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    p.add_argument(
        "--max_gb",
        type=float,
        default=1.0,
        help="skip the broadcast loss where one [2B, 2B, D] fp32 tensor exceeds this many GB (default 1: its backward needs ~6x that)",
    )
    p.add_argument("--_child", nargs=2, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args._child:
        print(json.dumps(_measure(args._child[0], int(args._child[1]), args.dim, args.repeats, args.device)))
        return
    print(
        f"NT-Xent forward+backward, D={args.dim}, device {args.device}, median of {args.repeats}, "
        f"torch threads {os.environ.get('OMP_NUM_THREADS', 'default')}"
    )
    print(f"{'B':>6} {'ours ms':>10} {'ours MB':>9} {'broadcast ms':>13} {'broadcast MB':>13} {'speed-up':>9}")
    for b in args.batches:
        row = {}
        for name in ("ours", "broadcast"):
            if name == "broadcast" and 4 * (2 * b) ** 2 * args.dim / 1e9 > args.max_gb:
                continue
            cmd = [
                sys.executable,
                os.path.abspath(__file__),
                "--dim",
                str(args.dim),
                "--repeats",
                str(args.repeats),
                "--device",
                args.device,
                "--_child",
                name,
                str(b),
            ]
            out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
            row[name] = json.loads(out.strip().splitlines()[-1])
        o = row["ours"]
        if "broadcast" in row:
            br = row["broadcast"]
            print(
                f"{b:>6} {o['ms']:>10.2f} {o['peak_mb']:>9.1f} {br['ms']:>13.1f} {br['peak_mb']:>13.1f} {br['ms'] / o['ms']:>8.0f}x"
            )
        else:
            need = 4 * (2 * b) ** 2 * args.dim / 1e9
            print(f"{b:>6} {o['ms']:>10.2f} {o['peak_mb']:>9.1f} {'skipped':>13} {f'>{need:.1f} GB':>13} {'':>9}")


if __name__ == "__main__":
    main()
