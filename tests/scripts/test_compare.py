"""compare.py and benchmarks/gpu_compare.sh: the comparison's tables (bounds, 95 % intervals,
paired tests, gap closed) from the real scripts, and its statistics on hand-made numbers."""

import json
import os
import subprocess
import sys

import pytest

import compare
from engine.compare import report, rows
from tests.conftest import ROOT
from utils.errors import UserError

ROWS = (
    "mean predictor (lower bound)",
    "random init (lower bound)",
    "image only (λ=1)",
    "image–POI only (λ=0)",
    "MMGR (λ=0.5)",
    "supervised end to end (upper bound)",
)


def test_gpu_compare_tiny_mode_prints_the_bounded_table(tmp_path):
    """The GPU script's whole flow (city, pack, device augmentation, bound, 3 variants x 2 seeds, probes,
    paired tests), tiny, on CPU."""
    env = dict(
        os.environ,
        GPU_COMPARE_TINY="1",
        OUT=str(tmp_path / "out"),
        GPU_COMPARE_WORK=str(tmp_path / "work"),
        OMP_NUM_THREADS="1",
        PYTHONWARNINGS="ignore",
        PYTHON=sys.executable,
    )
    r = subprocess.run(
        ["bash", str(ROOT / "benchmarks" / "gpu_compare.sh")], env=env, capture_output=True, text=True, timeout=300
    )
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    md = (tmp_path / "out" / "results.md").read_text()
    assert "--pack 1" in md and "--augment gpu" in md and "synthetic city version 2" in md
    main = md.split("Primary metrics")[1].split("Paired by seed")[0]
    assert "pop1km R² ↑ | pop1km gap closed" in main and "func KL ↓ | func gap closed" in main
    for row in ROWS:
        assert f"| {row} | " in main
    mmgr_row = next(line for line in main.splitlines() if line.startswith("| MMGR (λ=0.5) | 2 |"))
    assert mmgr_row.count(" ± ") == 3  # a 95 % interval in each target's cell
    assert "| 0 (def.) |" in main and "| 1 (def.) |" in main
    paired = md.split("Paired by seed")[1].split("Every metric")[0]
    for other in ("image only (λ=1)", "image–POI only (λ=0)"):
        for target in ("pop1km", "gdp1km", "func"):
            assert f"| MMGR (λ=0.5) − {other} | {target} |" in paired
    assert "Supervised bound on population: R²" in md
    res = json.loads((tmp_path / "out" / "results.json").read_text())
    assert res["city_version"] == 2 and res["args"]["pack"] == 1
    assert set(res["results"]["mmgr"]) == {"0", "1"} and set(res["results"]["supervised"]) == {"0", "1"}
    test = res["paired"]["mmgr-simclr"]["pop1km"]
    x = [res["results"]["mmgr"][s]["pop1km/ridge/R2"] for s in ("0", "1")]
    y = [res["results"]["simclr"][s]["pop1km/ridge/R2"] for s in ("0", "1")]
    assert test["n"] == 2 and test["diffs"] == pytest.approx([x[0] - y[0], x[1] - y[1]]) and 0 <= test["p_t"] <= 1
    s = res["summary"]
    assert s["random"]["func"]["gap_closed"] == pytest.approx(0) and s["supervised"]["func"]["gap_closed"] == 1
    assert (tmp_path / "work" / "compare" / "packed" / "mmgr_pack.json").is_file()
    assert (tmp_path / "out" / "compare.png").read_bytes()[:4] == b"\x89PNG"
    assert "gap closed" in (tmp_path / "out" / "gpu_compare.txt").read_text()


def test_compare_on_user_data_reuses_finished_runs(tmp_path, tiny_data, capsys):
    """Your own data in the published layouts, in this process (--jobs 0); a second run reuses the
    pretraining checkpoints and the cached supervised runs and gives the same numbers."""
    argv = [
        "--data_path",
        str(tiny_data),
        "--out",
        str(tmp_path / "o"),
        "--targets",
        "pop1km",
        "--variants",
        "mean",
        "random",
        "mmgr",
        "poi_encoder",
        "poi_counts",
        "supervised",
        "--epochs",
        "1",
        "--batch_size",
        "4",
        "--img_size",
        "16",
        "--seeds",
        "0",
        "1",
        "--knn",
        "3",
        "--jobs",
        "0",
    ]
    first = compare.main(argv)
    out = capsys.readouterr().out
    assert out.count("pretrained mmgr seed") == 2 and out.count("supervised pop1km seed") == 2
    md = (tmp_path / "o" / "results.md").read_text()
    assert f"Command: `python compare.py --data_path {tiny_data}" in md
    assert first["city_version"] is None and "synthetic city" not in md.split("Machine")[0]
    assert set(first["results"]) == {"mean", "random", "mmgr", "poi_encoder", "poi_counts", "supervised"}
    assert set(first["results"]["poi_counts"]) == {"0"}  # no learning: one row, like the mean predictor
    assert "| POI only: category counts (ref.) | 1 |" in md
    second = compare.main(argv)
    out = capsys.readouterr().out
    assert "pretrained" not in out and "supervised pop1km seed" not in out
    assert second["results"] == first["results"]


def _results(values: dict[str, list[float]], target: str = "pop1km", metric: str = "R2") -> dict:
    proto = {"mean": "mean", "supervised": "end_to_end"}
    return {
        v: {str(s): {f"{target}/{proto.get(v, 'ridge')}/{metric}": x} for s, x in enumerate(xs)}
        for v, xs in values.items()
    }


def test_gap_closed_and_paired_verdicts():
    res = _results(
        {
            "random": [0.2, 0.3, 0.25, 0.22, 0.28],
            "supervised": [0.8, 0.8, 0.8, 0.8, 0.8],
            "simclr": [0.40, 0.52, 0.44, 0.41, 0.50],
            "img_poi": [0.5, 0.3, 0.6, 0.2, 0.4],
            "mmgr": [0.45, 0.55, 0.50, 0.45, 0.55],
        }
    )
    summary = report.summarise(res, ["pop1km"], list(rows.VARIANTS))
    assert summary["mmgr"]["pop1km"]["mean"] == pytest.approx(0.5)
    assert summary["mmgr"]["pop1km"]["gap_closed"] == pytest.approx((0.5 - 0.25) / (0.8 - 0.25))
    assert summary["supervised"]["pop1km"]["ci"] == 0  # identical values: a zero-width interval
    paired = report.paired_tests(res, ["pop1km"])
    assert paired["mmgr-simclr"]["pop1km"]["better"] == 5 and paired["mmgr-simclr"]["pop1km"]["p_t"] < 0.05
    assert paired["mmgr-simclr"]["pop1km"]["verdict"] == "better (p < 0.05, all 5 seeds)"
    assert paired["mmgr-img_poi"]["pop1km"]["verdict"] == "not established (p >= 0.05)"
    assert paired["mmgr-random"]["pop1km"]["diffs"] == pytest.approx([0.25, 0.25, 0.25, 0.23, 0.27])
    table = report.main_table(summary, ["pop1km"], list(rows.VARIANTS))
    assert "| MMGR (λ=0.5) | 5 | 0.500 ± 0.062 | 0.45 |" in table  # t(4) 2.776 x 0.05 / sqrt(5)


def test_kl_lower_is_better_in_verdicts():
    res = _results({"simclr": [0.50, 0.52, 0.55, 0.51, 0.53], "mmgr": [0.40, 0.41, 0.43, 0.42, 0.40]}, "func", "KL")
    c = report.paired_tests(res, ["func"])["mmgr-simclr"]["func"]
    assert c["metric"] == "KL" and c["diff"] < 0 and c["better"] == 5
    assert c["verdict"] == "better (p < 0.05, all 5 seeds)"


def test_bad_jobs_and_missing_data_are_one_sentence(tmp_path):
    with pytest.raises(UserError, match="--jobs"):
        compare.parse_args(["--jobs", "-1"])
    with pytest.raises(UserError, match="does not exist"):
        compare.main(["--data_path", str(tmp_path / "nope"), "--out", str(tmp_path / "o")])
    assert sys.modules["compare"] is compare
