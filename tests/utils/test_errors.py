"""utils/errors.py: run_main prints one sentence and exits with the error's own status."""

import errno
from pathlib import Path

import pytest

from utils.errors import FolderBusy, StorageError, UserError, run_main


def exit_of(exc: BaseException, capsys) -> tuple[int, str]:
    def main():
        raise exc

    with pytest.raises(SystemExit) as done:
        run_main(main)
    return done.value.code, capsys.readouterr().err


def test_exit_status_per_kind(capsys):
    assert exit_of(UserError("x.png is not an image; fix it"), capsys) == (2, "error: x.png is not an image; fix it\n")
    assert exit_of(StorageError("could not write a"), capsys) == (74, "error: could not write a\n")
    assert exit_of(FolderBusy("m is in use"), capsys) == (75, "error: m is in use\n")

    class Custom(UserError):
        exit_code = 3

    assert exit_of(Custom("c"), capsys)[0] == 3
    assert exit_of(KeyboardInterrupt(), capsys) == (130, "interrupted\n")


def test_storage_oserror_that_escaped_the_writers(capsys):
    code, err = exit_of(OSError(errno.ENOSPC, "No space left on device", "/m/train_log.jsonl"), capsys)
    assert code == 74 and err.startswith("error: could not write /m/train_log.jsonl: the disk is full; free space")
    assert err.count("\n") == 1 and "--resume" in err
    code, err = exit_of(OSError(errno.EIO, "Input/output error"), capsys)
    assert code == 74 and err.startswith("error: an I/O error on a file: an I/O error occurred")
    with pytest.raises(FileNotFoundError):  # not a storage problem: a traceback, as before
        run_main(lambda: Path("/nonexistent/x").read_text())
