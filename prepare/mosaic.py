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

__all__ = [
    "MosaicGrid",
    "CutResult",
    "MosaicSurvey",
    "open_mosaic",
    "parse_bands",
    "estimate_stretch",
    "survey_mosaic",
    "cut_mosaic",
    "utm_crs_for",
    "MIN_TILE_PX",
]

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
# The smallest side of a written tile, in pixels: below it a tile is too small for a ResNet (whose stem
# alone divides the side by 4), and a city becomes hundreds of thousands of near-empty files (3 m tiles of
# a 5 m mosaic wrote 575,718 PNGs of 1 x 1 px before this rule). A tile must also cover MIN_SOURCE_PX
# pixels of the mosaic, enlarged or not: fewer is a handful of pixels blown up (30 m Landsat pixels in
# 300 m tiles, 10.5 px enlarged to 64, are fine).
MIN_TILE_PX = 16
MIN_SOURCE_PX = 4


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
        count: bands of the raster.
        band_names: what the raster says each band of ``bands`` is (its description, else its colour
            interpretation when that names a colour), '' where it says nothing.
        bands_default: True when ``bands`` is the default (no --bands).
        nodata: a nodata value given by the user (--nodata), used instead of the file's own; None: the
            file's masks as GDAL reads them.
        res: the raster's pixel size ``(x, y)`` in CRS units.
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
    count: int = 1
    band_names: tuple[str, ...] = ()
    bands_default: bool = True
    nodata: float | None = None
    res: tuple[float, float] = (1.0, 1.0)

    @property
    def source(self) -> str:
        """What rasterio opens: the file, or with ``nodata`` set a GDAL ``vrt://`` view of it that declares
        that nodata value for every band (GDAL >= 3.7), so masks, resampling and overviews all honour it
        without the file being edited."""
        if self.nodata is None:
            return self.path
        return f"vrt://{os.path.abspath(self.path)}?a_nodata={self.nodata:.17g}"

    def describe_bands(self) -> str:
        """``'bands 1,2,3 of 6 as R,G,B (the default: the first three)'``, with the bands' names where the
        raster gives them (``'bands 1,2,3 (red, green, blue)'``)."""
        used = ",".join(map(str, self.bands))
        role = "as R,G,B" if len(self.bands) == 3 else "repeated to grey RGB"
        names = f" ({', '.join(n or '?' for n in self.band_names)})" if any(self.band_names) else ""
        text = f"band{'s' if len(self.bands) > 1 else ''} {used}{names} of {self.count} {role}"
        if self.bands_default and self.count > 1:
            text += " (default; --bands picks others, e.g. 3,2,1 where bands 1-3 are blue, green, red)"
        return text

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
    flat: int = 0  # written tiles of one colour throughout (fill no nodata marks, or a featureless scene)


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


def _band_name(description: str | None, colour) -> str:
    """A band's name: its description, else its colour interpretation when that names a colour."""
    if description:
        return str(description)
    name = getattr(colour, "name", "")
    return name if name in ("red", "green", "blue", "alpha") else ""


def _check_nodata(nodata: float | None, dtype: str, path: str) -> None:
    """--nodata must be a value the raster's data type can hold (a nodata outside it marks nothing)."""
    if nodata is None:
        return
    if "?" in path:
        raise UserError(
            f"--nodata cannot be applied to {path}, whose name holds a '?'; rename the file or set its "
            "nodata tag (gdal_edit.py -a_nodata)."
        )
    if np.issubdtype(np.dtype(dtype), np.integer):
        info = np.iinfo(np.dtype(dtype))
        if not (np.isfinite(nodata) and info.min <= nodata <= info.max and float(nodata).is_integer()):
            raise UserError(
                f"--nodata {nodata:g} is not a {dtype} value, the data type of mosaic {path}; give an integer "
                f"in [{info.min}, {info.max}], e.g. --nodata 0."
            )


def open_mosaic(
    path: str,
    tile_size: float,
    tile_px: int | None = None,
    bands: str | None = None,
    nodata: float | None = None,
) -> MosaicGrid:
    """Check a mosaic and lay the tile grid over it (reads metadata only).

    Args:
        nodata: a nodata value for every band, instead of the file's own tag (``--nodata``).

    Raises:
        UserError: missing or unreadable file, no CRS, a geographic CRS (the message names the UTM zone
            of its centre to warp to), a rotated raster, bands out of range, a mosaic smaller than one
            tile, a tile under :data:`MIN_TILE_PX` pixels, or a ``nodata`` the data type cannot hold.
    """
    if not os.path.isfile(path):
        raise UserError(f"mosaic {path} does not exist; check --mosaic.")
    if not tile_size or tile_size <= 0:
        raise UserError(f"--tile_size_m must be a positive length in the CRS units of {path}, not {tile_size}.")
    try:
        with rasterio.open(path) as src:
            crs, tr, w, h, count, dtype = src.crs, src.transform, src.width, src.height, src.count, src.dtypes[0]
            descriptions, colours = src.descriptions, src.colorinterp
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
    _check_nodata(nodata, dtype, path)
    sx, sy = tr.a, -tr.e
    n_cols = int(np.floor(w * sx / tile_size + 1e-9))
    n_rows = int(np.floor(h * sy / tile_size + 1e-9))
    if n_cols == 0 or n_rows == 0:
        raise UserError(
            f"mosaic {path} ({w * sx:g} x {h * sy:g} CRS units) is smaller than one tile of "
            f"--tile_size_m {tile_size:g}; give a smaller tile size."
        )
    px = (tile_size / sx, tile_size / sy)
    if max(px) < MIN_SOURCE_PX - 1e-6:
        raise UserError(
            f"a tile of --tile_size_m {tile_size:g} is {max(px):.3g} px of mosaic {path}, whose pixels are "
            f"{min(sx, sy):g} CRS units; a tile must cover at least {MIN_SOURCE_PX} px of the mosaic, so give "
            f"--tile_size_m {MIN_SOURCE_PX * min(sx, sy):g} or more (and at least {MIN_TILE_PX} px with --tile_px)."
        )
    if tile_px is None:
        tile_px = int(round(max(px)))  # the finer axis: no detail is lost
        if tile_px < MIN_TILE_PX:
            raise UserError(
                f"a tile of --tile_size_m {tile_size:g} is {max(px):.3g} px of mosaic {path}, under the "
                f"{MIN_TILE_PX} px a tile needs; give --tile_size_m {MIN_TILE_PX * min(sx, sy):g} or more, or "
                f"--tile_px {MIN_TILE_PX} or more to enlarge the tiles."
            )
    if tile_px < MIN_TILE_PX:
        raise UserError(
            f"--tile_px {tile_px} is under the {MIN_TILE_PX} px a tile needs; give --tile_px {MIN_TILE_PX} or "
            f"more, or leave it out (the native size of these tiles is {max(px):.3g} px)."
        )
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
        count=count,
        band_names=tuple(_band_name(descriptions[b - 1], colours[b - 1]) for b in band_tuple),
        bands_default=bands is None,
        nodata=None if nodata is None else float(nodata),
        res=(float(sx), float(sy)),
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


@dataclass(frozen=True)
class MosaicSurvey:
    """What a sample of the mosaic's valid pixels says (:func:`survey_mosaic`).

    Attributes:
        stretch: ``[B, 2]`` float64 ``(low, high)`` per band read, or None for 8-bit data.
        low: ``[B]`` the 2 % percentile of each band (the stretch's lower bound, also for 8-bit data).
        fill_value: the value suspected of being unmarked fill, or None: the type's minimum or 0 when it
            is the low end of every band read (at least 2 % of the pixels hold it in every band).
        fill_fraction: the fraction of the sampled pixels that hold ``fill_value`` in every band read.
        declared_nodata: the nodata of the file (or of --nodata), None when it declares none.
    """

    stretch: np.ndarray | None
    low: np.ndarray
    fill_value: float | None = None
    fill_fraction: float = 0.0
    declared_nodata: float | None = None


def _sample(grid: MosaicGrid) -> tuple[np.ndarray, float | None]:
    """``([B, N] float64 valid values of the bands read, the nodata in force)`` from the raster's overviews
    when it has some (one read at about 1,000 x 1,000 pixels), else from a 16 x 16 grid of 64 px windows
    spread over it, nodata excluded, so the cost does not grow with the mosaic's size."""
    bands = list(grid.bands)
    values: list[np.ndarray] = []
    with rasterio.open(grid.source) as src:
        need = _masks_needed(src, bands)
        nodata = src.nodata
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
    return np.concatenate(values, axis=1).astype(np.float64), nodata


def survey_mosaic(grid: MosaicGrid, percentiles: tuple[float, float] = (2.0, 98.0)) -> MosaicSurvey:
    """One linear 8-bit stretch for the whole mosaic, and a check for fill that no nodata marks.

    The stretch: per band, the 2 % and 98 % percentiles of its valid values (8-bit data is not
    stretched: None). Unmarked fill: a scene's zero-filled edge without a nodata tag counts as valid, so
    it drags the stretch's lower bound to 0 (a Landsat-8 scene with 16.5 % fill: ``[0, 8567]`` instead of
    ``[7412, 8622]``, every tile washed out) and its tiles are kept as real ones. When the lower bound of
    every band read equals the type's minimum or 0, that value is reported with the fraction of pixels
    holding it, for a warning that names ``--nodata`` (docs/real_data.md, "Nodata").

    Raises:
        UserError: no valid pixel in the sample.
    """
    try:
        v, nodata = _sample(grid)
    except RasterioError as e:  # a damaged block: the header was fine, the data is not
        raise UserError(
            f"cannot read mosaic {grid.path} ({reason(e)}); the file is damaged, copy or export it again."
        ) from None
    if v.shape[1] == 0:
        raise UserError(
            f"mosaic {grid.path} has no valid pixel in its sample (all nodata); check its nodata value and bands."
        )
    lo, hi = np.percentile(v, percentiles, axis=1)
    fill, fraction = None, 0.0
    dtype = np.dtype(grid.dtype)
    lowest = float(np.iinfo(dtype).min) if np.issubdtype(dtype, np.integer) else float(np.finfo(dtype).min)
    for candidate in dict.fromkeys((lowest, 0.0)):
        if np.all(lo == candidate):
            fill, fraction = candidate, float(np.mean(np.all(v == candidate, axis=0)))
            break
    stretch = None
    if grid.dtype != "uint8":
        hi = np.where(hi > lo, hi, lo + 1.0)  # a constant band: everything maps to 0
        stretch = np.stack([lo, hi], axis=1)
    return MosaicSurvey(stretch, lo, fill, fraction, None if nodata is None else float(nodata))


def estimate_stretch(grid: MosaicGrid, percentiles: tuple[float, float] = (2.0, 98.0)) -> np.ndarray | None:
    """The stretch of :func:`survey_mosaic`: ``[B, 2]`` float64 ``(low, high)`` per band read, or None for
    8-bit data."""
    return survey_mosaic(grid, percentiles).stretch


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
        _CUT["src"] = rasterio.open(_CUT["grid"].source)
        _CUT["need_masks"] = _masks_needed(_CUT["src"], _CUT["grid"].bands)
    return _CUT["src"]


def _cut_row(row: int) -> list[tuple[int, int, bool, bool]]:
    """Write the tiles of grid row ``row``; returns ``(row, col, written, flat)`` per cell, ``flat`` when a
    written tile is one colour (all fill, say)."""
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
            out.append((row, col, False, False))
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
        out.append((row, col, True, bool(img.min() == img.max())))
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
    results: list[tuple[int, int, bool, bool]] = []
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
    kept = np.array([(r, c) for r, c, ok, _ in results if ok], dtype=np.int64).reshape(-1, 2)
    rows, cols = kept[:, 0], kept[:, 1]
    return CutResult(
        rows=rows,
        cols=cols,
        names=[grid.name(r, c) for r, c in kept.tolist()],
        bounds=grid.bounds(rows, cols),
        skipped_nodata=len(results) - len(kept),
        seconds=time.time() - t0,
        flat=sum(flat for *_, flat in results),
    )
