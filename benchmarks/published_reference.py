"""The published pipeline's costly choices, re-written from docs/method.md §1 and §4 for benchmarking only.

* :func:`broadcast_nt_xent` — the published loss formulation: cosine similarity of every pair through
  a ``[2B, 2B, D]`` broadcast, positives picked from two off-diagonals, negatives by a boolean mask
  built for the batch size, summed cross-entropy over ``2B`` rows. Same value as
  :func:`models.loss.nt_xent` (tests/test_loss.py checks the same formulation).
* per-sample PIL augmentation in the DataLoader workers (``data.transforms.pretrain_transform``),
  fp32, default (NCHW-contiguous) memory layout.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["broadcast_nt_xent"]


def broadcast_nt_xent(z_a: torch.Tensor, z_b: torch.Tensor, temperature: float = 0.5) -> torch.Tensor:
    """``[B, D]`` x2 -> scalar, through a ``[2B, 2B, D]`` cosine broadcast (the published cost)."""
    b = z_a.shape[0]
    n = 2 * b
    z = torch.cat([z_a, z_b], dim=0)
    sim = F.cosine_similarity(z.unsqueeze(1), z.unsqueeze(0), dim=2) / temperature  # [2B, 2B] via [2B, 2B, D]
    pos = torch.cat([torch.diag(sim, b), torch.diag(sim, -b)]).reshape(n, 1)
    mask = torch.ones(n, n, dtype=torch.bool, device=z.device)
    mask.fill_diagonal_(False)
    idx = torch.arange(b, device=z.device)
    mask[idx, idx + b] = False
    mask[idx + b, idx] = False
    neg = sim[mask].reshape(n, -1)
    logits = torch.cat([pos, neg], dim=1)
    labels = torch.zeros(n, dtype=torch.long, device=z.device)
    return F.cross_entropy(logits, labels, reduction="sum") / n
