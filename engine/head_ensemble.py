"""The head of the stable protocol (``--protocol stable``, docs/downstream.md): an ensemble of published
heads on standardised frozen features.

Each member is the published head ``Linear(d, d/2) -> ReLU -> Linear(d/2, K)`` (models/heads.py), drawn
with its own initialisation; all members see the same batches and each learns from its own loss, so
training them together is training them one after the other in the same batch order (Adam's state is
per parameter). The input is standardised with the training tiles' per-dimension mean and std: backbone
features of a frozen, eval-mode encoder span very different scales per dimension (and a randomly
initialised one gives features of 1e-3 or 1e3), which is what made the published head's lr of 5e-2 jump
from a reasonable seed to one far below the mean predictor on a real city (benchmarks/RESULTS.md).

Prediction = the mean of the members' predictions; ``pred_std`` = their standard deviation (both in
original units; the task maps each member's output first).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn

from engine.tasks import Task
from models.heads import regression_head

__all__ = ["HeadEnsemble", "member_predictions"]


class HeadEnsemble(nn.Module):
    """``members`` published heads on features standardised with ``mean``/``std`` ``[d]``.

    ``forward(x [B, d]) -> [H, B, K]``: every member's raw output.
    """

    def __init__(self, d: int, out_dim: int, members: int, mean: torch.Tensor, std: torch.Tensor):
        super().__init__()
        self.register_buffer("mean", mean.detach().float().reshape(1, d).clone())
        # A constant dimension (a dead ReLU of the backbone) stays 0 after centring.
        self.register_buffer("std", torch.where(std > 0, std, torch.ones_like(std)).detach().float().reshape(1, d))
        self.members = nn.ModuleList(regression_head(d, out_dim) for _ in range(members))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = (x - self.mean) / self.std
        return torch.stack([m(z) for m in self.members])


@torch.no_grad()
def member_predictions(head: HeadEnsemble, task: Task, feats: torch.Tensor, chunk: int = 4096) -> np.ndarray:
    """Every member's prediction in original units, ``[H, N, K]``, from features ``[N, d]``."""
    outs = []
    for part in feats.split(chunk):
        raw = head(part)
        outs.append(np.stack([task.to_original(task.predict(o).float().cpu().numpy()) for o in raw]))
    return np.concatenate(outs, axis=1)
