"""The engine restructuring (issue 10) changed no behaviour: the code before it, taken from git history,
and the code now give bit-identical weights from the same flags and data, and a checkpoint_last.pt
written mid-epoch by the earlier code resumes under the current code to the same end."""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import torch

import mmgr
from tests.conftest import ROOT, make_layout
from utils.errors import UserError

BEFORE = "8f882b6"  # main just before the restructuring
FLAGS = [
    "--resnet",
    "resnet18",
    "--img_size",
    "16",
    "--batch_size",
    "4",
    "--projection_dim",
    "8",
    "--workers",
    "0",
    "--lr",
    "1e-3",
    "--total_epoch",
    "2",
    "--device",
    "cpu",
    "--save_every_steps",
    "1",
    "--deterministic",
    "--channels_last",
    "false",
]  # the earlier default on CPU (now on where AVX-512 makes it faster)
# The earlier code's treatment of tiles without POIs (the current default leaves them out of the image–POI term).
PUBLISHED_EMPTY = ["--empty_poi_tiles", "include"]
# Runs the earlier mmgr.py and dies (as a SIGKILL would) right after its first mid-epoch checkpoint.
DIE_AFTER_MID_EPOCH_SAVE = """
import os, sys
sys.path.insert(0, sys.argv[1])
import utils.checkpoint as checkpoint
save = checkpoint.save_resumable
def save_then_die(*args, **kwargs):
    path = save(*args, **kwargs)
    if kwargs.get("step"):
        os._exit(9)
    return path
checkpoint.save_resumable = save_then_die
import mmgr
mmgr.main(sys.argv[2:])
"""


def earlier_tree(dest: Path) -> Path:
    """The repository at BEFORE, extracted from git into ``dest``."""
    if subprocess.run(
        ["git", "-C", str(ROOT), "cat-file", "-e", f"{BEFORE}^{{commit}}"], capture_output=True
    ).returncode:
        pytest.skip(f"commit {BEFORE} is not in this clone's history (a shallow clone); fetch it to run this check")
    blob = subprocess.run(
        ["git", "-C", str(ROOT), "archive", "--format=tar", BEFORE], capture_output=True, check=True
    ).stdout
    with tarfile.open(fileobj=io.BytesIO(blob)) as tar:
        tar.extractall(dest, filter="data")
    return dest


def run_earlier(tree: Path, cwd: Path, args: list[str], die_after_save: bool = False) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(tree), OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    cmd = ["-c", DIE_AFTER_MID_EPOCH_SAVE, str(tree)] if die_after_save else [str(tree / "mmgr.py")]
    return subprocess.run([sys.executable, *cmd, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def final_weights(model_path: Path) -> dict[str, torch.Tensor]:
    img = torch.load(model_path / "wuhan_img_2.tar", weights_only=True)
    poi = torch.load(model_path / "wuhan_poi_2.tar", weights_only=True)
    return {**{f"img.{k}": v for k, v in img.items()}, **{f"poi.{k}": v for k, v in poi.items()}}


def assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    differ = [k for k in a if not torch.equal(a[k], b[k])]
    assert not differ, f"{len(differ)} tensors differ, e.g. {differ[0]}"


@pytest.mark.slow
def test_earlier_code_and_its_mid_epoch_checkpoint_agree_with_the_current_code(tmp_path, monkeypatch, capsys):
    tree = earlier_tree(tmp_path / "before")
    data = make_layout(tmp_path / "d", n_tiles=8, size=16)

    def args(model: str, record: str, *extra: str) -> list[str]:
        return [
            "--data_path",
            str(data),
            "--model_path",
            str(tmp_path / model),
            "--train_record",
            record,
            *FLAGS,
            *extra,
        ]

    assert run_earlier(tree, tmp_path, args("m_before", "before.txt")).returncode == 0
    # The earlier code let tiles without POIs into the image–POI term; the current code does so with this flag.
    # The current code runs in the test process (mmgr.main): what is compared is the code, not the process.
    monkeypatch.chdir(tmp_path)  # --train_record writes under ./train-records, as the earlier runs' do
    mmgr.main(args("m_now", "now.txt", *PUBLISHED_EMPTY))
    assert_same(final_weights(tmp_path / "m_before"), final_weights(tmp_path / "m_now"))

    killed = run_earlier(tree, tmp_path, args("m_mixed", "mixed.txt"), die_after_save=True)
    assert killed.returncode == 9, killed.stderr
    ckpt = torch.load(tmp_path / "m_mixed" / "checkpoint_last.pt", weights_only=True)
    assert (ckpt["epoch"], ckpt["step"]) == (0, 1)  # written mid-epoch by the earlier code
    # Without the flag the current default (exclude) would be refused: the checkpoint records no value.
    with pytest.raises(UserError, match=re.escape("--empty_poi_tiles include (now exclude)")):
        mmgr.main(args("m_mixed", "mixed.txt", "--resume"))
    capsys.readouterr()
    mmgr.main(args("m_mixed", "mixed.txt", "--resume", *PUBLISHED_EMPTY))
    out = capsys.readouterr().out
    assert "resumed from" in out and "epoch 1, step 1" in out
    assert_same(final_weights(tmp_path / "m_now"), final_weights(tmp_path / "m_mixed"))
    records = tmp_path / "train-records"
    assert (
        (records / "mixed.txt").read_text() == (records / "now.txt").read_text() == (records / "before.txt").read_text()
    )
