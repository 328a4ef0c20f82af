"""Learning-rate schedules (MoCo-style): step decay x0.1 at milestones, or half-cosine."""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch

__all__ = ["lr_at", "set_lr"]


def lr_at(
    epoch: int, base_lr: float, total_epoch: int, schedule: Iterable[int] = (90, 110), cos: bool = False
) -> float:
    """Learning rate of (0-based) ``epoch``.

    Step: ``base_lr * 0.1 ** k`` where ``k`` is the number of milestones ``m`` with ``epoch >= m`` —
    the drop persists (the published script applied it only during the milestone epoch itself).
    Cosine: ``base_lr * 0.5 * (1 + cos(pi * epoch / total_epoch))``.
    """
    if cos:
        return base_lr * 0.5 * (1.0 + math.cos(math.pi * epoch / total_epoch))
    return base_lr * 0.1 ** sum(epoch >= m for m in schedule)


def set_lr(optimizers: Iterable[torch.optim.Optimizer], lr: float) -> None:
    """Set ``lr`` on every parameter group of every optimiser."""
    for opt in optimizers:
        for group in opt.param_groups:
            group["lr"] = lr
