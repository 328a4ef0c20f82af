"""Seeding and RNG state capture, so that runs repeat and resumed runs continue the same stream."""

from __future__ import annotations

import os
import random
from typing import Any

import numpy as np
import torch

from utils.signals import ignore_stop_signals

__all__ = ["seed_everything", "rng_state", "set_rng_state", "worker_init", "enable_determinism"]


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and every CUDA device)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict[str, Any]:
    """Current RNG states of Python, NumPy, torch and CUDA (tensors/plain types only: weights_only-safe)."""
    py = random.getstate()
    np_state = np.random.get_state()
    state: dict[str, Any] = {
        "python": [py[0], list(py[1]), py[2]],
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` captured."""
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    np_s = state["numpy"]
    np.random.set_state((np_s[0], np_s[1].numpy().astype(np.uint32), *np_s[2:]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def worker_init(worker_id: int) -> None:
    """DataLoader worker init: torch seeds each worker; derive NumPy's and Python's from it. Stop
    signals are left to the main process (see utils.signals)."""
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)
    ignore_stop_signals()


def enable_determinism() -> None:
    """``--deterministic``: deterministic kernels where torch has them, no cuDNN autotuning.

    On GPU, ``--deterministic`` asks for it; on CPU it is ``mmgr.py``'s default: with two or more
    intra-op threads on a busy machine, the gradients of the POI encoder's LSTM (upstream of Set2Set's
    scatter operations) changed in the last bits in about one step in six (measured,
    docs/reliability.md), and such differences grow over epochs; deterministic kernels removed them.
    ``warn_only``: an op without a deterministic kernel warns instead of stopping a long run.
    Must run before CUDA is first used (cuBLAS reads its workspace setting then).
    """
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.deterministic = True
