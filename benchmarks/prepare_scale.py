"""Scale check for prepare_pois.py: 1,000,000 POIs and 10,000 tiles, time and peak memory.

    python benchmarks/prepare_scale.py [--pois 1000000] [--tiles 10000] [--workers 2]

Builds a random city in a temporary folder (a 100 x 100 grid of 1 km tiles, all hardlinks of one
small PNG; POIs uniform over a slightly larger area so some fall outside every tile; 200 categories
under 20 parents), runs the preparation with learned embeddings, and prints the elapsed seconds and
the peak resident memory of this process and its workers (target: < 120 s, < 4 GB on 2 cores).
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
import time

import numpy as np
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from prepare.pipeline import PrepareConfig, prepare  # noqa: E402


def make_city(root: str, n_pois: int, n_tiles: int, seed: int = 0) -> tuple[str, str, str]:
    rng = np.random.default_rng(seed)
    side = int(np.ceil(np.sqrt(n_tiles)))
    size = 1000.0
    tiles = os.path.join(root, "tiles")
    os.makedirs(tiles)
    proto = os.path.join(root, "proto.png")
    Image.new("RGB", (32, 32), (90, 120, 60)).save(proto)
    index = os.path.join(root, "tile_index.csv")
    with open(index, "w") as f:
        f.write("name,minx,miny,maxx,maxy\n")
        for k in range(n_tiles):
            i, j = k % side, k // side
            name = f"tile_{k:06d}.png"
            os.link(proto, os.path.join(tiles, name))
            f.write(f"{name},{i * size},{j * size},{(i + 1) * size},{(j + 1) * size}\n")
    extent = side * size
    xy = rng.uniform(-0.01 * extent, 1.01 * extent, size=(n_pois, 2))
    cat = rng.integers(0, 200, size=n_pois)
    pois = os.path.join(root, "pois.csv")
    with open(pois, "w") as f:
        f.write("poi_id,x,y,category,parent\n")
        f.writelines(
            f"{k},{x:.2f},{y:.2f},c{c},p{c // 10}\n" for k, ((x, y), c) in enumerate(zip(xy, cat, strict=True))
        )
    return pois, tiles, index


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--pois", type=int, default=1_000_000, help="number of POIs (default: 1000000)")
    p.add_argument("--tiles", type=int, default=10_000, help="number of tiles (default: 10000)")
    p.add_argument("--workers", type=int, default=2, help="processes writing tiles (default: 2)")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as root:
        t0 = time.time()
        pois, tiles, index = make_city(root, args.pois, args.tiles)
        print(f"generated {args.pois} POIs, {args.tiles} tiles in {time.time() - t0:.1f}s")
        t0 = time.time()
        summary = prepare(
            PrepareConfig(
                pois=pois,
                tiles=tiles,
                tile_index=index,
                parent_col="parent",
                out=os.path.join(root, "out"),
                image_mode="hardlink",
                workers=args.workers,
            )
        )
        elapsed = time.time() - t0
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux -> MiB
    kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    print(
        f"prepare: {elapsed:.1f} s for {summary['pois_used']} POIs, {summary['tiles']} tiles "
        f"({summary['pois_outside_every_tile']} POIs outside every tile, {summary['undirected_edges']} edges)"
    )
    print(f"peak RSS: main process {own:.0f} MiB, largest worker {kids:.0f} MiB")


if __name__ == "__main__":
    main()
