"""Free space: how much a folder's file system can take, a check before a long run, and the size of
what ``torch.save`` will write (docs/run_folder.md, "Disk space").

The check stops with one sentence (:class:`NotEnoughSpace`, exit 74) when the estimate does not fit,
and warns on stderr when it fits only barely: with less than :data:`MARGIN_FRACTION` of the estimate
or :data:`MARGIN_BYTES`, whichever is larger, to spare (an estimate is not exact, and other
programs write to the same disk while a run lasts days).
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch

from utils.errors import StorageError

__all__ = [
    "NotEnoughSpace",
    "human_bytes",
    "existing_parent",
    "mount_point",
    "free_bytes",
    "check_free_space",
    "state_nbytes",
    "adam_state_nbytes",
    "MARGIN_FRACTION",
    "MARGIN_BYTES",
    "TENSOR_OVERHEAD",
    "SAVE_OVERHEAD",
]

MARGIN_FRACTION = 0.10
MARGIN_BYTES = 100 * 2**20
# torch.save writes a zip: per tensor a storage entry (local header, 64-byte alignment, central
# directory record) and its pickled rebuild call with the key; per file the pickle and the zip's own
# records. Measured with torch 2.14 on the ResNet-18 and Set2Set encoders' state dicts: 330-400 bytes
# per tensor (tests/utils/test_diskspace.py checks that the estimate is never below the real size).
TENSOR_OVERHEAD = 512
SAVE_OVERHEAD = 4096


class NotEnoughSpace(StorageError):
    """The estimate of what must be written does not fit in the free space (exit 74)."""


def human_bytes(n: float) -> str:
    """``1536`` -> ``'1.5 KiB'``: binary units, as ``df -h`` and ``du -h`` count."""
    n = float(n)
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{int(n)} bytes" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def existing_parent(path: str | Path) -> Path:
    """``path`` itself if it exists, else its nearest existing ancestor (a folder about to be created
    lives on that one's file system)."""
    p = Path(path).absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


def mount_point(path: str | Path) -> Path:
    """The mount point of the file system that holds ``path`` (or would hold it), for messages."""
    p = existing_parent(path)
    p = p if p.is_dir() else p.parent
    while not os.path.ismount(p) and p != p.parent:
        p = p.parent
    return p


def free_bytes(path: str | Path) -> int:
    """Bytes an unprivileged process may still write on ``path``'s file system (``statvfs`` f_bavail)."""
    return shutil.disk_usage(existing_parent(path)).free


def check_free_space(folder: str | Path, need_bytes: int, what: str, *, another: str = "another folder") -> int:
    """Stop if ``need_bytes`` do not fit in ``folder``'s free space; warn if they fit only barely.

    ``what`` names the writer in the sentence ("this run's checkpoints and logs"); ``another`` is the
    alternative the user can pass ("another --model_path"). Returns the free bytes.
    """
    free = free_bytes(folder)
    need = max(int(need_bytes), 0)
    where = f"{Path(folder)} (file system at {mount_point(folder)})"
    if need > free:
        raise NotEnoughSpace(
            f"{what} needs about {human_bytes(need)} in {where} but only {human_bytes(free)} is "
            f"free there; free at least {human_bytes(need - free)} or pass {another}"
        )
    margin = max(MARGIN_FRACTION * need, MARGIN_BYTES)
    if need and free - need < margin:
        print(
            f"warning: {what} needs about {human_bytes(need)} in {where} and {human_bytes(free)} is free: only "
            f"{human_bytes(free - need)} to spare (less than {human_bytes(margin)}); a save may fail if anything "
            "else writes there",
            file=sys.stderr,
            flush=True,
        )
    return free


def _tensors(obj: Any) -> Iterable[torch.Tensor]:
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, dict):
        for v in obj.values():
            yield from _tensors(v)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            yield from _tensors(v)


def state_nbytes(obj: Any) -> int:
    """About the bytes ``torch.save(obj)`` writes: every storage once (torch.save writes a view's whole
    storage, and a storage shared by several tensors once), plus the per-tensor and per-file overheads.

    ``obj``: tensors in nested dicts / lists / tuples (a state dict, an optimiser state, a checkpoint);
    other leaves count as part of the fixed overhead. Meta tensors count their would-be size.
    """
    seen: set[tuple[str, int, int]] = set()
    total, n = SAVE_OVERHEAD, 0
    for t in _tensors(obj):
        n += 1
        if t.device.type == "meta":
            total += t.numel() * t.element_size()
            continue
        storage = t.untyped_storage()
        key = (str(t.device), storage.data_ptr(), storage.nbytes())
        if key not in seen:
            seen.add(key)
            total += storage.nbytes()
    return total + n * TENSOR_OVERHEAD


def adam_state_nbytes(params: Iterable[torch.Tensor]) -> int:
    """About the bytes of an Adam/AdamW optimiser's ``state_dict()`` once it has stepped: two moments of
    each parameter's size and dtype plus a scalar step (estimated before the first step, when the
    state is still empty)."""
    total, n = SAVE_OVERHEAD, 0
    for p in params:
        total += 2 * p.numel() * p.element_size() + 4
        n += 3
    return total + n * TENSOR_OVERHEAD
