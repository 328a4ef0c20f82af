"""The paper's claims, one command: MMGR against its baselines and bounds, the ablation over λ and fine-tuning
with few labels against training from scratch; repeated seeds, 95 % intervals, paired tests.

    OMP_NUM_THREADS=1 python compare.py --out /tmp/cmp --jobs 2   # CPU configuration (~30-40 min on 2 cores)
    OMP_NUM_THREADS=1 python compare.py --out /tmp/cmp --jobs 2 \
        --lambdas 0 0.25 0.5 0.75 1 --label_fractions 0.05 0.1 0.25 0.5 1   # both studies too (~1 h)
    python compare.py --full --device cuda                        # published sizes (GPU)
    bash benchmarks/gpu_compare.sh                                # GPU-scale comparison in one go
    python compare.py --data_path DATA --targets pop              # your city (prepare_pois.py's folder or the published layouts)
    OMP_NUM_THREADS=1 python compare.py --out /tmp/cmp --jobs 2 --variants random mmgr --test_city b
                                                                  # transfer: train on the city, test on style b
    python compare.py --data_path A --test_data_path B            # transfer between two of your cities

Writes OUT/results.md (tables), results.json, results.csv (long form, for pandas) and the figures.

What the rows are, the protocol and the statistics: engine/compare/ and docs/downstream.md ("The comparison").
"""

from __future__ import annotations

import argparse

import mmgr
from engine.compare.rows import CPU, DEFAULT_VARIANTS, FEW_LABEL_ROWS, FULL, ON_REQUEST, VARIANTS
from engine.compare.run import run_comparison
from models.image_encoder import RESNETS
from synthetic.city import STYLES
from utils.errors import UserError, run_main
from utils.speed import PRECISIONS


def build_parser() -> argparse.ArgumentParser:
    """compare.py's flags, one group per theme (CPU defaults; ``--full``: the published sizes)."""
    p = argparse.ArgumentParser(description="MMGR vs its baselines and bounds on population, GDP and urban functions.")
    _data_flags(p)
    _city_flags(p)
    _pretraining_flags(p)
    _row_flags(p)
    _study_flags(p)
    _transfer_flags(p)
    _speed_flags(p)
    return p


def _data_flags(p: argparse.ArgumentParser) -> None:
    """Where the results go and what data the comparison reads (default: the synthetic city in OUT/city)."""
    g = p.add_argument_group("output and data")
    g.add_argument("--out", default="compare_out", help="output directory (default './compare_out')")
    g.add_argument(
        "--data_path",
        default=None,
        help="data root: a folder prepared by prepare_pois.py, or one holding both published layouts (default: "
        "the synthetic city, generated in OUT/city)",
    )
    g.add_argument(
        "--pretrain_data",
        default=None,
        help="what mmgr.py reads for pretraining, e.g. a pack of --data_path (python -m data.pack) "
        "(default: --data_path)",
    )
    g.add_argument(
        "--pack",
        type=int,
        default=0,
        help="1: pack the pretraining layout of the data into OUT/packed (data.pack: memory-mapped shards, "
        "no file opened per tile) and pretrain from it (default 0; the GPU script uses 1)",
    )


def _city_flags(p: argparse.ArgumentParser) -> None:
    """``--full`` (published sizes instead of the CPU configuration) and the synthetic city's size and seed."""
    g = p.add_argument_group("configuration and synthetic city")
    g.add_argument(
        "--full",
        action="store_true",
        help=f"published sizes instead of the CPU configuration ({FULL}); explicit flags still win",
    )
    g.add_argument(
        "--n_tiles",
        type=int,
        default=None,
        help=f"synthetic city tiles (default {CPU['n_tiles']}; --full {FULL['n_tiles']})",
    )
    g.add_argument(
        "--tile_size",
        type=int,
        default=None,
        help=f"synthetic tile pixels (default {CPU['tile_size']}; --full {FULL['tile_size']})",
    )
    g.add_argument("--city_seed", type=int, default=0, help="synthetic city seed (default 0)")


def _pretraining_flags(p: argparse.ArgumentParser) -> None:
    """Backbone, crop, batch, epochs, lr schedule and seeds shared by pretraining and the supervised bound
    (None: taken from CPU or FULL by :func:`parse_args`)."""
    g = p.add_argument_group("pretraining and supervised bound (default: the CPU configuration)")
    g.add_argument(
        "--resnet",
        default=None,
        choices=RESNETS,
        help=f"image backbone (default {CPU['resnet']}; --full {FULL['resnet']}, published)",
    )
    g.add_argument(
        "--img_size",
        type=int,
        default=None,
        help=f"crop size of pretraining and of the supervised bound (default {CPU['img_size']}; --full 224, published)",
    )
    g.add_argument(
        "--batch_size",
        type=int,
        default=None,
        help=f"batch of pretraining and of the supervised bound (default {CPU['batch_size']}; --full 128, published)",
    )
    g.add_argument(
        "--epochs",
        type=int,
        default=None,
        help=f"pretraining epochs (default {CPU['epochs']}, ours; --full 120, published)",
    )
    g.add_argument(
        "--schedule",
        type=int,
        nargs="*",
        default=None,
        help="lr drop epochs (x0.1) when --cos is off (default none; --full 90 110, published)",
    )
    g.add_argument(
        "--cos", type=int, default=None, help="1: cosine lr decay over the epochs (default 1, ours; --full 0)"
    )
    g.add_argument(
        "--lr",
        type=float,
        default=None,
        help=f"pretraining Adam lr (default {CPU['lr']:g}: the published 1e-2 collapses small CPU runs; "
        "--full 1e-2, published)",
    )
    g.add_argument(
        "--seeds",
        type=int,
        nargs="+",
        default=None,
        help=f"seeds of every seeded row: pretraining, random init, supervised (default {CPU['seeds']})",
    )


def _row_flags(p: argparse.ArgumentParser) -> None:
    """Which rows and targets, the supervised bound's budget and lr, and the probes' settings."""
    g = p.add_argument_group("rows, targets, bound and probes")
    g.add_argument(
        "--variants",
        nargs="+",
        default=list(DEFAULT_VARIANTS),
        choices=VARIANTS,
        help=f"rows to run (default {' '.join(DEFAULT_VARIANTS)}; on request {' '.join(ON_REQUEST)}: the GCN POI "
        "encoder, and img_poi / mmgr with tiles without POIs in the image–POI term as published)",
    )
    g.add_argument(
        "--targets",
        nargs="+",
        default=["pop1km", "gdp1km", "func"],
        help="target directories (default pop1km gdp1km func; one value = regression, several = distribution)",
    )
    g.add_argument(
        "--bound_epochs",
        type=int,
        default=None,
        help="epochs of the supervised bound (default: --epochs, the same budget as pretraining)",
    )
    g.add_argument(
        "--bound_lr",
        type=float,
        default=1e-3,
        help="Adam lr of the supervised bound (default 1e-3, ours: the lr its city check used)",
    )
    g.add_argument(
        "--log_target",
        type=int,
        default=0,
        help="1: probes fit log1p of scalar targets (metrics in original units); default 0: raw values",
    )
    g.add_argument("--knn", type=int, default=10, help="kNN neighbours of the secondary probe (default 10)")


def _study_flags(p: argparse.ArgumentParser) -> None:
    """The two studies beside the comparison: the ablation over λ and few labels (docs/downstream.md)."""
    g = p.add_argument_group("the λ ablation and few labels")
    g.add_argument(
        "--lambdas",
        type=float,
        nargs="+",
        default=[],
        help="λ rows (mmgr.py --img_lmd, each in [0, 1]) pretrained and probed like the other rows, same seeds; "
        "0, 0.5 and 1 are the runs of img_poi, mmgr and simclr (default none; the paper's ablation: "
        "0 0.25 0.5 0.75 1)",
    )
    g.add_argument(
        "--label_fractions",
        type=float,
        nargs="+",
        default=[],
        help="fractions of the training labels, each in (0, 1]: at each, with each seed, the rows of "
        "--label_variants on the same labelled subset (default none; e.g. 0.05 0.1 0.25 0.5 1)",
    )
    g.add_argument(
        "--label_variants",
        nargs="+",
        default=list(FEW_LABEL_ROWS),
        choices=tuple(FEW_LABEL_ROWS),
        help="few-label rows: MMGR frozen + ridge, MMGR and image-only fine-tuned end to end, the same network "
        f"from scratch (default all: {' '.join(FEW_LABEL_ROWS)})",
    )
    g.add_argument(
        "--image_only_up_to",
        type=float,
        default=None,
        help=f"the image-only fine-tuned row runs at label fractions up to this one (default {CPU['image_only_up_to']:g}: "
        "what the CPU configuration's hour allows, where the start matters most; --full 1: every fraction)",
    )
    g.add_argument(
        "--label_targets",
        nargs="+",
        default=None,
        help="targets of the few-label rows, among --targets (default: pop1km when it is one of them, else "
        "every target: each target multiplies the study's training time)",
    )
    g.add_argument(
        "--finetune_epochs",
        type=int,
        default=None,
        help="epochs of every end-to-end few-label row over its labelled tiles (default --bound_epochs: so from "
        "scratch with all labels is the supervised bound's run)",
    )
    g.add_argument(
        "--finetune_backbone_lr",
        type=float,
        default=None,
        help="Adam lr of a fine-tuned backbone; its head trains at --bound_lr (default --bound_lr, ours: the paper "
        "gives no fine-tuning lr; one lr for every parameter, as from scratch, so that the two rows differ only in "
        "their starting weights; res_pop.py's --backbone_lr default is 1e-4)",
    )


def _transfer_flags(p: argparse.ArgumentParser) -> None:
    """The transfer study: train on the data, evaluate on another city (engine/compare/transfer.py)."""
    g = p.add_argument_group("transfer to another city")
    g.add_argument(
        "--test_data_path",
        default=None,
        help="a second city's folder, prepared like --data_path with the same targets: every row is also scored "
        "on its validation list (probes fit on --data_path's labels), against MMGR pretrained on both cities and "
        "its own supervised bound (default none; ours)",
    )
    g.add_argument(
        "--test_city",
        default=None,
        choices=tuple(s for s in STYLES if s != "a"),
        help="the synthetic city of this style (same size and seed, generated in OUT/city_STYLE) as the test "
        "city of the synthetic city (default none; docs/synthetic_city.md 'Style B')",
    )
    g.add_argument(
        "--test_fractions",
        type=float,
        nargs="+",
        default=[0.1, 1.0],
        help="fractions of the test city's training labels for its few-label rows (MMGR pretrained on the data "
        "alone, frozen or fine-tuned, and from scratch), each in (0, 1] (default 0.1 1; ours)",
    )


def _speed_flags(p: argparse.ArgumentParser) -> None:
    """How the runs are spread over processes and which device and precision they use."""
    g = p.add_argument_group("speed and device (no effect on the method)")
    g.add_argument(
        "--jobs",
        type=int,
        default=1,
        help="pretraining runs at once, each an mmgr.py process (default 1); 0: one after another in this "
        "process (no start-up cost, for tiny runs); with 2 or more the supervised bound trains in "
        "this process meanwhile",
    )
    g.add_argument(
        "--workers",
        type=int,
        default=0,
        help="DataLoader workers of each pretraining run and of tile decoding (default 0: measured fastest "
        "on the shared 2-core machine)",
    )
    g.add_argument("--device", default="cpu", help="device of pretraining, bound and embeddings (default cpu)")
    g.add_argument(
        "--precision",
        default="fp32",
        choices=tuple(PRECISIONS),
        help="autocast precision of pretraining and of the bound's training (default fp32; bf16 on GPUs)",
    )
    g.add_argument(
        "--channels_last",
        type=int,
        default=None,
        help="1/0: channels-last layout for pretraining and bound (default: mmgr.py's rule, "
        "utils.speed.default_channels_last: on for CUDA and AVX-512 CPUs)",
    )
    g.add_argument(
        "--augment",
        default="cpu",
        choices=("cpu", "gpu"),
        help="mmgr.py --augment: cpu (PIL in workers, default) or gpu (batched on --device)",
    )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    args = build_parser().parse_args(argv)
    base = FULL if args.full else CPU
    for k, v in base.items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    args.cos = bool(args.cos)
    if args.bound_epochs is None:
        args.bound_epochs = args.epochs
    if args.finetune_epochs is None:
        args.finetune_epochs = args.bound_epochs
    if args.finetune_backbone_lr is None:
        args.finetune_backbone_lr = args.bound_lr
    if args.jobs < 0:
        raise UserError(f"--jobs must be 0 (in this process) or a positive count, got {args.jobs}")
    if args.finetune_epochs < 1:
        raise UserError(f"--finetune_epochs must be at least 1, got {args.finetune_epochs}")
    for x in args.lambdas:
        if not 0.0 <= x <= 1.0:
            raise UserError(
                f"--lambdas {x:g} lies outside [0, 1]; λ weighs the image–image term: pass values from 0 to 1"
            )
    for f in args.label_fractions:
        if not 0.0 < f <= 1.0:
            raise UserError(f"--label_fractions {f:g} lies outside (0, 1]; pass fractions of the training labels")
    for f in args.test_fractions:
        if not 0.0 < f <= 1.0:
            raise UserError(f"--test_fractions {f:g} lies outside (0, 1]; pass fractions of the test city's labels")
    if args.test_data_path is not None and args.test_city is not None:
        raise UserError("--test_data_path and --test_city both name a test city; pass one of them")
    args.test_fractions = sorted(set(args.test_fractions))
    args.lambdas = sorted(set(args.lambdas))
    args.label_fractions = sorted(set(args.label_fractions))
    args.label_variants = list(dict.fromkeys(args.label_variants))
    if args.label_targets is None:
        args.label_targets = ["pop1km"] if "pop1km" in args.targets else list(args.targets)
    stray = [t for t in args.label_targets if t not in args.targets]
    if stray:
        raise UserError(
            f"--label_targets {' '.join(stray)} is not among --targets {' '.join(args.targets)}; add it there"
        )
    return args


def main(argv: list[str] | None = None) -> dict:
    return run_comparison(parse_args(argv), argv, mmgr.main)


if __name__ == "__main__":
    run_main(main)
