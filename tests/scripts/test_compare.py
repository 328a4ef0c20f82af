"""benchmarks/compare.py on a tiny user data set in the published layouts (the real script, end to end)."""

import json

from tests.conftest import ROOT, run_script

ARGS = ["--targets", "pop1km", "--variants", "random", "mmgr", "poi_encoder", "poi_counts", "--epochs", "1", "--schedule",
        "--batch_size", "4", "--img_size", "24", "--seeds", "0", "1", "--knn", "3", "--workers", "0", "--resnet", "resnet18"]


def test_compare_table_plot_and_reuse(tmp_path, tiny_data):
    cmd = [str(ROOT / "benchmarks" / "compare.py"), "--data_path", str(tiny_data), "--out", str(tmp_path / "o"), *ARGS]
    r = run_script(cmd, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stdout.count("pretrained mmgr seed") == 2
    md = (tmp_path / "o" / "results.md").read_text()
    assert "Command: `python benchmarks/compare.py --data_path" in md
    for label in ("random init", "MMGR (λ=0.5)", "POI only: MMGR POI encoder", "POI only: category counts"):
        assert md.count(f"| {label} | ") == 2  # ridge and kNN tables
    res = json.loads((tmp_path / "o" / "results.json").read_text())["results"]
    assert set(res) == {"random", "mmgr", "poi_encoder", "poi_counts"} and set(res["mmgr"]) == {"0", "1"}
    assert res["poi_counts"]["0"] == res["poi_counts"]["1"]  # no learning: the same for every seed
    counts_row = [l for l in md.splitlines() if l.startswith("| POI only: category counts")][0]
    assert "± 0.000" in counts_row
    assert (tmp_path / "o" / "compare.png").read_bytes()[:4] == b"\x89PNG"
    # A second run reuses the finished pretraining runs and gives the same numbers.
    r2 = run_script(cmd, cwd=tmp_path)
    assert r2.returncode == 0, r2.stderr
    assert "pretrained" not in r2.stdout
    assert json.loads((tmp_path / "o" / "results.json").read_text())["results"]["mmgr"] == res["mmgr"]
