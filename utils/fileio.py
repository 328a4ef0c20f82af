"""Atomic file writes and safe torch loading, for every module that writes or reads a file.

A file is written to a temporary name in its own folder (same file system), flushed, optionally
fsynced, and renamed over the final name: a reader, or a run that crashes mid-write, sees either the
previous file or the new one, never a torn one. ``durable=True`` (the default) also fsyncs the file and
its folder so the rename survives a power cut; bulk writers of many small, re-creatable files
(prepared tiles, packed shards) pass ``durable=False`` (a fsync per file costs milliseconds each).

Loading uses ``torch.load(..., weights_only=True)``: a pickle that would construct arbitrary objects is
refused, so a malicious ``.tensor`` or checkpoint file runs nothing.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch

from utils.errors import UserError

__all__ = ["atomic_write", "atomic_path", "atomic_save", "atomic_write_text", "atomic_write_bytes", "atomic_save_npy",
           "load_file"]


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
def atomic_path(path: str | Path, *, durable: bool = True) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it is renamed to ``path``, on error removed.

    For writers that need a file name rather than a file object (PIL, GDAL, sqlite). The temporary
    name keeps ``path``'s suffix, so libraries that pick a format by extension still do.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=f".tmp{path.suffix}", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        if durable:
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if durable:
        _fsync_dir(path.parent)


def atomic_write(path: str | Path, write: Callable[[IO[bytes]], object], *, durable: bool = True) -> None:
    """Call ``write(f)`` on a binary file object, then publish the result as ``path`` atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            if durable:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    if durable:
        _fsync_dir(path.parent)


def atomic_save(obj: Any, path: str | Path, *, durable: bool = True) -> None:
    """``torch.save(obj)`` to ``path`` atomically."""
    atomic_write(path, lambda f: torch.save(obj, f), durable=durable)


def atomic_write_text(text: str, path: str | Path, *, durable: bool = True) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    atomic_write(path, lambda f: f.write(text.encode("utf-8")), durable=durable)


def atomic_write_bytes(data: bytes, path: str | Path, *, durable: bool = True) -> None:
    """Write ``data`` to ``path`` atomically."""
    atomic_write(path, lambda f: f.write(data), durable=durable)


def atomic_save_npy(array: np.ndarray, path: str | Path, *, durable: bool = False) -> None:
    """``np.save(array)`` to ``path`` atomically (not fsynced by default: bulk, re-creatable data)."""
    atomic_write(path, lambda f: np.save(f, array), durable=durable)


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
        kind = ("contains pickled objects other than tensors, refused because loading them could run code" if unsafe
                else "is not a readable torch file (truncated, corrupt or another format)")
        raise UserError(f"{path} {kind}; re-create this {what}") from None
