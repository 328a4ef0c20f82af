"""Failures under torchrun end cleanly on every process (issue 20 §3): mmgr.py under torchrun, 2 gloo CPU
processes, one failure injected into one of them mid-run (benchmarks/torchrun_failures.py, which also
measures the exit delays). Every process must learn of the failure through the process group and exit
with the same status; rank 0 alone prints the one sentence; no traceback of the project's code (torchrun
prints its own summary); nobody waits in a collective (the subprocess timeout would fail the test)."""

from __future__ import annotations

import pytest
import torch

from benchmarks.torchrun_failures import FAILING_RANK, run
from tests.conftest import ROOT
from utils.errors import EXIT_STORAGE, EXIT_USER_ERROR

EXPECTED = {
    # failure: (exit status of every process, what the one sentence says)
    "disk_full": (EXIT_STORAGE, "checkpoint_last.pt (1000 bytes of about"),
    "read_only": (EXIT_STORAGE, "the file system is read-only"),
    "bad_tile": (EXIT_USER_ERROR, "is not a readable image"),
    "demo_city": (
        EXIT_USER_ERROR,
        "is not a synthetic city, so the demo will not write over it; pass another --demo_dir",
    ),
}


@pytest.mark.slow
@pytest.mark.parametrize("failure", sorted(EXPECTED))
def test_a_failure_on_one_process_ends_every_process_with_one_sentence(tmp_path, failure):
    status, says = EXPECTED[failure]
    r = run(failure, tmp_path, timeout=240)
    err = r["stderr"]
    assert {k: v["status"] for k, v in r["ranks"].items()} == {0: status, 1: status}, err[-3000:]
    sentences = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(sentences) == 1 and says in sentences[0], err[-3000:]
    assert f'File "{ROOT}' not in err and "Connection closed" not in err, err[-3000:]
    assert r["ranks"][FAILING_RANK[failure]]["delay_s"] is not None  # the failure did happen
    if failure == "demo_city":  # refused at start-up: nothing trained, the user's file untouched
        assert (tmp_path / "demo" / "city").read_text() == "not a city\n"
        return
    ckpt = torch.load(f"{r['model_path']}/checkpoint_last.pt", weights_only=True)
    if failure == "disk_full":  # the save at step 2 failed: the one from before the first step is intact
        assert (ckpt["epoch"], ckpt["step"]) == (0, 0)
    elif failure == "read_only":  # the save after epoch 1 was refused: the one at step 2 is kept
        assert (ckpt["epoch"], ckpt["step"]) == (0, 2)
    else:
        assert "sub_shanghai_img" in sentences[0]  # the damaged tile, met by rank 1 alone, named by rank 0
