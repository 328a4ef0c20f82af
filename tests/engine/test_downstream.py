"""res_pop.py / res_func.py, their shared loop (engine/downstream.py) and tasks (engine/tasks.py) on a tiny layout."""

import csv
import json
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import rasterio
import shapely
import torch
from torch.utils.data import DataLoader

import prepare_pois
import res_func
import res_pop
from data.downstream import TileTargetDataset, read_list, select_fraction
from data.transforms import eval_transform
from engine.downstream import Encoder, backbone_features, downstream_layout, evaluate, setup_seed, train_one_epoch
from engine.reports import map_tiles
from engine.tasks import distribution_task, regression_task
from models.heads import with_task_head
from models.image_encoder import ImageEncoder
from models.loading import load_image_encoder
from prepare.tile_index import TileIndex, write_tile_index
from tests.conftest import ROOT, make_layout, run_script
from utils.errors import UserError

FAST = [
    "--batch_size",
    "4",
    "--img_size",
    "24",
    "--device",
    "cpu",
    "--workers",
    "0",
    "--total_epoch",
    "2",
    "--eval_from",
    "1",
]
TYPES = ("residential", "commercial", "water")


def add_func_and_gdp(root: Path) -> Path:
    """func/NAME.txt (3 proportions), func_types.txt and gdp1km/ beside make_layout's pop1km/."""
    rng = np.random.default_rng(0)
    (root / "func").mkdir(exist_ok=True)
    (root / "gdp1km").mkdir(exist_ok=True)
    for p in sorted((root / "img").iterdir()):
        v = rng.dirichlet(np.ones(len(TYPES)))
        (root / "func" / f"{p.stem}.txt").write_text(" ".join(f"{x:.6f}" for x in v) + "\n")
        (root / "gdp1km" / f"{p.stem}.txt").write_text(f"{rng.lognormal(3, 1):.4f}\n")
    (root / "func_types.txt").write_text("".join(t + "\n" for t in TYPES))
    return root


@pytest.fixture
def setup(tmp_path, monkeypatch):
    data = add_func_and_gdp(make_layout(tmp_path / "data"))
    torch.manual_seed(0)
    ckpt = tmp_path / "wuhan_img_1.tar"
    torch.save(ImageEncoder("resnet18", 16).state_dict(), ckpt)
    monkeypatch.chdir(tmp_path)  # train-records/ goes to the cwd, as published
    return data, ckpt


def test_select_fraction_seeded_and_ordered():
    names = [f"t{i}.png" for i in range(20)]
    a = select_fraction(names, 0.25, 3)
    assert len(a) == 5 and a == select_fraction(names, 0.25, 3) and a == [n for n in names if n in a]  # list order kept
    assert a != select_fraction(names, 0.25, 4)
    assert select_fraction(names, 1.0, 0) == names and len(select_fraction(names, 0.01, 0)) == 1


def test_res_func_seeds_csv_and_metrics(setup, capsys):
    data, ckpt = setup
    out = res_func.main(["--data_path", str(data), "--ckpt", str(ckpt), *FAST, "--seeds", "0", "1"])
    text = capsys.readouterr().out
    assert "mean ± std over 2 seeds (best): L1" in text and "val L1" in text and "cos" in text
    results = out["results"]
    assert [r.seed for r in results] == [0, 1]
    for r in results:
        assert r.pred.shape == (4, 3) and np.allclose(r.pred.sum(1), 1, atol=1e-5)  # softmax: distributions
        assert set(r.history[-1]) == {"epoch", "L1", "KL", "cos"}
    # mean ± std really are the mean and sample std of the per-seed best values
    kls = [r.best(distribution_task(TYPES)).get("KL") for r in results]
    assert out["summary"]["best"]["KL"] == pytest.approx((np.mean(kls), np.std(kls, ddof=1)))
    rows = list(csv.DictReader(open("train-records/res_func_pred.csv")))
    assert len(rows) == 8 and rows[0]["name"] == "t008.png" and {"true_water", "pred_water"} <= set(rows[0])
    assert float(rows[0]["true_water"]) == pytest.approx(float((data / "func" / "t008.txt").read_text().split()[2]))
    assert float(rows[4]["pred_commercial"]) == pytest.approx(results[1].pred[0, 1], rel=1e-4)
    recs = [json.loads(line) for line in open("train-records/res_func.txt")]
    assert [(r["seed"], r["epoch"]) for r in recs] == [(0, 1), (0, 2), (1, 1), (1, 2)]


def test_cached_features_equal_full_forward(setup):
    """The frozen probe's fast path (validation features computed once) gives the full model's predictions."""
    data, ckpt = setup
    out = res_pop.main(["--data_path", str(data), "--ckpt", str(ckpt), *FAST, "--lr", "1e-3", "--plot", "none"])
    pred_fast = out["results"][0].pred
    # The fast path's identity on a fresh head: full forward == head(cached backbone features).
    model = with_task_head(load_image_encoder(ckpt), 1).eval()
    val = DataLoader(TileTargetDataset(data, "val-wuhan.txt", eval_transform()), batch_size=4)
    with torch.no_grad():
        full = torch.cat([model(x) for x, _, _ in val])
        cached = model.encoder.fc(backbone_features(model, val, torch.device("cpu")))
    assert torch.allclose(full, cached, atol=1e-5)
    assert pred_fast.shape == (4, 1) and (pred_fast >= 0).all()  # ReLU output


@pytest.mark.slow
def test_res_pop_options_end_to_end(setup, tmp_path):
    data, ckpt = setup
    r = run_script(
        [
            str(ROOT / "res_pop.py"),
            "--data_path",
            str(data),
            "--ckpt",
            str(ckpt),
            *FAST,
            "--target_dir",
            "gdp1km",
            "--log_target",
            "--label_fraction",
            "0.5",
            "--finetune",
            "--backbone_lr",
            "1e-5",
            "--seeds",
            "0",
            "1",
            "--train_record",
            "gdp.txt",
        ],
        cwd=tmp_path,
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.count("4 training and 4 validation tiles; fine-tuning the whole encoder") == 2
    assert "mean ± std over 2 seeds (last): MAE" in r.stdout
    png = tmp_path / "train-records" / "gdp_scatter.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rows = list(csv.DictReader(open(tmp_path / "train-records" / "gdp_pred.csv")))
    assert len(rows) == 8
    assert float(rows[0]["true_value"]) == pytest.approx(float((data / "gdp1km" / "t008.txt").read_text()))


def test_finetune_moves_backbone_frozen_does_not(setup):
    data, ckpt = setup
    seen = {}
    before = torch.load(ckpt, weights_only=True)["encoder.layer1.0.conv1.weight"]
    captured = {}
    real_adam = torch.optim.Adam

    class Spy(real_adam):
        def __init__(self, groups, **kw):
            super().__init__(groups, **kw)
            captured["groups"] = self.param_groups

    for ft in ("0", "1"):
        captured.clear()
        torch.optim.Adam = Spy
        try:
            res_pop.main(["--data_path", str(data), "--ckpt", str(ckpt), *FAST, "--finetune", ft, "--plot", "none"])
        finally:
            torch.optim.Adam = real_adam
        groups = captured["groups"]
        seen[ft] = [(g["base_lr"], len(g["params"])) for g in groups]
        if ft == "1":
            conv = [p for p in groups[1]["params"] if p.shape == before.shape][0]
            assert not torch.equal(conv.detach(), before)
    assert len(seen["0"]) == 1 and seen["0"][0][0] == 1e-3  # --protocol stable's head lr
    assert len(seen["1"]) == 2 and seen["1"][1][0] == 1e-4  # documented default backbone lr


@pytest.mark.parametrize("content,match", [("0.5 0.5 0.5", "summing to"), ("-0.5 1.0 0.5", "negative proportion")])
def test_res_func_bad_distributions(setup, content, match):
    data, ckpt = setup
    (data / "func" / "t010.txt").write_text(content + "\n")
    with pytest.raises(UserError, match=match):  # run_main turns it into "error: ..." and exit 2
        res_func.main(["--data_path", str(data), "--ckpt", str(ckpt), *FAST])


def test_res_func_types_mismatch_and_label_fraction_too_small(setup):
    data, ckpt = setup
    (data / "func_types.txt").write_text("a\nb\n")
    with pytest.raises(UserError, match="func_types.txt names 2"):
        res_func.main(["--data_path", str(data), "--ckpt", str(ckpt), *FAST])
    with pytest.raises(UserError, match="fewer than one batch"):
        res_pop.main(["--data_path", str(data), "--ckpt", str(ckpt), *FAST, "--label_fraction", "0.2"])


def _seed_run(data, ckpt, *extra, task=None):
    """setup_seed on the tiny layout, in-process (the loop's seams)."""
    args = res_pop.parse_args(["--data_path", str(data), "--ckpt", str(ckpt), *FAST, *extra])
    layout = downstream_layout(args)
    task = task or regression_task(args.log_target, args.target_norm)
    val = TileTargetDataset(layout.root, layout.val_list, eval_transform(), layout.img_dir, layout.target_dir)
    names = read_list(layout.root / layout.train_list)
    return args, setup_seed(args, layout, task, Encoder(ckpt), 0, names, val, torch.device("cpu"))


def test_zscore_predictions_are_relu_of_mu_plus_sigma_h_in_original_units(setup):
    data, ckpt = setup
    _, run = _seed_run(data, ckpt, "--protocol", "published", "--augment", "false")
    y_train = np.array([float((data / "pop1km" / f"t{i:03d}.txt").read_text()) for i in range(8)])
    assert run.task.mu == pytest.approx(y_train.mean()) and run.task.sigma == pytest.approx(y_train.std(), rel=1e-4)
    for epoch in range(2):
        train_one_epoch(run, epoch, 1.0, torch.device("cpu"))
    with torch.no_grad():
        h = run.model.encoder.fc(run.val_feats).numpy()
    np.testing.assert_allclose(
        evaluate(run, torch.device("cpu")), np.maximum(run.task.mu + run.task.sigma * h, 0), rtol=1e-5
    )


def test_cached_training_features_equal_the_loader_path(setup):
    """Without augmentation a frozen run trains the head on features computed once; the same batch (all 8
    training tiles, so the shuffling does not matter) through the full model gives the same head."""
    data, ckpt = setup
    _, cached = _seed_run(data, ckpt, "--protocol", "published", "--augment", "false", "--batch_size", "8")
    _, full = _seed_run(data, ckpt, "--protocol", "published", "--augment", "false", "--batch_size", "8")
    assert cached.train_feats is not None and cached.train_feats.shape == (8, 512)
    full.train_feats = None
    losses = [train_one_epoch(r, 0, 1.0, torch.device("cpu")) for r in (cached, full)]
    assert losses[0] == pytest.approx(losses[1], rel=1e-5)
    for a, b in zip(cached.model.encoder.fc.parameters(), full.model.encoder.fc.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_random_init_encoder_seeded_by_the_run(setup, capsys):
    data, ckpt = setup
    rand = [
        "--data_path",
        str(data),
        "--ckpt",
        "random",
        "--resnet",
        "resnet18",
        "--projection_dim",
        "16",
        *FAST,
        "--plot",
        "none",
        "--augment",
        "false",
    ]
    a = res_pop.main(rand)["results"][0].pred
    assert "seed 0: random init (resnet18)" in capsys.readouterr().out
    assert np.array_equal(a, res_pop.main(rand)["results"][0].pred)
    assert not np.array_equal(a, res_pop.main([*rand, "--seed", "1"])["results"][0].pred)
    assert {json.loads(line)["ckpt"] for line in open("train-records/res_pop.txt")} == {"random"}
    capsys.readouterr()
    out = res_pop.main([*rand, "--baselines", "--finetune"])  # the supervised bound, compared with the mean
    text = capsys.readouterr().out
    assert "fine-tuning the whole encoder" in text and "random init (resnet18)" in text and not out["baselines"]
    assert "random init - mean predictor" in text and "On R2 (higher is better) random init is" in text
    torch.manual_seed(3)
    ref = ImageEncoder("resnet18", 16).state_dict()
    torch.manual_seed(3)
    built = Encoder(None, "resnet18", 16).build().state_dict()
    assert all(torch.equal(ref[k], built[k]) for k in ref)


def test_baselines_print_the_comparison_with_the_std_ratio(setup, capsys):
    data, ckpt = setup
    out = res_pop.main(
        ["--data_path", str(data), "--ckpt", str(ckpt), *FAST, "--baselines", "--augment", "false", "--plot", "none"]
    )
    text = capsys.readouterr().out
    assert "(2) a randomly initialised resnet18" in text and "seed 0: random init (resnet18)" in text
    table = text[text.index("comparison on the 4 validation tiles of pop1km") :]
    for row in (
        "pretrained (wuhan_img_1.tar)",
        "random init",
        "mean predictor",
        "pretrained - random init",
        "pretrained - mean predictor",
        "std ratio = std(predictions) / std(truth)",
        "On R2 (higher is better)",
    ):
        assert row in table
    y = np.array([float((data / "pop1km" / f"t{i:03d}.txt").read_text()) for i in range(8, 12)])
    pred, rand = out["results"][0].pred[:, 0], out["baselines"]["random init"][0].pred[:, 0]
    row = lambda name: [float(v) for v in table.split(name)[1].split("\n")[0].split()]  # noqa: E731
    assert row("pretrained (wuhan_img_1.tar)")[3] == pytest.approx(pred.std() / y.std(), abs=1e-4)
    assert row("random init")[3] == pytest.approx(rand.std() / y.std(), abs=1e-4)
    mean = [float((data / "pop1km" / f"t{i:03d}.txt").read_text()) for i in range(8)]
    assert row("mean predictor")[0] == pytest.approx(np.abs(y - np.mean(mean)).mean(), abs=1e-3)  # MAE
    assert row("mean predictor")[3] == 0
    gap = row("pretrained (wuhan_img_1.tar)")[2] - row("random init")[2]
    assert row("pretrained - random init")[2] == pytest.approx(gap, abs=2e-4)


def test_res_func_baselines_std_ratio_is_the_mean_over_types(setup, capsys):
    data, ckpt = setup
    out = res_func.main(["--data_path", str(data), "--ckpt", str(ckpt), *FAST, "--baselines", "--augment", "false"])
    table = capsys.readouterr().out.split("comparison on the 4 validation tiles of func")[1]
    y = np.array([[float(v) for v in (data / "func" / f"t{i:03d}.txt").read_text().split()] for i in range(8, 12)])
    p = out["results"][0].pred
    ratio = float(table.split("pretrained (wuhan_img_1.tar)")[1].split("\n")[0].split()[3])
    assert ratio == pytest.approx(np.mean(p.std(0) / y.std(0)), abs=1e-4) and "On KL (lower is better)" in table


def test_demo_defaults():
    args = res_pop.parse_args(["--demo", "--protocol", "published"])
    demo = (args.augment, args.baselines, args.target_norm, args.lr, args.total_epoch)
    assert demo == (False, True, "zscore", 1e-3, 30)
    assert res_func.parse_args(["--demo"]).baselines and not res_pop.parse_args([]).baselines
    published = res_pop.parse_args(["--protocol", "published"])
    assert (published.augment, published.lr, published.total_epoch, published.batch_size) == (True, 5e-2, 40, 48)
    assert (published.heads, published.eval_from, published.cos, published.stable) == (1, 5, False, False)
    stable = res_pop.parse_args([])
    assert (stable.augment, stable.lr, stable.total_epoch, stable.batch_size) == (False, 1e-3, 100, 16)
    assert (stable.heads, stable.eval_from, stable.cos, stable.stable) == (5, 100, True, True)
    # explicit flags win over the protocol; the demo keeps the protocol's training values
    assert res_pop.parse_args(["--lr", "0.01", "--total_epoch", "7"]).eval_from == 7
    assert res_pop.parse_args(["--demo"]).total_epoch == 100 and res_pop.parse_args(["--demo"]).baselines
    assert res_pop.parse_args(["--finetune"]).lr == 5e-2  # fine-tuning keeps the published values
    with pytest.raises(UserError, match="drop --augment"):
        res_pop.parse_args(["--augment", "true"])
    with pytest.raises(UserError, match="belongs to --protocol stable"):
        res_pop.parse_args(["--protocol", "published", "--heads", "3"])


def test_list_and_image_folder_fallbacks(tmp_path, capsys):
    """Without the published names: train.txt/val.txt (prepare_pois.py) and sub_shanghai_img/; flags win."""
    data = make_layout(tmp_path / "d")
    for split in ("train", "val"):
        (data / f"{split}-wuhan.txt").rename(data / f"{split}.txt")
    (data / "img").rename(data / "img_backup")
    args = res_pop.parse_args(["--data_path", str(data)])
    layout = downstream_layout(args)
    assert (layout.img_dir, layout.train_list, layout.val_list) == ("sub_shanghai_img", "train.txt", "val.txt")
    (data / "img_backup").rename(data / "img")
    (data / "train-wuhan.txt").write_text("t000.png\n")
    assert downstream_layout(args).train_list == "train-wuhan.txt" and downstream_layout(args).img_dir == "img"
    explicit = downstream_layout(
        res_pop.parse_args(["--data_path", str(data), "--train_list", "train.txt", "--img_dir", "sub_shanghai_img"])
    )
    assert (explicit.train_list, explicit.img_dir) == ("train.txt", "sub_shanghai_img")
    (data / "val.txt").unlink()
    with pytest.raises(UserError, match="neither val-wuhan.txt nor val.txt"):
        downstream_layout(args)


def add_tile_index(root: Path, crs: str | None = "EPSG:32650") -> None:
    """make_layout's 12 tiles on a 4 x 3 grid of 1 km squares, in a projected CRS (None: positions only)."""
    names = sorted(p.name for p in (root / "img").iterdir())
    rows, cols = np.arange(12) // 4, np.arange(12) % 4
    x0, y0 = 780_000.0, 3_380_000.0
    bounds = np.stack([x0 + cols * 1000, y0 - (rows + 1) * 1000, x0 + (cols + 1) * 1000, y0 - rows * 1000], axis=1)
    write_tile_index(root, TileIndex(names=names, bounds=bounds.astype(float), crs=crs, rows=rows, cols=cols))


@pytest.mark.parametrize("script, target", [(res_pop, "pop1km"), (res_func, "func")])
def test_a_folder_with_a_projected_tile_index_gets_a_map_of_every_tile(setup, script, target):
    data, ckpt = setup
    add_tile_index(data)
    (data / target / "t011.txt").unlink()  # an unlabelled tile still gets a prediction on the map
    (data / "val-wuhan.txt").write_text("t008.png\nt009.png\nt010.png\n")
    script.main(
        ["--data_path", str(data), "--ckpt", str(ckpt), *FAST, "--train_record", f"{target}.txt", "--seeds", "0", "1"]
    )
    frame = gpd.read_file(Path("train-records") / f"{target}_map.gpkg")
    assert frame.crs.to_epsg() == 32650 and len(frame) == 12
    assert list(frame["split"]) == ["train"] * 8 + ["val"] * 3 + [""]
    png = Path("train-records") / f"{target}_map.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert frame["in_domain"].dtype == bool and frame["in_domain"][:8].sum() >= 7
    std_cols = ["pred_std"] if target == "pop1km" else [f"pred_std_{t}" for t in TYPES]
    assert (frame[std_cols].to_numpy() >= 0).all()  # 2 seeds x 5 heads: a spread on every tile
    tiles = list(csv.DictReader(open(Path("train-records") / f"{target}_tiles.csv")))
    assert len(tiles) == 12 and tiles[11]["split"] == "" and tiles[0]["in_domain"] in ("true", "false")
    if target == "pop1km":
        with rasterio.open(Path("train-records") / "pop1km_map.tif") as tif:
            assert tif.crs.to_epsg() == 32650 and (tif.width, tif.height, tif.count) == (4, 3, 2)
            assert tif.transform.a == 1000 and tif.descriptions[1] == "pred_std"
            band = tif.read(1)
            assert np.allclose(band.reshape(-1), frame["prediction"], rtol=1e-6)  # row-major, as the grid
            assert np.allclose(tif.read(2).reshape(-1), frame["pred_std"], rtol=1e-5)
    if target == "pop1km":
        truth = [float((data / "pop1km" / f"t{i:03d}.txt").read_text()) for i in range(11)]
        assert np.allclose(frame["truth"][:11], truth, rtol=1e-6) and np.isnan(frame["truth"][11])
        assert np.allclose(frame["residual"][:11], frame["prediction"][:11] - frame["truth"][:11])
        assert frame["prediction"].notna().all() and (frame["prediction"] >= 0).all()  # ReLU(mu + sigma h)
    else:
        assert frame["dominant_truth"][11] == "" and set(frame["dominant_pred"]) <= set(TYPES)
        shares = frame[[f"pred_{t}" for t in TYPES]].to_numpy()
        assert np.allclose(shares.sum(axis=1), 1.0, atol=1e-5)


def test_no_map_without_a_crs(setup, capsys):
    data, ckpt = setup
    add_tile_index(data, crs=None)
    (data / "tile_index.gpkg").unlink()  # the CSV alone: positions without a CRS
    res_pop.main(["--data_path", str(data), "--ckpt", str(ckpt), *FAST, "--train_record", "pop.txt"])
    assert not (Path("train-records") / "pop_map.png").exists()
    assert not (Path("train-records") / "pop_map.tif").exists()
    text = capsys.readouterr().out
    assert "no map: the tile index of" in text and "has no CRS" in text
    rows = list(csv.DictReader(open(Path("train-records") / "pop_tiles.csv")))
    assert len(rows) == 12 and float(rows[0]["pred_std_value"]) >= 0


def test_unwritable_output_folder_and_empty_validation_list_are_one_sentence(setup, tmp_path):
    data, ckpt = setup
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder\n")
    with pytest.raises(UserError, match="cannot write to .*a_file.*--pred_csv"):
        res_pop.main(["--data_path", str(data), "--ckpt", str(ckpt), *FAST, "--pred_csv", str(blocker / "p.csv")])
    (data / "val-wuhan.txt").write_text("\n")
    with pytest.raises(UserError, match="val-wuhan.txt is empty"):
        res_pop.main(["--data_path", str(data), "--ckpt", str(ckpt), *FAST])


def test_map_truth_of_functions_is_checked_like_the_validation_set(setup):
    """issue 21 item 6: a tile's shares on the map are renormalised as the validation targets are."""
    data, ckpt = setup
    add_tile_index(data)
    (data / "func" / "t011.txt").write_text("0.2 0.2 0.62\n")  # sums to 1.02: renormalised, not refused
    layout = downstream_layout(res_func.parse_args(["--data_path", str(data)]))
    tiles = map_tiles(layout, read_list(data / "train-wuhan.txt"), [], distribution_task(TYPES))
    np.testing.assert_allclose(tiles.truth[11], np.array([0.2, 0.2, 0.62]) / 1.02)
    (data / "func" / "t011.txt").write_text("-0.1 0.5 0.6\n")
    with pytest.raises(UserError, match="negative proportion"):
        map_tiles(layout, read_list(data / "train-wuhan.txt"), [], distribution_task(TYPES))


def test_real_landsat_crop_maps_carry_spread_domain_and_a_geotiff(tmp_path, monkeypatch, capsys):
    """A real Landsat-8 crop (tests/fixtures/lc08_fill_crop.tif, UTM 21S, 31 % zero fill) prepared as a user
    would, with tract-like target polygons: the map's GeoPackage, PNG and GeoTIFF in the mosaic's CRS."""
    fixture = ROOT / "tests" / "fixtures" / "lc08_fill_crop.tif"
    with rasterio.open(fixture) as src:
        left, bottom, right, top = src.bounds
    # 4 x 4 "tracts" over the crop, each with a count of residents (invented: only the imagery is real).
    side = (right - left) / 4
    rng = np.random.default_rng(0)
    cells = [
        shapely.box(left + i * side, top - (j + 1) * side, left + (i + 1) * side, top - j * side)
        for j in range(4)
        for i in range(4)
    ]
    tracts = gpd.GeoDataFrame({"pop": rng.integers(100, 5000, 16).astype(float)}, geometry=cells, crs="EPSG:32621")
    tracts.to_file(tmp_path / "tracts.gpkg")
    out = tmp_path / "crop"
    prepare_pois.main(
        ["--mosaic", str(fixture), "--nodata", "0", "--tile_size_m", "480", "--tile_px", "32"]
        + ["--target", f"pop1km={tmp_path / 'tracts.gpkg'}:pop", "--split", "random", "--out", str(out)]
    )
    monkeypatch.chdir(tmp_path)
    res_pop.main(
        ["--data_path", str(out), "--ckpt", "random", "--resnet", "resnet18", "--total_epoch", "3"]
        + ["--batch_size", "4", "--workers", "0", "--device", "cpu", "--train_record", "lc.txt", "--plot", "none"]
    )
    text = capsys.readouterr().out
    assert "labelled domain: " in text and "tiles outside the labelled domain" in text
    frame = gpd.read_file(tmp_path / "train-records" / "lc_map.gpkg")
    assert frame.crs.to_epsg() == 32621 and frame["in_domain"].dtype == bool
    assert (frame["pred_std"] >= 0).all() and frame["prediction"].notna().all()
    with rasterio.open(tmp_path / "train-records" / "lc_map.tif") as tif:
        assert tif.crs.to_epsg() == 32621 and tif.res == (480.0, 480.0) and tif.count == 2
        band = tif.read(1)
        # one pixel per tile; cells the preparation skipped (fill) are nodata (NaN)
        assert np.isfinite(band).sum() == len(frame) and np.isnan(tif.nodata)
        # each tile's centre falls in the pixel holding its prediction and spread
        centres = frame.geometry.centroid
        values = np.array([v for v in tif.sample(zip(centres.x, centres.y, strict=True))])
        np.testing.assert_allclose(values[:, 0], frame["prediction"], rtol=1e-5)
        np.testing.assert_allclose(values[:, 1], frame["pred_std"], rtol=1e-5)
        assert tif.bounds.left >= left - 1e-6 and tif.bounds.top <= top + 1e-6  # inside the crop's grid
    assert (tmp_path / "train-records" / "lc_map.png").read_bytes()[:4] == b"\x89PNG"
