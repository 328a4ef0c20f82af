"""Gathered NT-Xent under DDP on the real backend: N processes == one process on the concatenated batch.

    torchrun --nproc_per_node N benchmarks/ddp_check.py [--device cuda]

``tests/test_distributed.py`` checks this with two gloo CPU processes; this script runs the same
check wherever torchrun puts it — NCCL on several GPUs above all, which no test can reach. Every
process computes the MMGR objective (image model used on two views, both NT-Xent terms on view 1)
on its slice of a fixed batch through DDP-wrapped models and ``models.loss.nt_xent_gathered``;
rank 0 then recomputes the objective in one process on the whole batch with plain ``nt_xent`` and
compares the loss and every parameter gradient (DDP's averaged ones). TF32 is turned off so that
the comparison is about the algorithm, not the matmul precision. Exit status 1 when they differ by
more than ``--atol``.
"""

from __future__ import annotations

import argparse
import os
import sys

import torch
from torch.nn.parallel import DistributedDataParallel as DDP

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from models.loss import nt_xent, nt_xent_gathered  # noqa: E402
from utils.distributed import all_reduce_mean, cleanup, init_from_env  # noqa: E402


def _models(device: torch.device, d_in: int, d: int) -> tuple[torch.nn.Module, torch.nn.Module]:
    torch.manual_seed(0)  # the same weights in every process and in the reference
    img = torch.nn.Sequential(torch.nn.Linear(d_in, 64), torch.nn.ReLU(), torch.nn.Linear(64, d))
    return img.to(device), torch.nn.Linear(d_in, d).to(device)


def _objective(img, poi, x1, x2, xp, loss_fn) -> torch.Tensor:
    z1 = img(x1)
    return 0.5 * loss_fn(z1, poi(xp), 0.5) + 0.5 * loss_fn(z1, img(x2), 0.5)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--device",
        default="cuda" if torch.cuda.is_available() else "cpu",
        help="cuda or cpu (default: cuda if available)",
    )
    p.add_argument("--batch_size", type=int, default=64, help="rows per process (default 64)")
    p.add_argument("--atol", type=float, default=1e-4, help="largest allowed difference (default 1e-4)")
    a = p.parse_args()
    info, device = init_from_env(torch.device(a.device))
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    d_in, d, b, w = 32, 16, a.batch_size, info.world_size
    g = torch.Generator().manual_seed(1)
    full = [torch.randn(w * b, d_in, generator=g) for _ in range(3)]  # view 1, view 2, POI: [W*B, d_in] each
    try:
        img, poi = _models(device, d_in, d)
        ids = [device.index] if device.type == "cuda" else None
        img_d, poi_d = (DDP(img, device_ids=ids), DDP(poi, device_ids=ids)) if info.enabled else (img, poi)
        mine = [x[info.rank * b : (info.rank + 1) * b].to(device) for x in full]
        loss = _objective(img_d, poi_d, *mine, nt_xent_gathered)
        loss.backward()
        mean_loss = all_reduce_mean(loss).item()
        grads = [q.grad.detach().clone() for q in [*img.parameters(), *poi.parameters()]]
        if not info.is_main:
            return
        ref_img, ref_poi = _models(device, d_in, d)
        ref_loss = _objective(ref_img, ref_poi, *[x.to(device) for x in full], nt_xent)
        ref_loss.backward()
        ref = [q.grad for q in [*ref_img.parameters(), *ref_poi.parameters()]]
        loss_diff = abs(mean_loss - ref_loss.item())
        grad_diff = max((x - y).abs().max().item() for x, y in zip(grads, ref, strict=True))
        ok = loss_diff <= a.atol and grad_diff <= a.atol
        backend = torch.distributed.get_backend() if info.enabled else "none"
        print(
            f"ddp_check: {w} process(es), backend {backend}, device {device}, batch {b} per process: loss {mean_loss:.6f} vs "
            f"one process {ref_loss.item():.6f} (diff {loss_diff:.1e}); max gradient diff {grad_diff:.1e} "
            f"-> {'OK' if ok else 'MISMATCH'} (atol {a.atol:g})",
            flush=True,
        )
        if not ok:
            sys.exit(1)
    finally:
        cleanup()


if __name__ == "__main__":
    main()
