"""Downstream models: a pretrained image encoder with its projection ``fc`` swapped for a task head."""

from __future__ import annotations

from pathlib import Path

import torch.nn as nn

from models.image_encoder import ImageEncoder, infer_resnet
from utils.checkpoint import load_image_state
from utils.errors import UserError

__all__ = ["regression_head", "load_image_encoder", "with_task_head"]


def regression_head(d: int, out_dim: int = 1) -> nn.Sequential:
    """Published downstream head: ``Linear(d, d/2) -> ReLU -> Linear(d/2, out_dim)``."""
    return nn.Sequential(nn.Linear(d, d // 2), nn.ReLU(inplace=True), nn.Linear(d // 2, out_dim))


def load_image_encoder(ckpt: str | Path) -> ImageEncoder:
    """Rebuild the pretrained image encoder stored in ``ckpt`` (any MMGR or published checkpoint).

    The ResNet depth and projection width come from the saved args when present, else from the
    state dict's key names and shapes.
    """
    state, args = load_image_state(ckpt)
    try:
        resnet, proj = infer_resnet(state)
    except ValueError as exc:
        raise UserError(f"{ckpt}: {exc}; pass an image checkpoint written by mmgr.py") from None
    if args.get("resnet") not in (None, resnet):
        raise UserError(f"{ckpt} says resnet={args['resnet']} but holds {resnet} weights; the checkpoint is inconsistent")
    model = ImageEncoder(resnet, proj)
    model.load_state_dict(state)
    return model


def with_task_head(model: ImageEncoder, out_dim: int = 1, freeze_backbone: bool = True) -> ImageEncoder:
    """Replace ``model.encoder.fc`` by :func:`regression_head`; freeze everything else if asked.

    With a frozen backbone the caller keeps the model in eval mode (BatchNorm statistics frozen),
    as the published protocol does.
    """
    for p in model.parameters():
        p.requires_grad_(not freeze_backbone)
    model.encoder.fc = regression_head(model.feature_dim, out_dim)
    return model
