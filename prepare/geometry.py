"""Repairing polygons read from users' files (census units, land cover, OpenStreetMap areas).

shapely's ``make_valid`` turns an invalid polygon (a self-intersecting ring, a spike) into a valid
geometry, which may be a collection of polygons with stray lines or points; only the polygonal part
carries area, so that is what is kept.
"""

from __future__ import annotations

import numpy as np
import shapely

__all__ = ["polygonal_part", "repair_polygons"]


def polygonal_part(g):
    """The polygonal part of a geometry (a collection's polygons as one MultiPolygon), None if it has none."""
    if g is None:
        return None
    if shapely.get_type_id(g) in (3, 6):  # Polygon, MultiPolygon
        return g
    parts = [p for p in shapely.get_parts(g) if shapely.get_type_id(p) in (3, 6)]
    if not parts:
        return None
    return shapely.union_all(parts) if len(parts) > 1 else parts[0]


def repair_polygons(geoms: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``[P]`` (Multi)Polygons (None kept None) -> ``(valid polygonal geometries [P], repaired [P] bool)``.

    Invalid ones go through ``make_valid`` and keep their polygonal part, None when it has none.
    """
    geoms = np.asarray(geoms, dtype=object).copy()
    present = ~shapely.is_missing(geoms)
    invalid = present & ~shapely.is_valid(geoms)
    if invalid.any():
        geoms[invalid] = np.array([polygonal_part(g) for g in shapely.make_valid(geoms[invalid])], dtype=object)
    return geoms, invalid
