"""One interpreter (issue 20 §1): every script and test that starts Python starts the interpreter it runs
under — ``sys.executable`` in Python, ``$PYTHON`` in the shell scripts (the tests set it) — never whatever
``python`` comes first on PATH, which in a non-activated virtual environment is another Python."""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys

import pytest

from tests.conftest import ROOT

# A command word `python`/`python3`/`torchrun`: at a line's start, after ; & | ( ` $( = or a quote, or an argument.
BARE = re.compile(r"""(?:^|[;&|(`'"=]|\s)(python3?|torchrun)(?=\s|$)""")
HEREDOC = re.compile(r"<<-?\s*['\"]?(\w+)['\"]?")


def tracked(pattern: str) -> list[str]:
    out = subprocess.run(["git", "ls-files", pattern], cwd=ROOT, capture_output=True, text=True)
    return [line for line in out.stdout.splitlines() if line]


def shell_commands_from_path(text: str) -> list[tuple[int, str]]:
    """Lines of a shell script (not comments, not here-document bodies) that start `python` from PATH."""
    found, end = [], None
    for no, line in enumerate(text.splitlines(), 1):
        if end is not None:  # inside a here-document: Python source, not shell
            if line.strip() == end:
                end = None
            continue
        code = line.split("#", 1)[0] if line.lstrip().startswith("#") else line
        # What log/echo print is not run ("python compare.py ..."); other quoted text may be (TR="python -m ...").
        shown = re.sub(r'\b(log|echo)\s+"[^"]*"', "", code)
        if BARE.search(shown):
            found.append((no, line.strip()))
        m = HEREDOC.search(code)
        if m:
            end = m.group(1)
    return found


def test_the_scanner_sees_a_bare_python():
    script = 'X=1\nif ! python - <<\'PY\'\nprint("python")\nPY\nthen :; fi\nTR="$PY -m x"\nstep a 60 python3 b.py\nT="python x"\n'
    assert [no for no, _ in shell_commands_from_path(script)] == [2, 7, 8]
    assert shell_commands_from_path('log "python compare.py"\n"$PY" -c "import torch"\n# python x\n') == []


def test_no_shell_script_starts_python_from_path():
    scripts = tracked("*.sh")
    assert "benchmarks/gpu_check.sh" in scripts and "benchmarks/gpu_compare.sh" in scripts
    bad = {s: hits for s in scripts if (hits := shell_commands_from_path((ROOT / s).read_text()))}
    assert not bad, f"scripts starting `python` from PATH instead of $PYTHON: {bad}"
    for s in scripts:
        assert 'PY="${PYTHON:-python}"' in (ROOT / s).read_text(), f"{s} does not honour $PYTHON"


def test_no_python_file_starts_python_from_path():
    # Every subprocess command list of the repository (code and tests) that starts an interpreter starts
    # sys.executable, not the literal "python" (or "python3", "torchrun") looked up on PATH.
    bad = []
    for rel in tracked("*.py"):
        tree = ast.parse((ROOT / rel).read_text(), rel)
        for node in ast.walk(tree):
            if not (isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.List | ast.Tuple)):
                continue
            first = node.args[0].elts[0] if node.args[0].elts else None
            if isinstance(first, ast.Constant) and first.value in ("python", "python3", "torchrun"):
                bad.append(f"{rel}:{node.lineno}")
    assert not bad, f"subprocess commands starting `python` from PATH: {bad}"


@pytest.mark.slow
def test_gpu_check_runs_the_given_interpreter_with_no_python_on_path(tmp_path):
    # PATH holds no `python` at all: the script must still find its interpreter through $PYTHON.
    # GPU_CHECK_ONLY names no group, so only the package check and the summary run (a few seconds).
    env = dict(
        os.environ,
        PATH=os.pathsep.join(p for p in ("/usr/bin", "/bin") if os.path.isdir(p)),
        PYTHON=sys.executable,
        GPU_CHECK_TINY="1",
        GPU_CHECK_ONLY="nothing",
        OUT=str(tmp_path),
    )
    r = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh")], env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    res = (tmp_path / "gpu_results.txt").read_text()
    assert f"python {sys.version.split()[0]};" in res and "MISSING" not in res and "command not found" not in r.stderr
