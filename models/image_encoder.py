"""The MMGR image encoder: a torchvision ResNet whose ``fc`` is the SimCLR projection MLP.

State-dict keys keep the published layout: the ResNet lives in ``self.encoder``, so keys read
``encoder.conv1.weight``, ..., ``encoder.fc.0.weight``, ``encoder.fc.2.bias`` (docs/method.md §1).
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import torch
import torch.nn as nn
import torchvision

from utils.fileio import load_file

__all__ = ["RESNETS", "ImageEncoder", "infer_resnet", "projection_head"]

RESNETS = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152")

# Blocks per stage of each depth, and whether its blocks are bottlenecks (torchvision's layouts).
_LAYOUTS = {
    (2, 2, 2, 2, False): "resnet18",
    (3, 4, 6, 3, False): "resnet34",
    (3, 4, 6, 3, True): "resnet50",
    (3, 4, 23, 3, True): "resnet101",
    (3, 8, 36, 3, True): "resnet152",
}


def projection_head(d: int, out_dim: int) -> nn.Sequential:
    """``Linear(d, d) -> ReLU -> Linear(d, out_dim)``, the last layer N(0, 0.01) with zero bias."""
    head = nn.Sequential(nn.Linear(d, d), nn.ReLU(inplace=True), nn.Linear(d, out_dim))
    nn.init.normal_(head[2].weight, mean=0.0, std=0.01)
    nn.init.zeros_(head[2].bias)
    return head


class ImageEncoder(nn.Module):
    """ResNet backbone + projection head (published: ResNet-50 from scratch, projection 128).

    Args:
        resnet: one of :data:`RESNETS`.
        projection_dim: output width of the projection head.
        backbone_weights: optional path to a local torchvision ResNet state dict (``fc.*`` keys are
            ignored) to start from instead of random initialisation; nothing is downloaded.
    """

    def __init__(self, resnet: str = "resnet50", projection_dim: int = 128, backbone_weights: str | None = None):
        super().__init__()
        if resnet not in RESNETS:
            raise ValueError(f"unknown resnet {resnet!r}; choose one of {', '.join(RESNETS)}")
        self.resnet = resnet
        self.encoder = getattr(torchvision.models, resnet)(weights=None)
        if backbone_weights is not None:
            state = load_file(backbone_weights, "backbone weights file")
            state = {k: v for k, v in state.items() if not k.startswith("fc.")}
            try:
                missing, unexpected = self.encoder.load_state_dict(state, strict=False)
            except RuntimeError:  # same names, other shapes: another depth
                missing, unexpected = ["(shapes differ)"], []
            bad = [k for k in missing if not k.startswith("fc.")] + list(unexpected)
            if bad:
                raise ValueError(
                    f"{backbone_weights} is not a torchvision {resnet} state dict ({len(bad)} mismatched keys, e.g. {bad[0]!r})"
                )
        self.feature_dim: int = self.encoder.fc.in_features  # 512 or 2048
        self.encoder.fc = projection_head(self.feature_dim, projection_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, 3, H, W]`` images -> ``[B, projection_dim]`` projections."""
        return self.encoder(x)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, 3, H, W]`` images -> ``[B, feature_dim]`` backbone embeddings (before ``fc``)."""
        e = self.encoder
        x = e.maxpool(e.relu(e.bn1(e.conv1(x))))
        x = e.layer4(e.layer3(e.layer2(e.layer1(x))))
        return torch.flatten(e.avgpool(x), 1)


def infer_resnet(state_dict: Mapping[str, torch.Tensor], prefix: str = "encoder.") -> tuple[str, int]:
    """Which ResNet depth and projection width a saved image-encoder state dict holds.

    Reads only key names and shapes, so a bare state dict written by the published script (which
    carries no arguments) can be rebuilt. Returns ``(resnet_name, projection_dim)``.
    """
    blocks = []
    for stage in range(1, 5):
        pat = re.compile(rf"^{re.escape(prefix)}layer{stage}\.(\d+)\.")
        idx = {int(m.group(1)) for k in state_dict if (m := pat.match(k))}
        blocks.append(max(idx) + 1 if idx else 0)
    bottleneck = f"{prefix}layer1.0.conv3.weight" in state_dict
    name = _LAYOUTS.get((*blocks, bottleneck))
    if name is None or f"{prefix}fc.2.weight" not in state_dict:
        raise ValueError(
            "not an MMGR image-encoder state dict (expected encoder.layer*/encoder.fc.2.* keys of a torchvision ResNet)"
        )
    return name, int(state_dict[f"{prefix}fc.2.weight"].shape[0])
