"""The real scripts, run as a user would: pretrain, resume, evaluate, and the published file formats."""

import json
import re
from pathlib import Path

import pytest
import torch

from models.image_encoder import ImageEncoder
from tests.conftest import run_script

ROOT = Path(__file__).resolve().parents[2]
PRETRAIN = [
    "--batch_size",
    "4",
    "--resnet",
    "resnet18",
    "--img_size",
    "32",
    "--device",
    "cpu",
    "--workers",
    "0",
    "--projection_dim",
    "16",
    "--lr",
    "1e-3",
]


def pretrain(tmp_path, data, model_dir, *extra):
    r = run_script(
        [
            str(ROOT / "mmgr.py"),
            "--data_path",
            str(data),
            "--model_path",
            str(model_dir),
            "--train_record",
            "rec.txt",
            *PRETRAIN,
            *extra,
        ],
        cwd=tmp_path,
    )
    assert r.returncode == 0, r.stderr
    return r


@pytest.mark.slow
def test_pretrain_resume_and_evaluate(tmp_path, tiny_data):
    full = tmp_path / "full"
    pretrain(tmp_path, tiny_data, full, "--total_epoch", "2", "--save_every", "1", "--poi_encoder", "gcn")
    names = sorted(p.name for p in full.iterdir())
    assert names == [
        ".mmgr.lock",
        "args.json",
        "checkpoint_last.pt",
        "mmgr_run.json",
        "scan_cache.json",
        "train_log.jsonl",
        "wuhan_img_1.tar",
        "wuhan_img_2.tar",
        "wuhan_poi_1.tar",
        "wuhan_poi_2.tar",
    ]
    img = torch.load(full / "wuhan_img_2.tar", weights_only=True)
    assert next(iter(img)) == "encoder.conv1.weight" and "encoder.fc.2.weight" in img
    poi = torch.load(full / "wuhan_poi_2.tar", weights_only=True)
    assert {"set2set.lstm.weight_ih_l0", "linear1.weight", "projector.1.weight", "convs.0.lin.weight"} <= set(poi)
    # The published record: one line per step (12 tiles / batch 4 = 3 steps per epoch), appended.
    lines = (tmp_path / "train-records" / "rec.txt").read_text().splitlines()
    assert len(lines) == 6
    assert re.fullmatch(r"Step \[3/3\]\t Loss1: [0-9.e-]+\t Loss2: [0-9.e-]+", lines[2])
    log = [json.loads(line) for line in (full / "train_log.jsonl").read_text().splitlines()]
    assert [e["epoch"] for e in log] == [1, 2] and all(e["loss"] > 0 for e in log)
    assert json.loads((full / "args.json").read_text())["resnet"] == "resnet18"

    # Interrupted after epoch 1, resumed: the same weights as the uninterrupted run, bit for bit.
    part = tmp_path / "part"
    pretrain(tmp_path, tiny_data, part, "--total_epoch", "1", "--poi_encoder", "gcn")
    r = pretrain(tmp_path, tiny_data, part, "--total_epoch", "2", "--poi_encoder", "gcn", "--resume")
    assert "resumed" in r.stdout
    resumed = torch.load(part / "wuhan_img_2.tar", weights_only=True)
    assert all(torch.equal(img[k], resumed[k]) for k in img)

    # Evaluation from the pretrained checkpoint: metrics from --eval_from on, then best and last.
    r = run_script(
        [
            str(ROOT / "res_pop.py"),
            "--data_path",
            str(tiny_data),
            "--ckpt",
            str(full / "wuhan_img_2.tar"),
            "--total_epoch",
            "3",
            "--eval_from",
            "2",
            "--batch_size",
            "4",
            "--img_size",
            "24",
            "--device",
            "cpu",
            "--workers",
            "0",
            "--train_record",
            "pop.txt",
        ],
        cwd=tmp_path,
    )
    assert r.returncode == 0, r.stderr
    assert len(re.findall(r"val MAE [0-9.]+  RMSE [0-9.]+  R2 -?[0-9.]+", r.stdout)) == 2
    assert re.search(r"best epoch [23]: MAE", r.stdout) and "last epoch 3: MAE" in r.stdout
    recs = [json.loads(line) for line in (tmp_path / "train-records" / "pop.txt").read_text().splitlines()]
    assert [x["epoch"] for x in recs] == [2, 3] and {"MAE", "RMSE", "R2"} <= set(recs[0])


@pytest.mark.slow
def test_published_style_checkpoint_and_newest(tmp_path, tiny_data):
    # A bare state dict as the published script writes it (no args anywhere): depth found from its keys.
    ckdir = tmp_path / "pub"
    ckdir.mkdir()
    torch.manual_seed(0)
    torch.save(ImageEncoder("resnet34", 128).state_dict(), ckdir / "wuhan_img_20.tar")
    torch.save(ImageEncoder("resnet18", 128).state_dict(), ckdir / "wuhan_img_3.tar")
    r = run_script(
        [
            str(ROOT / "res_pop.py"),
            "--data_path",
            str(tiny_data),
            "--model_path",
            str(ckdir),
            "--total_epoch",
            "1",
            "--eval_from",
            "1",
            "--batch_size",
            "4",
            "--img_size",
            "24",
            "--device",
            "cpu",
            "--workers",
            "0",
        ],
        cwd=tmp_path,
    )
    assert r.returncode == 0, r.stderr
    assert "wuhan_img_20.tar (resnet34)" in r.stdout  # newest epoch, not newest name order


@pytest.mark.slow
def test_user_errors_are_one_sentence(tmp_path, tiny_data):
    r = run_script([str(ROOT / "mmgr.py"), "--data_path", str(tmp_path / "missing"), *PRETRAIN], cwd=tmp_path)
    assert r.returncode == 2 and "Traceback" not in r.stderr and "does not exist" in r.stderr
    r = run_script(
        [str(ROOT / "mmgr.py"), "--data_path", str(tiny_data), *PRETRAIN, "--batch_size", "64"], cwd=tmp_path
    )
    assert r.returncode == 2 and "fewer than one batch" in r.stderr and "Traceback" not in r.stderr
    r = run_script(
        [
            str(ROOT / "res_pop.py"),
            "--data_path",
            str(tiny_data),
            "--ckpt",
            str(tiny_data / "pop1km" / "t001.txt"),
            "--device",
            "cpu",
            "--workers",
            "0",
            "--batch_size",
            "4",
        ],
        cwd=tmp_path,
    )
    assert r.returncode == 2 and "Traceback" not in r.stderr and "t001.txt" in r.stderr


@pytest.mark.slow
def test_demo_path_generates_pretrains_and_evaluates(tmp_path):
    # The quick start, shrunk: a 40-tile demo city, one epoch, DataLoader and scan workers on (the
    # scan once deadlocked in forked children after the city was generated in the same process).
    demo = ["--demo", "--demo_dir", str(tmp_path / "demo")]
    r = run_script(
        [
            str(ROOT / "mmgr.py"),
            *demo,
            "--demo_tiles",
            "40",
            "--total_epoch",
            "1",
            "--batch_size",
            "8",
            "--img_size",
            "32",
            "--workers",
            "2",
            "--device",
            "cpu",
        ],
        cwd=tmp_path,
        timeout=240,
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("demo: synthetic city of 40 tiles") and "not the published configuration" in r.stdout
    assert (tmp_path / "demo" / "city" / ".complete").is_file()
    assert (tmp_path / "demo" / "checkpoints" / "wuhan_img_1.tar").is_file()
    r = run_script(
        [
            str(ROOT / "res_pop.py"),
            *demo,
            "--total_epoch",
            "1",
            "--batch_size",
            "8",
            "--img_size",
            "32",
            "--workers",
            "0",
            "--device",
            "cpu",
        ],
        cwd=tmp_path,
        timeout=240,
    )
    assert r.returncode == 0, r.stderr
    assert "wuhan_img_1.tar (resnet18)" in r.stdout and re.search(
        r"last epoch 1: MAE [0-9.]+  RMSE [0-9.]+  R2 -?[0-9.]+", r.stdout
    )
