"""Checkpoint files of a pretraining run folder (``--model_path``; docs/checkpoints.md).

* ``<prefix>_img_<epoch>.tar`` / ``<prefix>_poi_<epoch>.tar`` — bare ``state_dict()`` of the image
  and POI encoders, exactly what the published scripts write and read.
* ``checkpoint_last.pt`` — the resumable checkpoint: the training engine's whole state dict
  (:meth:`engine.pretrain.Pretrainer.state_dict`), which ``--resume`` reads back.
* ``args.json`` — the run's arguments, human-readable.

Every file is written to a temporary name in the same folder, flushed, fsynced and renamed, so a
crash during a save leaves the previous file intact. No checkpoint is ever written from weights
that hold NaN or Inf (:func:`assert_finite`), so the last one on disk is always a good one.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path
from typing import Any

import torch

from data.layout import is_prepared_folder
from utils.errors import UserError
from utils.fileio import atomic_save, load_file

__all__ = [
    "RESUME_NAME",
    "RESUME_FORMAT",
    "ARCH_FLAGS",
    "TRAINING_FLAGS",
    "changed_training_flags",
    "describe_changes",
    "assert_finite",
    "save_bare",
    "prune_bare",
    "save_resumable",
    "read_resumable",
    "resume_checkpoint_path",
    "PUBLISHED_PREFIX",
    "PREPARED_PREFIX",
    "default_ckpt_prefix",
]

RESUME_NAME = "checkpoint_last.pt"
# Stored in every resumable checkpoint so that a file of another kind is recognised as such.
RESUME_FORMAT = "mmgr-resumable-1"
# Flags that fix the shapes of the models: a resumed run must use the same ones.
ARCH_FLAGS = ("resnet", "projection_dim", "poi_encoder")
# Flags that change what a step computes (the objective, the data a step sees, the optimiser's schedule):
# a run continued with other values is neither the run it was nor a fresh one, so --resume refuses them
# unless --resume_anyway (docs/checkpoints.md). --total_epoch may change (a run is often extended), and so
# may what only changes the speed (--workers, --channels_last, --compile, --deterministic).
TRAINING_FLAGS = (
    "lr",
    "schedule",
    "cos",
    "batch_size",
    "img_size",
    "augment",
    "precision",
    "img_lmd",
    "empty_poi_tiles",
    "temperature",
    "seed",
    "sync_bn",
)
# What a checkpoint written before one of TRAINING_FLAGS existed was trained with: the code of the time had
# one behaviour, the one the flag's non-default value now restores. Such a checkpoint is compared as if it
# recorded that value, so that resuming it under the new default is refused instead of silently mixing two
# objectives in one run.
PRE_FLAG_VALUES: dict[str, Any] = {"empty_poi_tiles": "include"}
# --ckpt_prefix: the published name (the authors' city) for the published layout and the synthetic city,
# a neutral one for a user's city prepared by prepare_pois.py. Readers take any prefix (engine/run_folder.py).
PUBLISHED_PREFIX = "wuhan"
PREPARED_PREFIX = "mmgr"
# Keys every resumable checkpoint holds (older ones may lack the optional "format", "scaler", "rng_ranks").
_RESUME_KEYS = {"img", "poi", "opt_img", "opt_poi", "epoch"}


def assert_finite(model_path: Path, where: str, *models: torch.nn.Module) -> None:
    """Refuse to checkpoint weights holding NaN/Inf: the previous checkpoint stays the last good one."""
    for m in models:
        for name, t in m.state_dict().items():
            if t.is_floating_point() and not bool(torch.isfinite(t).all()):
                raise UserError(
                    f"the weights became non-finite ({name}) {where}; no checkpoint was written, the last good one "
                    f"is kept in {model_path}; lower --lr and resume from it"
                )


def changed_training_flags(saved: dict[str, Any], args: argparse.Namespace) -> list[tuple[str, Any, Any]]:
    """``(flag, value in the checkpoint, value now)`` for each of :data:`TRAINING_FLAGS` that differs.

    A flag the checkpoint's ``args`` do not record (written before the flag existed) counts with the value
    that reproduces the code of the time (:data:`PRE_FLAG_VALUES`), or is not compared where no value does;
    a checkpoint with no ``args`` at all is not compared.
    """
    if not saved:
        return []
    recorded = {
        k: saved[k] if k in saved else PRE_FLAG_VALUES[k] for k in TRAINING_FLAGS if k in saved or k in PRE_FLAG_VALUES
    }
    return [
        (k, v, getattr(args, k))
        for k, v in recorded.items()
        if hasattr(args, k) and _as_flag(v) != _as_flag(getattr(args, k))
    ]


def _as_flag(value: Any) -> str:
    """A flag's value as a user types it: ``0.001``, ``true``, ``90 110``."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list | tuple):
        return " ".join(_as_flag(v) for v in value)
    return repr(value) if isinstance(value, float) else str(value)  # repr: exact, and short (0.001, 1e-05)


def describe_changes(changed: list[tuple[str, Any, Any]]) -> str:
    """``--lr 0.001 (now 0.01), --img_size 64 (now 224)``."""
    return ", ".join(f"--{k} {_as_flag(old)} (now {_as_flag(new)})" for k, old, new in changed)


def save_bare(
    model_path: Path,
    prefix: str,
    epoch: int,
    img_model: torch.nn.Module,
    poi_model: torch.nn.Module,
    keep_last: int = 0,
) -> tuple[Path, Path]:
    """Write ``<prefix>_img_<epoch>.tar`` and ``<prefix>_poi_<epoch>.tar`` (published layout), then prune;
    returns the two files."""
    files = model_path / f"{prefix}_img_{epoch}.tar", model_path / f"{prefix}_poi_{epoch}.tar"
    atomic_save(img_model.state_dict(), files[0])
    atomic_save(poi_model.state_dict(), files[1])
    prune_bare(model_path, prefix, keep_last)
    return files


def prune_bare(model_path: Path, prefix: str, keep_last: int) -> list[Path]:
    """Delete all but the ``keep_last`` newest epochs of ``<prefix>_{img,poi}_<epoch>.tar``; returns the deleted files."""
    if keep_last <= 0:
        return []
    pattern = re.compile(rf"^{re.escape(prefix)}_(img|poi)_(\d+)\.tar$")
    files = [(int(m.group(2)), p) for p in model_path.iterdir() if (m := pattern.match(p.name))]
    keep = set(sorted({e for e, _ in files})[-keep_last:])
    gone = [p for e, p in files if e not in keep]
    for p in gone:
        p.unlink(missing_ok=True)
    return gone


def save_resumable(model_path: Path, state: dict[str, Any]) -> Path:
    """Write the resumable checkpoint ``state`` to ``model_path/checkpoint_last.pt``; returns its path."""
    path = model_path / RESUME_NAME
    atomic_save(state, path)
    return path


def read_resumable(path: Path) -> dict[str, Any]:
    """Load a resumable checkpoint (weights_only), or say in one sentence why ``path`` is not one."""
    ckpt = load_file(path, "resumable checkpoint")
    if not isinstance(ckpt, dict) or not _RESUME_KEYS <= ckpt.keys():
        bare = isinstance(ckpt, dict) and ckpt and all(isinstance(v, torch.Tensor) for v in ckpt.values())
        what = "a bare state dict (a *_img_/*_poi_ .tar)" if bare else "not a resumable MMGR checkpoint"
        raise UserError(f"{path} is {what}, which cannot be resumed; pass the checkpoint_last.pt written by mmgr.py")
    return ckpt


def resume_checkpoint_path(resume: str | None, model_path: Path) -> Path | None:
    """``--resume`` value -> the checkpoint to continue from, or None to start fresh.

    ``None``: fresh; ``'last'``: ``model_path/checkpoint_last.pt`` (must exist); ``'auto'``: that file
    if it exists; anything else: a path.
    """
    if resume is None:
        return None
    path = model_path / RESUME_NAME if resume in ("last", "auto") else Path(resume)
    if resume == "auto" and not path.is_file():
        return None
    return path


def default_ckpt_prefix(args: argparse.Namespace) -> str:
    """``--ckpt_prefix`` when not given: the prefix of the run being resumed (its ``args.json``), else
    ``mmgr`` for a data folder written by prepare_pois.py (it holds ``prepare_summary.json``), else the
    published ``wuhan``."""
    if args.ckpt_prefix:
        return args.ckpt_prefix
    if getattr(args, "resume", None):
        try:
            earlier = json.loads((Path(args.model_path) / "args.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            earlier = {}
        if isinstance(earlier, dict) and isinstance(earlier.get("ckpt_prefix"), str):
            return earlier["ckpt_prefix"]
    return PREPARED_PREFIX if is_prepared_folder(args.data_path) else PUBLISHED_PREFIX
