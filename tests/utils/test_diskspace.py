"""utils/diskspace.py: free space, the check before a run (stop / warn / quiet), and size estimates that
are never below what torch.save writes."""

import io

import pytest
import torch

import utils.diskspace as ds
from models.image_encoder import ImageEncoder
from models.poi_encoder import build_poi_encoder
from utils.diskspace import (
    MARGIN_BYTES,
    NotEnoughSpace,
    adam_state_nbytes,
    check_free_space,
    free_bytes,
    human_bytes,
    mount_point,
    state_nbytes,
)
from utils.errors import EXIT_STORAGE

MiB = 2**20


def saved_size(obj) -> int:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.tell()


def test_human_bytes():
    assert [human_bytes(n) for n in (0, 1023, 1536, 5 * MiB, 3 * 2**30 + 2**29, 2**50)] == [
        "0 bytes",
        "1023 bytes",
        "1.5 KiB",
        "5.0 MiB",
        "3.5 GiB",
        "1024.0 TiB",
    ]


def test_free_bytes_of_a_folder_not_created_yet(tmp_path):
    later = tmp_path / "a" / "b" / "run"
    assert abs(free_bytes(later) - free_bytes(tmp_path)) < 64 * MiB  # the same file system, give or take others' writes
    assert mount_point(later) == mount_point(tmp_path) and mount_point("/") == mount_point("/").parent


def test_check_free_space_stops_warns_or_stays_quiet(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(ds, "free_bytes", lambda p: 1000 * MiB)
    with pytest.raises(NotEnoughSpace) as err:
        check_free_space(tmp_path / "m", 1500 * MiB, "this run's checkpoints", another="another --model_path")
    msg = str(err.value)
    assert err.value.exit_code == EXIT_STORAGE
    assert msg.startswith(f"this run's checkpoints needs about 1.5 GiB in {tmp_path / 'm'} (file system at ")
    assert msg.endswith("but only 1000.0 MiB is free there; free at least 500.0 MiB or pass another --model_path")
    assert check_free_space(tmp_path, 950 * MiB, "the pack") == 1000 * MiB  # 50 MiB spare < 100 MiB: warn
    warn = capsys.readouterr().err
    assert (
        warn.startswith("warning: the pack needs about 950.0 MiB")
        and "only 50.0 MiB to spare (less than 100.0 MiB)" in warn
    )
    assert warn.count("\n") == 1
    check_free_space(tmp_path, 1000 * MiB - MARGIN_BYTES, "x")  # exactly the margin: quiet
    monkeypatch.setattr(ds, "free_bytes", lambda p: 100_000 * MiB)
    check_free_space(tmp_path, 91_000 * MiB, "x")  # 9 GiB spare but < 10 % of the need: warn
    assert "less than 8.9 GiB" in capsys.readouterr().err
    check_free_space(tmp_path, 90_000 * MiB, "x")
    assert capsys.readouterr().err == ""


def test_estimates_cover_what_torch_save_writes():
    torch.manual_seed(0)
    for model in (ImageEncoder("resnet18", 16), build_poi_encoder("set2set", 8, 16), torch.nn.Linear(3, 2)):
        sd = model.state_dict()
        real = saved_size(sd)
        assert real <= state_nbytes(sd) <= real * 1.01 + 16384
        opt = torch.optim.Adam(model.parameters())
        assert saved_size(opt.state_dict()) < 2048  # empty before the first step: why it is estimated
        for p in model.parameters():
            p.grad = torch.ones_like(p)
        opt.step()
        real = saved_size(opt.state_dict())
        assert real <= adam_state_nbytes(model.parameters()) <= real * 1.01 + 16384
    big = torch.zeros(1000)
    assert state_nbytes({"a": big, "b": big[:10], "c": [big]}) == 4000 + ds.SAVE_OVERHEAD + 3 * ds.TENSOR_OVERHEAD
    assert state_nbytes({"m": torch.empty(10, 10, device="meta")}) == 400 + ds.SAVE_OVERHEAD + ds.TENSOR_OVERHEAD
