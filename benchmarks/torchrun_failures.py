"""Failures under torchrun end on every process (issue 20 §3; docs/reliability.md): measured.

Runs ``mmgr.py`` under ``torchrun --nproc_per_node 2`` (gloo, CPU) on a tiny layout, with one failure
injected into one process mid-run, and reports how each process ended: its exit status and how long after
the failure it exited, the run's stderr (one sentence expected, no traceback of the project's code).

    python benchmarks/torchrun_failures.py                 # all three failures, one line each
    python benchmarks/torchrun_failures.py --failure bad_tile --show_stderr

Failures (injected in the failing process by this script's worker mode, deterministic):

* ``disk_full``: rank 0's second write of ``checkpoint_last.pt`` (the one at step 2 of epoch 1, with
  ``--save_every_steps 2``) gets ``ENOSPC`` after 1000 bytes, as a disk that fills up during the save;
* ``read_only``: from rank 0's third save of ``checkpoint_last.pt`` on (the one after epoch 1), every new
  file in the run folder is refused with ``EROFS``, as a run folder remounted read-only mid-run (injected:
  the tests run as root, whom chmod does not stop);
* ``bad_tile``: rank 1 only, at its third tile read (step 2), the tile file is overwritten with bytes that
  are no image — a file damaged after the pre-scan — and then read for real;
* ``demo_city``: ``--demo`` where ``DEMO_DIR/city`` is a file of the user's, so that rank 0, which alone
  writes the demo city, is refused while rank 1 waits for the city (at start-up, before any training).

The worker writes ``exit.<rank>`` (status, time) and the failing process ``failed_at`` (time of the
injected failure) into the output folder; exit delays are those times' differences.
"""

from __future__ import annotations

import argparse
import errno
import io
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
import torch.multiprocessing as mp  # noqa: E402

import data.pretrain as pretrain  # noqa: E402
import mmgr  # noqa: E402
from benchmarks.data_path import write_layout  # noqa: E402
from utils.distributed import SharedFailure, cleanup  # noqa: E402
from utils.errors import run_main  # noqa: E402

FAILURES = ("disk_full", "read_only", "bad_tile", "demo_city")
FAILING_RANK = {"disk_full": 0, "read_only": 0, "bad_tile": 1, "demo_city": 0}


def _inject(failure: str, out: Path, model_path: Path) -> None:
    """Install ``failure`` in this process (the worker mode, before mmgr.py runs)."""
    saves = []

    def mark() -> None:
        if not (out / "failed_at").exists():
            (out / "failed_at").write_text(repr(time.time()))

    if failure in ("disk_full", "read_only"):
        real_fdopen, real_mkstemp = os.fdopen, tempfile.mkstemp
        folder = str(model_path.resolve())

        class Full(io.RawIOBase):  # a file whose disk fills up after 1000 bytes
            def __init__(self, f):
                self.f, self.n = f, 0

            def writable(self) -> bool:
                return True

            def write(self, b) -> int:
                b = bytes(b)
                self.n += self.f.write(b[: max(1000 - self.n, 0)])
                if self.n >= 1000:
                    mark()
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
                return len(b)

            def fileno(self) -> int:
                return self.f.fileno()

            def close(self) -> None:
                self.f.close()
                super().close()

        def fdopen(fd, mode="r", *args, **kwargs):
            f = real_fdopen(fd, mode, *args, **kwargs)
            name = os.path.basename(os.readlink(f"/proc/self/fd/{fd}"))
            if failure == "disk_full" and "w" in mode and name.startswith(".checkpoint_last.pt."):
                saves.append(name)
                if len(saves) == 2:
                    return Full(f)
            return f

        def mkstemp(*args, **kwargs):
            where = str(Path(kwargs.get("dir") or tempfile.gettempdir()).resolve())
            prefix = kwargs.get("prefix") or ""
            if failure == "read_only" and where == folder:
                if prefix.startswith(".checkpoint_last.pt."):
                    saves.append(prefix)
                if len(saves) >= 3:
                    mark()
                    raise OSError(errno.EROFS, os.strerror(errno.EROFS), where)
            return real_mkstemp(*args, **kwargs)

        os.fdopen, tempfile.mkstemp = fdopen, mkstemp
    elif failure == "bad_tile":
        real_open, reads = pretrain.open_rgb, []

        def open_rgb(path):
            reads.append(path)
            if len(reads) == 3:
                Path(path).write_bytes(b"this is no longer an image")  # damaged since the pre-scan
                mark()
            return real_open(path)

        pretrain.open_rgb = open_rgb
    elif failure == "demo_city":
        real_ensure = mmgr.ensure_city

        def ensure_city(*args, **kwargs):
            mark()
            return real_ensure(*args, **kwargs)

        mmgr.ensure_city = ensure_city
    else:
        raise SystemExit(f"unknown failure {failure!r}")


def worker(failure: str, out: Path, argv: list[str]) -> None:
    """torchrun's script: mmgr.py with ``failure`` injected on its failing rank; records how it ended."""
    rank = int(os.environ.get("RANK", "0"))
    if rank == FAILING_RANK[failure]:
        _inject(failure, out, Path(argv[argv.index("--model_path") + 1]))
    code: int | str | None = 1  # an exception that escapes run_main: Python's status 1
    try:
        run_main(lambda: mmgr.main(argv))
        code = 0
    except SystemExit as exc:
        code = exc.code
        raise
    finally:
        status = code if isinstance(code, int) else (0 if code is None else 1)
        (out / f"exit.{rank}").write_text(f"{status} {time.time()!r}")


def run(failure: str, work: Path, python: str = sys.executable, timeout: float = 180) -> dict:
    """Run one failure under torchrun in ``work``; returns what happened (statuses, delays, stderr)."""
    work.mkdir(parents=True, exist_ok=True)
    data = work / "data"
    if not data.exists():
        write_layout(str(data), 16, 16)  # 2 processes x batch 2: 4 steps per epoch
    out = work / f"out_{failure}"
    out.mkdir()
    model = work / f"ck_{failure}"
    cmd = [
        python, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
        str(Path(__file__).resolve()), "--worker", failure, str(out),
        "--data_path", str(data), "--model_path", str(model), "--train_record", f"rec_{failure}.txt",
        "--batch_size", "2", "--resnet", "resnet18", "--img_size", "16", "--projection_dim", "8",
        "--device", "cpu", "--workers", "0", "--lr", "1e-3", "--total_epoch", "2", "--save_every_steps", "2",
    ]  # fmt: skip
    if failure == "demo_city":  # the demo's city goes to DEMO_DIR/city, where a file of the user's is
        (work / "demo").mkdir(exist_ok=True)
        (work / "demo" / "city").write_text("not a city\n")
        cmd += ["--demo", "--demo_dir", str(work / "demo"), "--demo_tiles", "16"]
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    t0 = time.time()
    p = subprocess.run(cmd, cwd=work, env=env, capture_output=True, text=True, timeout=timeout)
    wall = time.time() - t0
    failed_at = float((out / "failed_at").read_text()) if (out / "failed_at").exists() else None
    ranks = {}
    for r in (0, 1):
        f = out / f"exit.{r}"
        if f.exists():
            status, when = f.read_text().split()
            ranks[r] = {"status": int(status), "delay_s": None if failed_at is None else float(when) - failed_at}
        else:
            ranks[r] = {"status": None, "delay_s": None}  # killed (by torchrun or a signal) before it could say
    return {
        "failure": failure,
        "torchrun_status": p.returncode,
        "ranks": ranks,
        "wall_s": wall,
        "stderr": p.stderr,
        "stdout": p.stdout,
        "model_path": str(model),
    }


def _share_cost(rank: int, init: str, n: int, out: str) -> None:
    """Worker of ``--share_cost``: ``n`` calls of SharedFailure.share() (one gloo all-reduce each)."""
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init}", rank=rank, world_size=2)
    try:
        failure = SharedFailure()
        for _ in range(20):
            failure.share()
        t0 = time.perf_counter()
        for _ in range(n):
            failure.share()
        if rank == 0:
            Path(out).write_text(repr((time.perf_counter() - t0) / n))
    finally:
        cleanup()


def share_cost(n: int = 2000) -> float:
    """Seconds per SharedFailure.share() between 2 gloo CPU processes (the per-step exchange)."""
    with tempfile.TemporaryDirectory() as tmp:
        out = str(Path(tmp) / "cost")
        mp.spawn(_share_cost, args=(str(Path(tmp) / "init"), n, out), nprocs=2, join=True)
        return float(Path(out).read_text())


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        worker(sys.argv[2], Path(sys.argv[3]), sys.argv[4:])
        return
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--failure", choices=FAILURES, nargs="*", default=list(FAILURES), help="which ones (default all)")
    p.add_argument("--show_stderr", action="store_true", help="print each run's stderr (default off)")
    p.add_argument("--json", action="store_true", help="print one JSON object per failure instead of a line")
    p.add_argument("--share_cost", action="store_true", help="also time the per-step failure exchange (default off)")
    a = p.parse_args()
    if a.share_cost:
        cost = share_cost()
        print(f"SharedFailure.share() between 2 gloo CPU processes: {cost * 1e6:.0f} us per call (mean of 2000)")
    with tempfile.TemporaryDirectory() as tmp:
        for failure in a.failure:
            r = run(failure, Path(tmp))
            sentences = [line for line in r["stderr"].splitlines() if line.startswith("error: ")]
            project_frames = sum(f'File "{ROOT}' in line for line in r["stderr"].splitlines())
            if a.json:
                print(json.dumps({k: v for k, v in r.items() if k not in ("stderr", "stdout")}))
            else:
                parts = [
                    f"rank {k}: status {v['status']}, exited {v['delay_s']:.2f} s after the failure"
                    if v["delay_s"] is not None
                    else f"rank {k}: status {v['status']}"
                    for k, v in r["ranks"].items()
                ]
                print(
                    f"{failure:9s}  {'; '.join(parts)}; torchrun status {r['torchrun_status']}; "
                    f"'error:' lines {len(sentences)}; traceback frames of the project {project_frames}; "
                    f"whole run {r['wall_s']:.1f} s"
                )
            if a.show_stderr:
                print(r["stderr"])


if __name__ == "__main__":
    main()
