"""utils/fileio.py: a write the storage refuses keeps the previous file bit-identical, leaves no
temporary file and says in one sentence which file, how much, why and what to do (exit 74)."""

import errno
import io
import os
import pickle
import resource
import signal
import stat
import tempfile

import numpy as np
import pytest
import torch

from utils import fileio
from utils.diskspace import human_bytes
from utils.errors import EXIT_STORAGE, StorageError
from utils.fileio import (
    WriteFailed,
    atomic_path,
    atomic_save,
    atomic_save_npy,
    atomic_write,
    atomic_write_bytes,
    write_advice,
    write_failure,
)


def previous(tmp_path):
    path = tmp_path / "ck" / "checkpoint_last.pt"
    atomic_save({"w": torch.arange(5.0)}, path)
    return path, path.read_bytes()


def assert_untouched(path, before):
    assert path.read_bytes() == before
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name]  # no temporary file left


class FailingFile(io.RawIOBase):
    """A real file whose writes fail with ``err`` once ``limit`` bytes are on disk (a disk filling up)."""

    def __init__(self, f, limit, err):
        self.f, self.limit, self.err, self.n = f, limit, err, 0

    def writable(self):
        return True

    def write(self, b):
        b = bytes(b)
        self.n += self.f.write(b[: max(self.limit - self.n, 0)])  # what still fits lands on disk
        self.f.flush()
        if self.n < self.limit or len(b) == 0:
            return len(b)
        raise OSError(self.err, os.strerror(self.err))

    def fileno(self):
        return self.f.fileno()

    def close(self):
        self.f.close()
        super().close()


@pytest.fixture
def disk_fills(monkeypatch):
    """``disk_fills(limit, err)``: the next files opened by atomic_write fail after ``limit`` bytes."""

    def arm(limit=3000, err=errno.ENOSPC):
        real = os.fdopen
        monkeypatch.setattr(fileio.os, "fdopen", lambda fd, mode: FailingFile(real(fd, mode), limit, err))

    return arm


def test_atomic_save_mid_write_enospc(tmp_path, disk_fills):
    path, before = previous(tmp_path)
    disk_fills(3000)
    with pytest.raises(WriteFailed) as err:
        atomic_save({"w": torch.zeros(256, 256)}, path)  # 256 KiB; torch reports its own RuntimeError
    e = err.value
    assert_untouched(path, before)
    assert e.exit_code == EXIT_STORAGE == 74 and isinstance(e, StorageError) and e.errno == errno.ENOSPC
    assert isinstance(e, OSError)  # so the scan cache's "warn and go on" (data/scan.py) still catches it
    assert e.written == 3000 and e.expected > 256 * 1024
    msg = str(e)
    assert msg.startswith(
        f"could not write {path} (2.9 KiB of about {human_bytes(e.expected)} written): the disk is full "
        "(file system at "
    )
    assert msg.endswith(
        "free); the previous file is kept; free space there or pass another folder, then run the command again"
    )


@pytest.mark.parametrize(
    "err,reason,fix",
    [
        (errno.ENOSPC, "the disk is full", "free space there"),
        (errno.EDQUOT, "the disk quota is exceeded", "free space within your quota there"),
        (errno.EFBIG, "the file exceeds the file size limit", "raise the file size limit (ulimit -f)"),
        (errno.EIO, "an I/O error occurred", "check the disk"),
        (errno.EROFS, "the file system is read-only", "remount it writable"),
        (errno.EACCES, "permission is denied", "make the folder writable"),
        (errno.EPERM, "the operation is not permitted", "make the folder writable"),
    ],
)
def test_atomic_write_each_storage_error(tmp_path, disk_fills, err, reason, fix):
    path, before = previous(tmp_path)
    disk_fills(100, err)
    with (
        write_advice("another --model_path", "continue with the same command plus --resume"),
        pytest.raises(WriteFailed) as e,
    ):
        atomic_write(path, lambda f: f.write(b"x" * 5000), expected_bytes=5000)
    assert_untouched(path, before)
    msg = str(e.value)
    assert f"(100 bytes of about 4.9 KiB written): {reason}" in msg
    assert msg.endswith(f"{fix} or pass another --model_path, then continue with the same command plus --resume")


def test_torch_error_without_errno_is_judged_by_the_free_space(tmp_path, monkeypatch):
    path, before = previous(tmp_path)

    def torn_save(obj, f):
        f.write(b"PK" * 500)
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598")

    monkeypatch.setattr(torch, "save", torn_save)
    monkeypatch.setattr(fileio, "free_bytes", lambda p: 10)
    with pytest.raises(
        WriteFailed,
        match=r"\(1000 bytes of about .* written\): it does not fit in the free space "
        r"\(file system at .*, 10 bytes free\)",
    ):
        atomic_save({"w": torch.zeros(100)}, path)
    assert_untouched(path, before)
    monkeypatch.setattr(fileio, "free_bytes", lambda p: 10**12)
    with pytest.raises(WriteFailed, match=r"written\): the write failed \(file system at"):
        atomic_save({"w": torch.zeros(100)}, path)
    assert_untouched(path, before)


def test_atomic_path_mid_write_quota_and_tempfile_refused(tmp_path, monkeypatch):
    path = tmp_path / "tile.png"
    path.write_bytes(b"old")
    with (
        pytest.raises(WriteFailed, match=r"could not write .*tile.png \(5 bytes written\): the disk quota is exceeded"),
        atomic_path(path) as tmp,
    ):
        assert tmp.suffix == ".png"
        tmp.write_bytes(b"12345")
        raise OSError(errno.EDQUOT, "Disk quota exceeded")
    assert path.read_bytes() == b"old" and os.listdir(tmp_path) == ["tile.png"]

    def refuse(*a, **k):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(tempfile, "mkstemp", refuse)
    with pytest.raises(WriteFailed, match=r"\(0 bytes of about 3 bytes written\): the file system is read-only; the"):
        atomic_write_bytes(b"new", path)
    assert path.read_bytes() == b"old"


def test_other_errors_pass_through_and_leave_no_temp(tmp_path):
    path, before = previous(tmp_path)
    with pytest.raises(ValueError, match="not a storage problem"):
        atomic_write(path, lambda f: (f.write(b"abc"), (_ for _ in ()).throw(ValueError("not a storage problem"))))
    assert_untouched(path, before)
    assert write_failure(OSError(errno.ENOENT, "x"), path) is None
    assert write_failure(RuntimeError("cannot pickle 'generator' object"), path) is None


def test_real_kernel_refusal_through_torch_save(tmp_path):
    """The kernel's own EFBIG (a file size limit, the one write failure a test can cause without root)
    through torch.save's real zip writer: the error comes back as torch's RuntimeError."""
    path, before = previous(tmp_path)
    old_handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, hard))
    try:
        with pytest.raises(WriteFailed) as err:
            atomic_save({"w": torch.zeros(512, 512)}, path)  # 1 MiB
        with pytest.raises(WriteFailed):
            atomic_save_npy(np.zeros((512, 512)), tmp_path / "ck" / "a.npy")
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, old_handler)
    assert err.value.errno == errno.EFBIG and isinstance(err.value.__cause__, (RuntimeError, OSError))
    assert "the file exceeds the file size limit" in str(err.value)
    assert_untouched(path, before)


def test_write_failed_crosses_a_process_boundary_unchanged(tmp_path):
    with write_advice("another --out", "run the command again with --overwrite"):
        err = WriteFailed(tmp_path / "t.tensor", errno=errno.ENOSPC, written=10, expected=100)
    back = pickle.loads(pickle.dumps(err))  # as multiprocessing returns a worker's exception
    assert type(back) is WriteFailed and str(back) == str(err) and back.exit_code == EXIT_STORAGE
    assert (back.path, back.errno, back.written, back.expected) == (err.path, errno.ENOSPC, 10, 100)


def test_published_files_get_the_umask_mode_not_mkstemps_private_one(tmp_path):
    mask = os.umask(0o022)
    os.umask(mask)
    atomic_write_bytes(b"x", tmp_path / "a.bin")
    with atomic_path(tmp_path / "b.tif") as tmp:
        tmp.write_bytes(b"y")
    for name in ("a.bin", "b.tif"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o666 & ~mask
