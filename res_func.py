"""Urban functional distributions from a pretrained MMGR image encoder.

    python res_func.py --data_path DATA --ckpt ckpt/wuhan_img_120.tar
    python res_func.py --data_path my_city --model_path my_city/models --target_dir lc   # land-cover shares
    python res_func.py --demo                 # after `python mmgr.py --demo`: pretrained vs random vs mean

Ground truth: ``DATA/func/NAME.txt`` holds the tile's K function-type proportions on one line
(whitespace or comma separated, summing to 1) and ``DATA/func_types.txt`` names the K types, one per
line (optional: without it the columns are type_0..type_{K-1}). Any other ``--target_dir T`` reads
``DATA/T_types.txt``: ``prepare_pois.py --target lc=landcover.gpkg:CLASS`` writes ``lc/`` and
``lc_types.txt`` from land-cover polygons (docs/real_data.md). The encoder's ``fc`` becomes
``Linear(d, d/2) -> ReLU -> Linear(d/2, K)``; prediction = softmax(output); loss = KL(true || predicted).
Reported on the validation list: L1, KL divergence and cosine similarity (means over tiles). The
protocol and the shared flags are those of res_pop.py (engine/downstream.py); its --target_norm and
--log_target concern scalar targets only.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from data.downstream import read_list, read_target
from engine.downstream import DOWNSTREAM_DEMO, downstream_layout, downstream_parser, parse_downstream, run_downstream
from engine.tasks import distribution_task
from utils.errors import UserError, run_main

DEMO_DEFAULTS = {**DOWNSTREAM_DEMO, "train_record": "demo_res_func.txt"}


def build_parser() -> argparse.ArgumentParser:
    p = downstream_parser(
        target_dir="func",
        train_record="res_func.txt",
        description="Urban function distributions (softmax head, KL loss) with a (frozen) MMGR image encoder.",
    )
    p.add_argument(
        "--types_file",
        default=None,
        help="names of the K function types under --data_path, one per line (default '<target_dir>_types.txt': "
        "'func_types.txt' as published, or what prepare_pois.py writes beside a class target such as "
        "--target lc=landcover.gpkg:CLASS; optional)",
    )
    return p


def function_types(args: argparse.Namespace) -> tuple[str, ...]:
    """The K type names: from ``--types_file`` when present, else ``type_<k>`` from the first target file."""
    layout = downstream_layout(args)
    root = layout.root
    types_path = root / (args.types_file or f"{args.target_dir}_types.txt")
    first = read_list(root / layout.val_list)[0]
    k = read_target(layout.targets / (Path(first).stem + ".txt")).size
    if not types_path.is_file():
        return tuple(f"type_{i}" for i in range(k))
    types = tuple(line.strip() for line in types_path.read_text().splitlines() if line.strip())
    if len(types) != k:
        raise UserError(
            f"{types_path} names {len(types)} function types but the files in {root / args.target_dir} "
            f"hold {k} proportions; make them agree"
        )
    return types


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    if not Path(args.data_path).is_dir():
        raise UserError(
            f"data directory {args.data_path} does not exist; pass --data_path (or run `python mmgr.py --demo` first)"
        )
    return run_downstream(args, distribution_task(function_types(args)))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    return parse_downstream(build_parser(), argv, DEMO_DEFAULTS)


if __name__ == "__main__":
    run_main(main)
