"""res_pop.py / res_func.py, their shared loop (engine/downstream.py) and tasks (engine/tasks.py) on a tiny layout."""

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from torch.utils.data import DataLoader

import res_func
import res_pop
from data.downstream import TileTargetDataset, select_fraction
from data.transforms import eval_transform
from engine.downstream import backbone_features
from engine.tasks import distribution_task, regression_task
from models.heads import with_task_head
from models.image_encoder import ImageEncoder
from models.loading import load_image_encoder
from tests.conftest import ROOT, make_layout, run_script

FAST = ["--batch_size", "4", "--img_size", "24", "--device", "cpu", "--workers", "0", "--total_epoch", "2", "--eval_from", "1"]
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
    recs = [json.loads(l) for l in open("train-records/res_func.txt")]
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


def test_res_pop_options_end_to_end(setup, tmp_path):
    data, ckpt = setup
    r = run_script([str(ROOT / "res_pop.py"), "--data_path", str(data), "--ckpt", str(ckpt), *FAST, "--target_dir", "gdp1km",
                    "--log_target", "--label_fraction", "0.5", "--finetune", "--backbone_lr", "1e-5", "--seeds", "0", "1",
                    "--train_record", "gdp.txt"], cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stdout.count("4 training and 4 validation tiles; fine-tuning the whole encoder") == 2
    assert "mean ± std over 2 seeds (last): MAE" in r.stdout
    png = tmp_path / "train-records" / "gdp_scatter.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rows = list(csv.DictReader(open(tmp_path / "train-records" / "gdp_pred.csv")))
    assert len(rows) == 8 and float(rows[0]["true_value"]) == pytest.approx(float((data / "gdp1km" / "t008.txt").read_text()))


def test_finetune_moves_backbone_frozen_does_not(setup):
    data, ckpt = setup
    seen = {}
    before = torch.load(ckpt, weights_only=True)["encoder.layer1.0.conv1.weight"]
    for ft in ("0", "1"):
        captured = {}
        real_adam = torch.optim.Adam

        class Spy(real_adam):
            def __init__(self, groups, **kw):
                super().__init__(groups, **kw)
                captured["groups"] = self.param_groups
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
    assert len(seen["0"]) == 1 and seen["0"][0][0] == 5e-2
    assert len(seen["1"]) == 2 and seen["1"][1][0] == 1e-4  # documented default backbone lr


@pytest.mark.parametrize("content,match", [("0.5 0.5 0.5", "summing to"), ("-0.5 1.0 0.5", "negative proportion")])
def test_res_func_bad_distributions(setup, tmp_path, content, match):
    data, ckpt = setup
    (data / "func" / "t010.txt").write_text(content + "\n")
    r = run_script([str(ROOT / "res_func.py"), "--data_path", str(data), "--ckpt", str(ckpt), *FAST], cwd=tmp_path)
    assert r.returncode == 2 and match in r.stderr and "Traceback" not in r.stderr


def test_res_func_types_mismatch_and_label_fraction_too_small(setup, tmp_path):
    data, ckpt = setup
    (data / "func_types.txt").write_text("a\nb\n")
    r = run_script([str(ROOT / "res_func.py"), "--data_path", str(data), "--ckpt", str(ckpt), *FAST], cwd=tmp_path)
    assert r.returncode == 2 and "func_types.txt names 2" in r.stderr
    r = run_script([str(ROOT / "res_pop.py"), "--data_path", str(data), "--ckpt", str(ckpt), *FAST, "--label_fraction", "0.2"],
                   cwd=tmp_path)
    assert r.returncode == 2 and "fewer than one batch" in r.stderr and "Traceback" not in r.stderr


def test_head_bias_init_mean_starts_at_the_mean_target():
    last = torch.nn.Linear(8, 1)
    regression_task().init_head(last, torch.tensor([[2.0], [4.0], [9.0]]))
    assert torch.allclose(last.bias, torch.tensor([5.0]))
    last = torch.nn.Linear(8, 3)
    y = torch.tensor([[0.5, 0.5, 0.0], [0.1, 0.3, 0.6]])
    distribution_task(("a", "b", "c")).init_head(last, y)
    # softmax of the bias alone is the mean distribution
    assert torch.allclose(torch.softmax(last.bias, 0), y.mean(0), atol=1e-5)


def test_task_hooks():
    """The hooks the loop calls instead of asking which task it runs."""
    reg, logreg, dist = regression_task(), regression_task(log_target=True), distribution_task(TYPES)
    assert reg.warning(np.zeros((3, 1))) and "dead head" in reg.warning(np.zeros((3, 1)))
    assert reg.warning(np.array([[0.0], [2.0]])) is None and dist.warning(np.zeros((2, 3))) is None
    assert reg.scatter and not dist.scatter and logreg.log_scale and not reg.log_scale
    y = torch.tensor([[0.0], [np.e - 1]])
    assert torch.allclose(logreg.to_train(y), torch.tensor([[0.0], [1.0]]))
    np.testing.assert_allclose(logreg.to_original(np.array([[1.0]])), [[np.e - 1]])
    with pytest.raises(Exception, match="negative targets"):
        logreg.check(torch.tensor([[-1.0]]), Path("pop1km"))
    rows = dist.check(torch.tensor([[0.2, 0.2, 0.62]]), Path("func"))  # rounded files are renormalised
    assert torch.allclose(rows.sum(1), torch.ones(1))
    out = torch.tensor([[-1.0, 2.0, 0.5]])
    assert torch.allclose(dist.predict(out), torch.softmax(out, 1)) and torch.equal(reg.predict(out[:, :1]), torch.zeros(1, 1))
