"""engine/run_folder.py: a run folder belongs to one run (fresh / resume / auto / overwrite), one writer
at a time, a space estimate that covers the real files, and the image checkpoint of the folder's own run."""

import json
import os
import tempfile
from argparse import Namespace
from pathlib import Path

import pytest
import torch

import utils.diskspace as ds
from engine import checkpoints
from engine.run_folder import (
    MANIFEST_NAME,
    RESUME_NAME,
    RunFolder,
    consistent_image_checkpoint,
    estimate_pretrain_space,
)
from models.image_encoder import ImageEncoder
from utils.errors import FolderBusy, StorageError, UserError

REFUSAL = "pass --resume to continue it, another --model_path, or --overwrite to replace it"


def put(folder: Path, *names: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for n in names:
        (folder / n).write_bytes(b"x" * 10)


def temp_names(folder: Path) -> list[str]:
    """Temporary files exactly as utils/fileio.py's writers name them."""
    folder.mkdir(parents=True, exist_ok=True)
    made = [
        tempfile.mkstemp(prefix=".checkpoint_last.pt.", suffix=".tmp", dir=folder),
        tempfile.mkstemp(prefix=".wuhan_img_3.", suffix=".tmp.tar", dir=folder),
        tempfile.mkstemp(prefix=".train_log.jsonl.", suffix=".tmp", dir=folder),
    ]
    for fd, _ in made:
        os.close(fd)
    return sorted(Path(p).name for _, p in made)


def listing(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_contents_by_kind_and_only_the_tools_files(tmp_path):
    m = tmp_path / "m"
    put(
        m,
        RESUME_NAME,
        "wuhan_img_1.tar",
        "wuhan_poi_1.tar",
        "other_img_12.tar",
        "args.json",
        "train_log.jsonl",
        "scan_cache.json",
        ".mmgr.lock",
        "notes.txt",
        "wuhan_img_x.tar",
        ".notes.txt.abcdefgh.tmp",
    )
    (m / "wuhan_img_2.tar").mkdir()  # a subfolder is never the tool's
    tmps = temp_names(m)
    held = RunFolder(m).holds_run()
    assert held and held.kinds == ["resumable checkpoint", "epoch files", "logs"]
    assert [p.name for p in held.epoch_files] == ["other_img_12.tar", "wuhan_img_1.tar", "wuhan_poi_1.tar"]
    assert sorted(p.name for p in held.temp) == tmps
    assert held.describe() == (
        "a resumable checkpoint (checkpoint_last.pt), 3 epoch files (up to epoch 12), logs (args.json, train_log.jsonl)"
    )
    assert not RunFolder(tmp_path / "none").holds_run()
    put(tmp_path / "cache_only", "scan_cache.json", ".mmgr.lock", MANIFEST_NAME)
    assert not RunFolder(tmp_path / "cache_only").holds_run()  # a --check_data, or a claim that never trained


@pytest.mark.parametrize(
    "names,kind",
    [
        ([RESUME_NAME], "a resumable checkpoint (checkpoint_last.pt)"),
        (["wuhan_img_3.tar", "wuhan_poi_3.tar"], "2 epoch files (up to epoch 3)"),
        (["train_log.jsonl"], "logs (train_log.jsonl)"),
        (["args.json"], "logs (args.json)"),
    ],
)
def test_fresh_start_refused_on_each_kind_of_earlier_run(tmp_path, names, kind):
    m = tmp_path / "m"
    put(m, *names)
    before = {p.name: p.read_bytes() for p in m.iterdir()}
    with pytest.raises(UserError) as err:
        RunFolder(m).claim("fresh")
    assert str(err.value) == f"{m} already holds a run ({kind}); {REFUSAL}" and err.value.exit_code == 2
    assert {p.name: p.read_bytes() for p in m.iterdir() if p.name != ".mmgr.lock"} == before
    with RunFolder(m) as again:  # the refused claim let go of the lock
        assert again.claim("overwrite").start == "fresh"


def test_fresh_claim_writes_a_run_id_and_holds_the_folder_and_the_record(tmp_path):
    m, rec = tmp_path / "m", tmp_path / "train-records" / "rec.txt"
    put(m, "scan_cache.json")
    a = RunFolder(m, record=rec)
    claimed = a.claim("fresh")
    assert claimed.start == "fresh" and len(claimed.run_id) == 16 and a.run_id == claimed.run_id
    assert json.loads((m / MANIFEST_NAME).read_text())["run_id"] == claimed.run_id
    assert listing(m) == [".mmgr.lock", MANIFEST_NAME, "scan_cache.json"]
    for mode in ("fresh", "resume", "auto", "overwrite"):  # a second process wants the folder: refused, untouched
        put(m, RESUME_NAME)
        with pytest.raises(FolderBusy, match=rf"^{m} is in use by this same process"):
            RunFolder(m).claim(mode)
        (m / RESUME_NAME).unlink()
    with pytest.raises(FolderBusy, match=rf"^{rec} is in use by .* or pass another --train_record$"):
        RunFolder(tmp_path / "m2", record=rec).claim("fresh")  # two runs never append to one record
    a.release()
    with RunFolder(tmp_path / "m2", record=rec) as b:
        assert b.claim("fresh").start == "fresh"


def test_overwrite_removes_only_the_tools_files_and_empties_the_record_first(tmp_path, capsys):
    m, rec = tmp_path / "m", tmp_path / "train-records" / "rec.txt"
    put(
        m,
        RESUME_NAME,
        "wuhan_img_1.tar",
        "wuhan_poi_1.tar",
        "r18_img_3.tar",
        "args.json",
        "train_log.jsonl",
        MANIFEST_NAME,
        "scan_cache.json",
        "notes.txt",
        "wuhan_img_x.tar",
    )
    (m / "sub").mkdir()
    (m / "sub" / "wuhan_img_9.tar").write_bytes(b"kept")
    (m / "wuhan_img_7.tar").mkdir()
    temp_names(m)
    put(rec.parent, rec.name)
    with RunFolder(m, record=rec) as folder:
        claimed = folder.claim("overwrite")
        assert claimed.start == "fresh" and len(claimed.removed) == 10
        assert listing(m) == [
            ".mmgr.lock",
            MANIFEST_NAME,
            "notes.txt",
            "scan_cache.json",
            "sub",
            "wuhan_img_7.tar",
            "wuhan_img_x.tar",
        ]
        assert (m / "sub" / "wuhan_img_9.tar").read_bytes() == b"kept" and rec.read_bytes() == b""
        assert json.loads((m / MANIFEST_NAME).read_text())["epoch_files"] == {}
    assert capsys.readouterr().out.startswith(f"overwrite: removed 10 file(s) of the replaced run from {m} (")


def test_resume_and_auto(tmp_path, capsys):
    gone = tmp_path / "gone"
    with pytest.raises(
        UserError,
        match=rf"^{gone / RESUME_NAME} does not exist, so there is no run to resume in {gone}; "
        r"start without --resume \(or use --resume auto\)$",
    ):
        RunFolder(gone).claim("resume")
    assert not gone.exists()  # not created by a refused resume
    assert RunFolder(gone).claim("auto").start == "fresh"

    m = tmp_path / "m"
    put(m, "wuhan_img_2.tar")
    with pytest.raises(UserError, match=r"it holds 1 epoch file \(up to epoch 2\); start without --resume"):
        RunFolder(m).claim("resume")
    with pytest.raises(
        UserError,
        match=r"holds 1 epoch file \(up to epoch 2\) but no checkpoint_last.pt to resume; "
        "pass another --model_path, or --overwrite to replace that run$",
    ):
        RunFolder(m).claim("auto")

    with RunFolder(m) as f:
        first = f.claim("overwrite").run_id
    put(m, "args.json", "train_log.jsonl")  # a start killed before its first checkpoint
    with RunFolder(m) as f:
        claimed = f.claim("auto")
    assert claimed.start == "fresh" and {p.name for p in claimed.removed} == {
        "args.json",
        "train_log.jsonl",
        MANIFEST_NAME,
    }
    assert claimed.run_id != first and "start that never reached a checkpoint" in capsys.readouterr().out
    put(m, RESUME_NAME)
    for mode in ("resume", "auto"):
        with RunFolder(m) as f:
            assert f.claim(mode) == type(claimed)("resume", claimed.run_id)  # a resumed run keeps its id


def test_resume_of_a_folder_from_before_run_ids_adopts_its_epoch_files(tmp_path):
    m = tmp_path / "m"
    put(m, RESUME_NAME, "wuhan_img_1.tar", "wuhan_img_3.tar", "other_img_1.tar")
    (m / "args.json").write_text(json.dumps({"ckpt_prefix": "wuhan", "total_epoch": 2}))
    with RunFolder(m) as f:
        run_id = f.claim("resume").run_id
    manifest = json.loads((m / MANIFEST_NAME).read_text())
    assert manifest["run_id"] == run_id and manifest["adopted"] is True
    assert list(manifest["epoch_files"]) == ["wuhan_img_1.tar"]


def tiny_args(**kw) -> Namespace:
    base = {"total_epoch": 5, "save_every": 2, "keep_last": 0, "ckpt_prefix": "wuhan", "batch_size": 4}
    return Namespace(**{**base, **kw})


def test_space_estimate_counts_the_epochs_held():
    torch.manual_seed(0)
    img, poi = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.BatchNorm1d(64)), torch.nn.Linear(16, 8)
    est = estimate_pretrain_space(img, poi, tiny_args(), steps_per_epoch=10)
    assert est.epochs_held == 3  # epochs 2, 4 and the last (5)
    assert estimate_pretrain_space(img, poi, tiny_args(keep_last=1), 10).epochs_held == 2  # the newest lands first
    assert estimate_pretrain_space(img, poi, tiny_args(keep_last=9), 10).epochs_held == 3
    assert est.folder == 3 * est.epoch_pair + 2 * est.resumable + est.log and est.record == 96 * 10 * 5
    # (tests/engine/test_pretrain.py checks the estimate against the files a real run writes)


def test_check_space_counts_what_the_folder_holds_and_names_the_flag(tmp_path, monkeypatch, capsys):
    m = tmp_path / "m"
    put(m, RESUME_NAME)
    (m / "wuhan_img_2.tar").write_bytes(b"x" * 5000)
    est = estimate_pretrain_space(torch.nn.Linear(4, 4), torch.nn.Linear(4, 4), tiny_args(), 2)
    folder = RunFolder(m, record=tmp_path / "train-records" / "rec.txt")
    need = est.folder - 5010 + est.record
    monkeypatch.setattr(ds, "free_bytes", lambda p: need - 1)
    with pytest.raises(
        StorageError,
        match=r"^this run \(3 epoch pair\(s\) of .* two resumable checkpoints of .*, logs, "
        r"per-step record\) needs about .* free there; free at least 1 bytes or pass "
        r"another --model_path$",
    ):
        folder.check_space(est)
    monkeypatch.setattr(ds, "free_bytes", lambda p: need)
    folder.check_space(est)
    assert "only 0 bytes to spare" in capsys.readouterr().err


def image_state(resnet: str = "resnet18", proj: int = 8) -> dict:
    torch.manual_seed(0)
    return ImageEncoder(resnet, proj).state_dict()


def test_consistent_image_checkpoint_with_run_ids(tmp_path, capsys):
    m = tmp_path / "m"
    with RunFolder(m) as f:
        run_id = f.claim("fresh").run_id
        (m / "args.json").write_text(json.dumps({"run_id": run_id, "ckpt_prefix": "wuhan", "total_epoch": 9}))
        for e in (1, 2):
            files = [m / f"wuhan_{k}_{e}.tar" for k in ("img", "poi")]
            for p in files:
                torch.save({"w": torch.zeros(e)}, p)
            f.note_epoch_files(e, files)
    assert consistent_image_checkpoint(m) == m / "wuhan_img_2.tar" and capsys.readouterr().err == ""
    torch.save({"w": torch.zeros(3)}, m / "wuhan_img_5.tar")  # copied in from another run: not listed
    torch.save({"w": torch.ones(20)}, m / "wuhan_img_2.tar")  # replaced by hand: its size changed
    assert consistent_image_checkpoint(m) == m / "wuhan_img_1.tar"
    assert capsys.readouterr().err == (
        f"note: using wuhan_img_1.tar; ignoring wuhan_img_2.tar, wuhan_img_5.tar in {m}: "
        f"not listed as run {run_id}'s in {MANIFEST_NAME}\n"
    )
    (m / "wuhan_img_1.tar").unlink()
    with pytest.raises(
        UserError,
        match=rf"^{m} holds no image checkpoint of its run {run_id} \(the \*_img_\*.tar files "
        r"there, wuhan_img_2.tar, wuhan_img_5.tar, are not listed",
    ):
        consistent_image_checkpoint(m)
    (m / "args.json").write_text(json.dumps({"run_id": "0" * 16}))
    with pytest.raises(UserError, match="the folder mixes two runs; pass --ckpt"):
        consistent_image_checkpoint(m)


def test_consistent_image_checkpoint_in_folders_from_before_run_ids(tmp_path, capsys):
    # The folder: a 3-epoch run, then a 1-epoch run of another ResNet started over it.
    m = tmp_path / "m"
    put(m, "wuhan_img_3.tar", "other_img_9.tar")
    torch.save(image_state(), m / "wuhan_img_1.tar")
    (m / "args.json").write_text(
        json.dumps({"resnet": "resnet18", "projection_dim": 8, "ckpt_prefix": "wuhan", "total_epoch": 1})
    )
    assert consistent_image_checkpoint(m) == m / "wuhan_img_1.tar"
    assert "ignoring wuhan_img_3.tar, other_img_9.tar" in capsys.readouterr().err
    (m / "args.json").write_text(
        json.dumps({"resnet": "resnet34", "projection_dim": 8, "ckpt_prefix": "wuhan", "total_epoch": 1})
    )
    with pytest.raises(
        UserError,
        match=r"wuhan_img_1.tar holds resnet18 weights with projection 8 but .*args.json "
        r"describes a resnet34 run .*mixes files of two runs; pass --ckpt",
    ):
        consistent_image_checkpoint(m)
    (m / "args.json").unlink()  # published checkpoints, no logs: the newest epoch, as before
    assert consistent_image_checkpoint(m) == m / "other_img_9.tar"
    with pytest.raises(UserError, match="no image checkpoint"):
        consistent_image_checkpoint(tmp_path / "empty")


def test_names_agree_with_the_checkpoint_writer():
    assert RESUME_NAME == checkpoints.RESUME_NAME


def test_overwrite_that_cannot_remove_a_file_says_so_and_lets_go(tmp_path, monkeypatch):
    m = tmp_path / "m"
    put(m, RESUME_NAME)
    real = Path.unlink

    def refuse(self, missing_ok=False):
        if self.name == RESUME_NAME:
            raise PermissionError(13, "Permission denied")
        return real(self, missing_ok=missing_ok)

    monkeypatch.setattr(Path, "unlink", refuse)
    with pytest.raises(
        UserError,
        match=rf"^cannot remove {m / RESUME_NAME} \(Permission denied\) to replace the "
        "earlier run; remove it by hand or pass another --model_path$",
    ):
        RunFolder(m).claim("overwrite")
    with RunFolder(m).lock as lock:  # the refused claim let go of the lock
        assert lock.held
