"""NT-Xent, the normalised temperature-scaled cross-entropy of SimCLR, as used twice by MMGR."""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["nt_xent", "nt_xent_gathered"]


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


def nt_xent_gathered(z_a: torch.Tensor, z_b: torch.Tensor, temperature: float = 0.5) -> torch.Tensor:
    """NT-Xent with the negatives of every process (DDP), equal to :func:`nt_xent` on the global batch.

    Each of ``W`` ranks holds ``B`` local pairs. The rows of all ranks are gathered (gradient-correct,
    see :func:`utils.distributed.gather_rows`) into the global ``[W*B, D]`` batches ``A`` and ``B``;
    this rank then computes the cross-entropy of its own ``2B`` rows against all ``2WB`` rows. The
    mean of the returned values over ranks — which is what DDP's gradient averaging optimises — is
    exactly ``nt_xent(A, B)``: the same ``2WB`` rows, the same positives, the same negatives.
    Memory is ``[2B, 2WB]`` per rank. In a single process this is :func:`nt_xent`.

    Args:
        z_a: ``[B, D]`` this rank's embeddings (e.g. image view 1).
        z_b: ``[B, D]`` their partners.
        temperature: softmax temperature (published default 0.5).

    Returns:
        Scalar tensor: this rank's mean over its ``2B`` rows.
    """
    from utils.distributed import gather_rows, rank, world_size

    if world_size() == 1:
        return nt_xent(z_a, z_b, temperature)
    if z_a.shape != z_b.shape or z_a.dim() != 2:
        raise ValueError(f"nt_xent expects two [B, D] tensors of equal shape, got {tuple(z_a.shape)} and {tuple(z_b.shape)}")
    b, r = z_a.shape[0], rank()
    q_a, q_b = F.normalize(z_a.float(), dim=1), F.normalize(z_b.float(), dim=1)  # [B, D] each
    k_a, k_b = gather_rows(q_a), gather_rows(q_b)  # [N, D] each, N = W * B, rank order
    n = k_a.shape[0]
    q = torch.cat([q_a, q_b], dim=0)  # [2B, D]: this rank's rows of the global [2N] batch
    k = torch.cat([k_a, k_b], dim=0)  # [2N, D]
    logits = (q @ k.t()) / temperature  # [2B, 2N]
    # Global index of local row j: r*B + j in the first half, N + r*B + j in the second.
    local = torch.arange(b, device=q.device) + r * b
    own = torch.cat([local, local + n])  # [2B]
    logits[torch.arange(2 * b, device=q.device), own] = float("-inf")  # never its own negative
    targets = torch.cat([local + n, local])  # partner: A row i <-> B row i
    return F.cross_entropy(logits, targets)
