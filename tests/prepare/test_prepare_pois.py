"""prepare_pois.py end to end on hand-made fixtures: tile membership, node order, graphs, embeddings,
the summary, one-sentence errors for bad input, the lock of --out and a refused write."""

import errno
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image, TiffImagePlugin, TiffTags

from prepare.pipeline import PrepareConfig, assign_to_tiles, prepare
from prepare_pois import build_parser, main
from tests.conftest import run_script
from utils.errors import EXIT_BUSY, EXIT_STORAGE, FolderBusy, StorageError
from utils.runlock import LOCK_NAME, FolderLock

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# Tiles (minx, miny, maxx, maxy): A and B abut at x = 1; C sits on top of both; D overlaps A and B;
# E is far away and gets no POI.
TILES = {"A": (0, 0, 1, 1), "B": (1, 0, 2, 1), "C": (0, 1, 2, 2), "D": (0.5, 0, 1.5, 0.5), "E": (10, 10, 11, 11)}
# (x, y, category); expected tiles by hand from minx <= x < maxx, miny <= y < maxy.
POIS = [
    (0.0, 0.0, "c0"),  # 0: A (on A's minx/miny corner)
    (1.0, 0.75, "c1"),  # 1: B only (on A's maxx = B's minx)
    (2.0, 0.5, "c2"),  # 2: nowhere (on B's maxx, the extent's edge)
    (0.5, 1.0, "c3"),  # 3: C (on A's maxy = C's miny)
    (1.5, 1.99, "c4"),  # 4: C
    (-0.1, 0.5, "c5"),  # 5: nowhere
    (0.75, 0.25, "c6"),  # 6: A and D
    (1.25, 0.25, "c7"),  # 7: B and D
    (0.25, 0.75, "c8"),  # 8: A
]
EXPECTED = {"A": [0, 6, 8], "B": [1, 7], "C": [3, 4], "D": [6, 7], "E": []}


def write_csv(path, header, rows):
    with open(path, "w") as f:
        f.write(",".join(header) + "\n")
        f.writelines(",".join(str(v) for v in r) + "\n" for r in rows)


def make_tiles(folder, tiles, ext=".png"):
    os.makedirs(folder, exist_ok=True)
    for name in tiles:
        Image.new("RGB", (8, 8), (10, 20, 30)).save(os.path.join(folder, name + ext))


@pytest.fixture
def city(tmp_path):
    """Fixture city with a one-hot category table, so each emb row says which POI it is."""
    make_tiles(tmp_path / "tiles", TILES)
    write_csv(
        tmp_path / "index.csv", ["name", "minx", "miny", "maxx", "maxy"], [[n + ".png", *b] for n, b in TILES.items()]
    )
    write_csv(tmp_path / "pois.csv", ["poi_id", "x", "y", "category"], [[k, *p] for k, p in enumerate(POIS)])
    write_csv(
        tmp_path / "table.csv",
        ["category"] + [f"v{k}" for k in range(9)],
        [[f"c{c}"] + list(np.eye(9, dtype=int)[c]) for c in range(9)],
    )
    return tmp_path


def cli_args(city, *extra) -> list[str]:
    """prepare_pois.py's arguments for the hand-made city, writing to ``city/out``."""
    inputs = ["--pois", city / "pois.csv", "--tiles", city / "tiles", "--tile_index", city / "index.csv"]
    return [str(a) for a in (*inputs, "--out", city / "out", *extra)]


def run(city, *extra):
    return main(cli_args(city, *extra)), city / "out"


def load(out, kind, stem):
    return torch.load(out / f"sub_shanghai_{kind}" / f"{stem}.tensor")


def test_assign_to_tiles_by_hand():
    xy = np.array([p[:2] for p in POIS], dtype=float)
    bounds = np.array(list(TILES.values()), dtype=float)
    poi, tile = assign_to_tiles(xy, bounds)
    names = list(TILES)
    got = {n: poi[tile == k].tolist() for k, n in enumerate(names)}
    assert got == EXPECTED


def test_assign_matches_brute_force_on_random_overlapping_tiles():
    rng = np.random.default_rng(1)
    lo = rng.uniform(0, 10, size=(300, 2))
    bounds = np.concatenate([lo, lo + rng.uniform(0.1, 3, size=(300, 2))], axis=1)
    xy = np.round(rng.uniform(-1, 13, size=(2000, 2)), 1)  # rounding puts many POIs on edges
    xy[:50] = bounds[:50, :2]  # exactly on tile corners
    poi, tile = assign_to_tiles(xy, bounds)
    inside = (
        (bounds[None, :, 0] <= xy[:, None, 0])
        & (xy[:, None, 0] < bounds[None, :, 2])
        & (bounds[None, :, 1] <= xy[:, None, 1])
        & (xy[:, None, 1] < bounds[None, :, 3])
    )
    t_ref, p_ref = np.nonzero(inside.T)  # sorted by tile, then POI
    assert np.array_equal(tile, t_ref) and np.array_equal(poi, p_ref)


def test_membership_order_and_zero_poi_tile(city):
    summary, out = run(city, "--embeddings", str(city / "table.csv"))
    for name, members in EXPECTED.items():
        emb = load(out, "emb", name)
        assert emb.dtype == torch.float32 and emb.shape == (len(members), 9)
        # one-hot row of category c<k> = POI k: rows follow the file order
        assert emb.argmax(dim=1).tolist() == members
    assert load(out, "edge", "E").shape == (2, 0) and load(out, "weight", "E").shape == (0,)
    assert (out / "sub_shanghai_img" / "E.png").is_file()
    assert summary["tiles"] == 5 and summary["tiles_without_poi"] == 1
    assert summary["pois_outside_every_tile"] == 2 and summary["pois_in_several_tiles"] == 2
    assert json.loads((out / "prepare_summary.json").read_text()) == summary


def test_delaunay_edges_of_known_points(tmp_path):
    # Unit square + centre in one tile, in file order: the 4 sides and 4 spokes.
    make_tiles(tmp_path / "tiles", ["T"])
    write_csv(tmp_path / "index.csv", ["name", "minx", "miny", "maxx", "maxy"], [["T", -1, -1, 2, 2]])
    pts = [(0, 0), (1, 0), (1, 1), (0, 1), (0.5, 0.5)]
    write_csv(tmp_path / "pois.csv", ["x", "y", "category"], [[x, y, "a"] for x, y in pts])
    main(
        [
            "--pois",
            str(tmp_path / "pois.csv"),
            "--tiles",
            str(tmp_path / "tiles"),
            "--tile_index",
            str(tmp_path / "index.csv"),
            "--out",
            str(tmp_path / "out"),
        ]
    )
    ei = torch.load(tmp_path / "out/sub_shanghai_edge/T.tensor")
    w = torch.load(tmp_path / "out/sub_shanghai_weight/T.tensor")
    assert ei.dtype == torch.int64 and w.dtype == torch.float32 and ei.shape == (2, 16)
    assert {tuple(sorted(e)) for e in ei.T.tolist()} == {(0, 1), (1, 2), (2, 3), (0, 3), (0, 4), (1, 4), (2, 4), (3, 4)}
    # sides 1, spokes sqrt(.5); median edge length (1 + .707) / 2
    d = torch.tensor([np.linalg.norm(np.subtract(pts[a], pts[b])) for a, b in ei.T.tolist()])
    s = float(np.median(d.numpy()))
    assert torch.allclose(w, (1 / (1 + d / s)).float())
    # the cut: --max_edge_length 0.8 keeps only the spokes
    main(
        [
            "--pois",
            str(tmp_path / "pois.csv"),
            "--tiles",
            str(tmp_path / "tiles"),
            "--overwrite",
            "--tile_index",
            str(tmp_path / "index.csv"),
            "--out",
            str(tmp_path / "out"),
            "--max_edge_length",
            "0.8",
        ]
    )
    ei = torch.load(tmp_path / "out/sub_shanghai_edge/T.tensor")
    assert {tuple(sorted(e)) for e in ei.T.tolist()} == {(0, 4), (1, 4), (2, 4), (3, 4)}


def test_unseen_categories_without_a_parent_are_dropped_and_reported(city, capsys):
    lines = (city / "table.csv").read_text().splitlines()
    (city / "table.csv").write_text("\n".join(line for line in lines if not line.startswith("c6,")) + "\n")
    summary, out = run(city, "--embeddings", str(city / "table.csv"))
    assert summary["categories_unseen_in_table"] == {"c6": 1} and summary["categories_dropped_not_in_table"] == {
        "c6": 1
    }
    assert summary["pois_dropped_category_not_in_table"] == 1 and summary["pois_used"] == len(POIS) - 1
    assert load(out, "emb", "A").argmax(dim=1).tolist() == [0, 8]  # POI 6 left A (and D)
    assert load(out, "emb", "D").argmax(dim=1).tolist() == [7]
    table = (out / "category_embeddings.csv").read_text().splitlines()
    assert table[0].startswith("category,v0,") and not any(line.startswith("c6,") for line in table)
    text = capsys.readouterr().out
    assert "1 categories are not in" in text and "1 without a parent in the table are dropped with their 1 POIs" in text
    assert "dropped: 1 of a category not in --embeddings" in text


def test_learned_table_roundtrip_and_nan_rows(city, capsys):
    with open(city / "pois.csv", "a") as f:
        f.write("9,nan,0.5,c1\n10,,0.5,c1\n11,0.5,0.5,\n")
    summary, out = run(city, "--embed_dim", "16")
    assert summary["pois_skipped_bad_coordinates"] == 2 and summary["pois_skipped_no_category"] == 1
    # every dropped POI is said, in the stage's line and in the last one
    text = capsys.readouterr().out
    assert "read 9 of 12 POIs from " in text
    assert "(dropped: 1 without a category, 2 with missing or bad coordinates)" in text
    assert "9 of 12 POIs (2 outside every tile; dropped: 1 without a category, 2 with bad coordinates)" in text
    assert summary["embedding_source"] == "learned" and load(out, "emb", "A").shape == (3, 16)
    # the saved table is accepted back as --embeddings and gives the same tensors
    first = load(out, "emb", "A")
    os.replace(out / "category_embeddings.csv", city / "learned.csv")
    summary2, out = run(city, "--embeddings", str(city / "learned.csv"), "--overwrite")
    assert torch.equal(load(out, "emb", "A"), first) and summary2["categories_unseen_in_table"] == {}


def test_learned_embeddings_pull_siblings_together(tmp_path):
    # Categories scattered at random (no co-location signal) under two parents: only the hierarchy
    # can make siblings closer than non-siblings.
    rng = np.random.default_rng(0)
    make_tiles(tmp_path / "tiles", ["T"])
    write_csv(tmp_path / "index.csv", ["name", "minx", "miny", "maxx", "maxy"], [["T", 0, 0, 1, 1]])
    cats = rng.integers(0, 6, size=600)
    write_csv(
        tmp_path / "pois.csv",
        ["x", "y", "category", "parent"],
        [[x, y, f"c{c}", f"p{c // 3}"] for (x, y), c in zip(rng.random((600, 2)), cats, strict=True)],
    )
    main(
        [
            "--pois",
            str(tmp_path / "pois.csv"),
            "--tiles",
            str(tmp_path / "tiles"),
            "--parent_col",
            "parent",
            "--tile_index",
            str(tmp_path / "index.csv"),
            "--out",
            str(tmp_path / "out"),
        ]
    )
    rows = [line.split(",") for line in (tmp_path / "out/category_embeddings.csv").read_text().splitlines()[1:]]
    vec = {r[0]: np.array(r[1:], dtype=float) for r in rows}
    cos = lambda a, b: vec[a] @ vec[b]  # noqa: E731 (unit vectors)
    sib = [cos(f"c{a}", f"c{b}") for a in range(6) for b in range(a + 1, 6) if a // 3 == b // 3]
    non = [cos(f"c{a}", f"c{b}") for a in range(6) for b in range(a + 1, 6) if a // 3 != b // 3]
    assert min(sib) > max(non)


def test_geotiff_tiles_without_index(tmp_path):
    os.makedirs(tmp_path / "tiles")
    for k, x0 in enumerate([100.0, 300.0]):  # two 20 x 10 px tiles of 10 m pixels, side by side
        ifd = TiffImagePlugin.ImageFileDirectory_v2()
        ifd[33550] = (10.0, 10.0, 0.0)
        ifd[33922] = (0.0, 0.0, 0.0, x0, 1000.0, 0.0)
        ifd[34735] = (1, 1, 0, 2, 1024, 0, 1, 1, 3072, 0, 1, 32651)
        for tag, typ in ((33550, TiffTags.DOUBLE), (33922, TiffTags.DOUBLE), (34735, TiffTags.SHORT)):
            ifd.tagtype[tag] = typ
        Image.new("RGB", (20, 10), (k, 2, 3)).save(tmp_path / f"tiles/g{k}.tif", tiffinfo=ifd)
    # bounds: g0 [100, 300) x [900, 1000), g1 [300, 500) x [900, 1000)
    write_csv(
        tmp_path / "pois.csv",
        ["x", "y", "category"],
        [[100, 950, "a"], [299.9, 900, "b"], [300, 999, "a"], [250, 1000, "b"]],
    )
    summary = main(
        [
            "--pois",
            str(tmp_path / "pois.csv"),
            "--tiles",
            str(tmp_path / "tiles"),
            "--convert_tiff",
            "--out",
            str(tmp_path / "out"),
        ]
    )
    assert summary["tile_crs"] == "EPSG:32651" and summary["pois_outside_every_tile"] == 1
    assert torch.load(tmp_path / "out/sub_shanghai_emb/g0.tensor").shape[0] == 2
    assert torch.load(tmp_path / "out/sub_shanghai_emb/g1.tensor").shape[0] == 1
    with Image.open(tmp_path / "out/sub_shanghai_img/g0.png") as im:
        assert im.mode == "RGB" and im.size == (20, 10)


def test_lonlat_pois_reprojected_to_tile_crs(tmp_path):
    pyproj = pytest.importorskip("pyproj")
    tr = pyproj.Transformer.from_crs("EPSG:4326", "EPSG:3857", always_xy=True)
    x, y = tr.transform(121.47, 31.23)  # Shanghai
    make_tiles(tmp_path / "tiles", ["W", "E"])
    write_csv(
        tmp_path / "index.csv",
        ["name", "minx", "miny", "maxx", "maxy"],
        [["W", x - 1000, y - 1000, x, y + 1000], ["E", x, y - 1000, x + 1000, y + 1000]],
    )
    write_csv(tmp_path / "pois.csv", ["lon", "lat", "category"], [[121.469, 31.23, "a"], [121.471, 31.23, "b"]])
    summary = main(
        [
            "--pois",
            str(tmp_path / "pois.csv"),
            "--x_col",
            "lon",
            "--y_col",
            "lat",
            "--crs",
            "EPSG:4326",
            "--tiles",
            str(tmp_path / "tiles"),
            "--tile_index",
            str(tmp_path / "index.csv"),
            "--tile_crs",
            "EPSG:3857",
            "--out",
            str(tmp_path / "out"),
        ]
    )
    assert summary["reprojected"] and summary["pois_outside_every_tile"] == 0
    assert torch.load(tmp_path / "out/sub_shanghai_emb/W.tensor").shape[0] == 1


def cli(*args):
    return subprocess.run(
        [sys.executable, os.path.join(ROOT, "prepare_pois.py"), *args], capture_output=True, text=True, cwd=ROOT
    )


@pytest.mark.slow
@pytest.mark.parametrize("case", ["missing_column", "empty_file", "unknown_crs", "no_georef", "all_nan"])
def test_bad_input_one_sentence_and_nonzero_exit(city, case):
    pois, index = city / "pois.csv", ["--tile_index", str(city / "index.csv")]
    extra = []
    if case == "missing_column":
        extra = ["--category_col", "kind"]
    elif case == "empty_file":
        pois = city / "empty.csv"
        pois.write_text("")
    elif case == "unknown_crs":
        extra = ["--crs", "EPSG:999999"]
    elif case == "no_georef":
        index = []  # plain PNGs with neither index nor world file
    elif case == "all_nan":
        pois = city / "nan.csv"
        write_csv(pois, ["x", "y", "category"], [["nan", 1, "a"], ["", 2, "b"]])
    r = cli("--pois", str(pois), "--tiles", str(city / "tiles"), *index, "--out", str(city / "out"), *extra)
    assert r.returncode != 0
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert not (city / "out" / "prepare_summary.json").exists()


@pytest.mark.slow
def test_mmgr_trains_on_prepared_folder(city, tmp_path):
    # 4 tiles with POIs + 1 empty: enough for one batch of 4.
    _, out = run(city)
    tmp = tmp_path / "train"
    r = subprocess.run(
        [
            sys.executable,
            "mmgr.py",
            "--data_path",
            str(out),
            "--total_epoch",
            "1",
            "--batch_size",
            "4",
            "--resnet",
            "resnet18",
            "--img_size",
            "32",
            "--model_path",
            str(tmp / "ckpt"),
            "--train_record",
            str(tmp / "rec"),
            "--device",
            "cpu",
            "--workers",
            "0",
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    assert (tmp / "ckpt" / "mmgr_img_1.tar").is_file()  # a prepared folder: the neutral prefix


def test_pois_far_from_the_tiles_stop_before_writing(city):
    # Typically lon/lat POIs read as if they were in the tiles' units: no overlap at all.
    write_csv(city / "far.csv", ["x", "y", "category"], [[121.4, 31.2, "a"], [121.5, 31.3, "b"]])
    with pytest.raises(
        Exception,
        match=r"POIs in .*far\.csv do not overlap the tiles: their extent is "
        r"\(121\.4, 31\.2, 121\.5, 31\.3\), the tiles' is \(0, 0, 11, 11\)",
    ):
        main(
            [
                "--pois",
                str(city / "far.csv"),
                "--tiles",
                str(city / "tiles"),
                "--tile_index",
                str(city / "index.csv"),
                "--out",
                str(city / "out"),
            ]
        )
    assert not (city / "out").exists()


def test_out_held_by_another_writer_is_refused(city):
    out = city / "out"
    with FolderLock(out, purpose="prepare_pois", flag="--out"):
        r = run_script(
            [
                os.path.join(ROOT, "prepare_pois.py"),
                "--pois",
                str(city / "pois.csv"),
                "--tiles",
                str(city / "tiles"),
                "--tile_index",
                str(city / "index.csv"),
                "--out",
                str(out),
            ],
            cwd=city,
        )
    assert r.returncode == EXIT_BUSY and "Traceback" not in r.stderr
    assert r.stderr.startswith(f"error: {out} is in use by pid {os.getpid()} on host ")
    assert len(r.stderr.splitlines()) == 1
    assert r.stderr.rstrip().endswith("or pass another --out"), r.stderr
    assert r.stdout == ""  # an existing OUT in use is refused before the inputs are read
    assert os.listdir(out) == [LOCK_NAME]  # nothing of a preparation


def test_out_taken_while_the_inputs_are_read(city):
    # OUT does not exist yet, so it is locked only when writing starts; here another writer creates and
    # takes it meanwhile (at the first log line).
    out = city / "out"
    other = FolderLock(out, purpose="prepare_pois", flag="--out")
    args = cli_args(city)
    try:
        with pytest.raises(FolderBusy, match=f"^{out} is in use by this same process .* or pass another --out$"):
            prepare(PrepareConfig(**vars(build_parser().parse_args(args))), log=lambda line: other.acquire())
    finally:
        other.release()
    assert os.listdir(out) == [LOCK_NAME]


def _disk_full(*args, **kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_a_refused_write_names_the_file_and_out(city, monkeypatch):
    monkeypatch.setattr(torch, "save", _disk_full)  # every tensor write fails as on a full disk
    with pytest.raises(
        StorageError,
        match=r"could not write .*out/sub_shanghai_emb/A\.tensor \(0 bytes of about "
        r".*\): the disk is full .*; the previous file is kept; free space there "
        r"or pass another --out, then run the command again with --overwrite$",
    ) as e:
        run(city)
    assert e.value.exit_code == EXIT_STORAGE
    out = city / "out"
    assert not (out / "prepare_summary.json").exists() and os.listdir(out / "sub_shanghai_emb") == []
    FolderLock(out).acquire().release()  # the lock went with the failed run


def test_a_refused_write_in_a_worker_stops_the_run(tmp_path, monkeypatch):
    # 257 tiles: two chunks, so --workers 2 writes in forked processes. A WriteFailed does not survive the
    # trip back to the parent (it cannot be unpickled, which would hang the pool): it arrives as one sentence.
    names = [f"t{k}" for k in range(257)]
    make_tiles(tmp_path / "tiles", names[:1])
    for n in names[1:]:
        os.link(tmp_path / "tiles" / "t0.png", tmp_path / "tiles" / f"{n}.png")
    write_csv(
        tmp_path / "index.csv",
        ["name", "minx", "miny", "maxx", "maxy"],
        [[n, k, 0, k + 1, 1] for k, n in enumerate(names)],
    )
    write_csv(tmp_path / "pois.csv", ["x", "y", "category"], [[0.5, 0.5, "a"], [200.5, 0.5, "b"]])
    monkeypatch.setattr(torch, "save", _disk_full)
    with pytest.raises(StorageError, match=r"could not write .*/t\d+\.tensor .*: the disk is full.*another --out"):
        main(
            [
                "--pois",
                str(tmp_path / "pois.csv"),
                "--tiles",
                str(tmp_path / "tiles"),
                "--tile_index",
                str(tmp_path / "index.csv"),
                "--workers",
                "2",
                "--out",
                str(tmp_path / "out"),
            ]
        )
    assert not (tmp_path / "out" / "prepare_summary.json").exists()
