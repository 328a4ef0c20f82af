"""Speed of the data pre-scan (data/scan.py) on the synthetic city, serial and with a thread pool.

    python benchmarks/scan_speed.py --n_tiles 2000 --tile_size 64 --workers 0 2

Prints files/s and tiles/s per worker count (the scan reads 4 files per tile: image header and
checksums, embedding, edges, weights). The city is generated once under --out.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n_tiles", type=int, default=2000, help="tiles of the synthetic city (default 2000)")
    p.add_argument("--tile_size", type=int, default=64, help="tile size in px (default 64)")
    p.add_argument("--workers", type=int, nargs="+", default=[0, 2], help="worker counts to time (default 0 2)")
    p.add_argument("--repeat", type=int, default=2, help="timed scans per worker count, best kept (default 2)")
    p.add_argument("--out", default="scan_bench_city", help="where the city is generated (default ./scan_bench_city)")
    a = p.parse_args()

    from data.scan import scan_pretrain
    from data.synthetic import ensure_city

    t0 = time.time()
    root = ensure_city(a.out, n_tiles=a.n_tiles, tile_size=a.tile_size, seed=0)
    print(f"city: {a.n_tiles} tiles of {a.tile_size} px in {root} (ready in {time.time() - t0:.1f}s); "
          f"{os.cpu_count()} CPUs, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}")
    for w in a.workers:
        best = None
        for _ in range(a.repeat):
            rep = scan_pretrain(root, workers=w)
            best = rep if best is None or rep.seconds < best.seconds else best
        print(f"workers {w}: {best.summary()}; {len(best.good) / best.seconds:.0f} tiles/s")


if __name__ == "__main__":
    main()
