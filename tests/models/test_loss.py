"""NT-Xent against slow versions written straight from the formula, over batch sizes and temperatures."""

import math

import pytest
import torch

from models.loss import nt_xent


def nt_xent_loop(z_a: torch.Tensor, z_b: torch.Tensor, t: float) -> torch.Tensor:
    """SimCLR's NT-Xent, one anchor at a time: -log(exp(s_ip/t) / sum_{k != i} exp(s_ik/t)), mean over 2B."""
    z = torch.cat([z_a, z_b]).double()
    n = z.shape[0]
    b = n // 2
    total = torch.zeros((), dtype=torch.float64)
    for i in range(n):
        p = (i + b) % n
        sims = [torch.dot(z[i], z[k]) / (z[i].norm() * z[k].norm()) / t for k in range(n)]
        den = sum(torch.exp(sims[k]) for k in range(n) if k != i)
        total = total - torch.log(torch.exp(sims[p]) / den)
    return total / n


def nt_xent_broadcast(z_a: torch.Tensor, z_b: torch.Tensor, t: float) -> torch.Tensor:
    """The published formulation: a [2B, 2B, D] broadcast cosine, positives vs negatives, summed CE / 2B."""
    b = z_a.shape[0]
    n = 2 * b
    z = torch.cat([z_a, z_b])
    sim = torch.nn.CosineSimilarity(dim=2)(z.unsqueeze(1), z.unsqueeze(0)) / t
    pos = torch.cat([torch.diag(sim, b), torch.diag(sim, -b)]).reshape(n, 1)
    mask = torch.ones(n, n, dtype=torch.bool)
    mask.fill_diagonal_(False)
    for i in range(b):
        mask[i, b + i] = False
        mask[b + i, i] = False
    neg = sim[mask].reshape(n, -1)
    logits = torch.cat([pos, neg], dim=1)
    return torch.nn.functional.cross_entropy(logits, torch.zeros(n, dtype=torch.long), reduction="sum") / n


@pytest.mark.parametrize("b", [1, 2, 3, 8, 33])
@pytest.mark.parametrize("t", [0.07, 0.5, 1.0])
def test_matches_formula_and_published(b, t):
    g = torch.Generator().manual_seed(b * 100 + int(t * 100))
    z_a, z_b = torch.randn(b, 16, generator=g), torch.randn(b, 16, generator=g)
    ours = nt_xent(z_a, z_b, t)
    assert ours.shape == ()
    assert torch.allclose(ours.double(), nt_xent_loop(z_a, z_b, t), atol=1e-5)
    assert torch.allclose(ours, nt_xent_broadcast(z_a, z_b, t), atol=1e-5)


def test_gradients_match_published():
    g = torch.Generator().manual_seed(0)
    za, zb = torch.randn(6, 8, generator=g, requires_grad=True), torch.randn(6, 8, generator=g, requires_grad=True)
    ga = torch.autograd.grad(nt_xent(za, zb, 0.5), (za, zb))
    gb = torch.autograd.grad(nt_xent_broadcast(za, zb, 0.5), (za, zb))
    for x, y in zip(ga, gb, strict=True):
        assert torch.allclose(x, y, atol=1e-6)


def test_known_values():
    # Identical embeddings everywhere: every logit equal, loss = ln(2B - 1).
    z = torch.ones(4, 3)
    assert math.isclose(nt_xent(z, z, 0.5).item(), math.log(7), rel_tol=1e-6)
    # Perfectly separated pairs at low temperature: loss -> 0.
    e = torch.eye(4)
    assert nt_xent(e, e, 0.01).item() < 1e-6


def test_scale_invariance_and_symmetry():
    g = torch.Generator().manual_seed(1)
    za, zb = torch.randn(5, 4, generator=g), torch.randn(5, 4, generator=g)
    assert torch.allclose(nt_xent(za, zb), nt_xent(3 * za, 0.5 * zb), atol=1e-6)
    assert torch.allclose(nt_xent(za, zb), nt_xent(zb, za), atol=1e-6)


def test_shape_mismatch_is_refused():
    with pytest.raises(ValueError):
        nt_xent(torch.randn(4, 8), torch.randn(5, 8))


def nt_xent_autograd(z_a: torch.Tensor, z_b: torch.Tensor, t: float) -> torch.Tensor:
    """The matmul form left to autograd: cross-entropy of masked z z^T / t (the hand-written backward's reference)."""
    z = torch.nn.functional.normalize(torch.cat([z_a, z_b]).double(), dim=1)
    n = z.shape[0]
    logits = (z @ z.t() / t).masked_fill(torch.eye(n, dtype=torch.bool), float("-inf"))
    return torch.nn.functional.cross_entropy(logits, torch.arange(n).roll(n // 2))


@pytest.mark.parametrize("b", [1, 2, 7, 64])
@pytest.mark.parametrize("t", [0.07, 0.5])
def test_hand_written_backward_matches_autograd(b, t):
    g = torch.Generator().manual_seed(7 * b)
    za, zb = torch.randn(b, 12, generator=g, requires_grad=True), torch.randn(b, 12, generator=g, requires_grad=True)
    ours = nt_xent(za, zb, t)
    grads = torch.autograd.grad(3.0 * ours, (za, zb))  # a non-unit upstream gradient
    ref = nt_xent_autograd(za, zb, t)
    ref_grads = torch.autograd.grad(3.0 * ref, (za, zb))
    assert torch.allclose(ours.double(), ref, atol=1e-5)
    for x, y in zip(grads, ref_grads, strict=True):
        assert x.dtype == torch.float32
        assert torch.allclose(x, y, atol=1e-5, rtol=1e-4)


def test_gradient_reaches_shared_input_and_repeats_with_retain_graph():
    # MMGR feeds view 1's embedding to both terms: gradients of the two terms must add up.
    g = torch.Generator().manual_seed(3)
    z1, z2, zp = (torch.randn(5, 8, generator=g, requires_grad=True) for _ in range(3))
    loss = 0.5 * nt_xent(z1, zp) + 0.5 * nt_xent(z1, z2)
    loss.backward(retain_graph=True)
    first = z1.grad.clone()
    ref = 0.5 * nt_xent_autograd(z1, zp, 0.5) + 0.5 * nt_xent_autograd(z1, z2, 0.5)
    assert torch.allclose(first, torch.autograd.grad(ref, z1)[0], atol=1e-6)
    z1.grad = None
    loss.backward()  # the saved softmax is not modified by the first backward
    assert torch.equal(z1.grad, first)


def test_fp32_inside_autocast_and_for_half_inputs():
    g = torch.Generator().manual_seed(4)
    za, zb = torch.randn(16, 32, generator=g), torch.randn(16, 32, generator=g)
    ref = nt_xent(za, zb, 0.1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        inside = nt_xent(za, zb, 0.1)
    assert inside.dtype == torch.float32 and torch.allclose(inside, ref, atol=1e-6)
    za_h, zb_h = za.bfloat16().requires_grad_(), zb.bfloat16().requires_grad_()
    half = nt_xent(za_h, zb_h, 0.1)
    half.backward()
    assert half.dtype == torch.float32 and za_h.grad.dtype == torch.bfloat16
    assert torch.allclose(half, nt_xent(za_h.detach().float(), zb_h.detach().float(), 0.1), atol=1e-6)
