"""Reading a user's raw POIs and tile georeferencing, and CRS handling, for ``prepare_pois.py``.

Everything a user can get wrong in these files is reported here as :class:`InputError`, one sentence
that names the file and the fix (STYLE §7); deeper code may assume clean arrays.

Formats read, all with the standard library + numpy + Pillow (no GDAL):
- POIs: CSV (header row), GeoJSON (a FeatureCollection of Point features; properties hold the
  category), GeoPackage (SQLite; point geometries decoded from the GPKG blob header + WKB).
- Tiles: a tile index CSV ``name,minx,miny,maxx,maxy``; or, without one, each image's own
  georeferencing: GeoTIFF tags (ModelTiepoint + ModelPixelScale, or a rotation-free
  ModelTransformation, CRS from the GeoKey directory) or an ESRI world file (``.tfw/.pgw/.jgw/.wld``).
"""

from __future__ import annotations

import csv
import json
import math
import os
import sqlite3
import struct
from dataclasses import dataclass, field

import numpy as np

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
    "IMAGE_EXTS",
    "TIFF_EXTS",
]

IMAGE_EXTS = (".png", ".jpg", ".jpeg")
TIFF_EXTS = (".tif", ".tiff")


class InputError(UserError):
    """A problem with the user's input files or flags; the message is one sentence for the user (exit 2)."""


@dataclass
class Pois:
    """POIs in file order, with unusable rows already dropped.

    Attributes:
        xy: ``[N, 2]`` float64 coordinates.
        category: ``[N]`` str categories.
        parent: ``[N]`` str parent (first-level) categories, or None.
        row: ``[N]`` int64 row number of each POI in the input (0-based over data rows).
        crs: CRS of ``xy`` as the user or the file gave it (None = unknown, assumed equal to the tiles').
        skipped_bad_coords: rows dropped for missing / non-numeric / non-finite coordinates.
        skipped_no_category: rows dropped for an empty category.
    """

    xy: np.ndarray
    category: np.ndarray
    parent: np.ndarray | None
    row: np.ndarray
    crs: str | None
    skipped_bad_coords: int = 0
    skipped_no_category: int = 0


@dataclass
class Tiles:
    """Image tiles and their bounds.

    Attributes:
        paths: file path of each tile image, ``[T]``.
        bounds: ``[T, 4]`` float64 ``(minx, miny, maxx, maxy)``.
        crs: CRS of the bounds (None = unknown, assumed equal to the POIs').
    """

    paths: list[str]
    bounds: np.ndarray
    crs: str | None
    unlisted: list[str] = field(default_factory=list)


# --------------------------------------------------------------------------------------------------
# POIs


def _to_float(values: list[str]) -> np.ndarray:
    """Parse strings to float64; anything unparseable becomes NaN (counted later as skipped)."""
    out = np.empty(len(values), dtype=np.float64)
    for i, v in enumerate(values):
        try:
            out[i] = float(v)
        except (TypeError, ValueError):
            out[i] = np.nan
    return out


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


def _read_csv(path: str, x_col: str, y_col: str, cat_col: str, parent_col: str | None):
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.reader(f)
        header = csv_header(reader, f"{path} is empty; give a CSV with a header row and one POI per row.")
        want = [x_col, y_col, cat_col] + ([parent_col] if parent_col else [])
        _require_columns(path, header, want)
        ix, iy, ic = header.index(x_col), header.index(y_col), header.index(cat_col)
        ip = header.index(parent_col) if parent_col else None
        xs, ys, cats, pars = [], [], [], []
        width = len(header)
        for rec in reader:
            if not rec:
                continue
            if len(rec) < width:  # short row: pad so a missing trailing field reads as empty
                rec = rec + [""] * (width - len(rec))
            xs.append(rec[ix])
            ys.append(rec[iy])
            cats.append(rec[ic].strip())
            if ip is not None:
                pars.append(rec[ip].strip())
    return _to_float(xs), _to_float(ys), cats, (pars if ip is not None else None), None


def _read_geojson(path: str, x_col: str, y_col: str, cat_col: str, parent_col: str | None):
    try:
        with open(path, encoding="utf-8-sig") as f:
            doc = json.load(f)
    except json.JSONDecodeError as e:
        raise InputError(f"{path} is not valid JSON ({e.msg} at line {e.lineno}); fix or re-export it.")
    feats = doc.get("features") if isinstance(doc, dict) else None
    if not feats:
        raise InputError(f"{path} has no features; give a GeoJSON FeatureCollection of POI points.")
    xs, ys, cats, pars = [], [], [], []
    seen_cat = False
    for ft in feats:
        props = ft.get("properties") or {}
        geom = ft.get("geometry") or {}
        coords = geom.get("coordinates") if geom.get("type") == "Point" else None
        if x_col in props and y_col in props:  # explicit coordinate properties win over geometry
            xs.append(props[x_col]), ys.append(props[y_col])
        elif coords is not None and len(coords) >= 2:
            xs.append(coords[0]), ys.append(coords[1])
        else:
            xs.append(None), ys.append(None)
        seen_cat |= cat_col in props
        cats.append("" if props.get(cat_col) is None else str(props.get(cat_col)).strip())
        if parent_col:
            pars.append("" if props.get(parent_col) is None else str(props.get(parent_col)).strip())
    if not seen_cat:
        have = sorted({k for ft in feats[:100] for k in (ft.get("properties") or {})})
        _require_columns(path, have, [cat_col])
    if parent_col and all(p == "" for p in pars):
        have = sorted({k for ft in feats[:100] for k in (ft.get("properties") or {})})
        _require_columns(path, have, [parent_col])
    # RFC 7946: GeoJSON is lon/lat WGS 84 unless an (old-style) "crs" member says otherwise.
    crs = "EPSG:4326"
    named = ((doc.get("crs") or {}).get("properties") or {}).get("name")
    if named:
        crs = str(named)
    return _to_float(xs), _to_float(ys), cats, (pars if parent_col else None), crs


def _gpkg_point(blob: bytes | None) -> tuple[float, float]:
    """(x, y) of a GeoPackage geometry blob holding a Point; NaNs for empty / non-point / bad blobs."""
    if not blob or len(blob) < 8 or blob[:2] != b"GP":
        return math.nan, math.nan
    flags = blob[3]
    if flags & 0b10000:  # empty geometry
        return math.nan, math.nan
    env = (flags >> 1) & 0b111
    env_len = {0: 0, 1: 32, 2: 48, 3: 48, 4: 64}.get(env)
    if env_len is None:
        return math.nan, math.nan
    wkb = blob[8 + env_len:]
    if len(wkb) < 21:
        return math.nan, math.nan
    endian = "<" if wkb[0] == 1 else ">"
    gtype = struct.unpack(endian + "I", wkb[1:5])[0]
    # Point, ISO Z/M/ZM (1001/2001/3001) or EWKB-style high-bit flags: all start with x, y.
    if (gtype & 0xFFFF) % 1000 != 1:
        return math.nan, math.nan
    return struct.unpack(endian + "dd", wkb[5:21])


def _read_gpkg(path: str, x_col: str, y_col: str, cat_col: str, parent_col: str | None, layer):
    try:
        con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        layers = [r[0] for r in con.execute(
            "SELECT table_name FROM gpkg_contents WHERE data_type = 'features'")]
    except sqlite3.DatabaseError:
        raise InputError(f"{path} is not a GeoPackage (no gpkg_contents table); re-export it as GPKG, "
                         "GeoJSON or CSV.")
    if not layers:
        raise InputError(f"{path} has no feature layer; give a GeoPackage with a point layer of POIs.")
    if layer is None:
        if len(layers) > 1:
            raise InputError(f"{path} has several layers ({', '.join(layers)}); pick one with --layer.")
        layer = layers[0]
    elif layer not in layers:
        raise InputError(f"{path} has no layer {layer!r}; its layers are {', '.join(layers)}.")
    gcol, srs_id = con.execute(
        "SELECT column_name, srs_id FROM gpkg_geometry_columns WHERE table_name = ?", (layer,)).fetchone()
    crs = None
    row = con.execute("SELECT organization, organization_coordsys_id FROM gpkg_spatial_ref_sys "
                      "WHERE srs_id = ?", (srs_id,)).fetchone()
    if row and row[0] and row[0].upper() == "EPSG" and row[1] and row[1] > 0:
        crs = f"EPSG:{row[1]}"
    cols = [r[1] for r in con.execute(f'PRAGMA table_info("{layer}")')]
    want = [cat_col] + ([parent_col] if parent_col else [])
    _require_columns(path, cols, want)
    sel = [f'"{gcol}"', f'"{cat_col}"'] + ([f'"{parent_col}"'] if parent_col else [])
    xs, ys, cats, pars = [], [], [], []
    # rowid order = insertion order, the GeoPackage analogue of "order in the file".
    for rec in con.execute(f'SELECT {", ".join(sel)} FROM "{layer}" ORDER BY rowid'):
        x, y = _gpkg_point(rec[0])
        xs.append(x), ys.append(y)
        cats.append("" if rec[1] is None else str(rec[1]).strip())
        if parent_col:
            pars.append("" if rec[2] is None else str(rec[2]).strip())
    con.close()
    return np.asarray(xs, float), np.asarray(ys, float), cats, (pars if parent_col else None), crs


def read_pois(path: str, x_col: str = "x", y_col: str = "y", category_col: str = "category",
              parent_col: str | None = None, crs: str | None = None, layer: str | None = None) -> Pois:
    """Read POIs from CSV / GeoJSON / GeoPackage (chosen by extension), keeping file order.

    Rows with missing or non-finite coordinates or an empty category are dropped and counted.
    ``crs`` (the user's ``--crs``) overrides what the file says.
    """
    if not os.path.isfile(path):
        raise InputError(f"POI file {path} does not exist; check --pois.")
    if os.path.getsize(path) == 0:
        raise InputError(f"POI file {path} is empty; give a file with one POI per row.")
    ext = os.path.splitext(path)[1].lower()
    if ext in (".geojson", ".json"):
        x, y, cats, pars, file_crs = _read_geojson(path, x_col, y_col, category_col, parent_col)
    elif ext == ".gpkg":
        x, y, cats, pars, file_crs = _read_gpkg(path, x_col, y_col, category_col, parent_col, layer)
    else:
        x, y, cats, pars, file_crs = _read_csv(path, x_col, y_col, category_col, parent_col)
    if len(cats) == 0:
        raise InputError(f"POI file {path} has a header but no POI rows; give at least one POI.")
    cat = np.asarray(cats, dtype=object)
    good_xy = np.isfinite(x) & np.isfinite(y)
    has_cat = cat != ""
    keep = good_xy & has_cat
    if not keep.any():
        raise InputError(f"POI file {path} has no row with finite coordinates and a category; check "
                         "--x_col/--y_col/--category_col.")
    idx = np.flatnonzero(keep)
    par = np.asarray(pars, dtype=object)[idx] if pars is not None else None
    if par is not None:
        # A POI with no parent gets its own category as parent: a singleton sibling group.
        par = np.where(par == "", cat[idx], par)
    return Pois(
        xy=np.stack([x[idx], y[idx]], axis=1),
        category=cat[idx],
        parent=par,
        row=idx.astype(np.int64),
        crs=crs or file_crs,
        skipped_bad_coords=int((~good_xy).sum()),
        skipped_no_category=int((good_xy & ~has_cat).sum()),
    )


# --------------------------------------------------------------------------------------------------
# Tiles


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
    names = sorted(n for n in os.listdir(tile_dir)
                   if os.path.splitext(n)[1].lower() in IMAGE_EXTS + TIFF_EXTS)
    return [os.path.join(tile_dir, n) for n in names]


def read_tile_index(path: str, tile_dir: str, crs: str | None = None) -> Tiles:
    """Tiles listed in an index CSV ``name,minx,miny,maxx,maxy``; names resolved in ``tile_dir``."""
    if not os.path.isfile(path):
        raise InputError(f"tile index {path} does not exist; check --tile_index.")
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.reader(f)
        header = csv_header(reader, f"tile index {path} is empty; give a CSV with columns name,minx,miny,maxx,maxy.")
        want = ["name", "minx", "miny", "maxx", "maxy"]
        missing = [c for c in want if c not in header]
        if missing:
            raise InputError(f"tile index {path} has no column {', '.join(missing)}; it needs columns "
                             "name,minx,miny,maxx,maxy.")
        cols = [header.index(c) for c in want]
        rows = [[r[i] for i in cols] for r in reader if r]
    if not rows:
        raise InputError(f"tile index {path} lists no tiles; give one row per tile.")
    if not os.path.isdir(tile_dir):
        raise InputError(f"tile folder {tile_dir} does not exist; check --tiles.")
    paths = []
    for r in rows:
        p = _find_tile(tile_dir, r[0].strip())
        if p is None:
            raise InputError(f"tile {r[0]!r} listed in {path} is not in {tile_dir}; fix the index or add the image.")
        paths.append(p)
    bounds = np.array([_to_float(r[1:]) for r in rows], dtype=np.float64)
    bad = ~np.isfinite(bounds).all(axis=1) | (bounds[:, 2] <= bounds[:, 0]) | (bounds[:, 3] <= bounds[:, 1])
    if bad.any():
        k = int(np.flatnonzero(bad)[0])
        raise InputError(f"tile {rows[k][0]!r} in {path} has invalid bounds {rows[k][1:]}; each row needs "
                         "numbers with minx < maxx and miny < maxy.")
    listed = {os.path.abspath(p) for p in paths}
    unlisted = [p for p in _list_images(tile_dir) if os.path.abspath(p) not in listed]
    return Tiles(paths=paths, bounds=bounds, crs=crs, unlisted=unlisted)


# GeoTIFF tag numbers (GeoTIFF 1.0 spec).
_PIXEL_SCALE, _TIEPOINT, _TRANSFORM, _GEOKEYS = 33550, 33922, 34264, 34735


def _geokeys(raw) -> dict[int, int]:
    """GeoKey directory ``[version, rev, minor, n, (key, loc, count, value) * n]`` -> {key: value}."""
    raw = list(raw or [])
    out = {}
    for k in range(4, 4 + 4 * int(raw[3] if len(raw) > 3 else 0), 4):
        key, loc, _count, val = raw[k:k + 4]
        if loc == 0:  # value stored inline (all the keys we read are SHORTs)
            out[int(key)] = int(val)
    return out


def _geotiff_georef(path: str) -> tuple[tuple[float, float, float, float], str | None] | None:
    """Bounds and CRS from a GeoTIFF's own tags, or None when it carries no georeferencing."""
    from PIL import Image

    with Image.open(path) as im:
        tags = getattr(im, "tag_v2", {})
        w, h = im.size
        scale, tie, mat = tags.get(_PIXEL_SCALE), tags.get(_TIEPOINT), tags.get(_TRANSFORM)
        keys = _geokeys(tags.get(_GEOKEYS))
    if scale is not None and tie is not None and len(tie) >= 6:
        sx, sy = float(scale[0]), float(scale[1])
        i, j, x, y = float(tie[0]), float(tie[1]), float(tie[3]), float(tie[4])
        x0, y0 = x - i * sx, y + j * sy  # world position of the raster's top-left corner
    elif mat is not None and len(mat) >= 16:
        if mat[1] != 0 or mat[4] != 0:
            raise InputError(f"{path} is a rotated GeoTIFF; give a --tile_index with its bounds instead.")
        sx, sy, x0, y0 = float(mat[0]), -float(mat[5]), float(mat[3]), float(mat[7])
    else:
        return None
    if keys.get(1025) == 2:  # RasterPixelIsPoint: the tiepoint is a pixel centre, not its corner
        x0, y0 = x0 - sx / 2, y0 + sy / 2
    crs = None
    code = keys.get(3072) or keys.get(2048)  # ProjectedCSTypeGeoKey, else GeographicTypeGeoKey
    if code and code != 32767:  # 32767 = user-defined, which we cannot name
        crs = f"EPSG:{code}"
    return (x0, y0 - h * sy, x0 + w * sx, y0), crs


def _world_file_georef(path: str) -> tuple[float, float, float, float] | None:
    """Bounds from an ESRI world file beside the image (``a.tfw``, ``a.pgw``, ``a.jgw`` or ``a.wld``)."""
    stem, ext = os.path.splitext(path)
    ext = ext.lower()
    cands = [ext[:2] + ext[-1] + "w", ext + "w", ".wld"] if len(ext) >= 3 else [".wld"]
    for c in cands:
        for wf in (stem + c, stem + c.upper()):
            if os.path.isfile(wf):
                with open(wf) as f:
                    vals = [float(v) for v in f.read().split()[:6]]
                if len(vals) < 6:
                    raise InputError(f"world file {wf} needs 6 numbers; fix or remove it.")
                a, d, b, e, c0, f0 = vals
                if d != 0 or b != 0:
                    raise InputError(f"world file {wf} describes a rotated image; give a --tile_index instead.")
                from PIL import Image

                with Image.open(path) as im:
                    w, h = im.size
                # (c0, f0) is the centre of the top-left pixel; e is negative for north-up images.
                x0, y0 = c0 - a / 2, f0 - e / 2
                return (x0, y0 + h * e, x0 + w * a, y0)
    return None


def tiles_from_georeferencing(tile_dir: str, crs: str | None = None) -> Tiles:
    """Tiles of ``tile_dir`` with bounds read from each image (GeoTIFF tags or a world file).

    ``crs`` (``--tile_crs``) overrides the CRS found in the GeoTIFFs; tiles whose CRS differ are an error.
    """
    paths = _list_images(tile_dir)
    if not paths:
        raise InputError(f"tile folder {tile_dir} has no PNG, JPEG or GeoTIFF images; check --tiles.")
    bounds, crss = [], set()
    for p in paths:
        geo = None
        if os.path.splitext(p)[1].lower() in TIFF_EXTS:
            try:
                geo = _geotiff_georef(p)
            except OSError as e:
                raise InputError(f"cannot read GeoTIFF {p} ({e}); re-export it or give a --tile_index.")
        if geo is None:
            wb = _world_file_georef(p)
            geo = (wb, None) if wb is not None else None
        if geo is None:
            raise InputError(f"tile {p} has no georeferencing (no GeoTIFF tags, no world file); give "
                             "--tile_index INDEX.csv with its bounds.")
        bounds.append(geo[0])
        if geo[1]:
            crss.add(geo[1])
    if crs is None and len(crss) > 1:
        raise InputError(f"tiles in {tile_dir} use several CRS ({', '.join(sorted(crss))}); reproject them "
                         "to one CRS or give a --tile_index.")
    return Tiles(paths=paths, bounds=np.asarray(bounds, dtype=np.float64),
                 crs=crs or (crss.pop() if crss else None))


# --------------------------------------------------------------------------------------------------
# CRS


def _pyproj():
    try:
        import pyproj
    except ImportError:
        raise InputError("reprojecting POIs between CRS needs pyproj; run `pip install pyproj` or give "
                         "POIs and tiles in the same CRS without --crs/--tile_crs.")
    return pyproj


def _crs_obj(crs: str, what: str):
    pyproj = _pyproj()
    try:
        return pyproj.CRS.from_user_input(crs)
    except pyproj.exceptions.CRSError:
        raise InputError(f"unknown CRS {crs!r} for {what}; give an EPSG code such as EPSG:4326 or EPSG:32651.")


def same_crs(a: str | None, b: str | None, what_a: str = "--crs", what_b: str = "the tiles") -> bool:
    """True when no reprojection is needed (either side unknown, or both name the same CRS)."""
    if a is None or b is None or a.strip().upper() == b.strip().upper():
        return True
    return _crs_obj(a, what_a) == _crs_obj(b, what_b)


def check_crs(crs: str | None, what: str) -> None:
    """Raise InputError when ``crs`` is given but unknown (needs pyproj; skipped when it is missing)."""
    if crs is None:
        return
    try:
        import pyproj  # noqa: F401
    except ImportError:
        return  # cannot validate; an actual reprojection will say pyproj is needed
    _crs_obj(crs, what)


def reproject(xy: np.ndarray, src: str, dst: str) -> np.ndarray:
    """``[N, 2]`` coordinates from CRS ``src`` to ``dst`` (x = easting / longitude, always)."""
    pyproj = _pyproj()
    tr = pyproj.Transformer.from_crs(_crs_obj(src, "--crs"), _crs_obj(dst, "the tiles"), always_xy=True)
    x, y = tr.transform(xy[:, 0], xy[:, 1])
    return np.stack([np.asarray(x, float), np.asarray(y, float)], axis=1)
