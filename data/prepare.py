"""Raw POIs + georeferenced image tiles -> the pretraining layout ``mmgr.py`` reads (SPEC §1).

Output folder ``OUT``::

    sub_shanghai_img/NAME.png|jpg      the tile image (copied, linked, or GeoTIFF converted to PNG)
    sub_shanghai_emb/STEM.tensor       float32 [n_poi, D]: category vector of each POI in the tile
    sub_shanghai_edge/STEM.tensor      int64 [2, E]: Delaunay graph of the tile's POIs (data/graph.py)
    sub_shanghai_weight/STEM.tensor    float32 [E]: edge weights 1 / (1 + d / median edge length)
    category_embeddings.csv            category,v0..v{D-1}: the table used (reusable via --embeddings)
    prepare_summary.json               counts; written LAST, so a folder without it is an unfinished run

Rows of a tile's tensors follow the order of the POIs in the input file. A POI belongs to every tile
with ``minx <= x < maxx`` and ``miny <= y < maxy`` (half-open, so a POI on a shared edge of two
abutting tiles goes to exactly one). Tiles without POIs are written with ``[0, D]`` / ``[2, 0]``.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections import Counter
from dataclasses import dataclass

import numpy as np

from data import category_embed, poi_io
from data.graph import delaunay_edges
from data.poi_io import InputError

__all__ = ["assign_to_tiles", "PrepareConfig", "prepare"]

SUBDIRS = {"img": "sub_shanghai_img", "emb": "sub_shanghai_emb", "edge": "sub_shanghai_edge",
           "weight": "sub_shanghai_weight"}
SUMMARY = "prepare_summary.json"
TABLE = "category_embeddings.csv"


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
    empty = (np.zeros(0, np.int64), np.zeros(0, np.int64))
    if n == 0 or t == 0:
        return empty
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

    def cell_x(v):
        return np.clip(np.floor((v - x0) / cw), 0, nx - 1).astype(np.int64)

    def cell_y(v):
        return np.clip(np.floor((v - y0) / ch), 0, ny - 1).astype(np.int64)

    # Register each tile in all cells its closed bounds touch (the same floor() as for POIs, which is
    # monotone, so a POI inside a tile always falls in one of the tile's cells).
    ix0, ix1 = cell_x(bounds[:, 0]), cell_x(bounds[:, 2])
    iy0, iy1 = cell_y(bounds[:, 1]), cell_y(bounds[:, 3])
    wx = ix1 - ix0 + 1
    per_tile = wx * (iy1 - iy0 + 1)
    tile_rep = np.repeat(np.arange(t, dtype=np.int64), per_tile)
    local = np.arange(tile_rep.size, dtype=np.int64) - np.repeat(np.cumsum(per_tile) - per_tile, per_tile)
    reg_cell = (iy0[tile_rep] + local // wx[tile_rep]) * nx + ix0[tile_rep] + local % wx[tile_rep]
    order = np.argsort(reg_cell, kind="stable")
    cell_tiles = tile_rep[order]  # tiles grouped by cell (CSR values)
    cell_count = np.bincount(reg_cell, minlength=nx * ny)
    cell_start = np.cumsum(cell_count) - cell_count

    inside = (xy[:, 0] >= x0) & (xy[:, 0] < x1) & (xy[:, 1] >= y0) & (xy[:, 1] < y1)
    pidx = np.flatnonzero(inside)
    pcell = cell_y(xy[pidx, 1]) * nx + cell_x(xy[pidx, 0])
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

    pois: str
    tiles: str
    out: str
    x_col: str = "x"
    y_col: str = "y"
    category_col: str = "category"
    parent_col: str | None = None
    layer: str | None = None
    crs: str | None = None
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


def _save_tensor(array: np.ndarray, path: str) -> None:
    import torch

    tmp = path + ".tmp"
    torch.save(torch.from_numpy(np.ascontiguousarray(array)), tmp)
    os.replace(tmp, path)  # never leave a truncated file under the final name


def _place_image(src: str, dst_dir: str, mode: str, convert_tiff: bool) -> str:
    """Put tile ``src`` into ``dst_dir``; returns the output file name."""
    name = os.path.basename(src)
    stem, ext = os.path.splitext(name)
    if ext.lower() in poi_io.TIFF_EXTS and convert_tiff:
        from PIL import Image

        out = stem + ".png"
        tmp = os.path.join(dst_dir, out + ".tmp")
        try:
            with Image.open(src) as im:
                im.convert("RGB").save(tmp, format="PNG")
        except (OSError, ValueError) as e:
            raise InputError(f"cannot convert GeoTIFF {src} to PNG ({e}); convert it to 8-bit RGB first "
                             "(e.g. gdal_translate -ot Byte -of PNG).")
        os.replace(tmp, os.path.join(dst_dir, out))
        return out
    dst = os.path.join(dst_dir, name)
    tmp = dst + ".tmp"
    if os.path.lexists(tmp):
        os.remove(tmp)
    if mode == "hardlink":
        try:
            os.link(src, tmp)
        except OSError:  # other file system: fall back to a copy
            shutil.copyfile(src, tmp)
    elif mode == "symlink":
        os.symlink(os.path.abspath(src), tmp)
    else:
        shutil.copyfile(src, tmp)
    os.replace(tmp, dst)
    return name


# Worker state, inherited by forked workers (set before the pool starts; read-only there).
_STATE: dict = {}


def _write_tiles(tile_ids: list[int]) -> tuple[int, dict[int, str]]:
    """Write images + tensors of ``tile_ids``; returns (undirected edge count, {tile: output name})."""
    s = _STATE
    n_und = 0
    names = {}
    for t in tile_ids:
        lo, hi = s["tile_start"][t], s["tile_start"][t + 1]
        idx = s["poi"][lo:hi]  # file order
        name = _place_image(s["paths"][t], s["dirs"]["img"], s["image_mode"], s["convert_tiff"])
        stem = os.path.splitext(name)[0]
        emb = s["table"][s["codes"][idx]]  # [n, D]
        ei, w = delaunay_edges(s["xy"][idx], s["max_edge_length"])
        _save_tensor(emb, os.path.join(s["dirs"]["emb"], stem + ".tensor"))
        _save_tensor(ei, os.path.join(s["dirs"]["edge"], stem + ".tensor"))
        _save_tensor(w, os.path.join(s["dirs"]["weight"], stem + ".tensor"))
        n_und += ei.shape[1] // 2
        names[t] = name
    return n_und, names


def _prepare_out(cfg: PrepareConfig) -> dict[str, str]:
    existing = [p for p in [SUMMARY, TABLE, *SUBDIRS.values()] if os.path.exists(os.path.join(cfg.out, p))]
    if existing and not cfg.overwrite:
        raise InputError(f"output folder {cfg.out} already holds {existing[0]}; pick a new --out or add "
                         "--overwrite to replace it.")
    os.makedirs(cfg.out, exist_ok=True)
    # The summary goes first so an interrupted rerun never looks complete; stale tiles go too.
    for p in [SUMMARY, TABLE]:
        if os.path.exists(os.path.join(cfg.out, p)):
            os.remove(os.path.join(cfg.out, p))
    dirs = {}
    for k, sub in SUBDIRS.items():
        d = os.path.join(cfg.out, sub)
        if os.path.isdir(d):
            shutil.rmtree(d)
        os.makedirs(d)
        dirs[k] = d
    return dirs


def _one_torch_thread() -> None:
    import torch

    torch.set_num_threads(1)


def prepare(cfg: PrepareConfig, log=print) -> dict:
    """Run the whole preparation; returns the summary (also written to ``OUT/prepare_summary.json``)."""
    t_start = time.time()
    poi_io.check_crs(cfg.crs, "--crs")
    poi_io.check_crs(cfg.tile_crs, "--tile_crs")
    if cfg.image_mode not in ("copy", "hardlink", "symlink"):
        raise InputError(f"--image_mode must be copy, hardlink or symlink, not {cfg.image_mode!r}.")

    pois = poi_io.read_pois(cfg.pois, cfg.x_col, cfg.y_col, cfg.category_col, cfg.parent_col, cfg.crs, cfg.layer)
    if cfg.tile_index:
        tiles = poi_io.read_tile_index(cfg.tile_index, cfg.tiles, cfg.tile_crs)
    else:
        tiles = poi_io.tiles_from_georeferencing(cfg.tiles, cfg.tile_crs)
    stems = [os.path.splitext(os.path.basename(p))[0] for p in tiles.paths]
    dup = [s for s, c in Counter(stems).items() if c > 1]
    if dup:
        raise InputError(f"two tiles in {cfg.tiles} share the name {dup[0]!r} (different extensions); rename "
                         "one, as the tensors are named after the image without its extension.")
    poi_io.check_crs(tiles.crs, "the tiles")
    xy = pois.xy
    reprojected = not poi_io.same_crs(pois.crs, tiles.crs)
    if reprojected:
        xy = poi_io.reproject(xy, pois.crs, tiles.crs)
        log(f"reprojected POIs from {pois.crs} to {tiles.crs}")
    log(f"read {len(xy)} POIs from {cfg.pois}, {len(tiles.paths)} tiles")

    # Categories -> integer codes (sorted names: the saved table does not depend on file order).
    cats, codes = np.unique(pois.category.astype(str), return_inverse=True)
    codes = codes.reshape(-1)

    # Embedding table, one row per category of the POI file.
    unseen: dict[str, int] = {}
    if cfg.embeddings:
        tab_cats, tab_vecs = category_embed.read_table(cfg.embeddings)
        if cfg.embed_dim is not None and cfg.embed_dim != tab_vecs.shape[1]:
            raise InputError(f"embedding table {cfg.embeddings} has {tab_vecs.shape[1]} columns but "
                             f"--embed_dim is {cfg.embed_dim}; drop --embed_dim or fix the table.")
        dim = tab_vecs.shape[1]
        pos = {c: k for k, c in enumerate(tab_cats)}
        table = np.zeros((len(cats), dim), dtype=np.float32)  # unseen categories: zero vectors
        counts = np.bincount(codes, minlength=len(cats))
        for k, c in enumerate(cats):
            if c in pos:
                table[k] = tab_vecs[pos[c]]
            else:
                unseen[str(c)] = int(counts[k])
        # Saved table = the user's rows plus the unseen categories (zeros), so it covers this city.
        out_cats = tab_cats + [str(c) for c in cats if str(c) not in pos]
        out_table = np.concatenate([tab_vecs, np.zeros((len(out_cats) - len(tab_cats), dim), np.float32)])
        source = "table"
        if unseen:
            log(f"{len(unseen)} categories are not in {cfg.embeddings} and get zero vectors: "
                + ", ".join(sorted(unseen)[:10]) + (" ..." if len(unseen) > 10 else ""))
    else:
        dim = cfg.embed_dim or 64
        t0 = time.time()
        city_edges, _ = delaunay_edges(xy, cfg.max_edge_length)  # city-wide co-location network
        counts_mat = category_embed.cooccurrence(codes, city_edges, len(cats))
        parent_codes = None
        if pois.parent is not None:
            # Parent of each category: its most frequent parent (a category listed under two parents
            # is a data error we tolerate rather than fail on).
            pairs = Counter(zip(codes.tolist(), pois.parent.tolist()))
            best: dict[int, tuple[int, str]] = {}
            for (c, p), n in pairs.items():
                if c not in best or n > best[c][0]:
                    best[c] = (n, p)
            _, parent_codes = np.unique([best[c][1] for c in range(len(cats))], return_inverse=True)
        table = category_embed.learn_embeddings(counts_mat, dim, parent_codes, cfg.hierarchy_weight)
        out_cats, out_table = [str(c) for c in cats], table
        source = "learned"
        log(f"learned {dim}-d vectors for {len(cats)} categories from {city_edges.shape[1] // 2} "
            f"Delaunay edges ({time.time() - t0:.1f}s)")

    poi, tile = assign_to_tiles(xy, tiles.bounds)
    n_tiles = len(tiles.paths)
    per_tile = np.bincount(tile, minlength=n_tiles)
    tile_start = np.concatenate([[0], np.cumsum(per_tile)])
    in_any = np.zeros(len(xy), dtype=bool)
    in_any[poi] = True
    per_poi = np.bincount(poi, minlength=len(xy))

    dirs = _prepare_out(cfg)
    _STATE.update(poi=poi, tile_start=tile_start, paths=tiles.paths, dirs=dirs, image_mode=cfg.image_mode,
                  convert_tiff=cfg.convert_tiff, table=table, codes=codes, xy=xy,
                  max_edge_length=cfg.max_edge_length)
    t0 = time.time()
    ids = list(range(n_tiles))
    if cfg.workers > 1 and n_tiles > 1:
        import multiprocessing as mp

        # fork: workers inherit _STATE (millions of POIs) without pickling it.
        ctx = mp.get_context("fork")
        chunks = [ids[k:k + 256] for k in range(0, n_tiles, 256)]
        # One torch thread per child: a forked child that enters torch's OpenMP pool inherited from a
        # parent that had started it can deadlock (what DataLoader workers avoid the same way).
        with ctx.Pool(cfg.workers, initializer=_one_torch_thread) as pool:
            results = pool.map(_write_tiles, chunks)
    else:
        results = [_write_tiles(ids)]
    _STATE.clear()
    n_edges = sum(r[0] for r in results)
    names = {}
    for r in results:
        names.update(r[1])
    log(f"wrote {n_tiles} tiles ({time.time() - t0:.1f}s)")
    category_embed.write_table(os.path.join(cfg.out, TABLE), out_cats, out_table)

    n_tiff = sum(os.path.splitext(p)[1].lower() in poi_io.TIFF_EXTS for p in tiles.paths)
    summary = {
        "tiles": n_tiles,
        "tiles_without_poi": int((per_tile == 0).sum()),
        "pois_in_file": int(len(xy) + pois.skipped_bad_coords + pois.skipped_no_category),
        "pois_used": int(len(xy)),
        "pois_skipped_bad_coordinates": pois.skipped_bad_coords,
        "pois_skipped_no_category": pois.skipped_no_category,
        "pois_outside_every_tile": int((~in_any).sum()),
        "pois_in_several_tiles": int((per_poi > 1).sum()),
        "poi_tile_assignments": int(poi.size),
        "undirected_edges": int(n_edges),
        "categories": int(len(cats)),
        "embedding_source": source,
        "embedding_dim": int(dim),
        "categories_unseen_in_table": unseen,
        "poi_crs": pois.crs,
        "tile_crs": tiles.crs,
        "reprojected": bool(reprojected),
        "max_edge_length": cfg.max_edge_length,
        "tiff_tiles_copied_unconverted": int(0 if cfg.convert_tiff else n_tiff),
        "images_in_tile_folder_not_in_index": len(tiles.unlisted),
        "seconds": round(time.time() - t_start, 2),
    }
    tmp = os.path.join(cfg.out, SUMMARY + ".tmp")
    with open(tmp, "w") as f:
        json.dump(summary, f, indent=2, ensure_ascii=False)
    os.replace(tmp, os.path.join(cfg.out, SUMMARY))  # last write: marks the folder complete
    return summary
