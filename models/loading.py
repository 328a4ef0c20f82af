"""Rebuild encoders from checkpoint files alone: ours (bare or resumable) and the published script's.

A bare state dict carries no arguments, so the architecture is read from key names and shapes
(:func:`models.image_encoder.infer_resnet`); the run's ``args.json`` beside it, when present, is
checked against what the weights say.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from models.image_encoder import ImageEncoder, infer_resnet
from models.poi_encoder import GCNPOIEncoder, Set2SetPOIEncoder
from utils.errors import UserError
from utils.fileio import load_file

__all__ = ["load_image_state", "load_image_encoder", "load_poi_encoder"]


def load_image_state(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Image-encoder state dict (published key layout) and saved args from any MMGR checkpoint.

    Accepts a bare ``*_img_*.tar`` (ours or the published script's) or a resumable checkpoint
    (``checkpoint_last.pt``). ``args`` is empty for a bare state dict; then ``args.json`` beside it is
    read when present.
    """
    obj = load_file(path, "checkpoint")
    args: dict[str, Any] = {}
    if isinstance(obj, dict) and "img" in obj and isinstance(obj["img"], dict):
        state, args = obj["img"], dict(obj.get("args", {}))
    elif isinstance(obj, dict) and all(isinstance(v, torch.Tensor) for v in obj.values()):
        state = obj
        side = Path(path).parent / "args.json"
        if side.is_file():
            try:
                args = json.loads(side.read_text())
            except ValueError:
                args = {}
    else:
        raise UserError(f"{path} is not an MMGR image checkpoint; pass a *_img_<epoch>.tar or checkpoint_last.pt file")
    if not any(k.startswith("encoder.") for k in state):
        raise UserError(
            f"{path} holds no image encoder (no 'encoder.*' keys); pass the *_img_<epoch>.tar file, not the *_poi_* one"
        )
    return state, args


def load_image_encoder(ckpt: str | Path) -> ImageEncoder:
    """Rebuild the pretrained image encoder stored in ``ckpt`` (any MMGR or published checkpoint).

    The ResNet depth and projection width come from the state dict's key names and shapes; saved
    args that disagree with them make the checkpoint inconsistent.
    """
    state, args = load_image_state(ckpt)
    try:
        resnet, proj = infer_resnet(state)
    except ValueError as exc:
        raise UserError(f"{ckpt}: {exc}; pass an image checkpoint written by mmgr.py") from None
    if args.get("resnet") not in (None, resnet):
        raise UserError(
            f"{ckpt} says resnet={args['resnet']} but holds {resnet} weights; the checkpoint is inconsistent"
        )
    model = ImageEncoder(resnet, proj)
    model.load_state_dict(state)
    return model


def load_poi_encoder(path: str | Path) -> Set2SetPOIEncoder:
    """Rebuild a POI encoder (released Set2Set or GCN variant) from its state dict's keys and shapes."""
    obj = load_file(path, "POI checkpoint")
    state = obj["poi"] if isinstance(obj, dict) and isinstance(obj.get("poi"), dict) else obj
    if not isinstance(state, dict) or "set2set.lstm.weight_ih_l0" not in state or "projector.1.weight" not in state:
        raise UserError(
            f"{path} holds no MMGR POI encoder (no set2set.*/projector.* keys); pass the *_poi_<epoch>.tar file"
        )
    hidden = int(state["set2set.lstm.weight_ih_l0"].shape[1]) // 2  # LSTM input is the 2F-wide q_star
    proj = int(state["projector.1.weight"].shape[0])
    n_convs = len({k.split(".")[1] for k in state if k.startswith("convs.")})
    if n_convs:
        in_dim = int(state["convs.0.lin.weight"].shape[1])
        model: Set2SetPOIEncoder = GCNPOIEncoder(in_dim, proj, hidden_dim=hidden, num_layers=n_convs)
    else:
        model = Set2SetPOIEncoder(hidden, proj)
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise UserError(
            f"{path} does not match an MMGR POI encoder ({str(exc).splitlines()[0]}); re-create it with mmgr.py"
        ) from None
    return model
