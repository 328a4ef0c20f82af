"""Population (or any per-tile scalar) regression from a pretrained MMGR image encoder.

    python res_pop.py --data_path DATA --ckpt ckpt/wuhan_img_120.tar                # frozen-backbone probe
    python res_pop.py --data_path DATA --ckpt ckpt/wuhan_img_120.tar --target_norm none   # the published head
    python res_pop.py --data_path DATA --target_dir gdp1km --log_target            # GDP, log1p targets
    python res_pop.py --data_path DATA --ckpt random --resnet resnet50 --finetune  # supervised upper bound
    python res_pop.py --demo                 # after `python mmgr.py --demo`: pretrained vs random vs mean

The encoder's projection ``fc`` is replaced by ``Linear(d, d/2) -> ReLU -> Linear(d/2, 1)``; only that
head trains (the backbone stays in eval mode, BatchNorm statistics frozen). The head's output ``h``
learns the z-score of the training targets and the prediction is ReLU(mean + std * h) (ours,
``--target_norm zscore``; published: ReLU(h) on raw targets, ``--target_norm none``); MSE loss. From
epoch ``--eval_from`` on, MAE, RMSE and R² on the validation list are printed and appended to the
record file. Shared flags and loop: engine/downstream.py; the task: engine/tasks.py; why: docs/downstream.md.
"""

from __future__ import annotations

import argparse

from engine.downstream import DOWNSTREAM_DEMO, downstream_parser, parse_downstream, run_downstream
from engine.tasks import TARGET_NORMS, regression_task
from utils.args import str2bool
from utils.errors import run_main

DEMO_DEFAULTS = {**DOWNSTREAM_DEMO, "train_record": "demo_res_pop.txt"}


def build_parser() -> argparse.ArgumentParser:
    p = downstream_parser(
        target_dir="pop1km",
        train_record="res_pop.txt",
        description="Population/GDP regression with a (frozen) MMGR image encoder.",
    )
    p.add_argument(
        "--target_norm",
        default="zscore",
        choices=TARGET_NORMS,
        help="zscore: the head learns (y - mean) / std of the training targets and predicts "
        "ReLU(mean + std * output) (default, ours: on raw targets of thousands the published head "
        "barely moves from a constant; docs/downstream.md); none: prediction = ReLU(output) on raw "
        "targets (published)",
    )
    p.add_argument(
        "--log_target",
        type=str2bool,
        nargs="?",
        const=True,
        default=False,
        help="train on log1p(target) and map predictions back with expm1; metrics stay in original units "
        "(default off, published)",
    )
    return p


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    return parse_downstream(build_parser(), argv, DEMO_DEFAULTS)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    return run_downstream(args, regression_task(args.log_target, args.target_norm))


if __name__ == "__main__":
    run_main(main)
