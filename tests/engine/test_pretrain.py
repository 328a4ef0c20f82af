"""The pretraining engine in-process: one epoch, the state dict round trip, refused non-finite saves."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest
import torch

import mmgr
from engine.pretrain import Pretrainer, prepare_data
from engine.run_folder import estimate_pretrain_space
from models.loss import nt_xent
from tests.conftest import make_layout
from utils.distributed import DistInfo
from utils.errors import UserError
from utils.signals import StopOnSignal

TINY = [
    "--resnet",
    "resnet18",
    "--img_size",
    "16",
    "--batch_size",
    "4",
    "--projection_dim",
    "8",
    "--workers",
    "0",
    "--lr",
    "1e-3",
    "--total_epoch",
    "2",
    "--device",
    "cpu",
    "--channels_last",
    "false",
    "--train_record",
    "rec.txt",
]


@pytest.fixture
def work(tmp_path: Path, monkeypatch) -> Path:
    monkeypatch.chdir(tmp_path)  # the published record goes to ./train-records/
    make_layout(tmp_path / "d", n_tiles=8, size=16)
    return tmp_path


def trainer(work: Path, run: str, *extra: str, data: str = "d") -> Pretrainer:
    args = mmgr.parse_args(["--data_path", str(work / data), "--model_path", str(work / run), *TINY, *extra])
    info = DistInfo()
    return Pretrainer(args, prepare_data(args, info), info, torch.device("cpu"), mmgr.training_step)


def weights(t: Pretrainer) -> dict[str, torch.Tensor]:
    return {
        **{f"img.{k}": v for k, v in t.img_model.state_dict().items()},
        **{f"poi.{k}": v for k, v in t.poi_model.state_dict().items()},
    }


def test_train_one_epoch_in_process(work):
    t = trainer(work, "m")
    before = {k: v.clone() for k, v in weights(t).items()}
    entry = t.train_one_epoch()
    assert t.epoch == 0 and t.step == t.steps_per_epoch == 2 and t.global_step == 2
    assert entry["epoch"] == 1 and all(
        torch.isfinite(torch.tensor(entry[k])) for k in ("loss", "loss_inter", "loss_intra")
    )
    assert entry["loss"] == pytest.approx(0.5 * entry["loss_inter"] + 0.5 * entry["loss_intra"])
    lines = (work / "train-records" / "rec.txt").read_text().splitlines()
    assert [line.split("\t")[0] for line in lines] == ["Step [1/2]", "Step [2/2]"]
    assert any(not torch.equal(before[k], v) for k, v in weights(t).items())  # both optimisers stepped
    t.end_of_epoch(entry, StopOnSignal())
    assert t.epoch == 1 and t.step == 0
    log = [json.loads(x) for x in (work / "m" / "train_log.jsonl").read_text().splitlines()]
    assert log == [entry]
    assert (work / "m" / "checkpoint_last.pt").is_file()


@pytest.mark.slow
def test_state_dict_round_trip_continues_bit_identically(work):
    straight = trainer(work, "a")
    straight.fit()
    first = trainer(work, "b")
    first.end_of_epoch(first.train_one_epoch(), StopOnSignal())
    state = first.state_dict()
    assert state["format"] == "mmgr-resumable-1" and state["epoch"] == 1 and state["step"] == 0
    assert set(state["img"]) == set(straight.img_model.state_dict())  # the published key layout
    resumed = trainer(work, "c")
    resumed.load_state_dict(state)
    assert (resumed.epoch, resumed.step, resumed.global_step) == (1, 0, 2)
    resumed.fit()
    a, c = weights(straight), weights(resumed)
    assert a.keys() == c.keys() and all(torch.equal(a[k], c[k]) for k in a)


def test_resume_refuses_other_architecture_and_mid_epoch_batch(work):
    t = trainer(work, "m")
    t.train_one_epoch()
    t.step = 1  # as if saved mid-epoch
    state = t.state_dict()
    with pytest.raises(UserError, match="--resnet resnet18 but this run has resnet34"):
        trainer(work, "x", "--resnet", "resnet34").load_state_dict(state, source="ck")
    # Even --resume_anyway cannot continue mid-epoch with another batch: the steps done would differ.
    with pytest.raises(UserError, match="mid-epoch with --batch_size 4 but this run has 2"):
        trainer(work, "y", "--batch_size", "2", "--resume_anyway").load_state_dict(state, source="ck")


def test_resume_refuses_changed_training_flags_unless_resume_anyway(work, capsys):
    t = trainer(work, "m")
    t.end_of_epoch(t.train_one_epoch(), StopOnSignal())
    state = t.state_dict()
    changed = ["--lr", "0.01", "--img_size", "24", "--img_lmd", "0.25", "--temperature", "0.1", "--precision", "bf16"]
    changed += ["--augment", "gpu", "--batch_size", "2", "--cos", "true", "--empty_poi_tiles", "include"]
    with pytest.raises(UserError) as refused:
        trainer(work, "x", *changed).load_state_dict(state, source="ck")
    msg = str(refused.value)
    for shown in ("--lr 0.001 (now 0.01)", "--img_size 16 (now 24)", "--img_lmd 0.5 (now 0.25)",
                  "--temperature 0.5 (now 0.1)", "--precision fp32 (now bf16)", "--augment cpu (now gpu)",
                  "--batch_size 4 (now 2)", "--cos false (now true)", "--empty_poi_tiles exclude (now include)",
                  "--resume_anyway"):  # fmt: skip
        assert shown in msg, msg
    assert "--seed" not in msg and "--total_epoch" not in msg
    # Extending the run, or changing only its speed, is no change of configuration.
    same = trainer(work, "y", "--total_epoch", "5", "--deterministic", "false")
    same.load_state_dict(state, source="ck")
    assert same.epoch == 1
    capsys.readouterr()
    anyway = trainer(work, "z", "--lr", "0.01", "--resume_anyway")
    anyway.load_state_dict(state, source="ck")
    assert anyway.epoch == 1 and anyway.args.lr == 0.01
    assert "warning: --resume_anyway: ck continues with changed flags: --lr 0.001 (now 0.01)" in capsys.readouterr().err


def test_checkpoint_from_before_a_flag_counts_with_the_behaviour_of_its_time(work):
    t = trainer(work, "m", "--empty_poi_tiles", "include")
    t.end_of_epoch(t.train_one_epoch(), StopOnSignal())
    state = t.state_dict()
    del state["args"]["empty_poi_tiles"]  # as written before the flag existed, when every tile entered both terms
    with pytest.raises(UserError, match=r"--empty_poi_tiles include \(now exclude\)"):
        trainer(work, "x").load_state_dict(state, source="ck")
    trainer(work, "y", "--empty_poi_tiles", "include").load_state_dict(state, source="ck")
    # A checkpoint that records no flags at all is not compared.
    trainer(work, "z").load_state_dict({**state, "args": {}}, source="ck")


def test_non_finite_weights_are_never_saved(work):
    t = trainer(work, "m")
    with torch.no_grad():
        next(t.poi_model.parameters()).view(-1)[0] = float("nan")
    t.epoch, t.step = 2, 5
    with pytest.raises(UserError, match=r"non-finite .* at epoch 3, step 5; no checkpoint was written"):
        t.save()
    assert not (work / "m" / "checkpoint_last.pt").exists()


def test_space_estimate_covers_the_files_a_run_writes(work):
    t = trainer(work, "m", "--save_every", "1")
    est = estimate_pretrain_space(t.img_model, t.poi_model, t.args, t.steps_per_epoch)
    t.end_of_epoch(t.train_one_epoch(), StopOnSignal())
    real = (work / "m" / "checkpoint_last.pt").stat().st_size
    pair = sum((work / "m" / f"wuhan_{k}_1.tar").stat().st_size for k in ("img", "poi"))
    assert real <= est.resumable <= real + 256 * 1024 and pair <= est.epoch_pair <= pair + 64 * 1024


# ------------------------------------------------------------------- tiles without POIs (--empty_poi_tiles)


def test_tiles_without_pois_leave_only_the_image_poi_term(work):
    t = trainer(work, "m")  # tiles 0 and 5 of 8 have no POI (make_layout)
    assert t.args.empty_poi_tiles == "exclude" and t.dataset.without_pois == 2
    include = argparse.Namespace(**{**vars(t.args), "empty_poi_tiles": "include"})
    cpu = torch.device("cpu")
    mixed = 0
    for batch in t.loader:
        keep = batch.has_pois
        mixed += int(not keep.all())
        _, inter_e, intra_e, z1 = mmgr.training_step(batch, t.img_model, t.poi_model, t.args, cpu)
        _, inter_i, intra_i, z1_i = mmgr.training_step(batch, t.img_model, t.poi_model, include, cpu)
        g = batch.graphs
        zp = t.poi_model(g.x, g.edge_index, g.batch, g.num_graphs, g.edge_weight)
        assert torch.equal(z1, z1_i) and torch.equal(intra_e, intra_i)  # the image–image term keeps every tile
        assert torch.allclose(inter_e, nt_xent(z1[keep], zp[keep], 0.5), atol=1e-6)
        assert torch.allclose(inter_i, nt_xent(z1, zp, 0.5), atol=1e-6)
        assert keep.all() or not torch.allclose(inter_e, inter_i)
    assert mixed  # the data's empty tiles were in some batch


def test_both_behaviours_train_bit_identically_when_every_tile_has_pois(work):
    make_layout(work / "full", n_tiles=8, size=16, zero_poi=())

    def one_epoch(t: Pretrainer) -> tuple[dict, dict[str, torch.Tensor]]:
        return t.train_one_epoch(), weights(t)

    (log_e, a), (log_i, b) = (
        one_epoch(trainer(work, m, "--empty_poi_tiles", m, data="full")) for m in ("exclude", "include")
    )
    assert log_e["loss_inter"] == log_i["loss_inter"] and all(torch.equal(a[k], b[k]) for k in a)
    # ... and they part on data with empty tiles
    (log_e, c), (log_i, d) = (one_epoch(trainer(work, m + "2", "--empty_poi_tiles", m)) for m in ("exclude", "include"))
    assert log_e["loss_inter"] != log_i["loss_inter"] and any(not torch.equal(c[k], d[k]) for k in c)


@pytest.mark.slow
def test_no_poi_anywhere_refuses_a_poi_term_and_mostly_empty_data_is_announced(work, capsys):
    make_layout(work / "none", n_tiles=8, size=16, zero_poi=tuple(range(8)))
    base = ["--data_path", str(work / "none"), "--model_path", str(work / "run"), *TINY, "--total_epoch", "1"]
    with pytest.raises(UserError, match=r"no tile of .*none has a POI.*pass --img_lmd 1") as exc:
        mmgr.main(base)
    assert "\n" not in str(exc.value)
    assert not (work / "run" / "checkpoint_last.pt").exists()  # stopped before training
    mmgr.main([*base, "--img_lmd", "1"])  # the same folder, image-only: trains
    assert (work / "run" / "wuhan_img_1.tar").is_file()

    make_layout(work / "most", n_tiles=8, size=16, zero_poi=(0, 1, 2, 3, 4))
    capsys.readouterr()
    mmgr.main(["--data_path", str(work / "most"), "--model_path", str(work / "m2"), *TINY, "--total_epoch", "1"])
    out = capsys.readouterr().out
    assert "5 of 8 tiles have no POI: they take part in the image–image term only (--empty_poi_tiles)" in out
    saved = json.loads((work / "m2" / "args.json").read_text())
    ckpt = torch.load(work / "m2" / "checkpoint_last.pt", weights_only=True)
    assert saved["empty_poi_tiles"] == ckpt["args"]["empty_poi_tiles"] == "exclude"
    bare = torch.load(work / "m2" / "wuhan_poi_1.tar", weights_only=True)
    assert set(bare) == set(ckpt["poi"])  # the published state-dict keys, nothing added
    # with no image–image term (λ = 0), any tile without POIs would take no part in training: always said
    t = trainer(work, "m4", "--img_lmd", "0")
    mmgr.check_poi_tiles(t.args, t.dataset, DistInfo())
    assert "2 of 8 tiles have no POI: with --img_lmd 0 they take no part in training at all" in capsys.readouterr().out
    t = trainer(work, "m5", "--img_lmd", "0", "--empty_poi_tiles", "include")
    mmgr.check_poi_tiles(t.args, t.dataset, DistInfo())
    assert "have no POI" not in capsys.readouterr().out
    # fewer than half empty (the default fixture: 2 of 8), or no image–POI term: no line
    for extra in ([], ["--img_lmd", "1"]):
        t = trainer(work, "m3", *extra, data="d" if not extra else "most")
        mmgr.check_poi_tiles(t.args, t.dataset, DistInfo())
        assert "have no POI" not in capsys.readouterr().out
