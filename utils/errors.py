"""User-caused errors: one sentence naming the file and the fix, non-zero exit, no traceback.

Exit statuses (docs/run_folder.md), so that a job script or scheduler can tell them apart:

* 2 (:data:`EXIT_USER_ERROR`): a :class:`UserError` — a path, a file, a flag to fix;
* 74 (:data:`EXIT_STORAGE`, ``EX_IOERR`` of sysexits.h): a :class:`StorageError` — a write failed (disk
  full, quota, read-only, I/O error) or the space check found too little room; the previous files are
  intact, and the same command (with ``--resume`` for a training run) continues once there is room;
* 75 (:data:`EXIT_BUSY`, ``EX_TEMPFAIL``): a :class:`FolderBusy` — another process holds the folder;
  retrying later, once it has ended, is the fix;
* 128 + N: stopped by signal N (utils/signals.py), 130 for Ctrl-C.
"""

from __future__ import annotations

import errno
import sys
from collections.abc import Callable

__all__ = [
    "UserError",
    "StorageError",
    "FolderBusy",
    "run_main",
    "EXIT_USER_ERROR",
    "EXIT_STORAGE",
    "EXIT_BUSY",
    "STORAGE_ERRNOS",
    "as_user_error",
    "one_sentence",
]

EXIT_USER_ERROR = 2
EXIT_STORAGE = 74  # sysexits.h EX_IOERR: "an error occurred while doing I/O on some file"
EXIT_BUSY = 75  # sysexits.h EX_TEMPFAIL: "a temporary failure ... the user is invited to retry later"

# OSErrors that mean "this storage cannot take the write", whatever the file: reported as a
# StorageError (exit 74) rather than a traceback, even when they escape the atomic writers.
STORAGE_ERRNOS = {
    errno.ENOSPC: "the disk is full",
    errno.EDQUOT: "the disk quota is exceeded",
    errno.EFBIG: "the file exceeds the file size limit",
    errno.EROFS: "the file system is read-only",
    errno.EIO: "an I/O error occurred (a failing disk or a lost network file system)",
}


class UserError(Exception):
    """An error the user can fix (a path, a file, a flag). Its message is shown as it is.

    ``exit_code`` is the process's exit status when :func:`run_main` reports it.
    """

    exit_code: int = EXIT_USER_ERROR


class StorageError(UserError):
    """The storage cannot take what must be written (disk full, quota, read-only, I/O error, too little
    free space for the run). Nothing already written was damaged."""

    exit_code = EXIT_STORAGE


class FolderBusy(UserError):
    """Another process holds the folder's lock (utils/runlock.py); try again once it has ended."""

    exit_code = EXIT_BUSY


def as_user_error(exc: BaseException) -> UserError | None:
    """``exc`` as the user error it stands for: a :class:`UserError` itself, a storage OSError (disk full,
    quota, read-only, I/O error) as a :class:`StorageError` with one sentence; None for anything else (a bug)."""
    if isinstance(exc, UserError):
        return exc
    if not isinstance(exc, OSError) or exc.errno not in STORAGE_ERRNOS:
        return None
    where = exc.filename or "a file"
    what = f"an I/O error on {where}" if exc.errno == errno.EIO else f"could not write {where}"
    return StorageError(
        f"{what}: {STORAGE_ERRNOS[exc.errno]}; free space or fix the storage there, or pass another "
        "folder, then run the command again (with --resume for a training run)"
    )


def one_sentence(exc: BaseException) -> str:
    """The user's sentence of an error (the last line of one re-raised from a DataLoader worker)."""
    msg = str(exc)
    # A UserError raised inside a DataLoader worker comes back re-wrapped with the worker's traceback
    # in its message; the user's sentence is the last line, after "...UserError: ".
    if "Traceback" in msg:
        last = [line for line in msg.strip().splitlines() if line.strip()][-1]
        msg = last.split("UserError: ", 1)[-1]
    return msg


def run_main(main: Callable[[], object]) -> None:
    """Run an entry point, turning :class:`UserError` into ``error: <sentence>`` and its ``exit_code``.

    A storage OSError that escaped every writer (an append to a record file on a full disk, say) is
    reported the same way, in one sentence with exit status 74.
    """
    try:
        main()
    except UserError as exc:
        print(f"error: {one_sentence(exc)}", file=sys.stderr)
        sys.exit(getattr(exc, "exit_code", EXIT_USER_ERROR))
    except OSError as exc:
        error = as_user_error(exc)
        if error is None:
            raise
        print(f"error: {error}", file=sys.stderr)
        sys.exit(EXIT_STORAGE)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
