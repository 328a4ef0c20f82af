"""A real-data preparation end to end: a UTM mosaic, lon/lat POIs in a GeoPackage and census polygons in
Web Mercator -> prepare_pois.py -> tiles, targets, lists, tile index -> mmgr.py trains one epoch on it.
Also: image-only preparation, bad input that stops the run before anything is written, a real Landsat
crop's unmarked fill, a city with nearly no POI, and central Helsinki's OSM nodes, areas and land-use
classes through res_func.py."""

import json
import os
import warnings

import geopandas as gpd
import numpy as np
import pyogrio
import pytest
import shapely
import torch
from pyproj import Transformer

import res_func
from prepare.tile_index import read_tile_index
from prepare_pois import main
from tests.conftest import ROOT, run_script
from tests.prepare.geo_helpers import HELSINKI_PBF, LANDSAT_CROP, write_raster
from utils.errors import UserError

X0, Y1, RES, TILE = 400_000.0, 3_460_000.0, 10.0, 160.0  # UTM 51N; 16 px tiles of 10 m


@pytest.fixture(scope="module")
def city(tmp_path_factory):
    root = tmp_path_factory.mktemp("city")
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, size=(3, 64, 128), dtype=np.uint8)  # 4 x 8 tiles
    write_raster(root / "mosaic.tif", img, "EPSG:32651", (X0, Y1), RES, tiled=True)
    # 300 POIs inside the mosaic, stored in lon/lat
    xy = rng.uniform([X0, Y1 - 640], [X0 + 1280, Y1], size=(300, 2))
    lon, lat = Transformer.from_crs("EPSG:32651", "EPSG:4326", always_xy=True).transform(xy[:, 0], xy[:, 1])
    cat = rng.integers(0, 6, 300)
    gpd.GeoDataFrame(
        {"category": [f"c{c}" for c in cat], "parent": [f"p{c // 3}" for c in cat]},
        geometry=shapely.points(np.stack([lon, lat], 1)),
        crs="EPSG:4326",
    ).to_file(root / "pois.gpkg")
    # census: 4 x 4 polygons of 320 m covering the mosaic, in Web Mercator
    cells = [
        shapely.box(X0 + 320 * i, Y1 - 160 * (j + 1), X0 + 320 * (i + 1), Y1 - 160 * j)
        for i in range(4)
        for j in range(4)
    ]
    census = gpd.GeoDataFrame({"POP": (np.arange(16) + 1) * 100.0}, geometry=cells, crs="EPSG:32651")
    census.to_crs("EPSG:3857").to_file(root / "census.gpkg")
    return root


def prepare_args(city, out, *extra):
    return [
        "--mosaic",
        str(city / "mosaic.tif"),
        "--tile_size_m",
        str(TILE),
        "--tile_px",
        "32",
        "--pois",
        str(city / "pois.gpkg"),
        "--parent_col",
        "parent",
        "--embed_dim",
        "16",
        "--target",
        f"pop1km={city / 'census.gpkg'}:POP",
        "--block_tiles",
        "2",
        "--val_fraction",
        "0.25",
        "--out",
        str(out),
        *extra,
    ]


@pytest.mark.slow
def test_mosaic_pois_census_to_training(city, tmp_path):
    out = tmp_path / "out"
    summary = main(prepare_args(city, out))
    assert summary["tiles"] == 32 and summary["tile_crs"] == "EPSG:32651" and summary["reprojected"]
    assert summary["pois_used"] == 300 and summary["pois_outside_every_tile"] == 0
    names = sorted(os.listdir(out / "sub_shanghai_img"))
    assert len(names) == 32 and names[0] == "r0000_c0000.png" and names[-1] == "r0003_c0007.png"
    n_poi = sum(torch.load(out / "sub_shanghai_emb" / (n[:-4] + ".tensor")).shape[0] for n in names)
    assert n_poi == 300
    # each census polygon (320 x 160 m) covers exactly two tiles: each gets half of its count
    pop = {n: float((out / "pop1km" / (n[:-4] + ".txt")).read_text()) for n in names}
    got = [pop["r0000_c0000.png"], pop["r0000_c0001.png"], pop["r0001_c0000.png"], pop["r0003_c0007.png"]]
    assert np.allclose(got, [50, 50, 100, 800], rtol=1e-8)  # (round trip through Web Mercator)
    assert np.isclose(sum(pop.values()), 100 * sum(range(1, 17)))
    train = (out / "train.txt").read_text().split()
    val = (out / "val.txt").read_text().split()
    assert sorted(train + val) == names and len(val) == 8 and summary["split"]["val"] == 8
    blocks = {(int(n[1:5]) // 2, int(n[7:11]) // 2) for n in val}
    assert len(blocks) == 2  # two whole 2 x 2 blocks
    idx = read_tile_index(out)
    assert idx.crs == "EPSG:32651" and idx.names == names and idx.regular
    assert np.allclose(idx.bounds[0], [X0, Y1 - TILE, X0 + TILE, Y1])
    assert json.loads((out / "prepare_summary.json").read_text())["targets"]["pop1km"]["tiles_with_value"] == 32

    r = run_script(
        [
            "mmgr.py",
            "--data_path",
            str(out),
            "--total_epoch",
            "1",
            "--batch_size",
            "8",
            "--resnet",
            "resnet18",
            "--img_size",
            "32",
            "--model_path",
            str(tmp_path / "ckpt"),
            "--train_record",
            str(tmp_path / "rec"),
            "--device",
            "cpu",
            "--workers",
            "0",
        ],
        cwd=ROOT,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    assert (tmp_path / "ckpt" / "mmgr_img_1.tar").is_file()  # a prepared folder: the neutral prefix


def test_image_only_preparation(city, tmp_path):
    summary = main(["--mosaic", str(city / "mosaic.tif"), "--tile_size_m", "320", "--out", str(tmp_path / "o")])
    assert summary["image_only"] and summary["tiles"] == 8 and summary["tiles_without_poi"] == 8
    assert torch.load(tmp_path / "o/sub_shanghai_emb/r0000_c0000.tensor").shape == (0, 64)
    assert not (tmp_path / "o/train.txt").exists() and (tmp_path / "o/tile_index.gpkg").is_file()


def test_bad_input_writes_nothing(city, tmp_path):
    out = tmp_path / "out"
    main(prepare_args(city, out))
    before = sorted(os.listdir(out / "sub_shanghai_img"))
    far = gpd.GeoDataFrame({"POP": [1.0]}, geometry=[shapely.box(0, 0, 1, 1)], crs="EPSG:4326")
    far.to_file(tmp_path / "far.gpkg")
    with pytest.raises(
        UserError,
        match=r"far\.gpkg does not overlap the tiles: its extent is .* the tiles' is "
        r"\(400000, 3459360, 401280, 3460000\) \(both in EPSG:32651\)",
    ):
        main(prepare_args(city, out, "--overwrite", "--target", f"gdp={tmp_path / 'far.gpkg'}:POP"))
    # the earlier preparation is untouched
    assert sorted(os.listdir(out / "sub_shanghai_img")) == before and (out / "prepare_summary.json").is_file()
    # from the command line: exit 2, one line, no traceback (a lon/lat mosaic with --tile_size_m)
    write_raster(tmp_path / "ll.tif", np.zeros((3, 8, 8), np.uint8), "EPSG:4326", (121.4, 31.2), 0.001)
    r = run_script(
        [
            os.path.join(ROOT, "prepare_pois.py"),
            "--mosaic",
            str(tmp_path / "ll.tif"),
            "--tile_size_m",
            "100",
            "--out",
            str(tmp_path / "new"),
        ],
        cwd=tmp_path,
    )
    assert r.returncode == 2 and "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert "EPSG:32651" in r.stderr and not (tmp_path / "new").exists()


def test_unmarked_landsat_fill_warns_and_nodata_skips_it(tmp_path, capsys):
    """A real Landsat-8 crop whose zero fill has no nodata tag: the first run says so and names --nodata;
    with --nodata 0 the fill tiles are skipped and the stretch starts at the data."""
    args = ["--mosaic", str(LANDSAT_CROP), "--tile_size_m", "480", "--bands", "3,2,1", "--out", str(tmp_path / "o")]
    summary = main(args)
    text = capsys.readouterr().out
    assert "tiles: 8 rows x 8 columns of 480-unit cells (16 px)" in text and "bands 3,2,1 of 3 as R,G,B" in text
    assert "of the sampled pixels of" in text and "give --nodata 0" in text
    m = summary["mosaic"]
    assert m["suspected_fill"]["value"] == 0.0 and m["stretch"][0][0] == 0.0 and m["tiles_flat"] >= 16
    assert len(summary["warnings"]) == 2 and summary["tiles"] == 64
    summary = main([*args, "--nodata", "0", "--overwrite"])
    m = summary["mosaic"]
    assert m["suspected_fill"] is None and m["nodata"] == 0.0 and m["nodata_from"] == "--nodata"
    assert min(lo for lo, _ in m["stretch"]) > 5000 and m["tiles_skipped_nodata"] >= 16 and m["tiles_flat"] == 0
    assert summary["warnings"] == [] and summary["tiles"] == 64 - m["tiles_skipped_nodata"]


def test_nearly_no_poi_is_said(city, tmp_path, capsys):
    two = gpd.GeoDataFrame(
        {"category": ["a", "b"]}, geometry=shapely.points([[X0 + 5, Y1 - 5], [X0 + 6, Y1 - 6]]), crs="EPSG:32651"
    )
    two.to_file(tmp_path / "two.gpkg")
    summary = main(
        ["--mosaic", str(city / "mosaic.tif"), "--tile_size_m", "160", "--pois", str(tmp_path / "two.gpkg")]
        + ["--out", str(tmp_path / "o")]
    )
    assert "warning: 31 of 32 tiles (97%) have no POI (2 POIs fall in the other 1)" in capsys.readouterr().out
    assert summary["warnings"][0].startswith("31 of 32 tiles")


def test_helsinki_osm_areas_and_landuse_classes_to_res_func(tmp_path, capsys):
    """Central Helsinki: OSM nodes and areas as POIs, OSM land-use polygons (a text class column) as a target
    of class shares, on a mosaic over the same ground; res_func.py trains on the prepared folder as it is."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # broken rings at the extract's edge
        lu = pyogrio.read_dataframe(HELSINKI_PBF, layer="multipolygons", columns=["landuse"], on_invalid="ignore")
    lu = lu[lu["landuse"].notna()].to_crs("EPSG:32635")
    lu.to_file(tmp_path / "landuse.gpkg")
    x0, y0, x1, y1 = lu.total_bounds
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, size=(3, int((y1 - y0) // 5), int((x1 - x0) // 5)), dtype=np.uint8)
    write_raster(tmp_path / "mosaic.tif", img, "EPSG:32635", (x0, y1), 5.0)
    out = tmp_path / "helsinki"
    summary = main(
        ["--mosaic", str(tmp_path / "mosaic.tif"), "--tile_size_m", "100", "--pois", str(HELSINKI_PBF)]
        + ["--target", f"lu={tmp_path / 'landuse.gpkg'}:landuse", "--min_coverage", "0.5", "--out", str(out)]
    )
    text = capsys.readouterr().out
    assert "1881 tagged nodes, 129 tagged areas at a point inside each" in text
    assert summary["pois_osm_nodes"] == 1881 and summary["pois_osm_areas"] == 129
    assert summary["osm_areas_without_geometry"] == 1
    t = summary["targets"]["lu"]
    assert t["kind"] == "classes" and "grass" in t["classes"] and t["tiles_with_value"] > 40
    types = (out / "lu_types.txt").read_text().split("\n")[:-1]
    assert types == t["classes"]
    first = (out / "train.txt").read_text().split()[0]
    shares = np.array((out / "lu" / first.replace(".png", ".txt")).read_text().split(), float)
    assert shares.shape == (len(types),) and shares.sum() == pytest.approx(1.0)
    index = read_tile_index(out)
    assert index.columns["lu"][index.locate([first])[0]] == types[int(shares.argmax())]  # dominant class
    result = res_func.main(
        ["--data_path", str(out), "--target_dir", "lu", "--ckpt", "random", "--resnet", "resnet18"]
        + ["--img_size", "16", "--batch_size", "8", "--total_epoch", "1", "--eval_from", "0", "--workers", "0"]
        + ["--device", "cpu", "--train_record", str(tmp_path / "rec.txt"), "--plot", "none"]
    )
    assert set(result["results"][0].history[-1]) >= {"L1", "KL"}
