"""NT-Xent, the normalised temperature-scaled cross-entropy of SimCLR, as used twice by MMGR."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from utils.distributed import gather_rows, rank, world_size

__all__ = ["nt_xent", "nt_xent_gathered"]


def nt_xent(
    z_a: torch.Tensor, z_b: torch.Tensor, temperature: float = 0.5, keep: torch.Tensor | None = None
) -> torch.Tensor:
    """NT-Xent between two batches of paired embeddings.

    Row ``i`` of ``z_a`` and row ``i`` of ``z_b`` are a positive pair; every other row of the
    ``2B`` concatenated embeddings is a negative. The loss is the mean over all ``2B`` rows of the
    cross-entropy of the positive against the ``2B - 1`` others, under cosine similarity divided by
    ``temperature`` — exactly the published formulation, but with one ``[2B, 2B]`` matmul instead of a
    ``[2B, 2B, D]`` broadcast, and for any batch size.

    ``keep`` (ours, ``--empty_poi_tiles exclude``): only the pairs it marks take part — as anchors,
    positives and negatives alike — so the loss is NT-Xent on the ``K`` kept pairs (mean over their
    ``2K`` rows) and the other rows get exactly zero gradient. With fewer than 2 kept pairs there is
    nothing to contrast: the loss is 0 (zero gradient, no NaN). Every pair kept, or ``keep`` None, is
    the published loss bit for bit (docs/method.md, "Tiles without POIs").

    Args:
        z_a: ``[B, D]`` embeddings (e.g. image view 1).
        z_b: ``[B, D]`` embeddings paired row by row with ``z_a`` (image view 2, or the POI graph).
        temperature: softmax temperature (published default 0.5).
        keep: ``bool [B]`` or None (every pair). A mask on the CPU costs no device synchronisation.

    Returns:
        Scalar tensor.
    """
    if z_a.shape != z_b.shape or z_a.dim() != 2:
        raise ValueError(
            f"nt_xent expects two [B, D] tensors of equal shape, got {tuple(z_a.shape)} and {tuple(z_b.shape)}"
        )
    if keep is not None:
        keep = _check_keep(keep, z_a.shape[0])
        if not bool(keep.all()):
            rows = keep.nonzero().squeeze(1).to(z_a.device)  # [K]
            if rows.numel() < 2:
                return _zero_loss(z_a, z_b)
            z_a, z_b = z_a.index_select(0, rows), z_b.index_select(0, rows)
    # Normalise in fp32: cosine similarities of bf16/fp16 embeddings lose too much precision.
    z = F.normalize(torch.cat([z_a, z_b], dim=0).float(), dim=1)  # [2B, D]
    return _NTXentNormalised.apply(z, float(temperature))


def _check_keep(keep: torch.Tensor, b: int) -> torch.Tensor:
    if keep.shape != (b,):
        raise ValueError(f"nt_xent's keep must be a [B] = [{b}] mask, got shape {tuple(keep.shape)}")
    return keep.bool()


def _zero_loss(z_a: torch.Tensor, z_b: torch.Tensor) -> torch.Tensor:
    """A float32 zero that still depends on both inputs, so that every parameter behind them gets a (zero)
    gradient: DDP and the optimisers then see the same parameters in every step."""
    return (z_a.float().sum() + z_b.float().sum()) * 0.0


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


def nt_xent_gathered(
    z_a: torch.Tensor, z_b: torch.Tensor, temperature: float = 0.5, keep: torch.Tensor | None = None
) -> torch.Tensor:
    """NT-Xent with the negatives of every process (DDP), equal to :func:`nt_xent` on the global batch.

    Each of ``W`` ranks holds ``B`` local pairs. The rows of all ranks are gathered (gradient-correct,
    see :func:`utils.distributed.gather_rows`) into the global ``[W*B, D]`` batches ``A`` and ``B``;
    this rank then computes the cross-entropy of its own ``2B`` rows against all ``2WB`` rows. The
    mean of the returned values over ranks — which is what DDP's gradient averaging optimises — is
    exactly ``nt_xent(A, B)``: the same ``2WB`` rows, the same positives, the same negatives.
    Memory is ``[2B, 2WB]`` per rank. In a single process this is :func:`nt_xent`.

    With ``keep`` the masks of all ranks are gathered too: the mean over ranks is
    ``nt_xent(A, B, keep=global mask)`` — the dropped rows of every rank are neither anchors nor
    negatives anywhere, and each rank weighs its kept rows so that the ranks' mean is the mean over
    the ``2K`` kept rows of the global batch (0 when ``K < 2``, on every rank).

    Args:
        z_a: ``[B, D]`` this rank's embeddings (e.g. image view 1).
        z_b: ``[B, D]`` their partners.
        temperature: softmax temperature (published default 0.5).
        keep: ``bool [B]`` this rank's pairs that take part, or None (all).

    Returns:
        Scalar tensor: this rank's share (the mean over its ``2B`` rows without ``keep``).
    """
    if world_size() == 1:
        return nt_xent(z_a, z_b, temperature, keep)
    if z_a.shape != z_b.shape or z_a.dim() != 2:
        raise ValueError(
            f"nt_xent expects two [B, D] tensors of equal shape, got {tuple(z_a.shape)} and {tuple(z_b.shape)}"
        )
    if keep is not None:
        return _nt_xent_gathered_masked(z_a, z_b, temperature, _check_keep(keep, z_a.shape[0]))
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


def _nt_xent_gathered_masked(
    z_a: torch.Tensor, z_b: torch.Tensor, temperature: float, keep: torch.Tensor
) -> torch.Tensor:
    """:func:`nt_xent_gathered` with a mask: the gathered rows of dropped pairs are masked out as
    negatives, this rank's dropped rows out as anchors (``keep``: ``bool [B]``)."""
    b, r, w = z_a.shape[0], rank(), world_size()
    q_a, q_b = F.normalize(z_a.float(), dim=1), F.normalize(z_b.float(), dim=1)  # [B, D] each
    k_a, k_b = gather_rows(q_a), gather_rows(q_b)  # [N, D] each
    kept = gather_rows(keep.to(q_a.device, torch.float32).unsqueeze(1)).squeeze(1) > 0.5  # [N], every rank's mask
    n, n_kept = k_a.shape[0], int(kept.sum())  # the same on every rank
    if n_kept < 2:
        return _zero_loss(q_a, q_b)
    q = torch.cat([q_a, q_b], dim=0)  # [2B, D]
    k = torch.cat([k_a, k_b], dim=0)  # [2N, D]
    logits = (q @ k.t()) / temperature  # [2B, 2N]
    local = torch.arange(b, device=q.device) + r * b
    own = torch.cat([local, local + n])  # [2B]
    logits[torch.arange(2 * b, device=q.device), own] = float("-inf")  # never its own negative
    logits[:, ~torch.cat([kept, kept])] = float("-inf")  # dropped pairs are nobody's negatives
    targets = torch.cat([local + n, local])
    anchors = torch.cat([kept[local], kept[local]])  # [2B]: this rank's kept rows
    # A dropped anchor's row may be all -inf but for its partner; only kept rows enter the sum.
    ce = F.cross_entropy(logits[anchors], targets[anchors], reduction="sum")
    # The ranks' mean of (W / 2K) * (this rank's sum) is the mean over the 2K kept rows of the global batch.
    return ce * (w / (2.0 * n_kept)) + _zero_loss(q_a, q_b)
