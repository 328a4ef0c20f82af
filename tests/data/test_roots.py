"""data/roots.py: several roots as one training set; the refusals (a root twice, tile size, bands, POI width,
category tables) in one sentence naming the roots and the fix; the union's items; the scan cache of several roots."""

from __future__ import annotations

import json
import os

import pytest
import torch
from PIL import Image

from data.datasets import build_union
from data.layout import CATEGORY_TABLE, PretrainLayout, is_prepared_folder
from data.pack import pack
from data.roots import (
    MultiRootDataset,
    check_roots,
    check_test_root,
    check_vocabulary,
    data_roots,
    describe_counts,
    require_tile_index,
    root_labels,
    tile_index_file,
)
from data.scan import merge_reports, scan_pretrain, scan_roots
from data.scan_cache import CACHE_FORMAT, CACHE_FORMAT_ROOTS
from tests.conftest import make_layout
from utils.errors import UserError


def _table(root, rows: dict[str, list[float]]):
    width = len(next(iter(rows.values())))
    lines = ["category," + ",".join(f"v{k}" for k in range(width))]
    lines += [c + "," + ",".join(repr(float(x)) for x in v) for c, v in rows.items()]
    (root / CATEGORY_TABLE).write_text("\n".join(lines) + "\n")


@pytest.fixture
def two(tmp_path):
    a = make_layout(tmp_path / "a", n_tiles=5, size=16, seed=1)
    b = make_layout(tmp_path / "b", n_tiles=3, size=16, seed=2)
    return PretrainLayout(a), PretrainLayout(b)


def test_data_roots_takes_one_path_or_several(tmp_path):
    assert data_roots("x") == [data_roots(["x"])[0]]
    assert [str(p) for p in data_roots(["x", "y"])] == ["x", "y"]
    assert is_prepared_folder([]) is False


def test_a_root_given_twice_is_refused_under_any_spelling(two, tmp_path):
    a, b = two
    with pytest.raises(UserError, match=r"--data_path .*a, .*b, .*a: .*a is given twice; give each root once"):
        check_roots([a, b, a])
    os.symlink(a.root, tmp_path / "link")
    with pytest.raises(UserError, match=r"a and .*link are the same folder; give each root once"):
        check_roots([a, PretrainLayout(tmp_path / "link")])
    with pytest.raises(UserError, match="are the same folder"):
        check_roots([a, PretrainLayout(tmp_path / "b" / ".." / "a")])


def test_roots_of_other_tile_size_band_count_or_poi_width_are_refused(tmp_path):
    a = PretrainLayout(make_layout(tmp_path / "a", n_tiles=3, size=16))
    big = PretrainLayout(make_layout(tmp_path / "big", n_tiles=3, size=24))
    with pytest.raises(UserError, match=r"roots differ in tile size \(.*a 16x16 px, .*big 24x24 px\); prepare them"):
        check_roots([a, big])
    grey = PretrainLayout(make_layout(tmp_path / "grey", n_tiles=3, size=16))
    for p in grey.img.iterdir():
        Image.open(p).convert("L").save(p)
    with pytest.raises(UserError, match=r"band count \(.*a 3 band\(s\), .*grey 1 band\(s\)\); .*--bands"):
        check_roots([a, grey])
    wide = PretrainLayout(make_layout(tmp_path / "wide", n_tiles=3, size=16, poi_dim=6))
    with pytest.raises(UserError, match=r"POI embedding width \(.*a 8-d, .*wide 6-d\); .*--embeddings"):
        check_roots([a, wide])
    check_roots([a])  # one root: nothing new is checked
    facts = check_roots([a, PretrainLayout(make_layout(tmp_path / "c", n_tiles=2, size=16))])
    assert [(f.tile_size, f.bands, f.poi_dim) for f in facts] == [((16, 16), 3, 8)] * 2


def test_category_tables_that_disagree_are_refused_naming_embeddings(two):
    a, b = two
    _table(a.root, {"cafe": [1, 0], "bank": [0, 1]})
    _table(b.root, {"cafe": [1, 0], "school": [0.5, 0.5]})
    check_roots([a, b])  # the shared category has one vector: one vocabulary
    _table(b.root, {"cafe": [0, 1]})
    with pytest.raises(UserError, match=r"'cafe' different vectors; the roots must share one vocabulary: .*--seed"):
        check_roots([a, b])  # b is not prepare_pois.py's folder: the fix depends on what wrote it
    (b.root / "prepare_summary.json").write_text("{}")
    with pytest.raises(
        UserError,
        match=r"tables .*a/category_embeddings.csv and .*b/category_embeddings.csv give category 'cafe' different "
        r"vectors; prepare .*b again with prepare_pois.py --embeddings .*a/category_embeddings.csv",
    ):
        check_roots([a, b])
    _table(b.root, {"cafe": [1, 0, 0]})
    with pytest.raises(
        UserError, match=r"\(2-d\) and .*b/category_embeddings.csv \(3-d\) differ in width; .*--embeddings"
    ):
        check_vocabulary([a.root / CATEGORY_TABLE, b.root / CATEGORY_TABLE])
    (b.root / CATEGORY_TABLE).write_text("category,v0\ncafe,not-a-number\n")
    with pytest.raises(UserError, match="is not a category table"):
        check_vocabulary([a.root / CATEGORY_TABLE, b.root / CATEGORY_TABLE])


def test_the_union_holds_every_root_s_items_in_root_order(two):
    a, b = two
    reports = scan_roots([a, b], workers=0)
    ds = build_union([a, b], "gpu", 16, [r.good for r in reports], reports[0].poi_dim)
    assert isinstance(ds, MultiRootDataset) and ds.counts == [5, 3] and len(ds) == 8 and ds.poi_dim == 8
    alone = build_union([b], "gpu", 16, [reports[1].good], 8)
    assert not isinstance(alone, MultiRootDataset)  # one root: the data set it always was
    img, g = ds[6]
    img_b, g_b = alone[1]
    assert torch.equal(img, img_b) and torch.equal(g.x, g_b.x) and torch.equal(g.edge_index, g_b.edge_index)
    assert describe_counts(ds.roots, ds.counts).endswith(f"5 tiles from {a.root}, 3 from {b.root}, 8 in all")
    assert ds.without_pois is None  # not counted: mmgr.py's POI checks stay quiet
    counted = build_union([a, b], "gpu", 16, [r.good for r in reports], 8, [r.zero_poi for r in reports])
    assert counted.without_pois == sum(r.zero_poi for r in reports)


def test_a_pack_joins_a_folder_and_carries_its_category_table(two, tmp_path):
    a, b = two
    _table(b.root, {"cafe": [1.0, 0.0]})
    pack(b, tmp_path / "bp", progress=False)
    assert (tmp_path / "bp" / CATEGORY_TABLE).read_text() == (b.root / CATEGORY_TABLE).read_text()
    facts = check_roots([a, PretrainLayout(tmp_path / "bp")])
    assert facts[1].tile_size == (16, 16) and facts[1].poi_dim == 8 and facts[1].table is not None
    report = scan_pretrain(a, 0)
    ds = build_union([a, PretrainLayout(tmp_path / "bp")], "gpu", 16, [report.good, None], 8, [report.zero_poi, None])
    assert ds.counts == [5, 3]
    assert ds.without_pois == report.zero_poi + ds.datasets[1].without_pois  # the pack counts its own


def test_scan_cache_of_several_roots_keeps_a_section_per_root(two, tmp_path):
    a, b = two
    for root in (a.root, b.root):  # files older than the cache's mtime tick (data/scan_cache.py)
        for p in root.rglob("*.*"):
            os.utime(p, (p.stat().st_mtime - 3600,) * 2)
    cache = tmp_path / "m" / "scan_cache.json"
    first = scan_roots([a, b], workers=0, cache=cache)
    obj = json.loads(cache.read_text())
    assert obj["format"] == CACHE_FORMAT_ROOTS and [len(s["names"]) for s in obj["sections"]] == [5, 3]
    again = scan_roots([a, b], workers=0, cache=cache)
    assert [r.cached for r in again] == [5, 3] and [r.checked for r in again] == [0, 0]
    assert [r.good for r in again] == [r.good for r in first]
    # One root of them reads its own section (and, with nothing changed, leaves the file as it was).
    alone = scan_pretrain(b, workers=0, cache=cache)
    assert alone.cached == 3 and json.loads(cache.read_text())["format"] == CACHE_FORMAT_ROOTS
    scan_pretrain(b, workers=0, cache=cache, rescan=True)  # rewritten: the one-root format of before
    assert json.loads(cache.read_text())["format"] == CACHE_FORMAT
    merged = merge_reports(first)
    assert len(merged.good) == 8 and merged.zero_poi == 2 and merged.poi_dim == 8


def test_labels_and_tile_index_of_a_test_root(tmp_path):
    (tmp_path / "x" / "half").mkdir(parents=True)
    (tmp_path / "y" / "half").mkdir(parents=True)
    (tmp_path / "city_b").mkdir()
    assert root_labels([tmp_path / "x" / "half", tmp_path / "y" / "half"]) == ["x/half", "y/half"]
    assert root_labels([tmp_path / "x", tmp_path / "city_b"]) == ["x", "city_b"]
    with pytest.raises(UserError, match=r"--test_data_path .*city_b has no tile index .*prepare_pois.py"):
        require_tile_index(tmp_path / "city_b")
    (tmp_path / "city_b" / "tile_index.csv").write_text("name,minx,miny,maxx,maxy\n")
    assert tile_index_file(tmp_path / "city_b").name == "tile_index.csv"
    assert require_tile_index(tmp_path / "city_b", "--x") == tmp_path / "city_b" / "tile_index.csv"


def test_a_test_root_must_exist_differ_from_the_training_root_and_have_a_tile_index(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    with pytest.raises(UserError, match=r"--test_data_path .*b does not exist"):
        check_test_root(b, a)
    with pytest.raises(UserError, match=r"--test_data_path .*a is --data_path .*a itself.*another city"):
        check_test_root(a, a)
    with pytest.raises(UserError, match=r"--test_data_path .*a/\.\./a is --data_path .*a itself"):
        check_test_root(a / ".." / "a", a)
    b.mkdir()
    with pytest.raises(UserError, match=r"--test_data_path .*b has no tile index"):
        check_test_root(b, a)
    (b / "tile_index.gpkg").write_bytes(b"")
    assert check_test_root(b, a) == b / "tile_index.gpkg"
