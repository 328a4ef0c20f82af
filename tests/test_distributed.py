"""Gathered NT-Xent under DDP: 2 gloo CPU processes == 1 process on the concatenated batch."""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.nn.parallel import DistributedDataParallel as DDP

from models.loss import nt_xent, nt_xent_gathered
from utils import distributed as du

WORLD, B, F_IN, D = 2, 3, 6, 5


def _models() -> tuple[torch.nn.Module, torch.nn.Module]:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(F_IN, 7), torch.nn.ReLU(), torch.nn.Linear(7, D)), torch.nn.Linear(F_IN, D)


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
        x1, x2, xp = (x[rank * B:(rank + 1) * B] for x in _data())
        loss = _objective(img_d, poi_d, x1, x2, xp, nt_xent_gathered)
        loss.backward()  # DDP averages the parameter gradients over ranks
        grads = [p.grad.clone() for p in [*img.parameters(), *poi.parameters()]]
        torch.save({"loss": du.all_reduce_mean(loss), "grads": grads, "world": du.world_size(), "rank": du.rank()},
                   f"{out}.{rank}")
    finally:
        du.cleanup()


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
        for g, g_ref in zip(res["grads"], ref):
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
        x1, x2, xp = (x[rank * B:(rank + 1) * B] for x in _data())
        za, zb = img_d(x1), poi_d(xp)
        # Global-batch loss on every rank from the buggy gather, as the published code would do.
        ga, gb = torch.cat(LocalOnlyGather.apply(za)), torch.cat(LocalOnlyGather.apply(zb))
        nt_xent(ga, gb, 0.5).backward()
        torch.save([p.grad.clone() for p in img.parameters()], f"{out}.{rank}")
    finally:
        du.cleanup()


def test_published_gather_bug_is_detectable(tmp_path: Path):
    # Guards the test above: the published gather gives different gradients, so equality is meaningful.
    out = str(tmp_path / "bug")
    mp.spawn(_buggy_worker, args=(str(tmp_path / "init"), out), nprocs=WORLD, join=True)
    img, poi = _models()
    x1, _, xp = _data()
    nt_xent(img(x1), poi(xp), 0.5).backward()
    buggy = torch.load(f"{out}.0", weights_only=True)
    assert not all(torch.allclose(g, p.grad, atol=1e-5) for g, p in zip(buggy, img.parameters()))


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


def test_torchrun_two_processes_end_to_end(tmp_path: Path, tiny_data):
    # The real script under torchrun on CPU (gloo): 12 tiles, 2 processes x batch 2 -> 3 steps per epoch.
    import json
    import subprocess
    import sys

    from tests.conftest import ROOT

    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--standalone",
                        str(ROOT / "mmgr.py"), "--data_path", str(tiny_data), "--model_path", str(tmp_path / "ck"),
                        "--train_record", "rec.txt", "--batch_size", "2", "--resnet", "resnet18", "--img_size", "24",
                        "--device", "cpu", "--workers", "0", "--projection_dim", "8", "--total_epoch", "1",
                        "--augment", "gpu"],
                       cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "2 process(es) x batch 2 = global batch 4" in r.stdout
    assert r.stdout.count("epoch 1/1") == 1 and r.stdout.count("done:") == 1  # rank 0 alone prints
    lines = (tmp_path / "train-records" / "rec.txt").read_text().splitlines()
    assert len(lines) == 3 and lines[-1].startswith("Step [3/3]")
    log = [json.loads(l) for l in (tmp_path / "ck" / "train_log.jsonl").read_text().splitlines()]
    assert len(log) == 1 and log[0]["loss"] > 0
    state = torch.load(tmp_path / "ck" / "wuhan_img_1.tar", weights_only=True)
    assert next(iter(state)) == "encoder.conv1.weight"  # no DDP "module." prefix


def test_rank_slices_partition_each_global_batch():
    from data.resumable import EpochBatchSampler

    sampler = EpochBatchSampler(23, 6, seed=4)  # global batch 6 = 3 ranks x 2; 3 steps, 5 tiles dropped
    sampler.set_epoch(1, 1)  # resumed at step 1: every rank skips the same steps
    full = list(sampler)
    parts = [list(du.RankSlice(sampler, r, 3)) for r in range(3)]
    assert all(len(p) == len(full) == 2 for p in parts) and len(du.RankSlice(sampler, 0, 3)) == 2
    for step, batch in enumerate(full):
        assert sum((p[step] for p in parts), []) == batch  # disjoint slices, in rank order
