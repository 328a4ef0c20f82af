"""Learning-rate schedules: the drop persists after a milestone; cosine; real boolean flags."""

import argparse
import math
import os

import pytest

import mmgr
from utils import args as args_mod
from utils.args import default_workers, str2bool
from utils.schedule import lr_at


def test_step_drop_persists():
    lrs = [lr_at(e, 1e-2, 120, [90, 110]) for e in range(120)]
    assert lrs[0] == lrs[89] == 1e-2
    assert math.isclose(lrs[90], 1e-3) and math.isclose(lrs[109], 1e-3)  # the published script jumped back up here
    assert math.isclose(lrs[110], 1e-4) and math.isclose(lrs[119], 1e-4)


def test_cosine():
    assert lr_at(0, 0.1, 10, cos=True) == 0.1
    assert math.isclose(lr_at(5, 0.1, 10, cos=True), 0.05)
    assert lr_at(9, 0.1, 10, cos=True) < 0.01


@pytest.mark.parametrize("text,value", [("true", True), ("1", True), ("False", False), ("0", False), ("no", False)])
def test_str2bool(text, value):
    assert str2bool(text) is value


def test_str2bool_rejects_garbage():
    with pytest.raises(argparse.ArgumentTypeError):
        str2bool("maybe")


@pytest.mark.parametrize(
    "cpus,local,expected",
    [(2, None, 1), (16, None, 8), (16, "1", 8), (16, "4", 3), (96, "8", 8), (1, None, 0), (8, "8", 0)],
)
def test_default_workers_share_the_cpus_among_local_processes(monkeypatch, cpus, local, expected):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(cpus)), raising=False)
    if local is None:
        monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    else:
        monkeypatch.setenv("LOCAL_WORLD_SIZE", local)
    assert default_workers() == expected


def test_workers_flag_default_is_resolved_and_explicit_values_win(monkeypatch):
    monkeypatch.setattr(args_mod, "default_workers", lambda: 5)
    assert mmgr.parse_args([]).workers == 5
    assert mmgr.parse_args(["--workers", "0"]).workers == 0
    assert mmgr.parse_args(["--demo"]).workers == 2  # the demo's own default
