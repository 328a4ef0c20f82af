"""A deterministic synthetic city: VHR-like tiles, POIs, POI graphs and ground truth.

No real tiles or POIs can be shipped, so this module draws a plausible city that exercises every part
of the pipeline (pretraining and the downstream regressions) before a user prepares real data. It
writes both layouts of the published scripts into one folder (``sub_shanghai_*`` for pretraining,
``img``, ``pop1km``, ``gdp1km``, ``func`` and the two lists for the downstream scripts).

The generative rules, their reasons and their measured properties are in ``docs/synthetic_city.md``
(city version :data:`CITY_VERSION`). In short, coarse to fine:

1. Plan: smooth latent fields on the tile grid (urbanity with a centre and sub-centres, wealth,
   activity, land-use preferences), a meandering river, a city-wide grid of major roads, and a land
   use per tile.
2. Layout (independent of the image size): each 1 km tile has 4 x 4 blocks of 4 x 4 lots (62.5 m).
   A block has a function type and a building *kind* (high-rise towers, mid-rise slabs, villas, an
   urban village, office towers, retail, factory sheds, public buildings, park, farmland); each kind
   places its buildings in the lots with its own footprint rule and floor count.
3. Ground truth from the building list: population = sum over dwellings of footprint x floors x
   persons per m2 of the kind, times a small invisible occupancy factor; GDP = sum of floor area x
   output per m2 of the kind, times a small invisible productivity factor; urban functions = area
   shares of the lots' function types.
4. Image: every building is painted with the roof of its kind, a shadow whose length follows its
   height, on the ground of its kind, with trees, roads, water and sensor noise, rendered at no less
   than about 192 px and box-averaged to the requested size (so small tiles keep their cues).
5. POIs of a two-level taxonomy: counts follow the lots' function type, building kind and floor
   area, wealth and the invisible activity.

Every random draw comes from a ``numpy.random.Generator`` keyed by ``(seed, purpose, tile)``: the same
arguments give byte-identical files, and the layout, the ground truth and the POIs do not depend on
the tile size (only the painting does).

A city has a *style* (:class:`Style`, docs/synthetic_city.md "Style B"): style a is the city above
(version 2, unchanged); style b is another town drawn by the same rules with another mix of land uses
and building kinds, denser lots, other roofs, ground and vegetation, another road grid, sun and haze.
Both share the targets' physics, the POI rules and the category table, so that a model trained on one
style can be tested on the other.

Usage::

    python -m synthetic.city --out DATA [--n_tiles 1000] [--tile_size 256] [--seed 0] [--embed_dim 64] [--style a]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import textwrap
import time
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from PIL import Image
from pyproj import CRS
from scipy.ndimage import gaussian_filter
from scipy.special import ndtri

from data.layout import PretrainLayout
from prepare.graph import delaunay_edges
from prepare.tile_index import TileIndex, write_tile_index

__all__ = [
    "CITY_VERSION",
    "STYLES",
    "STYLE_A",
    "STYLE_B",
    "Style",
    "LAND_USES",
    "FUNC_TYPES",
    "KINDS",
    "CATEGORIES",
    "OCCUPANCY_SIGMA",
    "PRODUCTIVITY_SIGMA",
    "plan_city",
    "tile_layout",
    "tile_truth",
    "generate_city",
    "ensure_city",
    "city_style",
    "category_embeddings",
    "main",
]

# The city's rules, frozen: bump when the generator's output changes (ensure_city then regenerates
# old cities; tables state which version they used). History in docs/synthetic_city.md.
CITY_VERSION = 2
TILE_M = 1000  # tile side in metres
# The city's coordinates are metres from its lower-left corner. They are declared in a transverse Mercator
# projection centred near Wuhan (where the paper's downstream data lie) with that corner at (0, 0), so that
# GIS tools and the maps of res_pop.py / embed.py draw it in metres; the city itself is synthetic.
CITY_CRS = CRS.from_json_dict(
    {
        **CRS.from_proj4(
            "+proj=tmerc +lat_0=30.55 +lon_0=114.3 +k=1 +x_0=0 +y_0=0 +ellps=WGS84 +units=m +no_defs"
        ).to_json_dict(),
        "name": "MMGR synthetic city (local transverse Mercator, metres)",
    }
).to_wkt()
FIXED_TIMESTAMP = "2000-01-01T00:00:00Z"  # the GeoPackage's date, so that the same arguments give the same bytes
MARKER = ".complete"
LOTS = 16  # lots per tile side (62.5 m)
BLOCK = 4  # lots per block side (250 m blocks)
LOT_M = TILE_M / LOTS

LAND_USES = ("residential", "commercial", "industrial", "green", "water", "mixed")
# Urban function types of the ground-truth distribution (func/NAME.txt), in file order.
FUNC_TYPES = ("residential", "commercial", "industrial", "public_service", "green_space", "water")
N_BUILT = 5  # the first five function types are what a block can be; water comes from the river


class Kind(NamedTuple):
    """One building kind: what a block of this kind holds, looks like and yields (docs/synthetic_city.md)."""

    name: str
    func: int  # index into FUNC_TYPES of the block's lots
    floors: tuple[int, int]  # floor range of the block's buildings
    storey_m: float  # storey height (sets the building height, hence the shadow length)
    persons_per_m2: float  # residents per m2 of floor area (0: nobody lives there)
    output_per_m2: float  # GDP, million yuan per year per m2 of floor area
    roof: tuple[int, int, int]
    ground: tuple[int, int, int]
    trees: float  # tree cover of the open ground


KINDS: tuple[Kind, ...] = (
    # Residential: about 38 m2 of floor per person in new towers, less in older slabs, far less in
    # an urban village, much more in villas (the spread of Chinese cities' housing stock).
    Kind("highrise", 0, (11, 33), 3.0, 1 / 40, 0.0004, (214, 214, 218), (112, 138, 92), 0.35),
    Kind("midrise", 0, (5, 9), 3.0, 1 / 32, 0.0004, (172, 92, 72), (160, 156, 146), 0.20),
    Kind("villa", 0, (2, 3), 3.0, 1 / 70, 0.0004, (222, 150, 82), (104, 146, 80), 0.45),
    Kind("informal", 0, (3, 5), 3.0, 1 / 28, 0.0004, (150, 100, 75), (138, 124, 108), 0.03),
    # Commercial, industrial, public: no residents; output per m2 of floor differs by an order of
    # magnitude between offices and factories (which have few, tall storeys).
    Kind("office", 1, (8, 45), 3.8, 0.0, 0.008, (96, 142, 152), (186, 186, 182), 0.10),
    Kind("retail", 1, (2, 5), 5.0, 0.0, 0.005, (224, 214, 194), (118, 118, 124), 0.05),
    Kind("factory", 2, (1, 2), 8.0, 0.0, 0.0025, (164, 188, 212), (166, 160, 146), 0.05),
    Kind("public", 3, (3, 7), 3.5, 0.0, 0.002, (206, 186, 142), (168, 164, 150), 0.30),
    Kind("park", 4, (1, 1), 3.0, 0.0, 0.0, (160, 140, 120), (95, 135, 70), 0.60),
    # Rural: farmland with scattered farmhouses (which have residents).
    Kind("farm", 4, (2, 3), 3.0, 1 / 45, 0.0002, (150, 150, 156), (130, 150, 85), 0.06),
)
_K = {k.name: j for j, k in enumerate(KINDS)}
_KIND_FUNC = np.array([k.func for k in KINDS])
_PERSONS = np.array([k.persons_per_m2 for k in KINDS])
_OUTPUT = np.array([k.output_per_m2 for k in KINDS])
_STOREY = np.array([k.storey_m for k in KINDS])
_ROOF = np.array([k.roof for k in KINDS], dtype=np.float32)
_GROUND = np.array([k.ground for k in KINDS], dtype=np.float32)
_TREES = np.array([k.trees for k in KINDS])

# Invisible factors (log-scale standard deviations; docs/synthetic_city.md gives their variance
# shares): occupancy multiplies population, productivity multiplies GDP. Each is a smooth activity
# (and, for GDP, wealth) term plus an iid term per tile.
OCCUPANCY_ACTIVITY, OCCUPANCY_NOISE = 0.12, 0.08
PRODUCTIVITY_WEALTH, PRODUCTIVITY_ACTIVITY, PRODUCTIVITY_NOISE = 0.20, 0.12, 0.10
OCCUPANCY_SIGMA = math.hypot(OCCUPANCY_ACTIVITY, OCCUPANCY_NOISE)
PRODUCTIVITY_SIGMA = math.sqrt(PRODUCTIVITY_WEALTH**2 + PRODUCTIVITY_ACTIVITY**2 + PRODUCTIVITY_NOISE**2)
# The sun stands in the south-east (late morning at 30 deg N): shadows point north-west, i.e. up-left
# in a north-up tile, 0.8 x the building height long.
SHADOW_PER_M = 0.8
SHADOW_DARKEN = 0.45

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

# POI rate per lot of each function type, per coarse class (rows: built function types), and a
# multiplier per building kind (an urban village has many eateries and shops and no property
# management; villas have few POIs; retail has shops; offices have businesses).
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
_KIND_POI = np.array(
    [
        [1.0, 1.0, 1.3, 1.0, 1.0, 1.0],  # highrise
        [1.0, 1.0, 1.0, 1.0, 1.0, 1.0],  # midrise
        [0.4, 0.4, 0.6, 0.3, 1.0, 0.6],  # villa
        [1.8, 1.6, 0.3, 0.3, 1.0, 0.7],  # informal
        [0.9, 0.6, 1.0, 1.6, 1.0, 1.0],  # office
        [1.6, 2.0, 1.0, 0.6, 1.0, 1.0],  # retail
        [1.0, 1.0, 1.0, 1.0, 1.0, 1.0],  # factory
        [1.0, 1.0, 1.0, 1.0, 1.0, 1.0],  # public
        [1.0, 1.0, 1.0, 1.0, 1.0, 1.0],  # park
        [1.0, 1.0, 1.0, 1.0, 1.0, 1.0],  # farm (rural tiles get no POIs anyway)
    ]
)
_FINE_SPLIT = np.array(
    [0.50, 0.20, 0.20, 0.10]
    + [0.25, 0.10, 0.50, 0.15]
    + [0.55, 0.25, 0.20]
    + [0.45, 0.15, 0.40]
    + [0.45, 0.30, 0.25]
    + [0.25, 0.10, 0.10, 0.35, 0.20]
)
# How each fine category responds to wealth (log-rate slope): cafes, malls, clothing, banks and
# offices thrive with wealth; fast food, convenience stores and factories do not.
_WEALTH_SLOPE = np.array(
    [0.2, 0.6, -0.4, 0.1]
    + [0.0, 0.6, -0.3, 0.5]
    + [-0.1, 0.2, 0.3]
    + [0.4, 0.5, 0.1]
    + [-0.3, -0.2, -0.1]
    + [0.1, 0.2, 0.1, -0.2, 0.3]
)
_POI_ACTIVITY = 0.5  # log-rate slope of every POI category on the (invisible) activity field
_POI_FLOOR_REF = 6000.0  # m2 of floor area in a lot at which the floor-area factor is 1
_CLASS_OF = np.array([COARSE.index(p) for p in PARENTS])

_TREE = np.array([40, 85, 40], dtype=np.float32)
_ROAD = np.array([92, 92, 94], dtype=np.float32)
_MAJOR_ROAD = np.array([70, 70, 75], dtype=np.float32)
_WATER = np.array([45, 80, 110], dtype=np.float32)
_FARM = np.array([[120, 150, 80], [150, 160, 90], [170, 155, 110], [100, 130, 60]], dtype=np.float32)
_TRACK = np.array([176, 84, 66], dtype=np.float32)
_PITCH = np.array([86, 150, 78], dtype=np.float32)
# Urban village roofs: corrugated iron in rust, blue and grey, mixed cell by cell.
_VILLAGE = np.array([[150, 96, 68], [82, 120, 168], [132, 132, 134], [176, 150, 118]], dtype=np.float32)
_VILLAGE_CELL_M = 10.0
_MINOR_HALF_M = 5.0  # minor roads on block edges, 10 m wide
_MAJOR_HALF_M = 12.0  # major roads, 24 m wide
_LOT_MARGIN = 0.1  # buildings keep 6.25 m from the lot edge (clear of the minor roads)
_MIN_RENDER = 192  # tiles are painted at >= this many px (at most 4x the tile size) and box-averaged


# --------------------------------------------------------------------------------------------------
# City styles: what differs between two cities of the same rules (docs/synthetic_city.md, "Style B")


class Style(NamedTuple):
    """One city style: its plan, mix of building kinds, density and look (docs/synthetic_city.md).

    What a style does NOT set is the physics that maps what is visible to the targets (persons and
    output per m2 of floor of each kind, storey heights, floor ranges), the POI rules, the function
    types and the POI taxonomy with its embeddings: they are the same in every style, so that a model
    or a POI encoder trained on one style is tested on another by appearance and mix only.
    Arrays indexed by kind follow :data:`KINDS`.
    """

    name: str
    title: str  # one line for the city's README.txt
    stream: tuple[int, ...]  # appended to every random stream's key except the category embeddings'
    # Plan: urbanity exp(-(d / centre_radius)^2) (d in city radii) plus sub-centres (integers(lo, hi)).
    centre_radius: float
    sub_centres: tuple[int, int]
    land_use_bias: tuple[float, ...]  # [6] added to the land-use scores (LAND_USES order)
    river_half_m: tuple[float, float]  # half width of the river, uniform in this range
    road_first_m: tuple[float, float]  # first major road from the city's edge
    road_step_m: tuple[float, float]  # spacing of the major roads
    major_half_m: float  # half width of a major road
    # Blocks and lots.
    lu_mix: np.ndarray  # [6, 5] expected block function-type shares per land use
    res_bias: tuple[float, float, float, float]  # added to the residential kinds' logits
    office_from: float  # urbanity at which an office is as likely as retail
    p_keep: np.ndarray  # [K] chance that a slot of the kind holds a building
    side: np.ndarray  # [K, 2] footprint side range, fraction of the lot (towers, village, commerce, ...)
    # Look.
    roof: np.ndarray  # float32 [K, 3]
    ground: np.ndarray  # float32 [K, 3]
    trees: np.ndarray  # [K] tree cover of the open ground
    village: np.ndarray  # float32 [4, 3] urban-village roof cells
    farm: np.ndarray  # float32 [4, 3] farm plots
    fixed: np.ndarray  # float32 [6, 3] tree, track, pitch, minor road, water, major road
    shadow_per_m: float  # shadow length per metre of building height
    shadow_east: bool  # shadows point north-east (sun in the south-west) instead of north-west
    noise_std: float  # sensor noise, grey levels
    texture: float  # amplitude of the low-frequency brightness on open ground
    haze: float  # share of the haze colour mixed into every pixel (0: none)
    haze_rgb: tuple[float, float, float]


STYLE_A = Style(
    name="a",
    title="Style a: the city of version 2 (towers, slabs and offices around a dense centre).",
    stream=(),
    centre_radius=0.75,
    sub_centres=(1, 4),
    land_use_bias=(0.0,) * len(LAND_USES),
    river_half_m=(420.0, 480.0),
    road_first_m=(300.0, 1500.0),
    road_step_m=(1500.0, 3000.0),
    major_half_m=_MAJOR_HALF_M,
    lu_mix=_LU_MIX,
    res_bias=(0.0, 0.0, 0.0, 0.0),
    office_from=0.55,
    # highrise, midrise, villa, informal, office, retail, factory, public, park, farm
    p_keep=np.array([0.75, 0.85, 0.70, 0.90, 0.75, 0.85, 0.85, 0.65, 0.03, 0.03]),
    side=np.array(
        [
            [0.28, 0.40],
            [0.12, 0.25],  # mid-rise slabs have their own shape (_slot_boxes)
            [0.12, 0.25],
            [0.65, 0.80],
            [0.40, 0.65],
            [0.55, 0.80],
            [0.60, 0.80],
            [0.35, 0.60],
            [0.12, 0.25],
            [0.12, 0.25],
        ]
    ),
    roof=_ROOF,
    ground=_GROUND,
    trees=_TREES,
    village=_VILLAGE,
    farm=_FARM,
    fixed=np.stack([_TREE, _TRACK, _PITCH, _ROAD, _WATER, _MAJOR_ROAD]),
    shadow_per_m=SHADOW_PER_M,
    shadow_east=False,
    noise_std=4.0,
    texture=10.0,
    haze=0.0,
    haze_rgb=(0.0, 0.0, 0.0),
)

# Style b: a sprawling manufacturing town of the kind found in river deltas: many sub-centres, factories
# spread through the residential areas, urban villages rather than towers, few offices and parks, denser
# lots; flat grey concrete and dark-tile roofs where style a has terracotta and orange, white steel
# factory sheds, little vegetation, a narrower muddy river, a denser grid of wider arterials, an
# afternoon acquisition (shadows to the north-east, shorter) and a light haze.
STYLE_B = Style(
    name="b",
    title=(
        "Style b: a sprawling manufacturing town (urban villages and factories, few towers and offices; "
        "other roofs, less vegetation, afternoon sun, haze)."
    ),
    stream=(2,),
    centre_radius=0.88,
    sub_centres=(3, 6),
    # residential, commercial, industrial, green, water, mixed
    land_use_bias=(0.0, -0.9, 0.6, -0.4, 0.0, 0.1),
    river_half_m=(230.0, 300.0),
    road_first_m=(200.0, 1000.0),
    road_step_m=(1000.0, 2000.0),
    major_half_m=15.0,
    lu_mix=np.array(
        [
            [0.62, 0.07, 0.15, 0.10, 0.06],  # residential: workshops among the housing
            [0.20, 0.55, 0.08, 0.12, 0.05],  # commercial
            [0.10, 0.04, 0.80, 0.03, 0.03],  # industrial
            [0.08, 0.02, 0.10, 0.08, 0.72],  # green
            [0.10, 0.05, 0.10, 0.05, 0.70],  # water
            [0.40, 0.25, 0.18, 0.12, 0.05],  # mixed
        ]
    ),
    res_bias=(-1.6, 0.1, -0.8, 1.4),  # fewer towers and villas, many urban villages
    office_from=0.8,
    p_keep=np.array([0.80, 0.92, 0.75, 0.97, 0.80, 0.90, 0.95, 0.70, 0.03, 0.03]),
    side=np.array(
        [
            [0.26, 0.36],
            [0.12, 0.25],
            [0.12, 0.25],
            [0.72, 0.86],  # urban villages cover more of the lot
            [0.40, 0.60],
            [0.55, 0.80],
            [0.66, 0.86],  # bigger sheds
            [0.35, 0.60],
            [0.12, 0.25],
            [0.12, 0.25],
        ]
    ),
    roof=np.array(
        [
            [190, 186, 172],  # highrise: beige-grey
            [146, 144, 138],  # midrise: flat grey concrete
            [94, 98, 110],  # villa: dark glazed tiles
            [150, 148, 142],  # informal (the cells below)
            [60, 86, 120],  # office: dark blue glass
            [198, 202, 208],  # retail: light grey
            [216, 216, 212],  # factory: white steel
            [182, 122, 98],  # public: brick red
            [150, 130, 110],  # park pavilion
            [120, 116, 112],  # farmhouse
        ],
        dtype=np.float32,
    ),
    ground=np.array(
        [
            [128, 134, 110],
            [152, 148, 138],
            [112, 132, 94],
            [118, 108, 98],
            [172, 170, 166],
            [112, 112, 114],
            [152, 148, 140],
            [160, 152, 136],
            [90, 122, 74],
            [124, 136, 92],
        ],
        dtype=np.float32,
    ),
    trees=np.array([0.18, 0.10, 0.25, 0.02, 0.05, 0.03, 0.03, 0.15, 0.45, 0.04]),
    # Urban-village roofs: flat concrete, white paint, blue water tanks, green plastic sheds.
    village=np.array([[166, 164, 158], [202, 202, 198], [72, 112, 162], [118, 140, 108]], dtype=np.float32),
    farm=np.array([[96, 128, 88], [118, 140, 96], [84, 112, 100], [140, 130, 96]], dtype=np.float32),
    fixed=np.array(
        [[52, 78, 46], [64, 120, 86], [96, 140, 84], [120, 118, 112], [86, 102, 88], [84, 84, 88]],
        dtype=np.float32,
    ),
    shadow_per_m=0.6,
    shadow_east=True,
    noise_std=5.0,
    texture=14.0,
    haze=0.12,
    haze_rgb=(206.0, 200.0, 186.0),
)
STYLES: dict[str, Style] = {s.name: s for s in (STYLE_A, STYLE_B)}


def _as_style(style: str | Style) -> Style:
    """A :class:`Style` from its name (a key of :data:`STYLES`) or itself (e.g. a variant made with
    ``STYLE_B._replace(...)``, as benchmarks/city_styles.py makes to measure what each change costs)."""
    if isinstance(style, Style):
        return style
    if style not in STYLES:
        raise ValueError(f"unknown city style {style!r}; choose one of {', '.join(STYLES)}")
    return STYLES[style]


def _rng(plan_or_style: dict | Style, *key: int) -> np.random.Generator:
    """The random stream ``key`` (``seed, purpose[, tile]``) of a style (a plan carries its style)."""
    style = plan_or_style["style"] if isinstance(plan_or_style, dict) else plan_or_style
    return np.random.default_rng([*key, *style.stream])


# --------------------------------------------------------------------------------------------------
# Category embeddings


def category_embeddings(embed_dim: int = 64, seed: int = 0) -> np.ndarray:
    """Embeddings of the fine categories: coarse-class centre plus a small fine offset.

    Stands in for the "semantics-preserved" POI category embeddings the paper uses: what matters
    downstream is that categories of one coarse class lie close together.

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

    def __init__(
        self, rng: np.random.Generator, width_m: float, height_m: float, half_width_m: tuple[float, float]
    ) -> None:
        self.x0 = width_m * rng.uniform(0.35, 0.65)
        self.a1 = min(width_m, height_m) * rng.uniform(0.05, 0.12)
        self.k1 = 2 * math.pi / (height_m * rng.uniform(0.7, 1.3) + 1.0)
        self.p1 = rng.uniform(0, 2 * math.pi)
        self.a2 = self.a1 * 0.3
        self.k2 = self.k1 * 2.7
        self.p2 = rng.uniform(0, 2 * math.pi)
        self.half_width = rng.uniform(*half_width_m)

    def water(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Boolean water mask for broadcastable world coordinates in metres."""
        cx = self.x0 + self.a1 * np.sin(self.k1 * y + self.p1) + self.a2 * np.sin(self.k2 * y + self.p2)
        return np.abs(x - cx) < self.half_width


def plan_city(n_tiles: int, seed: int, style: str | Style = "a") -> dict:
    """Tile-level latent fields, land use and the city-wide river and road grid of a city ``style``.

    Returns a dict of ``[n_tiles]`` arrays (row, col, u, wealth, activity, water_frac, land_use, rural)
    plus ``rows``, ``cols``, ``river``, the major-road positions ``road_x``, ``road_y`` (metres) and
    the :class:`Style` (which every later step reads).
    """
    st = _as_style(style)
    rows, cols = _grid_shape(n_tiles)
    rng = _rng(st, seed, 1)
    sigma = max(1.2, 0.08 * min(rows, cols))
    rr, cc = np.meshgrid(np.arange(rows), np.arange(cols), indexing="ij")
    # Distances in units of the city radius so small and large cities have the same structure.
    radius = max(rows, cols) / 2.0
    cy, cx = (rows - 1) / 2.0 + rng.uniform(-0.1, 0.1) * rows, (cols - 1) / 2.0 + rng.uniform(-0.1, 0.1) * cols
    d = np.hypot(rr - cy, cc - cx) / radius
    u = np.exp(-((d / st.centre_radius) ** 2))
    for _ in range(int(rng.integers(*st.sub_centres))):  # sub-centres
        sy, sx = rng.uniform(0, rows - 1), rng.uniform(0, cols - 1)
        ds = np.hypot(rr - sy, cc - sx) / radius
        u = u + rng.uniform(0.25, 0.45) * np.exp(-((ds / 0.25) ** 2))
    u = np.clip(u + 0.12 * _smooth_field(rng, (rows, cols), sigma), 0.0, 1.0)
    wealth = _smooth_field(rng, (rows, cols), sigma)
    wealth = (wealth + 0.6 * (u - u.mean()) / (u.std() + 1e-12)) / math.sqrt(1.36)  # richer centre
    activity = _smooth_field(rng, (rows, cols), sigma)
    f_ind, f_park, f_mix = (_smooth_field(rng, (rows, cols), sigma) for _ in range(3))

    river = _River(rng, cols * TILE_M, rows * TILE_M, st.river_half_m)
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
    scores += np.asarray(st.land_use_bias)[:, None, None]  # the style's preferences (style a: none)
    land_use = np.argmax(scores, axis=0)
    rural = u < 0.12
    land_use[rural] = LAND_USES.index("green")
    land_use[water_frac > 0.5] = LAND_USES.index("water")

    # City-wide major roads every 1.5-3 km (both directions), jittered, so they continue across tiles.
    def road_lines(extent: float) -> np.ndarray:
        pos, out = rng.uniform(*st.road_first_m), []
        while pos < extent:
            out.append(pos)
            pos += rng.uniform(*st.road_step_m)
        return np.array(out)

    road_x, road_y = road_lines(cols * TILE_M), road_lines(rows * TILE_M)
    flat = lambda a: a.reshape(-1)[:n_tiles]  # noqa: E731  row-major, the last row may be partial
    return dict(
        rows=rows,
        cols=cols,
        river=river,
        road_x=road_x,
        road_y=road_y,
        row=flat(rr),
        col=flat(cc),
        u=flat(u),
        wealth=flat(wealth),
        activity=flat(activity),
        water_frac=flat(water_frac),
        land_use=flat(land_use),
        rural=flat(rural),
        style=st,
    )


# --------------------------------------------------------------------------------------------------
# Layout of one tile: blocks, lots and the building list (no pixels; independent of the tile size)


def _tile_origin(plan: dict, i: int) -> tuple[float, float]:
    """World coordinates (metres) of tile ``i``'s lower-left corner."""
    return float(plan["col"][i]) * TILE_M, float(plan["rows"] - 1 - int(plan["row"][i])) * TILE_M


def _block_kinds(rng: np.random.Generator, block_type: np.ndarray, u: float, w: float, st: Style) -> np.ndarray:
    """Building kind of each block ``[B, B]`` from its function type, urbanity and wealth.

    Residential blocks: towers in the centre, slabs in the middle ring, villas on the wealthy
    outskirts, urban villages in poorer parts of the inner ring (a softmax over these scores).
    """
    logits = np.array(
        [
            4.0 * (u - 0.5) + 0.3 * w,  # highrise
            0.5 - 6.0 * (u - 0.45) ** 2,  # midrise
            1.0 * w - 3.0 * u + 0.3,  # villa
            -1.0 * w - 5.0 * (u - 0.45) ** 2 - 0.3,  # informal
        ]
    )
    logits += np.asarray(st.res_bias)  # the style's preferences (style a: none)
    p_res = np.exp(logits - logits.max())
    p_res /= p_res.sum()
    res = rng.choice(4, size=block_type.shape, p=p_res)
    p_office = 1.0 / (1.0 + math.exp(-8.0 * (u - st.office_from)))
    com = np.where(rng.random(block_type.shape) < p_office, _K["office"], _K["retail"])
    by_type = np.stack(
        [res, com, np.full_like(res, _K["factory"]), np.full_like(res, _K["public"]), np.full_like(res, _K["park"])]
    )
    return np.take_along_axis(by_type, block_type[None], axis=0)[0]


def _block_floors(rng: np.random.Generator, kind: np.ndarray, u: float) -> np.ndarray:
    """Floor count of each block ``[B, B]`` (a residential estate or office cluster is built at once).

    Towers and offices grow taller towards the centre; the other kinds draw uniformly in their range.
    """
    lo = np.array([k.floors[0] for k in KINDS])[kind]
    hi = np.array([k.floors[1] for k in KINDS])[kind]
    uni = rng.random(kind.shape)
    tall = np.clip(u + rng.normal(0.0, 0.2, kind.shape), 0.0, 1.0)
    # Few office towers are very tall: their height grows with the square of the centrality.
    x = np.where(kind == _K["highrise"], tall, np.where(kind == _K["office"], tall**2, uni))
    return np.floor(lo + x * (hi - lo + 0.999)).astype(np.int64)


def tile_layout(plan: dict, i: int, seed: int) -> dict:
    """Blocks, lots and buildings of tile ``i`` (drawn from its own stream; no pixels).

    Coordinates are metres from the tile's top-left corner, ``x`` to the east, ``y`` to the south.

    Returns:
        dict with ``block_kind`` int ``[4, 4]``; ``lot_type`` int ``[16, 16]`` (function type 0..4),
        ``lot_kind`` int ``[16, 16]``, ``lot_water`` bool ``[16, 16]``; the building list as arrays
        ``[N]``: ``kind``, ``lot`` (flat lot index), ``x0, y0, x1, y1`` (metres), ``floors``;
        ``fields`` float ``[F, 4]`` (sports grounds, ``x0, y0, x1, y1``).
    """
    # One stream for the whole tile: the helpers below draw from it in a fixed order (blocks, sports
    # grounds, building slots), which the city's bytes depend on (CITY_VERSION).
    rng = _rng(plan, seed, 2, i)
    L = LOTS
    minx, miny = _tile_origin(plan, i)
    block_type, block_kind, floors = _blocks(rng, plan, i)
    up = lambda a: np.repeat(np.repeat(a, BLOCK, axis=0), BLOCK, axis=1)  # noqa: E731  [B, B] -> [L, L]
    lot_type, lot_kind, lot_floors = up(block_type), up(block_kind), up(floors)
    lot_c = (np.arange(L) + 0.5) * LOT_M
    lot_water = plan["river"].water(minx + lot_c[None, :], miny + TILE_M - lot_c[:, None])
    field_lots, fields = _sports_grounds(rng, block_kind)
    slots = _building_slots(rng, lot_kind, lot_floors, bool(plan["rural"][i]), plan["style"])

    present = slots.used & ~lot_water[..., None] & ~field_lots[..., None]
    rr, cc, ss = np.nonzero(present)
    x0 = (cc + slots.bx[rr, cc, ss]) * LOT_M
    y0 = (rr + slots.by[rr, cc, ss]) * LOT_M
    x1 = x0 + slots.bw[rr, cc, ss] * LOT_M
    y1 = y0 + slots.bh[rr, cc, ss] * LOT_M
    ok = _clear_of_river_and_roads(plan, minx, miny, x0, y0, x1, y1)
    rr, cc, ss = rr[ok], cc[ok], ss[ok]
    return dict(
        block_kind=block_kind,
        lot_type=lot_type,
        lot_kind=lot_kind,
        lot_water=lot_water,
        kind=lot_kind[rr, cc],
        lot=rr * L + cc,
        x0=x0[ok],
        y0=y0[ok],
        x1=x1[ok],
        y1=y1[ok],
        floors=slots.floors[rr, cc, ss],
        fields=np.array(fields, dtype=np.float64).reshape(-1, 4),
    )


def _blocks(rng: np.random.Generator, plan: dict, i: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Function type, building kind and floor count of each block of tile ``i``, each int ``[B, B]``.

    Function types are drawn from the tile's land-use mix (Dirichlet around its profile); a rural tile
    is farmland whatever was drawn (the draws are still made, so the stream stays the same).
    """
    B = LOTS // BLOCK
    lu, u, w = int(plan["land_use"][i]), float(plan["u"][i]), float(plan["wealth"][i])
    st = plan["style"]
    mix = rng.dirichlet(st.lu_mix[lu] * 12.0 + 0.05)
    block_type = rng.choice(N_BUILT, size=(B, B), p=mix / mix.sum())
    block_kind = _block_kinds(rng, block_type, u, w, st)
    floors = _block_floors(rng, block_kind, u)
    if bool(plan["rural"][i]):
        block_type = np.full((B, B), FUNC_TYPES.index("green_space"))
        block_kind = np.full((B, B), _K["farm"])
        floors = np.full((B, B), 2) + (rng.random((B, B)) < 0.5)
    return block_type, block_kind, floors


def _sports_grounds(rng: np.random.Generator, block_kind: np.ndarray) -> tuple[np.ndarray, list[tuple]]:
    """Sports grounds (school tracks) on half of the public blocks: 3 x 2 lots without buildings.

    Returns ``(field_lots, fields)``: bool ``[L, L]`` lots they cover, and one ``(x0, y0, x1, y1)`` in
    metres per ground.
    """
    B = LOTS // BLOCK
    field_lots = np.zeros((LOTS, LOTS), bool)
    fields = []
    has_field = rng.random((B, B)) < 0.5
    fr, fc = rng.integers(0, 3, (B, B)), rng.integers(0, 2, (B, B))
    for br, bc in zip(*np.nonzero((block_kind == _K["public"]) & has_field), strict=True):
        r0, c0 = br * BLOCK + fr[br, bc], bc * BLOCK + fc[br, bc]
        field_lots[r0 : r0 + 2, c0 : c0 + 3] = True
        fields.append((c0 * LOT_M + 6.0, r0 * LOT_M + 6.0, (c0 + 3) * LOT_M - 6.0, (r0 + 2) * LOT_M - 6.0))
    return field_lots, fields


class _Slots(NamedTuple):
    """Up to four building slots per lot, each array ``[L, L, 4]``; boxes in fractions of the lot side."""

    used: np.ndarray  # bool: a building the lot's kind places there (before water and sports grounds)
    bx: np.ndarray  # west edge
    by: np.ndarray  # north edge
    bw: np.ndarray  # width (east-west)
    bh: np.ndarray  # height (north-south)
    floors: np.ndarray  # int64


def _building_slots(
    rng: np.random.Generator, lot_kind: np.ndarray, lot_floors: np.ndarray, rural: bool, st: Style
) -> _Slots:
    """Which of each lot's four slots hold a building, their boxes and floors (``lot_*``: ``[L, L]``).

    The slots are drawn for every lot whatever its kind (a fixed number of draws keeps the stream
    simple); each kind keeps and shapes the slots it uses.
    """
    L = LOTS
    k = lot_kind[..., None]  # [L, L, 1]
    q = np.arange(4)
    keep, wid, hei = rng.random((L, L, 4)), rng.random((L, L, 4)), rng.random((L, L, 4))
    jx, jy = rng.random((L, L, 4)), rng.random((L, L, 4))
    jf = rng.normal(0.0, 1.0, (L, L, 4))
    # Defaults: one building per lot (slot 0), sides as fractions of the lot.
    p_keep = st.p_keep[k] * np.ones((1, 1, 4))
    n_slots = np.where(k == _K["villa"], 4, np.where(k == _K["midrise"], 2, 1))
    used = (keep < p_keep) & (q[None, None, :] < n_slots)
    bx, by, bw, bh = _slot_boxes(k, q, wid, hei, jx, jy, st.side)
    return _Slots(used, bx, by, bw, bh, _slot_floors(k, lot_floors, jf, rural))


def _slot_boxes(
    k: np.ndarray,
    q: np.ndarray,
    wid: np.ndarray,
    hei: np.ndarray,
    jx: np.ndarray,
    jy: np.ndarray,
    side: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Box ``(bx, by, bw, bh)`` ``[L, L, 4]`` of every slot from the kinds ``k`` ``[L, L, 1]``, the slot
    index ``q`` ``[4]``, uniform draws ``[L, L, 4]`` (sides ``wid``/``hei``, position ``jx``/``jy``) and
    the style's footprint side range per kind ``side`` ``[K, 2]``."""
    qx, qy = (q % 2)[None, None, :], (q // 2)[None, None, :]
    span = 1.0 - 2 * _LOT_MARGIN
    side_lo, side_hi = side[k, 0], side[k, 1]
    bw = side_lo + wid * (side_hi - side_lo)
    bh = np.where(k == _K["highrise"], bw, side_lo + hei * (side_hi - side_lo))  # towers are square
    bx = _LOT_MARGIN + jx * (span - bw)
    by = _LOT_MARGIN + jy * (span - bh)
    # Mid-rise: two parallel east-west slabs, one in each half of the lot.
    slab = k == _K["midrise"]
    bw = np.where(slab, 0.55 + wid * 0.25, bw)
    bh = np.where(slab, 0.14 + hei * 0.06, bh)
    bx = np.where(slab, _LOT_MARGIN + jx * (span - bw), bx)
    by = np.where(slab, 0.12 + 0.43 * qx + jy * 0.06, by)  # slot 0 north half, slot 1 south half
    # Villas: one small house per quadrant.
    villa = k == _K["villa"]
    bx = np.where(villa, _LOT_MARGIN + qx * span / 2 + jx * (span / 2 - bw), bx)
    by = np.where(villa, _LOT_MARGIN + qy * span / 2 + jy * (span / 2 - bh), by)
    return bx, by, bw, bh


def _slot_floors(k: np.ndarray, lot_floors: np.ndarray, jf: np.ndarray, rural: bool) -> np.ndarray:
    """Floors int64 ``[L, L, 4]`` of every slot: the block's count (``lot_floors`` ``[L, L]``) jittered by
    ``jf`` ``[L, L, 4]`` (standard normal) for the kinds that vary, within the kind's range; farms as drawn."""
    jitter = np.select(
        [k == _K["highrise"], k == _K["office"], k == _K["informal"], k == _K["public"]], [2.0, 3.0, 0.7, 0.7], 0.0
    )
    lo = np.array([kk.floors[0] for kk in KINDS])[k]
    hi = np.array([kk.floors[1] for kk in KINDS])[k]
    fl = np.clip(np.rint(lot_floors[..., None] + jitter * jf), lo, hi).astype(np.int64)
    if rural:
        fl = np.broadcast_to(lot_floors[..., None], fl.shape).astype(np.int64)
    return fl


def _clear_of_river_and_roads(
    plan: dict, minx: float, miny: float, x0: np.ndarray, y0: np.ndarray, x1: np.ndarray, y1: np.ndarray
) -> np.ndarray:
    """bool ``[N]``: buildings ``[N]`` (tile metres, tile corner at world ``(minx, miny)``) that neither the
    river nor a major road covers (the truth must count only what is visible)."""
    ok = np.ones(x0.size, bool)
    for ax, ay in ((x0, y0), (x1, y0), (x0, y1), (x1, y1), ((x0 + x1) / 2, (y0 + y1) / 2)):
        ok &= ~plan["river"].water(minx + ax, miny + TILE_M - ay)
    hw = plan["style"].major_half_m + 2.0
    for lines, a0, a1, origin, flip in ((plan["road_x"], x0, x1, minx, False), (plan["road_y"], y0, y1, miny, True)):
        for g in lines:
            t = g - origin
            if flip:
                t = TILE_M - t
            ok &= (a1 < t - hw) | (a0 > t + hw)
    return ok


def tile_truth(layout: dict, plan: dict, i: int, seed: int) -> dict:
    """Ground truth of tile ``i`` from its building list (docs/synthetic_city.md, rules 4-6).

    Returns:
        dict of floats: ``population``, ``pop_visible`` (what the buildings show, before the
        invisible occupancy factor), ``occupancy``; ``gdp``, ``gdp_visible``, ``productivity``;
        ``func`` float ``[6]`` (area shares of FUNC_TYPES); ``floor_m2`` float ``[len(KINDS)]``
        (floor area per kind); ``footprint_m2`` (all buildings); ``mean_floors`` (footprint-weighted).
    """
    rng = _rng(plan, seed, 6, i)
    eps_pop, eps_gdp = rng.standard_normal(2)
    kind = layout["kind"]
    footprint = (layout["x1"] - layout["x0"]) * (layout["y1"] - layout["y0"])  # [N] m2
    floor = footprint * layout["floors"]
    floor_m2 = np.bincount(kind, weights=floor, minlength=len(KINDS))
    a, w = float(plan["activity"][i]), float(plan["wealth"][i])
    pop_visible = float(floor_m2 @ _PERSONS)
    occupancy = math.exp(OCCUPANCY_ACTIVITY * a + OCCUPANCY_NOISE * eps_pop)
    gdp_visible = float(floor_m2 @ _OUTPUT)
    productivity = math.exp(PRODUCTIVITY_WEALTH * w + PRODUCTIVITY_ACTIVITY * a + PRODUCTIVITY_NOISE * eps_gdp)
    lot_type, lot_water = layout["lot_type"], layout["lot_water"]
    counts = np.bincount(lot_type[~lot_water], minlength=N_BUILT).astype(np.float64)
    func = np.append(counts, lot_water.sum()) / lot_type.size
    fp = float(footprint.sum())
    return dict(
        population=pop_visible * occupancy,
        pop_visible=pop_visible,
        occupancy=occupancy,
        gdp=gdp_visible * productivity,
        gdp_visible=gdp_visible,
        productivity=productivity,
        func=func,
        floor_m2=floor_m2,
        footprint_m2=fp,
        mean_floors=float((footprint * layout["floors"]).sum() / fp) if fp > 0 else 0.0,
    )


# --------------------------------------------------------------------------------------------------
# POIs


def _tile_pois(plan: dict, i: int, seed: int, layout: dict) -> tuple[np.ndarray, np.ndarray]:
    """Sample tile ``i``'s POIs (its own stream).

    Rate of fine category c in a lot of function type t and kind k: ``_COARSE_RATE[t, class(c)] *
    _KIND_POI[k, class(c)] * _FINE_SPLIT[c] * exp(slope_c * wealth + 0.5 * activity) * (0.15 + 0.6 u)
    * (0.3 + 0.7 sqrt(floor area / 6000 m2))``. Water and rural tiles get none.

    Returns:
        ``(xy_cm, cat)``: int64 ``[N, 2]`` POI coordinates in centimetres (integers, so they print
        and parse back exactly) and int64 ``[N]`` fine-category ids, sorted by category then x, y.
    """
    lu = int(plan["land_use"][i])
    if lu == LAND_USES.index("water") or plan["rural"][i]:
        return np.zeros((0, 2), np.int64), np.zeros((0,), np.int64)
    rng = _rng(plan, seed, 5, i)
    u, w, a = float(plan["u"][i]), float(plan["wealth"][i]), float(plan["activity"][i])
    land = ~layout["lot_water"].reshape(-1)
    t = layout["lot_type"].reshape(-1)
    k = layout["lot_kind"].reshape(-1)
    floor = (layout["x1"] - layout["x0"]) * (layout["y1"] - layout["y0"]) * layout["floors"]
    lot_floor = np.bincount(layout["lot"], weights=floor, minlength=LOTS * LOTS)
    size = 0.3 + 0.7 * np.sqrt(lot_floor / _POI_FLOOR_REF)
    rate = (_COARSE_RATE[t] * _KIND_POI[k])[:, _CLASS_OF] * _FINE_SPLIT[None, :]  # [L*L, C]
    rate = rate * np.exp(_WEALTH_SLOPE * w + _POI_ACTIVITY * a)[None, :] * (0.15 + 0.6 * u)
    rate = rate * (size * land)[:, None]
    counts = rng.poisson(rate)  # [L*L, C]
    lots, cats = np.nonzero(counts)
    reps = counts[lots, cats]
    lots, cats = np.repeat(lots, reps), np.repeat(cats, reps)
    n = lots.size
    minx, miny = _tile_origin(plan, i)
    lot_cm = TILE_M * 100 // LOTS
    # Position inside the lot, in whole centimetres; lot row 0 is at the tile's top edge.
    ox = (lots % LOTS) * lot_cm + rng.integers(0, lot_cm, n)
    oy = (LOTS - 1 - lots // LOTS) * lot_cm + rng.integers(0, lot_cm, n)
    xy = np.stack([int(minx) * 100 + ox, int(miny) * 100 + oy], axis=1).astype(np.int64)
    order = np.lexsort((xy[:, 1], xy[:, 0], cats))
    return xy[order], cats[order].astype(np.int64)


# --------------------------------------------------------------------------------------------------
# Painting


class _Painter:
    """Pixel geometry shared by all tiles of one size (computed once).

    Tiles are painted at ``R = f * size`` px (``f = ceil(192 / size)``, at most 4) and box-averaged,
    so a building smaller than an output pixel still darkens or tints it by its area, as a sensor's
    pixel integrates the ground it sees.
    """

    def __init__(self, size: int) -> None:
        self.size = size
        self.f = int(min(4, max(1, math.ceil(_MIN_RENDER / size))))
        R = self.R = size * self.f
        self.mpp = TILE_M / R  # metres per render pixel
        self.metres = (np.arange(R) + 0.5) * self.mpp  # [R] pixel centre, metres from the tile edge
        self.lot = np.minimum((self.metres // LOT_M).astype(np.int64), LOTS - 1)  # [R]
        self.lot_id = self.lot[:, None] * LOTS + self.lot[None, :]  # [R, R]
        block_m = LOT_M * BLOCK
        off = np.mod(self.metres, block_m)
        self.minor = np.minimum(off, block_m - off) < max(_MINOR_HALF_M, 0.5 * self.mpp)  # [R]
        self.cell = (self.metres // _VILLAGE_CELL_M).astype(np.int64)  # [R] urban-village roof cells
        self.n_cell = int(self.cell.max()) + 1
        self.ridge = (self.metres // 6.0).astype(np.int64) % 2 == 0  # [R] factory roof ridges, 6 m
        # Bilinear upsampling (separable lerp, no BLAS) of a coarse noise grid for smooth fields.
        m = max(4, R // 8 + 2)
        pos = np.linspace(0, m - 1, R)
        self.m = m
        self.lo = np.minimum(np.floor(pos).astype(np.int64), m - 2)
        self.w = (pos - self.lo).astype(np.float32)

    def px(self, a: np.ndarray) -> np.ndarray:
        """Per-lot array ``[L, L, ...]`` -> per-pixel ``[R, R, ...]`` (row then column gather)."""
        return a.take(self.lot, axis=0).take(self.lot, axis=1)

    def span(self, a0: np.ndarray, a1: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Metre intervals -> pixel index ranges ``[p0, p1)`` holding at least one pixel."""
        p0 = np.clip(np.rint(a0 / self.mpp).astype(np.int64), 0, self.R - 1)
        p1 = np.clip(np.maximum(np.rint(a1 / self.mpp).astype(np.int64), p0 + 1), 1, self.R)
        return p0, p1

    def smooth(self, rng: np.random.Generator) -> np.ndarray:
        """Smooth, roughly standard-normal float32 field ``[R, R]`` (bilinearly upsampled noise)."""
        c = rng.standard_normal((self.m, self.m), dtype=np.float32)
        lo, w = self.lo, self.w
        r = c[lo] * (1 - w)[:, None] + c[lo + 1] * w[:, None]  # [R, m]
        f = r[:, lo] * (1 - w)[None, :] + r[:, lo + 1] * w[None, :]  # [R, R]
        # Bilinear mixing of unit normals leaves a variance of about (2/3)^2; rescale to ~1.
        return f * np.float32(1.5)


def _paint_tile(p: _Painter, plan: dict, i: int, seed: int, layout: dict) -> np.ndarray:
    """Paint tile ``i`` from its layout -> uint8 ``[size, size, 3]`` (its own stream)."""
    rng = _rng(plan, seed, 4, i)
    st = plan["style"]
    R, L = p.R, LOTS
    rural = bool(plan["rural"][i])
    wealth = float(plan["wealth"][i])
    minx, miny = _tile_origin(plan, i)
    lot_kind = layout["lot_kind"]

    # Open ground as a palette-index map [R, R] (cheap 2-D work), coloured by one gather at the end.
    # Palette: the L*L lots' ground colours (farm plots at the rural edge), then the fixed colours.
    ground = st.ground[lot_kind] + rng.normal(0, 6, (L, L, 1)).astype(np.float32)
    if rural:
        ground = st.farm[rng.integers(0, len(st.farm), (L, L))]
    n_lot = L * L
    palette = np.concatenate([ground.reshape(n_lot, 3), st.fixed])
    TREE, TRACK, PITCH, ROAD, WATER, MAJOR = range(n_lot, n_lot + 6)
    idx = p.lot_id.copy()
    texture = p.smooth(rng)
    cover = np.clip(st.trees[lot_kind] * math.exp(0.2 * wealth), 0.01, 0.95)
    trees = p.smooth(rng) > p.px(ndtri(1.0 - cover).astype(np.float32))
    idx[trees] = TREE
    for x0, y0, x1, y1 in layout["fields"]:  # sports grounds: a red track around a green pitch
        (a0, b0), (a1, b1) = p.span(np.array([y0, x0]), np.array([y1, x1]))
        idx[a0:a1, b0:b1] = TRACK
        ix, iy = 0.18 * (x1 - x0), 0.25 * (y1 - y0)
        (a0, b0), (a1, b1) = p.span(np.array([y0 + iy, x0 + ix]), np.array([y1 - iy, x1 - ix]))
        idx[a0:a1, b0:b1] = PITCH
    # Minor roads on block edges (not in parks or farmland); major roads (bridges over water).
    minor = p.minor[:, None] | p.minor[None, :]
    if not rural:
        minor &= p.px(lot_kind != _K["park"])
        idx[minor] = ROAD
    else:
        minor[:] = False
    water = plan["river"].water(minx + p.metres[None, :], miny + TILE_M - p.metres[:, None])
    idx[water] = WATER
    hw = max(st.major_half_m, 0.6 * p.mpp)
    gx, gy = minx + p.metres, miny + TILE_M - p.metres
    major_c = np.abs(gx[:, None] - plan["road_x"][None, :]).min(axis=1, initial=np.inf) < hw  # [R]
    major_r = np.abs(gy[:, None] - plan["road_y"][None, :]).min(axis=1, initial=np.inf) < hw  # [R]
    major = major_r[:, None] | major_c[None, :]
    idx[major] = MAJOR

    # Buildings, one pass: pixel boxes, height map (shadow reach in px along each axis) and roofs —
    # the kind's colour with a per-building tint (richer estates have brighter roofs) and its detail.
    kind, floors = layout["kind"], layout["floors"]
    n = kind.size
    r0, r1 = p.span(layout["y0"], layout["y1"])
    c0, c1 = p.span(layout["x0"], layout["x1"])
    reach = st.shadow_per_m * floors * _STOREY[kind] / math.sqrt(2.0) / p.mpp  # [N]
    tint = rng.normal(0, 9, (n, 1)).astype(np.float32) + rng.normal(0, 4, (n, 3)).astype(np.float32)
    tint += np.float32(6.0 * wealth) * (_KIND_FUNC[kind] == 0)[:, None]
    roof = st.roof[kind] + tint  # [N, 3]
    cells = st.village[rng.integers(0, len(st.village), (p.n_cell, p.n_cell))]  # [n_cell, n_cell, 3]
    spot = rng.random((n, 2))
    height = np.zeros((R, R), np.float32)
    building = np.zeros((R, R), bool)
    roofs = np.zeros((R, R, 3), np.float32)
    tower, office, retail, factory, village = _K["highrise"], _K["office"], _K["retail"], _K["factory"], _K["informal"]
    for j, (a0, a1, b0, b1, kj, h) in enumerate(
        zip(r0.tolist(), r1.tolist(), c0.tolist(), c1.tolist(), kind.tolist(), reach.tolist(), strict=True)
    ):
        height[a0:a1, b0:b1] = h
        building[a0:a1, b0:b1] = True
        box = roofs[a0:a1, b0:b1]
        box[:] = roof[j]
        hh, ww = a1 - a0, b1 - b0
        if kj == tower and hh >= 3:  # lift core and machine room in the middle
            d = max(1, hh // 3)
            box[d : hh - d, d : ww - d] = roof[j] * np.float32(0.62)
        elif kj == office and hh >= 3:  # glass roof inside a pale parapet
            d = max(1, hh // 6)
            box[d : hh - d, d : ww - d] = roof[j] * np.float32(0.75) + np.float32(10.0)
        elif kj == retail and hh >= 4:  # rooftop plant
            sh, sw = max(1, hh // 5), max(1, ww // 5)
            ya, xa = int(spot[j, 0] * (hh - sh)), int(spot[j, 1] * (ww - sw))
            box[ya : ya + sh, xa : xa + sw] = roof[j] * np.float32(0.55)
        elif kj == factory:  # corrugated ridges
            box[:, p.ridge[b0:b1]] *= np.float32(0.88)
        elif kj == village:  # mixed corrugated roofs, cell by cell
            box[:] = cells[p.cell[a0:a1]][:, p.cell[b0:b1]] + tint[j]
    # Shadows swept up-left (north-west; style b: up-right, north-east) from each roof, darkening the
    # ground they fall on.
    shadow = np.zeros((R, R), bool)
    for t in range(1, int(math.ceil(float(reach.max(initial=0.0)))) + 1):
        if st.shadow_east:
            shadow[:-t, t:] |= height[t:, :-t] >= t - 0.5
        else:
            shadow[:-t, :-t] |= height[t:, t:] >= t - 0.5
    shade = np.where(shadow & ~building & ~water, np.float32(SHADOW_DARKEN), np.float32(1.0))
    img = palette.take(idx, axis=0) * shade[..., None]  # float32 [R, R, 3]
    img = np.where(building[..., None], roofs, img)
    if st.haze > 0:  # atmospheric haze: a share of a bright colour over every pixel, lowering the contrast
        img = img * np.float32(1.0 - st.haze) + np.float32(st.haze) * np.array(st.haze_rgb, np.float32)

    # Sensor and texture: low-frequency brightness on open ground, noise everywhere.
    # (uniform noise of std 4, style b 5: as good as Gaussian to the eye and three times cheaper to draw)
    grey = np.float32(st.noise_std * math.sqrt(12.0)) * (rng.random((R, R), dtype=np.float32) - np.float32(0.5))
    grey += np.float32(st.texture) * texture * (~trees & ~building & ~water & ~major & ~minor)
    img += grey[..., None]
    if p.f > 1:  # box average to the output size (a pixel integrates its ground), in a fixed order
        f, acc = p.f, None
        for a in range(f):
            for b in range(f):
                acc = img[a::f, b::f].copy() if acc is None else acc + img[a::f, b::f]
        img = acc / np.float32(f * f)
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


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
        f"{out_dir} exists and is not a synthetic city (no {MARKER} marker); pass an empty or new folder as the output."
    )


def _params(n_tiles: int, tile_size: int, seed: int, embed_dim: int, val_fraction: float, style: str) -> dict:
    """The city's parameters, as its ``.complete`` marker records them. Style a writes no ``style`` key, so
    that its marker keeps the bytes of city version 2 (a marker without the key is style a)."""
    params = dict(
        city_version=CITY_VERSION,
        n_tiles=int(n_tiles),
        tile_size=int(tile_size),
        seed=int(seed),
        embed_dim=int(embed_dim),
        val_fraction=float(val_fraction),
    )
    if style != STYLE_A.name:
        params["style"] = style
    return params


def city_style(data: str | os.PathLike) -> str | None:
    """The style (``"a"``, ``"b"``) of a synthetic city folder, from its ``.complete`` marker; None for a
    folder that is not a synthetic city."""
    try:
        params = json.loads((Path(data) / MARKER).read_text())
    except (OSError, ValueError):
        return None
    return str(params.get("style", STYLE_A.name)) if isinstance(params, dict) else None


def _fmt(v: float) -> str:
    return f"{v:.6f}"


_README = """Synthetic city written by synthetic/city.py (MMGR). These data are SYNTHETIC: no real imagery,
POIs, population or GDP. They exist so the pipeline can run before real data are prepared.
City version {version} (its generative rules and their reasons: docs/synthetic_city.md).
{style}
Modelled: a grid of 1 km tiles with spatially smooth latent fields (urbanity with a centre and
sub-centres, wealth, activity), a river, land use per tile, blocks of one building kind each
(high-rise towers, mid-rise slabs, villas, urban village, offices, retail, factories, public
buildings, parks, farmland), VHR-like RGB tiles (roofs by kind, shadows by height, trees, roads,
water), POIs of a two-level taxonomy (categories.csv) whose counts depend on land use, building
kind and floor area, wealth and activity (activity is invisible in the image), Delaunay POI graphs
with inverse-distance edge weights, and ground truth: population (persons per tile: residential
floor area x persons per m2 of its kind x a small invisible occupancy factor), GDP (million yuan
per year: floor area x output per m2 of its kind x a small invisible productivity factor) and the
urban-function distribution (area shares, func_types.txt). truth_components.csv holds the visible
parts and the invisible factors of each tile's truth. Water and rural tiles have zero POIs on
purpose. Parameters: see .complete (JSON).
"""


def generate_city(
    out_dir: str | os.PathLike,
    n_tiles: int = 1000,
    tile_size: int = 256,
    seed: int = 0,
    embed_dim: int = 64,
    val_fraction: float = 0.2,
    style: str | Style = "a",
) -> dict:
    """Generate the synthetic city into ``out_dir`` (replacing a previous synthetic city there).

    Writes into a temporary folder beside ``out_dir`` and renames it at the end, so an interrupted
    run never leaves a folder that looks complete. Files: see the module docstring and
    docs/synthetic_city.md.

    Args:
        out_dir: destination folder; must be new, empty, or an earlier synthetic city.
        n_tiles: number of 1 km tiles (near-square grid, row-major, the last row may be partial).
        tile_size: tile side in pixels (images are ``[tile_size, tile_size, 3]`` uint8).
        seed: seed of every random stream; same arguments give byte-identical files.
        embed_dim: POI category embedding width (the paper uses 64).
        val_fraction: share of tiles listed in ``val-wuhan.txt`` (seeded split).
        style: city style, a key of :data:`STYLES` (``"a"``: the city of version 2; ``"b"``: another mix,
            density and look with the same targets' rules, docs/synthetic_city.md "Style B") or a
            :class:`Style` (its name is what ``.complete`` records).

    Returns:
        Summary dict: ``city_version, style, n_tiles, rows, cols, n_pois, n_zero_poi_tiles,
        n_categories, n_edges, land_use_counts, out_dir, seconds``.
    """
    if n_tiles < 1 or tile_size < 8 or embed_dim < 1 or not 0.0 <= val_fraction < 1.0:
        raise ValueError(
            f"need n_tiles >= 1, tile_size >= 8, embed_dim >= 1 and 0 <= val_fraction < 1; got "
            f"{n_tiles}, {tile_size}, {embed_dim}, {val_fraction}"
        )
    st = _as_style(style)
    t_start = time.perf_counter()
    out_dir = Path(out_dir)
    _check_replaceable(out_dir)
    tmp = _atomic_dir(out_dir)
    try:
        summary = _write_city(tmp, n_tiles, tile_size, seed, embed_dim, val_fraction, st)
        # The marker is written last inside the temp folder; the rename publishes everything at once.
        params = _params(n_tiles, tile_size, seed, embed_dim, val_fraction, st.name)
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


def _write_city(
    root: Path, n_tiles: int, size: int, seed: int, embed_dim: int, val_fraction: float, style: Style
) -> dict:
    """Write every file of the city into ``root``; returns the summary (without timing)."""
    PretrainLayout(root).make_dirs()
    for sub in ("img", "pop1km", "gdp1km", "func"):
        (root / sub).mkdir()
    plan = plan_city(n_tiles, seed, style)
    # Keyed by the seed alone, in every style: cities of one seed share the category table (POI encoders transfer).
    emb = category_embeddings(embed_dim, seed)
    writer = _TileWriter(root, _Painter(size), torch.from_numpy(emb))
    for i in range(n_tiles):
        writer.write(plan, i, seed)
    (root / "func_types.txt").write_text("".join(f + "\n" for f in FUNC_TYPES))
    (root / "pois.csv").write_text("".join(writer.poi_lines))
    is_val = _write_split(root, writer.names, _rng(plan, seed, 3), val_fraction)
    (root / "categories.csv").write_text(
        "category,parent\n" + "".join(f"{c},{p}\n" for c, p in zip(CATEGORIES, PARENTS, strict=True))
    )
    header = "category," + ",".join(f"v{j}" for j in range(embed_dim)) + "\n"
    (root / "category_embeddings.csv").write_text(
        header + "".join(c + "," + ",".join(f"{v:.8g}" for v in emb[k]) + "\n" for k, c in enumerate(CATEGORIES))
    )
    _write_tables(root, plan, writer, is_val)
    style_line = "" if style.name == STYLE_A.name else textwrap.fill(style.title, 100) + "\n"
    (root / "README.txt").write_text(_README.format(version=CITY_VERSION, style=style_line))
    lu_counts = np.bincount(plan["land_use"], minlength=len(LAND_USES))
    return dict(
        city_version=CITY_VERSION,
        style=style.name,
        n_tiles=n_tiles,
        rows=int(plan["rows"]),
        cols=int(plan["cols"]),
        n_pois=int(sum(writer.n_pois)),
        n_zero_poi_tiles=int(sum(n == 0 for n in writer.n_pois)),
        n_categories=len(CATEGORIES),
        n_edges=int(writer.n_edges),
        land_use_counts={lu: int(k) for lu, k in zip(LAND_USES, lu_counts, strict=True)},
    )


class _TileWriter:
    """Writes one tile after the other (image, POI tensors, targets) and keeps what the tables need."""

    def __init__(self, root: Path, painter: _Painter, emb_t: torch.Tensor):
        self.root, self.painter, self.emb_t = root, painter, emb_t
        self.layout = PretrainLayout(root)
        self.can_link = True
        self.names: list[str] = []
        self.truths: list[dict] = []
        self.n_pois: list[int] = []
        self.poi_lines = ["poi_id,x,y,category,parent\n"]
        self.n_edges = 0

    def write(self, plan: dict, i: int, seed: int) -> None:
        root = self.root
        stem = f"tile_{int(plan['row'][i]):03d}_{int(plan['col'][i]):03d}"
        self.names.append(stem + ".png")
        layout = tile_layout(plan, i, seed)
        png = self.layout.img / (stem + ".png")
        Image.fromarray(_paint_tile(self.painter, plan, i, seed, layout), mode="RGB").save(
            png, format="PNG", compress_level=1
        )
        self._link(png, root / "img" / (stem + ".png"))
        xy_cm, cats = _tile_pois(plan, i, seed, layout)
        xy = xy_cm / 100.0  # exact: the nearest double to each printed "%.2f" value
        edge_index, edge_weight = delaunay_edges(xy)
        self.n_edges += edge_index.shape[1]
        emb_file, edge_file, weight_file = self.layout.poi_files(png)
        torch.save(self.emb_t[torch.from_numpy(cats)].clone(), emb_file)
        torch.save(torch.from_numpy(edge_index), edge_file)
        torch.save(torch.from_numpy(edge_weight), weight_file)
        # Coordinates printed from integer centimetres, so the text parses back to exactly ``xy``.
        base = len(self.poi_lines) - 1
        self.poi_lines.extend(
            f"{base + k},{x // 100}.{x % 100:02d},{y // 100}.{y % 100:02d},{CATEGORIES[c]},{PARENTS[c]}\n"
            for k, (x, y, c) in enumerate(zip(xy_cm[:, 0].tolist(), xy_cm[:, 1].tolist(), cats.tolist(), strict=True))
        )
        self.n_pois.append(int(cats.size))
        truth = tile_truth(layout, plan, i, seed)
        self.truths.append(truth)
        (root / "pop1km" / (stem + ".txt")).write_text(_fmt(truth["population"]) + "\n")
        (root / "gdp1km" / (stem + ".txt")).write_text(_fmt(truth["gdp"]) + "\n")
        (root / "func" / (stem + ".txt")).write_text(" ".join(f"{v:.6f}" for v in truth["func"]) + "\n")

    def _link(self, src: Path, dst: Path) -> None:
        """The downstream layout's copy of a tile: a hard link where the file system has them."""
        if self.can_link:
            try:
                os.link(src, dst)
                return
            except OSError:
                self.can_link = False
        shutil.copyfile(src, dst)


def _write_split(root: Path, names: list[str], rng: np.random.Generator, val_fraction: float) -> np.ndarray:
    """The seeded train/val lists (published names; ``rng``: the split's stream); returns ``[T]`` True for
    validation tiles."""
    perm = rng.permutation(len(names))
    is_val = np.zeros(len(names), bool)
    is_val[perm[: int(round(val_fraction * len(names)))]] = True
    (root / "train-wuhan.txt").write_text("".join(n + "\n" for n, v in zip(names, is_val, strict=True) if not v))
    (root / "val-wuhan.txt").write_text("".join(n + "\n" for n, v in zip(names, is_val, strict=True) if v))
    return is_val


def _write_tables(root: Path, plan: dict, writer: _TileWriter, is_val: np.ndarray) -> None:
    """tile_index.gpkg/.csv (georeferenced, so that maps can be drawn), tiles.csv, truth_components.csv."""
    rows = plan["rows"]
    tile_lines = ["name,row,col,land_use,n_poi,population,gdp,urbanity,wealth,activity,floors,water_fraction\n"]
    comp_lines = [
        "name,split,"
        + ",".join(f"floor_m2_{k.name}" for k in KINDS)
        + ",footprint_m2,pop_visible,occupancy,population,gdp_visible,productivity,gdp\n"
    ]
    for i, name in enumerate(writer.names):
        r, c = int(plan["row"][i]), int(plan["col"][i])
        t = writer.truths[i]
        tile_lines.append(
            f"{name},{r},{c},{LAND_USES[int(plan['land_use'][i])]},{writer.n_pois[i]},{_fmt(t['population'])},"
            f"{_fmt(t['gdp'])},{_fmt(plan['u'][i])},{_fmt(plan['wealth'][i])},{_fmt(plan['activity'][i])},"
            f"{_fmt(t['mean_floors'])},{_fmt(plan['water_frac'][i])}\n"
        )
        comp_lines.append(
            f"{name},{'val' if is_val[i] else 'train'},"
            + ",".join(f"{v:.2f}" for v in t["floor_m2"])
            + f",{t['footprint_m2']:.2f},{_fmt(t['pop_visible'])},{_fmt(t['occupancy'])},{_fmt(t['population'])},"
            f"{_fmt(t['gdp_visible'])},{_fmt(t['productivity'])},{_fmt(t['gdp'])}\n"
        )
    r_idx, c_idx = plan["row"].astype(np.int64), plan["col"].astype(np.int64)
    minx, miny = c_idx * TILE_M, (rows - 1 - r_idx) * TILE_M
    bounds = np.stack([minx, miny, minx + TILE_M, miny + TILE_M], axis=1).astype(np.float64)
    split = np.where(is_val, "val", "train").astype(object)
    write_tile_index(
        root,
        TileIndex(
            names=list(writer.names),
            bounds=bounds,
            crs=CITY_CRS,
            rows=r_idx,
            cols=c_idx,
            columns={"split": split, "n_poi": np.asarray(writer.n_pois, np.int64)},
        ),
        timestamp=FIXED_TIMESTAMP,
    )
    (root / "tiles.csv").write_text("".join(tile_lines))
    (root / "truth_components.csv").write_text("".join(comp_lines))


def ensure_city(
    out_dir: str | os.PathLike,
    n_tiles: int = 1000,
    tile_size: int = 256,
    seed: int = 0,
    *,
    embed_dim: int = 64,
    val_fraction: float = 0.2,
    style: str | Style = "a",
) -> Path:
    """Return ``out_dir`` holding the synthetic city for these parameters, generating it only if needed.

    The city is reused when ``out_dir/.complete`` exists and records exactly these parameters (and
    the current :data:`CITY_VERSION`, and the ``style``); otherwise it is (re)generated with
    :func:`generate_city`.
    """
    out_dir = Path(out_dir)
    want = _params(n_tiles, tile_size, seed, embed_dim, val_fraction, _as_style(style).name)
    try:
        have = json.loads((out_dir / MARKER).read_text())
    except (OSError, ValueError):
        have = None
    if have != want:
        generate_city(out_dir, n_tiles, tile_size, seed, embed_dim, val_fraction, style)
    return out_dir


def main(argv: list[str] | None = None) -> dict:
    """CLI: generate a city and print its summary as JSON."""
    ap = argparse.ArgumentParser(
        description="Write the built-in deterministic synthetic city (both published layouts)."
    )
    ap.add_argument("--out", required=True, help="output folder (new, empty, or an earlier synthetic city)")
    ap.add_argument("--n_tiles", type=int, default=1000, help="number of 1 km tiles (default 1000)")
    ap.add_argument("--tile_size", type=int, default=256, help="tile side in pixels (default 256)")
    ap.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    ap.add_argument(
        "--embed_dim", type=int, default=64, help="POI category embedding width (default 64, as in the paper)"
    )
    ap.add_argument("--val_fraction", type=float, default=0.2, help="share of tiles in val-wuhan.txt (default 0.2)")
    ap.add_argument(
        "--style",
        choices=tuple(STYLES),
        default=STYLE_A.name,
        help="city style (default a: the city of version 2; b: a manufacturing town with another mix, density "
        "and look and the same targets' rules, docs/synthetic_city.md)",
    )
    args = ap.parse_args(argv)
    try:
        summary = generate_city(
            args.out, args.n_tiles, args.tile_size, args.seed, args.embed_dim, args.val_fraction, args.style
        )
    except (ValueError, FileExistsError) as e:
        sys.exit(f"error: {e}")
    print(json.dumps(summary, indent=2))
    return summary


if __name__ == "__main__":
    main()
