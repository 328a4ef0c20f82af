"""mmgr.py's speed options run end to end on CPU and keep the published files (through ``mmgr.main`` in the
test process: the script as a process is tested in test_end_to_end.py, and a start costs 4 s of imports)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import mmgr
from data.pack import pack
from tests.conftest import ROOT, run_script
from tests.scripts.test_end_to_end import PRETRAIN


@pytest.mark.slow
@pytest.mark.parametrize(
    "extra",
    [
        ["--augment", "gpu", "--precision", "bf16"],
        ["--channels_last", "false", "--precision", "fp16"],
        ["--packed", "--augment", "gpu"],
        ["--packed"],
    ],
)
def test_speed_modes_train(tmp_path: Path, tiny_data, extra, monkeypatch):
    data = tiny_data
    if "--packed" in extra:
        data = tmp_path / "packed"
        pack(tiny_data, data, shard_size=5, progress=False)
        extra = [e for e in extra if e != "--packed"]
    monkeypatch.chdir(tmp_path)  # --train_record writes under ./train-records
    mmgr.main(
        [
            "--data_path",
            str(data),
            "--model_path",
            str(tmp_path / "ck"),
            "--train_record",
            "rec.txt",
            *PRETRAIN,
            "--img_size",
            "24",
            "--total_epoch",
            "1",
            *extra,
        ]
    )
    assert (tmp_path / "train-records" / "rec.txt").read_text().startswith("Step [")
    log = json.loads((tmp_path / "ck" / "train_log.jsonl").read_text())
    assert log["loss"] > 0 and log["samples_per_s"] > 0
    state = torch.load(tmp_path / "ck" / "wuhan_img_1.tar", weights_only=True)
    assert all(torch.isfinite(v.float()).all() for v in state.values())
    resumable = torch.load(tmp_path / "ck" / "checkpoint_last.pt", weights_only=True)
    # fp16's loss scale travels with the resumable checkpoint; the other modes have none to keep.
    assert ("scaler" in resumable) == ("fp16" in extra)
    if "fp16" in extra:
        assert resumable["scaler"]["scale"] > 0


@pytest.mark.slow
def test_sync_bn_on_cpu_is_a_user_error(tmp_path: Path, tiny_data):
    r = run_script(
        [
            str(ROOT / "mmgr.py"),
            "--data_path",
            str(tiny_data),
            "--model_path",
            str(tmp_path / "ck"),
            *PRETRAIN,
            "--sync_bn",
        ],
        cwd=tmp_path,
    )
    assert r.returncode == 2 and "--sync_bn needs CUDA" in r.stderr and "Traceback" not in r.stderr
