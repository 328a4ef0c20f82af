"""Gathered NT-Xent under DDP: 2 gloo CPU processes == 1 process on the concatenated batch."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.nn.parallel import DistributedDataParallel as DDP

from data.resumable import EpochBatchSampler
from models.loss import nt_xent, nt_xent_gathered
from tests.conftest import ROOT, make_layout
from utils import distributed as du

WORLD, B, F_IN, D = 2, 3, 6, 5


def _models() -> tuple[torch.nn.Module, torch.nn.Module]:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(F_IN, 7), torch.nn.ReLU(), torch.nn.Linear(7, D)), torch.nn.Linear(
        F_IN, D
    )


def _data() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return tuple(torch.randn(WORLD * B, F_IN, generator=g) for _ in range(3))  # view 1, view 2, POI


def _objective(img, poi, x1, x2, xp, loss_fn) -> torch.Tensor:
    # The MMGR objective's shape: the image model used twice, both terms on view 1.
    z1 = img(x1)
    return 0.5 * loss_fn(z1, poi(xp), 0.5) + 0.5 * loss_fn(z1, img(x2), 0.5)


def _worker(rank: int, init_file: str, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    try:
        img, poi = _models()
        img_d, poi_d = DDP(img), DDP(poi)
        x1, x2, xp = (x[rank * B : (rank + 1) * B] for x in _data())
        loss = _objective(img_d, poi_d, x1, x2, xp, nt_xent_gathered)
        loss.backward()  # DDP averages the parameter gradients over ranks
        grads = [p.grad.clone() for p in [*img.parameters(), *poi.parameters()]]
        torch.save(
            {"loss": du.all_reduce_mean(loss), "grads": grads, "world": du.world_size(), "rank": du.rank()},
            f"{out}.{rank}",
        )
    finally:
        du.cleanup()


@pytest.mark.slow
def test_gathered_loss_and_grads_match_single_process(tmp_path: Path):
    out = str(tmp_path / "res")
    mp.spawn(_worker, args=(str(tmp_path / "init"), out), nprocs=WORLD, join=True)

    img, poi = _models()
    loss = _objective(img, poi, *_data(), nt_xent)
    loss.backward()
    ref = [p.grad for p in [*img.parameters(), *poi.parameters()]]
    for r in range(WORLD):
        res = torch.load(f"{out}.{r}", weights_only=True)
        assert res["world"] == WORLD and res["rank"] == r
        assert torch.allclose(res["loss"], loss.detach(), atol=1e-5), (res["loss"], loss)
        for g, g_ref in zip(res["grads"], ref, strict=True):
            assert torch.allclose(g, g_ref, atol=1e-5), (g - g_ref).abs().max()


def _buggy_worker(rank: int, init_file: str, out: str) -> None:
    """The published gather: backward returns only the local loss's gradient for the local slice."""
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    try:

        class LocalOnlyGather(torch.autograd.Function):
            @staticmethod
            def forward(ctx, x):
                parts = [torch.empty_like(x) for _ in range(WORLD)]
                dist.all_gather(parts, x.contiguous())
                return tuple(parts)

            @staticmethod
            def backward(ctx, *grads):
                return grads[rank]

        img, poi = _models()
        img_d, poi_d = DDP(img), DDP(poi)
        x1, x2, xp = (x[rank * B : (rank + 1) * B] for x in _data())
        za, zb = img_d(x1), poi_d(xp)
        # Global-batch loss on every rank from the buggy gather, as the published code would do.
        ga, gb = torch.cat(LocalOnlyGather.apply(za)), torch.cat(LocalOnlyGather.apply(zb))
        nt_xent(ga, gb, 0.5).backward()
        torch.save([p.grad.clone() for p in img.parameters()], f"{out}.{rank}")
    finally:
        du.cleanup()


@pytest.mark.slow
def test_published_gather_bug_is_detectable(tmp_path: Path):
    # Guards the test above: the published gather gives different gradients, so equality is meaningful.
    out = str(tmp_path / "bug")
    mp.spawn(_buggy_worker, args=(str(tmp_path / "init"), out), nprocs=WORLD, join=True)
    img, poi = _models()
    x1, _, xp = _data()
    nt_xent(img(x1), poi(xp), 0.5).backward()
    buggy = torch.load(f"{out}.0", weights_only=True)
    assert not all(torch.allclose(g, p.grad, atol=1e-5) for g, p in zip(buggy, img.parameters(), strict=True))


def test_single_process_is_plain_nt_xent():
    env = {k: os.environ.pop(k) for k in ("RANK", "WORLD_SIZE") if k in os.environ}
    try:
        info, device = du.init_from_env(torch.device("cpu"))
    finally:
        os.environ.update(env)
    assert not info.enabled and info.is_main and device == torch.device("cpu")
    assert du.world_size() == 1 and du.rank() == 0 and du.is_main()
    g = torch.Generator().manual_seed(3)
    za, zb = torch.randn(4, 8, generator=g), torch.randn(4, 8, generator=g)
    assert torch.equal(nt_xent_gathered(za, zb, 0.5), nt_xent(za, zb, 0.5))
    x = torch.randn(3, 2)
    assert du.gather_rows(x) is x and torch.equal(du.all_reduce_mean(x), x)


def test_rank_slices_partition_each_global_batch():
    sampler = EpochBatchSampler(23, 6, seed=4)  # global batch 6 = 3 ranks x 2; 3 steps, 5 tiles dropped
    sampler.set_epoch(1, 1)  # resumed at step 1: every rank skips the same steps
    full = list(sampler)
    parts = [list(du.RankSlice(sampler, r, 3)) for r in range(3)]
    assert all(len(p) == len(full) == 2 for p in parts) and len(du.RankSlice(sampler, 0, 3)) == 2
    for step, batch in enumerate(full):
        assert sum((p[step] for p in parts), []) == batch  # disjoint slices, in rank order


def _children(pid: int) -> dict[int, int]:
    """torchrun's worker processes: {RANK: pid} of the direct children of ``pid`` (Linux /proc)."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            status = (entry / "status").read_text()
            ppid = int(next(line for line in status.splitlines() if line.startswith("PPid:")).split()[1])
            if ppid != pid:
                continue
            env = dict(kv.split("=", 1) for kv in (entry / "environ").read_text().split("\0") if "=" in kv)
        except (OSError, StopIteration, ValueError):
            continue
        if "RANK" in env:
            found[int(env["RANK"])] = int(entry.name)
    return found


@pytest.mark.slow
def test_torchrun_stop_signal_on_one_rank_then_resume_is_bit_identical(tmp_path: Path):
    # SIGTERM reaches rank 1 only (rank 0 held by SIGSTOP meanwhile): both processes must stop at the
    # same step (no hang in the next collective), rank 0 must save, and a resumed job must end
    # bit-identical to an uninterrupted one, which needs each rank's own random state restored
    # (--augment gpu draws its crops and colours from it).
    data = make_layout(tmp_path / "data", n_tiles=24)  # 2 processes x batch 2: 6 steps per epoch
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")

    def job(run: str, *extra: str) -> list[str]:
        return [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node",
            "2",
            "--standalone",
            str(ROOT / "mmgr.py"),
            "--data_path",
            str(data),
            "--model_path",
            str(tmp_path / run / "ck"),
            "--train_record",
            "rec.txt",
            "--batch_size",
            "2",
            "--resnet",
            "resnet18",
            "--img_size",
            "24",
            "--device",
            "cpu",
            "--workers",
            "0",
            "--projection_dim",
            "8",
            "--total_epoch",
            "2",
            "--lr",
            "1e-3",
            "--augment",
            "gpu",
            "--deterministic",
            *extra,
        ]

    def run(name: str, *extra: str) -> subprocess.CompletedProcess:
        (tmp_path / name).mkdir(exist_ok=True)
        return subprocess.run(
            job(name, *extra), cwd=tmp_path / name, env=env, capture_output=True, text=True, timeout=300
        )

    # The uninterrupted reference run is also the end-to-end check of the script under torchrun (gloo).
    ref = run("ref")
    assert ref.returncode == 0, ref.stderr[-3000:]
    assert "2 process(es) x batch 2 = global batch 4" in ref.stdout
    assert ref.stdout.count("epoch 2/2") == 1 and ref.stdout.count("done:") == 1  # rank 0 alone prints
    lines = (tmp_path / "ref" / "train-records" / "rec.txt").read_text().splitlines()
    assert sum(line.startswith("Step [") for line in lines) == 12 and lines[-1].startswith("Step [6/6]")
    log = [json.loads(line) for line in (tmp_path / "ref" / "ck" / "train_log.jsonl").read_text().splitlines()]
    assert len(log) == 2 and log[0]["loss"] > 0
    state = torch.load(tmp_path / "ref" / "ck" / "wuhan_img_2.tar", weights_only=True)
    assert next(iter(state)) == "encoder.conv1.weight"  # no DDP "module." prefix

    (tmp_path / "cut").mkdir()
    record = tmp_path / "cut" / "train-records" / "rec.txt"
    proc = subprocess.Popen(
        job("cut"), cwd=tmp_path / "cut", env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        t0 = time.time()
        while not (record.is_file() and record.read_text().count("\n") >= 1):
            assert proc.poll() is None and time.time() - t0 < 240, proc.communicate()
            time.sleep(0.02)
        ranks = _children(proc.pid)
        assert sorted(ranks) == [0, 1], ranks
        os.kill(ranks[0], signal.SIGSTOP)
        os.kill(ranks[1], signal.SIGTERM)
        time.sleep(0.5)
        os.kill(ranks[0], signal.SIGCONT)
        out, err = proc.communicate(timeout=120)  # a hang (rank 0 waiting for rank 1) fails here
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode != 0, out
    assert err.count("stopped by SIGTERM at epoch 1, step") == 1, err[-3000:]  # rank 0 alone reports it
    ckpt_path = tmp_path / "cut" / "ck" / "checkpoint_last.pt"
    ckpt = torch.load(ckpt_path, weights_only=True)
    assert ckpt["epoch"] == 0 and 1 <= ckpt["step"] < 6 and ckpt["progress"]["world_size"] == 2
    assert len(ckpt["rng_ranks"]) == 2
    assert not torch.equal(ckpt["rng_ranks"][0]["torch"], ckpt["rng_ranks"][1]["torch"])  # each rank's own
    shutil.copy(ckpt_path, tmp_path / "mid.pt")

    resumed = run("cut", "--resume", "last")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    for kind in ("img", "poi"):
        a = torch.load(tmp_path / "ref" / "ck" / f"wuhan_{kind}_2.tar", weights_only=True)
        b = torch.load(tmp_path / "cut" / "ck" / f"wuhan_{kind}_2.tar", weights_only=True)
        assert all(torch.equal(a[k], b[k]) for k in a), f"{kind} weights differ from the uninterrupted run"
    assert record.read_text() == (tmp_path / "ref" / "train-records" / "rec.txt").read_text()

    # A mid-epoch checkpoint of 2 processes cannot continue in 1 (its steps were global batches of 4).
    single = subprocess.run(
        [sys.executable, str(ROOT / "mmgr.py"), *job("one")[7:], "--resume", str(tmp_path / "mid.pt")],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert single.returncode == 2 and "saved mid-epoch by 2 process(es) but this run has 1" in single.stderr, (
        single.stderr
    )
