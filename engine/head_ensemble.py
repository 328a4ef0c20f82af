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
    """``len(heads)`` published heads on features standardised with ``mean``/``std`` ``[d]``.

    The members' weights are stacked (``w1 [H, d, d/2]``, ``w2 [H, d/2, K]``) so that one batched matrix
    product runs them all: five heads of ~0.1 M parameters each cost about what one costs, since at batches of
    16 a step is all overhead (docs/downstream.md). Each member starts from the weights of one
    :func:`models.heads.regression_head` (PyTorch's initialisation, and the task's bias when asked).

    ``forward(x [B, d]) -> [H, B, K]``: every member's raw output.
    """

    def __init__(self, heads: list[nn.Sequential], mean: torch.Tensor, std: torch.Tensor):
        super().__init__()
        d = heads[0][0].in_features
        self.register_buffer("mean", mean.detach().float().reshape(1, d).clone())
        # A constant dimension (a dead ReLU of the backbone) stays 0 after centring.
        self.register_buffer("std", torch.where(std > 0, std, torch.ones_like(std)).detach().float().reshape(1, d))
        with torch.no_grad():
            self.w1 = nn.Parameter(torch.stack([h[0].weight.t() for h in heads]).contiguous())  # [H, d, d/2]
            self.b1 = nn.Parameter(torch.stack([h[0].bias for h in heads]).unsqueeze(1).clone())  # [H, 1, d/2]
            self.w2 = nn.Parameter(torch.stack([h[2].weight.t() for h in heads]).contiguous())  # [H, d/2, K]
            self.b2 = nn.Parameter(torch.stack([h[2].bias for h in heads]).unsqueeze(1).clone())  # [H, 1, K]

    @classmethod
    def draw(cls, d: int, out_dim: int, members: int, mean: torch.Tensor, std: torch.Tensor) -> HeadEnsemble:
        """``members`` heads drawn one after the other from the current RNG state."""
        return cls([regression_head(d, out_dim) for _ in range(members)], mean, std)

    @property
    def members(self) -> int:
        return self.w1.shape[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = ((x - self.mean) / self.std).unsqueeze(0).expand(self.members, -1, -1)
        return torch.baddbmm(self.b2, torch.relu(torch.baddbmm(self.b1, z, self.w1)), self.w2)


@torch.no_grad()
def member_predictions(head: HeadEnsemble, task: Task, feats: torch.Tensor, chunk: int = 4096) -> np.ndarray:
    """Every member's prediction in original units, ``[H, N, K]``, from features ``[N, d]``."""
    outs = []
    for part in feats.split(chunk):
        raw = head(part)
        outs.append(np.stack([task.to_original(task.predict(o).float().cpu().numpy()) for o in raw]))
    return np.concatenate(outs, axis=1)
