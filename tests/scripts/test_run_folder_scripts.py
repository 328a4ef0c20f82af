"""One run, one folder (docs/run_folder.md), through the real mmgr.py: a folder that holds a run is
refused unless --resume or --overwrite says what to do; a second process is refused while the first
holds the folder, and a SIGKILLed holder's folder resumes at once; a disk that fills during a save
keeps the previous checkpoint bit-identical and exits 74 with one sentence."""

from __future__ import annotations

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

import mmgr
from tests.conftest import ROOT, make_layout, run_script
from utils.errors import EXIT_BUSY, EXIT_STORAGE, FolderBusy, UserError
from utils.runlock import read_holder

TINY = [
    "--batch_size",
    "4",
    "--resnet",
    "resnet18",
    "--img_size",
    "16",
    "--device",
    "cpu",
    "--workers",
    "0",
    "--projection_dim",
    "8",
    "--lr",
    "1e-3",
    "--train_record",
    "rec.txt",
]
# mmgr.py whose disk "fills up" during the third write of checkpoint_last.pt (the saves before the first
# step and after epoch 1 succeed, the one after epoch 2 fails after 1000 bytes); the file as it was just
# before that write is copied to before_failure.pt for the test to compare.
FULL_DISK = """
import errno, io, os, shutil, sys
sys.path.insert(0, sys.argv[1])
real_fdopen = os.fdopen
seen = []

class Full(io.RawIOBase):
    def __init__(self, f):
        self.f, self.n = f, 0
    def writable(self):
        return True
    def write(self, b):
        b = bytes(b)
        self.n += self.f.write(b[: max(1000 - self.n, 0)])
        if self.n >= 1000:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return len(b)
    def fileno(self):
        return self.f.fileno()
    def close(self):
        self.f.close()
        super().close()

def fdopen(fd, mode="r", *args, **kwargs):
    f = real_fdopen(fd, mode, *args, **kwargs)
    name = os.readlink(f"/proc/self/fd/{fd}")
    if "w" in mode and os.path.basename(name).startswith(".checkpoint_last.pt."):
        seen.append(name)
        if len(seen) == 3:
            folder = os.path.dirname(name)
            shutil.copyfile(os.path.join(folder, "checkpoint_last.pt"), os.path.join(folder, "before_failure.pt"))
            return Full(f)
    return f

os.fdopen = fdopen
import mmgr
from utils.errors import run_main
run_main(lambda: mmgr.main(sys.argv[2:]))
"""


@pytest.fixture
def work(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # train-records/ goes to the cwd, as published
    make_layout(tmp_path / "d", n_tiles=8, size=16)
    return tmp_path


def train(work: Path, model: str, *extra: str) -> None:
    mmgr.main(["--data_path", str(work / "d"), "--model_path", str(work / model), *TINY, *extra])


def cmd(work: Path, model: str, *extra: str) -> list[str]:
    return [str(ROOT / "mmgr.py"), "--data_path", str(work / "d"), "--model_path", str(work / model), *TINY, *extra]


@pytest.mark.slow
@pytest.mark.parametrize(
    "kind, files, named",
    [
        ("resumable checkpoint", ["checkpoint_last.pt"], "a resumable checkpoint (checkpoint_last.pt)"),
        ("epoch files", ["wuhan_img_1.tar", "wuhan_poi_1.tar"], "2 epoch files (up to epoch 1)"),
        ("logs", ["args.json", "train_log.jsonl"], "logs (args.json, train_log.jsonl)"),
    ],
)
def test_fresh_start_refused_on_a_folder_of_each_kind_of_earlier_run(work, kind, files, named):
    train(work, "done", "--total_epoch", "1", "--save_every", "1")
    (work / "m").mkdir()
    for f in files:
        shutil.copyfile(work / "done" / f, work / "m" / f)
    before = {p.name: p.read_bytes() for p in (work / "m").iterdir()}
    with pytest.raises(UserError) as err:
        train(work, "m", "--total_epoch", "1")
    assert str(err.value) == (
        f"{work / 'm'} already holds a run ({named}); pass --resume to continue it, another "
        "--model_path, or --overwrite to replace it"
    )
    assert err.value.exit_code == 2
    assert {p.name: p.read_bytes() for p in (work / "m").iterdir() if p.name in before} == before  # nothing touched


@pytest.mark.slow
def test_overwrite_replaces_only_the_tools_files(work):
    train(work, "m", "--total_epoch", "3", "--save_every", "1")
    (work / "m" / "notes.txt").write_text("mine")
    (work / "m" / "sub").mkdir()
    (work / "m" / "sub" / "wuhan_img_9.tar").write_bytes(b"not ours to judge")
    train(work, "m", "--total_epoch", "1", "--save_every", "1", "--overwrite", "--resnet", "resnet34")
    m = work / "m"
    assert sorted(p.name for p in m.iterdir() if not p.name.startswith(".")) == [
        "args.json",
        "checkpoint_last.pt",
        "mmgr_run.json",
        "notes.txt",
        "scan_cache.json",
        "sub",
        "train_log.jsonl",
        "wuhan_img_1.tar",
        "wuhan_poi_1.tar",
    ]
    assert (m / "notes.txt").read_text() == "mine" and (m / "sub" / "wuhan_img_9.tar").is_file()
    args = json.loads((m / "args.json").read_text())
    assert args["resnet"] == "resnet34" and args["total_epoch"] == 1
    assert [json.loads(x)["epoch"] for x in (m / "train_log.jsonl").read_text().splitlines()] == [1]
    assert len((work / "train-records" / "rec.txt").read_text().splitlines()) == 2  # this run's 2 steps only
    manifest = json.loads((m / "mmgr_run.json").read_text())
    assert manifest["run_id"] == args["run_id"] and set(manifest["epoch_files"]) == {
        "wuhan_img_1.tar",
        "wuhan_poi_1.tar",
    }
    with pytest.raises(UserError, match="pass one of them"):
        train(work, "m", "--overwrite", "--resume")


@pytest.mark.slow
def test_second_process_refused_then_sigkilled_holder_resumes_at_once(work, capsys):
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    holder = subprocess.Popen(
        [sys.executable, *cmd(work, "m", "--total_epoch", "200")],
        cwd=work,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.time() + 120
        while not (
            (work / "m" / "checkpoint_last.pt").is_file()
            and (read_holder(work / "m" / ".mmgr.lock") or {}).get("pid") == holder.pid
        ):
            assert holder.poll() is None, holder.stderr.read()
            assert time.time() < deadline, "the first run never took its folder"
            time.sleep(0.1)
        # Stopped, the holder keeps its lock and leaves the CPU to the processes it must refuse.
        holder.send_signal(signal.SIGSTOP)
        second = run_script(cmd(work, "m", "--total_epoch", "1"), cwd=work)
        assert second.returncode == EXIT_BUSY and "Traceback" not in second.stderr
        assert f"pid {holder.pid}" in second.stderr and second.stderr.count("\n") == 1
        # Neither --resume nor --overwrite gets past a live holder (tried from this test's own process,
        # which saves an interpreter start each: the lock is the holder's, so the refusal is the same).
        for extra in (["--resume"], ["--overwrite"]):
            with pytest.raises(FolderBusy, match=f"pid {holder.pid}"):
                train(work, "m", "--total_epoch", "1", *extra)
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    # At once: the kernel dropped the killed holder's lock, and its checkpoint from before the first step
    # (or a later one) is there to continue from.
    capsys.readouterr()
    train(work, "m", "--total_epoch", "1", "--resume")
    assert "resumed from" in capsys.readouterr().out


@pytest.mark.slow
def test_disk_full_during_a_save_keeps_the_previous_checkpoint(work):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    r = subprocess.run(
        [sys.executable, "-c", FULL_DISK, str(ROOT), *cmd(work, "m", "--total_epoch", "2")[1:]],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    m = work / "m"
    assert r.returncode == EXIT_STORAGE, r.stderr
    assert "Traceback" not in r.stderr and r.stderr.count("\n") == 1
    assert r.stderr.startswith(f"error: could not write {m / 'checkpoint_last.pt'} (")
    assert "the disk is full" in r.stderr and "--resume" in r.stderr
    assert (m / "checkpoint_last.pt").read_bytes() == (m / "before_failure.pt").read_bytes()
    assert torch.load(m / "checkpoint_last.pt", weights_only=True)["epoch"] == 1
    assert not [p.name for p in m.iterdir() if p.name.endswith(".tmp") or ".tmp." in p.name]
