"""engine/compare/runs.py: every reused run is keyed on the configuration that produced it, so a changed flag
never reuses or resumes a run made with other flags (pretraining, random init, end-to-end training)."""

import os

import numpy as np
import pytest
import torch

import compare
from engine.compare import runs
from models.loading import load_image_encoder


def _args(tmp_path, *extra):
    return compare.parse_args(["--out", str(tmp_path / "o"), "--jobs", "0", "--epochs", "2", *extra])


def test_pretraining_key_changes_with_every_flag_passed_to_mmgr_and_with_the_data(tmp_path):
    base = _args(tmp_path)
    key = runs.pretrain_key(base, "data1", "mmgr", 0)
    assert key == runs.pretrain_key(_args(tmp_path), "data1", "mmgr", 0)
    assert key == runs.pretrain_key(_args(tmp_path, "--jobs", "2", "--knn", "5", "--bound_lr", "1"), "data1", "mmgr", 0)
    changed = [
        ("--lr", "0.002"),
        ("--img_size", "48"),
        ("--augment", "gpu"),
        ("--resnet", "resnet34"),
        ("--batch_size", "16"),
        ("--cos", "0"),
        ("--precision", "bf16"),
        ("--epochs", "3"),
        ("--pack", "1"),
    ]
    keys = {runs.pretrain_key(_args(tmp_path, *flag), "data1", "mmgr", 0) for flag in changed}
    keys |= {runs.pretrain_key(base, "data2", "mmgr", 0), runs.pretrain_key(base, "data1", "mmgr", 1)}
    keys |= {runs.pretrain_key(base, "data1", v, 0) for v in ("simclr", "lambda_0.25")}
    assert key not in keys and len(keys) == len(changed) + 4


def test_pretraining_is_keyed_on_the_treatment_of_tiles_without_pois(tmp_path):
    a = _args(tmp_path)
    for variant, behaviour in (("mmgr", "exclude"), ("img_poi", "exclude"), ("mmgr_include", "include")):
        argv = runs.pretrain_argv(a, tmp_path, tmp_path / "o", "fp", variant, 0)
        assert argv[argv.index("--empty_poi_tiles") + 1] == behaviour and argv.count("--empty_poi_tiles") == 1
    assert "--empty_poi_tiles" not in runs.pretrain_argv(a, tmp_path, tmp_path / "o", "fp", "simclr", 0)  # λ = 1
    keys = {runs.pretrain_key(a, "fp", v, 0) for v in ("mmgr", "mmgr_include", "img_poi", "img_poi_include")}
    assert len(keys) == 4


def test_a_changed_flag_neither_reuses_nor_resumes_the_old_run(tmp_path):
    """pretrain() with a stand-in for mmgr.main: the finished run is reused under the same flags; under another
    --lr mmgr.py is started in another folder (so its --resume auto cannot continue the old run)."""
    calls = []

    def fake_mmgr(argv):
        calls.append(argv)
        folder = argv[argv.index("--model_path") + 1]
        os.makedirs(folder, exist_ok=True)
        torch.save({}, os.path.join(folder, f"wuhan_img_{argv[argv.index('--total_epoch') + 1]}.tar"))
        print("epoch 2/2  loss 1.0")

    out, data = tmp_path / "o", tmp_path / "data"
    a = _args(tmp_path)
    first = runs.pretrain(a, data, out, "fp", "mmgr", 0, fake_mmgr)
    assert runs.pretrain(a, data, out, "fp", "mmgr", 0, fake_mmgr) == first and len(calls) == 1
    (first.parent / "checkpoint_last.pt").write_bytes(b"an unfinished run's state")
    other = runs.pretrain(_args(tmp_path, "--lr", "0.002"), data, out, "fp", "mmgr", 0, fake_mmgr)
    assert len(calls) == 2 and other.parent != first.parent
    assert calls[1][calls[1].index("--model_path") + 1] == str(other.parent.resolve())
    assert "--resume" in calls[1] and calls[1][calls[1].index("--lr") + 1] == "0.002"
    runs.pretrain(a, data, out, "fp2", "mmgr", 0, fake_mmgr)  # the same flags on other data: a new run
    assert len(calls) == 3


def test_random_init_is_keyed_on_the_backbone(tmp_path):
    r18 = runs.random_checkpoint(_args(tmp_path), tmp_path, 0)
    r34 = runs.random_checkpoint(_args(tmp_path, "--resnet", "resnet34"), tmp_path, 0)
    assert r18 != r34 and load_image_encoder(r34).resnet == "resnet34" and load_image_encoder(r18).resnet == "resnet18"
    assert runs.random_checkpoint(_args(tmp_path), tmp_path, 0) == r18


def test_fingerprint_sees_a_changed_file(tmp_path):
    (tmp_path / "img").mkdir()
    (tmp_path / "img" / "a.png").write_bytes(b"1")
    before = runs.fingerprint([tmp_path / "img", tmp_path / "list.txt"])
    assert before == runs.fingerprint([tmp_path / "img", tmp_path / "list.txt"])
    (tmp_path / "list.txt").write_text("a.png\n")
    assert runs.fingerprint([tmp_path / "img", tmp_path / "list.txt"]) != before


def test_end_to_end_runs_are_reused_by_configuration_only(tmp_path):
    a = _args(tmp_path, "--batch_size", "4", "--img_size", "16", "--resnet", "resnet18")
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (12, 3, 24, 24), generator=g, dtype=torch.uint8)
    y = images.float().mean((1, 2, 3)).double().numpy()[:, None]
    train, val = (images[:8], y[:8]), (images[8:], y[8:])

    def fit(fraction=1.0, epochs=1, data="d", start=None):
        return runs.train_cached(
            a, tmp_path, data, "pop1km", fraction, 0, start, epochs, train, val, torch.device("cpu")
        )

    res, trained = fit()
    assert trained and np.isfinite(res["R2"])
    again, trained = fit()
    assert not trained and again == pytest.approx(res)
    assert fit(fraction=0.5)[1]  # another configuration: trained, not reused
    ckpt = runs.random_checkpoint(a, tmp_path, 0)
    assert fit(start=("mmgr", ckpt, "mmgr_s0_abc"))[1] and not fit(start=("mmgr", ckpt, "mmgr_s0_abc"))[1]
    keys = {
        runs.config_key({**base, k: v})
        for base in [{"data": "d", "epochs": 1, "start": "random", "lr": 1e-3}]
        for k, v in (("data", "other"), ("epochs", 2), ("start", "mmgr_s0_other"), ("lr", 1e-4))
    }
    assert len(keys) == 4 and runs.config_key({"epochs": 1, "data": "d"}) == runs.config_key({"data": "d", "epochs": 1})
