"""Raw POIs + a mosaic or georeferenced tiles (+ targets) -> the layout ``mmgr.py`` and the downstream
scripts read (docs/method.md §1; docs/real_data.md).

Output folder ``OUT``::

    sub_shanghai_img/NAME.png|jpg      the tile image (cut from --mosaic, or copied / linked / converted)
    sub_shanghai_emb/STEM.tensor       float32 [n_poi, D]: category vector of each POI in the tile
    sub_shanghai_edge/STEM.tensor      int64 [2, E]: Delaunay graph of the tile's POIs (prepare/graph.py)
    sub_shanghai_weight/STEM.tensor    float32 [E]: edge weights 1 / (1 + d / median edge length)
    TARGET/STEM.txt                    one number per labelled tile, for every --target TARGET=...
    train.txt, val.txt                 the labelled tiles of each side of the split (with --target)
    tile_index.gpkg, tile_index.csv    tile polygons with the CRS (prepare/tile_index.py)
    category_embeddings.csv            category,v0..v{D-1}: the table used (reusable via --embeddings)
    prepare_summary.json               counts; written LAST, so a folder without it is an unfinished run
    .mmgr.lock                         the lock of OUT (utils/runlock.py); stays, like a run folder's

Rows of a tile's tensors follow the order of the POIs in the input file. A POI belongs to every tile
with ``minx <= x < maxx`` and ``miny <= y < maxy`` (half-open, so a POI on a shared edge of two
abutting tiles goes to exactly one). Tiles without POIs are written with ``[0, D]`` / ``[2, 0]``.

Every input is read and checked before the first file is written, so a mistake in any of them stops
the run with one sentence and leaves ``OUT`` as it was. The writing holds the lock of ``OUT``, as a
training run holds its folder's (docs/run_folder.md): a second preparation into the same ``OUT`` stops
at once naming the first (exit 75), and a write the storage refuses names the file and the fix (exit 74).
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import shutil
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import rasterio
import torch
from PIL import Image
from rasterio.errors import RasterioIOError
from tqdm import tqdm

from data.layout import PREPARE_SUMMARY, PUBLISHED_PRETRAIN_DIRS
from prepare import category_embed, mosaic, poi_io, splits, targets
from prepare.gdal_errors import reason
from prepare.graph import delaunay_edges
from prepare.poi_io import InputError
from prepare.tile_index import INDEX_CSV, INDEX_GPKG, TileIndex, grid_positions, write_tile_index
from utils.errors import StorageError
from utils.fileio import WriteFailed, atomic_path, atomic_save, atomic_write_text, write_advice
from utils.runlock import FolderLock

__all__ = ["assign_to_tiles", "PrepareConfig", "prepare"]

SUBDIRS = {k[: -len("_dir")]: v for k, v in PUBLISHED_PRETRAIN_DIRS.items()}  # img, emb, edge, weight
SUMMARY = PREPARE_SUMMARY  # its presence tells the readers a folder is prepare_pois.py's (data/layout.py)
TABLE = "category_embeddings.csv"
LISTS = {"train": "train.txt", "val": "val.txt"}
# With POIs given, this fraction of tiles or more without any POI draws a warning: the image-POI term
# then learns from a handful of tiles (a real run: 6 POIs, 668 of 674 tiles empty, and no word said).
SPARSE_POI_FRACTION = 0.9
# Names a --target may not take: the output's own folders, and the downstream image folder.
RESERVED = (*SUBDIRS.values(), "img", "func")


@dataclass(frozen=True)
class _HashGrid:
    """The uniform grid of :func:`assign_to_tiles`: origin, far corner, cell size and cell counts."""

    x0: float
    y0: float
    x1: float
    y1: float
    cw: float
    ch: float
    nx: int
    ny: int

    @classmethod
    def over(cls, bounds: np.ndarray, max_cells: int) -> _HashGrid:
        """Cells of the median tile size over the tiles' extent, coarsened to at most ``max_cells``."""
        x0, y0 = bounds[:, 0].min(), bounds[:, 1].min()
        x1, y1 = bounds[:, 2].max(), bounds[:, 3].max()
        cw = float(np.median(bounds[:, 2] - bounds[:, 0]))
        ch = float(np.median(bounds[:, 3] - bounds[:, 1]))
        nx = max(1, int(np.ceil((x1 - x0) / cw)))
        ny = max(1, int(np.ceil((y1 - y0) / ch)))
        if nx * ny > max_cells:  # scattered tiny tiles: coarser grid, more candidates per cell
            f = np.sqrt(nx * ny / max_cells)
            cw, ch = cw * f, ch * f
            nx, ny = max(1, int(np.ceil((x1 - x0) / cw))), max(1, int(np.ceil((y1 - y0) / ch)))
        return cls(x0, y0, x1, y1, cw, ch, nx, ny)

    def cell_x(self, v: np.ndarray) -> np.ndarray:
        return np.clip(np.floor((v - self.x0) / self.cw), 0, self.nx - 1).astype(np.int64)

    def cell_y(self, v: np.ndarray) -> np.ndarray:
        return np.clip(np.floor((v - self.y0) / self.ch), 0, self.ny - 1).astype(np.int64)


def assign_to_tiles(xy: np.ndarray, bounds: np.ndarray, max_cells: int = 1 << 24) -> tuple[np.ndarray, np.ndarray]:
    """Every (POI, tile) pair with ``minx <= x < maxx`` and ``miny <= y < maxy``, by grid hashing.

    Tiles are registered in the cells of a uniform grid (cell = median tile size) that their bounds
    touch; each POI is then tested only against the tiles of its own cell. Cost is O(N + T + pairs),
    all in numpy; overlapping tiles are allowed.

    Args:
        xy: ``[N, 2]`` POI coordinates.
        bounds: ``[T, 4]`` tile ``(minx, miny, maxx, maxy)``.
        max_cells: cap on the grid size (cells grow when tiles are tiny relative to the extent).

    Returns:
        ``(poi, tile)``: two int64 ``[P]`` arrays, sorted by tile, then by POI index (= file order).
    """
    n, t = xy.shape[0], bounds.shape[0]
    if n == 0 or t == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    g = _HashGrid.over(bounds, max_cells)
    # Register each tile in all cells its closed bounds touch (the same floor() as for POIs, which is
    # monotone, so a POI inside a tile always falls in one of the tile's cells).
    ix0, ix1 = g.cell_x(bounds[:, 0]), g.cell_x(bounds[:, 2])
    iy0, iy1 = g.cell_y(bounds[:, 1]), g.cell_y(bounds[:, 3])
    wx = ix1 - ix0 + 1
    per_tile = wx * (iy1 - iy0 + 1)
    tile_rep = np.repeat(np.arange(t, dtype=np.int64), per_tile)
    local = np.arange(tile_rep.size, dtype=np.int64) - np.repeat(np.cumsum(per_tile) - per_tile, per_tile)
    reg_cell = (iy0[tile_rep] + local // wx[tile_rep]) * g.nx + ix0[tile_rep] + local % wx[tile_rep]
    order = np.argsort(reg_cell, kind="stable")
    cell_tiles = tile_rep[order]  # tiles grouped by cell (CSR values)
    cell_count = np.bincount(reg_cell, minlength=g.nx * g.ny)
    cell_start = np.cumsum(cell_count) - cell_count

    inside = (xy[:, 0] >= g.x0) & (xy[:, 0] < g.x1) & (xy[:, 1] >= g.y0) & (xy[:, 1] < g.y1)
    pidx = np.flatnonzero(inside)
    pcell = g.cell_y(xy[pidx, 1]) * g.nx + g.cell_x(xy[pidx, 0])
    cnt = cell_count[pcell]
    poi = np.repeat(pidx, cnt)
    off = np.arange(poi.size, dtype=np.int64) - np.repeat(np.cumsum(cnt) - cnt, cnt)
    tile = cell_tiles[np.repeat(cell_start[pcell], cnt) + off]
    px, py, b = xy[poi, 0], xy[poi, 1], bounds[tile]
    hit = (b[:, 0] <= px) & (px < b[:, 2]) & (b[:, 1] <= py) & (py < b[:, 3])
    poi, tile = poi[hit], tile[hit]
    order = np.lexsort((poi, tile))
    return poi[order].astype(np.int64), tile[order].astype(np.int64)


@dataclass
class PrepareConfig:
    """What ``prepare_pois.py`` was asked to do (one field per flag; see its ``--help``)."""

    pois: str | None
    tiles: str | None
    out: str
    x_col: str = "x"
    y_col: str = "y"
    category_col: str = "category"
    parent_col: str | None = None
    layer: str | None = None
    crs: str | None = None
    osm_nodes_only: bool = False
    tile_index: str | None = None
    tile_crs: str | None = None
    embeddings: str | None = None
    embed_dim: int | None = None
    hierarchy_weight: float = 0.5
    max_edge_length: float | None = None
    image_mode: str = "copy"
    convert_tiff: bool = False
    workers: int = 1
    overwrite: bool = False
    mosaic: str | None = None
    tile_size_m: float | None = None
    tile_px: int | None = None
    bands: str | None = None
    nodata: float | None = None
    max_nodata: float = 0.5
    target: list[str] = field(default_factory=list)
    min_coverage: float = 0.95
    split: str = "block"
    block_tiles: int = 4
    val_fraction: float = 0.2
    seed: int = 0


def _save_tensor(array: np.ndarray, path: str) -> None:
    # Not fsynced: bulk, re-creatable files (utils/fileio.py); a refused write raises WriteFailed.
    atomic_save(torch.from_numpy(np.ascontiguousarray(array)), path, durable=False)


def _convert_tiff(src: str, dst: str) -> None:
    """An 8-bit GeoTIFF tile (1 band, or the first 3) as an RGB PNG (rasterio + Pillow)."""
    try:
        with rasterio.open(src) as ds:
            if ds.dtypes[0] != "uint8":
                raise InputError(
                    f"GeoTIFF tile {src} holds {ds.dtypes[0]} data, not 8-bit; cut the mosaic with "
                    "--mosaic (one stretch for all tiles) or convert it (gdal_translate -ot Byte -scale)."
                )
            data = ds.read([1, 2, 3] if ds.count >= 3 else [1])
    except RasterioIOError as e:
        raise InputError(f"cannot read GeoTIFF tile {src} ({reason(e)}); re-export it.") from None
    if data.shape[0] == 1:
        data = np.repeat(data, 3, axis=0)
    with atomic_path(dst, durable=False) as tmp:
        Image.fromarray(np.ascontiguousarray(data.transpose(1, 2, 0)), mode="RGB").save(tmp, format="PNG")


def _place_image(src: str, dst_dir: str, mode: str, convert_tiff: bool) -> str:
    """Put tile ``src`` into ``dst_dir``; returns the output file name."""
    name = os.path.basename(src)
    stem, ext = os.path.splitext(name)
    if ext.lower() in poi_io.TIFF_EXTS and convert_tiff:
        out = stem + ".png"
        _convert_tiff(src, os.path.join(dst_dir, out))
        return out
    with atomic_path(os.path.join(dst_dir, name), durable=False, expected_bytes=os.path.getsize(src)) as tmp:
        if mode == "hardlink":
            os.remove(tmp)  # a link needs a free name
            try:
                os.link(src, tmp)
            except OSError:  # other file system: fall back to a copy
                shutil.copyfile(src, tmp)
        elif mode == "symlink":
            os.remove(tmp)
            os.symlink(os.path.abspath(src), tmp)
        else:
            shutil.copyfile(src, tmp)
    return name


# Worker state, inherited by forked workers (set before the pool starts; read-only there).
_STATE: dict = {}


def _write_tiles(tile_ids: list[int]) -> tuple[int, dict[int, str]]:
    """Write images (unless already cut) + tensors of ``tile_ids``; returns (undirected edges, {tile: name})."""
    s = _STATE
    n_und = 0
    names = {}
    for t in tile_ids:
        lo, hi = s["tile_start"][t], s["tile_start"][t + 1]
        idx = s["poi"][lo:hi]  # file order
        if s["paths"] is not None:
            name = _place_image(s["paths"][t], s["dirs"]["img"], s["image_mode"], s["convert_tiff"])
        else:
            name = s["names"][t]
        stem = os.path.splitext(name)[0]
        emb = s["table"][s["codes"][idx]]  # [n, D]
        ei, w = delaunay_edges(s["xy"][idx], s["max_edge_length"])
        _save_tensor(emb, os.path.join(s["dirs"]["emb"], stem + ".tensor"))
        _save_tensor(ei, os.path.join(s["dirs"]["edge"], stem + ".tensor"))
        _save_tensor(w, os.path.join(s["dirs"]["weight"], stem + ".tensor"))
        n_und += ei.shape[1] // 2
        names[t] = name
    return n_und, names


def _write_tiles_in_worker(tile_ids: list[int]) -> tuple[int, dict[int, str]]:
    """:func:`_write_tiles` in a pool worker, a refused write sent back as a plain :class:`StorageError`."""
    try:
        return _write_tiles(tile_ids)
    except WriteFailed as exc:
        # WriteFailed cannot be rebuilt from its pickle (keyword-only arguments), and an exception the pool
        # cannot unpickle kills the pool's result thread: the parent would wait forever. Same sentence, exit 74.
        raise StorageError(str(exc)) from None


def _outputs(cfg: PrepareConfig, target_names: list[str]) -> list[str]:
    """Everything a preparation writes into OUT (besides the summary), this run's and an earlier one's."""
    old_targets: list[str] = []
    try:
        with open(os.path.join(cfg.out, SUMMARY)) as f:
            old_targets = [t for t in json.load(f).get("targets", {}) if t not in RESERVED and "/" not in t]
    except (OSError, ValueError, AttributeError):
        pass
    names = list(dict.fromkeys([*target_names, *old_targets]))
    return [TABLE, *SUBDIRS.values(), INDEX_GPKG, INDEX_CSV, *LISTS.values(), *names, *map(targets.types_file, names)]


def _prepare_out(cfg: PrepareConfig, target_names: list[str]) -> dict[str, str]:
    outputs = _outputs(cfg, target_names)
    existing = [p for p in [SUMMARY, *outputs] if os.path.exists(os.path.join(cfg.out, p))]
    if existing and not cfg.overwrite:
        raise InputError(
            f"output folder {cfg.out} already holds {existing[0]}; pick a new --out or add --overwrite to replace it."
        )
    os.makedirs(cfg.out, exist_ok=True)
    # The summary goes first so an interrupted rerun never looks complete; stale outputs go too.
    for p in [SUMMARY, *outputs]:
        full = os.path.join(cfg.out, p)
        if os.path.isdir(full) and not os.path.islink(full):
            shutil.rmtree(full)
        elif os.path.lexists(full):
            os.remove(full)
    dirs = {}
    for k, sub in SUBDIRS.items():
        d = os.path.join(cfg.out, sub)
        os.makedirs(d)
        dirs[k] = d
    return dirs


def _one_torch_thread() -> None:
    torch.set_num_threads(1)


def _check_flags(cfg: PrepareConfig) -> None:
    if bool(cfg.mosaic) == bool(cfg.tiles):
        raise InputError(
            "give either --mosaic RASTER (one large raster to cut) or --tiles DIR (tiles already cut), "
            "not both or neither."
        )
    if cfg.mosaic and cfg.tile_size_m is None:
        raise InputError(
            f"--mosaic {cfg.mosaic} needs --tile_size_m, the tile side in the mosaic's CRS units "
            "(e.g. 1000 for 1 km tiles in a UTM CRS)."
        )
    if cfg.mosaic and cfg.tile_index:
        raise InputError("--tile_index describes tiles already cut (--tiles); a --mosaic is cut on its own grid.")
    if not 0.0 <= cfg.max_nodata <= 1.0:
        raise InputError(f"--max_nodata must be a fraction in [0, 1], not {cfg.max_nodata}.")
    if not 0.0 <= cfg.min_coverage <= 1.0:
        raise InputError(f"--min_coverage must be a fraction in [0, 1], not {cfg.min_coverage}.")
    if cfg.image_mode not in ("copy", "hardlink", "symlink"):
        raise InputError(f"--image_mode must be copy, hardlink or symlink, not {cfg.image_mode!r}.")
    if cfg.workers < 1:
        raise InputError(f"--workers must be at least 1, not {cfg.workers}.")
    if cfg.split not in splits.SPLITS:
        raise InputError(f"--split must be one of {', '.join(splits.SPLITS)}, not {cfg.split!r}.")
    if not 0.0 <= cfg.val_fraction < 1.0:
        raise InputError(f"--val_fraction must be in [0, 1), not {cfg.val_fraction}.")
    if cfg.block_tiles < 1:
        raise InputError(f"--block_tiles must be at least 1, not {cfg.block_tiles}.")
    poi_io.check_crs(cfg.crs, "--crs")
    poi_io.check_crs(cfg.tile_crs, "--tile_crs")


# ----------------------------------------------------------------------------------------------------
# The stages of prepare(): read and check every input (1-4), then write (5-7) under the lock of OUT.

Log = Callable[[str], object]


@dataclass
class _Source:
    """The tiles before anything is written: the mosaic's grid (--mosaic) or the tiles already cut (--tiles)."""

    crs: str | None  # the tiles' CRS (None: unknown)
    extent: tuple[float, float, float, float]  # (minx, miny, maxx, maxy) of all tiles
    n_cells: int  # cells of the mosaic's grid, or tiles listed
    grid: mosaic.MosaicGrid | None = None
    tiles: poi_io.Tiles | None = None


@dataclass
class _Points:
    """The POIs in the tiles' CRS; ``pois`` is None without --pois (image-only: no POI at all)."""

    pois: poi_io.Pois | None
    xy: np.ndarray  # [N, 2] in the tiles' CRS
    reprojected: bool


@dataclass
class _Embeddings:
    """The category of every POI and the table of the categories' vectors."""

    categories: np.ndarray  # [C] str, sorted
    codes: np.ndarray  # [N] int64: each POI's row of ``table``
    table: np.ndarray  # [C, D] float32
    saved_categories: list[str]  # the rows of category_embeddings.csv ...
    saved_table: np.ndarray  # ... and their vectors [C', D]
    source: str  # "table" (--embeddings), "learned" or "none" (image-only)
    unseen: dict[str, int] = field(default_factory=dict)  # categories missing from --embeddings: their POIs
    from_parent: dict[str, str] = field(default_factory=dict)  # ... of them, those given their parent's vector
    dropped: dict[str, int] = field(default_factory=dict)  # ... and those dropped, with their POIs
    keep: np.ndarray | None = None  # [N] bool: the POIs kept (None: all)


@dataclass
class _Placed:
    """The tiles of OUT: bounds, grid positions, and where their images come from."""

    bounds: np.ndarray  # [T, 4] (minx, miny, maxx, maxy)
    rows: np.ndarray  # [T] grid row
    cols: np.ndarray  # [T] grid column
    names: list[str] | None  # [T] image names of the cut mosaic; None for --tiles (known once placed)
    paths: list[str] | None  # [T] source images of --tiles, placed with the graphs; None for a mosaic
    skipped_nodata: int = 0  # cells of the mosaic left out for nodata
    flat: int = 0  # cut tiles of one colour throughout


@dataclass
class _Graphs:
    """What the POI-graph stage wrote, and which POI went to which tile."""

    names: list[str]  # [T] image name of each tile in OUT/sub_shanghai_img
    poi: np.ndarray  # [P] int64: the POI of each (POI, tile) pair of assign_to_tiles
    per_tile: np.ndarray  # [T] POIs in each tile
    n_edges: int  # undirected edges over all tiles


@dataclass
class _Labels:
    """The targets on the tiles and the split of the labelled tiles."""

    columns: dict[str, np.ndarray]  # tile index columns [T]: n_poi, each target and its coverage, split
    targets: dict[str, dict]  # summary of each target
    split: dict | None  # summary of the split (None without --target)


def _open_tiles(cfg: PrepareConfig, log: Log) -> _Source:
    """Stage 1: the mosaic's grid, or the tiles already cut (metadata only, nothing written yet)."""
    if cfg.mosaic:
        grid = mosaic.open_mosaic(cfg.mosaic, cfg.tile_size_m, cfg.tile_px, cfg.bands, cfg.nodata)
        if cfg.tile_crs and not poi_io.same_crs(cfg.tile_crs, grid.crs, "--tile_crs", cfg.mosaic):
            raise InputError(
                f"--tile_crs {cfg.tile_crs} differs from the CRS of mosaic {cfg.mosaic}; drop --tile_crs "
                "(the mosaic's own CRS is used)."
            )
        src = _Source(grid.crs, grid.extent, grid.n_rows * grid.n_cols, grid=grid)
        what = (
            f"{grid.n_rows} rows x {grid.n_cols} columns of {grid.tile_size:g}-unit cells ({grid.tile_px} px"
            f"{'' if abs(max(grid.px) - grid.tile_px) < 1e-6 else f' from {max(grid.px):.3g} px of the mosaic'}) "
            f"of {cfg.mosaic}, {grid.describe_bands()}"
        )
    else:
        src = _open_cut_tiles(cfg)
        what = f"{src.n_cells} tiles of {cfg.tiles}"
    crs = src.crs
    log(f"tiles: {what}, CRS {crs if crs is None or len(crs) < 40 else 'from the files (WKT)'}")
    return src


def _open_cut_tiles(cfg: PrepareConfig) -> _Source:
    """The tiles of --tiles with their bounds: from --tile_index, or from each image's georeferencing."""
    if cfg.tile_index:
        tiles = poi_io.read_tile_index(cfg.tile_index, cfg.tiles, cfg.tile_crs)
    else:
        tiles = poi_io.tiles_from_georeferencing(cfg.tiles, cfg.tile_crs)
    stems = [os.path.splitext(os.path.basename(p))[0] for p in tiles.paths]
    dup = [s for s, c in Counter(stems).items() if c > 1]
    if dup:
        raise InputError(
            f"two tiles in {cfg.tiles} share the name {dup[0]!r} (different extensions); rename "
            "one, as the tensors are named after the image without its extension."
        )
    poi_io.check_crs(tiles.crs, "the tiles")
    crs = poi_io.crs_name(tiles.crs, "the tiles") if tiles.crs else None
    b = tiles.bounds
    extent = (b[:, 0].min(), b[:, 1].min(), b[:, 2].max(), b[:, 3].max())
    return _Source(crs, extent, len(tiles.paths), tiles=tiles)


def _survey(cfg: PrepareConfig, src: _Source, log: Log) -> mosaic.MosaicSurvey | None:
    """Stage 1b: the mosaic's stretch, and a warning when its low end looks like fill no nodata marks
    (docs/real_data.md, "Nodata"); None for tiles already cut."""
    if src.grid is None:
        return None
    survey = mosaic.survey_mosaic(src.grid)
    if survey.stretch is not None:
        ranges = ", ".join(f"[{lo:.6g}, {hi:.6g}]" for lo, hi in survey.stretch)
        log(f"stretch (2-98 % of the valid pixels, one for the whole mosaic): {ranges}")
    if survey.fill_value is not None:
        v = f"{survey.fill_value:g}"
        tag = (
            "declares no nodata"
            if survey.declared_nodata is None
            else f"marks {survey.declared_nodata:g} as nodata, not {v}"
        )
        log(
            f"warning: {survey.fill_fraction:.1%} of the sampled pixels of {cfg.mosaic} are {v} in every band "
            f"used, the low end of {'its stretch' if survey.stretch is not None else 'every band'}, and the "
            f"mosaic {tag}; if {v} is fill (a scene's edge, a mask), give --nodata {v}: otherwise its tiles "
            "are kept as real ones" + (" and the stretch spends its range on it" if survey.stretch is not None else "")
        )
    return survey


def _read_pois(cfg: PrepareConfig, src: _Source, log: Log) -> _Points:
    """Stage 2: the POIs (optional), reprojected to the tiles' CRS and checked to overlap the tiles."""
    if not cfg.pois:  # every tile has zero POIs: image-only pretraining
        return _Points(None, np.zeros((0, 2)), False)
    tile_crs = src.crs
    pois = poi_io.read_pois(
        cfg.pois, cfg.x_col, cfg.y_col, cfg.category_col, cfg.parent_col, cfg.crs, cfg.layer, not cfg.osm_nodes_only
    )
    xy = pois.xy
    reprojected = not poi_io.same_crs(pois.crs, tile_crs)
    if reprojected:
        xy = poi_io.reproject(xy, pois.crs, tile_crs)
        log(f"reprojected POIs from {pois.crs} to {tile_crs if len(tile_crs) < 40 else 'the tiles CRS'}")
    fin = np.isfinite(xy).all(axis=1)
    poi_extent = (xy[fin, 0].min(), xy[fin, 1].min(), xy[fin, 0].max(), xy[fin, 1].max()) if fin.any() else None
    if poi_extent is None or not poi_io.extent_overlaps(poi_extent, src.extent):
        shown = poi_io.format_extent(poi_extent) if poi_extent else "empty"
        raise InputError(
            f"POIs in {cfg.pois} do not overlap the tiles: their extent is {shown}, the tiles' is "
            f"{poi_io.format_extent(src.extent)} (both in the tiles' CRS {tile_crs}); check --crs or "
            "the files' CRS."
        )
    log(f"read {len(xy)} of {pois.in_file} POIs from {cfg.pois}{_poi_origin(pois)}")
    return _Points(pois, xy, reprojected)


def _poi_origin(pois: poi_io.Pois) -> str:
    """`` (1881 tagged nodes, 129 tagged areas ...; dropped: 82 without a category)`` for the log."""
    parts = []
    if pois.osm is not None:
        o = pois.osm
        parts.append(f"{o['nodes']} tagged nodes, {o['areas']} tagged areas at a point inside each")
        if o["areas_without_geometry"]:
            parts.append(f"{o['areas_without_geometry']} tagged areas cut by the extract's edge left out")
    if pois.dropped_text():
        parts.append(f"dropped: {pois.dropped_text()}")
    return f" ({'; '.join(parts)})" if parts else ""


def _open_targets(cfg: PrepareConfig, src: _Source) -> list[targets.Target]:
    """Stage 3: every --target parsed, opened and checked against the tiles."""
    specs = [targets.parse_target(t, RESERVED) for t in cfg.target]
    dup = [n for n, c in Counter(s.name for s in specs).items() if c > 1]
    if dup:
        raise InputError(f"--target {dup[0]} is given twice; give each target one name.")
    return [targets.open_target(s, src.crs, src.extent) for s in specs]


def _embeddings(cfg: PrepareConfig, pts: _Points, log: Log) -> _Embeddings:
    """Stage 4: the POIs' categories and their vectors: --embeddings, or learned here (still read-only)."""
    if pts.pois is not None:
        cats, codes = np.unique(pts.pois.category.astype(str), return_inverse=True)
    else:
        cats, codes = np.zeros(0, str), np.zeros(0, np.int64)
    codes = codes.reshape(-1)
    if cfg.embeddings:
        return _table_embeddings(cfg, pts, cats, codes, log)
    dim = cfg.embed_dim or 64
    if pts.pois is None:  # image-only: nothing to learn from
        return _Embeddings(cats, codes, np.zeros((0, dim), np.float32), [], np.zeros((0, dim), np.float32), "none")
    return _learned_embeddings(cfg, pts, cats, codes, dim, log)


def _table_embeddings(cfg: PrepareConfig, pts: _Points, cats: np.ndarray, codes: np.ndarray, log: Log) -> _Embeddings:
    """The vectors of --embeddings (a shared vocabulary, docs/real_data.md). A category the table lacks takes
    its parent's vector when the table has the parent (prepare/category_embed.py, ``parent_candidates``),
    else its POIs are dropped; both are counted and said."""
    tab_cats, tab_vecs = category_embed.read_table(cfg.embeddings)
    if cfg.embed_dim is not None and cfg.embed_dim != tab_vecs.shape[1]:
        raise InputError(
            f"embedding table {cfg.embeddings} has {tab_vecs.shape[1]} columns but "
            f"--embed_dim is {cfg.embed_dim}; drop --embed_dim or fix the table."
        )
    dim = tab_vecs.shape[1]
    pos = {c: k for k, c in enumerate(tab_cats)}
    table = np.zeros((len(cats), dim), dtype=np.float32)  # dropped categories' rows stay unused
    counts = np.bincount(codes, minlength=len(cats))
    data_parent = _data_parents(pts, codes, len(cats))
    unseen: dict[str, int] = {}
    from_parent: dict[str, str] = {}
    dropped: dict[str, int] = {}
    for k, c in enumerate(cats):
        c = str(c)
        if c in pos:
            table[k] = tab_vecs[pos[c]]
            continue
        unseen[c] = int(counts[k])
        parent = next((p for p in category_embed.parent_candidates(c, data_parent[k]) if p in pos), None)
        if parent is not None:
            table[k] = tab_vecs[pos[parent]]
            from_parent[c] = parent
        else:
            dropped[c] = int(counts[k])
    # Saved table = the shared rows plus the categories given their parent's vector: it covers this city,
    # and agrees with the shared table on every category both have (mmgr.py checks that, data/roots.py).
    extra = [c for c in from_parent]
    out_cats = tab_cats + extra
    out_table = (
        np.concatenate([tab_vecs, np.stack([tab_vecs[pos[from_parent[c]]] for c in extra])]) if extra else tab_vecs
    )
    keep = None
    if dropped:
        gone = np.isin(cats, list(dropped))
        keep = ~gone[codes]
    if unseen:
        said = [f"{c} <- {p}" for c, p in sorted(from_parent.items())[:10]]
        log(
            f"{len(unseen)} categories are not in {cfg.embeddings}: {len(from_parent)} take their parent's vector"
            + (f" ({', '.join(said)}{' ...' if len(from_parent) > 10 else ''})" if said else "")
            + f", {len(dropped)} without a parent in the table are dropped with their {sum(dropped.values())} POIs"
            + (f" ({', '.join(sorted(dropped)[:10])}{' ...' if len(dropped) > 10 else ''})" if dropped else "")
        )
    return _Embeddings(cats, codes, table, out_cats, out_table, "table", unseen, from_parent, dropped, keep)


def _data_parents(pts: _Points, codes: np.ndarray, n_cat: int) -> list[str | None]:
    """The parent the city's own data give each category (its most frequent one; None without a parent column)."""
    if pts.pois is None or pts.pois.parent is None:
        return [None] * n_cat
    pairs = Counter(zip(codes.tolist(), pts.pois.parent.astype(str).tolist(), strict=True))
    best: dict[int, tuple[int, str]] = {}
    for (c, p), n in sorted(pairs.items()):
        if c not in best or n > best[c][0]:
            best[c] = (n, p)
    return [best[c][1] if c in best else None for c in range(n_cat)]


def _learned_embeddings(
    cfg: PrepareConfig, pts: _Points, cats: np.ndarray, codes: np.ndarray, dim: int, log: Log
) -> _Embeddings:
    """``dim``-wide vectors learned from the city's co-location network (docs/method.md §3)."""
    t0 = time.time()
    city_edges, _ = delaunay_edges(pts.xy, cfg.max_edge_length)  # city-wide co-location network
    counts_mat = category_embed.cooccurrence(codes, city_edges, len(cats))
    parent_codes = None
    if pts.pois.parent is not None:
        # Parent of each category: its most frequent parent (a category listed under two parents
        # is a data error we tolerate rather than fail on).
        pairs = Counter(zip(codes.tolist(), pts.pois.parent.tolist(), strict=True))
        best: dict[int, tuple[int, str]] = {}
        for (c, p), n in pairs.items():
            if c not in best or n > best[c][0]:
                best[c] = (n, p)
        parents, parent_codes = np.unique([best[c][1] for c in range(len(cats))], return_inverse=True)
    full = category_embed.learn_embeddings(counts_mat, dim, parent_codes, cfg.hierarchy_weight, with_parents=True)
    table = full[: len(cats)]
    log(
        f"learned {dim}-d vectors for {len(cats)} categories from {city_edges.shape[1] // 2} "
        f"Delaunay edges ({time.time() - t0:.1f}s)"
    )
    saved_cats, saved = [str(c) for c in cats], table
    if parent_codes is not None and cfg.hierarchy_weight > 0:
        # The parents' own vectors follow, for the categories a city sharing this table lacks
        # (prepare/category_embed.py); a parent named like a category is left out (the category's row wins).
        names = set(saved_cats)
        rows = [(str(p), full[len(cats) + k]) for k, p in enumerate(parents) if str(p) not in names]
        if rows:
            saved_cats = saved_cats + [p for p, _ in rows]
            saved = np.concatenate([table, np.stack([v for _, v in rows])])
    return _Embeddings(cats, codes, table, saved_cats, saved, "learned")


def _cut_or_list(
    cfg: PrepareConfig, src: _Source, stretch: np.ndarray | None, dirs: dict[str, str], log: Log
) -> _Placed:
    """Stage 5: the mosaic cut into OUT/sub_shanghai_img, or the bounds of the tiles already cut."""
    if src.grid is None:
        rows, cols = grid_positions(src.tiles.bounds)
        return _Placed(src.tiles.bounds, rows, cols, names=None, paths=src.tiles.paths)
    cut = mosaic.cut_mosaic(src.grid, dirs["img"], stretch, cfg.max_nodata, cfg.workers)
    log(
        f"tiles: cut {len(cut.names)} of {src.n_cells} cells from {cfg.mosaic} ({cut.skipped_nodata} skipped with "
        f"more than {cfg.max_nodata:.0%} nodata) in {cut.seconds:.1f}s"
    )
    if cut.flat:
        log(
            f"warning: {cut.flat} of the {len(cut.names)} tiles are one colour throughout: fill that no nodata "
            "marks (give --nodata VALUE to skip it) or featureless ground; they are kept as tiles"
        )
    if not cut.names:
        raise InputError(
            f"every tile of mosaic {cfg.mosaic} has more than {cfg.max_nodata:.0%} nodata; check its "
            "nodata value or raise --max_nodata."
        )
    return _Placed(
        cut.bounds, cut.rows, cut.cols, names=cut.names, paths=None, skipped_nodata=cut.skipped_nodata, flat=cut.flat
    )


def _write_graphs(
    cfg: PrepareConfig, placed: _Placed, pts: _Points, emb: _Embeddings, dirs: dict[str, str], log: Log
) -> _Graphs:
    """Stage 6: every tile's POI tensors (and its image, for --tiles), in forked workers with --workers."""
    poi, tile = assign_to_tiles(pts.xy, placed.bounds)
    n_tiles = placed.bounds.shape[0]
    per_tile = np.bincount(tile, minlength=n_tiles)
    tile_start = np.concatenate([[0], np.cumsum(per_tile)])
    _STATE.update(
        poi=poi,
        tile_start=tile_start,
        paths=placed.paths,
        names=placed.names,
        dirs=dirs,
        image_mode=cfg.image_mode,
        convert_tiff=cfg.convert_tiff,
        table=emb.table,
        codes=emb.codes,
        xy=pts.xy,
        max_edge_length=cfg.max_edge_length,
    )
    t0 = time.time()
    chunks = [list(range(k, min(k + 256, n_tiles))) for k in range(0, n_tiles, 256)]
    try:
        results = _run_chunks(chunks, n_tiles, cfg.workers)
    finally:
        _STATE.clear()
    n_edges = sum(r[0] for r in results)
    out_names: dict[int, str] = {}
    for r in results:
        out_names.update(r[1])
    names = [out_names[t] for t in range(n_tiles)]
    log(
        f"POI graphs: {n_tiles} tiles, {int((per_tile > 0).sum())} with POIs, {int(n_edges)} edges "
        f"({time.time() - t0:.1f}s)"
    )
    with_poi = int((per_tile > 0).sum())
    if pts.pois is not None and n_tiles - with_poi >= SPARSE_POI_FRACTION * n_tiles:
        log(
            f"warning: {n_tiles - with_poi} of {n_tiles} tiles ({(n_tiles - with_poi) / n_tiles:.0%}) have no POI "
            f"({poi.size} POIs fall in the other {with_poi}), so the image-POI term of pretraining learns from "
            f"{with_poi} tiles; check that {cfg.pois} covers the mosaic, or pretrain on the images alone "
            "(mmgr.py --img_lmd 1)"
        )
    return _Graphs(names, poi, per_tile, int(n_edges))


def _run_chunks(chunks: list[list[int]], n_tiles: int, workers: int) -> list[tuple[int, dict[int, str]]]:
    """:func:`_write_tiles` on every chunk of tiles, in ``workers`` forked processes when it pays; with a bar."""
    results = []
    bar = tqdm(total=n_tiles, desc="POI graphs", unit="tile", disable=None)
    try:
        if workers > 1 and len(chunks) > 1:
            # fork: workers inherit _STATE (millions of POIs) without pickling it. One torch thread per
            # child: a forked child that enters torch's OpenMP pool inherited from a parent that had
            # started it can deadlock (what DataLoader workers avoid the same way).
            with mp.get_context("fork").Pool(workers, initializer=_one_torch_thread) as pool:
                for r in pool.imap(_write_tiles_in_worker, chunks):
                    results.append(r)
                    bar.update(len(r[1]))
        else:
            for ch in chunks:
                results.append(_write_tiles(ch))
                bar.update(len(ch))
    finally:
        bar.close()
    return results


def _label_tiles(
    cfg: PrepareConfig, opened: list[targets.Target], placed: _Placed, graphs: _Graphs, tile_crs: str | None, log: Log
) -> _Labels:
    """Stage 7: the targets on the written tiles, then the split of the tiles that have every target."""
    n_tiles = len(graphs.names)
    columns: dict[str, np.ndarray] = {"n_poi": graphs.per_tile.astype(np.int64)}
    target_summary = {}
    labelled = np.ones(n_tiles, dtype=bool) if opened else np.zeros(n_tiles, dtype=bool)
    for tg in opened:
        t0 = time.time()
        values, coverage = targets.compute_target(tg, placed.bounds, tile_crs, cfg.min_coverage, placed.rows)
        ok = np.isfinite(values.reshape(n_tiles, -1)).all(axis=1)
        labelled &= ok
        targets.write_values(os.path.join(cfg.out, tg.spec.name), graphs.names, values)
        name = tg.spec.name
        tile_columns, summary, what = _target_columns(cfg, tg, values, ok)
        columns.update(tile_columns)
        columns[f"{name}_coverage"] = coverage
        summary.update(
            tiles_with_value=int(ok.sum()),
            tiles_below_min_coverage=int((~ok).sum()),
            polygons=tg.dropped or None,
            seconds=round(time.time() - t0, 2),
        )
        target_summary[name] = summary
        dropped = targets.dropped_summary(tg)
        log(
            f"target {name}: {int(ok.sum())} of {n_tiles} tiles labelled ({int((~ok).sum())} less than "
            f"{cfg.min_coverage:.0%} covered), {what}, from {tg.spec.path}{f' ({dropped})' if dropped else ''} "
            f"({time.time() - t0:.1f}s)"
        )
    split_col = np.full(n_tiles, "", dtype=object)
    split_summary = _write_split(cfg, labelled, placed, graphs.names, split_col, log) if opened else None
    columns["split"] = split_col
    return _Labels(columns, target_summary, split_summary)


def _target_columns(
    cfg: PrepareConfig, tg: targets.Target, values: np.ndarray, ok: np.ndarray
) -> tuple[dict[str, np.ndarray], dict, str]:
    """A computed target's tile index columns, its summary and a phrase for the log; writes a class target's
    ``NAME_types.txt``. ``values``: ``[T]``, or ``[T, K]`` shares; ``ok``: ``[T]`` tiles with a value."""
    name = tg.spec.name
    summary = {"source": tg.spec.path, "kind": tg.kind, "column": tg.spec.column}
    if tg.kind != "classes":
        summary["total_on_tiles"] = float(np.nansum(values))
        what = f"total {np.nansum(values):.6g} on labelled tiles"
        if tg.kind == "polygons":
            what += f" of {tg.dropped['count_in_file']:.6g} in the file (the rest on tiles under the coverage or off the grid)"
        return {name: values}, summary, what
    targets.write_types(cfg.out, tg)
    shares = np.nan_to_num(values)
    # In the tile index: the dominant class, and each class's share (NaN where the tile has no value).
    columns = {name: np.where(ok, np.asarray(tg.classes, dtype=object)[shares.argmax(axis=1)], "")}
    columns.update({f"{name}_{c}": values[:, k] for k, c in enumerate(tg.classes)})
    mean = shares[ok].mean(axis=0) if ok.any() else np.zeros(len(tg.classes))
    summary["classes"] = list(tg.classes)
    summary["mean_share_on_labelled_tiles"] = {c: round(float(m), 6) for c, m in zip(tg.classes, mean, strict=True)}
    shown = ", ".join(tg.classes[:8]) + (" ..." if len(tg.classes) > 8 else "")
    return columns, summary, f"shares of {len(tg.classes)} classes ({shown}) -> {name}/, {targets.types_file(name)}"


def _write_split(
    cfg: PrepareConfig, labelled: np.ndarray, placed: _Placed, names: list[str], split_col: np.ndarray, log: Log
) -> dict:
    """The ``labelled`` tiles ``[T]`` split into train.txt and val.txt; marks ``split_col`` ``[T]``, returns
    the split's summary."""
    lab = np.flatnonzero(labelled)
    is_val = splits.split_tiles(
        placed.rows[lab], placed.cols[lab], cfg.split, cfg.block_tiles, cfg.val_fraction, cfg.seed
    )
    split_col[lab[~is_val]], split_col[lab[is_val]] = "train", "val"
    for side, sel in (("train", lab[~is_val]), ("val", lab[is_val])):
        atomic_write_text("".join(names[k] + "\n" for k in sel), os.path.join(cfg.out, LISTS[side]), durable=False)
    summary = {
        "method": cfg.split,
        "block_tiles": cfg.block_tiles if cfg.split == "block" else None,
        "val_fraction": cfg.val_fraction,
        "seed": cfg.seed,
        "train": int((~is_val).sum()),
        "val": int(is_val.sum()),
    }
    log(
        f"split ({cfg.split}{f', {cfg.block_tiles}x{cfg.block_tiles} tile blocks' if cfg.split == 'block' else ''}"
        f"): {summary['train']} train, {summary['val']} val tiles -> train.txt, val.txt"
    )
    return summary


def _summary(
    cfg: PrepareConfig,
    src: _Source,
    pts: _Points,
    emb: _Embeddings,
    placed: _Placed,
    graphs: _Graphs,
    labels: _Labels,
    survey: mosaic.MosaicSurvey | None,
    seconds: float,
) -> dict:
    """The counts of ``prepare_summary.json`` (docs/real_data.md, "Summary")."""
    pois, grid = pts.pois, src.grid
    n_tiff = (
        0 if placed.paths is None else sum(os.path.splitext(p)[1].lower() in poi_io.TIFF_EXTS for p in placed.paths)
    )
    n_read = pois.in_file if pois else 0
    in_any = np.zeros(len(pts.xy), dtype=bool)
    in_any[graphs.poi] = True
    per_poi = np.bincount(graphs.poi, minlength=len(pts.xy))
    return {
        "tiles": len(graphs.names),
        "tiles_without_poi": int((graphs.per_tile == 0).sum()),
        "image_only": pois is None,
        "pois_in_file": int(n_read),
        "pois_used": int(len(pts.xy)),
        "pois_skipped_bad_coordinates": pois.skipped_bad_coords if pois else 0,
        "pois_skipped_no_category": pois.skipped_no_category if pois else 0,
        "pois_skipped_not_point": pois.skipped_not_point if pois else 0,
        "pois_osm_nodes": pois.osm["nodes"] if pois and pois.osm else None,
        "pois_osm_areas": pois.osm["areas"] if pois and pois.osm else None,
        "osm_areas_without_geometry": pois.osm["areas_without_geometry"] if pois and pois.osm else None,
        "pois_outside_every_tile": int((~in_any).sum()),
        "pois_in_several_tiles": int((per_poi > 1).sum()),
        "poi_tile_assignments": int(graphs.poi.size),
        "undirected_edges": int(graphs.n_edges),
        "categories": int(len(emb.categories)),
        "embedding_source": emb.source,
        "embedding_dim": int(emb.table.shape[1]),
        "categories_unseen_in_table": emb.unseen,
        "categories_from_parent": emb.from_parent,
        "categories_dropped_not_in_table": emb.dropped,
        "pois_dropped_category_not_in_table": int(sum(emb.dropped.values())),
        "poi_crs": pois.crs if pois else None,
        "tile_crs": src.crs,
        "reprojected": bool(pts.reprojected),
        "max_edge_length": cfg.max_edge_length,
        "tiff_tiles_copied_unconverted": int(0 if cfg.convert_tiff else n_tiff),
        "images_in_tile_folder_not_in_index": len(src.tiles.unlisted) if src.tiles is not None else 0,
        "mosaic": None
        if grid is None
        else {
            "path": cfg.mosaic,
            "tile_size": grid.tile_size,
            "tile_px": grid.tile_px,
            "bands": list(grid.bands),
            "grid_rows": grid.n_rows,
            "grid_cols": grid.n_cols,
            "tiles_skipped_nodata": placed.skipped_nodata,
            "max_nodata": cfg.max_nodata,
            "stretch": None
            if survey is None or survey.stretch is None
            else [[float(lo), float(hi)] for lo, hi in survey.stretch],
            "nodata": cfg.nodata if cfg.nodata is not None else (survey.declared_nodata if survey else None),
            "nodata_from": "--nodata" if cfg.nodata is not None else "file",
            "suspected_fill": None
            if survey is None or survey.fill_value is None
            else {"value": survey.fill_value, "fraction_of_sampled_pixels": round(survey.fill_fraction, 4)},
            "tiles_flat": placed.flat,
        },
        "targets": labels.targets,
        "min_coverage": cfg.min_coverage,
        "split": labels.split,
        "seconds": round(seconds, 2),
    }


def prepare(cfg: PrepareConfig, log: Log = print) -> dict:
    """Run the whole preparation; returns the summary (also written to ``OUT/prepare_summary.json``).

    Stages 1-4 read and check every input and write nothing; stages 5-7 and the summary write OUT,
    holding its lock (utils/runlock.py, docs/run_folder.md) until the summary is written. Another
    process holding it: :class:`utils.errors.FolderBusy` (exit 75) naming the holder. A write the storage
    refuses: :class:`utils.fileio.WriteFailed` (exit 74) naming the file and the fix.
    """
    t_start = time.time()
    _check_flags(cfg)
    said: list[str] = []

    def log_and_keep(line: str) -> object:
        # The warnings also go into the summary, for whoever reads the folder later.
        if line.startswith("warning: "):
            said.append(line[len("warning: ") :])
        return log(line)

    lock = FolderLock(cfg.out, purpose="prepare_pois", flag="--out")
    try:
        if os.path.isdir(cfg.out):
            lock.acquire()  # an OUT in use is refused at once, not after minutes of reading the inputs
        src = _open_tiles(cfg, log_and_keep)
        survey = _survey(cfg, src, log_and_keep)
        stretch = survey.stretch if survey is not None else None
        pts = _read_pois(cfg, src, log_and_keep)
        opened = _open_targets(cfg, src)
        emb = _embeddings(cfg, pts, log_and_keep)
        if emb.keep is not None:  # POIs of categories dropped by the shared table's rule
            pts = _Points(pts.pois, pts.xy[emb.keep], pts.reprojected)
            emb.codes = emb.codes[emb.keep]
        # Writing starts here; a new OUT is only created now, so bad inputs leave no folder behind.
        lock.acquire()  # a no-op when held already
        # A refused write leaves an unfinished OUT, which a rerun must replace: hence "with --overwrite".
        with write_advice("another --out", "run the command again with --overwrite"):
            dirs = _prepare_out(cfg, [tg.spec.name for tg in opened])
            placed = _cut_or_list(cfg, src, stretch, dirs, log_and_keep)
            graphs = _write_graphs(cfg, placed, pts, emb, dirs, log_and_keep)
            labels = _label_tiles(cfg, opened, placed, graphs, src.crs, log_and_keep)
            write_tile_index(
                cfg.out,
                TileIndex(
                    names=graphs.names,
                    bounds=placed.bounds,
                    crs=src.crs,
                    rows=placed.rows,
                    cols=placed.cols,
                    columns=labels.columns,
                ),
            )
            category_embed.write_table(os.path.join(cfg.out, TABLE), emb.saved_categories, emb.saved_table)
            summary = _summary(cfg, src, pts, emb, placed, graphs, labels, survey, time.time() - t_start)
            summary["warnings"] = said
            # Last write: marks the folder complete.
            atomic_write_text(json.dumps(summary, indent=2, ensure_ascii=False), os.path.join(cfg.out, SUMMARY))
    finally:
        lock.release()
    return summary
