"""NT-Xent, the normalised temperature-scaled cross-entropy of SimCLR, as used twice by MMGR."""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["nt_xent"]


def nt_xent(z_a: torch.Tensor, z_b: torch.Tensor, temperature: float = 0.5) -> torch.Tensor:
    """NT-Xent between two batches of paired embeddings.

    Row ``i`` of ``z_a`` and row ``i`` of ``z_b`` are a positive pair; every other row of the
    ``2B`` concatenated embeddings is a negative. The loss is the mean over all ``2B`` rows of the
    cross-entropy of the positive against the ``2B - 1`` others, under cosine similarity divided by
    ``temperature`` — exactly the published formulation, but with one ``[2B, 2B]`` matmul instead of a
    ``[2B, 2B, D]`` broadcast, and for any batch size.

    Args:
        z_a: ``[B, D]`` embeddings (e.g. image view 1).
        z_b: ``[B, D]`` embeddings paired row by row with ``z_a`` (image view 2, or the POI graph).
        temperature: softmax temperature (published default 0.5).

    Returns:
        Scalar tensor.
    """
    if z_a.shape != z_b.shape or z_a.dim() != 2:
        raise ValueError(f"nt_xent expects two [B, D] tensors of equal shape, got {tuple(z_a.shape)} and {tuple(z_b.shape)}")
    b = z_a.shape[0]
    # Normalise in fp32: cosine similarities of bf16/fp16 embeddings lose too much precision.
    z = F.normalize(torch.cat([z_a, z_b], dim=0).float(), dim=1)  # [2B, D]
    logits = (z @ z.t()) / temperature  # [2B, 2B]
    # A row is never its own negative: remove the diagonal from the softmax.
    self_mask = torch.eye(2 * b, dtype=torch.bool, device=z.device)
    logits = logits.masked_fill(self_mask, float("-inf"))
    # Row i's positive sits B rows away: i + B for the first half, i - B for the second.
    targets = torch.arange(2 * b, device=z.device).roll(b)
    return F.cross_entropy(logits, targets)
