"""Small GIS files for the tests, written with rasterio and geopandas, and the real fixture files' paths."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import rasterio
from rasterio.transform import from_origin

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
HELSINKI_PBF = FIXTURES / "helsinki.osm.pbf"
LANDSAT_CROP = FIXTURES / "lc08_fill_crop.tif"  # 128 x 128 px of a Landsat-8 scene's top edge, zero fill untagged
LANDCOVER = FIXTURES / "lc08_landcover.fgb"  # 4 land-cover polygons (class column 'name') over that scene


def write_raster(
    path,
    array: np.ndarray,
    crs: str | None,
    origin: tuple[float, float],
    res: float,
    nodata=None,
    tiled: bool = False,
    **extra,
) -> Path:
    """Write ``array`` (``[H, W]`` or ``[B, H, W]``) as a GeoTIFF with upper-left corner ``origin``."""
    a = array[None] if array.ndim == 2 else array
    profile = dict(
        driver="GTiff",
        width=a.shape[2],
        height=a.shape[1],
        count=a.shape[0],
        dtype=a.dtype,
        crs=crs,
        transform=from_origin(origin[0], origin[1], res, res),
        nodata=nodata,
        **extra,
    )
    if tiled:
        profile.update(tiled=True, blockxsize=16, blockysize=16, compress="deflate")
    with rasterio.open(path, "w", **profile) as ds:
        ds.write(a)
    return Path(path)


def grid_bounds(x0: float, y1: float, size: float, n_rows: int, n_cols: int) -> np.ndarray:
    """``[n_rows * n_cols, 4]`` bounds of a row-major grid of squares anchored at upper-left ``(x0, y1)``."""
    r, c = np.divmod(np.arange(n_rows * n_cols), n_cols)
    return np.stack([x0 + c * size, y1 - (r + 1) * size, x0 + (c + 1) * size, y1 - r * size], axis=1).astype(float)
