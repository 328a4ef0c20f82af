"""Append-only record files (per-step losses, per-epoch log) that a resumed run can rewind.

Each line is written with one ``write`` and flushed, so a kill can at worst leave a torn *last*
line; earlier lines are never rewritten in place. Every resumable checkpoint stores the byte size
of each record file at that moment (after an fsync); resuming cuts the file back to that size
(atomically, through a temporary copy and a rename), so the steps trained after the checkpoint —
which the resumed run trains again — are not recorded twice, and a torn last line disappears.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from utils.fileio import atomic_write_bytes

__all__ = ["RecordFile"]


class RecordFile:
    """A line-oriented file opened for appending."""

    def __init__(self, path: str | Path):
        # Absolute: a run resumed from another cwd must not cut a different file of the same name.
        self.path = Path(path).resolve()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._f = self.path.open("a", encoding="utf-8")

    def write_line(self, line: str) -> None:
        self._f.write(line.rstrip("\n") + "\n")
        self._f.flush()

    def sync(self) -> int:
        """Make the lines written so far durable; returns the file's size in bytes."""
        self._f.flush()
        os.fsync(self._f.fileno())
        return self.path.stat().st_size

    def close(self) -> None:
        self._f.close()

    def rewind(self, size: int) -> None:
        """Cut the file back to ``size`` bytes (its size when a checkpoint was written)."""
        self._f.flush()
        now = self.path.stat().st_size
        if now == size:
            return
        if now < size:
            # Moved, edited or another cwd: nothing to cut; say so rather than guess.
            print(
                f"note: {self.path} is shorter than when the checkpoint was written ({now} < {size} bytes); "
                "left as it is",
                file=sys.stderr,
                flush=True,
            )
            return
        self._f.close()
        with self.path.open("rb") as f:
            head = f.read(size)
        atomic_write_bytes(head, self.path)
        self._f = self.path.open("a", encoding="utf-8")
