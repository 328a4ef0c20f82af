"""User-caused errors: one sentence naming the file and the fix, non-zero exit, no traceback."""

from __future__ import annotations

import sys
from collections.abc import Callable

__all__ = ["UserError", "run_main"]


class UserError(Exception):
    """An error the user can fix (a path, a file, a flag). Its message is shown as it is."""


def _one_sentence(exc: BaseException) -> str:
    msg = str(exc)
    # A UserError raised inside a DataLoader worker comes back re-wrapped with the worker's traceback
    # in its message; the user's sentence is the last line, after "...UserError: ".
    if "Traceback" in msg:
        last = [line for line in msg.strip().splitlines() if line.strip()][-1]
        msg = last.split("UserError: ", 1)[-1]
    return msg


def run_main(main: Callable[[], object]) -> None:
    """Run an entry point, turning :class:`UserError` into ``error: <sentence>`` and exit status 2."""
    try:
        main()
    except UserError as exc:
        print(f"error: {_one_sentence(exc)}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
