"""Kill the real script (SIGKILL, SIGTERM) and resume: bit-identical to a run never interrupted.

One reference run (uninterrupted, ``--workers 0``) is shared; the interrupted runs also use
``--workers 2``, since data order and augmentation do not depend on the number of workers.
"""

import fcntl
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tests.conftest import ROOT, make_layout, run_script

STEPS_PER_EPOCH = 4  # 16 tiles / batch 4
EPOCHS = 2
CONFIG = [
    "--batch_size",
    "4",
    "--resnet",
    "resnet18",
    "--img_size",
    "24",
    "--device",
    "cpu",
    "--projection_dim",
    "16",
    "--lr",
    "1e-3",
    "--total_epoch",
    str(EPOCHS),
    "--save_every_steps",
    "2",
    "--deterministic",
    "--train_record",
    "rec.txt",
]


def command(data: Path, model: Path, workers: int, *extra: str) -> list[str]:
    return [
        str(ROOT / "mmgr.py"),
        "--data_path",
        str(data),
        "--model_path",
        str(model),
        "--workers",
        str(workers),
        *CONFIG,
        *extra,
    ]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The uninterrupted run, made once for all pytest processes: the first to get here writes it while
    holding a lock in their shared base folder, the others wait for it and read it (pytest-xdist spreads
    this module's tests over several processes)."""
    shared = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        shared = shared.parent  # each xdist worker's base folder lies in the run's
    base = shared / "resume_kill_reference"
    with open(shared / "resume_kill_reference.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (base / "done").is_file():
            shutil.rmtree(base, ignore_errors=True)
            data = make_layout(base / "data", n_tiles=16, size=32)
            r = run_script(command(data, base / "model", 0), cwd=base)
            assert r.returncode == 0, r.stderr
            (base / "done").touch()
    return base / "data", base


def start(args: list[str], cwd: Path) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    return subprocess.Popen(
        [sys.executable, *args], cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def wait_for_lines(proc: subprocess.Popen, record: Path, n: int, timeout: float = 240) -> None:
    t0 = time.time()
    while time.time() - t0 < timeout:
        if record.is_file() and record.read_text().count("\n") >= n:
            return
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.02)
    raise AssertionError(f"{record} never reached {n} lines")


def assert_same_as_reference(ref: Path, run: Path) -> None:
    name = f"wuhan_img_{EPOCHS}.tar"
    for kind in ("img", "poi"):
        a = torch.load(ref / "model" / f"wuhan_{kind}_{EPOCHS}.tar", weights_only=True)
        b = torch.load(run / "model" / f"wuhan_{kind}_{EPOCHS}.tar", weights_only=True)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), f"{name} differs"
    # Records: the same lines, none lost or duplicated (losses are bit-identical, so are the lines).
    assert (run / "train-records" / "rec.txt").read_text() == (ref / "train-records" / "rec.txt").read_text()
    log = [json.loads(line) for line in (run / "model" / "train_log.jsonl").read_text().splitlines()]
    ref_log = [json.loads(line) for line in (ref / "model" / "train_log.jsonl").read_text().splitlines()]
    assert [e["epoch"] for e in log] == list(range(1, EPOCHS + 1))
    assert [e["loss"] for e in log] == [e["loss"] for e in ref_log]


@pytest.mark.slow
@pytest.mark.parametrize("workers,after_lines", [(0, STEPS_PER_EPOCH + 2), (2, 3)])
def test_sigkill_then_resume_is_bit_identical(reference, tmp_path, workers, after_lines):
    data, ref = reference
    proc = start(command(data, tmp_path / "model", workers), tmp_path)
    wait_for_lines(proc, tmp_path / "train-records" / "rec.txt", after_lines)
    while not (tmp_path / "model" / "checkpoint_last.pt").is_file():
        assert proc.poll() is None
        time.sleep(0.02)
    proc.kill()  # SIGKILL: no handler, no cleanup
    proc.communicate()
    assert proc.returncode == -signal.SIGKILL
    ckpt = torch.load(tmp_path / "model" / "checkpoint_last.pt", weights_only=True)
    done = ckpt["epoch"] * STEPS_PER_EPOCH + ckpt["step"]
    assert 0 < done < EPOCHS * STEPS_PER_EPOCH
    r = run_script(command(data, tmp_path / "model", workers, "--resume", "auto"), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert f"at epoch {ckpt['epoch'] + 1}, step {ckpt['step']}" in r.stdout
    assert_same_as_reference(ref, tmp_path)


@pytest.mark.slow
def test_sigterm_saves_mid_epoch_and_resume_is_bit_identical(reference, tmp_path):
    data, ref = reference
    proc = start(command(data, tmp_path / "model", 2, "--save_every_steps", "0"), tmp_path)
    wait_for_lines(proc, tmp_path / "train-records" / "rec.txt", 1)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert "stopped by SIGTERM at epoch 1, step" in err and "--resume" in err and "Traceback" not in err
    ckpt = torch.load(tmp_path / "model" / "checkpoint_last.pt", weights_only=True)
    assert ckpt["epoch"] == 0 and 1 <= ckpt["step"] < STEPS_PER_EPOCH  # a mid-epoch checkpoint, at a step boundary
    lines = (tmp_path / "train-records" / "rec.txt").read_text().splitlines()
    assert len(lines) == ckpt["step"]
    r = run_script(command(data, tmp_path / "model", 2, "--save_every_steps", "0", "--resume"), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert_same_as_reference(ref, tmp_path)
