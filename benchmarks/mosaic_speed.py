"""Speed and memory of real-data preparation: cutting a mosaic, and targets from census polygons and rasters.

    python benchmarks/mosaic_speed.py [--size 20000] [--tile 512] [--workers 2] [--skip tiling,census,raster]
        [--keep DIR]

Three measurements, each on data generated here with rasterio / geopandas (windowed writes, so the
generator itself needs little memory), in a temporary folder (or --keep DIR, reused when present):

1. tiling: a ``size`` x ``size`` px RGB GeoTIFF (uint8, 256 px internal tiles, deflate) cut by
   ``prepare_pois.py --mosaic`` into ``tile`` px tiles (image-only preparation: tiles, empty POI tensors,
   tile index). Target: <= 120 s and <= 1 GB peak memory on 2 cores.
2. census: 20,000 Voronoi polygons in lon/lat with a count column -> 100,000 UTM tiles (read, reproject,
   share by area, write 100,000 ``NAME.txt``). Target: <= 60 s.
3. raster: a 10,000 x 10,000 px float32 population raster -> 10,000 tiles of 100 x 100 px, once in the
   tiles' CRS (exact sums) and once in lon/lat (warped with GDAL's sum resampling). Target: <= 60 s each.

Memory is sampled every 0.1 s over the process and its workers: the sum of their RSS (counts pages
shared after fork twice, so an upper bound) and of their PSS (shared pages divided among sharers).
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time

import geopandas as gpd
import numpy as np
import rasterio
import shapely
from pyproj import Transformer
from rasterio.transform import from_origin
from rasterio.windows import Window

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from prepare import targets  # noqa: E402
from prepare.pipeline import PrepareConfig, prepare  # noqa: E402
from prepare.tile_index import grid_positions  # noqa: E402

UTM = "EPSG:32651"
X0, Y1 = 300_000.0, 3_500_000.0  # upper-left corner of everything, UTM 51N (Shanghai's zone)


class MemorySampler:
    """Peak of the summed RSS and PSS (MiB) of this process and its descendants, sampled in a thread."""

    def __init__(self, every: float = 0.1):
        self.every, self.peak_rss, self.peak_pss = every, 0.0, 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    @staticmethod
    def _tree(pid: int) -> list[int]:
        out, todo = [], [pid]
        while todo:
            p = todo.pop()
            out.append(p)
            try:
                for task in os.listdir(f"/proc/{p}/task"):
                    with open(f"/proc/{p}/task/{task}/children") as f:
                        todo += [int(c) for c in f.read().split()]
            except OSError:
                pass
        return out

    @staticmethod
    def _kib(pid: int, path: str, key: str) -> float:
        try:
            with open(f"/proc/{pid}/{path}") as f:
                for line in f:
                    if line.startswith(key):
                        return float(line.split()[1])
        except OSError:
            pass
        return 0.0

    def sample(self) -> None:
        pids = self._tree(os.getpid())
        self.peak_rss = max(self.peak_rss, sum(self._kib(p, "status", "VmRSS:") for p in pids) / 1024)
        self.peak_pss = max(self.peak_pss, sum(self._kib(p, "smaps_rollup", "Pss:") for p in pids) / 1024)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.every)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def _fresh(folder: str) -> None:
    """Remove an earlier run's output and flush pending writes, so neither is timed in the next part."""
    if os.path.isdir(folder):
        shutil.rmtree(folder)
    os.sync()


def _cpu_seconds() -> float:
    """User + system CPU seconds of this process and its finished (waited-for) children."""
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def make_mosaic(path: str, size: int, res: float = 0.5) -> None:
    """A ``size`` x ``size`` RGB uint8 GeoTIFF that looks a little like imagery: smooth land-use patches,
    a street grid and sensor noise (PNG encoding time depends on the content)."""
    rng = np.random.default_rng(0)
    profile = dict(
        driver="GTiff",
        width=size,
        height=size,
        count=3,
        dtype="uint8",
        crs=UTM,
        transform=from_origin(X0, Y1, res, res),
        tiled=True,
        blockxsize=256,
        blockysize=256,
        compress="deflate",
        predictor=2,
        BIGTIFF="IF_SAFER",
        NUM_THREADS="ALL_CPUS",
    )
    cols = np.arange(size)
    patch = rng.integers(60, 200, size=(3, size // 300 + 2, size // 300 + 2))
    with rasterio.open(path, "w", **profile) as ds:
        for r0 in range(0, size, 256):
            h = min(256, size - r0)
            rows = np.arange(r0, r0 + h)
            base = patch[:, rows[:, None] // 300, cols[None, :] // 300].astype(np.int16)  # [3, h, size]
            street = ((rows[:, None] % 150) < 8) | ((cols[None, :] % 150) < 8)
            base = np.where(street[None], 90, base)
            base += rng.normal(0, 10, size=base.shape).astype(np.int16)
            ds.write(np.clip(base, 0, 255).astype(np.uint8), window=Window(0, r0, size, h))


def bench_tiling(root: str, size: int, tile: int, workers: int) -> None:
    path = os.path.join(root, f"mosaic_{size}.tif")
    if not os.path.exists(path):
        t0 = time.time()
        make_mosaic(path, size)
        print(
            f"generated {path}: {size} x {size} px RGB, {os.path.getsize(path) / 2**20:.0f} MiB on disk "
            f"({time.time() - t0:.0f}s)"
        )
    out = os.path.join(root, "tiles_out")
    _fresh(out)
    base = MemorySampler()
    base.sample()
    cpu0 = _cpu_seconds()
    with MemorySampler() as mem:
        t0 = time.time()
        s = prepare(
            PrepareConfig(
                pois=None, tiles=None, out=out, mosaic=path, tile_size_m=tile * 0.5, workers=workers, overwrite=True
            ),
            log=lambda m: print("  " + m),
        )
        dt = time.time() - t0
    cpu = _cpu_seconds() - cpu0
    png = sum(e.stat().st_size for e in os.scandir(os.path.join(out, "sub_shanghai_img")))
    print(
        f"TILING: {s['tiles']} tiles of {tile} px from {size} x {size} px, --workers {workers}: {dt:.1f} s wall "
        f"(target <= 120 s), {cpu:.1f} s CPU (user + system, all processes); peak memory of the process tree: "
        f"RSS sum {mem.peak_rss:.0f} MiB, PSS sum {mem.peak_pss:.0f} MiB (target <= 1024 MiB; before the run, "
        f"with the libraries imported: RSS {base.peak_rss:.0f} MiB, PSS {base.peak_pss:.0f} MiB); "
        f"PNG tiles {png / 2**20:.0f} MiB"
    )


def bench_census(root: str) -> None:
    n_rows, n_cols, size = 250, 400, 100.0  # 100,000 tiles of 100 m: 40 km x 25 km
    path = os.path.join(root, "census.gpkg")
    w, h = n_cols * size, n_rows * size
    if not os.path.exists(path):
        rng = np.random.default_rng(0)
        pts = shapely.multipoints(rng.uniform([X0, Y1 - h], [X0 + w, Y1], size=(20_000, 2)))
        frame = shapely.box(X0 - 500, Y1 - h - 500, X0 + w + 500, Y1 + 500)
        cells = shapely.intersection(shapely.get_parts(shapely.voronoi_polygons(pts, extend_to=frame)), frame)
        gpd.GeoDataFrame({"POP": rng.integers(0, 5000, len(cells)).astype(float)}, geometry=cells, crs=UTM).to_crs(
            "EPSG:4326"
        ).to_file(path)
    r, c = np.divmod(np.arange(n_rows * n_cols), n_cols)
    bounds = np.stack([X0 + c * size, Y1 - (r + 1) * size, X0 + (c + 1) * size, Y1 - r * size], axis=1)
    names = [f"r{a:04d}_c{b:04d}.png" for a, b in zip(r, c, strict=True)]
    _fresh(os.path.join(root, "census_out"))
    t0, cpu0 = time.time(), _cpu_seconds()
    tg = targets.open_target(targets.parse_target(f"pop={path}:POP"), UTM, (X0, Y1 - h, X0 + w, Y1))
    t1 = time.time()
    values, _ = targets.compute_target(tg, bounds, UTM, 0.95, r)
    t2 = time.time()
    n = targets.write_values(os.path.join(root, "census_out", "pop"), names, values, progress=False)
    t3 = time.time()
    print(
        f"CENSUS: 20,000 lon/lat polygons -> {len(names)} tiles: {t3 - t0:.1f} s wall (target <= 60 s), "
        f"{_cpu_seconds() - cpu0:.1f} s CPU = read + "
        f"reproject {t1 - t0:.1f} s, share by area {t2 - t1:.1f} s, write {n} files {t3 - t2:.1f} s"
    )


def make_pop_raster(path: str, size: int, crs: str, origin: tuple[float, float], res: float) -> None:
    rng = np.random.default_rng(1)
    with rasterio.open(
        path,
        "w",
        driver="GTiff",
        width=size,
        height=size,
        count=1,
        dtype="float32",
        crs=crs,
        transform=from_origin(*origin, res, res),
        nodata=-99999.0,
        tiled=True,
        blockxsize=256,
        blockysize=256,
        compress="deflate",
        NUM_THREADS="ALL_CPUS",
    ) as ds:
        for r0 in range(0, size, 512):
            h = min(512, size - r0)
            ds.write(rng.gamma(1.5, 2.0, size=(1, h, size)).astype(np.float32), window=Window(0, r0, size, h))


def bench_raster(root: str) -> None:
    size = 10_000
    # In the tiles' CRS: 10 m pixels, 100 x 100 tiles of 1 km.
    same = os.path.join(root, "pop_utm.tif")
    if not os.path.exists(same):
        make_pop_raster(same, size, UTM, (X0, Y1), 10.0)
    r, c = np.divmod(np.arange(10_000), 100)
    bounds = np.stack([X0 + c * 1000.0, Y1 - (r + 1) * 1000.0, X0 + (c + 1) * 1000.0, Y1 - r * 1000.0], axis=1)
    names = [f"r{a:04d}_c{b:04d}.png" for a, b in zip(r, c, strict=True)]
    for label, path, tiles in (("same CRS", same, bounds), ("lon/lat", None, None)):
        if path is None:  # a lon/lat raster of ~10 m pixels and UTM tiles of 1 km inside it
            path = os.path.join(root, "pop_lonlat.tif")
            lon0, lat1 = 121.0, 31.6
            if not os.path.exists(path):
                make_pop_raster(path, size, "EPSG:4326", (lon0, lat1), 0.0001)
            x, y = Transformer.from_crs("EPSG:4326", UTM, always_xy=True).transform(lon0 + 0.5, lat1 - 0.5)
            x0, y1 = x - 45_000.0, y + 45_000.0  # 90 x 90 km of tiles, wholly inside the raster
            rr, cc = np.divmod(np.arange(8100), 90)
            tiles = np.stack([x0 + cc * 1000.0, y1 - (rr + 1) * 1000.0, x0 + (cc + 1) * 1000.0, y1 - rr * 1000.0], 1)
        rows, _ = grid_positions(tiles)
        _fresh(os.path.join(root, "raster_out"))
        t0, cpu0 = time.time(), _cpu_seconds()
        tg = targets.open_target(
            targets.TargetSpec("pop", path, None),
            UTM,
            (tiles[:, 0].min(), tiles[:, 1].min(), tiles[:, 2].max(), tiles[:, 3].max()),
        )
        values, cov = targets.compute_target(tg, tiles, UTM, 0.95, rows, progress=False)
        t1 = time.time()
        n = targets.write_values(
            os.path.join(root, "raster_out", label.replace(" ", "_").replace("/", "_")),
            names[: len(tiles)],
            values,
            progress=False,
        )
        t2 = time.time()
        print(
            f"RASTER ({label}): {size} x {size} px -> {len(tiles)} tiles: {t2 - t0:.1f} s wall (target <= 60 s), "
            f"{_cpu_seconds() - cpu0:.1f} s CPU = sums "
            f"{t1 - t0:.1f} s, write {n} files {t2 - t1:.1f} s; labelled {int(np.isfinite(values).sum())}"
        )


def machine() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        model = next(line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name"))
        flags = next(line.split(":", 1)[1].split() for line in out.splitlines() if line.startswith("Flags"))
        wanted = [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_tile", "amx_bf16") if f in flags]
    except (OSError, StopIteration):
        model, wanted = platform.processor() or "unknown", []
    load = os.getloadavg()
    return (
        f"{model}, flags {' '.join(wanted) or 'none of avx2/avx512f/avx512_bf16/amx'}, {os.cpu_count()} CPUs, "
        f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}"
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", type=int, default=20_000, help="mosaic side in pixels (default 20000)")
    p.add_argument("--tile", type=int, default=512, help="tile side in pixels (default 512)")
    p.add_argument("--workers", type=int, default=2, help="processes cutting the mosaic (default 2)")
    p.add_argument("--skip", default="", help="comma-separated parts to skip: tiling, census, raster")
    p.add_argument(
        "--keep",
        default=None,
        help="folder for the generated inputs, reused when present (default: a temporary folder, deleted)",
    )
    args = p.parse_args()
    skip = set(filter(None, args.skip.split(",")))
    print(f"machine: {machine()}; {time.strftime('%Y-%m-%d %H:%M')}")
    with tempfile.TemporaryDirectory() as tmp:
        root = args.keep or tmp
        os.makedirs(root, exist_ok=True)
        if "tiling" not in skip:
            bench_tiling(root, args.size, args.tile, args.workers)
        if "census" not in skip:
            bench_census(root)
        if "raster" not in skip:
            bench_raster(root)
    print(f"machine at the end: {machine()}")


if __name__ == "__main__":
    main()
