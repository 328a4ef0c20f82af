"""Speed options of the training scripts: precision, memory layout, compilation, DDP wrapping.

None of them changes the method; fp32, one process, the CPU (PIL) augmentation and no compilation
are the faithful reference. ``channels_last`` is on by default where it measured faster (CUDA, and
CPUs with AVX-512; :func:`default_channels_last`) and off elsewhere (benchmarks/RESULTS.md); it changes
results only by float rounding (convolutions sum in another order).
"""

from __future__ import annotations

import argparse
import contextlib
from typing import Any

import torch
from torch.nn.parallel import DistributedDataParallel

from utils.args import str2bool
from utils.distributed import DistInfo
from utils.errors import UserError

__all__ = [
    "PRECISIONS",
    "add_speed_flags",
    "default_channels_last",
    "autocast",
    "make_scaler",
    "convert_before_optim",
    "prepare_models",
]

PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def add_speed_flags(p: argparse.ArgumentParser) -> None:
    """``--precision --channels_last --compile --augment --sync_bn`` (see docs/speed.md)."""
    g = p.add_argument_group("speed (none of these changes the method; defaults are the faithful reference)")
    g.add_argument(
        "--precision",
        default="fp32",
        choices=tuple(PRECISIONS),
        help="autocast precision of the image encoder: fp32 (default, published), bf16, or fp16 (with a GradScaler); "
        "the POI encoder and the losses always run in fp32",
    )
    g.add_argument(
        "--channels_last",
        type=str2bool,
        nargs="?",
        const=True,
        default=None,
        help="channels-last memory layout for the image encoder (default: on for CUDA and for CPUs with "
        "AVX-512 or AMX, where it measured 20-26 %% faster; off on other CPUs, where it was neutral; "
        "same results up to float rounding)",
    )
    g.add_argument(
        "--compile",
        type=str2bool,
        nargs="?",
        const=True,
        default=False,
        help="torch.compile the image encoder (default off; the first steps are slow while it compiles)",
    )
    g.add_argument(
        "--augment",
        default="cpu",
        choices=("cpu", "gpu"),
        help="cpu (default, published): PIL augmentation in the DataLoader workers; gpu: workers only decode "
        "to uint8 and both views are augmented as a batch on --device, with per-image random parameters",
    )
    g.add_argument(
        "--sync_bn",
        type=str2bool,
        nargs="?",
        const=True,
        default=False,
        help="under torchrun, synchronise BatchNorm statistics across processes (default off: per-process "
        "statistics, as a single-GPU run of the published script; CUDA only)",
    )


def default_channels_last(device: torch.device, cpu_capability: str | None = None) -> bool:
    """The ``--channels_last`` default: on where it measured faster, off where it did not.

    On CUDA (tensor cores) and on CPUs with AVX-512 (or AMX), where oneDNN's convolutions gain from the
    NHWC layout: a ResNet-50 training step at 224 px, batch 16, went from 3.11-3.28 to 3.82-3.91
    samples/s in fp32 on an Intel Xeon with AVX-512 (no bf16), and from 2.11 to 2.58 (fp32) and 4.97 to
    5.99 (bf16) on an AMD EPYC with AVX-512 and bf16; on AVX2-only CPUs it was neutral, so off there
    (benchmarks/RESULTS.md). ``cpu_capability``: torch's own reading of the CPU
    (``torch.backends.cpu.get_cpu_capability()``: ``DEFAULT``, ``AVX2``, ``AVX512``, ...), for tests.
    """
    if device.type == "cuda":
        return True
    if device.type != "cpu":
        return False
    cap = (cpu_capability or torch.backends.cpu.get_cpu_capability()).upper()
    return cap.startswith(("AVX512", "AMX"))


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """Autocast context for ``precision`` on ``device`` (a no-op for fp32)."""
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=PRECISIONS[precision])


def make_scaler(device: torch.device, precision: str) -> torch.amp.GradScaler:
    """A GradScaler, enabled only for fp16 (bf16 has fp32's exponent range and needs none)."""
    return torch.amp.GradScaler(device.type, enabled=precision == "fp16")


def prepare_models(
    img_model: torch.nn.Module, poi_model: torch.nn.Module, args: Any, info: DistInfo, device: torch.device
) -> tuple[torch.nn.Module, torch.nn.Module]:
    """The modules to call in the training step, built around the models that are saved.

    ``img_model``/``poi_model`` stay the plain modules (their state dicts keep the published keys);
    the returned ones add DDP (under torchrun) and torch.compile. Call :func:`convert_before_optim`
    first for layout and SyncBatchNorm.
    """
    img_train, poi_train = img_model, poi_model
    if info.enabled:
        ids = [device.index] if device.type == "cuda" else None
        img_train = DistributedDataParallel(img_model, device_ids=ids)
        poi_train = DistributedDataParallel(poi_model, device_ids=ids)
    if args.compile:
        # Only the image encoder: the POI graphs change size every batch (dynamic shapes, little gain).
        img_train = torch.compile(img_train)
    return img_train, poi_train


def convert_before_optim(
    img_model: torch.nn.Module, args: Any, info: DistInfo, device: torch.device
) -> torch.nn.Module:
    """SyncBatchNorm (under torchrun, ``--sync_bn``) and the memory layout, before the optimisers exist.

    Both keep parameter names, so checkpoints are unchanged.
    """
    if args.sync_bn:
        if device.type != "cuda":
            raise UserError(
                "--sync_bn needs CUDA devices (PyTorch's SyncBatchNorm has no CPU implementation); drop it for CPU runs"
            )
        if info.enabled:
            img_model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(img_model)
    if args.channels_last:
        img_model = img_model.to(memory_format=torch.channels_last)
    return img_model
