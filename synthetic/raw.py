"""The synthetic city as the raw files a real city arrives as, to try the whole real-data path offline.

    python -m synthetic.raw --city CITY --out RAW

From a city written by :mod:`synthetic.city` (``CITY``), writes to ``RAW``:

* ``mosaic.tif`` — one georeferenced GeoTIFF of the whole city (the tiles stitched in their grid, in
  the city's projected CRS, internally tiled and compressed), as a VHR mosaic would come;
* ``pois.gpkg`` — the POIs as points in longitude/latitude (EPSG:4326), with ``category`` and
  ``parent`` columns, as a POI extract would come;
* ``census.gpkg`` — census districts of ``--district_tiles`` x ``--district_tiles`` tiles with their
  population count in column ``POP``, in Web Mercator (EPSG:3857), as census polygons would come.

``prepare_pois.py --mosaic RAW/mosaic.tif --tile_size_m 1000 --pois RAW/pois.gpkg --target
pop1km=RAW/census.gpkg:POP`` then cuts the same 1 km grid again, reprojects both vector files and shares
each district's count among its tiles by area (docs/your_city.md walks through it). Everything here is
synthetic (docs/synthetic_city.md).
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import geopandas as gpd
import numpy as np
import rasterio
import shapely
from PIL import Image
from rasterio.transform import from_origin

from data.layout import PretrainLayout
from prepare.tile_index import read_tile_index
from utils.errors import UserError, run_main
from utils.fileio import atomic_path

__all__ = ["write_raw_city", "main"]


def _grid(city: Path):
    index = read_tile_index(city)
    if index is None or index.crs is None:
        raise UserError(
            f"{city} holds no georeferenced tile index (tile_index.gpkg); generate the city with "
            "`python -m synthetic.city` (city version 2 or later)"
        )
    if not index.regular:
        raise UserError(f"the tiles of {city} are not one regular grid; pass a city written by synthetic.city")
    return index


def write_mosaic(city: Path, path: Path) -> tuple[int, int]:
    """Stitch the city's tiles into ``path`` (GeoTIFF, uint8 RGB, 0 = nodata outside the tiles); returns its
    ``(height, width)`` in pixels."""
    index = _grid(city)
    tiles = PretrainLayout(city).img
    size = Image.open(tiles / index.names[0]).size[0]
    rows, cols = int(index.rows.max()) + 1, int(index.cols.max()) + 1
    res = (index.bounds[0, 2] - index.bounds[0, 0]) / size
    left, top = float(index.bounds[:, 0].min()), float(index.bounds[:, 3].max())
    profile = {
        "driver": "GTiff",
        "width": cols * size,
        "height": rows * size,
        "count": 3,
        "dtype": "uint8",
        "crs": index.crs,
        "transform": from_origin(left, top, res, res),
        "nodata": 0,
        "tiled": True,
        "blockxsize": 256,
        "blockysize": 256,
        "compress": "deflate",
    }
    with atomic_path(path) as tmp, rasterio.open(tmp, "w", **profile) as dst:
        for name, r, c in zip(index.names, index.rows, index.cols, strict=True):
            rgb = np.asarray(Image.open(tiles / name).convert("RGB")).transpose(2, 0, 1)
            dst.write(rgb, window=((int(r) * size, (int(r) + 1) * size), (int(c) * size, (int(c) + 1) * size)))
    return rows * size, cols * size


def write_pois(city: Path, path: Path) -> int:
    """``pois.csv`` (metres in the city's CRS) as points in EPSG:4326; returns the number of POIs."""
    index = _grid(city)
    with (city / "pois.csv").open(newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    xy = np.array([[float(r["x"]), float(r["y"])] for r in rows], dtype=np.float64).reshape(-1, 2)
    frame = gpd.GeoDataFrame(
        {"category": [r["category"] for r in rows], "parent": [r["parent"] for r in rows]},
        geometry=gpd.points_from_xy(xy[:, 0], xy[:, 1]),
        crs=index.crs,
    ).to_crs("EPSG:4326")
    with atomic_path(path) as tmp:
        frame.to_file(tmp, driver="GPKG", layer="pois", engine="pyogrio")
    return len(frame)


def write_census(city: Path, path: Path, district_tiles: int = 3) -> int:
    """Districts of ``district_tiles`` x ``district_tiles`` tiles with their total population (``POP``), in
    EPSG:3857; returns the number of districts."""
    index = _grid(city)
    pop = np.array([float((city / "pop1km" / (Path(n).stem + ".txt")).read_text()) for n in index.names])
    key = (index.rows // district_tiles) * (int(index.cols.max()) // district_tiles + 1) + index.cols // district_tiles
    ids = np.unique(key)
    polys = index.polygons()
    geoms = [shapely.union_all(polys[key == k]) for k in ids]
    frame = gpd.GeoDataFrame(
        {"district": [f"D{int(k):03d}" for k in ids], "POP": [int(round(pop[key == k].sum())) for k in ids]},
        geometry=geoms,
        crs=index.crs,
    ).to_crs("EPSG:3857")
    with atomic_path(path) as tmp:
        frame.to_file(tmp, driver="GPKG", layer="census", engine="pyogrio")
    return len(frame)


def write_raw_city(city: str | Path, out: str | Path, district_tiles: int = 3) -> dict:
    """All three raw files of the city ``city`` into ``out``; returns what was written."""
    city, out = Path(city), Path(out)
    out.mkdir(parents=True, exist_ok=True)
    h, w = write_mosaic(city, out / "mosaic.tif")
    return {
        "mosaic_px": [h, w],
        "pois": write_pois(city, out / "pois.gpkg"),
        "districts": write_census(city, out / "census.gpkg", district_tiles),
    }


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description="Write the synthetic city as raw GIS files (mosaic, POIs, census).")
    p.add_argument("--city", required=True, help="a city written by `python -m synthetic.city --out CITY`")
    p.add_argument("--out", required=True, help="folder of mosaic.tif, pois.gpkg and census.gpkg")
    p.add_argument(
        "--district_tiles",
        type=int,
        default=3,
        help="census districts of N x N tiles (default 3: 3 km districts of 1 km tiles)",
    )
    args = p.parse_args(argv)
    if args.district_tiles < 1:
        raise UserError(f"--district_tiles must be at least 1, not {args.district_tiles}")
    done = write_raw_city(args.city, args.out, args.district_tiles)
    print(
        f"{args.out}: mosaic.tif ({done['mosaic_px'][0]} x {done['mosaic_px'][1]} px), pois.gpkg "
        f"({done['pois']} POIs, EPSG:4326), census.gpkg ({done['districts']} districts, EPSG:3857)",
        flush=True,
    )
    return done


if __name__ == "__main__":
    run_main(main)
