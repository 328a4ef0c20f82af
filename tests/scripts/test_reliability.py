"""mmgr.py's guards, in-process: bad inputs, --check_data / --bad_samples, safe loading, wrong
checkpoints, the divergence guard, --keep_last, the collapse warning, SIGINT handling."""

import json
import os
import signal
from pathlib import Path

import pytest
import torch

import mmgr
from engine import pretrain
from engine.checkpoints import assert_finite, prune_bare
from tests.conftest import ROOT, make_layout, run_script
from utils.errors import UserError
from utils.fileio import load_file
from utils.signals import StopOnSignal

TINY = [
    "--batch_size",
    "4",
    "--resnet",
    "resnet18",
    "--img_size",
    "24",
    "--device",
    "cpu",
    "--workers",
    "0",
    "--projection_dim",
    "16",
    "--lr",
    "1e-3",
    "--total_epoch",
    "1",
    "--train_record",
    "rec.txt",
]


class Payload:
    """Unpickling this runs ``exec``: it creates ``target``. A file carrying it must be refused."""

    def __init__(self, target: Path):
        self.target = target

    def __reduce__(self):
        return (exec, (f"open({str(self.target)!r}, 'w').close()",))


def train(data: Path, model: Path, *extra: str) -> None:
    mmgr.main(["--data_path", str(data), "--model_path", str(model), *TINY, *extra])


def error_of(data: Path, model: Path, *extra: str) -> str:
    with pytest.raises(UserError) as err:
        train(data, model, *extra)
    return str(err.value)


@pytest.fixture
def work(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # train-records/ goes to the cwd, as published
    return tmp_path


@pytest.mark.slow
def test_check_data_lists_every_bad_file_and_exits_2(tmp_path):
    data = make_layout(tmp_path / "d", n_tiles=8, size=16)
    (data / "sub_shanghai_img" / "t001.png").write_text("not a png")
    torch.save(torch.zeros(3, 5), data / "sub_shanghai_emb" / "t002.tensor")
    (data / "sub_shanghai_weight" / "t003.tensor").unlink()
    r = run_script([str(ROOT / "mmgr.py"), "--data_path", str(data), "--check_data", "--workers", "0"], cwd=tmp_path)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    bad = [line for line in r.stdout.splitlines() if line.startswith("bad: ")]
    assert len(bad) == 3 and "t001.png is not an image" in bad[1] + bad[0] + bad[2]
    assert "scan: 5 good tiles, 3 bad tiles" in r.stdout
    assert r.stderr.strip().startswith("error: 3 problems in 3 tiles")
    clean = make_layout(tmp_path / "c", n_tiles=4, size=16)
    r = run_script([str(ROOT / "mmgr.py"), "--data_path", str(clean), "--check_data", "--workers", "0"], cwd=tmp_path)
    assert r.returncode == 0 and "scan: 4 good tiles, 0 bad tiles" in r.stdout
    # The scan only: nothing written but its cache, in the (default) run folder.
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == [".mmgr.lock", "scan_cache.json"]


def test_bad_samples_error_then_skip(work, capsys):
    data = make_layout(work / "d", n_tiles=10, size=16)
    (data / "sub_shanghai_img" / "t004.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    msg = error_of(data, work / "m")
    assert "t004.png is not an image" in msg
    # no checkpoint, no args.json: only the lock, the run's id and the scan cache
    assert sorted(p.name for p in (work / "m").iterdir()) == [".mmgr.lock", "mmgr_run.json", "scan_cache.json"]
    train(data, work / "m", "--bad_samples", "skip")
    err = capsys.readouterr().err
    assert "training on 9 tiles, leaving out 1" in err
    assert len((work / "train-records" / "rec.txt").read_text().splitlines()) == 2  # 9 tiles // 4
    # Fewer usable tiles than one batch after skipping: one sentence, not a crash.
    for i in range(1, 9):
        (data / "sub_shanghai_edge" / f"t{i:03d}.tensor").unlink()
    assert "fewer than one batch" in error_of(data, work / "m2", "--bad_samples", "skip")


def test_malicious_tensor_and_checkpoint_are_refused_and_run_nothing(work):
    target = work / "pwned"
    data = make_layout(work / "d", n_tiles=8, size=16)
    torch.save(Payload(target), work / "probe.tensor")
    torch.load(work / "probe.tensor", weights_only=False)  # the payload is live: unsafe loading creates the file
    assert target.exists()
    target.unlink()

    torch.save({"x": torch.zeros(2, 8), "evil": Payload(target)}, data / "sub_shanghai_emb" / "t003.tensor")
    msg = error_of(data, work / "m")
    assert "t003.tensor contains pickled objects other than tensors, refused because loading them could run code" in msg
    assert not target.exists()

    data = make_layout(work / "d2", n_tiles=8, size=16)
    (work / "m").mkdir(exist_ok=True)  # the scan above made it, for its cache
    torch.save({"img": Payload(target), "epoch": 1}, work / "m" / "checkpoint_last.pt")
    msg = error_of(data, work / "m", "--resume")
    assert "checkpoint_last.pt contains pickled objects other than tensors" in msg and not target.exists()
    with pytest.raises(UserError, match="refused"):
        load_file(work / "m" / "checkpoint_last.pt")
    assert not target.exists()


def test_wrong_checkpoints_for_resume(work):
    data = make_layout(work / "d", n_tiles=8, size=16)
    train(data, work / "m")
    assert "is a bare state dict" in error_of(data, work / "m", "--resume", str(work / "m" / "wuhan_img_1.tar"))
    msg = error_of(data, work / "m", "--resume", "--resnet", "resnet34")
    assert "was trained with --resnet resnet18 but this run has resnet34" in msg
    torch.save({"some": "dict"}, work / "other.pt")
    # Another folder's file starts a new folder from it (m holds a run: it would be refused).
    assert "not a resumable MMGR checkpoint" in error_of(data, work / "m2", "--resume", str(work / "other.pt"))
    (work / "trunc.pt").write_bytes((work / "m" / "checkpoint_last.pt").read_bytes()[:1000])
    assert "not a readable torch file" in error_of(data, work / "m3", "--resume", str(work / "trunc.pt"))
    assert "does not exist" in error_of(data, work / "empty", "--resume")


def test_divergence_stops_naming_epoch_and_step_and_keeps_last_good_checkpoint(work):
    data = make_layout(work / "d", n_tiles=8, size=16)
    train(data, work / "m")
    good = (work / "m" / "checkpoint_last.pt").read_bytes()
    # Finite but huge embeddings overflow the POI encoder: the loss becomes NaN in epoch 2.
    for i in range(8):
        p = data / "sub_shanghai_emb" / f"t{i:03d}.tensor"
        torch.save(torch.full_like(torch.load(p, weights_only=True), 3e38), p)
    msg = error_of(data, work / "m", "--resume", "--total_epoch", "2", "--save_every_steps", "1")
    assert "at epoch 2, step 1" in msg and "last good checkpoint is kept" in msg
    assert (work / "m" / "checkpoint_last.pt").read_bytes() == good


def test_no_checkpoint_from_non_finite_weights(tmp_path):
    m = torch.nn.Linear(2, 2)
    with torch.no_grad():
        m.weight[0, 0] = float("nan")
    with pytest.raises(UserError, match=r"weights became non-finite \(weight\) at epoch 3, step 5"):
        assert_finite(tmp_path, "at epoch 3, step 5", m)


def test_keep_last_prunes_old_bare_checkpoints(work):
    data = make_layout(work / "d", n_tiles=8, size=16)
    train(data, work / "m", "--total_epoch", "3", "--save_every", "1", "--keep_last", "2")
    names = sorted(p.name for p in (work / "m").glob("*.tar"))
    assert names == ["wuhan_img_2.tar", "wuhan_img_3.tar", "wuhan_poi_2.tar", "wuhan_poi_3.tar"]
    (work / "m" / "other_img_1.tar").write_bytes(b"x")  # another prefix is never touched
    gone = prune_bare(work / "m", "wuhan", 1)
    assert sorted(p.name for p in gone) == ["wuhan_img_2.tar", "wuhan_poi_2.tar"]
    assert sorted(p.name for p in (work / "m").glob("wuhan_*")) == ["wuhan_img_3.tar", "wuhan_poi_3.tar"]
    assert (work / "m" / "other_img_1.tar").exists()


def test_collapse_warning_with_figures(capsys):
    pretrain.warn_collapse(4, 1e-4, 2.0, 2.0, 2.0794, 16)
    err = capsys.readouterr().err
    assert "epoch 4" in err and "1.00e-04" in err and "ln(2B-1) = 2.0794" in err
    pretrain.warn_collapse(4, 0.2, 1.2, 0.9, 2.0794, 16)  # spread embeddings, loss well below ln(2B-1)
    assert capsys.readouterr().err == ""


def test_log_has_collapse_figures_each_epoch(work):
    data = make_layout(work / "d", n_tiles=8, size=16)
    train(data, work / "m", "--total_epoch", "2")
    log = [json.loads(line) for line in (work / "m" / "train_log.jsonl").read_text().splitlines()]
    assert [e["epoch"] for e in log] == [1, 2]
    assert all(
        e["emb_std"] > 0 and e["loss_uniform"] == pytest.approx(torch.log(torch.tensor(7.0)).item()) for e in log
    )


def test_stop_on_signal_records_then_restores():
    before = signal.getsignal(signal.SIGINT)
    with StopOnSignal() as stop:
        os.kill(os.getpid(), signal.SIGINT)
        assert stop.requested and stop.name == "SIGINT"
        with pytest.raises(KeyboardInterrupt):  # a second signal interrupts at once
            os.kill(os.getpid(), signal.SIGINT)
    assert signal.getsignal(signal.SIGINT) == before
