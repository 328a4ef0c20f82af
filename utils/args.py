"""Flags shared by the MMGR scripts, defined once (docs/architecture.md), and a real boolean flag type."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import torch

__all__ = ["str2bool", "common_parser", "parse_with_demo", "resolve_device", "default_workers"]


def str2bool(value: str | bool) -> bool:
    """``--flag``, ``--flag true``, ``--flag 0``...: a boolean flag that means what it says.

    The published ``--cos`` used ``type=bool``, for which every value (even ``False``) is True.
    """
    if isinstance(value, bool):
        return value
    v = value.strip().lower()
    if v in ("1", "true", "t", "yes", "y", "on"):
        return True
    if v in ("0", "false", "f", "no", "n", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected a boolean (true/false), got {value!r}")


def common_parser(
    *,
    data_path: str,
    model_path: str,
    batch_size: int,
    lr: float,
    total_epoch: int,
    schedule: list[int],
    img_size: int,
    origin: str,
) -> argparse.ArgumentParser:
    """Parent parser with the flags that ``mmgr.py`` and the downstream scripts share.

    Each script passes its own published defaults; ``origin`` names where they come from and is
    quoted in the help text.
    """
    p = argparse.ArgumentParser(add_help=False)
    g = p.add_argument_group("shared flags")
    g.add_argument("--data_path", default=data_path, help=f"data root (default {data_path!r}, {origin})")
    g.add_argument("--model_path", default=model_path, help=f"checkpoint directory (default {model_path!r})")
    g.add_argument(
        "--batch_size", type=int, default=batch_size, help=f"batch size per process (default {batch_size}, {origin})"
    )
    g.add_argument("--lr", type=float, default=lr, help=f"Adam learning rate (default {lr:g}, {origin})")
    g.add_argument(
        "--total_epoch", type=int, default=total_epoch, help=f"number of epochs (default {total_epoch}, {origin})"
    )
    g.add_argument(
        "--schedule",
        type=int,
        nargs="*",
        default=schedule,
        help=f"epochs at which the lr drops x0.1 and stays dropped (default {' '.join(map(str, schedule))}, {origin})",
    )
    g.add_argument(
        "--cos",
        type=str2bool,
        nargs="?",
        const=True,
        default=False,
        help="cosine lr schedule instead of steps (default off, as published; a real boolean)",
    )
    g.add_argument(
        "--img_size", type=int, default=img_size, help=f"training crop size in pixels (default {img_size}, published)"
    )
    g.add_argument("--device", default=None, help="'cpu', 'cuda', 'cuda:1', ... (default: cuda if available, else cpu)")
    g.add_argument(
        "--workers",
        type=int,
        default=None,
        help="DataLoader worker processes (default: the CPUs this process may use, shared among the processes "
        f"torchrun starts on this node, minus one for the process itself, at most 8: {default_workers()} here; "
        "0 loads in the main process)",
    )
    g.add_argument(
        "--seed", type=int, default=0, help="random seed for initialisation, augmentation and data order (default 0)"
    )
    g.add_argument(
        "--demo",
        action="store_true",
        help="run on the built-in synthetic city with a CPU-sized configuration (flags given explicitly still win)",
    )
    g.add_argument(
        "--demo_dir",
        default="mmgr_demo",
        help="where --demo keeps its synthetic city and checkpoints (default 'mmgr_demo' in the cwd)",
    )
    return p


def parse_with_demo(parser: argparse.ArgumentParser, argv: list[str] | None, demo_defaults: dict) -> argparse.Namespace:
    """Parse ``argv``; with ``--demo``, parse again over CPU-sized defaults and the demo paths.

    Flags given explicitly still win, since only defaults change. The demo paths are
    ``<demo_dir>/city`` (data) and ``<demo_dir>/checkpoints`` (models); ``demo_defaults`` may add or
    override any default, also as a function of the demo directory via the ``{demo}`` placeholder.
    """
    args = parser.parse_args(argv)
    if args.demo:
        demo = Path(args.demo_dir)
        extra = {k: v.format(demo=demo) if isinstance(v, str) else v for k, v in demo_defaults.items()}
        parser.set_defaults(**{"data_path": str(demo / "city"), "model_path": str(demo / "checkpoints"), **extra})
        args = parser.parse_args(argv)
    if getattr(args, "workers", 0) is None:
        args.workers = default_workers()
    return args


def default_workers() -> int:
    """The ``--workers`` default: CPUs this process may use, shared among this node's processes
    (torchrun's ``LOCAL_WORLD_SIZE``), minus one for the process itself, at most 8 (decoding rarely
    needs more, and each worker holds a copy of the file lists)."""
    try:
        cpus = len(os.sched_getaffinity(0))  # respects taskset / a cgroup's CPU set, unlike os.cpu_count()
    except AttributeError:  # not Linux
        cpus = os.cpu_count() or 1
    local = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    return max(0, min(8, cpus // local - 1))


def resolve_device(name: str | None) -> torch.device:
    """``--device`` value -> torch.device; ``None`` picks CUDA when available."""
    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)
