"""Atomic file writes and safe torch loading, for every module that writes or reads a file.

A file is written to a temporary name in its own folder (same file system), flushed, optionally
fsynced, and renamed over the final name: a reader, or a run that crashes mid-write, sees either the
previous file or the new one, never a torn one. ``durable=True`` (the default) also fsyncs the file and
its folder so the rename survives a power cut; bulk writers of many small, re-creatable files
(prepared tiles, packed shards) pass ``durable=False`` (a fsync per file costs milliseconds each).

A write the storage refuses (disk full, quota, file size limit, read-only, I/O error, permissions, or
torch.save's own zip-writer error on such a failure) leaves the previous file as it was, removes the
temporary file and raises :class:`WriteFailed`, a user error with exit status 74 whose one sentence
names the file, its size, the cause and the fix (docs/run_folder.md).

Loading uses ``torch.load(..., weights_only=True)``: a pickle that would construct arbitrary objects is
refused, so a malicious ``.tensor`` or checkpoint file runs nothing.
"""

from __future__ import annotations

import contextlib
import errno as errnos
import os
import re
import tempfile
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch

from utils.diskspace import free_bytes, human_bytes, mount_point, state_nbytes
from utils.errors import STORAGE_ERRNOS, StorageError, UserError

__all__ = [
    "atomic_write",
    "atomic_path",
    "atomic_save",
    "atomic_write_text",
    "atomic_write_bytes",
    "atomic_save_npy",
    "load_file",
    "WriteFailed",
    "write_failure",
    "write_advice",
]

# What the user can do, in the caller's words: the engine says "another --model_path" and "continue
# with the same command plus --resume"; a bare call says "another folder" and "run the command again".
_ADVICE: ContextVar[tuple[str, str]] = ContextVar("write_advice", default=("another folder", "run the command again"))

_REASONS = {**STORAGE_ERRNOS, errnos.EACCES: "permission is denied", errnos.EPERM: "the operation is not permitted"}
_FIXES = {
    errnos.ENOSPC: "free space there",
    errnos.EDQUOT: "free space within your quota there",
    errnos.EFBIG: "raise the file size limit (ulimit -f)",
    errnos.EROFS: "remount it writable",
    errnos.EIO: "check the disk",
    errnos.EACCES: "make the folder writable",
    errnos.EPERM: "make the folder writable",
}
# torch.save reports a failed write of its zip stream as a RuntimeError of its own (with a Python file
# object, the OSError behind it is the RuntimeError's __context__); numpy's tofile (np.save to a real
# file) as an OSError without an error number. Both are judged by the sizes.
_TORCH_WRITE = re.compile(r"PytorchStreamWriter failed|unexpected pos|inline_container\.cc")
_NUMPY_WRITE = re.compile(r"\d+ requested and \d+ written")


@contextlib.contextmanager
def write_advice(another: str, rerun: str) -> Iterator[None]:
    """Within this block, a :class:`WriteFailed` tells the user to pass ``another`` (``"another
    --model_path"``) and then to ``rerun`` (``"continue with the same command plus --resume"``)."""
    token = _ADVICE.set((another, rerun))
    try:
        yield
    finally:
        _ADVICE.reset(token)


class WriteFailed(StorageError, OSError):
    """A write that the storage refused (disk full, quota, read-only, I/O error): the previous file is
    intact and the temporary file removed; exit status 74 (utils/errors.py).

    ``errno``: the error number, None when torch reported its own error without one; ``reason``: the
    cause in words; ``written``: bytes on disk when it failed; ``expected``: bytes the file should have
    had, None when unknown. Also an OSError, so that code which already treats a failed write as one
    (the scan cache's "warn and go on") keeps doing so.
    """

    def __init__(self, path: str | Path, *, errno: int | None, written: int = 0, expected: int | None = None):
        self.path, self.errno, self.written, self.expected = Path(path), errno, written, expected
        folder = self.path.parent
        free = None
        with contextlib.suppress(OSError):
            free = free_bytes(folder)
        if errno in _REASONS:
            self.reason = _REASONS[errno]
        elif expected is not None and free is not None and expected > free:
            self.reason = "it does not fit in the free space"  # torch did not say why; the sizes do
        else:
            self.reason = "the write failed"
        size = (
            f"{human_bytes(written)} of about {human_bytes(expected)} written"
            if expected
            else f"{human_bytes(written)} written"
        )
        where = ""
        if errno in (errnos.ENOSPC, errnos.EDQUOT, None) and free is not None:
            where = f" (file system at {mount_point(folder)}, {human_bytes(free)} free)"
        another, rerun = _ADVICE.get()
        fix = _FIXES.get(errno, "free space there")
        super().__init__(
            f"could not write {self.path} ({size}): {self.reason}{where}; the previous file is kept; "
            f"{fix} or pass {another}, then {rerun}"
        )
        self.errno = errno  # after OSError.__init__, which sets it from its arguments

    def __reduce__(self) -> tuple:
        # Across processes (a worker's failed write reaching its parent) the sentence travels as it was
        # made, with the advice of the context it was raised in.
        return _restored_write_failed, (str(self), self.path, self.errno, self.reason, self.written, self.expected)


def _restored_write_failed(
    message: str, path: Path, errno: int | None, reason: str, written: int, expected: int | None
) -> WriteFailed:
    exc = WriteFailed.__new__(WriteFailed)
    OSError.__init__(exc, message)
    exc.path, exc.errno, exc.reason, exc.written, exc.expected = path, errno, reason, written, expected
    return exc


def write_failure(
    exc: BaseException, path: str | Path, *, written: int = 0, expected: int | None = None
) -> WriteFailed | None:
    """``exc`` as a :class:`WriteFailed` for ``path`` when it is a storage failure (an OSError with one of
    the storage or permission error numbers anywhere in its chain, torch.save's zip-writer error or numpy's
    short write), else None."""
    if isinstance(exc, WriteFailed):
        return exc
    seen: set[int] = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, OSError) and e.errno in _REASONS:
            return WriteFailed(path, errno=e.errno, written=written, expected=expected)
        e = e.__cause__ or e.__context__
    if (isinstance(exc, RuntimeError) and _TORCH_WRITE.search(str(exc))) or (
        isinstance(exc, OSError) and exc.errno is None and _NUMPY_WRITE.search(str(exc))
    ):
        return WriteFailed(path, errno=None, written=written, expected=expected)
    return None


def _discard(tmp: str | Path | None) -> int:
    """Remove a temporary file (if any); returns its size then."""
    if tmp is None:
        return 0
    size = 0
    with contextlib.suppress(OSError):
        size = os.stat(tmp).st_size
    with contextlib.suppress(OSError):
        os.unlink(tmp)
    return size


def _umask() -> int:
    """This process's umask, read without changing it (Linux reports it in /proc; elsewhere set and restore)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


# mkstemp creates files readable by their owner alone; a published file gets the mode an ordinary
# open() would give it (0o666 less the umask), so that shared data and checkpoints stay readable.
_FILE_MODE = 0o666 & ~_umask()


def _fsync_dir(folder: Path) -> None:
    try:  # make the rename itself durable
        dfd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError:
        pass


@contextlib.contextmanager
def atomic_path(path: str | Path, *, durable: bool = True, expected_bytes: int | None = None) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it is renamed to ``path``, on error removed.

    For writers that need a file name rather than a file object (PIL, GDAL, sqlite). The temporary
    name keeps ``path``'s suffix, so libraries that pick a format by extension still do. A storage
    failure becomes :class:`WriteFailed` (``expected_bytes``, when known, goes into its sentence).
    """
    path = Path(path)
    tmp: Path | None = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=f".tmp{path.suffix}", dir=path.parent)
        os.fchmod(fd, _FILE_MODE)
        os.close(fd)
        tmp = Path(tmp_name)
        yield tmp
        if durable:
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        written = _discard(tmp)
        failed = write_failure(exc, path, written=written, expected=expected_bytes)
        if failed is not None and failed is not exc:
            raise failed from exc
        raise
    if durable:
        _fsync_dir(path.parent)


def atomic_write(
    path: str | Path, write: Callable[[IO[bytes]], object], *, durable: bool = True, expected_bytes: int | None = None
) -> None:
    """Call ``write(f)`` on a binary file object, then publish the result as ``path`` atomically.

    On a storage failure (ENOSPC, EDQUOT, EFBIG, EIO, EROFS, EACCES/EPERM, or torch.save's zip-writer
    error) the previous ``path`` is untouched, the temporary file is removed and :class:`WriteFailed`
    says in one sentence which file, how much of it (``expected_bytes`` when known), why and what to do.
    """
    path = Path(path)
    tmp: str | None = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.fchmod(fd, _FILE_MODE)
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            if durable:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        written = _discard(tmp)
        failed = write_failure(exc, path, written=written, expected=expected_bytes)
        if failed is not None and failed is not exc:
            raise failed from exc
        raise
    if durable:
        _fsync_dir(path.parent)


def atomic_save(obj: Any, path: str | Path, *, durable: bool = True) -> None:
    """``torch.save(obj)`` to ``path`` atomically (a failed write: :class:`WriteFailed`, see :func:`atomic_write`)."""
    atomic_write(path, lambda f: torch.save(obj, f), durable=durable, expected_bytes=state_nbytes(obj))


def atomic_write_text(text: str, path: str | Path, *, durable: bool = True) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    data = text.encode("utf-8")
    atomic_write(path, lambda f: f.write(data), durable=durable, expected_bytes=len(data))


def atomic_write_bytes(data: bytes, path: str | Path, *, durable: bool = True) -> None:
    """Write ``data`` to ``path`` atomically."""
    atomic_write(path, lambda f: f.write(data), durable=durable, expected_bytes=len(data))


def atomic_save_npy(array: np.ndarray, path: str | Path, *, durable: bool = False) -> None:
    """``np.save(array)`` to ``path`` atomically (not fsynced by default: bulk, re-creatable data)."""
    atomic_write(path, lambda f: np.save(f, array), durable=durable, expected_bytes=int(array.nbytes) + 128)


def load_file(path: str | Path, what: str = "checkpoint") -> Any:
    """``torch.load(path, weights_only=True)`` on CPU, with user-facing errors.

    ``weights_only`` refuses pickles that would construct arbitrary objects, so a malicious file runs
    nothing; such a file, a truncated one or a non-torch file is reported in one sentence naming the
    file (``what`` says what kind of file it should have been).
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path} does not exist; check the {what} path")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # UnpicklingError, RuntimeError (zip), EOFError...
        # weights_only refuses any pickled class or function ("GLOBAL"): such a file could run code.
        unsafe = "GLOBAL" in str(exc) or "Unsupported global" in str(exc)
        kind = (
            "contains pickled objects other than tensors, refused because loading them could run code"
            if unsafe
            else "is not a readable torch file (truncated, corrupt or another format)"
        )
        raise UserError(f"{path} {kind}; re-create this {what}") from None
