"""POIs from an OpenStreetMap ``.osm.pbf`` extract, read with GDAL's OSM driver (through pyogrio).

An OSM node is a POI when it carries one of the keys in :data:`POI_KEYS`; the first key present, in
that order, decides: category = the tag's value (``amenity=cafe`` -> ``cafe``), parent = the key
(``amenity``), so the two-level hierarchy of the category embeddings (docs/real_data.md) is OSM's
own. So is an **area** with such a key (a school, park or hospital mapped as its outline: a closed way
or a multipolygon relation, GDAL's ``multipolygons`` layer, and closed ways GDAL's configuration does
not count as areas, in its ``lines`` layer), placed at a representative point inside it (shapely's
``point_on_surface``, which lies inside even a U-shaped outline, where a centroid may not). Areas are
often the largest POIs of a tile: 130 in central Helsinki's extract beside 1,881 nodes. Nodes come
first, in file order, then areas; ``areas=False`` reads nodes only. Relations that are not areas
(routes, streets; ``other_relations``, ``multilinestrings``) are not POIs.

GDAL's default OSM configuration gives the ``points`` layer a few tag columns (``name``, ``highway``,
``place``...) and packs every other tag into one ``other_tags`` string in PostgreSQL hstore syntax,
``"amenity"=>"cafe","name:en"=>"Blue \\"Moon\\""``. :func:`parse_other_tags` reads that string; a key
that a custom ``OSM_CONFIG_FILE`` turned into its own column is read from the column instead. (Why a
parser rather than a custom ``OSM_CONFIG_FILE``: that file must be written to disk and set as a
process-wide GDAL option, which would also change how every other OSM read in the process behaves;
the parser is one regular expression, tested on escapes and on a real extract.)
"""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyogrio
import shapely

from prepare.gdal_errors import reason
from prepare.geometry import repair_polygons
from utils.errors import UserError

__all__ = ["POI_KEYS", "OsmPois", "parse_other_tags", "read_osm_pois"]

POI_KEYS = ("amenity", "shop", "tourism", "leisure", "office", "craft", "healthcare", "historic")

# One "key"=>"value" pair of an hstore string; inside the quotes a backslash escapes the next character.
_PAIR = re.compile(r'"((?:[^"\\]|\\.)*)"\s*=>\s*(?:"((?:[^"\\]|\\.)*)"|NULL)', re.DOTALL)
_ESCAPE = re.compile(r"\\(.)", re.DOTALL)


def parse_other_tags(text: str | None) -> dict[str, str]:
    """``'"a"=>"1","b"=>"x \\"y\\""'`` -> ``{'a': '1', 'b': 'x "y"'}``; None or '' -> ``{}``.

    ``NULL`` values (hstore's missing value) are left out. Text that is not a pair is skipped, so a
    malformed string gives the pairs that can be read rather than an error. A missing value (None, NaN)
    is no tags.
    """
    if not isinstance(text, str) or not text:
        return {}
    out = {}
    for m in _PAIR.finditer(text):
        if m.group(2) is not None:
            out[_ESCAPE.sub(r"\1", m.group(1))] = _ESCAPE.sub(r"\1", m.group(2))
    return out


@dataclass
class OsmPois:
    """POIs of an OSM extract: nodes first (file order), then areas (file order).

    Attributes:
        x, y: ``[N]`` lon/lat; category, parent: ``[N]`` str (tag value, key); crs: ``"EPSG:4326"``.
        nodes, areas: how many of the N are nodes and areas.
        areas_without_geometry: areas with a POI key that GDAL could not build (an outline cut by the
            extract's edge): not POIs, counted.
    """

    x: np.ndarray
    y: np.ndarray
    category: np.ndarray
    parent: np.ndarray
    crs: str
    nodes: int
    areas: int
    areas_without_geometry: int = 0


def _layer(path: str, layer: str, fields: list[str]) -> pd.DataFrame:
    """The POI-key columns (and ``other_tags``) and the geometry of one layer of GDAL's OSM driver."""
    try:
        have = [str(f) for f in pyogrio.read_info(path, layer=layer)["fields"]]
        with warnings.catch_warnings():
            # An extract cuts relations and ways at its edge: GDAL warns about the broken rings it gets.
            warnings.simplefilter("ignore", RuntimeWarning)
            return pyogrio.read_dataframe(
                path, layer=layer, columns=[c for c in fields if c in have], on_invalid="ignore"
            )
    except Exception as e:  # DataSourceError for a file GDAL cannot open as OSM
        raise UserError(
            f"cannot read {path} as an OpenStreetMap PBF extract ({reason(e)}); "
            "download it again (e.g. from download.geofabrik.de) or give POIs in another format."
        ) from None


def _poi_tags(df: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """``(category [F], parent [F])`` of each feature: the value and the key of its first tag in
    :data:`POI_KEYS` ('' when it has none), from the key's own column or from ``other_tags``."""
    n = len(df)
    cat = np.full(n, "", dtype=object)
    par = np.full(n, "", dtype=object)
    other = df["other_tags"].to_numpy(dtype=object) if "other_tags" in df else np.full(n, None, dtype=object)
    # Cheap pre-filter: only strings that mention one of the keys are parsed.
    pattern = "|".join(f'"{k}"=>' for k in POI_KEYS)
    maybe = (
        df["other_tags"].str.contains(pattern, regex=True, na=False).to_numpy(dtype=bool, copy=True)
        if "other_tags" in df
        else np.zeros(n, bool)
    )
    for c in POI_KEYS:
        if c in df:
            maybe |= df[c].notna().to_numpy()
    for i in np.flatnonzero(maybe):
        tags = parse_other_tags(other[i])
        for k in POI_KEYS:
            v = df[k].iat[i] if k in df else tags.get(k)
            if v is not None and v == v and str(v).strip():  # v == v: not NaN
                cat[i], par[i] = str(v).strip(), k
                break
    return cat, par


def _areas(path: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """``(points [A], category [A], parent [A], without geometry)``: a point inside each area with a POI key."""
    fields = [*POI_KEYS, "other_tags"]
    polys = _layer(path, "multipolygons", fields)
    cat, par = _poi_tags(polys)
    geoms = polys.geometry.to_numpy()
    lines = _layer(path, "lines", fields)
    lcat, lpar = _poi_tags(lines)
    ring = shapely.is_closed(lines.geometry.to_numpy()) & (shapely.get_num_coordinates(lines.geometry.to_numpy()) >= 4)
    lkeep = np.flatnonzero((lcat != "") & ring)
    # A closed way GDAL's configuration does not count as an area (e.g. tagged only healthcare=*): its ring.
    lgeoms = np.array([shapely.Polygon(g.coords) for g in lines.geometry.to_numpy()[lkeep]], dtype=object)
    geoms = np.concatenate([geoms, lgeoms])
    cat, par = np.concatenate([cat, lcat[lkeep]]), np.concatenate([par, lpar[lkeep]])
    tagged = cat != ""
    raw = np.where(tagged, geoms, None)
    # An outline that crosses itself is repaired (its polygonal part), so that the point lies inside it; one
    # with no area left (a ring of two distinct nodes) still marks a place: a point on what make_valid keeps.
    geoms, _ = repair_polygons(raw)
    flat = shapely.is_missing(geoms) & ~shapely.is_missing(raw)
    geoms[flat] = shapely.make_valid(raw[flat])
    built = tagged & ~shapely.is_missing(geoms) & ~shapely.is_empty(geoms)
    points = shapely.point_on_surface(geoms[built])
    return points, cat[built], par[built], int((tagged & ~built).sum())


def read_osm_pois(path: str, areas: bool = True) -> OsmPois:
    """POIs of an ``.osm.pbf`` (or ``.osm``) file: nodes, then (``areas``) areas, each in file order.

    Returns:
        :class:`OsmPois`: lon/lat of the POIs, the value and the key of their first tag in
        :data:`POI_KEYS`, ``"EPSG:4326"`` (OSM's CRS), and how many are nodes and areas.
    """
    nodes = _layer(path, "points", [*POI_KEYS, "other_tags"])
    cat, par = _poi_tags(nodes)
    keep = np.flatnonzero(cat != "")
    pts = nodes.geometry.to_numpy()[keep]
    cat, par = cat[keep], par[keep]
    n_nodes, n_areas, lost = len(keep), 0, 0
    if areas:
        apts, acat, apar, lost = _areas(path)
        pts, cat, par = np.concatenate([pts, apts]), np.concatenate([cat, acat]), np.concatenate([par, apar])
        n_areas = len(apts)
    if len(pts) == 0:
        what = "node or area" if areas else "node"
        raise UserError(
            f"{path} has no OSM {what} tagged {', '.join(POI_KEYS)}; check that the extract covers "
            "your area, or give POIs in another format."
        )
    return OsmPois(
        x=shapely.get_x(pts).astype(np.float64),
        y=shapely.get_y(pts).astype(np.float64),
        category=cat,
        parent=par,
        crs="EPSG:4326",
        nodes=n_nodes,
        areas=n_areas,
        areas_without_geometry=lost,
    )
