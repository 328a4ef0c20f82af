"""embed.py: both layouts, POI checkpoints (bare and resumable), file formats, probes, errors."""

import csv
import json

import geopandas as gpd
import numpy as np
import pytest
import torch
from PIL import Image

import embed
from data.pretrain import PretrainDataset, open_rgb
from data.transforms import eval_transform
from engine.embeddings import poi_checkpoint_for
from models.image_encoder import ImageEncoder
from models.loading import load_poi_encoder
from models.poi_encoder import build_poi_encoder
from tests.conftest import ROOT, make_layout, run_script
from tests.engine.test_downstream import add_tile_index
from utils.errors import UserError

ARGS = ["--workers", "0", "--device", "cpu", "--batch_size", "5"]


def checkpoints(tmp_path, kind="gcn"):
    torch.manual_seed(0)
    img, poi = ImageEncoder("resnet18", 16), build_poi_encoder(kind, 8, 16)
    d = tmp_path / "ck"
    d.mkdir(exist_ok=True)
    torch.save(img.state_dict(), d / "wuhan_img_3.tar")
    torch.save(poi.state_dict(), d / "wuhan_poi_3.tar")
    torch.save(
        {"img": img.state_dict(), "poi": poi.state_dict(), "opt_img": {}, "opt_poi": {}, "epoch": 3, "args": {}},
        d / "checkpoint_last.pt",
    )
    return d, img.eval(), poi.eval()


def test_export_matches_models_and_formats(tmp_path, tiny_data):
    d, img, poi = checkpoints(tmp_path)
    out = embed.main(
        [
            "--ckpt",
            str(d / "wuhan_img_3.tar"),
            "--data_path",
            str(tiny_data),
            "--out",
            str(tmp_path / "e"),
            "--projected",
            "--poi",
            *ARGS,
        ]
    )
    names = (tmp_path / "e" / "names.txt").read_text().split()
    assert names == [f"t{i:03d}.png" for i in range(12)]  # downstream layout img/ found first
    b = np.load(tmp_path / "e" / "backbone.npy")
    assert b.shape == (12, 512) and np.load(tmp_path / "e" / "projection.npy").shape == (12, 16)
    # Batched export (batch 5, last batch partial) equals one tile at a time through the model.
    x = eval_transform()(open_rgb(tiny_data / "img" / "t007.png"))[None]
    with torch.no_grad():
        np.testing.assert_allclose(b[7], img.features(x)[0].numpy(), rtol=1e-4, atol=1e-5)
        proj = np.load(tmp_path / "e" / "projection.npy")
        np.testing.assert_allclose(proj[7], img(x)[0].numpy(), rtol=1e-4, atol=1e-5)
    # POI embedding of a zero-POI tile (t000) and a normal one, against the encoder run on that graph alone.
    ds = PretrainDataset(tiny_data, eval_transform())
    p = np.load(tmp_path / "e" / "poi.npy")
    for i in (0, 3):
        g = ds.graph(i)
        with torch.no_grad():
            ref = poi(g.x, g.edge_index, torch.zeros(g.num_nodes, dtype=torch.long), 1, g.edge_weight)[0]
        np.testing.assert_allclose(p[i], ref.numpy(), rtol=1e-4, atol=1e-5)
    rows = list(csv.reader(open(tmp_path / "e" / "embeddings.csv")))
    assert len(rows) == 13 and rows[0][:2] == ["name", "b0"] and rows[0][-1] == "poi15" and len(rows[0]) == 1 + 512 + 32
    assert rows[8][0] == "t007.png" and float(rows[8][1]) == np.float32(float(f"{b[7, 0]:.6g}"))
    meta = json.loads((tmp_path / "e" / "meta.json").read_text())
    assert meta["dims"] == {"backbone": 512, "projection": 16, "poi": 16} and meta["img_dir"] == "img"
    assert set(out["arrays"]) == {"backbone", "projection", "poi"}


def test_resumable_checkpoint_and_pretraining_layout(tmp_path, tiny_data):
    d, _, _ = checkpoints(tmp_path, kind="set2set")
    embed.main(
        [
            "--ckpt",
            str(d / "wuhan_img_3.tar"),
            "--data_path",
            str(tiny_data),
            "--out",
            str(tmp_path / "a"),
            "--poi",
            *ARGS,
        ]
    )
    embed.main(
        [
            "--ckpt",
            str(d / "checkpoint_last.pt"),
            "--data_path",
            str(tiny_data),
            "--img_dir",
            "sub_shanghai_img",
            "--out",
            str(tmp_path / "b"),
            "--poi",
            "--lists",
            "val-wuhan.txt",
            *ARGS,
        ]
    )
    a, b = np.load(tmp_path / "a" / "poi.npy"), np.load(tmp_path / "b" / "poi.npy")
    assert b.shape == (4, 16) and np.allclose(a[8:], b, atol=1e-6)  # the val list is t008..t011
    assert poi_checkpoint_for(d / "wuhan_img_3.tar") == d / "wuhan_poi_3.tar"
    assert type(load_poi_encoder(d / "checkpoint_last.pt")).__name__ == "Set2SetPOIEncoder"


@pytest.mark.slow
def test_probe_cli_and_errors(tmp_path, tiny_data):
    d, _, _ = checkpoints(tmp_path)
    r = run_script(
        [
            str(ROOT / "embed.py"),
            "--ckpt",
            str(d / "wuhan_img_3.tar"),
            "--data_path",
            str(tiny_data),
            "--out",
            str(tmp_path / "e"),
            "--probe",
            "pop1km",
            "--knn",
            "3",
            *ARGS,
        ],
        cwd=tmp_path,
    )
    assert r.returncode == 0, r.stderr
    assert "probe   pop1km ridge (backbone): MAE" in r.stdout and "knn" in r.stdout
    probe = json.loads((tmp_path / "e" / "probe.json").read_text())
    assert {"MAE", "RMSE", "R2"} <= set(probe["pop1km"]["knn"])
    with pytest.raises(UserError, match="wuhan_poi_3.tar"):  # run_main turns it into "error: ..." and exit 2
        embed.main(
            ["--ckpt", str(d / "wuhan_poi_3.tar"), "--data_path", str(tiny_data), "--out", str(tmp_path / "x"), *ARGS]
        )
    with pytest.raises(UserError, match="no MMGR POI encoder"):
        embed.main(
            [
                "--ckpt",
                str(d / "wuhan_img_3.tar"),
                "--data_path",
                str(tiny_data),
                "--out",
                str(tmp_path / "x"),
                "--poi",
                "--poi_ckpt",
                str(d / "wuhan_img_3.tar"),
                *ARGS,
            ]
        )


def test_probe_lists_fallback_and_cv(tmp_path, tiny_data, capsys):
    """prepare_pois.py's train.txt/val.txt are found without flags; --cv adds mean ± std over folds."""
    d, _, _ = checkpoints(tmp_path)
    for split in ("train", "val"):
        (tiny_data / f"{split}-wuhan.txt").rename(tiny_data / f"{split}.txt")
    out = embed.main(
        [
            "--ckpt",
            str(d / "wuhan_img_3.tar"),
            "--data_path",
            str(tiny_data),
            "--out",
            str(tmp_path / "e"),
            "--probe",
            "pop1km",
            "--knn",
            "3",
            "--cv",
            "3",
            *ARGS,
        ]
    )
    text = capsys.readouterr().out
    assert "probe   pop1km ridge (backbone, 3-fold CV): MAE" in text and "random folds (no tile index" in text
    probe = json.loads((tmp_path / "e" / "probe.json").read_text())["pop1km"]
    cv = probe["cv"]
    assert cv == out["probes"]["pop1km"]["cv"] and cv["folds"] == 3 and len(cv["knn"]["R2"]) == 2
    # the tile counts and the two references, on the same split
    assert "probes fit on 8 tiles of train.txt and score on 4 tiles of val.txt (of 12 exported)" in text
    assert "reference   pop1km   mean predictor: MAE" in text and "random init ridge: MAE" in text
    y = np.array([float((tiny_data / "pop1km" / f"t{i:03d}.txt").read_text()) for i in range(12)])
    mean_r2 = 1 - ((y[8:] - y[:8].mean()) ** 2).sum() / ((y[8:] - y[8:].mean()) ** 2).sum()
    assert probe["references"]["mean"]["R2"] == pytest.approx(mean_r2, abs=1e-5)
    assert probe["tiles"] == {"train": 8, "val": 4}
    # the random encoder is the checkpoint's architecture drawn from --seed; the checkpoint here is itself
    # torchvision's initialisation from seed 0, so the reference repeats the probe exactly
    rand = probe["references"]["random_init"]
    assert rand["ridge"] == probe["ridge"] and rand["knn"] == probe["knn"]


def test_clusters_leave_out_tiles_by_poi_count_and_brightness(tmp_path, tiny_data, capsys):
    """--cluster_min_poi and --cluster_min_brightness keep tiles out of the k-means (cluster -1, grey)."""
    add_tile_index(tiny_data)  # no n_poi column: the counts come from the POI tensors (t000, t005 have none)
    Image.new("RGB", (32, 32), (5, 10, 20)).save(tiny_data / "img" / "t003.png")  # dark as open water
    torch.manual_seed(0)
    torch.save(ImageEncoder("resnet18", 16).state_dict(), tmp_path / "ck.tar")
    embed.main(
        ["--data_path", str(tiny_data), "--ckpt", str(tmp_path / "ck.tar"), "--out", str(tmp_path / "e")]
        + ["--clusters", "3", "--cluster_min_poi", "1", "--cluster_min_brightness", "40", *ARGS]
    )
    assert (
        "clusters: 9 of 12 tiles clustered; left out: 2 with fewer than 1 POIs, 1 with a darkest channel under 40"
        in capsys.readouterr().out
    )
    frame = gpd.read_parquet(tmp_path / "e" / "embeddings_map.parquet")
    left = frame.loc[frame["cluster"] < 0, "name"].tolist()
    assert left == ["t000.png", "t003.png", "t005.png"] and frame.loc[frame["cluster"] >= 0, "cluster"].nunique() == 3


def test_embedding_map_with_a_projected_tile_index(tmp_path, tiny_data, monkeypatch):
    add_tile_index(tiny_data)
    torch.manual_seed(0)
    torch.save(ImageEncoder("resnet18", 16).state_dict(), tmp_path / "ck.tar")
    embed.main(
        [
            "--data_path",
            str(tiny_data),
            "--ckpt",
            str(tmp_path / "ck.tar"),
            "--out",
            str(tmp_path / "e"),
            "--clusters",
            "3",
            "--workers",
            "0",
            "--device",
            "cpu",
        ]
    )
    frame = gpd.read_parquet(tmp_path / "e" / "embeddings_map.parquet")
    assert frame.crs.to_epsg() == 32650 and len(frame) == 12 and frame["cluster"].nunique() == 3
    back = np.load(tmp_path / "e" / "backbone.npy")
    assert np.allclose(frame[[f"e{j}" for j in range(back.shape[1])]].to_numpy(), back, atol=1e-6)
    assert (tmp_path / "e" / "embeddings_map.png").read_bytes()[:4] == b"\x89PNG"


def test_several_roots_one_row_per_tile_of_each_and_a_map_per_root(tmp_path, tiny_data):
    other = make_layout(tmp_path / "other", n_tiles=12, seed=3)
    add_tile_index(tiny_data)
    add_tile_index(other, crs="EPSG:32651")
    d, _, _ = checkpoints(tmp_path)
    common = ["--ckpt", str(d / "wuhan_img_3.tar"), "--poi", *ARGS]
    both = embed.main(["--data_path", str(tiny_data), str(other), "--out", str(tmp_path / "e"), *common])
    alone = embed.main(["--data_path", str(other), "--out", str(tmp_path / "o"), *common])
    names = (tmp_path / "e" / "names.txt").read_text().split()
    assert names == [f"data/t{i:03d}.png" for i in range(12)] + [f"other/t{i:03d}.png" for i in range(12)]
    for kind in ("backbone", "poi"):  # the second root's rows are its own export's
        assert np.allclose(both["arrays"][kind][12:], alone["arrays"][kind], atol=1e-5)
    meta = json.loads((tmp_path / "e" / "meta.json").read_text())
    assert meta["data_path"] == [str(tiny_data), str(other)] and [r["n_tiles"] for r in meta["roots"]] == [12, 12]
    for label, epsg in (("data", 32650), ("other", 32651)):
        frame = gpd.read_parquet(tmp_path / "e" / f"embeddings_map_{label}.parquet")
        assert frame.crs.to_epsg() == epsg and len(frame) == 12
    with pytest.raises(UserError, match="--probe fits and scores on one root's train/val lists"):
        embed.main(
            ["--data_path", str(tiny_data), str(other), "--out", str(tmp_path / "p"), "--probe", "pop1km", *common]
        )
    with pytest.raises(UserError, match="is given twice; give each root once"):
        embed.main(["--data_path", str(other), str(other), "--out", str(tmp_path / "p"), *common])
    assert not (tmp_path / "p").exists()
