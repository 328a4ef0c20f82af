"""The synthetic city: layout of both SPEC layouts, determinism, consistency and plausibility."""

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from data import synthetic
from data.graph import delaunay_edges
from data.synthetic import CATEGORIES, FUNC_TYPES, category_embeddings, ensure_city, generate_city

N, S, SEED = 24, 48, 3
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def city(tmp_path_factory):
    out = tmp_path_factory.mktemp("city") / "c"
    summary = generate_city(out, n_tiles=N, tile_size=S, seed=SEED, embed_dim=16)
    return out, summary


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def load(path):
    return torch.load(path, weights_only=True)


def stems(out):
    return [r["name"][:-4] for r in read_csv(out / "tile_index.csv")]


def test_layout_and_shapes(city):
    out, summary = city
    names = stems(out)
    assert len(names) == N == summary["n_tiles"] and len(set(names)) == N
    for stem in names:
        img = Image.open(out / "sub_shanghai_img" / f"{stem}.png")
        assert img.mode == "RGB" and img.size == (S, S)
        assert (out / "img" / f"{stem}.png").read_bytes() == (out / "sub_shanghai_img" / f"{stem}.png").read_bytes()
        emb = load(out / "sub_shanghai_emb" / f"{stem}.tensor")
        ei = load(out / "sub_shanghai_edge" / f"{stem}.tensor")
        w = load(out / "sub_shanghai_weight" / f"{stem}.tensor")
        assert emb.dtype == torch.float32 and emb.ndim == 2 and emb.shape[1] == 16
        assert ei.dtype == torch.int64 and ei.shape[0] == 2
        assert w.dtype == torch.float32 and w.shape == (ei.shape[1],)
        if ei.numel():
            assert 0 <= int(ei.min()) and int(ei.max()) < emb.shape[0]
            assert bool(((w > 0) & (w <= 1)).all())
        if emb.shape[0] >= 2:
            assert ei.shape[1] > 0  # a graph with at least two POIs is connected somehow
        float((out / "pop1km" / f"{stem}.txt").read_text())
        float((out / "gdp1km" / f"{stem}.txt").read_text())
    assert (out / "func_types.txt").read_text().split() == list(FUNC_TYPES)
    assert (out / ".complete").exists() and (out / "README.txt").read_text().lower().count("synthetic") >= 1
    # No temporary folder is left beside the city.
    assert [p.name for p in out.parent.iterdir()] == ["c"]


def test_grid_bounds_and_names(city):
    out, summary = city
    rows, cols = summary["rows"], summary["cols"]
    assert rows * cols >= N > (rows - 1) * cols and abs(rows - cols) <= 1
    for k, r in enumerate(read_csv(out / "tile_index.csv")):
        row, col = divmod(k, cols)
        assert r["name"] == f"tile_{row:03d}_{col:03d}.png"
        assert [int(r[c]) for c in ("minx", "miny", "maxx", "maxy")] == [
            col * 1000, (rows - 1 - row) * 1000, (col + 1) * 1000, (rows - row) * 1000
        ]


def test_deterministic_bytes(tmp_path):
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    generate_city(a, n_tiles=12, tile_size=32, seed=7, embed_dim=8)
    generate_city(b, n_tiles=12, tile_size=32, seed=7, embed_dim=8)
    generate_city(c, n_tiles=12, tile_size=32, seed=8, embed_dim=8)

    def tree(root):
        return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}

    ta, tb, tc = tree(a), tree(b), tree(c)
    assert len(ta) > 12 * 8 and ta.keys() == tb.keys()
    assert [k for k in ta if ta[k] != tb[k]] == []
    assert ta["pois.csv"] != tc["pois.csv"]  # the seed matters


def test_zero_poi_tiles_and_counts(city):
    out, summary = city
    tiles = read_csv(out / "tiles.csv")
    n_poi = {r["name"][:-4]: int(r["n_poi"]) for r in tiles}
    assert summary["n_zero_poi_tiles"] == sum(v == 0 for v in n_poi.values()) > 0
    assert sum(v > 0 for v in n_poi.values()) > N // 3
    for stem, n in n_poi.items():
        emb = load(out / "sub_shanghai_emb" / f"{stem}.tensor")
        assert emb.shape[0] == n
        if n == 0:
            assert load(out / "sub_shanghai_edge" / f"{stem}.tensor").shape == (2, 0)
    # Water tiles have no POIs.
    assert all(int(r["n_poi"]) == 0 for r in tiles if r["land_use"] == "water")
    assert summary["n_pois"] == sum(n_poi.values())


def test_pois_csv_matches_tensors(city):
    out, _ = city
    index = {r["name"][:-4]: r for r in read_csv(out / "tile_index.csv")}
    pois = read_csv(out / "pois.csv")
    assert [int(p["poi_id"]) for p in pois] == list(range(len(pois)))
    cats = read_csv(out / "categories.csv")
    parent = {c["category"]: c["parent"] for c in cats}
    emb_rows = {r["category"]: np.array([float(r[f"v{j}"]) for j in range(16)], np.float32)
                for r in read_csv(out / "category_embeddings.csv")}
    by_tile = {s: [] for s in index}
    for p in pois:
        x, y = float(p["x"]), float(p["y"])
        hits = [s for s, b in index.items()
                if float(b["minx"]) <= x < float(b["maxx"]) and float(b["miny"]) <= y < float(b["maxy"])]
        assert len(hits) == 1  # strictly inside exactly one tile
        assert parent[p["category"]] == p["parent"]
        by_tile[hits[0]].append(p)
    for stem, ps in by_tile.items():
        emb = load(out / "sub_shanghai_emb" / f"{stem}.tensor").numpy()
        assert emb.shape[0] == len(ps)
        if ps:
            # Same order: row i of the tensor is the embedding of the tile's i-th POI in pois.csv.
            expected = np.stack([emb_rows[p["category"]] for p in ps])
            np.testing.assert_allclose(emb, expected, rtol=1e-6, atol=1e-6)
        # Re-deriving the graph from pois.csv gives the stored graph exactly.
        xy = np.array([[float(p["x"]), float(p["y"])] for p in ps]).reshape(-1, 2)
        ei, w = delaunay_edges(xy)
        assert torch.equal(load(out / "sub_shanghai_edge" / f"{stem}.tensor"), torch.from_numpy(ei))
        assert torch.equal(load(out / "sub_shanghai_weight" / f"{stem}.tensor"), torch.from_numpy(w))


def test_func_sums_to_one(city):
    out, _ = city
    for stem in stems(out):
        v = np.array((out / "func" / f"{stem}.txt").read_text().split(), dtype=float)
        assert v.shape == (len(FUNC_TYPES),) and (v >= 0).all()
        assert abs(v.sum() - 1.0) < 1e-5


def test_split_partitions_tiles(city):
    out, _ = city
    train = (out / "train-wuhan.txt").read_text().split()
    val = (out / "val-wuhan.txt").read_text().split()
    assert not set(train) & set(val)
    assert sorted(train + val) == sorted(r["name"] for r in read_csv(out / "tile_index.csv"))
    assert len(val) == round(0.2 * N)


def test_embeddings_cluster_by_coarse_class():
    emb = category_embeddings(64, seed=0)
    assert emb.shape == (len(CATEGORIES), 64) and emb.dtype == np.float32
    parents = np.array(synthetic.PARENTS)
    d = np.linalg.norm(emb[:, None] - emb[None], axis=-1)
    same = parents[:, None] == parents[None]
    off_diag = ~np.eye(len(CATEGORIES), dtype=bool)
    # Every category is closer to each same-class category than to any other-class category.
    for i in range(len(CATEGORIES)):
        assert d[i, same[i] & off_diag[i]].max() < d[i, ~same[i]].min()
    assert len(set(parents)) == 6 and 18 <= len(CATEGORIES) <= 24


def test_ground_truth_varies_with_land_use(tmp_path):
    # A somewhat larger city so every land use is present; still under a second.
    out = tmp_path / "big"
    generate_city(out, n_tiles=144, tile_size=16, seed=0, embed_dim=4)
    tiles = read_csv(out / "tiles.csv")
    pop = np.array([float(r["population"]) for r in tiles])
    gdp = np.array([float(r["gdp"]) for r in tiles])
    lu = np.array([r["land_use"] for r in tiles])
    assert pop.std() > 0 and gdp.std() > 0 and (pop >= 0).all() and (gdp >= 0).all()
    assert pop[lu == "residential"].mean() > 5 * max(pop[lu == "water"].mean(), 1.0)
    assert pop[lu == "residential"].mean() > pop[lu == "industrial"].mean()
    assert gdp[lu == "commercial"].mean() > gdp[lu == "residential"].mean()
    # Land use is spatially coherent: neighbours share land use far more often than chance.
    grid = {(int(r["row"]), int(r["col"])): r["land_use"] for r in tiles}
    pairs = [(grid[k], grid[(k[0], k[1] + 1)]) for k in grid if (k[0], k[1] + 1) in grid]
    agree = np.mean([a == b for a, b in pairs])
    freq = np.unique(lu, return_counts=True)[1] / len(lu)
    assert agree > 1.5 * (freq**2).sum()
    # Function distribution follows land use: residential tiles are mostly residential.
    func = {r["name"]: np.array((out / "func" / (r["name"][:-4] + ".txt")).read_text().split(), float) for r in tiles}
    res = np.mean([func[r["name"]][0] for r in tiles if r["land_use"] == "residential"])
    assert res > 0.4


def test_ensure_city_regenerates_only_when_needed(tmp_path, monkeypatch):
    out = tmp_path / "c"
    calls = []
    real = synthetic.generate_city
    monkeypatch.setattr(synthetic, "generate_city", lambda *a, **k: calls.append(a) or real(*a, **k))
    assert ensure_city(out, 6, 16, 1) == out and len(calls) == 1
    ensure_city(out, 6, 16, 1)
    assert len(calls) == 1  # marker matches: reused
    ensure_city(out, 6, 16, 2)
    assert len(calls) == 2 and json.loads((out / ".complete").read_text())["seed"] == 2
    (out / ".complete").unlink()  # as if a run had died before publishing
    ensure_city(out, 6, 16, 2)
    assert len(calls) == 3 and (out / ".complete").exists()


def test_refuses_to_replace_user_data(tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "precious.txt").write_text("x")
    with pytest.raises(FileExistsError, match="not a synthetic city"):
        generate_city(out, n_tiles=4, tile_size=16)
    assert (out / "precious.txt").read_text() == "x"


def test_interrupted_generation_leaves_previous_city(tmp_path, monkeypatch):
    out = tmp_path / "c"
    generate_city(out, n_tiles=4, tile_size=16, seed=0)
    before = (out / "pois.csv").read_bytes()

    def boom(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(synthetic, "delaunay_edges", boom)
    with pytest.raises(KeyboardInterrupt):
        generate_city(out, n_tiles=4, tile_size=16, seed=1)
    assert (out / "pois.csv").read_bytes() == before and (out / ".complete").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c"]


def test_cli(tmp_path):
    out = tmp_path / "cli"
    r = subprocess.run(
        [sys.executable, "-m", "data.synthetic", "--out", str(out), "--n_tiles", "5", "--tile_size", "16",
         "--seed", "2", "--embed_dim", "8"],
        cwd=REPO, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert r.returncode == 0, r.stderr
    summary = json.loads(r.stdout)
    assert summary["n_tiles"] == 5 and summary["n_categories"] == len(CATEGORIES)
    assert len(list((out / "sub_shanghai_img").glob("*.png"))) == 5
