"""NT-Xent, the normalised temperature-scaled cross-entropy of SimCLR, as used twice by MMGR."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from utils.distributed import gather_rows, rank, world_size

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
        raise ValueError(
            f"nt_xent expects two [B, D] tensors of equal shape, got {tuple(z_a.shape)} and {tuple(z_b.shape)}"
        )
    # Normalise in fp32: cosine similarities of bf16/fp16 embeddings lose too much precision.
    z = F.normalize(torch.cat([z_a, z_b], dim=0).float(), dim=1)  # [2B, D]
    return _NTXentNormalised.apply(z, float(temperature))


class _NTXentNormalised(torch.autograd.Function):
    """NT-Xent of ``2B`` unit rows ``z`` whose partner is ``B`` rows away, with a hand-written backward.

    Autograd through ``cross_entropy(z @ z.T / t)`` costs three ``[2B, 2B] x [2B, D]`` matmuls and
    several full ``[2B, 2B]`` passes (mask, scale, copies). Since the logits are ``z z^T / t``, the
    gradient is ``(G + G^T) z / t`` with ``G = softmax(logits) - onehot(partner)``: one matmul forward,
    two backward, and the softmax kept from the forward pass. Same value and gradient as the autograd
    form to float rounding (tests/test_loss.py).
    """

    @staticmethod
    def forward(ctx, z: torch.Tensor, temperature: float) -> torch.Tensor:  # z: [2B, D]
        n = z.shape[0]
        with torch.autocast(z.device.type, enabled=False):  # fp32 even inside an autocast region
            logits = z @ z.t()  # [2B, 2B]
        logits.mul_(1.0 / temperature)
        logits.fill_diagonal_(float("-inf"))  # a row is never its own negative
        log_p = torch.log_softmax(logits, dim=1)  # [2B, 2B]
        del logits
        rows = torch.arange(n, device=z.device)
        partner = rows.roll(n // 2)  # row i's positive: i + B in the first half, i - B in the second
        ctx.save_for_backward(z, log_p, rows, partner)
        ctx.temperature = temperature
        return -log_p[rows, partner].mean()

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out: torch.Tensor) -> tuple[torch.Tensor, None]:
        z, log_p, rows, partner = ctx.saved_tensors
        g = log_p.exp()  # softmax, [2B, 2B]; exp(-inf) = 0 on the diagonal
        g[rows, partner] -= 1.0
        scale = grad_out / (z.shape[0] * ctx.temperature)
        with torch.autocast(z.device.type, enabled=False):
            # z enters z z^T twice: (G + G^T) z, as two matmuls (BLAS reads G^T in place, which is
            # faster than materialising G + G^T).
            return torch.addmm(g @ z, g.t(), z).mul_(scale), None


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
    if world_size() == 1:
        return nt_xent(z_a, z_b, temperature)
    if z_a.shape != z_b.shape or z_a.dim() != 2:
        raise ValueError(
            f"nt_xent expects two [B, D] tensors of equal shape, got {tuple(z_a.shape)} and {tuple(z_b.shape)}"
        )
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
