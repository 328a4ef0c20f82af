"""utils/runlock.py: one holder per folder, released by the kernel even on SIGKILL, and a message that
names the holder."""

import errno
import fcntl
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import ROOT
from utils.errors import EXIT_BUSY, FolderBusy, UserError
from utils.runlock import LOCK_NAME, FolderLock, describe_holder, read_holder

# A holder in its own process: takes the lock, optionally forks a child that keeps running (as a
# DataLoader worker would) and waits until the child has run, says so, then sleeps until killed.
HOLDER = """
import os, sys, time
sys.path.insert(0, sys.argv[1])
from utils.runlock import FolderLock
lock = FolderLock(sys.argv[2], purpose="pretraining").acquire()
child = os.fork() if sys.argv[3] == "fork" else 0
ready = sys.argv[2] + ".child_running"
if child == 0 and sys.argv[3] == "fork":
    open(ready, "w").close()  # the at-fork handlers have run in this child
    time.sleep(60)
    os._exit(0)
while child and not os.path.exists(ready):  # a child not yet scheduled would still hold the lock
    time.sleep(0.01)
print("locked", child, flush=True)
time.sleep(60)
"""


def start_holder(tmp_path: Path, folder: Path, fork: bool = False) -> tuple[subprocess.Popen, int]:
    script = tmp_path / "holder.py"
    script.write_text(HOLDER)
    proc = subprocess.Popen(
        [sys.executable, str(script), str(ROOT), str(folder), "fork" if fork else "-"],
        stdout=subprocess.PIPE,
        text=True,
    )
    line = proc.stdout.readline().split()
    assert line[0] == "locked", line
    return proc, int(line[1])


def test_second_holder_in_another_process_is_refused_naming_it_and_sigkill_frees_at_once(tmp_path):
    folder = tmp_path / "run"
    proc, _ = start_holder(tmp_path, folder)
    try:
        with pytest.raises(FolderBusy) as err:
            FolderLock(folder, flag="--model_path").acquire()
        msg = str(err.value)
        assert msg.startswith(f"{folder} is in use by pid {proc.pid} on host ")
        assert "holder.py" in msg and "pretraining since 20" in msg
        assert msg.endswith(
            "wait until it has ended (a killed process releases it at once), or pass another --model_path"
        )
        assert err.value.exit_code == EXIT_BUSY == 75 and msg.count(";") == 1
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    with FolderLock(folder, purpose="resume") as lock:  # at once: no stale lock to clean
        assert lock.held and read_holder(folder / LOCK_NAME)["pid"] == os.getpid()
    assert not lock.held and (folder / LOCK_NAME).is_file()  # the lock file stays, harmless


def test_forked_child_does_not_keep_the_lock_after_the_parent_is_killed(tmp_path):
    folder = tmp_path / "run"
    proc, child = start_holder(tmp_path, folder, fork=True)
    try:
        proc.kill()
        proc.wait()
        os.kill(child, 0)  # the child (a DataLoader worker, say) still runs...
        FolderLock(folder).acquire().release()  # ...but the lock went with its parent
    finally:
        try:
            os.kill(child, signal.SIGKILL)
        except ProcessLookupError:
            pass


def test_same_process_second_lock_refused_then_free_after_release(tmp_path):
    a = FolderLock(tmp_path / "f", purpose="prepare_pois", flag="--out")
    b = FolderLock(tmp_path / "f", flag="--out")
    a.acquire()
    assert a.acquire() is a  # a held lock: no-op
    with pytest.raises(FolderBusy, match=r"in use by this same process \(claimed twice\); .* pass another --out$"):
        b.acquire()
    a.release()
    a.release()  # twice is fine
    with b:
        assert b.held
    assert not b.held


def test_a_resource_beside_others_is_named_in_the_message(tmp_path):
    rec = tmp_path / "train-records" / "rec.txt"
    a = FolderLock(rec.parent, name=".rec.txt.lock", resource=rec, flag="--train_record").acquire()
    with pytest.raises(FolderBusy, match=rf"^{rec} is in use by .* another --train_record$"):
        FolderLock(rec.parent, name=".rec.txt.lock", resource=rec, flag="--train_record").acquire()
    FolderLock(rec.parent).acquire().release()  # the folder's own lock is another one
    a.release()


def test_file_system_without_locks_warns_and_goes_on(tmp_path, monkeypatch, capsys):
    def no_flock(fd, op):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", no_flock)
    lock = FolderLock(tmp_path / "nfs").acquire()
    assert lock.held and lock.unlocked
    assert "does not support file locks (No locks available); going on without one" in capsys.readouterr().err
    lock.release()
    assert not lock.held


def test_unwritable_folder_is_a_user_error(tmp_path, monkeypatch):
    def refuse(*a, **k):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(os, "open", refuse)
    with pytest.raises(UserError, match=r"cannot create the lock file .*\.mmgr\.lock \(Read-only file system\); make "):
        FolderLock(tmp_path / "ro").acquire()


def test_holder_description():
    assert describe_holder(None) == "another process (it has not written its details yet)"
    since = time.mktime((2026, 11, 28, 10, 2, 3, 0, 0, -1))
    text = describe_holder(
        {
            "pid": 7,
            "host": "n1",
            "argv": ["python", "mmgr.py"] + ["--x"] * 100,
            "since": since,
            "purpose": "pretraining",
        }
    )
    assert text.startswith("pid 7 on host n1 (python mmgr.py --x") and text.endswith(
        "...), pretraining since 2026-11-28 10:02:03"
    )
