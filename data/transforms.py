"""Image transforms of the published scripts (docs/method.md §1, §2)."""

from __future__ import annotations

import torch
from torchvision import transforms as T

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "normalize_batch",
    "pretrain_transform",
    "downstream_train_transform",
    "eval_transform",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def pretrain_transform(img_size: int = 224) -> T.Compose:
    """One augmented view for contrastive pretraining (SimCLR/MoCo-v2 recipe, published order)."""
    return T.Compose(
        [
            T.RandomResizedCrop(img_size, scale=(0.2, 1.0)),
            T.RandomApply([T.ColorJitter(0.4, 0.4, 0.4, 0.1)], p=0.8),
            T.RandomGrayscale(p=0.2),
            T.RandomHorizontalFlip(0.5),
            T.ToTensor(),
            T.Normalize(IMAGENET_MEAN, IMAGENET_STD),
        ]
    )


def downstream_train_transform(img_size: int = 224) -> T.Compose:
    """Training transform of the downstream probe: crop, flip, normalise."""
    return T.Compose(
        [
            T.RandomResizedCrop(img_size, scale=(0.2, 1.0)),
            T.RandomHorizontalFlip(),
            T.ToTensor(),
            T.Normalize(IMAGENET_MEAN, IMAGENET_STD),
        ]
    )


def eval_transform() -> T.Compose:
    """Evaluation transform: the tile at full size, normalised."""
    return T.Compose([T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])


def normalize_batch(x: torch.Tensor) -> torch.Tensor:
    """``T.Normalize`` of a batch already on its device: float ``[B, 3, H, W]`` in [0, 1] -> ImageNet-normalised."""
    mean = torch.tensor(IMAGENET_MEAN, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=x.device).view(1, 3, 1, 1)
    return (x - mean) / std
