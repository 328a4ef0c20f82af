"""Downstream models: a pretrained image encoder with its projection ``fc`` swapped for a task head."""

from __future__ import annotations

import torch.nn as nn

from models.image_encoder import ImageEncoder

__all__ = ["regression_head", "with_task_head"]


def regression_head(d: int, out_dim: int = 1) -> nn.Sequential:
    """Published downstream head: ``Linear(d, d/2) -> ReLU -> Linear(d/2, out_dim)``."""
    return nn.Sequential(nn.Linear(d, d // 2), nn.ReLU(inplace=True), nn.Linear(d // 2, out_dim))


def with_task_head(model: ImageEncoder, out_dim: int = 1, freeze_backbone: bool = True) -> ImageEncoder:
    """Replace ``model.encoder.fc`` by :func:`regression_head`; freeze everything else if asked.

    With a frozen backbone the caller keeps the model in eval mode (BatchNorm statistics frozen),
    as the published protocol does.
    """
    for p in model.parameters():
        p.requires_grad_(not freeze_backbone)
    model.encoder.fc = regression_head(model.feature_dim, out_dim)
    return model
