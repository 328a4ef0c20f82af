"""The test suite, run again and again as a fresh machine would (issue 20 §2): prints one line a run.

Each run clones this repository at one revision into a temporary folder and runs the README's test
command there with this interpreter given by its path, under a PATH whose ``python`` and ``python3``
exit 97: a test or script that started PATH's Python instead of ``sys.executable``/``$PYTHON`` fails,
as it would from a virtual environment that is not activated. ``--load`` spins one busy process beside
each run. After each run it prints pytest's summary, its time, what pytest left in its base folder and
the free space; at the end, the slowest plain run against the 300 s target on 2 cores.

    python benchmarks/suite_runs.py --runs 5            # ~5 min each on 2 cores
    python benchmarks/suite_runs.py --runs 5 --load     # one core kept busy meanwhile
    python benchmarks/suite_runs.py --runs 1 --rev de614dc

Figures: docs/reliability.md, "The test suite".
"""

from __future__ import annotations

import argparse
import getpass
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from engine.compare.report import machine  # noqa: E402

TARGET_S = 300.0  # the plain run's limit on the 2-core development machine (issue 20)
FAKE = '#!/bin/sh\necho "PATH\'s $0 was started instead of the test interpreter" >&2\nexit 97\n'


def folder_bytes(folder: Path) -> int:
    """Bytes in the files under ``folder`` (0 when it does not exist)."""
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file() and not p.is_symlink())


def one_run(rev: str, fake_bin: Path, load: bool, work: Path) -> tuple[int, float, str]:
    """Clone at ``rev``, run the suite there; returns (exit status, wall seconds, pytest's last line)."""
    clone = work / "clone"
    shutil.rmtree(clone, ignore_errors=True)
    subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True)
    subprocess.run(["git", "-C", str(clone), "checkout", "-q", rev], check=True)
    env = dict(os.environ, PATH=f"{fake_bin}{os.pathsep}/usr/local/bin{os.pathsep}/usr/bin{os.pathsep}/bin")
    env.pop("VIRTUAL_ENV", None)
    spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if load else None
    try:
        t0 = time.perf_counter()
        r = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"],
            cwd=clone,
            env=env,
            capture_output=True,
            text=True,
        )
        wall = time.perf_counter() - t0
    finally:
        if spinner is not None:
            spinner.kill()
            spinner.wait()
    (work / "last_run.log").write_text(r.stdout + r.stderr)
    summary = [line for line in r.stdout.splitlines() if re.search(r"\b(passed|failed|error)", line)]
    shutil.rmtree(clone, ignore_errors=True)
    return r.returncode, wall, summary[-1].strip("= ") if summary else "(no pytest summary)"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", type=int, default=5, help="how many runs (default 5: half of issue 20's ten)")
    p.add_argument("--load", action="store_true", help="spin one busy process beside each run (default off)")
    p.add_argument("--rev", default="HEAD", help="the revision to clone (default HEAD; commit your changes first)")
    args = p.parse_args(argv)
    if args.runs < 1:
        p.error("--runs must be at least 1")
    rev = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "--short", args.rev], capture_output=True, text=True, check=True
    ).stdout.strip()
    base = Path(tempfile.gettempdir()) / f"pytest-of-{getpass.getuser()}"
    m = machine()
    print(f"suite runs at {rev}, {'one busy process beside' if args.load else 'nothing beside'}")
    print(f"{m['cpu']}, {m['cpus']} CPUs, flags {' '.join(m.get('cpu_flags', [])) or '-'}; torch {m['torch']}")
    print(f"interpreter {sys.executable} (Python {m['python']}); PATH's python/python3 exit 97", flush=True)
    with tempfile.TemporaryDirectory(prefix="mmgr_suite_runs_") as tmp:
        work = Path(tmp)
        fake_bin = work / "bin"
        fake_bin.mkdir()
        for name in ("python", "python3"):
            (fake_bin / name).write_text(FAKE)
            (fake_bin / name).chmod(0o755)
        walls, failed = [], 0
        for i in range(1, args.runs + 1):
            code, wall, summary = one_run(rev, fake_bin, args.load, work)
            walls.append(wall)
            failed += code != 0
            left = folder_bytes(base) / 2**20
            free = shutil.disk_usage(work).free / 2**30
            print(
                f"run {i}: exit {code}, {wall:.1f} s wall | {summary} | left in {base}: {left:.1f} MiB, {free:.0f} GiB free"
            )
            if code != 0:
                kept = Path.cwd() / f"suite_run_{i}_failed.log"
                shutil.copy(work / "last_run.log", kept)
                print(f"  pytest's output: {kept}", flush=True)
    verdict = "" if args.load else f"; slowest {max(walls):.1f} s against the {TARGET_S:.0f} s target on 2 cores"
    print(f"{args.runs - failed} of {args.runs} runs green{verdict}")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
