"""Per-tile downstream targets from census polygons or a population raster (docs/real_data.md).

``--target NAME=FILE[:COLUMN]`` gives one target; its values are written as the published
``NAME/STEM.txt`` (one number per tile, or K shares on one line). Three kinds of source, all reprojected
to the tiles' CRS first:

- **polygons with a count column** (census units): each polygon's count is shared among the tiles by
  the fraction of the polygon's area inside each tile, i.e. people are assumed to be spread evenly
  within a polygon. Intersections are computed with shapely 2 over an STRtree of the tiles.
- **polygons with a class column** (land cover, land use: a text column): each tile gets the share of
  its covered area under each class, K shares on one line, and ``NAME_types.txt`` names the K classes
  (the layout ``res_func.py`` reads).
- **a raster of counts per pixel** (WorldPop-style): a tile gets the sum of the pixels inside it, a
  pixel cut by the tile's edge counted by the fraction of its area inside. In the raster's own CRS the
  fractions are exact and separable (x overlap times y overlap); a raster in another CRS is first
  resampled onto a grid in the tiles' CRS (area-weighted mean x source pixels per grid pixel, which
  keeps totals).

A tile less than ``min_coverage`` covered by polygons with a count or a class, or by valid pixels, gets
no value (NaN here; no file, and it stays out of the train/val lists). Polygons that cannot take part
(no geometry, not a polygon, invalid beyond repair, no count or class) are counted, with the count they
carry, in :attr:`Target.dropped`.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import rasterio
import shapely
from pyproj import Transformer
from rasterio.errors import RasterioError, RasterioIOError
from rasterio.transform import Affine, from_origin
from rasterio.warp import Resampling, calculate_default_transform, reproject, transform_bounds
from rasterio.windows import Window
from tqdm import tqdm

from prepare.gdal_errors import reason
from prepare.geometry import repair_polygons
from prepare.poi_io import crs_name, crs_object, extent_overlaps, format_extent, read_vector, same_crs
from utils.errors import UserError
from utils.fileio import atomic_write_text

__all__ = [
    "TargetSpec",
    "Target",
    "parse_target",
    "open_target",
    "polygon_shares",
    "class_shares",
    "raster_sums",
    "compute_target",
    "write_values",
    "write_types",
    "dropped_summary",
    "types_file",
    "RASTER_EXTS",
    "MAX_CLASSES",
]

# Files read as rasters; anything else is read as a vector file.
RASTER_EXTS = (".tif", ".tiff", ".vrt", ".img", ".asc", ".nc", ".jp2", ".bil", ".hdr", ".dem", ".sdat")
# More distinct texts than this in a class column: an identifier or a name column, not classes.
MAX_CLASSES = 100


@dataclass(frozen=True)
class TargetSpec:
    """One ``--target NAME=FILE[:COLUMN]``: the output folder name, the file, the count column or band."""

    name: str
    path: str
    column: str | None


@dataclass
class Target:
    """A checked target source, ready to allocate (from :func:`open_target`).

    For polygons: ``polygons`` ``[P]`` shapely geometries in the tiles' CRS (None where dropped) and
    ``counts`` ``[P]`` float64 (NaN = no count). For classes: also ``codes`` ``[P]`` int64 (each polygon's
    row of ``classes``, -1 = dropped) and ``classes`` ``[K]``. For rasters: ``band`` (1-based).
    ``extent`` is in the tiles' CRS. ``dropped``: polygons left out and why (:func:`_open_polygons`).
    """

    spec: TargetSpec
    kind: str  # "polygons" (counts), "classes" (area shares) or "raster"
    extent: tuple[float, float, float, float]
    polygons: np.ndarray | None = None
    counts: np.ndarray | None = None
    band: int = 1
    codes: np.ndarray | None = None
    classes: tuple[str, ...] = ()
    dropped: dict = field(default_factory=dict)


def parse_target(text: str, reserved: tuple[str, ...] = ()) -> TargetSpec:
    """``"pop1km=census.gpkg:POP"`` -> ``TargetSpec("pop1km", "census.gpkg", "POP")``.

    ``:COLUMN`` is split off the right end only when the whole text after ``=`` is not an existing file
    (so paths containing ``:`` still work). For a raster, COLUMN is the band number (default 1).
    """
    name, sep, rest = text.partition("=")
    name = name.strip()
    if not sep or not name or not rest:
        raise UserError(f"--target {text!r} is not NAME=FILE[:COLUMN]; give e.g. --target pop1km=census.gpkg:POP.")
    if os.sep in name or "/" in name or name.startswith(".") or name in reserved:
        raise UserError(
            f"--target name {name!r} cannot be used as a folder name of the output; pick a plain name such as pop1km."
        )
    path, column = rest, None
    if not os.path.exists(rest) and ":" in rest:
        path, column = rest.rsplit(":", 1)
        column = column.strip() or None
    return TargetSpec(name=name, path=path, column=column)


def _is_raster(path: str) -> bool:
    return os.path.splitext(path)[1].lower() in RASTER_EXTS


def open_target(spec: TargetSpec, tiles_crs: str | None, tiles_extent) -> Target:
    """Read and check one target source; polygons are loaded and reprojected, rasters only opened.

    Raises:
        UserError: missing or unreadable file, no CRS, a missing or non-numeric count column, a band out
            of range, or an extent that does not overlap the tiles (both extents printed in the tiles' CRS).
    """
    if not os.path.isfile(spec.path):
        raise UserError(f"target file {spec.path} does not exist; check --target {spec.name}=...")
    if tiles_crs is None:
        raise UserError(f"the tiles have no CRS, so target {spec.path} cannot be placed on them; give --tile_crs.")
    if _is_raster(spec.path):
        target = _open_raster(spec, tiles_crs)
    else:
        target = _open_polygons(spec, tiles_crs)
    if not extent_overlaps(target.extent, tiles_extent):
        raise UserError(
            f"target {spec.path} does not overlap the tiles: its extent is {format_extent(target.extent)}"
            f", the tiles' is {format_extent(tiles_extent)} (both in {_short(tiles_crs)}); check both "
            "files' CRS."
        )
    return target


def _short(crs: str) -> str:
    return crs if len(crs) < 40 else crs_object(crs, "the tiles").name


def _open_raster(spec: TargetSpec, tiles_crs: str) -> Target:
    try:
        band = int(spec.column) if spec.column else 1
    except ValueError:
        raise UserError(
            f"target raster {spec.path} takes a band number after ':', not {spec.column!r}; "
            f"give e.g. --target {spec.name}={spec.path}:1."
        ) from None
    try:
        with rasterio.open(spec.path) as src:
            crs, bounds, count = src.crs, src.bounds, src.count
            if crs is not None:
                extent = transform_bounds(crs, crs_object(tiles_crs, "the tiles").to_wkt(), *bounds)
    except RasterioIOError as e:
        raise UserError(
            f"cannot read target raster {spec.path} ({reason(e)}); check that the file is "
            "complete and a raster GDAL reads."
        ) from None
    if crs is None:
        raise UserError(
            f"target raster {spec.path} has no CRS; assign the one it was made in (e.g. gdal_edit.py -a_srs EPSG:4326)."
        )
    if not 1 <= band <= count:
        raise UserError(
            f"band {band} is out of range for target raster {spec.path}, which has {count} band(s); "
            f"give --target {spec.name}={spec.path}:1."
        )
    return Target(spec=spec, kind="raster", extent=tuple(extent), band=band)


def _open_polygons(spec: TargetSpec, tiles_crs: str) -> Target:
    """Census polygons with a count column, or land-cover polygons with a class (text) column."""
    if spec.column is None:
        raise UserError(
            f"target {spec.path} is a vector file and needs its count or class column: "
            f"--target {spec.name}={spec.path}:COLUMN."
        )
    df = read_vector(spec.path, None, [spec.column])
    if df.crs is None:
        raise UserError(
            f"target {spec.path} has no CRS; assign the one it was made in (e.g. ogr2ogr -a_srs "
            "EPSG:4326) so it can be placed on the tiles."
        )
    counts, codes, classes = _column_values(spec, df[spec.column])
    geoms = df.geometry
    if not same_crs(crs_name(df.crs, spec.path), tiles_crs, spec.path, "the tiles"):
        geoms = geoms.to_crs(crs_object(tiles_crs, "the tiles"))
    polys, dropped = _usable_polygons(geoms.to_numpy(), np.isfinite(counts) if codes is None else codes >= 0)
    usable = ~shapely.is_missing(polys)
    if codes is None:
        dropped["count_in_file"] = float(np.nansum(counts))
        dropped["count_in_dropped_polygons"] = float(np.nansum(np.where(usable, 0.0, counts)))
        counts = np.where(usable, counts, np.nan)
    else:
        codes = np.where(usable, codes, -1)
    if not usable.any():
        raise UserError(
            f"target {spec.path} holds no usable polygon with a value in {spec.column!r} ({_dropped_text(dropped)}); "
            "give census units or land-cover areas as polygons."
        )
    extent = tuple(shapely.total_bounds(polys[usable]))
    if codes is None:
        return Target(spec=spec, kind="polygons", extent=extent, polygons=polys, counts=counts, dropped=dropped)
    return Target(
        spec=spec, kind="classes", extent=extent, polygons=polys, codes=codes, classes=classes, dropped=dropped
    )


def _column_values(spec: TargetSpec, col: pd.Series) -> tuple[np.ndarray, np.ndarray | None, tuple[str, ...]]:
    """``(counts [P], None, ())`` for a count column (numbers, or text that is all numbers), or
    ``(NaN [P], codes [P], classes)`` for a class column (text that is never a number; -1 = empty).

    Raises:
        UserError: a column that mixes numbers and texts, or holds more than :data:`MAX_CLASSES` texts.
    """
    text = col.astype(str).str.strip().where(col.notna(), "")
    present = text != ""
    counts = pd.to_numeric(col, errors="coerce")
    numeric = counts.notna()
    if not present.any():
        raise UserError(
            f"column {spec.column!r} of target {spec.path} is empty; pick the column that holds the values."
        )
    if numeric[present].all():
        return counts.to_numpy(np.float64), None, ()
    if numeric[present].any():
        bad = text[present & ~numeric].iloc[0]
        raise UserError(
            f"column {spec.column!r} of target {spec.path} mixes numbers and texts (e.g. {bad!r}); a count column "
            "holds numbers only, a class column texts only: fix the column or pick another."
        )
    classes = tuple(sorted(set(text[present])))
    if len(classes) > MAX_CLASSES:
        raise UserError(
            f"column {spec.column!r} of target {spec.path} holds {len(classes)} different texts, more than the "
            f"{MAX_CLASSES} classes a class column may have (is it a name or an id?); pick the column of land-cover "
            "or land-use classes, or of counts."
        )
    pos = {c: k for k, c in enumerate(classes)}
    codes = np.array([pos.get(t, -1) for t in text], dtype=np.int64)
    return np.full(len(col), np.nan), codes, classes


def _usable_polygons(geoms: np.ndarray, has_value: np.ndarray) -> tuple[np.ndarray, dict]:
    """``[P]`` polygons with positive area and a value (None where not), and the count of each reason to
    drop one.

    Null or empty geometries and non-polygons are dropped; an invalid polygon (e.g. a self-intersecting
    ring) is repaired with shapely's ``make_valid`` and keeps its polygonal part when that has an area,
    else it is dropped; a polygon without a value (``has_value`` ``[P]`` False) is dropped.
    """
    geoms = np.asarray(geoms, dtype=object)
    kind = shapely.get_type_id(geoms)
    null = shapely.is_missing(geoms) | (kind < 0) | shapely.is_empty(geoms)
    areal = ~null & ((kind == 3) | (kind == 6))  # Polygon, MultiPolygon
    not_polygon = ~null & ~areal
    out, invalid = repair_polygons(np.where(areal, geoms, None))
    no_area = areal & (shapely.is_missing(out) | (shapely.area(out) <= 0))
    no_value = areal & ~no_area & ~np.asarray(has_value, bool)
    keep = areal & ~no_area & ~no_value
    dropped = {
        "polygons_in_file": int(len(geoms)),
        "polygons_used": int(keep.sum()),
        "null_or_empty_geometry": int(null.sum()),
        "not_a_polygon": int(not_polygon.sum()),
        "invalid_repaired": int((invalid & ~no_area).sum()),
        "invalid_or_without_area_dropped": int(no_area.sum()),
        "without_value": int(no_value.sum()),
    }
    return np.where(keep, out, None), dropped


def _dropped_text(d: dict) -> str:
    """``'2 with a null or empty geometry, 1 invalid'``: the reasons of :func:`_usable_polygons` that occurred."""
    words = {
        "null_or_empty_geometry": "with a null or empty geometry",
        "not_a_polygon": "not polygons",
        "invalid_or_without_area_dropped": "invalid beyond repair or without area",
        "without_value": "without a value",
    }
    parts = [f"{d[k]} {w}" for k, w in words.items() if d.get(k)]
    return ", ".join(parts) if parts else "none dropped"


def dropped_summary(target: Target) -> str:
    """One phrase for the log: how many polygons were used, dropped and repaired, and the count they carry."""
    d = target.dropped
    if not d:
        return ""
    text = f"{d['polygons_used']} of {d['polygons_in_file']} polygons used"
    lost = _dropped_text(d)
    if lost != "none dropped":
        text += f"; dropped: {lost}"
    if d.get("invalid_repaired"):
        text += f"; {d['invalid_repaired']} invalid repaired (make_valid)"
    if d.get("count_in_dropped_polygons"):
        text += f"; {d['count_in_dropped_polygons']:.6g} of the file's {d['count_in_file']:.6g} are in dropped polygons"
    return text


def _overlaps(polygons: np.ndarray, bounds: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Every (polygon, tile) pair that overlaps and the area they share.

    Args:
        polygons: ``[P]`` shapely polygons of positive area; bounds: ``[T, 4]`` tiles, same CRS.

    Returns:
        ``(pi [M], ti [M], area of pi & ti [M], tile areas [T])``. An STRtree of the tiles finds the pairs;
        tiles wholly inside their polygon (most of them in dense census data) need no intersection.
    """
    boxes = shapely.box(bounds[:, 0], bounds[:, 1], bounds[:, 2], bounds[:, 3])
    tile_area = shapely.area(boxes)
    pi, ti = shapely.STRtree(boxes).query(polygons, predicate="intersects")
    inside = shapely.contains_properly(polygons[pi], boxes[ti])
    inter = np.where(inside, tile_area[ti], 0.0)
    cut = np.flatnonzero(~inside)
    shapely.prepare(polygons)
    inter[cut] = shapely.area(shapely.intersection(polygons[pi[cut]], boxes[ti[cut]]))
    return pi, ti, inter, tile_area


def polygon_shares(polygons: np.ndarray, counts: np.ndarray, bounds: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Share each polygon's count among tiles by area, and measure how much of each tile polygons cover.

    Args:
        polygons: ``[P]`` shapely polygons (None / NaN count = skipped).
        counts: ``[P]`` float64 count of each polygon.
        bounds: ``[T, 4]`` tile ``(minx, miny, maxx, maxy)``, same CRS.

    Returns:
        ``(values [T], coverage [T])``: ``sum_p counts[p] * area(p & tile) / area(p)`` and
        ``sum_p area(p & tile) / area(tile)`` (clipped to 1; polygons are assumed not to overlap).
    """
    t = bounds.shape[0]
    ok = np.flatnonzero(np.isfinite(counts) & ~shapely.is_missing(polygons))
    polys, cnt = polygons[ok], counts[ok]
    area = shapely.area(polys)
    pos = area > 0
    polys, cnt, area = polys[pos], cnt[pos], area[pos]
    pi, ti, inter, tile_area = _overlaps(polys, bounds)
    values = np.bincount(ti, cnt[pi] * inter / area[pi], minlength=t)
    coverage = np.minimum(np.bincount(ti, inter, minlength=t) / tile_area, 1.0)
    return values, coverage


def class_shares(
    polygons: np.ndarray, codes: np.ndarray, n_classes: int, bounds: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """The share of each tile's covered area under each class, and how much of each tile polygons cover.

    Args:
        polygons: ``[P]`` shapely polygons (None or code -1 = skipped).
        codes: ``[P]`` int64 class of each polygon in ``0..n_classes-1``.
        bounds: ``[T, 4]`` tile ``(minx, miny, maxx, maxy)``, same CRS.

    Returns:
        ``(shares [T, K], coverage [T])``: ``area(class k & tile) / area(polygons & tile)`` (rows sum to 1;
        NaN rows for tiles no polygon touches) and ``area(polygons & tile) / area(tile)`` clipped to 1.
    """
    t = bounds.shape[0]
    ok = np.flatnonzero((codes >= 0) & ~shapely.is_missing(polygons))
    ok = ok[shapely.area(polygons[ok]) > 0]
    pi, ti, inter, tile_area = _overlaps(polygons[ok], bounds)
    area = np.bincount(ti * n_classes + codes[ok][pi], inter, minlength=t * n_classes).reshape(t, n_classes)
    covered = area.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        shares = np.where(covered[:, None] > 0, area / covered[:, None], np.nan)
    return shares, np.minimum(covered / tile_area, 1.0)


def _axis_weights(lo: float, hi: float, start: int, n: int) -> np.ndarray:
    """``[n]``: overlap of pixel ``start + j`` (the unit interval ``[start + j, start + j + 1]``) with
    ``[lo, hi]``, in fractional pixel coordinates."""
    j = start + np.arange(n, dtype=np.float64)
    return np.clip(np.minimum(j + 1, hi) - np.maximum(j, lo), 0.0, 1.0)


def _tile_sums(v: np.ndarray, valid: np.ndarray, row_lo: int, col_lo: int, c0, c1, r0, r1):
    """``(sums [K], valid pixel areas in pixels [K])`` of tiles ``[c0, c1] x [r0, r1]`` (fractional pixel
    coordinates) over a strip ``v`` ``[h, w]`` whose top-left pixel is ``(row_lo, col_lo)``.

    Each tile touches only its own pixels, so the cost is that of its window (``wy @ window @ wx``).
    """
    h, w = v.shape
    sums, areas = np.zeros(len(c0)), np.zeros(len(c0))
    cs = np.clip(np.floor(c0).astype(np.int64) - col_lo, 0, w)
    ce = np.clip(np.ceil(c1).astype(np.int64) - col_lo, 0, w)
    rs = np.clip(np.floor(r0).astype(np.int64) - row_lo, 0, h)
    re = np.clip(np.ceil(r1).astype(np.int64) - row_lo, 0, h)
    for k in range(len(c0)):
        if ce[k] <= cs[k] or re[k] <= rs[k]:
            continue
        wx = _axis_weights(c0[k], c1[k], col_lo + cs[k], ce[k] - cs[k])
        wy = _axis_weights(r0[k], r1[k], row_lo + rs[k], re[k] - rs[k])
        sums[k] = wy @ v[rs[k] : re[k], cs[k] : ce[k]] @ wx
        areas[k] = wy @ valid[rs[k] : re[k], cs[k] : ce[k]] @ wx
    return sums, areas


def raster_sums(
    path: str,
    band: int,
    bounds: np.ndarray,
    tiles_crs: str,
    rows: np.ndarray | None = None,
    progress: bool | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Sum of the pixels of ``band`` inside each tile, and the fraction of each tile covered by valid pixels.

    A pixel cut by a tile's edge counts by the fraction of its area inside the tile: in pixel
    coordinates the tile is a rectangle and pixel ``(i, j)`` overlaps it by ``wy[i] * wx[j]``, so the
    tile's sum is ``wy @ V @ wx`` (exact). A raster in another CRS (or rotated) is first resampled onto a
    grid in the tiles' CRS, pixels about the source's size and a whole number per tile, strip by strip
    (:func:`_warp_strip`). Tiles are processed in strips of one grid row (``rows``), cut into chunks of
    at most ~4,096 px, one windowed read each, so memory does not grow with the raster.

    Args:
        path: the raster; band: 1-based band.
        bounds: ``[T, 4]`` tiles in ``tiles_crs``.
        rows: ``[T]`` grid row of each tile (tiles of a row share one read); None = one read per tile.

    Returns:
        ``(values [T], coverage [T])`` float64.
    """
    t = bounds.shape[0]
    values, valid_area = np.zeros(t), np.zeros(t)
    with rasterio.open(path) as src:
        same = same_crs(crs_name(src.crs, path), tiles_crs, path, "the tiles")
        north_up = src.transform.b == 0 and src.transform.d == 0 and src.transform.e < 0
        if same and north_up:
            tr, width, height = src.transform, src.width, src.height
            n_src = None
        else:
            dst_crs = crs_object(tiles_crs, "the tiles")
            tr, width, height = _warp_grid(src, dst_crs.to_wkt(), bounds)
            n_src = _source_pixels_per_pixel(src, dst_crs, tr, bounds)
        px_area = abs(tr.a * tr.e)
        # Fractional pixel coordinates of every tile: columns from x, rows from y (top down).
        c0, c1 = (bounds[:, 0] - tr.c) / tr.a, (bounds[:, 2] - tr.c) / tr.a
        r0, r1 = (bounds[:, 3] - tr.f) / tr.e, (bounds[:, 1] - tr.f) / tr.e
        groups = _groups(rows if rows is not None else np.arange(t), c0, c1)
        bar = tqdm(
            groups,
            desc=f"sums {os.path.basename(path)}",
            unit="strip",
            disable=None if progress is None else not progress,
        )
        for idx in bar:
            col_lo = int(np.clip(np.floor(c0[idx].min()), 0, width))
            col_hi = int(np.clip(np.ceil(c1[idx].max()), 0, width))
            row_lo = int(np.clip(np.floor(r0[idx].min()), 0, height))
            row_hi = int(np.clip(np.ceil(r1[idx].max()), 0, height))
            if col_hi <= col_lo or row_hi <= row_lo:
                continue  # the strip lies outside the raster (grid): no value, no coverage
            try:
                if n_src is None:
                    v, valid = _read_strip(src, band, col_lo, row_lo, col_hi, row_hi)
                else:
                    v, valid = _warp_strip(src, band, dst_crs, tr, col_lo, row_lo, col_hi, row_hi)
            except RasterioError as e:  # a damaged block
                raise UserError(
                    f"cannot read target raster {path} ({reason(e)}); the file is damaged, copy or export it again."
                ) from None
            sums, areas = _tile_sums(v, valid, row_lo, col_lo, c0[idx], c1[idx], r0[idx], r1[idx])
            values[idx], valid_area[idx] = sums * (1.0 if n_src is None else n_src[idx]), areas * px_area
    tile_area = (bounds[:, 2] - bounds[:, 0]) * (bounds[:, 3] - bounds[:, 1])
    return values, np.minimum(valid_area / tile_area, 1.0)


def _read_strip(src, band: int, col_lo: int, row_lo: int, col_hi: int, row_hi: int):
    """``(values, valid)`` ``[h, w]`` float64 of a window of the raster itself; invalid pixels hold 0."""
    data = src.read(band, window=Window(col_lo, row_lo, col_hi - col_lo, row_hi - row_lo), masked=True)
    data = data.astype(np.float64)
    valid = ~np.ma.getmaskarray(data) & np.isfinite(data.filled(np.nan))
    return np.where(valid, data.filled(0.0), 0.0), valid.astype(np.float64)


def _warp_strip(src, band: int, dst_crs, tr, col_lo: int, row_lo: int, col_hi: int, row_hi: int):
    """``(mean value, valid fraction)`` ``[h, w]`` of the source over each pixel of a window of the grid ``tr``.

    The source window under the strip (plus a margin) is read, its invalid pixels and everything beyond
    the raster's edge set to 0 with validity 0, and both are resampled with GDAL's area-weighted
    ``average``. Because nothing is left out of the average, mean x (source pixels per grid pixel) is
    the area-weighted sum of the source pixels under a grid pixel, and the mean validity is the valid
    fraction of its area.

    Why not GDAL's ``sum`` resampling directly: measured on this machine (GDAL 3.10), a ``WarpedVRT``
    with ``sum`` took 6.4 s per strip of 8,640 x 105 px where ``average`` took 0.28 s, and
    ``rasterio.warp.reproject(..., Resampling.sum)`` between arrays kept only 94 % of a lon/lat
    raster's total in a UTM test; this average-and-scale way kept it to 2e-5 at grid pixels of half,
    one and two source pixels.
    """
    h, w = row_hi - row_lo, col_hi - col_lo
    dst_tr = _shift(tr, col_lo, row_lo)
    left, top = dst_tr.c, dst_tr.f
    right, bottom = left + w * dst_tr.a, top + h * dst_tr.e
    sb = transform_bounds(dst_crs.to_wkt(), src.crs, left, bottom, right, top, densify_pts=21)
    inv = ~src.transform
    corners = [
        (inv.a * x + inv.b * y + inv.c, inv.d * x + inv.e * y + inv.f) for x in (sb[0], sb[2]) for y in (sb[1], sb[3])
    ]
    margin = 2
    c_lo = int(np.floor(min(c for c, _ in corners))) - margin
    c_hi = int(np.ceil(max(c for c, _ in corners))) + margin
    r_lo = int(np.floor(min(r for _, r in corners))) - margin
    r_hi = int(np.ceil(max(r for _, r in corners))) + margin
    arr = np.zeros((2, r_hi - r_lo, c_hi - c_lo))  # [value, validity], zero beyond the raster
    cc0, cc1 = max(c_lo, 0), min(c_hi, src.width)
    rr0, rr1 = max(r_lo, 0), min(r_hi, src.height)
    if cc1 > cc0 and rr1 > rr0:
        data = src.read(band, window=Window(cc0, rr0, cc1 - cc0, rr1 - rr0), masked=True).astype(np.float64)
        valid = ~np.ma.getmaskarray(data) & np.isfinite(data.filled(np.nan))
        arr[0, rr0 - r_lo : rr1 - r_lo, cc0 - c_lo : cc1 - c_lo] = np.where(valid, data.filled(0.0), 0.0)
        arr[1, rr0 - r_lo : rr1 - r_lo, cc0 - c_lo : cc1 - c_lo] = valid
    out = np.full((2, h, w), np.nan)
    reproject(
        arr,
        out,
        src_transform=_shift(src.transform, c_lo, r_lo),
        src_crs=src.crs,
        dst_transform=dst_tr,
        dst_crs=dst_crs.to_wkt(),
        resampling=Resampling.average,
        src_nodata=None,
        dst_nodata=np.nan,
    )
    out = np.nan_to_num(out, nan=0.0)
    return out[0], out[1]


def _shift(tr, col: int, row: int):
    """The affine transform of a window whose top-left pixel is ``(col, row)`` of ``tr``'s grid."""
    return Affine(tr.a, tr.b, tr.c + col * tr.a + row * tr.b, tr.d, tr.e, tr.f + col * tr.d + row * tr.e)


def _source_pixels_per_pixel(src, dst_crs, tr, bounds: np.ndarray) -> np.ndarray:
    """``[T]``: source pixels per grid pixel at each tile's centre, ``|det J|`` of grid -> source pixels.

    The ratio varies smoothly (a few 1e-3 over a UTM zone); one value per tile is exact to ~1e-5 for
    tiles of a few km.
    """
    to_src = Transformer.from_crs(dst_crs, crs_object(src.crs.to_wkt(), "the target raster"), always_xy=True)
    inv = ~src.transform
    x, y = (bounds[:, 0] + bounds[:, 2]) / 2, (bounds[:, 1] + bounds[:, 3]) / 2

    def pixel(px, py):
        sx, sy = to_src.transform(px, py)
        return inv.a * sx + inv.b * sy + inv.c, inv.d * sx + inv.e * sy + inv.f

    u0, v0 = pixel(x, y)
    u1, v1 = pixel(x + tr.a, y)
    u2, v2 = pixel(x, y + tr.e)
    return np.abs((u1 - u0) * (v2 - v0) - (u2 - u0) * (v1 - v0))


def _groups(rows: np.ndarray, c0: np.ndarray, c1: np.ndarray, max_px: int = 4096) -> list[np.ndarray]:
    """Tiles by grid row, each row cut into chunks of at most ``max_px`` columns (one read each)."""
    order = np.lexsort((c0, rows))
    cuts = np.flatnonzero(np.diff(rows[order])) + 1
    out = []
    for row in np.split(order, cuts):
        start = 0
        for k in range(1, len(row) + 1):
            if k == len(row) or c1[row[k]] - c0[row[start]] > max_px:
                out.append(row[start:k])
                start = k
    return out


def _warp_grid(src, dst_crs: str, bounds: np.ndarray):
    """A grid in the tiles' CRS over the tiles' extent, pixels about the source's size and a whole number
    of them per tile side, aligned to the tiles' upper-left corner."""
    default, _, _ = calculate_default_transform(src.crs, dst_crs, src.width, src.height, *src.bounds)
    res = abs(default.a)
    size = float(np.median(bounds[:, 2] - bounds[:, 0]))
    res = size / max(1, int(np.floor(size / res)))  # a whole number of pixels per tile side
    x0, y1 = bounds[:, 0].min(), bounds[:, 3].max()
    width = int(np.ceil((bounds[:, 2].max() - x0) / res))
    height = int(np.ceil((y1 - bounds[:, 1].min()) / res))
    return from_origin(x0, y1, res, res), width, height


def compute_target(
    target: Target,
    bounds: np.ndarray,
    tiles_crs: str,
    min_coverage: float,
    rows: np.ndarray | None = None,
    progress: bool | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Values of one target on the tiles, NaN where coverage is below ``min_coverage``.

    Returns:
        ``(values [T], coverage [T])``, or ``(shares [T, K], coverage [T])`` for a class target.
    """
    if target.kind in ("polygons", "classes"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # shapely on degenerate slivers
            if target.kind == "polygons":
                values, coverage = polygon_shares(target.polygons, target.counts, bounds)
            else:
                values, coverage = class_shares(target.polygons, target.codes, len(target.classes), bounds)
    else:
        values, coverage = raster_sums(target.spec.path, target.band, bounds, tiles_crs, rows, progress)
    # A hair of tolerance: a tile exactly covered can measure 0.9999999999 after floating-point areas.
    covered = coverage >= min_coverage - 1e-9
    return np.where(covered if values.ndim == 1 else covered[:, None], values, np.nan), coverage


def write_values(folder: str, names: list[str], values: np.ndarray, progress: bool | None = None) -> int:
    """Write ``folder/STEM.txt`` (the published target layout: one number, or K shares on one line) for
    every tile with a value.

    Args:
        names: ``[T]`` image file names (``STEM.png``); values: ``[T]`` or ``[T, K]``, NaN = no file.

    Returns:
        The number of files written.
    """
    os.makedirs(folder, exist_ok=True)
    rows = values.reshape(len(values), -1)
    ok = np.flatnonzero(np.isfinite(rows).all(axis=1))
    for k in tqdm(
        ok, desc=f"write {os.path.basename(folder)}", unit="tile", disable=None if progress is None else not progress
    ):
        # repr: the shortest text that reads back as the same float
        atomic_write_text(
            " ".join(repr(float(v)) for v in rows[k]) + "\n",
            os.path.join(folder, os.path.splitext(names[k])[0] + ".txt"),
            durable=False,
        )
    return int(ok.size)


def types_file(name: str) -> str:
    """``lc`` -> ``lc_types.txt``: where the classes of a class target are named, beside its folder (the
    published ``func_types.txt`` of ``func``)."""
    return f"{name}_types.txt"


def write_types(out: str, target: Target) -> str:
    """Write ``OUT/NAME_types.txt``, the K classes of a class target, one per line in share order; returns it."""
    path = os.path.join(out, types_file(target.spec.name))
    atomic_write_text("".join(c + "\n" for c in target.classes), path, durable=False)
    return path
