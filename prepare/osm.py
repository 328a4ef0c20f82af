"""POIs from an OpenStreetMap ``.osm.pbf`` extract, read with GDAL's OSM driver (through pyogrio).

An OSM node is a POI when it carries one of the keys in :data:`POI_KEYS`; the first key present, in
that order, decides: category = the tag's value (``amenity=cafe`` -> ``cafe``), parent = the key
(``amenity``), so the two-level hierarchy of the category embeddings (docs/real_data.md) is OSM's
own. Only nodes (GDAL's ``points`` layer) are read: shops mapped as building outlines are ways and
are not POIs here.

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

import numpy as np
import pyogrio
import shapely

from prepare.gdal_errors import reason
from utils.errors import UserError

__all__ = ["POI_KEYS", "parse_other_tags", "read_osm_pois"]

POI_KEYS = ("amenity", "shop", "tourism", "leisure", "office", "craft", "healthcare", "historic")

# One "key"=>"value" pair of an hstore string; inside the quotes a backslash escapes the next character.
_PAIR = re.compile(r'"((?:[^"\\]|\\.)*)"\s*=>\s*(?:"((?:[^"\\]|\\.)*)"|NULL)', re.DOTALL)
_ESCAPE = re.compile(r"\\(.)", re.DOTALL)


def parse_other_tags(text: str | None) -> dict[str, str]:
    """``'"a"=>"1","b"=>"x \\"y\\""'`` -> ``{'a': '1', 'b': 'x "y"'}``; None or '' -> ``{}``.

    ``NULL`` values (hstore's missing value) are left out. Text that is not a pair is skipped, so a
    malformed string gives the pairs that can be read rather than an error.
    """
    if not text:
        return {}
    out = {}
    for m in _PAIR.finditer(text):
        if m.group(2) is not None:
            out[_ESCAPE.sub(r"\1", m.group(1))] = _ESCAPE.sub(r"\1", m.group(2))
    return out


def read_osm_pois(path: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, str]:
    """POIs of an ``.osm.pbf`` file, in file order.

    Returns:
        ``(x [N], y [N], category [N] str, parent [N] str, crs)``: lon/lat of the POI nodes, the value
        and the key of their first tag in :data:`POI_KEYS`, and ``"EPSG:4326"`` (OSM's CRS).
    """
    try:
        fields = [str(f) for f in pyogrio.read_info(path, layer="points")["fields"]]
        df = pyogrio.read_dataframe(path, layer="points", columns=[c for c in (*POI_KEYS, "other_tags") if c in fields])
    except Exception as e:  # DataSourceError for a file GDAL cannot open as OSM
        raise UserError(
            f"cannot read {path} as an OpenStreetMap PBF extract ({reason(e)}); "
            "download it again (e.g. from download.geofabrik.de) or give POIs in another format."
        ) from None
    n = len(df)
    cat = np.full(n, "", dtype=object)
    par = np.full(n, "", dtype=object)
    other = df["other_tags"].to_numpy(dtype=object) if "other_tags" in df else np.full(n, None, dtype=object)
    # Cheap pre-filter: only strings that mention one of the keys are parsed.
    pattern = "|".join(f'"{k}"=>' for k in POI_KEYS)
    maybe = (
        df["other_tags"].str.contains(pattern, regex=True, na=False).to_numpy()
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
    keep = np.flatnonzero(cat != "")
    if keep.size == 0:
        raise UserError(
            f"{path} has no OSM node tagged {', '.join(POI_KEYS)}; check that the extract covers "
            "your area and holds nodes, or give POIs in another format."
        )
    geoms = df.geometry.to_numpy()[keep]
    return (
        shapely.get_x(geoms).astype(np.float64),
        shapely.get_y(geoms).astype(np.float64),
        cat[keep],
        par[keep],
        "EPSG:4326",
    )
