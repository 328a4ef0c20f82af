"""The pretraining augmentation, batched on the training device with independent draws per image.

Same recipe and order as :func:`data.transforms.pretrain_transform` (docs/method.md §1):
``RandomResizedCrop(S, scale=(0.2, 1))`` -> with p 0.8 ``ColorJitter(0.4, 0.4, 0.4, 0.1)`` (its four
operations in a random order per image) -> ``RandomGrayscale(0.2)`` -> ``RandomHorizontalFlip(0.5)``
-> ImageNet normalisation. The CPU workers only decode tiles to ``uint8 [3, H, W]``; this module
crops, resizes, jitters, greys, flips and normalises a whole batch in a few tensor operations.

Every image draws its own parameters, with the distributions torchvision uses (a batched
torchvision v2 transform would draw once per call and apply the same crop/jitter to the whole
batch, which would make all negatives of a batch share one augmentation). Parameters are drawn on
the CPU from a ``torch.Generator`` (cheap: a few numbers per image) so that runs are reproducible on
any device; the pixel work runs where the images are.

Numerical differences to the PIL path (distributions identical, pixels within rounding):
the crop is resized by ``roi_align`` — bilinear samples averaged over each output pixel's footprint,
an area-style antialiasing like PIL's — and colour operations run in float without PIL's rounding to
uint8 after each one.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torchvision.ops import roi_align

from data.transforms import normalize_batch

__all__ = ["AugmentParams", "GPUAugment", "sample_crops", "adjust_hue", "grayscale"]


@dataclass
class AugmentParams:
    """Per-image random parameters of one view of a batch of ``B`` images.

    ``crops`` int64 ``[B, 4]`` as torchvision's ``(i, j, h, w)`` (top, left, height, width);
    ``jitter`` bool ``[B]`` (ColorJitter applied); ``factors`` float ``[B, 4]`` brightness,
    contrast, saturation, hue; ``order`` int64 ``[B, 4]`` the jitter operations' order
    (0 brightness, 1 contrast, 2 saturation, 3 hue); ``gray`` and ``flip`` bool ``[B]``.
    """

    crops: torch.Tensor
    jitter: torch.Tensor
    factors: torch.Tensor
    order: torch.Tensor
    gray: torch.Tensor
    flip: torch.Tensor


def sample_crops(
    n: int,
    height: int,
    width: int,
    scale: tuple[float, float] = (0.2, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """``n`` independent RandomResizedCrop boxes of an ``height x width`` image -> int64 ``[n, 4]`` (i, j, h, w).

    torchvision's rule, vectorised: up to 10 attempts of area ~ U(scale) * H * W and log aspect ratio
    ~ U(log ratio); the first attempt that fits is kept, with a uniform position; an image for which
    none fits gets the centred fallback crop (the whole image clipped to the ratio range).
    """
    attempts = 10
    area = height * width
    log_r = torch.log(torch.tensor(ratio, dtype=torch.float64))
    target = area * (
        scale[0] + (scale[1] - scale[0]) * torch.rand(n, attempts, generator=generator, dtype=torch.float64)
    )
    aspect = torch.exp(
        log_r[0] + (log_r[1] - log_r[0]) * torch.rand(n, attempts, generator=generator, dtype=torch.float64)
    )
    # Python's round() is round-half-to-even, as is torch.round.
    w = torch.round(torch.sqrt(target * aspect)).long()
    h = torch.round(torch.sqrt(target / aspect)).long()
    ok = (w > 0) & (w <= width) & (h > 0) & (h <= height)  # [n, attempts]
    first = torch.argmax(ok.int(), dim=1)  # first fitting attempt (0 if none; masked below)
    found = ok.any(dim=1)
    rows = torch.arange(n)
    h, w = h[rows, first], w[rows, first]
    # Uniform integer positions in [0, H - h] and [0, W - w].
    u_i, u_j = (
        torch.rand(n, generator=generator, dtype=torch.float64),
        torch.rand(n, generator=generator, dtype=torch.float64),
    )
    i = torch.floor(u_i * (height - h + 1)).long().clamp_max(height - h)
    j = torch.floor(u_j * (width - w + 1)).long().clamp_max(width - w)
    # Fallback: centred crop of the whole image, clipped to the ratio range.
    in_ratio = width / height
    if in_ratio < min(ratio):
        fw, fh = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        fh, fw = height, int(round(height * max(ratio)))
    else:
        fw, fh = width, height
    fb = torch.tensor([(height - fh) // 2, (width - fw) // 2, fh, fw])
    out = torch.stack([i, j, h, w], dim=1)
    return torch.where(found[:, None], out, fb)


def grayscale(x: torch.Tensor) -> torch.Tensor:
    """ITU-R 601 luma of ``[B, 3, H, W]`` RGB in [0, 1] -> ``[B, 1, H, W]`` (torchvision's weights)."""
    r, g, b = x.unbind(dim=1)
    return (0.2989 * r + 0.587 * g + 0.114 * b).unsqueeze(1)


def adjust_hue(x: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Rotate the hue of ``[B, 3, H, W]`` RGB in [0, 1] by ``shift`` ``[B]`` turns (in [-0.5, 0.5]).

    RGB -> (hue, chroma, value) -> RGB with the rotated hue; saturation and value are unchanged.
    """
    v, _ = x.max(dim=1)  # [B, H, W]
    m, _ = x.min(dim=1)
    c = v - m
    r, g, b = x.unbind(dim=1)
    safe_c = torch.where(c > 0, c, torch.ones_like(c))
    # Hue in sextants [0, 6): which channel is the maximum decides the formula.
    h = torch.where(v == r, (g - b) / safe_c, torch.where(v == g, 2.0 + (b - r) / safe_c, 4.0 + (r - g) / safe_c))
    h = torch.where(c > 0, h, torch.zeros_like(h))
    h = torch.remainder(h / 6.0 + shift.view(-1, 1, 1).to(x.dtype), 1.0) * 6.0  # rotated, [0, 6)
    # Back to RGB: channel n (offset 5, 3, 1 for R, G, B) = v - c * clamp(min(k, 4 - k), 0, 1),
    # k = (n + h) mod 6 — the piecewise-linear hue wheel in closed form.
    out = []
    for n in (5.0, 3.0, 1.0):
        k = torch.remainder(n + h, 6.0)
        out.append(v - c * torch.clamp(torch.minimum(k, 4.0 - k), 0.0, 1.0))
    return torch.stack(out, dim=1)


def _blend(x: torch.Tensor, other: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """``clamp(factor * x + (1 - factor) * other, 0, 1)`` with a per-image ``factor`` ``[B]``."""
    f = factor.view(-1, 1, 1, 1).to(x.dtype)
    return (f * x + (1.0 - f) * other).clamp_(0.0, 1.0)


def _apply_op(op: int, x: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    if op == 0:  # brightness: blend with black
        return _blend(x, torch.zeros_like(x), f)
    if op == 1:  # contrast: blend with the image's mean grey level
        return _blend(x, grayscale(x).mean(dim=(1, 2, 3), keepdim=True), f)
    if op == 2:  # saturation: blend with the image's grey version
        return _blend(x, grayscale(x), f)
    return adjust_hue(x, f)


class GPUAugment:
    """Batched pretraining augmentation with per-image parameters (see the module docstring).

    Args:
        img_size: output side S (published 224).
        scale, ratio: RandomResizedCrop ranges (published (0.2, 1), torchvision's default ratio).
        jitter: ColorJitter strengths (brightness, contrast, saturation, hue), published (0.4, 0.4, 0.4, 0.1).
        p_jitter, p_gray, p_flip: probabilities (published 0.8, 0.2, 0.5).
    """

    def __init__(
        self,
        img_size: int = 224,
        scale: tuple[float, float] = (0.2, 1.0),
        ratio: tuple[float, float] = (3 / 4, 4 / 3),
        jitter: tuple[float, float, float, float] = (0.4, 0.4, 0.4, 0.1),
        p_jitter: float = 0.8,
        p_gray: float = 0.2,
        p_flip: float = 0.5,
    ):
        self.img_size, self.scale, self.ratio = img_size, scale, ratio
        b, c, s, h = jitter
        # Factor ranges as torchvision builds them: [max(0, 1 - v), 1 + v] and [-h, h] for hue.
        self.low = torch.tensor([max(0.0, 1 - b), max(0.0, 1 - c), max(0.0, 1 - s), -h], dtype=torch.float64)
        self.high = torch.tensor([1 + b, 1 + c, 1 + s, h], dtype=torch.float64)
        self.p_jitter, self.p_gray, self.p_flip = p_jitter, p_gray, p_flip

    def sample(self, n: int, height: int, width: int, generator: torch.Generator | None = None) -> AugmentParams:
        """Draw the parameters of one view of ``n`` images of size ``height x width``."""
        crops = sample_crops(n, height, width, self.scale, self.ratio, generator)
        jitter = torch.rand(n, generator=generator) < self.p_jitter
        factors = self.low + (self.high - self.low) * torch.rand(n, 4, generator=generator, dtype=torch.float64)
        order = torch.argsort(torch.rand(n, 4, generator=generator), dim=1)  # a uniform random permutation per row
        gray = torch.rand(n, generator=generator) < self.p_gray
        flip = torch.rand(n, generator=generator) < self.p_flip
        return AugmentParams(crops, jitter, factors.float(), order, gray, flip)

    def apply(
        self,
        images: torch.Tensor,
        p: AugmentParams,
        out_dtype: torch.dtype = torch.float32,
        channels_last: bool = False,
    ) -> torch.Tensor:
        """``uint8 [B, 3, H, W]`` images (any device) + parameters -> normalised ``[B, 3, S, S]`` views."""
        dev = images.device
        n = images.shape[0]
        x = images.float().div_(255.0)
        # Crop + resize: one box per image; roi_align's adaptive sampling averages ceil(h/S) x ceil(w/S)
        # bilinear samples per output pixel, so downscaling is antialiased like PIL's resize.
        i, j, h, w = p.crops.to(dev, torch.float32).unbind(1)
        boxes = torch.stack([torch.arange(n, device=dev, dtype=torch.float32), j, i, j + w, i + h], dim=1)
        x = roi_align(
            x, boxes, output_size=(self.img_size, self.img_size), spatial_scale=1.0, sampling_ratio=-1, aligned=True
        )
        # Colour jitter in each image's own order: at position k, each operation acts on the images
        # that have it there (and are jittered at all).
        jit, order, factors = p.jitter.to(dev), p.order.to(dev), p.factors.to(dev)
        for k in range(4):
            for op in range(4):
                idx = torch.nonzero(jit & (order[:, k] == op)).flatten()
                if idx.numel():
                    x[idx] = _apply_op(op, x[idx], factors[idx, op])
        g = p.gray.to(dev).view(-1, 1, 1, 1)
        x = torch.where(g, grayscale(x).expand_as(x), x)
        x = torch.where(p.flip.to(dev).view(-1, 1, 1, 1), x.flip(-1), x)
        x = normalize_batch(x).to(out_dtype)
        return x.contiguous(memory_format=torch.channels_last) if channels_last else x

    def __call__(self, images: torch.Tensor, generator: torch.Generator | None = None, **kwargs) -> torch.Tensor:
        """One augmented view of every image of a ``uint8 [B, 3, H, W]`` batch."""
        p = self.sample(images.shape[0], images.shape[-2], images.shape[-1], generator)
        return self.apply(images, p, **kwargs)
