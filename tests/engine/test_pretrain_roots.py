"""Pretraining on several roots (``mmgr.py --data_path A B``): one root is the run it always was (same data
set, bit-identical weights, args.json's string); two roots train on their union, say so at the start, keep a
list in args.json, and are refused before anything is written when they do not fit together."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import mmgr
from data.datasets import build_pretrain_dataset
from data.layout import CATEGORY_TABLE, PretrainLayout
from data.pack import pack
from data.roots import MultiRootDataset
from data.scan import scan_pretrain
from engine.pretrain import Pretrainer, claim_run_folder, prepare_data
from tests.conftest import make_layout
from tests.engine.test_pretrain import TINY, weights
from utils.distributed import DistInfo
from utils.errors import UserError


@pytest.fixture
def work(tmp_path: Path, monkeypatch) -> Path:
    monkeypatch.chdir(tmp_path)  # the published record goes to ./train-records/
    make_layout(tmp_path / "a", n_tiles=6, size=16, seed=1)
    make_layout(tmp_path / "b", n_tiles=4, size=16, seed=2)
    return tmp_path


def _args(work: Path, run: str, *roots: str, extra: tuple[str, ...] = ()):
    return mmgr.parse_args(
        ["--data_path", *(str(work / r) for r in roots), "--model_path", str(work / run), *TINY, *extra]
    )


def test_one_root_is_the_run_it_always_was(work):
    args = _args(work, "new", "a", extra=("--total_epoch", "1"))
    assert args.data_path == str(work / "a")  # a string, as args.json has always held it
    info = DistInfo()
    new = Pretrainer(args, prepare_data(args, info), info, torch.device("cpu"), mmgr.training_step)
    assert not isinstance(new.dataset, MultiRootDataset)
    new.fit()
    # The data set built as before several roots existed: one scan, one data set.
    old_args = _args(work, "old", "a", extra=("--total_epoch", "1"))
    layout = PretrainLayout.from_args(old_args)
    report = scan_pretrain(layout, 0)
    old_ds = build_pretrain_dataset(layout, old_args.augment, old_args.img_size, report.good, report.poi_dim)
    old = Pretrainer(old_args, old_ds, info, torch.device("cpu"), mmgr.training_step)
    old.fit()
    a, b = weights(new), weights(old)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    saved = json.loads((work / "new" / "args.json").read_text())
    assert saved["data_path"] == str(work / "a")


def test_two_roots_train_on_their_union(work, capsys):
    args = _args(work, "m", "a", "b")
    info = DistInfo()
    ds = prepare_data(args, info)
    out = capsys.readouterr().out
    assert f"data: 2 roots: 6 tiles from {work / 'a'}, 4 from {work / 'b'}, 10 in all" in out
    assert isinstance(ds, MultiRootDataset) and len(ds) == 10 and ds.counts == [6, 4]
    t = Pretrainer(args, ds, info, torch.device("cpu"), mmgr.training_step)
    t.fit()
    assert t.steps_per_epoch == 2  # 10 tiles, batch 4, incomplete batch dropped
    saved = json.loads((work / "m" / "args.json").read_text())
    assert saved["data_path"] == [str(work / "a"), str(work / "b")]
    cache = json.loads((work / "m" / "scan_cache.json").read_text())
    assert [s["key"]["root"] for s in cache["sections"]] == [str((work / r).resolve()) for r in ("a", "b")]
    # The run continues with the same roots (--resume reads the same union).
    resumed = Pretrainer(
        _args(work, "m", "a", "b", extra=("--total_epoch", "3")), ds, info, torch.device("cpu"), mmgr.training_step
    )
    resumed.resume("last")
    assert resumed.epoch == 2


def test_mid_epoch_resume_needs_the_same_roots_in_the_same_order(work):
    info = DistInfo()
    args = _args(work, "m", "a", "b")
    t = Pretrainer(args, prepare_data(args, info), info, torch.device("cpu"), mmgr.training_step)
    t.train_one_epoch()
    t.step = 1  # as if saved mid-epoch
    state = t.state_dict()
    swapped = _args(work, "x", "b", "a")
    other = Pretrainer(swapped, prepare_data(swapped, info), info, torch.device("cpu"), mmgr.training_step)
    with pytest.raises(
        UserError,
        match=r"saved mid-epoch on 6 tiles from .*a; 4 tiles from .*b but this run has 4 "
        r"tiles from .*b; 6 tiles from .*a; .*same --data_path roots in the same order",
    ):
        other.load_state_dict(state, source="ck")


@pytest.mark.parametrize(
    "setup, roots, message",
    [
        (lambda w: None, ("a", "a"), r"--data_path .*a, .*a: .*a is given twice; give each root once"),
        (lambda w: make_layout(w / "c", n_tiles=4, size=24), ("a", "c"), r"roots differ in tile size .*--tile_px"),
        (
            lambda w: make_layout(w / "c", n_tiles=4, size=16, poi_dim=5),
            ("a", "c"),
            r"POI embedding width .*--embeddings",
        ),
        (
            lambda w: [
                (w / r / CATEGORY_TABLE).write_text(f"category,v0\ncafe,{v}\n") for r, v in (("a", 1), ("b", 2))
            ],
            ("a", "b"),
            r"give category 'cafe' different vectors; the roots must share one vocabulary",
        ),
    ],
)
def test_roots_that_do_not_fit_are_refused_before_anything_is_written(work, setup, roots, message):
    setup(work)
    args = _args(work, "run", *roots)
    with pytest.raises(UserError, match=message):
        claim_run_folder(args, DistInfo())
    assert not (work / "run").exists()


def test_check_data_scans_every_root(work, capsys):
    (work / "b" / "sub_shanghai_edge" / "t001.tensor").unlink()
    args = _args(work, "m", "a", "b", extra=("--check_data",))
    with pytest.raises(UserError, match="1 problems in 1 tiles"):
        prepare_data(args, DistInfo())
    out = capsys.readouterr().out
    assert "t001.png has no POI file" in out and "scan: 9 good tiles, 1 bad tiles" in out


def test_packs_and_folders_mix(work, capsys):
    pack(work / "a", work / "ap", progress=False)
    pack(work / "b", work / "bp", progress=False)
    info = DistInfo()
    both = prepare_data(_args(work, "m", "ap", "bp"), info)
    assert isinstance(both, MultiRootDataset) and both.counts == [6, 4]
    mixed = prepare_data(_args(work, "n", "ap", "b"), info)
    assert mixed.counts == [6, 4] and torch.equal(mixed[7][2].x, both[7][2].x)
    capsys.readouterr()
    assert prepare_data(_args(work, "m", "ap", "bp", extra=("--check_data",)), info) is None
    assert "scan:" not in capsys.readouterr().out  # packs were checked when they were written
