"""The comparison's reusable runs, each keyed on the configuration that produced it.

A rerun into the same ``--out`` reuses a finished run only when every setting behind it is the same, and
never resumes an unfinished one under other settings (docs/downstream.md, "The comparison"):

* pretraining (:func:`pretrain`): ``OUT/ckpt/<variant>_s<seed>_<key>/``, where ``key`` hashes every flag
  passed to mmgr.py (paths aside) and a fingerprint of the data it reads; mmgr.py's ``--resume auto``
  continues an interrupted run inside that folder only;
* random initialisation (:func:`random_checkpoint`): ``OUT/ckpt/random_<resnet>_s<seed>/``;
* end-to-end training (:func:`train_cached`: the supervised bound, the fine-tuned and from-scratch rows):
  ``OUT/end_to_end/<start>_<target>_f<fraction>_s<seed>_<key>.json``, ``key`` hashing the whole training
  configuration, the data's fingerprint and the key of the pretraining it starts from; the bound and
  "from scratch" with all labels are one configuration, hence one run.

Data fingerprints (:func:`fingerprint`) hash the name, size and modification time of every file that a
run reads (one ``stat`` per file), so a changed, added or regenerated file is a new configuration.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from data.downstream import select_fraction
from data.layout import PUBLISHED_PRETRAIN_DIRS
from engine.checkpoints import PUBLISHED_PREFIX
from engine.compare.rows import pretraining_flags
from engine.supervised import task_for, train_supervised
from models.image_encoder import ImageEncoder
from models.loading import load_image_encoder
from utils.errors import UserError
from utils.fileio import atomic_save, atomic_write_text
from utils.speed import default_channels_last

__all__ = [
    "PretrainMain",
    "fingerprint",
    "config_key",
    "pretrain_argv",
    "pretrain_key",
    "final_checkpoint",
    "pretrain",
    "random_checkpoint",
    "train_cached",
]

ROOT = Path(__file__).resolve().parents[2]
# mmgr.main: runs one pretraining from its argv (raises UserError on a user error)
PretrainMain = Callable[[list[str]], None]


def fingerprint(paths: list[Path]) -> str:
    """A short hash of the name, size and modification time of every file under ``paths`` (files or folders,
    walked recursively; a missing path counts as missing)."""
    h = hashlib.sha1()
    for top in paths:
        top = Path(top)
        if top.is_file():
            files = [top]
        elif top.is_dir():
            files = sorted(Path(d) / f for d, _, names in os.walk(top) for f in names)
        else:
            h.update(f"missing {top.name}\n".encode())
            continue
        for f in files:
            st = f.stat()
            h.update(f"{f.relative_to(top.parent)} {st.st_size} {st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:12]


def config_key(config: dict) -> str:
    """A short hash of a JSON-able configuration (order of keys irrelevant)."""
    return hashlib.sha1(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:10]


def pretraining_source(args: argparse.Namespace, data: Path) -> list[Path]:
    """The files pretraining reads, for its fingerprint: ``--pretrain_data`` when given, else the pretraining
    layout's four folders under the data root (a pack made by the comparison is made from those)."""
    if args.pretrain_data:
        return [Path(args.pretrain_data)]
    return [data / d for d in PUBLISHED_PRETRAIN_DIRS.values()]


def _argv(args: argparse.Namespace, variant: str, seed: int) -> list[str]:
    """mmgr.py's flags for one (variant, seed), without the paths."""
    argv = [
        "--resnet",
        args.resnet,
        "--img_size",
        str(args.img_size),
        "--batch_size",
        str(args.batch_size),
        "--total_epoch",
        str(args.epochs),
        "--lr",
        str(args.lr),
        "--seed",
        str(seed),
        "--ckpt_prefix",  # the name final_checkpoint looks for, whatever kind of data folder this is
        PUBLISHED_PREFIX,
        "--workers",
        str(args.workers),
        "--device",
        args.device,
        "--save_every",
        str(args.epochs),
        "--resume",
        "auto",
        "--precision",
        args.precision,
        "--augment",
        args.augment,
    ]
    argv += ["--cos", "true"] if args.cos else ["--schedule", *map(str, args.schedule)]
    if args.channels_last is not None:
        argv += ["--channels_last", "true" if args.channels_last else "false"]
    return argv + pretraining_flags(variant)


def pretrain_key(args: argparse.Namespace, source: str, variant: str, seed: int) -> str:
    """The key of one pretraining run: every flag passed to mmgr.py but the paths, whether it reads a pack, and
    the data's fingerprint ``source``."""
    return config_key({"data": source, "pack": bool(args.pack), "argv": _argv(args, variant, seed)})


def run_name(args: argparse.Namespace, source: str, variant: str, seed: int) -> str:
    return f"{variant}_s{seed}_{pretrain_key(args, source, variant, seed)}"


def pretrain_argv(
    args: argparse.Namespace, data: Path | list[Path], out: Path, source: str, variant: str, seed: int
) -> list[str]:
    """mmgr.py's flags for one (variant, seed): the keyed run folder and record, then :func:`_argv`. ``data``:
    one pretraining root, or several (pretrained on their union: the transfer study's ``mmgr_ab``)."""
    name = run_name(args, source, variant, seed)
    roots = data if isinstance(data, list) else [data]
    return [
        "--data_path",
        *(str(d.resolve()) for d in roots),
        "--model_path",
        str((out / "ckpt" / name).resolve()),
        "--train_record",
        str((out / "train-records" / f"{name}.txt").resolve()),
        *_argv(args, variant, seed),
    ]


def final_checkpoint(args: argparse.Namespace, out: Path, source: str, variant: str, seed: int) -> Path:
    return out / "ckpt" / run_name(args, source, variant, seed) / f"{PUBLISHED_PREFIX}_img_{args.epochs}.tar"


def pretrain(
    args: argparse.Namespace,
    data: Path | list[Path],
    out: Path,
    source: str,
    variant: str,
    seed: int,
    pretrain_main: PretrainMain | None = None,
) -> Path:
    """Run mmgr.py for one (variant, seed) unless this configuration's final checkpoint exists; returns the image
    checkpoint. ``data``: what mmgr.py reads; ``source``: the fingerprint of the data it comes from.

    With ``--jobs 0`` the run is ``pretrain_main(argv)`` in this process (``mmgr.main``), else its own process.
    """
    final = final_checkpoint(args, out, source, variant, seed)
    if final.is_file():
        return final
    argv = pretrain_argv(args, data, out, source, variant, seed)
    log = out / "logs" / f"{run_name(args, source, variant, seed)}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    if args.jobs == 0:
        if pretrain_main is None:
            raise ValueError("--jobs 0 runs mmgr.py in this process: pass pretrain_main (mmgr.main)")
        ok = True
        with open(log, "w") as f, contextlib.redirect_stdout(f), contextlib.redirect_stderr(f):
            try:
                pretrain_main(argv)
            except UserError as exc:
                print(f"error: {exc}")
                ok = False
        text = log.read_text()
    else:
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        r = subprocess.run(
            [sys.executable, str(ROOT / "mmgr.py"), *argv], cwd=out, env=env, capture_output=True, text=True
        )
        text = r.stdout + r.stderr
        log.write_text(text)
        ok = r.returncode == 0
    if not ok or not final.is_file():
        raise UserError(f"pretraining {variant} (seed {seed}) failed, see {log}")
    last = [ln for ln in text.splitlines() if ln.startswith("epoch ")][-1:]
    print(f"  pretrained {variant} seed {seed} in {time.time() - t0:.0f} s: {last[0] if last else ''}", flush=True)
    return final


def random_checkpoint(args: argparse.Namespace, out: Path, seed: int) -> Path:
    """A randomly initialised encoder of ``--resnet`` (torchvision's init, seeded), saved like a pretrained one."""
    path = out / "ckpt" / f"random_{args.resnet}_s{seed}" / f"{PUBLISHED_PREFIX}_img_0.tar"
    if not path.is_file():
        torch.manual_seed(seed)
        atomic_save(ImageEncoder(args.resnet, 128).state_dict(), path)
    return path


def train_cached(
    args: argparse.Namespace,
    out: Path,
    data_key: str,
    target: str,
    fraction: float,
    seed: int,
    start: tuple[str, Path, str] | None,
    epochs: int,
    train: tuple[torch.Tensor, np.ndarray],
    val: tuple[torch.Tensor, np.ndarray],
    device: torch.device,
) -> tuple[dict, bool]:
    """One end-to-end model (engine.supervised.train_supervised), or its result kept from an earlier run of the
    same configuration. Returns ``(metrics + train_seconds + pred_std_over_true_std, trained now)``.

    Args:
        data_key: fingerprint of the tiles, the lists and the target folder.
        start: ``(variant, image checkpoint, pretraining key)`` to fine-tune (backbone at
            ``--finetune_backbone_lr``, head at ``--bound_lr``), or None: from random initialisation, every
            parameter at ``--bound_lr``.
        train: ``(uint8 [N, 3, H, W] tiles, [N, K] targets)`` of the labelled subset; val: the same of the
            validation tiles. The batch is ``--batch_size``, or all N tiles when they are fewer.
    """
    batch = min(args.batch_size, len(train[0]))
    backbone_lr = args.bound_lr if start is None else args.finetune_backbone_lr
    config = {
        "data": data_key,
        "target": target,
        "fraction": fraction,
        "seed": seed,
        "start": "random" if start is None else start[2],
        "resnet": args.resnet,
        "img_size": args.img_size,
        "batch_size": batch,
        "epochs": epochs,
        "lr": args.bound_lr,
        "backbone_lr": backbone_lr,
        "schedule": args.schedule,
        "cos": args.cos,
        "precision": args.precision,
    }
    name = "random" if start is None else start[0]
    cache = out / "end_to_end" / f"{name}_{target}_f{fraction:g}_s{seed}_{config_key(config)}.json"
    if cache.is_file():
        return json.loads(cache.read_text())["result"], False
    y_train = train[1]
    res = train_supervised(
        train[0],
        torch.from_numpy(y_train).float(),
        val[0],
        val[1],
        task_for(y_train, target),
        resnet=args.resnet,
        img_size=args.img_size,
        batch_size=batch,
        epochs=epochs,
        lr=args.bound_lr,
        backbone_lr=backbone_lr,
        encoder=None if start is None else load_image_encoder(start[1]),
        seed=seed,
        device=device,
        schedule=args.schedule,
        cos=args.cos,
        precision=args.precision,
        channels_last=bool(args.channels_last) if args.channels_last is not None else default_channels_last(device),
        log=False,
    )
    res.pop("predictions")
    atomic_write_text(json.dumps({"config": config, "result": res}) + "\n", cache)
    return res, True


def city_version_of(data: Path) -> int | None:
    """The synthetic city version recorded in a data folder written by synthetic/city.py (None otherwise)."""
    try:
        return int(json.loads((data / ".complete").read_text())["city_version"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def check_labelled_list(
    train: list[str], list_path: Path, batch_size: int | None, fractions: list[float], flag: str
) -> None:
    """Refuse, in one sentence, a training list smaller than one batch (``batch_size`` None: nothing trains end
    to end) or a fraction of ``flag`` that leaves fewer than 2 labelled tiles of it."""
    if batch_size is not None and len(train) < batch_size:
        raise UserError(
            f"{list_path} names {len(train)} tiles, fewer than one batch of --batch_size {batch_size}; "
            "lower --batch_size"
        )
    for f in fractions:
        k = len(select_fraction(train, f, 0))
        if k < 2:
            raise UserError(
                f"{flag} {f:g} leaves {k} labelled tile of the {len(train)} in {list_path}; "
                "the probes and the trained rows need at least 2: raise the fraction"
            )
