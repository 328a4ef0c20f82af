"""One POI vocabulary for several cities (prepare_pois.py --embeddings A/category_embeddings.csv): a category
missing from the shared table takes its parent's vector ("parent/child", an OSM key=value's key, the data's
parent column) or is dropped with a count; the tables of two cities then pass mmgr.py's check, and two
independently learned ones are refused naming --embeddings (data/roots.py)."""

from __future__ import annotations

import numpy as np
import pytest

from data.layout import CATEGORY_TABLE
from data.roots import check_vocabulary, read_category_table
from prepare.category_embed import parent_candidates
from prepare_pois import main
from tests.prepare.test_prepare_pois import POIS, load, make_tiles, write_csv
from utils.errors import UserError

TILE = [["T.png", -1, -1, 3, 3]]


def test_parent_candidates_most_specific_first():
    assert parent_candidates("food/asian/thai") == ["food/asian", "food"]
    assert parent_candidates("amenity=cafe", "amenity") == ["amenity"]
    assert parent_candidates("bakery", "shop") == ["shop"]
    assert parent_candidates("cafe", "cafe") == [] and parent_candidates("cafe") == []


def _city(tmp, cats: list[str], parents: list[str]):
    make_tiles(tmp / "tiles", ["T"])
    write_csv(tmp / "index.csv", ["name", "minx", "miny", "maxx", "maxy"], TILE)
    rows = [[x, y, c, p] for (x, y, _), c, p in zip(POIS, cats, parents, strict=True)]
    write_csv(tmp / "pois.csv", ["x", "y", "category", "parent"], rows)


def _prepare(tmp, *extra):
    inputs = ["--pois", tmp / "pois.csv", "--tiles", tmp / "tiles", "--tile_index", tmp / "index.csv"]
    return main([str(a) for a in (*inputs, "--parent_col", "parent", "--out", tmp / "out", *extra)])


def test_missing_categories_take_their_parent_s_vector_or_are_dropped(tmp_path):
    eye = np.eye(4)
    shared = {"c0": eye[0], "food": eye[1], "shop": eye[2], "grp": eye[3]}
    write_csv(tmp_path / "shared.csv", ["category", "v0", "v1", "v2", "v3"], [[c, *v] for c, v in shared.items()])
    cats = ["c0", "food/noodles", "shop=bakery", "late", "c0", "zz", "c0", "c0", "c0"]
    parents = ["c0", "x", "x", "grp", "c0", "nowhere", "c0", "c0", "c0"]
    _city(tmp_path, cats, parents)
    summary = _prepare(tmp_path, "--embeddings", tmp_path / "shared.csv")
    assert summary["categories_from_parent"] == {"food/noodles": "food", "late": "grp", "shop=bakery": "shop"}
    assert (
        summary["categories_dropped_not_in_table"] == {"zz": 1} and summary["pois_dropped_category_not_in_table"] == 1
    )
    assert set(summary["categories_unseen_in_table"]) == {"food/noodles", "shop=bakery", "late", "zz"}
    # POIs 1, 2, 3 carry their parents' vectors; POI 5 (zz) is gone; the others are c0. POI 2 lies on the
    # extent's edge, outside the tile.
    emb = load(tmp_path / "out", "emb", "T")
    inside = [k for k, (x, y, _) in enumerate(POIS) if -1 <= x < 3 and -1 <= y < 3 and cats[k] != "zz"]
    assert emb.argmax(dim=1).tolist() == [
        int(np.argmax(shared.get(cats[k]) if cats[k] in shared else shared[summary["categories_from_parent"][cats[k]]]))
        for k in inside
    ]
    assert emb.shape == (len(inside), 4)
    # The city's saved table: the shared rows, plus its categories given their parent's vector.
    saved_cats, saved = read_category_table(tmp_path / "out" / CATEGORY_TABLE)
    assert saved_cats == [*shared, "food/noodles", "late", "shop=bakery"]
    assert np.array_equal(saved[saved_cats.index("late")], shared["grp"])
    check_vocabulary([tmp_path / "shared.csv", tmp_path / "out" / CATEGORY_TABLE])  # one vocabulary


def test_two_cities_share_a_learned_table_and_two_learned_ones_are_refused(tmp_path):
    rng = np.random.default_rng(0)
    a, b = tmp_path / "a", tmp_path / "b"
    make_tiles(a / "tiles", ["T"])
    write_csv(a / "index.csv", ["name", "minx", "miny", "maxx", "maxy"], [["T", 0, 0, 1, 1]])
    codes = rng.integers(0, 4, size=200)
    write_csv(
        a / "pois.csv",
        ["x", "y", "category", "parent"],
        [[x, y, f"c{c}", f"p{c // 2}"] for (x, y), c in zip(rng.random((200, 2)), codes, strict=True)],
    )
    main(
        [
            str(v)
            for v in (
                "--pois",
                a / "pois.csv",
                "--tiles",
                a / "tiles",
                "--tile_index",
                a / "index.csv",
                "--parent_col",
                "parent",
                "--embed_dim",
                "8",
                "--out",
                a / "out",
            )
        ]
    )
    cats_a, vecs_a = read_category_table(a / "out" / CATEGORY_TABLE)
    assert cats_a == ["c0", "c1", "c2", "c3", "p0", "p1"]  # the parents' own vectors follow the categories
    assert np.allclose(np.linalg.norm(vecs_a, axis=1), 1, atol=1e-5)
    # City B: c0, c1 and a category A never saw, under p1.
    make_tiles(b / "tiles", ["T"])
    write_csv(b / "index.csv", ["name", "minx", "miny", "maxx", "maxy"], [["T", 0, 0, 1, 1]])
    cb = rng.integers(0, 3, size=100)
    names = {0: ("c0", "p0"), 1: ("c1", "p0"), 2: ("c9", "p1")}
    write_csv(
        b / "pois.csv",
        ["x", "y", "category", "parent"],
        [[x, y, *names[int(c)]] for (x, y), c in zip(rng.random((100, 2)), cb, strict=True)],
    )
    args = ("--pois", b / "pois.csv", "--tiles", b / "tiles", "--tile_index", b / "index.csv", "--parent_col", "parent")
    learned = main([str(v) for v in (*args, "--embed_dim", "8", "--out", b / "learned")])
    assert learned["embedding_source"] == "learned"
    with pytest.raises(UserError, match=r"give category 'c0' different vectors; .*--embeddings .*a/out/category_emb"):
        check_vocabulary([a / "out" / CATEGORY_TABLE, b / "learned" / CATEGORY_TABLE])
    shared = main([str(v) for v in (*args, "--embeddings", a / "out" / CATEGORY_TABLE, "--out", b / "shared")])
    assert shared["categories_from_parent"] == {"c9": "p1"} and shared["pois_dropped_category_not_in_table"] == 0
    check_vocabulary([a / "out" / CATEGORY_TABLE, b / "shared" / CATEGORY_TABLE])
    emb = load(b / "shared", "emb", "T")
    assert np.allclose(emb[cb == 2].numpy(), vecs_a[cats_a.index("p1")])
