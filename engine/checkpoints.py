"""Checkpoints: bare state dicts in the published layout, and one resumable checkpoint.

Files in ``--model_path`` (SPEC §1, §4):

* ``<prefix>_img_<epoch>.tar`` / ``<prefix>_poi_<epoch>.tar`` — bare ``state_dict()`` of the image
  and POI encoders, exactly what the published scripts write and read.
* ``checkpoint_last.pt`` — everything needed to continue (both models, both optimisers, epoch and
  step within the epoch, the AMP scaler when there is one, the run's arguments, RNG states, the
  partial loss sums of the epoch and the byte sizes of the record files); ``--resume`` reads it.
  Written after every epoch, and every ``--save_every_steps`` steps or on SIGTERM/SIGINT mid-epoch.
* ``args.json`` — the run's arguments, human-readable.

Every file is written to a temporary name in the same directory, flushed, fsynced and renamed, so a
crash during a save leaves the previous file intact. No checkpoint is ever written from weights
that hold NaN or Inf (:func:`assert_finite`), so the last one on disk is always a good one.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from utils.distributed import rank, world_size
from utils.errors import UserError
from utils.fileio import atomic_save, load_file
from utils.reproducibility import rng_state, set_rng_state

__all__ = ["assert_finite", "prune_bare", "save_resumable", "ResumePoint", "load_resume", "RESUME_FORMAT",
           "newest_image_checkpoint", "RESUME_NAME", "save_checkpoints", "resume_checkpoint_path"]

RESUME_NAME = "checkpoint_last.pt"
# Stored in every resumable checkpoint so that a file of another kind is recognised as such.
RESUME_FORMAT = "mmgr-resumable-1"


_EPOCH = re.compile(r"_img_(\d+)\.tar$")


def newest_image_checkpoint(model_path: str | Path) -> Path:
    """The image checkpoint with the highest epoch in ``model_path`` (``*_img_<epoch>.tar``)."""
    model_path = Path(model_path)
    found = [(int(m.group(1)), p) for p in model_path.glob("*_img_*.tar") if (m := _EPOCH.search(p.name))]
    if not found:
        raise UserError(f"no image checkpoint (*_img_<epoch>.tar) in {model_path}; pretrain with mmgr.py or pass --ckpt")
    return max(found, key=lambda t: (t[0], t[1].stat().st_mtime))[1]


# Flags that fix the shapes of the models: a resumed run must use the same ones.
_ARCH_FLAGS = ("resnet", "projection_dim", "poi_encoder")


def assert_finite(model_path: Path, where: str, *models: torch.nn.Module) -> None:
    """Refuse to checkpoint weights holding NaN/Inf: the previous checkpoint stays the last good one."""
    for m in models:
        for name, t in m.state_dict().items():
            if t.is_floating_point() and not bool(torch.isfinite(t).all()):
                raise UserError(f"the weights became non-finite ({name}) {where}; no checkpoint was written, the last good one "
                                f"is kept in {model_path}; lower --lr and resume from it")


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


def save_resumable(model_path: Path, img_model: torch.nn.Module, poi_model: torch.nn.Module,
                   opt_img: torch.optim.Optimizer, opt_poi: torch.optim.Optimizer, args: Any, *, epoch: int,
                   step: int = 0, progress: dict[str, Any] | None = None, scaler: Any = None,
                   rng_ranks: list[dict[str, Any]] | None = None) -> Path:
    """Write ``checkpoint_last.pt``: ``epoch`` epochs done plus ``step`` steps of the next one.

    ``progress`` carries the loop's own state (global step, partial loss sums [3] float64, record
    sizes, number of tiles, number of processes); everything is tensors and plain types, so it loads
    with weights_only. ``rng_ranks``: under torchrun, every process's RNG states in rank order (the
    writer's own go to ``rng`` as always), so that each process of a resumed run continues its own.
    """
    where = f"at epoch {epoch + 1}, step {step}" if step else f"after epoch {epoch}"
    assert_finite(model_path, where, img_model, poi_model)
    state = {"format": RESUME_FORMAT, "img": img_model.state_dict(), "poi": poi_model.state_dict(),
             "opt_img": opt_img.state_dict(), "opt_poi": opt_poi.state_dict(), "epoch": epoch, "step": step,
             "args": vars(args), "rng": rng_state(), "progress": dict(progress or {})}
    if scaler is not None:
        state["scaler"] = scaler.state_dict()
    if rng_ranks is not None:
        state["rng_ranks"] = list(rng_ranks)
    path = model_path / RESUME_NAME
    atomic_save(state, path)
    return path


def save_checkpoints(model_path: Path, epoch: int, img_model: torch.nn.Module, poi_model: torch.nn.Module,
                     opt_img: torch.optim.Optimizer, opt_poi: torch.optim.Optimizer, args: Any, *,
                     progress: dict[str, Any] | None = None, scaler: Any = None) -> None:
    """After ``epoch`` (1-based) completed: the bare state dicts every ``args.save_every`` epochs and at
    the end (older ones pruned to ``args.keep_last`` when set), and the resumable checkpoint every epoch."""
    assert_finite(model_path, f"after epoch {epoch}", img_model, poi_model)
    if epoch % args.save_every == 0 or epoch == args.total_epoch:
        atomic_save(img_model.state_dict(), model_path / f"{args.ckpt_prefix}_img_{epoch}.tar")
        atomic_save(poi_model.state_dict(), model_path / f"{args.ckpt_prefix}_poi_{epoch}.tar")
        prune_bare(model_path, args.ckpt_prefix, getattr(args, "keep_last", 0))
    save_resumable(model_path, img_model, poi_model, opt_img, opt_poi, args, epoch=epoch, progress=progress, scaler=scaler)


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


@dataclass
class ResumePoint:
    """Where a resumed run continues: ``epoch`` epochs done, then ``step`` steps of the next one."""

    epoch: int = 0
    step: int = 0
    progress: dict[str, Any] = field(default_factory=dict)
    rng: dict[str, Any] | None = None


def load_resume(path: Path, img_model: torch.nn.Module, poi_model: torch.nn.Module,
                opt_img: torch.optim.Optimizer, opt_poi: torch.optim.Optimizer, args: Any, *,
                n_tiles: int | None = None, scaler: Any = None) -> ResumePoint:
    """Restore models, optimisers, AMP scaler and RNG states from a resumable checkpoint.

    A mid-epoch checkpoint (``step > 0``) also needs the same number of tiles and batch size, or the
    skipped batches would not be the ones already trained on.
    """
    ckpt = load_file(path, "resumable checkpoint")
    if not isinstance(ckpt, dict) or not {"img", "poi", "opt_img", "opt_poi", "epoch"} <= ckpt.keys():
        bare = isinstance(ckpt, dict) and ckpt and all(isinstance(v, torch.Tensor) for v in ckpt.values())
        what = "a bare state dict (a *_img_/*_poi_ .tar)" if bare else "not a resumable MMGR checkpoint"
        raise UserError(f"{path} is {what}, which cannot be resumed; pass the checkpoint_last.pt written by mmgr.py")
    saved = ckpt.get("args", {})
    for key in _ARCH_FLAGS:
        if key in saved and saved[key] != getattr(args, key):
            raise UserError(f"{path} was trained with --{key} {saved[key]} but this run has {getattr(args, key)}; "
                            "use the same flags to resume")
    try:
        img_model.load_state_dict(ckpt["img"])
        poi_model.load_state_dict(ckpt["poi"])
        opt_img.load_state_dict(ckpt["opt_img"])
        opt_poi.load_state_dict(ckpt["opt_poi"])
    except (RuntimeError, ValueError, KeyError):
        raise UserError(f"{path} holds models of another shape than these flags and data build; "
                        "resume with the flags and POI data of the original run") from None
    step = int(ckpt.get("step", 0))
    progress = dict(ckpt.get("progress", {}))
    if step:
        if saved.get("batch_size") != args.batch_size:
            raise UserError(f"{path} was saved mid-epoch with --batch_size {saved.get('batch_size')} but this run has "
                            f"{args.batch_size}; resume with the same batch size")
        if n_tiles is not None and progress.get("n_tiles") not in (None, n_tiles):
            raise UserError(f"{path} was saved mid-epoch on {progress['n_tiles']} tiles but the data now has {n_tiles}; "
                            "resume on the same data (or from an end-of-epoch checkpoint)")
        if progress.get("world_size") not in (None, world_size()):  # None: written before the count was kept
            raise UserError(f"{path} was saved mid-epoch by {progress['world_size']} process(es) but this run has "
                            f"{world_size()}; the global batch, and so the steps already trained, would differ: resume "
                            "with the same number of processes (or from an end-of-epoch checkpoint)")
    if scaler is not None and "scaler" in ckpt:
        scaler.load_state_dict(ckpt["scaler"])
    rng = ckpt.get("rng")
    ranks = ckpt.get("rng_ranks")
    if ranks is not None and len(ranks) == world_size():
        rng = ranks[rank()]  # this process's own streams (mid-epoch checkpoints of a torchrun job)
    if rng is not None:
        set_rng_state(rng)
    return ResumePoint(int(ckpt["epoch"]), step, progress, rng)

