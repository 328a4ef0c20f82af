"""res_pop.py / res_func.py --test_data_path: train on one city's lists, map (and score) another."""

import json
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import rasterio
import torch
from PIL import Image

import res_func
import res_pop
from engine.downstream import _check_tile_sides
from models.image_encoder import ImageEncoder
from prepare.tile_index import read_tile_index, write_tile_index
from tests.conftest import make_layout
from tests.engine.test_downstream import FAST, add_func_and_gdp, add_tile_index
from utils.errors import UserError


@pytest.fixture
def pair(tmp_path, monkeypatch):
    """City A (12 labelled tiles, lists) and city B (12 other tiles with a projected tile index and targets)."""
    a = add_func_and_gdp(make_layout(tmp_path / "city_a"))
    b = add_func_and_gdp(make_layout(tmp_path / "city_b", seed=1))
    add_tile_index(b)
    torch.manual_seed(0)
    ckpt = tmp_path / "wuhan_img_1.tar"
    torch.save(ImageEncoder("resnet18", 16).state_dict(), ckpt)
    monkeypatch.chdir(tmp_path)
    return a, b, ckpt


def _records(name: str) -> list[dict]:
    return [json.loads(line) for line in (Path("train-records") / name).read_text().splitlines()]


@pytest.mark.parametrize("script, target", [(res_pop, "pop1km"), (res_func, "func")])
def test_a_labelled_test_root_is_scored_recorded_and_mapped(pair, capsys, script, target):
    a, b, ckpt = pair
    (b / target / "t011.txt").unlink()  # one tile of B without a label: on the map, not in the metrics
    out = script.main(
        ["--data_path", str(a), "--ckpt", str(ckpt), *FAST, "--train_record", "r.txt"]
        + ["--seeds", "0", "1", "--test_data_path", str(b)]
    )
    text = capsys.readouterr().out
    assert text.count(f"test root {b}: ") >= 2 and "11 labelled of 12 tiles" in text
    assert f"test root {b}: mean ± std over 2 seeds" in text
    assert f"test root {b}: mean predictor (the training mean of {a} for every tile): " in text
    assert out["test"]["labelled"] == 11 and out["test"]["metrics"] is not None
    assert set(out["test"]["mean_predictor"]) == set(out["test"]["metrics"])
    assert "labelled domain of city_a's training tiles: " in text and "% of scored test-root tiles" in text
    rows = _records("r.txt")
    tests = [r for r in rows if r.get("evaluated_on") == f"test root {b}"]
    assert len(tests) == 2 and all(r["tiles"] == 11 for r in tests)
    assert any("evaluated_on" not in r for r in rows)  # A's validation lines are still there, unlabelled as test
    frame = gpd.read_file(Path("train-records") / "r_test_city_b_map.gpkg")
    assert frame.crs.to_epsg() == 32650 and len(frame) == 12
    assert frame["in_domain"].dtype == bool
    assert list(frame["split"]) == ["test"] * 11 + [""]  # the scored tiles
    std_cols = ["pred_std"] if target == "pop1km" else [c for c in frame.columns if c.startswith("pred_std_")]
    assert std_cols and (frame[std_cols].to_numpy() >= 0).all()
    assert (Path("train-records") / "r_test_city_b_map.png").read_bytes()[:4] == b"\x89PNG"
    assert (Path("train-records") / "r_test_city_b_tiles.csv").is_file()
    if target == "pop1km":
        truth = [float((b / "pop1km" / f"t{i:03d}.txt").read_text()) for i in range(11)]
        assert np.allclose(frame["truth"][:11], truth, rtol=1e-6) and np.isnan(frame["truth"][11])
        with rasterio.open(Path("train-records") / "r_test_city_b_map.tif") as tif:
            assert (tif.width, tif.height, tif.count) == (4, 3, 2) and tif.descriptions[1] == "pred_std"
            assert np.allclose(tif.read(1).reshape(-1), frame["prediction"], rtol=1e-6)


def test_an_unlabelled_test_root_gives_maps_only_and_says_so(pair, capsys):
    a, b, ckpt = pair
    for f in (b / "pop1km").iterdir():
        f.unlink()
    out = res_pop.main(
        ["--data_path", str(a), "--ckpt", str(ckpt), *FAST, "--train_record", "r.txt", "--test_data_path", str(b)]
    )
    text = capsys.readouterr().out
    assert f"test root {b}: no target files in {b / 'pop1km'}, so maps only, no metrics" in text
    assert out["test"] == {"root": str(b), "labelled": 0, "metrics": None, "mean_predictor": None}
    assert "mean predictor (the training mean" not in text
    assert not any("evaluated_on" in r for r in _records("r.txt"))
    frame = gpd.read_file(Path("train-records") / "r_test_city_b_map.gpkg")
    assert len(frame) == 12 and frame["prediction"].notna().all() and frame["truth"].isna().all()


def _refused(a: Path, b: Path, ckpt: Path, match: str) -> None:
    with pytest.raises(UserError, match=match):
        res_pop.main(["--data_path", str(a), "--ckpt", str(ckpt), *FAST, "--test_data_path", str(b)])
    assert not Path("train-records").exists()  # nothing written


def test_test_roots_refused_before_anything_is_written(pair, tmp_path):
    a, b, ckpt = pair
    _refused(a, a, ckpt, "is --data_path .* itself")
    _refused(a, tmp_path / "city_a" / ".." / "city_a", ckpt, "is --data_path .* itself")
    _refused(a, a.parent / "nowhere", ckpt, "does not exist")
    (b / "tile_index.gpkg").unlink()
    (b / "tile_index.csv").unlink(missing_ok=True)
    _refused(a, b, ckpt, "has no tile index .*prepare_pois.py")
    add_tile_index(b)
    first = b / "img" / "t000.png"
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(first)
    _refused(a, b, ckpt, r"tiles of 16x16 px but --data_path .* 32x32 px; .*--tile_px")
    Image.fromarray(np.zeros((32, 32, 4), np.uint8)).save(first)
    _refused(a, b, ckpt, r"4 band\(s\) but --data_path .* has 3; .*--bands")


def test_a_test_root_of_another_ground_size_is_refused(pair):
    """Targets per tile scale with the tile's area: 1 km tiles of A and 2 km tiles of B (same pixels) cannot be
    compared; the check needs a tile index in both, and is skipped where A has none."""
    a, b, ckpt = pair
    add_tile_index(a)
    index = read_tile_index(b)
    index.bounds = index.bounds * 2.0
    write_tile_index(b, index)
    _refused(a, b, ckpt, r"tiles of 2000 m but --data_path .* has 1000 m; .*--tile_size_m")
    (a / "tile_index.gpkg").unlink()  # A's positions only (tile_index.csv): units unknown, so not compared
    _check_tile_sides(b, a, read_tile_index(b))
    (a / "tile_index.csv").unlink()  # no tile index in A: nothing to compare
    _check_tile_sides(b, a, read_tile_index(b))
