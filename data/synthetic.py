"""A deterministic synthetic city: VHR-like tiles, POIs, POI graphs and ground truth.

No real tiles or POIs can be shipped, so this module draws a plausible city that exercises every part
of the pipeline (pretraining and the downstream regressions) before a user prepares real data. It
writes both layouts of SPEC.md into one folder (``sub_shanghai_*`` for pretraining, ``img``,
``pop1km``, ``gdp1km``, ``func`` and the two lists for the downstream scripts).

What is modelled, coarse to fine:

1. City-scale latent fields on the tile grid (smooth Gaussian random fields, not iid per tile):
   urbanity ``u`` (a CBD near the centre plus a few sub-centres, falling off to a rural edge),
   ``wealth`` and ``activity`` (standard-normal smooth fields), and three land-use preference fields.
   A meandering river (about 0.9 km wide, like the Yangtze at Wuhan) crosses the city.
2. A land-use label per tile (residential, commercial, industrial, green, water, mixed) from those
   fields: commercial where urbanity is high, industry towards the edge, parks where the park field
   peaks, water where the river covers most of the tile, rural green at the edge.
3. Inside a tile: 4 x 4 blocks (250 m, bounded by minor roads) of 4 x 4 lots (62.5 m). Each block
   takes a function type (residential, commercial, industrial, public_service, green_space) drawn
   from the tile's land-use mix; each lot holds at most one building whose presence, size and roof
   colour depend on the function type and, faintly, on wealth. Building height (global to the tile,
   from urbanity) shows only through the shadow length. Major roads run on a city-wide grid.
4. POIs of a two-level taxonomy (6 coarse classes, 22 fine categories): counts and mix depend on the
   block functions and on wealth and activity, which are only faintly (wealth) or not at all
   (activity) visible in the image. Water and rural tiles have no POIs; sparse green tiles often
   have none; both are valid data.
5. Ground truth: the urban-function distribution is the area share of the six function types
   (the five above plus water) over the tile's lots; population follows the residential floor area
   (plus a little above shops) times ``exp(0.4 activity - 0.2 wealth)``; GDP follows commercial and
   industrial floor area times ``exp(0.5 wealth + 0.2 activity)``; both carry log-normal noise.
   Floor area = built footprint (visible) x floors (visible only through shadow length).

Everything is drawn from ``numpy.random.Generator`` streams keyed by ``(seed, purpose, tile)``, so the
same arguments give byte-identical files (PNG bytes and ``torch.save`` archives included).

Usage::

    python -m data.synthetic --out DATA [--n_tiles 1000] [--tile_size 256] [--seed 0] [--embed_dim 64]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from scipy.ndimage import gaussian_filter
from scipy.special import ndtri

from data.graph import delaunay_edges

__all__ = [
    "LAND_USES",
    "FUNC_TYPES",
    "CATEGORIES",
    "generate_city",
    "ensure_city",
    "category_embeddings",
    "main",
]

# Bump when the generator's output changes, so ensure_city regenerates old cities.
FORMAT_VERSION = 1
TILE_M = 1000  # tile side in metres
MARKER = ".complete"

LAND_USES = ("residential", "commercial", "industrial", "green", "water", "mixed")
# Urban function types of the ground-truth distribution (func/NAME.txt), in file order.
FUNC_TYPES = ("residential", "commercial", "industrial", "public_service", "green_space", "water")
N_BUILT = 5  # the first five function types are what a block can be; water comes from the river

# Two-level POI taxonomy: coarse class -> fine categories (order fixes category ids).
TAXONOMY: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("food", ("restaurant", "cafe", "fast_food", "teahouse")),
    ("shopping", ("supermarket", "shopping_mall", "convenience_store", "clothing_store")),
    ("residence", ("residential_complex", "property_management", "kindergarten")),
    ("business", ("office_building", "bank", "company")),
    ("industry", ("factory", "warehouse", "logistics_center")),
    ("public", ("school", "hospital", "government_office", "bus_stop", "park")),
)
CATEGORIES: tuple[str, ...] = tuple(f for _, fines in TAXONOMY for f in fines)
PARENTS: tuple[str, ...] = tuple(c for c, fines in TAXONOMY for _ in fines)
COARSE: tuple[str, ...] = tuple(c for c, _ in TAXONOMY)

# Expected share of each block function type per tile land use (rows: LAND_USES; cols: the five
# built function types). Water tiles are mostly river; their land lots look like the bank (green).
_LU_MIX = np.array(
    [
        [0.70, 0.08, 0.02, 0.12, 0.08],  # residential
        [0.15, 0.62, 0.01, 0.15, 0.07],  # commercial
        [0.08, 0.04, 0.75, 0.05, 0.08],  # industrial
        [0.05, 0.02, 0.01, 0.07, 0.85],  # green
        [0.10, 0.05, 0.05, 0.05, 0.75],  # water
        [0.40, 0.35, 0.03, 0.14, 0.08],  # mixed
    ]
)

# Per function type: probability a lot holds a building, building side range (fraction of the lot),
# roof base colour, ground colour, tree cover of the open ground.
_BUILD_P = np.array([0.80, 0.90, 0.85, 0.60, 0.03])
_SIDE_LO = np.array([0.35, 0.55, 0.60, 0.40, 0.20])
_SIDE_HI = np.array([0.65, 0.90, 0.95, 0.70, 0.35])
_ROOF = np.array(
    [[178, 120, 100], [150, 160, 170], [190, 195, 200], [200, 180, 150], [160, 140, 120]], dtype=np.float32
)
_GROUND = np.array(
    [[170, 165, 150], [160, 158, 155], [150, 145, 135], [140, 150, 120], [95, 135, 70]], dtype=np.float32
)
_TREES = np.array([0.25, 0.10, 0.05, 0.30, 0.60])
_ROAD = np.array([90, 90, 92], dtype=np.float32)
_MAJOR_ROAD = np.array([70, 70, 75], dtype=np.float32)
_WATER = np.array([45, 80, 110], dtype=np.float32)
_TREE = np.array([40, 85, 40], dtype=np.float32)
_SHADOW = np.array([45, 45, 50], dtype=np.float32)
_FARM = np.array([[120, 150, 80], [150, 160, 90], [170, 155, 110], [100, 130, 60]], dtype=np.float32)

# POI rate per lot of each function type, per fine category (rows: built function types).
# Written as coarse-class weights times a within-class split so the table stays readable.
_COARSE_RATE = np.array(
    # food shopping residence business industry public
    [
        [0.40, 0.30, 0.45, 0.05, 0.00, 0.15],  # residential
        [1.10, 0.90, 0.05, 0.90, 0.02, 0.15],  # commercial
        [0.10, 0.03, 0.02, 0.15, 0.70, 0.05],  # industrial
        [0.15, 0.10, 0.05, 0.10, 0.00, 0.60],  # public_service
        [0.02, 0.01, 0.00, 0.00, 0.00, 0.06],  # green_space
    ]
)
_FINE_SPLIT = np.array(
    [0.50, 0.20, 0.20, 0.10] + [0.25, 0.10, 0.50, 0.15] + [0.55, 0.25, 0.20]
    + [0.45, 0.15, 0.40] + [0.45, 0.30, 0.25] + [0.25, 0.10, 0.10, 0.35, 0.20]
)
# How each fine category responds to wealth (log-rate slope): cafes, malls, clothing, banks and
# offices thrive with wealth; fast food, convenience stores and factories do not.
_WEALTH_SLOPE = np.array(
    [0.2, 0.6, -0.4, 0.1] + [0.0, 0.6, -0.3, 0.5] + [-0.1, 0.2, 0.3]
    + [0.4, 0.5, 0.1] + [-0.3, -0.2, -0.1] + [0.1, 0.2, 0.1, -0.2, 0.3]
)
_CLASS_OF = np.array([COARSE.index(p) for p in PARENTS])

LOTS = 16  # lots per tile side (62.5 m)
BLOCK = 4  # lots per block side (250 m blocks)


# --------------------------------------------------------------------------------------------------
# Category embeddings


def category_embeddings(embed_dim: int = 64, seed: int = 0) -> np.ndarray:
    """Embeddings of the fine categories: coarse-class centre plus a small fine offset.

    Stands in for the "semantics-preserved" POI category embeddings the paper uses (SPEC §3): what
    matters downstream is that categories of one coarse class lie close together.

    Returns:
        float32 ``[len(CATEGORIES), embed_dim]``; coarse centres have norm about 1, fine offsets
        norm about 0.35, so within-class distances (~0.5) are well below cross-class ones (~1.4).
    """
    rng = np.random.default_rng([seed, 101])
    centres = rng.standard_normal((len(COARSE), embed_dim))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    offsets = rng.standard_normal((len(CATEGORIES), embed_dim)) * (0.35 / math.sqrt(embed_dim))
    return (centres[_CLASS_OF] + offsets).astype(np.float32)


# --------------------------------------------------------------------------------------------------
# City plan (tile-level fields and labels)


def _grid_shape(n_tiles: int) -> tuple[int, int]:
    """Near-square grid holding ``n_tiles`` in row-major order (the last row may be partial)."""
    cols = int(math.ceil(math.sqrt(n_tiles)))
    rows = int(math.ceil(n_tiles / cols))
    return rows, cols


def _smooth_field(rng: np.random.Generator, shape: tuple[int, int], sigma: float) -> np.ndarray:
    """Standardised smooth Gaussian random field ``[rows, cols]`` (spatially coherent latent)."""
    f = gaussian_filter(rng.standard_normal(shape), sigma=sigma, mode="reflect")
    return (f - f.mean()) / (f.std() + 1e-12)


class _River:
    """A meandering north-south river: centre ``x(y) = x0 + a1 sin(k1 y + p1) + a2 sin(k2 y + p2)``."""

    def __init__(self, rng: np.random.Generator, width_m: float, height_m: float) -> None:
        self.x0 = width_m * rng.uniform(0.35, 0.65)
        self.a1 = min(width_m, height_m) * rng.uniform(0.05, 0.12)
        self.k1 = 2 * math.pi / (height_m * rng.uniform(0.7, 1.3) + 1.0)
        self.p1 = rng.uniform(0, 2 * math.pi)
        self.a2 = self.a1 * 0.3
        self.k2 = self.k1 * 2.7
        self.p2 = rng.uniform(0, 2 * math.pi)
        self.half_width = rng.uniform(420.0, 480.0)

    def water(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Boolean water mask for broadcastable world coordinates in metres."""
        cx = self.x0 + self.a1 * np.sin(self.k1 * y + self.p1) + self.a2 * np.sin(self.k2 * y + self.p2)
        return np.abs(x - cx) < self.half_width


def _plan_city(n_tiles: int, seed: int) -> dict:
    """Tile-level latent fields, land use and the city-wide river and road grid.

    Returns a dict of ``[n_tiles]`` arrays (row, col, u, wealth, activity, water_frac, land_use,
    floors) plus ``rows``, ``cols``, ``river`` and the major-road positions ``road_x``, ``road_y``.
    """
    rows, cols = _grid_shape(n_tiles)
    rng = np.random.default_rng([seed, 1])
    sigma = max(1.2, 0.08 * min(rows, cols))
    rr, cc = np.meshgrid(np.arange(rows), np.arange(cols), indexing="ij")
    # Distances in units of the city radius so small and large cities have the same structure.
    radius = max(rows, cols) / 2.0
    cy, cx = (rows - 1) / 2.0 + rng.uniform(-0.1, 0.1) * rows, (cols - 1) / 2.0 + rng.uniform(-0.1, 0.1) * cols
    d = np.hypot(rr - cy, cc - cx) / radius
    u = np.exp(-((d / 0.75) ** 2))
    for _ in range(int(rng.integers(1, 4))):  # sub-centres
        sy, sx = rng.uniform(0, rows - 1), rng.uniform(0, cols - 1)
        ds = np.hypot(rr - sy, cc - sx) / radius
        u = u + rng.uniform(0.25, 0.45) * np.exp(-((ds / 0.25) ** 2))
    u = np.clip(u + 0.12 * _smooth_field(rng, (rows, cols), sigma), 0.0, 1.0)
    wealth = _smooth_field(rng, (rows, cols), sigma)
    wealth = (wealth + 0.6 * (u - u.mean()) / (u.std() + 1e-12)) / math.sqrt(1.36)  # richer centre
    activity = _smooth_field(rng, (rows, cols), sigma)
    f_ind, f_park, f_mix = (_smooth_field(rng, (rows, cols), sigma) for _ in range(3))

    river = _River(rng, cols * TILE_M, rows * TILE_M)
    # Water fraction per tile from a 16 x 16 sample grid inside each tile.
    s = (np.arange(16) + 0.5) / 16 * TILE_M
    x = cc[:, :, None, None] * TILE_M + s[None, None, None, :]
    y = (rows - 1 - rr)[:, :, None, None] * TILE_M + s[None, None, :, None]
    water_frac = river.water(x, y).mean(axis=(2, 3))

    scores = np.stack(
        [
            0.6 - 2.5 * (u - 0.45) ** 2 - 0.3 * f_mix,  # residential: the broad middle ring
            4.0 * (u - 0.62) + 0.3 * f_mix,  # commercial: high urbanity
            1.2 * f_ind - 3.0 * (u - 0.3) ** 2 - 0.4 - 0.5 * wealth,  # industry: outer ring, poorer
            1.2 * (f_park - 1.2),  # parks: peaks of the park field
            np.full_like(u, -np.inf),  # water: set below
            0.5 * f_mix - 3.0 * (u - 0.6) ** 2,  # mixed: inner ring
        ]
    )
    land_use = np.argmax(scores, axis=0)
    rural = u < 0.12
    land_use[rural] = LAND_USES.index("green")
    land_use[water_frac > 0.5] = LAND_USES.index("water")
    floors = 3.0 + 27.0 * u**2  # taller towards the centre

    # City-wide major roads every 1.5-3 km (both directions), jittered, so they continue across tiles.
    def road_lines(extent: float) -> np.ndarray:
        pos, out = rng.uniform(300, 1500), []
        while pos < extent:
            out.append(pos)
            pos += rng.uniform(1500, 3000)
        return np.array(out)

    road_x, road_y = road_lines(cols * TILE_M), road_lines(rows * TILE_M)
    flat = lambda a: a.reshape(-1)[:n_tiles]  # noqa: E731  row-major, the last row may be partial
    return dict(
        rows=rows, cols=cols, river=river, road_x=road_x, road_y=road_y,
        row=flat(rr), col=flat(cc), u=flat(u), wealth=flat(wealth), activity=flat(activity),
        water_frac=flat(water_frac), land_use=flat(land_use), rural=flat(rural), floors=flat(floors),
    )


# --------------------------------------------------------------------------------------------------
# One tile


class _Painter:
    """Pixel-geometry lookups shared by all tiles of one size (computed once)."""

    def __init__(self, size: int) -> None:
        self.size = size
        centres = (np.arange(size) + 0.5) * (LOTS / size)
        self.lot = np.minimum(centres.astype(np.int64), LOTS - 1)  # [S] lot index of each pixel
        self.frac = centres - self.lot  # [S] position inside the lot, [0, 1)
        self.lot_id = self.lot[:, None] * LOTS + self.lot[None, :]  # [S, S] flat lot index
        self.metres = (np.arange(size) + 0.5) * (TILE_M / size)  # [S] pixel centre, metres from tile edge
        # Minor roads on block boundaries (every 250 m), ~10 m wide but at least one pixel.
        hw = max(5.0, 0.5 * TILE_M / size)
        block_m = TILE_M / (LOTS // BLOCK)
        off = np.mod(self.metres, block_m)
        self.minor = np.minimum(off, block_m - off) < hw  # [S]
        # Bilinear upsampling (separable lerp, no BLAS: tiny matmuls thrash threads) of a coarse
        # noise grid, for smooth tree and texture fields.
        m = max(4, size // 8 + 2)
        pos = np.linspace(0, m - 1, size)
        self.m = m
        self.lo = np.minimum(np.floor(pos).astype(np.int64), m - 2)
        self.w = (pos - self.lo).astype(np.float32)

    def px(self, a: np.ndarray) -> np.ndarray:
        """Per-lot array ``[L, L, ...]`` -> per-pixel ``[S, S, ...]`` (row then column gather)."""
        return a.take(self.lot, axis=0).take(self.lot, axis=1)

    def smooth(self, rng: np.random.Generator) -> np.ndarray:
        """Smooth, roughly standard-normal float32 field ``[S, S]`` (bilinearly upsampled noise)."""
        c = rng.standard_normal((self.m, self.m), dtype=np.float32)
        lo, w = self.lo, self.w
        r = c[lo] * (1 - w)[:, None] + c[lo + 1] * w[:, None]  # [S, m]
        f = r[:, lo] * (1 - w)[None, :] + r[:, lo + 1] * w[None, :]  # [S, S]
        # Bilinear mixing of unit normals leaves a variance of about (2/3)^2; rescale to ~1.
        return f * np.float32(1.5)


def _draw_tile(
    p: _Painter, rng: np.random.Generator, plan: dict, i: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Draw tile ``i``: its image and its lot layout.

    Returns:
        ``img`` uint8 ``[S, S, 3]``; ``lot_type`` int ``[L, L]`` (function type 0..4 of each lot, rows
        top to bottom); ``lot_water`` bool ``[L, L]``; ``lot_built`` bool ``[L, L]`` (holds a
        building); ``lot_area`` float ``[L, L]`` (building footprint as a fraction of the lot).
    """
    S, L, B = p.size, LOTS, LOTS // BLOCK
    row, col = int(plan["row"][i]), int(plan["col"][i])
    minx, miny = col * TILE_M, (plan["rows"] - 1 - row) * TILE_M
    lu, wealth = int(plan["land_use"][i]), float(plan["wealth"][i])
    rural = bool(plan["rural"][i])

    # Block function types drawn from the tile's land-use mix (Dirichlet around its profile).
    mix = rng.dirichlet(_LU_MIX[lu] * 12.0 + 0.05)
    if rural:
        mix = np.array([0.03, 0.0, 0.0, 0.0, 0.97])
    block_type = rng.choice(N_BUILT, size=(B, B), p=mix / mix.sum())
    lot_type = np.repeat(np.repeat(block_type, BLOCK, axis=0), BLOCK, axis=1)  # [L, L]

    # Lot centres in world metres (row 0 is the tile's top edge) -> water lots.
    lot_c = (np.arange(L) + 0.5) * (TILE_M / L)
    lot_water = plan["river"].water(minx + lot_c[None, :], miny + TILE_M - lot_c[:, None])

    # Buildings: wealthy residential areas build less densely with larger footprints (faint cue).
    t = lot_type
    p_build = _BUILD_P[t] * np.where(t == 0, np.exp(-0.15 * wealth), 1.0)
    if rural:
        p_build = np.full((L, L), 0.02)
    lot_built = (rng.random((L, L)) < np.clip(p_build, 0, 1)) & ~lot_water
    sw = rng.uniform(_SIDE_LO[t], _SIDE_HI[t]) * np.where(t == 0, np.exp(0.06 * wealth), 1.0)
    sh = rng.uniform(_SIDE_LO[t], _SIDE_HI[t])
    sw, sh = np.clip(sw, 0.15, 0.95), np.clip(sh, 0.15, 0.95)
    x0 = rng.uniform(0.02, 1.0 - sw - 0.02 + 1e-9)
    y0 = rng.uniform(0.02, 1.0 - sh - 0.02 + 1e-9)
    lot_area = np.where(lot_built, sw * sh, 0.0)
    roof = _ROOF[t] + rng.normal(0, 12, (L, L, 1)) + 8.0 * wealth * (t == 0)[..., None]

    # Per-pixel views of the lot attributes ([L, L] -> [S, S]) and of the position inside the lot.
    fy, fx = p.frac[:, None], p.frac[None, :]
    bx0, by0 = p.px(x0), p.px(y0)
    building = p.px(lot_built) & (fx >= bx0) & (fx < bx0 + p.px(sw)) & (fy >= by0) & (fy < by0 + p.px(sh))
    water = plan["river"].water(minx + p.metres[None, :], miny + TILE_M - p.metres[:, None])

    # Ground colour per lot (farm plots at the rural edge), then trees where open ground is green.
    if rural:
        ground = _FARM[rng.integers(0, len(_FARM), (L, L))]
    else:
        ground = _GROUND[t]
    texture = p.smooth(rng)
    cover = np.clip(_TREES[t] * np.exp(0.2 * wealth), 0.01, 0.95)
    if rural:
        cover = np.full((L, L), 0.08)
    trees = p.smooth(rng) > p.px(ndtri(1.0 - cover).astype(np.float32))

    # Minor roads on block edges except in green blocks; major roads everywhere (bridges over water).
    minor = p.minor[:, None] | p.minor[None, :]
    minor &= p.px(t != 4) & (not rural)  # [S, S] bool
    hw = max(12.0, 0.6 * TILE_M / S)
    gx, gy = minx + p.metres, miny + TILE_M - p.metres
    major_c = np.abs(gx[:, None] - plan["road_x"][None, :]).min(axis=1, initial=np.inf) < hw  # [S]
    major_r = np.abs(gy[:, None] - plan["road_y"][None, :]).min(axis=1, initial=np.inf) < hw  # [S]
    major = major_r[:, None] | major_c[None, :]

    # Shadows fall down-right; their length (in pixels) grows with building height, the only cue
    # to floor count in a nadir view.
    shift = max(1, int(round(S / 256 * (1 + plan["floors"][i] / 3.0))))
    shadow = np.zeros_like(building)
    shadow[shift:, shift:] = building[:-shift, :-shift]

    # Paint back to front into a palette-index map [S, S] (cheap 2-D work), then one colour gather.
    # Palette: L*L lot ground colours, L*L lot roof colours, then the fixed colours.
    n_lot = L * L
    palette = np.concatenate(
        [ground.reshape(n_lot, 3), roof.reshape(n_lot, 3), np.stack([_TREE, _ROAD, _SHADOW, _WATER, _MAJOR_ROAD])]
    ).astype(np.float32)
    TREE, ROAD, SHADOW, WATER, MAJOR = range(2 * n_lot, 2 * n_lot + 5)
    idx = p.lot_id.copy()  # ground of the pixel's lot
    idx[trees & ~building] = TREE
    idx[minor] = ROAD
    idx[shadow & ~building & ~minor] = SHADOW
    idx[building] = p.lot_id[building] + n_lot
    idx[water] = WATER
    idx[major] = MAJOR
    img = palette.take(idx, axis=0)  # float32 [S, S, 3]
    # Grey brightness variation: low-frequency texture on open ground, sensor noise everywhere.
    # (uniform noise of std 4: as good as Gaussian to the eye and three times cheaper to draw)
    grey = np.float32(4.0 * math.sqrt(12.0)) * (rng.random((S, S), dtype=np.float32) - np.float32(0.5))
    grey += np.float32(10.0) * texture * (idx < n_lot)
    img += grey[..., None]
    img = np.clip(img, 0, 255).astype(np.uint8)
    return img, lot_type, lot_water, lot_built, lot_area


def _tile_pois(
    rng: np.random.Generator, plan: dict, i: int, lot_type: np.ndarray, lot_water: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Sample tile ``i``'s POIs.

    Rate of fine category c in a lot of type t: ``_COARSE_RATE[t, class(c)] * _FINE_SPLIT[c] *
    exp(slope_c * wealth + 0.5 * activity)`` scaled by urbanity. Water and rural tiles get none.

    Returns:
        ``(xy_cm, cat)``: int64 ``[N, 2]`` POI coordinates in centimetres (integers, so they print
        and parse back exactly) and int64 ``[N]`` fine-category ids, sorted by category then x, y.
    """
    lu = int(plan["land_use"][i])
    if lu == LAND_USES.index("water") or plan["rural"][i]:
        return np.zeros((0, 2), np.int64), np.zeros((0,), np.int64)
    u, w, a = float(plan["u"][i]), float(plan["wealth"][i]), float(plan["activity"][i])
    land = ~lot_water.reshape(-1)
    t = lot_type.reshape(-1)
    rate = _COARSE_RATE[t][:, _CLASS_OF] * _FINE_SPLIT[None, :]  # [L*L, C]
    rate = rate * np.exp(_WEALTH_SLOPE * w + 0.5 * a)[None, :] * (0.15 + 0.6 * u) * land[:, None]
    counts = rng.poisson(rate)  # [L*L, C]
    lots, cats = np.nonzero(counts)
    reps = counts[lots, cats]
    lots, cats = np.repeat(lots, reps), np.repeat(cats, reps)
    n = lots.size
    row, col = int(plan["row"][i]), int(plan["col"][i])
    minx, miny = col * TILE_M, (plan["rows"] - 1 - row) * TILE_M
    lot_cm = TILE_M * 100 // LOTS
    # Position inside the lot, in whole centimetres; lot row 0 is at the tile's top edge.
    ox = (lots % LOTS) * lot_cm + rng.integers(0, lot_cm, n)
    oy = (LOTS - 1 - lots // LOTS) * lot_cm + rng.integers(0, lot_cm, n)
    xy = np.stack([minx * 100 + ox, miny * 100 + oy], axis=1).astype(np.int64)
    order = np.lexsort((xy[:, 1], xy[:, 0], cats))
    return xy[order], cats[order].astype(np.int64)


# --------------------------------------------------------------------------------------------------
# Writing


def _atomic_dir(out_dir: Path) -> Path:
    """Fresh temporary folder beside ``out_dir`` (same file system, so the final rename is atomic)."""
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_dir.parent / f".{out_dir.name}.tmp-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    return tmp


def _check_replaceable(out_dir: Path) -> None:
    """Refuse to replace a non-empty folder that is not a synthetic city (it may hold user data)."""
    if not out_dir.exists():
        return
    if out_dir.is_dir():
        if not any(out_dir.iterdir()) or (out_dir / MARKER).exists():
            return
        try:  # a city whose marker was removed is still recognised by its README
            if (out_dir / "README.txt").read_text().startswith(_README.splitlines()[0]):
                return
        except (OSError, UnicodeDecodeError):
            pass
    raise FileExistsError(
        f"{out_dir} exists and is not a synthetic city (no {MARKER} marker); "
        "pass an empty or new folder as the output."
    )


def _params(n_tiles: int, tile_size: int, seed: int, embed_dim: int, val_fraction: float) -> dict:
    return dict(
        format_version=FORMAT_VERSION, n_tiles=int(n_tiles), tile_size=int(tile_size), seed=int(seed),
        embed_dim=int(embed_dim), val_fraction=float(val_fraction),
    )


def _fmt(v: float) -> str:
    return f"{v:.6f}"


_README = """Synthetic city written by data/synthetic.py (MMGR). These data are SYNTHETIC: no real imagery,
POIs, population or GDP. They exist so the pipeline can run before real data are prepared.

Modelled: a grid of 1 km tiles with spatially smooth latent fields (urbanity with a CBD and
sub-centres, wealth, activity), a river, land use per tile (residential, commercial, industrial,
green, water, mixed), VHR-like RGB tiles (roads, buildings with shadows, trees, water), POIs of a
two-level taxonomy (categories.csv) whose counts depend on land use, wealth and activity (activity
is invisible in the image; wealth only faintly visible), Delaunay POI graphs with inverse-distance
edge weights, and ground truth: population (residential floor area x activity), GDP (commercial and
industrial floor area x wealth) and the urban-function distribution (area shares, func_types.txt).
Water and rural tiles have zero POIs on purpose. Parameters: see .complete (JSON).
"""


def generate_city(
    out_dir: str | os.PathLike,
    n_tiles: int = 1000,
    tile_size: int = 256,
    seed: int = 0,
    embed_dim: int = 64,
    val_fraction: float = 0.2,
) -> dict:
    """Generate the synthetic city into ``out_dir`` (replacing a previous synthetic city there).

    Writes into a temporary folder beside ``out_dir`` and renames it at the end, so an interrupted
    run never leaves a folder that looks complete. Files: see the module docstring and SPEC.md.

    Args:
        out_dir: destination folder; must be new, empty, or an earlier synthetic city.
        n_tiles: number of 1 km tiles (near-square grid, row-major, the last row may be partial).
        tile_size: tile side in pixels (images are ``[tile_size, tile_size, 3]`` uint8).
        seed: seed of every random stream; same arguments give byte-identical files.
        embed_dim: POI category embedding width (the paper uses 64).
        val_fraction: share of tiles listed in ``val-wuhan.txt`` (seeded split).

    Returns:
        Summary dict: ``n_tiles, rows, cols, n_pois, n_zero_poi_tiles, n_categories, n_edges,
        land_use_counts, out_dir, seconds``.
    """
    if n_tiles < 1 or tile_size < 8 or embed_dim < 1 or not 0.0 <= val_fraction < 1.0:
        raise ValueError(
            f"need n_tiles >= 1, tile_size >= 8, embed_dim >= 1 and 0 <= val_fraction < 1; got "
            f"{n_tiles}, {tile_size}, {embed_dim}, {val_fraction}"
        )
    t_start = time.perf_counter()
    out_dir = Path(out_dir)
    _check_replaceable(out_dir)
    tmp = _atomic_dir(out_dir)
    try:
        summary = _write_city(tmp, n_tiles, tile_size, seed, embed_dim, val_fraction)
        # The marker is written last inside the temp folder; the rename publishes everything at once.
        params = _params(n_tiles, tile_size, seed, embed_dim, val_fraction)
        (tmp / MARKER).write_text(json.dumps(params, sort_keys=True) + "\n")
        # Move the old city aside (not delete) first, so the window without a city is two renames.
        old = out_dir.parent / f".{out_dir.name}.old-{os.getpid()}"
        if out_dir.exists():
            os.replace(out_dir, old)
        os.replace(tmp, out_dir)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    summary["out_dir"] = str(out_dir)
    summary["seconds"] = round(time.perf_counter() - t_start, 3)
    return summary


def _write_city(root: Path, n_tiles: int, size: int, seed: int, embed_dim: int, val_fraction: float) -> dict:
    """Write every file of the city into ``root``; returns the summary (without timing)."""
    for sub in ("sub_shanghai_img", "sub_shanghai_emb", "sub_shanghai_edge", "sub_shanghai_weight",
                "img", "pop1km", "gdp1km", "func"):
        (root / sub).mkdir()
    plan = _plan_city(n_tiles, seed)
    emb = category_embeddings(embed_dim, seed)
    emb_t = torch.from_numpy(emb)
    painter = _Painter(size)
    can_link = True

    names, pops, gdps, n_pois, func_rows = [], [], [], [], []
    poi_lines = ["poi_id,x,y,category,parent\n"]
    n_edges = 0
    for i in range(n_tiles):
        rng = np.random.default_rng([seed, 2, i])  # per-tile stream: independent of loop order
        stem = f"tile_{int(plan['row'][i]):03d}_{int(plan['col'][i]):03d}"
        names.append(stem + ".png")
        img, lot_type, lot_water, lot_built, lot_area = _draw_tile(painter, rng, plan, i)
        png = root / "sub_shanghai_img" / (stem + ".png")
        Image.fromarray(img, mode="RGB").save(png, format="PNG", compress_level=1)
        link = root / "img" / (stem + ".png")
        if can_link:
            try:
                os.link(png, link)
            except OSError:  # file systems without hard links
                can_link = False
        if not can_link:
            shutil.copyfile(png, link)

        xy_cm, cats = _tile_pois(rng, plan, i, lot_type, lot_water)
        xy = xy_cm / 100.0  # exact: the nearest double to each printed "%.2f" value
        edge_index, edge_weight = delaunay_edges(xy)
        n_edges += edge_index.shape[1]
        torch.save(emb_t[torch.from_numpy(cats)].clone(), root / "sub_shanghai_emb" / (stem + ".tensor"))
        torch.save(torch.from_numpy(edge_index), root / "sub_shanghai_edge" / (stem + ".tensor"))
        torch.save(torch.from_numpy(edge_weight), root / "sub_shanghai_weight" / (stem + ".tensor"))
        # Coordinates printed from integer centimetres, so the text parses back to exactly ``xy``.
        base = len(poi_lines) - 1
        poi_lines.extend(
            f"{base + k},{x // 100}.{x % 100:02d},{y // 100}.{y % 100:02d},{CATEGORIES[c]},{PARENTS[c]}\n"
            for k, (x, y, c) in enumerate(zip(xy_cm[:, 0].tolist(), xy_cm[:, 1].tolist(), cats.tolist()))
        )
        n_pois.append(int(cats.size))

        # Ground truth from what was drawn: area shares, floor areas (in lots), latent factors.
        counts = np.bincount(lot_type[~lot_water], minlength=N_BUILT).astype(np.float64)
        func = np.append(counts, lot_water.sum()) / lot_type.size
        func_rows.append(func)
        floors = float(plan["floors"][i])
        floor_area = np.bincount(lot_type.reshape(-1), weights=lot_area.reshape(-1), minlength=N_BUILT) * floors
        w, a = float(plan["wealth"][i]), float(plan["activity"][i])
        # Residents live mostly in residential floor area, some above shops and in institutions.
        resid = floor_area[0] + 0.15 * floor_area[1] + 0.05 * floor_area[3]
        pop = 40.0 * resid * math.exp(0.4 * a - 0.2 * w) * math.exp(rng.normal(0, 0.2))
        gdp = (0.30 * floor_area[1] + 0.12 * floor_area[2] + 0.03 * floor_area[0] + 0.05 * floor_area[3])
        gdp *= math.exp(0.5 * w + 0.2 * a) * math.exp(rng.normal(0, 0.25))
        pops.append(pop)
        gdps.append(gdp)
        (root / "pop1km" / (stem + ".txt")).write_text(_fmt(pop) + "\n")
        (root / "gdp1km" / (stem + ".txt")).write_text(_fmt(gdp) + "\n")
        (root / "func" / (stem + ".txt")).write_text(" ".join(f"{v:.6f}" for v in func) + "\n")

    (root / "func_types.txt").write_text("".join(f + "\n" for f in FUNC_TYPES))
    (root / "pois.csv").write_text("".join(poi_lines))

    split_rng = np.random.default_rng([seed, 3])
    perm = split_rng.permutation(n_tiles)
    n_val = int(round(val_fraction * n_tiles))
    is_val = np.zeros(n_tiles, bool)
    is_val[perm[:n_val]] = True
    (root / "train-wuhan.txt").write_text("".join(n + "\n" for n, v in zip(names, is_val) if not v))
    (root / "val-wuhan.txt").write_text("".join(n + "\n" for n, v in zip(names, is_val) if v))

    (root / "categories.csv").write_text(
        "category,parent\n" + "".join(f"{c},{p}\n" for c, p in zip(CATEGORIES, PARENTS))
    )
    header = "category," + ",".join(f"v{j}" for j in range(embed_dim)) + "\n"
    (root / "category_embeddings.csv").write_text(
        header + "".join(c + "," + ",".join(f"{v:.8g}" for v in emb[k]) + "\n" for k, c in enumerate(CATEGORIES))
    )

    rows = plan["rows"]
    idx_lines, tile_lines = ["name,minx,miny,maxx,maxy\n"], [
        "name,row,col,land_use,n_poi,population,gdp,urbanity,wealth,activity,floors,water_fraction\n"
    ]
    for i, name in enumerate(names):
        r, c = int(plan["row"][i]), int(plan["col"][i])
        minx, miny = c * TILE_M, (rows - 1 - r) * TILE_M
        idx_lines.append(f"{name},{minx},{miny},{minx + TILE_M},{miny + TILE_M}\n")
        tile_lines.append(
            f"{name},{r},{c},{LAND_USES[int(plan['land_use'][i])]},{n_pois[i]},{_fmt(pops[i])},{_fmt(gdps[i])},"
            f"{_fmt(plan['u'][i])},{_fmt(plan['wealth'][i])},{_fmt(plan['activity'][i])},"
            f"{_fmt(plan['floors'][i])},{_fmt(plan['water_frac'][i])}\n"
        )
    (root / "tile_index.csv").write_text("".join(idx_lines))
    (root / "tiles.csv").write_text("".join(tile_lines))
    (root / "README.txt").write_text(_README)

    lu_counts = np.bincount(plan["land_use"], minlength=len(LAND_USES))
    return dict(
        n_tiles=n_tiles, rows=int(rows), cols=int(plan["cols"]), n_pois=int(sum(n_pois)),
        n_zero_poi_tiles=int(sum(n == 0 for n in n_pois)), n_categories=len(CATEGORIES), n_edges=int(n_edges),
        land_use_counts={lu: int(k) for lu, k in zip(LAND_USES, lu_counts)},
    )


def ensure_city(
    out_dir: str | os.PathLike,
    n_tiles: int = 1000,
    tile_size: int = 256,
    seed: int = 0,
    *,
    embed_dim: int = 64,
    val_fraction: float = 0.2,
) -> Path:
    """Return ``out_dir`` holding the synthetic city for these parameters, generating it only if needed.

    The city is reused when ``out_dir/.complete`` exists and records exactly these parameters (and
    the current generator version); otherwise it is (re)generated with :func:`generate_city`.
    """
    out_dir = Path(out_dir)
    want = _params(n_tiles, tile_size, seed, embed_dim, val_fraction)
    try:
        have = json.loads((out_dir / MARKER).read_text())
    except (OSError, ValueError):
        have = None
    if have != want:
        generate_city(out_dir, n_tiles, tile_size, seed, embed_dim, val_fraction)
    return out_dir


def main(argv: list[str] | None = None) -> dict:
    """CLI: generate a city and print its summary as JSON."""
    ap = argparse.ArgumentParser(description="Write the built-in deterministic synthetic city (both SPEC layouts).")
    ap.add_argument("--out", required=True, help="output folder (new, empty, or an earlier synthetic city)")
    ap.add_argument("--n_tiles", type=int, default=1000, help="number of 1 km tiles (default 1000)")
    ap.add_argument("--tile_size", type=int, default=256, help="tile side in pixels (default 256)")
    ap.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    ap.add_argument("--embed_dim", type=int, default=64, help="POI category embedding width (default 64, as in the paper)")
    ap.add_argument("--val_fraction", type=float, default=0.2, help="share of tiles in val-wuhan.txt (default 0.2)")
    args = ap.parse_args(argv)
    try:
        summary = generate_city(args.out, args.n_tiles, args.tile_size, args.seed, args.embed_dim, args.val_fraction)
    except (ValueError, FileExistsError) as e:
        sys.exit(f"error: {e}")
    print(json.dumps(summary, indent=2))
    return summary


if __name__ == "__main__":
    main()
