"""Batched augmentation: per-image parameters distributed as torchvision's, pixel ops equal torchvision's."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torchvision.transforms as T
import torchvision.transforms.functional as TF
from scipy.stats import ks_2samp

from data.gpu_augment import AugmentParams, GPUAugment, adjust_hue, sample_crops
from data.transforms import IMAGENET_MEAN, IMAGENET_STD


def _torchvision_crops(n: int, height: int, width: int) -> np.ndarray:
    torch.manual_seed(0)
    img = torch.zeros(3, height, width)
    return np.array([T.RandomResizedCrop.get_params(img, [0.2, 1.0], [3 / 4, 4 / 3]) for _ in range(n)])


@pytest.mark.parametrize("height,width", [(64, 64), (40, 120)])
def test_crop_distribution_matches_torchvision(height, width):
    n = 4000
    ours = sample_crops(n, height, width, generator=torch.Generator().manual_seed(1)).numpy()
    ref = _torchvision_crops(n, height, width)
    # Valid boxes, inside the image.
    assert (ours[:, 2] > 0).all() and (ours[:, 3] > 0).all()
    assert (ours[:, 0] + ours[:, 2] <= height).all() and (ours[:, 1] + ours[:, 3] <= width).all()
    area = lambda c: c[:, 2] * c[:, 3] / (height * width)  # noqa: E731
    log_ratio = lambda c: np.log(c[:, 3] / c[:, 2])  # noqa: E731
    centre_y = lambda c: (c[:, 0] + c[:, 2] / 2) / height  # noqa: E731
    centre_x = lambda c: (c[:, 1] + c[:, 3] / 2) / width  # noqa: E731
    for stat in (area, log_ratio, centre_y, centre_x):
        assert ks_2samp(stat(ours), stat(ref)).pvalue > 1e-3, stat
    # Identical sets of possible values (e.g. the fallback crop of a wide image appears in both).
    fallback = lambda c: np.mean((c[:, 2] == height) & (c[:, 3] == round(height * 4 / 3)))  # noqa: E731
    assert abs(fallback(ours) - fallback(ref)) < 0.02


def test_jitter_gray_flip_parameters():
    aug = GPUAugment(32)
    n = 6000
    p = aug.sample(n, 40, 40, generator=torch.Generator().manual_seed(2))
    f = p.factors.double()
    for k, (lo, hi) in enumerate([(0.6, 1.4), (0.6, 1.4), (0.6, 1.4), (-0.1, 0.1)]):
        assert lo <= f[:, k].min() and f[:, k].max() <= hi
        # Uniform on [lo, hi]: mean and variance (hi-lo)^2/12 within sampling error.
        assert abs(f[:, k].mean().item() - (lo + hi) / 2) < 4 * (hi - lo) / math.sqrt(12 * n)
        assert abs(f[:, k].var().item() / ((hi - lo) ** 2 / 12) - 1) < 0.06
    # Independent per image, not one draw for the batch.
    assert len(torch.unique(p.factors[:, 0])) > 0.99 * n and len(torch.unique(p.crops, dim=0)) > n // 4
    for flag, prob in ((p.jitter, 0.8), (p.gray, 0.2), (p.flip, 0.5)):
        assert abs(flag.float().mean().item() - prob) < 4 * math.sqrt(prob * (1 - prob) / n)
    # The jitter order: each row a permutation of 0..3, all 24 permutations about equally often.
    assert (p.order.sort(dim=1).values == torch.arange(4)).all()
    counts = torch.unique(p.order, dim=0, return_counts=True)[1]
    assert len(counts) == 24 and counts.min() > n / 24 * 0.75 and counts.max() < n / 24 * 1.25


def test_colour_ops_equal_torchvision_per_image():
    g = torch.Generator().manual_seed(3)
    n, s = 6, 16
    images = torch.randint(0, 256, (n, 3, s, s), dtype=torch.uint8, generator=g)
    aug = GPUAugment(s)
    p = aug.sample(n, s, s, generator=g)
    # Whole-image crops, so that only the colour operations and the flip act.
    p = AugmentParams(
        torch.tensor([[0, 0, s, s]] * n),
        torch.tensor([True, True, True, True, False, True]),
        p.factors,
        p.order,
        torch.tensor([False, True, False, False, False, True]),
        torch.tensor([True, False, False, True, True, False]),
    )
    out = aug.apply(images, p)
    ops = [TF.adjust_brightness, TF.adjust_contrast, TF.adjust_saturation, TF.adjust_hue]
    for b in range(n):
        x = images[b].float() / 255
        if p.jitter[b]:
            for op in p.order[b].tolist():
                x = ops[op](x, float(p.factors[b, op]))
        if p.gray[b]:
            x = TF.rgb_to_grayscale(x, 3)
        if p.flip[b]:
            x = TF.hflip(x)
        x = TF.normalize(x, [0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
        assert torch.allclose(out[b], x, atol=1e-4), (b, (out[b] - x).abs().max())


def test_hue_matches_torchvision_over_the_wheel():
    g = torch.Generator().manual_seed(4)
    x = torch.rand(5, 3, 8, 8, generator=g)
    x[0] = 0.5  # grey: no hue, unchanged
    for shift in (-0.5, -0.1, 0.03, 0.1, 0.5):
        ours = adjust_hue(x, torch.full((5,), shift))
        ref = torch.stack([TF.adjust_hue(x[b], shift) for b in range(5)])
        assert torch.allclose(ours, ref, atol=1e-5)


def test_crop_resize_is_exact_and_antialiased():
    g = torch.Generator().manual_seed(5)
    images = torch.randint(0, 256, (2, 3, 20, 24), dtype=torch.uint8, generator=g)
    off = dict(
        jitter=torch.zeros(2, dtype=torch.bool),
        factors=torch.ones(2, 4),
        order=torch.arange(4).repeat(2, 1),
        gray=torch.zeros(2, dtype=torch.bool),
        flip=torch.zeros(2, dtype=torch.bool),
    )
    aug = GPUAugment(8)

    def unnorm(v):
        return v * torch.tensor(IMAGENET_STD).view(1, 3, 1, 1) + torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)

    # Same-size crop: exactly the pixels of the box.
    out = unnorm(aug.apply(images, AugmentParams(torch.tensor([[3, 5, 8, 8], [12, 16, 8, 8]]), **off)))
    assert torch.allclose(out[0], images[0, :, 3:11, 5:13].float() / 255, atol=1e-5)
    assert torch.allclose(out[1], images[1, :, 12:20, 16:24].float() / 255, atol=1e-5)
    # 2x downscale: each output pixel is the mean of its 2x2 block (area filtering, no aliasing).
    out = unnorm(aug.apply(images, AugmentParams(torch.tensor([[2, 4, 16, 16], [0, 0, 16, 16]]), **off)))
    ref = torch.nn.functional.avg_pool2d(images[0:1, :, 2:18, 4:20].float() / 255, 2)[0]
    assert torch.allclose(out[0], ref, atol=1e-5)


def test_views_shape_dtype_layout_and_reproducibility():
    images = torch.randint(0, 256, (4, 3, 30, 30), dtype=torch.uint8, generator=torch.Generator().manual_seed(6))
    aug = GPUAugment(16)
    a = aug(images, generator=torch.Generator().manual_seed(7), out_dtype=torch.bfloat16, channels_last=True)
    b = aug(images, generator=torch.Generator().manual_seed(7), out_dtype=torch.bfloat16, channels_last=True)
    assert (
        a.shape == (4, 3, 16, 16) and a.dtype == torch.bfloat16 and a.is_contiguous(memory_format=torch.channels_last)
    )
    assert torch.equal(a, b) and torch.isfinite(a.float()).all()
    c = aug(images, generator=torch.Generator().manual_seed(8))
    assert not torch.allclose(a.float(), c, atol=0.1)
