"""How long the labelled-domain test (engine/domain.py) takes on a large map: N tiles of D-dim embeddings
against M training tiles. Prints one line per case; no assertion (speed figures live in scripts, not tests).

    OMP_NUM_THREADS=2 python benchmarks/domain_speed.py              # 100,000 x 512-d against 1,000 / 10,000
    python benchmarks/domain_speed.py --tiles 100000 --dim 512 --train 10000
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from engine.domain import labelled_domain  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tiles", type=int, default=100_000, help="tiles tested (default 100,000)")
    p.add_argument("--dim", type=int, default=512, help="embedding width (default 512, ResNet-18)")
    p.add_argument(
        "--train", type=int, nargs="+", default=[1_000, 10_000], help="training tiles (default 1,000 10,000)"
    )
    args = p.parse_args()
    rng = np.random.default_rng(0)
    # Embeddings with a low-rank structure, as a backbone's are, plus noise; band means for the second test.
    basis = rng.normal(size=(32, args.dim)).astype(np.float32)
    emb = (rng.normal(size=(args.tiles, 32)).astype(np.float32) @ basis) + 0.1 * rng.normal(
        size=(args.tiles, args.dim)
    ).astype(np.float32)
    stats = rng.normal(size=(args.tiles, 3)).astype(np.float32)
    threads = os.environ.get("OMP_NUM_THREADS", "unset")
    for m in args.train:
        t0 = time.perf_counter()
        dom = labelled_domain(
            emb[:m], emb, stats[:m], stats, self_index=np.r_[np.arange(m), np.full(args.tiles - m, -1)]
        )
        dt = time.perf_counter() - t0
        print(
            f"domain test: {args.tiles:,} tiles x {args.dim}-d against {m:,} training tiles: {dt:.2f} s "
            f"({int((~dom.in_domain).sum()):,} out; OMP_NUM_THREADS={threads}, {os.cpu_count()} CPUs)",
            flush=True,
        )


if __name__ == "__main__":
    main()
