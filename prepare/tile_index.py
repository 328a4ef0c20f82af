"""The tile index of a data folder: where every tile lies, in which CRS (docs/real_data.md).

``prepare_pois.py`` writes it beside the tiles, in two forms:

- ``ROOT/tile_index.gpkg``, layer ``tiles``: one square polygon per tile with its CRS and the columns
  ``name`` (the image file name, e.g. ``r0003_c0012.png``), ``row``, ``col`` (grid position, row 0 at
  the top), ``split`` (``train``/``val``/empty), ``n_poi`` and one column per target (NaN where the
  tile has no value). Open it in QGIS to see the tiles, their targets and the split on a map.
- ``ROOT/tile_index.csv``: ``name,minx,miny,maxx,maxy`` (the format ``prepare_pois.py --tile_index``
  reads), for tools without GDAL.

:func:`read_tile_index` gives the index back to the scripts that draw maps (``engine/maps.py``).
"""

from __future__ import annotations

import csv
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import geopandas as gpd
import numpy as np
import pyogrio
import shapely

from prepare.gdal_errors import reason
from utils.errors import UserError
from utils.fileio import atomic_path, atomic_write_text

__all__ = ["INDEX_GPKG", "INDEX_CSV", "LAYER", "TileIndex", "grid_positions", "read_tile_index", "write_tile_index"]

INDEX_GPKG = "tile_index.gpkg"
INDEX_CSV = "tile_index.csv"
LAYER = "tiles"
_BASE = ("name", "row", "col")


def _stem(name: str) -> str:
    return os.path.splitext(os.path.basename(str(name)))[0]


@dataclass
class TileIndex:
    """Tiles of one data folder.

    Attributes:
        names: ``[T]`` image file names (``NAME.png``), as the list files name them.
        bounds: ``[T, 4]`` float64 ``(minx, miny, maxx, maxy)`` in ``crs``.
        crs: ``EPSG:n`` or WKT; None when the tiles' CRS is unknown (the map then has bare units).
        rows: ``[T]`` int64 grid row (0 = top row).
        cols: ``[T]`` int64 grid column (0 = left column).
        columns: extra per-tile values, each ``[T]`` (``split``, ``n_poi``, targets).
    """

    names: list[str]
    bounds: np.ndarray
    crs: str | None
    rows: np.ndarray
    cols: np.ndarray
    columns: dict[str, np.ndarray] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.names)

    def polygons(self) -> np.ndarray:
        """``[T]`` shapely boxes of the tiles."""
        b = self.bounds
        return shapely.box(b[:, 0], b[:, 1], b[:, 2], b[:, 3])

    def to_frame(self):
        """The index as a GeoDataFrame (name, row, col, extra columns, tile polygon)."""
        data = {"name": list(self.names), "row": self.rows.astype(np.int64), "col": self.cols.astype(np.int64)}
        data.update({k: np.asarray(v) for k, v in self.columns.items()})
        return gpd.GeoDataFrame(data, geometry=self.polygons(), crs=self.crs)

    def locate(self, names) -> np.ndarray:
        """Position in the index of each of ``names`` (matched without extension) -> int64 ``[N]``.

        Raises:
            UserError: a name is not in the index (the data folder and the list do not match).
        """
        pos = {_stem(n): k for k, n in enumerate(self.names)}
        out = np.empty(len(names), dtype=np.int64)
        for i, n in enumerate(names):
            k = pos.get(_stem(n))
            if k is None:
                raise UserError(
                    f"tile {n!r} is not in the tile index ({len(self.names)} tiles); re-run "
                    "prepare_pois.py so that the index and the lists describe the same tiles."
                )
            out[i] = k
        return out

    @property
    def regular(self) -> bool:
        """True when the tiles are equal squares on one grid (``rows``/``cols`` place them exactly)."""
        if len(self) == 0:
            return False
        w, h = self.bounds[:, 2] - self.bounds[:, 0], self.bounds[:, 3] - self.bounds[:, 1]
        size = w[0]
        if not (np.allclose(w, size, rtol=1e-6) and np.allclose(h, size, rtol=1e-6)):
            return False
        x0 = self.bounds[:, 0] - self.cols * size
        y1 = self.bounds[:, 3] + self.rows * size
        return bool(np.allclose(x0, x0[0], atol=1e-6 * size) and np.allclose(y1, y1[0], atol=1e-6 * size))


def grid_positions(bounds: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Grid row/column of arbitrary tiles, from their centres on a grid of the median tile size.

    Anchored at the upper-left corner of the tiles' extent (row 0 at the top), like a mosaic's grid.
    Used for tiles cut elsewhere (``--tiles``), to draw maps and to form split blocks.

    Args:
        bounds: ``[T, 4]`` ``(minx, miny, maxx, maxy)``.

    Returns:
        ``(rows [T], cols [T])`` int64.
    """
    b = np.asarray(bounds, dtype=np.float64).reshape(-1, 4)
    if b.shape[0] == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    w = float(np.median(b[:, 2] - b[:, 0]))
    h = float(np.median(b[:, 3] - b[:, 1]))
    cx, cy = (b[:, 0] + b[:, 2]) / 2, (b[:, 1] + b[:, 3]) / 2
    cols = np.floor((cx - b[:, 0].min()) / w).astype(np.int64)
    rows = np.floor((b[:, 3].max() - cy) / h).astype(np.int64)
    return rows, cols


def write_tile_index(root: str | Path, index: TileIndex, timestamp: str | None = None) -> None:
    """Write ``ROOT/tile_index.gpkg`` and ``ROOT/tile_index.csv`` (each atomically).

    ``timestamp`` (ISO 8601): the date the GeoPackage records instead of now, for byte-identical files
    from the same inputs (the synthetic city).
    """
    root = Path(root)
    frame = index.to_frame()
    if timestamp is not None:
        pyogrio.set_gdal_config_options({"OGR_CURRENT_DATE": timestamp})
    try:
        with atomic_path(root / INDEX_GPKG, durable=False) as tmp, warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*crs.* was not provided")  # tiles of unknown CRS: say nothing
            frame.to_file(tmp, driver="GPKG", layer=LAYER, engine="pyogrio")
    finally:
        if timestamp is not None:
            pyogrio.set_gdal_config_options({"OGR_CURRENT_DATE": None})
    lines = ["name,minx,miny,maxx,maxy"]
    lines += [
        f"{n},{b[0]!r},{b[1]!r},{b[2]!r},{b[3]!r}" for n, b in zip(index.names, index.bounds.tolist(), strict=True)
    ]
    atomic_write_text("\n".join(lines) + "\n", root / INDEX_CSV, durable=False)


def read_tile_index(root: str | Path) -> TileIndex | None:
    """The tile index of data folder ``root``: ``tile_index.gpkg`` (with its CRS), else ``tile_index.csv``
    (positions only: ``crs`` None, grid rows and columns from the bounds), else None.

    Raises:
        UserError: the file exists but cannot be read or lacks the ``name`` column.
    """
    path = Path(root) / INDEX_GPKG
    if not path.is_file():
        return _read_csv_index(Path(root) / INDEX_CSV)
    try:
        df = pyogrio.read_dataframe(path, layer=LAYER)
    except Exception as e:  # corrupt or truncated GeoPackage
        raise UserError(
            f"cannot read the tile index {path} ({reason(e)}); re-run prepare_pois.py to write it again."
        ) from None
    if "name" not in df.columns:
        raise UserError(f"tile index {path} has no 'name' column; re-run prepare_pois.py to write it again.")
    b = df.geometry.bounds.to_numpy(np.float64) if len(df) else np.zeros((0, 4))
    if "row" in df.columns and "col" in df.columns:
        rows, cols = df["row"].to_numpy(np.int64), df["col"].to_numpy(np.int64)
    else:
        rows, cols = grid_positions(b)
    crs = None
    if df.crs is not None:
        auth = df.crs.to_authority(min_confidence=100)
        crs = f"{auth[0]}:{auth[1]}" if auth else df.crs.to_wkt()
    extra = {c: df[c].to_numpy() for c in df.columns if c not in (*_BASE, df.geometry.name)}
    return TileIndex(names=[str(n) for n in df["name"]], bounds=b, crs=crs, rows=rows, cols=cols, columns=extra)


def _read_csv_index(path: Path) -> TileIndex | None:
    """``name,minx,miny,maxx,maxy`` rows as a :class:`TileIndex` of unknown CRS, or None without the file."""
    if not path.is_file():
        return None
    with path.open(newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    try:
        names = [r["name"] for r in rows]
        bounds = np.array([[float(r[k]) for k in ("minx", "miny", "maxx", "maxy")] for r in rows], dtype=np.float64)
    except (KeyError, TypeError, ValueError):
        raise UserError(
            f"{path} is not a tile index with columns name,minx,miny,maxx,maxy of numbers; fix or remove it"
        ) from None
    bounds = bounds.reshape(-1, 4)
    if len(bounds) and not np.all(bounds[:, 2] > bounds[:, 0]):
        raise UserError(f"{path} has tiles without width (maxx <= minx); fix or remove it")
    r, c = grid_positions(bounds)
    return TileIndex(names=names, bounds=bounds, crs=None, rows=r, cols=c)
