"""Cut one large georeferenced raster (GeoTIFF, VRT, any raster GDAL reads) into square PNG tiles.

The grid (docs/real_data.md): square cells of ``tile_size`` ground units of the raster's projected
CRS, anchored at the raster's upper-left corner, numbered row-major (row 0 at the top); a partial cell
at the right or bottom edge is dropped. Each cell is read through a window (rasterio), resampled to
``tile_px`` x ``tile_px`` pixels, scaled to 8 bits with one stretch for the whole mosaic, and written as
``r{row}_c{col}.png`` (zero-padded, so names sort in row-major order). Memory per process is one tile
plus GDAL's block cache, whatever the mosaic's size.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import time
import warnings
import zlib
from dataclasses import dataclass

import numpy as np
import rasterio
from PIL import Image
from pyproj.aoi import AreaOfInterest
from pyproj.database import query_utm_crs_info
from rasterio.enums import MaskFlags, Resampling
from rasterio.errors import NodataShadowWarning, RasterioError, RasterioIOError
from rasterio.warp import transform as warp_transform
from rasterio.windows import Window
from tqdm import tqdm

from prepare.gdal_errors import reason
from prepare.poi_io import crs_name
from utils.errors import UserError
from utils.fileio import atomic_write

__all__ = ["MosaicGrid", "CutResult", "open_mosaic", "parse_bands", "estimate_stretch", "cut_mosaic", "utm_crs_for"]

# GDAL's block cache per process. Its default (5 % of RAM) lets a long cut grow by gigabytes, as the
# cache fills with blocks of rows long done. Tiles are cut left to right, one row of tiles per task, so
# a block is needed again only by the next tile of the same row (when tile edges fall inside blocks):
# a small cache keeps that reuse. 64 MB holds two rows of 256 x 256 blocks of a 40,000 px wide RGB mosaic.
GDAL_CACHE_BYTES = 64 << 20
# zlib settings of the PNG tiles: encoding is most of the CPU cost of a cut. Measured (CPU time per
# 512 px RGB tile, Pillow 13, this project's 2-core machine) on a smooth pattern with Gaussian noise of
# 3 grey levels: Pillow's default (level 6) 73 ms / 408 KiB, level 1 30 ms / 470 KiB, level 1 with
# zlib's run-length strategy (Z_RLE) 26 ms / 407 KiB; with noise of 10 levels 40 / 37 / 25 ms at
# 569 / 593 / 569 KiB; without noise 53 / 14 / 14 ms at 101 / 163 / 156 KiB. PNG's row filters
# already remove what LZ77 matching would find in imagery, so Z_RLE is as small and 1.5-3x faster.
PNG_COMPRESS_LEVEL = 1
PNG_STRATEGY = zlib.Z_RLE
# Windows sampled for the stretch when the raster has no overviews: a 16 x 16 grid of 64 px windows.
_SAMPLE_GRID, _SAMPLE_PX = 16, 64


@dataclass(frozen=True)
class MosaicGrid:
    """The tile grid over one mosaic (all lengths in the mosaic CRS's units).

    Attributes:
        path: the raster file.
        crs: its CRS (``EPSG:n`` or WKT).
        x0, y0: upper-left corner of the raster = of cell (0, 0).
        tile_size: side of a cell in CRS units.
        n_rows, n_cols: whole cells that fit.
        tile_px: side of an output tile in pixels.
        bands: 1-based bands read, 1 or 3 of them.
        px: native pixels per cell side ``(x, y)`` (may be fractional).
        dtype: the raster's data type.
    """

    path: str
    crs: str
    x0: float
    y0: float
    tile_size: float
    n_rows: int
    n_cols: int
    tile_px: int
    bands: tuple[int, ...]
    px: tuple[float, float]
    dtype: str

    def bounds(self, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        """``[N, 4]`` ``(minx, miny, maxx, maxy)`` of cells ``(rows[i], cols[i])``."""
        rows, cols = np.asarray(rows, np.float64), np.asarray(cols, np.float64)
        s = self.tile_size
        return np.stack(
            [self.x0 + cols * s, self.y0 - (rows + 1) * s, self.x0 + (cols + 1) * s, self.y0 - rows * s], axis=1
        )

    def name(self, row: int, col: int) -> str:
        """``r0003_c0012.png``: zero-padded to one width, so that names sort row-major."""
        w = max(4, len(str(max(self.n_rows, self.n_cols) - 1)))
        return f"r{row:0{w}d}_c{col:0{w}d}.png"

    @property
    def extent(self) -> tuple[float, float, float, float]:
        """``(minx, miny, maxx, maxy)`` of the whole grid (the dropped edge cells excluded)."""
        return (self.x0, self.y0 - self.n_rows * self.tile_size, self.x0 + self.n_cols * self.tile_size, self.y0)


@dataclass
class CutResult:
    """Tiles written by :func:`cut_mosaic`, in row-major order."""

    rows: np.ndarray
    cols: np.ndarray
    names: list[str]
    bounds: np.ndarray
    skipped_nodata: int
    seconds: float


def utm_crs_for(lon: float, lat: float) -> tuple[str, str]:
    """``("EPSG:326zz", "WGS 84 / UTM zone zzN")``: the WGS 84 UTM zone of a lon/lat point (pyproj)."""
    lon = float(np.clip(lon, -179.999, 179.999))
    lat = float(np.clip(lat, -79.999, 83.999))
    info = query_utm_crs_info(datum_name="WGS 84", area_of_interest=AreaOfInterest(lon, lat, lon, lat))
    return f"{info[0].auth_name}:{info[0].code}", info[0].name


def parse_bands(text: str | None, count: int, path: str) -> tuple[int, ...]:
    """``"3,2,1"`` -> ``(3, 2, 1)``; None -> the first three bands, or band 1 for a 1- or 2-band raster."""
    if text is None:
        return (1, 2, 3) if count >= 3 else (1,)
    try:
        bands = tuple(int(b) for b in str(text).replace(" ", "").split(",") if b)
    except ValueError:
        raise UserError(
            f"--bands {text!r} is not a list of band numbers; give e.g. --bands 3,2,1 for {path}."
        ) from None
    if len(bands) not in (1, 3):
        raise UserError(
            f"--bands {text!r} names {len(bands)} bands; give 3 (RGB) or 1 (repeated to grey RGB) "
            f"of the {count} bands of {path}."
        )
    bad = [b for b in bands if not 1 <= b <= count]
    if bad:
        raise UserError(
            f"--bands {text!r} is out of range for {path}, which has {count} band"
            f"{'s' if count > 1 else ''} (1..{count}); pick bands from that range."
        )
    return bands


def open_mosaic(path: str, tile_size: float, tile_px: int | None = None, bands: str | None = None) -> MosaicGrid:
    """Check a mosaic and lay the tile grid over it (reads metadata only).

    Raises:
        UserError: missing or unreadable file, no CRS, a geographic CRS (the message names the UTM zone
            of its centre to warp to), a rotated raster, bands out of range, or a mosaic smaller than
            one tile.
    """
    if not os.path.isfile(path):
        raise UserError(f"mosaic {path} does not exist; check --mosaic.")
    if not tile_size or tile_size <= 0:
        raise UserError(f"--tile_size_m must be a positive length in the CRS units of {path}, not {tile_size}.")
    try:
        with rasterio.open(path) as src:
            crs, tr, w, h, count, dtype = src.crs, src.transform, src.width, src.height, src.count, src.dtypes[0]
            lonlat_centre = None
            if crs is not None and crs.is_geographic:
                cx, cy = tr.c + tr.a * w / 2, tr.f + tr.e * h / 2
                lon, lat = warp_transform(crs, "EPSG:4326", [cx], [cy])
                lonlat_centre = (lon[0], lat[0])
    except RasterioIOError as e:
        raise UserError(
            f"cannot read mosaic {path} ({reason(e)}); check that the file is a complete "
            "raster GDAL reads (GeoTIFF, VRT, ...)."
        ) from None
    if crs is None:
        raise UserError(
            f"mosaic {path} has no CRS; assign the one it was made in (e.g. gdal_edit.py -a_srs "
            "EPSG:32651) before tiling it."
        )
    if lonlat_centre is not None:
        code, name = utm_crs_for(*lonlat_centre)
        raise UserError(
            f"mosaic {path} is in a geographic CRS ({crs.to_string()}, degrees) but --tile_size_m needs "
            f"ground units; warp it to a projected CRS first, e.g. {code} ({name}, the zone of its "
            f"centre) with gdalwarp -t_srs {code} or rio warp --dst-crs {code}."
        )
    if tr.b != 0 or tr.d != 0 or tr.a <= 0 or tr.e >= 0:
        raise UserError(f"mosaic {path} is rotated or not north-up; warp it north-up first (gdalwarp).")
    band_tuple = parse_bands(bands, count, path)
    sx, sy = tr.a, -tr.e
    n_cols = int(np.floor(w * sx / tile_size + 1e-9))
    n_rows = int(np.floor(h * sy / tile_size + 1e-9))
    if n_cols == 0 or n_rows == 0:
        raise UserError(
            f"mosaic {path} ({w * sx:g} x {h * sy:g} CRS units) is smaller than one tile of "
            f"--tile_size_m {tile_size:g}; give a smaller tile size."
        )
    px = (tile_size / sx, tile_size / sy)
    if tile_px is None:
        tile_px = int(round(max(px)))  # the finer axis: no detail is lost
    if tile_px < 1:
        raise UserError(f"--tile_px must be at least 1, not {tile_px}.")
    return MosaicGrid(
        path=path,
        crs=crs_name(crs, path),
        x0=tr.c,
        y0=tr.f,
        tile_size=float(tile_size),
        n_rows=n_rows,
        n_cols=n_cols,
        tile_px=int(tile_px),
        bands=band_tuple,
        px=px,
        dtype=dtype,
    )


def _masks_needed(src, bands) -> bool:
    """False when GDAL says every pixel of the bands is valid (no nodata, no mask, no alpha)."""
    return any(src.mask_flag_enums[b - 1] != (MaskFlags.all_valid,) for b in bands)


def _valid(src, bands, data: np.ndarray, need_masks: bool, **read) -> np.ndarray:
    """``[H, W]`` bool: pixels valid in every band (GDAL's masks, and finite for float data)."""
    valid = np.ones(data.shape[1:], dtype=bool)
    if need_masks:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NodataShadowWarning)  # a declared nodata value wins over alpha: fine
            valid &= (src.read_masks(list(bands), **read) > 0).all(axis=0)
    if np.issubdtype(data.dtype, np.floating):
        valid &= np.isfinite(data).all(axis=0)
    return valid


def estimate_stretch(grid: MosaicGrid, percentiles: tuple[float, float] = (2.0, 98.0)) -> np.ndarray | None:
    """One linear 8-bit stretch for the whole mosaic: per band, the 2 % and 98 % percentiles of its values.

    8-bit data is not stretched (None). The values come from the raster's overviews when it has some
    (one read at about 1,000 x 1,000 pixels), else from a 16 x 16 grid of 64 px windows spread over it,
    nodata excluded, so the cost does not grow with the mosaic's size.

    Returns:
        ``[B, 2]`` float64 ``(low, high)`` per band read, or None for 8-bit data.

    Raises:
        UserError: no valid pixel in the sample.
    """
    if grid.dtype == "uint8":
        return None
    bands = list(grid.bands)
    values: list[np.ndarray] = []
    with rasterio.open(grid.path) as src:
        need = _masks_needed(src, bands)
        if src.overviews(bands[0]):
            f = max(1.0, np.sqrt(src.width * src.height / 1e6))
            shape = (len(bands), max(1, int(src.height / f)), max(1, int(src.width / f)))
            data = src.read(bands, out_shape=shape)
            values.append(data[:, _valid(src, bands, data, need, out_shape=shape)])
        else:
            s = min(_SAMPLE_PX, src.width, src.height)
            for i in range(_SAMPLE_GRID):
                for j in range(_SAMPLE_GRID):
                    win = Window(
                        int((j + 0.5) * src.width / _SAMPLE_GRID - s / 2),
                        int((i + 0.5) * src.height / _SAMPLE_GRID - s / 2),
                        s,
                        s,
                    )
                    win = Window(
                        min(max(win.col_off, 0), src.width - s), min(max(win.row_off, 0), src.height - s), s, s
                    )
                    data = src.read(bands, window=win)
                    values.append(data[:, _valid(src, bands, data, need, window=win)])
    v = np.concatenate(values, axis=1).astype(np.float64)
    if v.shape[1] == 0:
        raise UserError(
            f"mosaic {grid.path} has no valid pixel in its sample (all nodata); check its nodata value and bands."
        )
    lo, hi = np.percentile(v, percentiles, axis=1)
    hi = np.where(hi > lo, hi, lo + 1.0)  # a constant band: everything maps to 0
    return np.stack([lo, hi], axis=1)


def to_uint8(data: np.ndarray, stretch: np.ndarray | None) -> np.ndarray:
    """``[B, H, W]`` raster values -> uint8 with the mosaic's stretch (None: already 8-bit)."""
    if stretch is None:
        return data.astype(np.uint8, copy=False)
    lo, hi = stretch[:, 0, None, None], stretch[:, 1, None, None]
    scaled = (data.astype(np.float32) - lo) * (255.0 / (hi - lo))
    return np.rint(np.clip(scaled, 0, 255)).astype(np.uint8)


# Per-process state of a cut (set before the pool forks; each process opens its own dataset).
_CUT: dict = {}


def _open_in_process():
    if "src" not in _CUT:
        env = rasterio.Env(GDAL_CACHEMAX=GDAL_CACHE_BYTES)
        env.__enter__()  # for the life of this process: every read below uses the capped cache
        _CUT["env"] = env
        _CUT["src"] = rasterio.open(_CUT["grid"].path)
        _CUT["need_masks"] = _masks_needed(_CUT["src"], _CUT["grid"].bands)
    return _CUT["src"]


def _cut_row(row: int) -> list[tuple[int, int, bool]]:
    """Write the tiles of grid row ``row``; returns ``(row, col, written)`` per cell."""
    src = _open_in_process()
    g: MosaicGrid = _CUT["grid"]
    p = g.tile_px
    px, py = g.px
    native = abs(px - p) < 1e-6 and abs(py - p) < 1e-6
    # Same size: no resampling. Fewer output pixels: average (anti-aliased). More: bilinear.
    rs = Resampling.nearest if native else (Resampling.average if p < min(px, py) else Resampling.bilinear)
    out = []
    for col in range(g.n_cols):
        win = Window(col * px, row * py, px, py)
        read = dict(window=win, out_shape=(len(g.bands), p, p))
        try:
            data = src.read(list(g.bands), resampling=rs, **read)
            valid = _valid(src, g.bands, data, _CUT["need_masks"], resampling=Resampling.nearest, **read)
        except RasterioError as e:  # a damaged block: the header was fine, the data is not
            raise UserError(
                f"cannot read tile r{row} c{col} of mosaic {g.path} ({reason(e)}); the file is damaged, "
                "copy or export it again."
            ) from None
        if 1.0 - valid.mean() > _CUT["max_nodata"]:
            out.append((row, col, False))
            continue
        img = to_uint8(np.where(valid, data, 0), _CUT["stretch"])
        img[:, ~valid] = 0
        if img.shape[0] == 1:
            img = np.repeat(img, 3, axis=0)
        im = Image.fromarray(np.ascontiguousarray(img.transpose(1, 2, 0)), mode="RGB")
        atomic_write(
            os.path.join(_CUT["out_dir"], g.name(row, col)),
            lambda f, im=im: im.save(f, format="PNG", compress_level=PNG_COMPRESS_LEVEL, compress_type=PNG_STRATEGY),
            durable=False,
        )
        out.append((row, col, True))
    return out


def cut_mosaic(
    grid: MosaicGrid,
    out_dir: str,
    stretch: np.ndarray | None,
    max_nodata: float = 0.5,
    workers: int = 1,
    progress: bool | None = None,
) -> CutResult:
    """Write every cell of ``grid`` with at most ``max_nodata`` nodata as ``out_dir/NAME.png``.

    Args:
        grid: from :func:`open_mosaic`.
        out_dir: existing folder for the PNG tiles.
        stretch: from :func:`estimate_stretch`.
        max_nodata: largest fraction of nodata pixels a written tile may have; others are skipped.
        workers: processes reading and encoding rows of tiles (forked; each opens the raster itself).
        progress: tqdm bar (None: only on a terminal).

    Returns:
        The written tiles, row-major, and the number skipped for nodata.
    """
    t0 = time.time()
    _CUT.clear()
    _CUT.update(grid=grid, out_dir=out_dir, stretch=stretch, max_nodata=float(max_nodata))
    results: list[tuple[int, int, bool]] = []
    bar = tqdm(
        total=grid.n_rows * grid.n_cols, unit="tile", desc="tiles", disable=None if progress is None else not progress
    )
    try:
        if workers > 1 and grid.n_rows > 1:
            with mp.get_context("fork").Pool(min(workers, grid.n_rows)) as pool:
                for r in pool.imap_unordered(_cut_row, range(grid.n_rows)):
                    results.extend(r)
                    bar.update(len(r))
        else:
            for row in range(grid.n_rows):
                r = _cut_row(row)
                results.extend(r)
                bar.update(len(r))
    finally:
        bar.close()
        if "src" in _CUT:
            _CUT["src"].close()
            _CUT["env"].__exit__(None, None, None)
        _CUT.clear()
    results.sort()
    kept = np.array([(r, c) for r, c, ok in results if ok], dtype=np.int64).reshape(-1, 2)
    rows, cols = kept[:, 0], kept[:, 1]
    return CutResult(
        rows=rows,
        cols=cols,
        names=[grid.name(r, c) for r, c in kept.tolist()],
        bounds=grid.bounds(rows, cols),
        skipped_nodata=len(results) - len(kept),
        seconds=time.time() - t0,
    )
