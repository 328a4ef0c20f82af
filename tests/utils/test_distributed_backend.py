"""The process group's backend (issue 21 §1) and the shared failure in a single process, without a GPU.

Kept apart from tests/utils/test_distributed.py, whose spawned workers import that module: they need
none of the engine imported here."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from engine.pretrain import claim_run_folder
from mmgr import parse_args
from utils import distributed as du


def _served(backend: str) -> set[str]:
    """Device types whose tensors a process group of ``backend`` runs collectives on ("cpu:gloo,cuda:nccl")."""
    if ":" in backend:
        return {part.split(":")[0] for part in backend.split(",")}
    return {"gloo": {"cpu"}, "nccl": {"cuda"}}[backend]


def test_cuda_process_group_serves_the_cpu_collectives(tmp_path: Path, monkeypatch):
    # Issue 21 §1, without a GPU: the group is mocked. With backend="nccl" alone, the run folder's claim (a CPU
    # tensor) would stop every multi-GPU run at start-up ("No backend type associated with device type cpu").
    init: dict = {}
    for k, v in {"RANK": "0", "WORLD_SIZE": "2", "LOCAL_RANK": "0"}.items():
        monkeypatch.setenv(k, v)
    monkeypatch.setattr(torch.cuda, "set_device", lambda d: None)
    monkeypatch.setattr(dist, "is_initialized", lambda: bool(init))
    monkeypatch.setattr(dist, "init_process_group", lambda **kw: init.update(kw))
    info, device = du.init_from_env(torch.device("cuda"))
    assert info.enabled and device == torch.device("cuda", 0) and init["device_id"] == device
    assert _served(init["backend"]) == {"cpu", "cuda"}
    assert _served(du.backend_for(torch.device("cpu"))) == {"cpu"}

    devices: list[str] = []

    def all_reduce(t: torch.Tensor, op=None) -> None:
        assert t.device.type in _served(init["backend"]), f"a {t.device.type} tensor, backend {init['backend']}"
        devices.append(t.device.type)

    monkeypatch.setattr(dist, "all_reduce", all_reduce)
    monkeypatch.setattr(du, "world_size", lambda: 2)
    monkeypatch.setattr(du, "rank", lambda: 0)
    monkeypatch.chdir(tmp_path)
    args = parse_args(["--data_path", str(tmp_path / "d"), "--model_path", str(tmp_path / "m")])
    claim_run_folder(args, info).release()  # the start-up exchange of the claim's outcome
    assert du.max_over_ranks(3) == 3 and du.SharedFailure().share(5) == 5  # stop signals, failures
    assert devices == ["cpu"] * 3


def test_single_process_failures_raise_at_once():
    # One process: nothing is held or exchanged; the exception leaves the block as it always did.
    failure = du.SharedFailure()
    with pytest.raises(OSError, match="No space left"), failure.hold():
        raise OSError(28, "No space left on device")
    assert failure.error is None and failure.share(7) == 7
