"""Population (or any per-tile scalar) regression from a pretrained MMGR image encoder.

    python res_pop.py --data_path DATA --ckpt ckpt/wuhan_img_120.tar                # published protocol
    python res_pop.py --data_path DATA --target_dir gdp1km --log_target            # GDP, log1p targets
    python res_pop.py --demo                 # after `python mmgr.py --demo`

The encoder's projection ``fc`` is replaced by ``Linear(d, d/2) -> ReLU -> Linear(d/2, 1)``; only that
head trains (the backbone stays in eval mode, BatchNorm statistics frozen); prediction =
ReLU(output); MSE loss. From epoch ``--eval_from`` on, MAE, RMSE and R² on the validation list are
printed and appended to the record file. Shared flags and loop: engine/downstream.py; the task:
engine/tasks.py.
"""

from __future__ import annotations

import argparse

from engine.downstream import downstream_parser, run_downstream
from engine.tasks import regression_task
from utils.args import parse_with_demo, str2bool
from utils.errors import run_main

DEMO_DEFAULTS = {"img_size": 64, "total_epoch": 12, "schedule": [8, 10], "workers": 2, "eval_from": 1, "batch_size": 16,
                 "head_bias_init": "mean",
                 "train_record": "demo_res_pop.txt"}


def build_parser() -> argparse.ArgumentParser:
    p = downstream_parser(target_dir="pop1km", train_record="res_pop.txt",
                          description="Population/GDP regression with a (frozen) MMGR image encoder.")
    p.add_argument("--log_target", type=str2bool, nargs="?", const=True, default=False,
                   help="train on log1p(target) and map predictions back with expm1; metrics stay in original units "
                        "(default off, published)")
    return p


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    return parse_with_demo(build_parser(), argv, DEMO_DEFAULTS)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    return run_downstream(args, regression_task(args.log_target))


if __name__ == "__main__":
    run_main(main)
