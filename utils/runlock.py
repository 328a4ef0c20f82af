"""One writer per folder: an exclusive operating-system lock held for the whole life of a run.

``flock(LOCK_EX | LOCK_NB)`` on a lock file inside the folder (``.mmgr.lock``). The kernel drops the
lock when the process ends, however it ends (SIGKILL, a crash, a power cut of a local disk), so no
stale lock ever needs cleaning by hand and a ``--resume`` right after a kill gets the folder at once.
The lock file is never deleted (deleting it while another process waits on it would let two
processes lock two different files of the same name); it stays in the folder, a few hundred bytes
that name the last holder. Its content is for messages only, never for the decision: a second
process that finds the lock taken stops with one sentence naming the holder (:class:`FolderBusy`,
exit status 75).

Why ``flock`` and not ``fcntl``/``lockf`` record locks: a record lock is dropped as soon as the process
closes *any* descriptor of the file (reading the holder's details would unlock it), and it does not
conflict within one process, so two claims of the same folder by one process would both succeed.
A ``flock`` belongs to the open file: a child made by ``fork`` (DataLoader workers) would share it and
keep it held after the parent is killed, so every child closes its copy right after the fork
(:func:`os.register_at_fork`); the parent's lock is unaffected.

Network file systems: see docs/run_folder.md ("The lock"). Where the file system refuses locks the
run goes on with a warning rather than not at all.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import sys
import time
from pathlib import Path
from typing import Any

from utils.errors import FolderBusy, UserError

__all__ = ["FolderLock", "LOCK_NAME", "read_holder", "describe_holder"]

LOCK_NAME = ".mmgr.lock"
# errno values with which a file system says it does not do flock at all (Lustre mounted without
# flock, some FUSE and SMB mounts); EWOULDBLOCK/EAGAIN mean "held by another".
_NO_LOCKS = {errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL}
_HELD: dict[int, FolderLock] = {}  # fd -> lock, for the at-fork handler


def _close_in_child() -> None:
    # A forked child shares the open file and so the lock; closing the child's descriptor leaves the
    # parent's lock in place, and lets the kernel free it as soon as the parent dies.
    for fd in list(_HELD):
        try:
            os.close(fd)
        except OSError:
            pass
    for lock in _HELD.values():
        lock._fd = None
    _HELD.clear()


os.register_at_fork(after_in_child=_close_in_child)


def read_holder(lock_file: str | Path) -> dict[str, Any] | None:
    """The holder details written in ``lock_file`` (pid, host, command, since, purpose), None if absent
    or unreadable. Opened and closed on its own descriptor: harmless for a flock held by this process."""
    try:
        text = Path(lock_file).read_text(encoding="utf-8")
        holder = json.loads(text) if text.strip() else None
    except (OSError, ValueError):
        return None
    return holder if isinstance(holder, dict) else None


def describe_holder(holder: dict[str, Any] | None) -> str:
    """``'pid 4242 on host node7 (python mmgr.py --model_path m ...), pretraining since 2026-11-28 10:02:03'``."""
    if not holder:
        return "another process (it has not written its details yet)"
    cmd = " ".join(str(a) for a in holder.get("argv", [])) or "?"
    if len(cmd) > 160:
        cmd = cmd[:157] + "..."
    since = holder.get("since")
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(since)) if isinstance(since, (int, float)) else "?"
    purpose = f"{holder['purpose']} " if holder.get("purpose") else ""
    return f"pid {holder.get('pid', '?')} on host {holder.get('host', '?')} ({cmd}), {purpose}since {when}"


class FolderLock:
    """Exclusive, non-blocking lock on a folder (or, with ``name``, on one resource beside others).

    ``purpose`` goes into the holder details ("pretraining", "prepare_pois"); ``flag`` is the option the
    user can change to use another folder ("--model_path", "--out"); ``resource`` is what the message
    names (default: the folder). Use as a context manager or call :meth:`acquire`/:meth:`release`; the
    lock also ends with the process. Not re-entrant: a second :meth:`acquire` on a held lock is a no-op,
    but a second ``FolderLock`` on the same folder in the same process is refused like another process.
    """

    def __init__(
        self,
        folder: str | Path,
        *,
        purpose: str = "",
        flag: str = "--model_path",
        name: str = LOCK_NAME,
        resource: str | Path | None = None,
    ):
        self.folder = Path(folder)
        self.path = self.folder / name
        self.purpose = purpose
        self.flag = flag
        self.resource = Path(resource) if resource is not None else self.folder
        self._fd: int | None = None
        self.unlocked = False  # True when the file system refused locks and the run goes on without one

    @property
    def held(self) -> bool:
        return self._fd is not None or self.unlocked

    def acquire(self) -> FolderLock:
        """Take the lock or raise :class:`FolderBusy` naming the holder. Creates the folder if needed."""
        if self.held:
            return self
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            raise UserError(
                f"cannot create the lock file {self.path} ({exc.strerror}); make {self.folder} writable "
                f"or pass another {self.flag}"
            ) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise FolderBusy(self._busy_message()) from None
            if exc.errno in _NO_LOCKS:
                print(
                    f"warning: the file system of {self.folder} does not support file locks ({exc.strerror}); "
                    f"going on without one: make sure no other process writes to {self.resource} meanwhile",
                    file=sys.stderr,
                    flush=True,
                )
                self.unlocked = True
                return self
            raise
        self._fd = fd
        _HELD[fd] = self
        holder = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "argv": [os.path.basename(sys.executable), *sys.argv],
            "since": round(time.time(), 3),
            "purpose": self.purpose,
        }
        data = (json.dumps(holder) + "\n").encode("utf-8")
        try:  # in place (the lock belongs to this file), never by rename
            os.ftruncate(fd, 0)
            os.pwrite(fd, data, 0)
        except OSError:
            pass  # a full disk must not stop the lock: the details only serve messages
        return self

    def _busy_message(self) -> str:
        holder = read_holder(self.path)
        for _ in range(5):  # it may be between taking the lock and writing its details
            if holder:
                break
            time.sleep(0.02)
            holder = read_holder(self.path)
        if holder and holder.get("pid") == os.getpid() and holder.get("host") == socket.gethostname():
            who = "this same process (claimed twice)"
        else:
            who = describe_holder(holder)
        return (
            f"{self.resource} is in use by {who}; wait until it has ended (a killed process releases it at "
            f"once), or pass another {self.flag}"
        )

    def release(self) -> None:
        """Drop the lock (the lock file stays). Safe to call twice."""
        self.unlocked = False
        fd, self._fd = self._fd, None
        if fd is None:
            return
        _HELD.pop(fd, None)
        try:
            fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)

    def __enter__(self) -> FolderLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()
