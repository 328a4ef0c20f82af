"""Distributed training in one small module (docs/architecture.md): process group, rank helpers, gathered rows.

``torchrun --nproc_per_node N mmgr.py ...`` sets ``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``,
``MASTER_ADDR`` and ``MASTER_PORT`` in every process; :func:`init_from_env` reads them and creates
the default process group (NCCL for CUDA tensors with gloo beside it for CPU ones, gloo alone on CPU:
:func:`backend_for`). Without those variables nothing
is initialised and every helper here behaves as the single process it is, so the default path —
one process, no process group — is untouched.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import NoReturn

import torch
import torch.distributed as dist

from utils.errors import UserError, as_user_error, one_sentence

__all__ = [
    "DistInfo",
    "init_from_env",
    "backend_for",
    "cleanup",
    "is_main",
    "world_size",
    "rank",
    "barrier",
    "gather_rows",
    "all_reduce_mean",
    "max_over_ranks",
    "gather_objects",
    "SharedFailure",
    "RankSlice",
    "NullRecord",
]


@dataclass(frozen=True)
class DistInfo:
    """Where this process stands: ``rank`` of ``world_size`` processes, ``local_rank`` on its node."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_from_env(device: torch.device | None = None) -> tuple[DistInfo, torch.device | None]:
    """Create the default process group when launched by torchrun; otherwise do nothing.

    Args:
        device: the device the user asked for (``--device``), or None for "pick one". Under torchrun a
            CUDA device becomes ``cuda:LOCAL_RANK`` so each process drives its own GPU.

    Returns:
        ``(info, device)``; ``device`` is the (possibly rank-specific) device to use.
    """
    n = int(os.environ.get("WORLD_SIZE", "1"))
    if n <= 1 or "RANK" not in os.environ:
        return DistInfo(), device
    info = DistInfo(int(os.environ["RANK"]), n, int(os.environ.get("LOCAL_RANK", "0")))
    if device is None:
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cuda":
        device = torch.device("cuda", info.local_rank)
        torch.cuda.set_device(device)
    backend = backend_for(device)
    if not dist.is_initialized():
        # device_id binds NCCL to this process's GPU up front (no lazy guess of the device).
        kwargs = {"device_id": device} if device.type == "cuda" else {}
        dist.init_process_group(backend=backend, **kwargs)
    return info, device


def backend_for(device: torch.device) -> str:
    """The process group's backend for a run on ``device``: ``gloo`` on CPU; on CUDA ``cpu:gloo,cuda:nccl``.

    NCCL alone serves CUDA tensors only, but some collectives carry small CPU tensors or objects (the run
    folder's claim, the shared failure and stop flags, gathered RNG states): with NCCL alone they stop the
    run ("No backend type associated with device type cpu"). The mixed backend sends each collective to
    the backend of its tensors' device: CUDA tensors (gathered embeddings, gradients) over NCCL, CPU ones
    over gloo, without a copy to the GPU and a wait for its queue.
    """
    return "cpu:gloo,cuda:nccl" if device.type == "cuda" else "gloo"


def cleanup() -> None:
    """Destroy the default process group if one exists (safe to call always)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    """Wait for every process (no-op in a single process)."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def is_main() -> bool:
    """True on rank 0 and in a single process: the one that prints, records and saves."""
    return rank() == 0


class _GatherRows(torch.autograd.Function):
    """All-gather along dim 0 whose backward sums the gradient over ranks, then takes this rank's slice.

    Every rank's loss depends on every rank's rows (they are its negatives), so the gradient of the
    total loss w.r.t. this rank's rows is the sum over ranks of what each rank's loss put on them.
    The gather layer of the published code returned only the local loss's share — a known bug.
    An all-reduce (supported by every backend, unlike reduce-scatter on gloo) does the summing.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        x = x.contiguous()
        parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, x)
        ctx.rows = x.shape[0]
        return torch.cat(parts, dim=0)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        start = dist.get_rank() * ctx.rows
        return grad[start : start + ctx.rows]


def gather_rows(x: torch.Tensor) -> torch.Tensor:
    """Concatenate ``x`` ``[B, D]`` of every rank in rank order -> ``[world * B, D]``, gradient-correct.

    Every rank must pass the same ``B`` (DistributedSampler with ``drop_last`` guarantees it). In a
    single process this returns ``x`` itself.
    """
    if world_size() == 1:
        return x
    return _GatherRows.apply(x)


def all_reduce_mean(x: torch.Tensor) -> torch.Tensor:
    """Mean of a (detached) tensor over ranks, for logging; identity in a single process."""
    if world_size() == 1:
        return x
    y = x.detach().clone()
    dist.all_reduce(y, op=dist.ReduceOp.SUM)
    return y / world_size()


def max_over_ranks(value: int, device: torch.device | None = None) -> int:
    """The largest of every rank's ``value`` (e.g. a signal number, 0 for none); ``value`` itself in a single process.

    ``device`` is where the collective runs: the CPU by default, which both process groups of
    :func:`backend_for` serve (gloo), or this rank's GPU (NCCL).
    """
    if world_size() == 1:
        return int(value)
    t = torch.tensor([int(value)], dtype=torch.int64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return int(t.item())


def gather_objects(obj: object) -> list:
    """Every rank's ``obj`` (picklable; e.g. its RNG states), in rank order, on every rank; ``[obj]`` alone."""
    if world_size() == 1:
        return [obj]
    out: list = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


class SharedFailure:
    """This process's first failure, held until every process of the job learns of it (docs/reliability.md).

    Under torchrun a failure on one process — a save the disk refuses, a tile that cannot be read — must
    not end that process alone: the others would wait for it in their next collective (with NCCL until
    its timeout) or die with a connection error and a traceback of their own. So work that can fail on
    some processes only runs under ``with failure.hold():``, which keeps the exception and lets this
    process go on to the next exchange, and every process calls :meth:`share` at the same points, before
    any other collective. ``share`` is one all-reduce of two integers on the CPU (gloo); only when a
    process failed does a second collective gather the sentences. Then every process ends with the exit
    status of the lowest failing rank: rank 0 raises that rank's user error (``run_main`` prints its one
    sentence), the other processes exit with the same status and print nothing. A failure that is not
    the user's (a bug) is re-raised, with its traceback, by the process where it happened; the others
    exit with status 1.

    In a single process nothing is held: ``hold`` lets every exception through at once and ``share``
    only returns its value, so the default path is unchanged.
    """

    def __init__(self) -> None:
        self.error: Exception | None = None

    @contextlib.contextmanager
    def hold(self) -> Iterator[None]:
        """Run the block; under torchrun keep its exception (the first one) instead of raising it here."""
        if world_size() == 1:
            yield
            return
        try:
            yield
        except Exception as exc:
            if self.error is None:
                self.error = exc

    def share(self, value: int = 0) -> int:
        """Called by every process at the same point: the largest ``value`` over processes (e.g. a signal
        number, 0 for none), after ending every process if any of them holds a failure."""
        if world_size() == 1:
            if self.error is not None:
                raise self.error
            return int(value)
        flags = torch.tensor([int(self.error is not None), int(value)], dtype=torch.int64)  # CPU: no GPU sync
        dist.all_reduce(flags, op=dist.ReduceOp.MAX)
        if flags[0]:
            self._end_every_process()
        return int(flags[1])

    def _end_every_process(self) -> NoReturn:
        report = None
        if self.error is not None:
            user = as_user_error(self.error)
            report = (user.exit_code, one_sentence(user)) if user is not None else (1, None)
        reports = gather_objects(report)
        first = next(r for r, rep in enumerate(reports) if rep is not None)
        code, sentence = reports[first]
        me = rank()
        if me == first and (me == 0 or sentence is None):
            raise self.error  # this process's own: run_main prints its sentence; a bug keeps its traceback
        if me == 0 and sentence is not None:
            error = UserError(sentence)  # another process's failure, told once, by rank 0
            error.exit_code = code
            raise error
        raise SystemExit(code)


class RankSlice:
    """This rank's share of a batch sampler that yields *global* batches: items ``[r*B, (r+1)*B)``.

    Wrapping the resumable :class:`data.resumable.EpochBatchSampler` (global batch ``W*B``, its
    per-epoch shuffle seeded by ``(seed, epoch)``) makes a distributed sampler: every process sees
    the same permutation and takes a disjoint slice of each step, every step has ``W*B`` distinct
    samples, incomplete global batches are dropped, and a mid-epoch resume skips the same steps on
    every rank. ``set_epoch`` and ``steps_per_epoch`` are those of the wrapped sampler.
    """

    def __init__(self, batch_sampler, rank: int, world: int):
        self.sampler, self.rank, self.world = batch_sampler, rank, world

    def __iter__(self):
        for batch in self.sampler:
            b = len(batch) // self.world
            yield batch[self.rank * b : (self.rank + 1) * b]

    def __len__(self) -> int:
        return len(self.sampler)


class NullRecord:
    """Stands in for :class:`utils.records.RecordFile` on ranks other than 0: writes nothing."""

    path = "/dev/null"

    def write_line(self, line: str) -> None:
        pass

    def sync(self) -> int:
        return 0

    def rewind(self, size: int) -> None:
        pass

    def close(self) -> None:
        pass
