"""Reading a user's POIs and the georeferencing of ready-cut tiles, and CRS handling, for ``prepare_pois.py``.

Everything a user can get wrong in these files is reported here as :class:`InputError`, one sentence
that names the file and the fix (docs/real_data.md); deeper code may assume clean arrays.

POIs (``read_pois``):
- CSV / TSV with a header row and x/y columns (read with pandas): the common export of a table of POIs;
- every vector format GDAL reads (read with pyogrio): GeoPackage, Shapefile, GeoJSON, FlatGeobuf, KML,
  GML...; GeoParquet with geopandas (the GDAL in pyogrio's wheel has no Parquet driver). Point
  geometries are POIs, MultiPoints are exploded into one POI per part, other geometries are skipped
  and counted;
- OpenStreetMap ``.osm.pbf`` extracts through GDAL's OSM driver (``prepare/osm.py``).

Tiles already cut (``read_tile_index`` / ``tiles_from_georeferencing``): a tile index CSV
``name,minx,miny,maxx,maxy``, or each image's own georeferencing read with rasterio (GeoTIFF tags,
ESRI world files ``.tfw/.pgw/.jgw/.wld``, any other georeferencing GDAL understands).
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field

import geopandas as gpd
import numpy as np
import pandas as pd
import pyogrio
import pyproj
import rasterio
import shapely
from rasterio.errors import NotGeoreferencedWarning, RasterioIOError

from prepare import osm
from prepare.gdal_errors import reason
from utils.errors import UserError

__all__ = [
    "InputError",
    "Pois",
    "Tiles",
    "read_pois",
    "read_tile_index",
    "tiles_from_georeferencing",
    "reproject",
    "same_crs",
    "check_crs",
    "crs_name",
    "csv_header",
    "crs_object",
    "extent_overlaps",
    "format_extent",
    "IMAGE_EXTS",
    "TIFF_EXTS",
    "CSV_EXTS",
    "PARQUET_EXTS",
]

IMAGE_EXTS = (".png", ".jpg", ".jpeg")
TIFF_EXTS = (".tif", ".tiff")
CSV_EXTS = (".csv", ".tsv", ".txt")
PARQUET_EXTS = (".parquet", ".geoparquet")


class InputError(UserError):
    """A problem with the user's input files or flags; the message is one sentence for the user (exit 2)."""


@dataclass
class Pois:
    """POIs in file order, with unusable rows already dropped.

    Attributes:
        xy: ``[N, 2]`` float64 coordinates.
        category: ``[N]`` str categories.
        parent: ``[N]`` str parent (first-level) categories, or None.
        row: ``[N]`` int64 feature (row) number each POI comes from, 0-based; the parts of an exploded
            MultiPoint share their feature's number.
        crs: CRS of ``xy`` as the user or the file gave it (None = unknown, assumed equal to the tiles').
        skipped_bad_coords: features dropped for missing / non-numeric / non-finite / empty coordinates.
        skipped_no_category: features dropped for an empty category.
        skipped_not_point: features dropped because their geometry is neither a Point nor a MultiPoint.
        osm: for an OSM extract, ``{"nodes": n, "areas": a, "areas_without_geometry": m}`` (POIs from tagged
            nodes and from tagged areas, and tagged areas GDAL could not build); None for other files.
    """

    xy: np.ndarray
    category: np.ndarray
    parent: np.ndarray | None
    row: np.ndarray
    crs: str | None
    skipped_bad_coords: int = 0
    skipped_no_category: int = 0
    skipped_not_point: int = 0
    osm: dict | None = None

    @property
    def in_file(self) -> int:
        """Features (rows) read from the file, the dropped ones included."""
        return len(self.xy) + self.skipped_bad_coords + self.skipped_no_category + self.skipped_not_point

    def dropped_text(self) -> str:
        """``'82 without a category, 2 with bad coordinates'``: what was dropped, '' when nothing was."""
        parts = [
            (self.skipped_no_category, "without a category"),
            (self.skipped_bad_coords, "with missing or bad coordinates"),
            (self.skipped_not_point, "not points (lines, polygons)"),
        ]
        return ", ".join(f"{n} {why}" for n, why in parts if n)


@dataclass
class Tiles:
    """Image tiles and their bounds.

    Attributes:
        paths: file path of each tile image, ``[T]``.
        bounds: ``[T, 4]`` float64 ``(minx, miny, maxx, maxy)``.
        crs: CRS of the bounds (None = unknown, assumed equal to the POIs').
        unlisted: images of the tile folder that the tile index does not list.
    """

    paths: list[str]
    bounds: np.ndarray
    crs: str | None
    unlisted: list[str] = field(default_factory=list)


# --------------------------------------------------------------------------------------------------
# CRS


def crs_object(crs, what: str):
    """``pyproj.CRS`` of anything pyproj understands (``EPSG:4326``, WKT, a rasterio CRS...)."""
    try:
        return pyproj.CRS.from_user_input(crs if isinstance(crs, (str, int, pyproj.CRS)) else crs.to_wkt())
    except pyproj.exceptions.CRSError:
        raise InputError(
            f"unknown CRS {crs!r} for {what}; give an EPSG code such as EPSG:4326 or EPSG:32651."
        ) from None


def crs_name(crs, what: str = "a file") -> str | None:
    """A CRS as a string: ``EPSG:n`` when it is exactly an EPSG CRS, else its WKT; None stays None."""
    if crs is None or (isinstance(crs, str) and not crs.strip()):
        return None
    obj = crs_object(crs, what)
    auth = obj.to_authority(min_confidence=100)
    return f"{auth[0]}:{auth[1]}" if auth else obj.to_wkt()


def same_crs(a: str | None, b: str | None, what_a: str = "--crs", what_b: str = "the tiles") -> bool:
    """True when no reprojection is needed (either side unknown, or both name the same CRS)."""
    if a is None or b is None or a.strip().upper() == b.strip().upper():
        return True
    return crs_object(a, what_a) == crs_object(b, what_b)


def check_crs(crs: str | None, what: str) -> None:
    """Raise InputError when ``crs`` is given but unknown."""
    if crs is not None:
        crs_object(crs, what)


def reproject(xy: np.ndarray, src: str, dst: str) -> np.ndarray:
    """``[N, 2]`` coordinates from CRS ``src`` to ``dst`` (x = easting / longitude, always)."""
    tr = pyproj.Transformer.from_crs(crs_object(src, "--crs"), crs_object(dst, "the tiles"), always_xy=True)
    x, y = tr.transform(xy[:, 0], xy[:, 1])
    return np.stack([np.asarray(x, float), np.asarray(y, float)], axis=1)


def format_extent(bounds) -> str:
    """``(minx, miny, maxx, maxy)`` as a short human string."""
    return "(" + ", ".join(f"{round(float(v), 6) + 0.0:.12g}" for v in bounds) + ")"  # + 0.0: no "-0"


def extent_overlaps(a, b) -> bool:
    """Whether two ``(minx, miny, maxx, maxy)`` extents share any area or edge."""
    return a[0] <= b[2] and b[0] <= a[2] and a[1] <= b[3] and b[1] <= a[3]


# --------------------------------------------------------------------------------------------------
# POIs


def _require_columns(path: str, have: list[str], want: list[str]) -> None:
    missing = [c for c in want if c not in have]
    if missing:
        raise InputError(
            f"{path} has no column {', '.join(repr(c) for c in missing)}; its columns are "
            f"{', '.join(repr(c) for c in have)} - pass the right names with --x_col/--y_col/"
            "--category_col/--parent_col."
        )


def csv_header(reader, empty: str) -> list[str]:
    """The stripped header row of a ``csv.reader``; ``empty`` is the sentence raised when there is none."""
    header = next(reader, None)
    if header is None:
        raise InputError(empty)
    return [h.strip() for h in header]


def _text(values) -> np.ndarray:
    """Column values as stripped strings; missing values become ''."""
    out = np.empty(len(values), dtype=object)
    for i, v in enumerate(values):
        out[i] = "" if v is None or (isinstance(v, float) and np.isnan(v)) else str(v).strip()
    return out


def _read_csv(path: str, x_col: str, y_col: str, cat_col: str, parent_col: str | None):
    """Columns of a CSV (TSV for ``.tsv``) as ``(x, y, category, parent, crs=None)``, row order kept."""
    sep = "\t" if path.lower().endswith(".tsv") else ","
    try:
        # Every field as text, nothing turned into NaN: an empty category must stay '' to be counted.
        df = pd.read_csv(
            path,
            sep=sep,
            dtype=str,
            keep_default_na=False,
            na_filter=False,
            encoding="utf-8-sig",
            skip_blank_lines=True,
        )
    except pd.errors.EmptyDataError:
        raise InputError(f"{path} is empty; give a CSV with a header row and one POI per row.") from None
    except (pd.errors.ParserError, UnicodeDecodeError) as e:
        raise InputError(f"{path} is not a readable CSV ({reason(e)}); fix or re-export it.") from None
    df.columns = [str(c).strip() for c in df.columns]
    want = [x_col, y_col, cat_col] + ([parent_col] if parent_col else [])
    _require_columns(path, list(df.columns), want)
    x = pd.to_numeric(df[x_col].str.strip(), errors="coerce").to_numpy(np.float64)
    y = pd.to_numeric(df[y_col].str.strip(), errors="coerce").to_numpy(np.float64)
    cats = _text(df[cat_col].fillna("").tolist())
    pars = _text(df[parent_col].fillna("").tolist()) if parent_col else None
    return x, y, cats, pars, None


def _layers(path: str) -> list[str]:
    try:
        return [str(name) for name, _ in pyogrio.list_layers(path)]
    except Exception as e:  # pyogrio.errors.DataSourceError, or GDAL's own errors on a corrupt file
        raise InputError(
            f"cannot read {path} as a vector file ({reason(e)}); check the file is "
            "complete and in a format GDAL reads (GeoPackage, Shapefile, GeoJSON, ...)."
        ) from None


def pick_layer(path: str, layer: str | None) -> str | None:
    """The layer to read: ``layer`` when it exists, else the only one; several layers need --layer."""
    layers = _layers(path)
    if not layers:
        raise InputError(f"{path} has no layer; give a file with a point layer of POIs.")
    if layer is None:
        if len(layers) > 1:
            raise InputError(f"{path} has several layers ({', '.join(layers)}); pick one with --layer.")
        return layers[0]
    if layer not in layers:
        raise InputError(f"{path} has no layer {layer!r}; its layers are {', '.join(layers)}.")
    return layer


def read_vector(path: str, layer: str | None = None, columns: list[str] | None = None):
    """A vector file as a GeoDataFrame, features in file order, with user-facing errors.

    GeoParquet is read with geopandas (pyarrow); everything else with pyogrio (GDAL). ``columns``
    restricts the attribute columns read (geometry is always read); a missing one is reported with the
    file's columns.
    """
    ext = os.path.splitext(path)[1].lower()
    if ext in PARQUET_EXTS:
        try:
            df = gpd.read_parquet(path)
        except Exception as e:  # pyarrow / geopandas errors for a corrupt or non-geo Parquet file
            raise InputError(
                f"cannot read {path} as GeoParquet ({reason(e)}); re-export it "
                "with its geometry column (e.g. geopandas to_parquet)."
            ) from None
        if columns:
            _require_columns(path, [c for c in df.columns if c != df.geometry.name], columns)
        return df
    layer = pick_layer(path, layer)
    try:
        fields = [str(f) for f in pyogrio.read_info(path, layer=layer)["fields"]]
    except Exception as e:
        raise InputError(f"cannot read layer {layer!r} of {path} ({reason(e)}); check the file.") from None
    if columns:
        _require_columns(path, fields, columns)
    try:
        return pyogrio.read_dataframe(path, layer=layer, columns=columns)
    except Exception as e:
        raise InputError(f"cannot read {path} ({reason(e)}); check the file is complete, or re-export it.") from None


def _points_of(geoms: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Explode ``[F]`` shapely geometries into points.

    Returns:
        ``(x [N], y [N], feature [N], bad [F], not_point [F])``: the coordinates of every Point and
        MultiPoint part in file order, the feature each came from, and per feature whether it was
        missing / empty / non-finite (``bad``) or of another geometry type (``not_point``).
    """
    geoms = np.asarray(geoms, dtype=object)
    kind = shapely.get_type_id(geoms)  # -1 missing, 0 Point, 4 MultiPoint
    empty = shapely.is_empty(geoms) | (kind < 0)
    not_point = ~empty & (kind != 0) & (kind != 4)
    use = np.flatnonzero(~empty & ~not_point)
    parts, feature = shapely.get_parts(geoms[use], return_index=True)
    feature = use[feature]
    x, y = shapely.get_x(parts), shapely.get_y(parts)
    finite = np.isfinite(x) & np.isfinite(y) & ~shapely.is_empty(parts)
    bad = empty.copy()
    # A feature is bad when none of its parts is usable; usable parts of a partly bad MultiPoint stay.
    bad[use] = np.bincount(feature[finite] if finite.any() else np.zeros(0, int), minlength=len(geoms))[use] == 0
    return x[finite], y[finite], feature[finite], bad, not_point


def _read_vector_pois(path: str, x_col: str, y_col: str, cat_col: str, parent_col: str | None, layer):
    """POIs of a vector file: ``(x, y, category, parent, crs, feature, n_bad, n_not_point)``."""
    want = [cat_col] + ([parent_col] if parent_col else [])
    df = read_vector(path, layer, want)
    if len(df) == 0:
        raise InputError(f"{path} has no features; give a file with at least one POI point.")
    cats = _text(df[cat_col].tolist())
    pars = _text(df[parent_col].tolist()) if parent_col else None
    if not isinstance(df, gpd.GeoDataFrame) or df.geometry.isna().all():
        # An attribute table without geometry (e.g. a GeoPackage table of lon/lat columns).
        full = read_vector(path, layer, None)
        _require_columns(path, list(full.columns), [x_col, y_col])
        x = pd.to_numeric(full[x_col], errors="coerce").to_numpy(np.float64)
        y = pd.to_numeric(full[y_col], errors="coerce").to_numpy(np.float64)
        feature = np.arange(len(df))
        bad = ~(np.isfinite(x) & np.isfinite(y))
        not_point = np.zeros(len(df), bool)
        crs = None
    else:
        x, y, feature, bad, not_point = _points_of(df.geometry.to_numpy())
        crs = crs_name(df.crs, path) if df.crs is not None else None
    return x, y, cats, pars, crs, feature, bad, not_point


def read_pois(
    path: str,
    x_col: str = "x",
    y_col: str = "y",
    category_col: str = "category",
    parent_col: str | None = None,
    crs: str | None = None,
    layer: str | None = None,
    osm_areas: bool = True,
) -> Pois:
    """Read POIs from CSV, any vector file or an OSM ``.pbf`` (chosen by extension), keeping file order.

    Rows with missing or non-finite coordinates or an empty category are dropped and counted; so are
    features whose geometry is not a (Multi)Point. ``crs`` (the user's ``--crs``) overrides what the
    file says. For ``.osm.pbf`` the category and parent come from the OSM tags (``prepare/osm.py``) and
    the column flags are ignored; tagged areas are POIs too unless ``osm_areas`` is False.
    """
    if not os.path.isfile(path):
        raise InputError(f"POI file {path} does not exist; check --pois.")
    if os.path.getsize(path) == 0:
        raise InputError(f"POI file {path} is empty; give a file with one POI per row.")
    ext = os.path.splitext(path)[1].lower()
    n_not_point = 0
    osm_counts = None
    if ext == ".pbf":
        o = osm.read_osm_pois(path, osm_areas)
        x, y, cats, pars, file_crs = o.x, o.y, o.category, o.parent, o.crs
        osm_counts = {"nodes": o.nodes, "areas": o.areas, "areas_without_geometry": o.areas_without_geometry}
        feature = np.arange(len(x))
        bad = ~(np.isfinite(x) & np.isfinite(y))
    elif ext in CSV_EXTS:
        x, y, cats, pars, file_crs = _read_csv(path, x_col, y_col, category_col, parent_col)
        feature = np.arange(len(x))
        bad = ~(np.isfinite(x) & np.isfinite(y))
    else:
        x, y, cats, pars, file_crs, feature, bad_f, not_point = _read_vector_pois(
            path, x_col, y_col, category_col, parent_col, layer
        )
        n_not_point = int(not_point.sum())
        # Counts are per feature; the arrays below are per point (a MultiPoint gives several).
        n_feat = len(cats)
        cats, pars = cats[feature], (pars[feature] if pars is not None else None)
        good_xy = np.isfinite(x) & np.isfinite(y)
        bad_count = int(bad_f.sum())
        has_cat = cats != ""
        keep = good_xy & has_cat
        no_cat = int(np.unique(feature[~has_cat]).size)
        if n_feat and not keep.any():
            raise InputError(
                f"POI file {path} has no point feature with a category; check --category_col "
                "and that the layer holds points."
            )
        return _pois(x, y, cats, pars, feature, keep, crs or file_crs, bad_count, no_cat, n_not_point)
    if len(cats) == 0:
        raise InputError(f"POI file {path} has a header but no POI rows; give at least one POI.")
    good_xy = ~bad
    has_cat = cats != ""
    keep = good_xy & has_cat
    if not keep.any():
        raise InputError(
            f"POI file {path} has no row with finite coordinates and a category; check --x_col/--y_col/--category_col."
        )
    pois = _pois(
        x,
        y,
        cats,
        pars,
        feature,
        keep,
        crs or file_crs,
        int((~good_xy).sum()),
        int((good_xy & ~has_cat).sum()),
        n_not_point,
    )
    pois.osm = osm_counts
    return pois


def _pois(x, y, cats, pars, feature, keep, crs, n_bad, n_no_cat, n_not_point) -> Pois:
    idx = np.flatnonzero(keep)
    par = None
    if pars is not None:
        par = pars[idx]
        # A POI with no parent gets its own category as parent: a singleton sibling group.
        par = np.where(par == "", cats[idx], par)
    return Pois(
        xy=np.stack([x[idx], y[idx]], axis=1).astype(np.float64),
        category=cats[idx],
        parent=par,
        row=np.asarray(feature, np.int64)[idx],
        crs=crs,
        skipped_bad_coords=n_bad,
        skipped_no_category=n_no_cat,
        skipped_not_point=n_not_point,
    )


# --------------------------------------------------------------------------------------------------
# Tiles already cut


def _find_tile(tile_dir: str, name: str) -> str | None:
    """The file for index entry ``name``: exactly that, or ``name`` + an image extension."""
    p = os.path.join(tile_dir, name)
    if os.path.isfile(p):
        return p
    for ext in IMAGE_EXTS + TIFF_EXTS + tuple(e.upper() for e in IMAGE_EXTS + TIFF_EXTS):
        if os.path.isfile(p + ext):
            return p + ext
    return None


def _list_images(tile_dir: str) -> list[str]:
    if not os.path.isdir(tile_dir):
        raise InputError(f"tile folder {tile_dir} does not exist; check --tiles.")
    names = sorted(n for n in os.listdir(tile_dir) if os.path.splitext(n)[1].lower() in IMAGE_EXTS + TIFF_EXTS)
    return [os.path.join(tile_dir, n) for n in names]


def read_tile_index(path: str, tile_dir: str, crs: str | None = None) -> Tiles:
    """Tiles listed in an index CSV ``name,minx,miny,maxx,maxy``; names resolved in ``tile_dir``."""
    if not os.path.isfile(path):
        raise InputError(f"tile index {path} does not exist; check --tile_index.")
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False, encoding="utf-8-sig")
    except pd.errors.EmptyDataError:
        raise InputError(f"tile index {path} is empty; give a CSV with columns name,minx,miny,maxx,maxy.") from None
    except pd.errors.ParserError as e:
        raise InputError(f"tile index {path} is not a readable CSV ({reason(e)}); fix it.") from None
    df.columns = [str(c).strip() for c in df.columns]
    want = ["name", "minx", "miny", "maxx", "maxy"]
    missing = [c for c in want if c not in df.columns]
    if missing:
        raise InputError(
            f"tile index {path} has no column {', '.join(missing)}; it needs columns name,minx,miny,maxx,maxy."
        )
    if len(df) == 0:
        raise InputError(f"tile index {path} lists no tiles; give one row per tile.")
    if not os.path.isdir(tile_dir):
        raise InputError(f"tile folder {tile_dir} does not exist; check --tiles.")
    names = [n.strip() for n in df["name"]]
    paths = []
    for n in names:
        p = _find_tile(tile_dir, n)
        if p is None:
            raise InputError(f"tile {n!r} listed in {path} is not in {tile_dir}; fix the index or add the image.")
        paths.append(p)
    bounds = np.stack(
        [pd.to_numeric(df[c].str.strip(), errors="coerce").to_numpy(np.float64) for c in want[1:]], axis=1
    )
    bad = ~np.isfinite(bounds).all(axis=1) | (bounds[:, 2] <= bounds[:, 0]) | (bounds[:, 3] <= bounds[:, 1])
    if bad.any():
        k = int(np.flatnonzero(bad)[0])
        raise InputError(
            f"tile {names[k]!r} in {path} has invalid bounds {df.iloc[k][want[1:]].tolist()}; "
            "each row needs numbers with minx < maxx and miny < maxy."
        )
    listed = {os.path.abspath(p) for p in paths}
    unlisted = [p for p in _list_images(tile_dir) if os.path.abspath(p) not in listed]
    return Tiles(paths=paths, bounds=bounds, crs=crs, unlisted=unlisted)


def _image_georef(path: str) -> tuple[tuple[float, float, float, float], str | None] | None:
    """Bounds and CRS of one image from its own georeferencing (rasterio), or None when it has none."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            with rasterio.open(path) as src:
                tr, crs, w, h = src.transform, src.crs, src.width, src.height
    except RasterioIOError as e:
        raise InputError(f"cannot read tile {path} ({reason(e)}); re-export it or give a --tile_index.") from None
    if tr.is_identity and crs is None:  # GDAL's answer for an image without georeferencing
        return None
    if tr.b != 0 or tr.d != 0:
        raise InputError(
            f"{path} is a rotated image; warp it north-up (gdalwarp) or give a --tile_index with its bounds."
        )
    xs, ys = (tr.c, tr.c + w * tr.a), (tr.f, tr.f + h * tr.e)
    return (min(xs), min(ys), max(xs), max(ys)), crs_name(crs, path) if crs is not None else None


def tiles_from_georeferencing(tile_dir: str, crs: str | None = None) -> Tiles:
    """Tiles of ``tile_dir`` with bounds read from each image (GeoTIFF tags, world file...) by rasterio.

    ``crs`` (``--tile_crs``) overrides the CRS found in the images; tiles whose CRS differ are an error.
    """
    paths = _list_images(tile_dir)
    if not paths:
        raise InputError(f"tile folder {tile_dir} has no PNG, JPEG or GeoTIFF images; check --tiles.")
    bounds, crss = [], set()
    for p in paths:
        geo = _image_georef(p)
        if geo is None:
            raise InputError(
                f"tile {p} has no georeferencing (no GeoTIFF tags, no world file); give "
                "--tile_index INDEX.csv with its bounds."
            )
        bounds.append(geo[0])
        if geo[1]:
            crss.add(geo[1])
    if crs is None and len(crss) > 1:
        raise InputError(
            f"tiles in {tile_dir} use several CRS ({', '.join(sorted(crss))}); reproject them "
            "to one CRS or give a --tile_index."
        )
    return Tiles(paths=paths, bounds=np.asarray(bounds, dtype=np.float64), crs=crs or (crss.pop() if crss else None))
