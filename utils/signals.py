"""SIGTERM/SIGINT (cluster pre-emption, Ctrl-C): finish the step, save, exit with a resume hint.

The handler only records the request; the training loop checks it at each step boundary, writes a
resumable checkpoint there and exits non-zero. A second signal while stopping interrupts at once
(checkpoint writes are atomic, so the previous checkpoint stays intact).
"""

from __future__ import annotations

import signal
import sys
import threading
from types import FrameType

__all__ = ["StopOnSignal", "ignore_stop_signals", "STOP_SIGNALS"]

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class StopOnSignal:
    """Context manager: while active, SIGTERM/SIGINT set :attr:`signum` instead of killing the process."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._old: dict[int, object] = {}

    @property
    def requested(self) -> bool:
        return self.signum is not None

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name if self.signum is not None else ""

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.signum is not None:  # second signal: the user insists
            self._restore()
            raise KeyboardInterrupt
        self.signum = signum
        print(
            f"\n{signal.Signals(signum).name} received: saving a resumable checkpoint at the end of this step "
            "(send it again to stop at once)",
            file=sys.stderr,
            flush=True,
        )

    def _restore(self) -> None:
        for s, h in self._old.items():
            signal.signal(s, h)  # type: ignore[arg-type]
        self._old = {}

    def __enter__(self) -> StopOnSignal:
        if threading.current_thread() is threading.main_thread():  # signal handlers live in the main thread only
            for s in STOP_SIGNALS:
                self._old[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        self._restore()

    def exit(self, where: str, checkpoint: str, signum: int | None = None, quiet: bool = False) -> None:
        """Print how to continue (unless ``quiet``) and exit with 128 + signal number (the shell's convention).

        ``signum`` overrides the signal this process received: under torchrun every process stops on the
        signal that reached any of them (utils.distributed.max_over_ranks), and exits with its code.
        """
        signum = int(signum if signum is not None else (self.signum or 0))
        if not quiet:
            print(
                f"stopped by {signal.Signals(signum).name} {where}; resumable checkpoint {checkpoint} saved; "
                "continue with the same command plus --resume",
                file=sys.stderr,
                flush=True,
            )
        sys.exit(128 + signum)


def ignore_stop_signals() -> None:
    """In DataLoader workers: leave SIGTERM/SIGINT to the main process, which stops cleanly and
    shuts the workers down itself (a worker killed first would abort the main process mid-save)."""
    for s in STOP_SIGNALS:
        signal.signal(s, signal.SIG_IGN)
