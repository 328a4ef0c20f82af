"""compare.py and benchmarks/gpu_compare.sh as a user runs them: the comparison's tables (bounds, 95 %
intervals, paired tests, gap closed), the λ ablation and few labels, results.csv, reuse of finished runs,
and bad inputs refused before any training. The statistics on hand-made numbers:
tests/engine/test_compare_summary.py."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

import compare
from data.pretrain import list_images
from engine.probes import fit_and_score, load_targets
from engine.supervised import backbone_embeddings, load_tiles
from models.loading import load_image_encoder
from tests.conftest import ROOT, make_layout
from utils.errors import UserError

ROWS = (
    "mean predictor (lower bound)",
    "random init (lower bound)",
    "image only (λ=1)",
    "image–POI only (λ=0)",
    "MMGR (λ=0.5)",
    "supervised end to end (upper bound)",
)


@pytest.mark.slow
def test_gpu_compare_tiny_mode_prints_the_bounded_table(tmp_path):
    """The GPU script's whole flow (city, pack, device augmentation, bound, 3 variants x 2 seeds, probes,
    paired tests, the λ rows and the few-label rows with every row, image only fine-tuned among them), tiny,
    on CPU."""
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
    assert len(list((tmp_path / "work" / "compare").glob("packed_*/mmgr_pack.json"))) == 1
    for png in ("compare.png", "lambda.png", "label_fractions.png"):
        assert (tmp_path / "out" / png).read_bytes()[:4] == b"\x89PNG"
    assert "gap closed" in (tmp_path / "out" / "gpu_compare.txt").read_text()
    lam = md.split("## λ ablation")[1].split("## Few labels")[0]
    assert "| MMGR (λ=0.5) − image–POI only (λ=0) | pop1km |" in lam and "| 1 | image only (λ=1) | 2 |" in lam
    few = md.split("## Few labels")[1]
    assert "| image only fine-tuned (λ=1) | " in few and "| 1 | MMGR fine-tuned (λ=0.5) − from scratch" in few
    df = pd.read_csv(tmp_path / "out" / "results.csv")
    assert set(df.query("study == 'few_labels'").variant) == {"mmgr_frozen", "mmgr_finetuned", "simclr_finetuned",
                                                              "scratch"}  # fmt: skip


def prepared_folder(data: Path) -> Path:
    """The tiny layout as prepare_pois.py writes a city: tiles only in sub_shanghai_img/, lists train.txt and
    val.txt, a target folder named by the user (pop/)."""
    shutil.rmtree(data / "img")
    for split in ("train", "val"):
        (data / f"{split}-wuhan.txt").rename(data / f"{split}.txt")
    (data / "pop1km").rename(data / "pop")
    return data


@pytest.mark.slow
def test_compare_on_user_data_with_both_studies_reuses_finished_runs(tmp_path, tiny_data, capsys):
    """Your own city as prepare_pois.py writes it, in this process (--jobs 0), with the λ ablation and few
    labels: every requested λ and fraction is in results.csv (read with pandas), with fine-tuned and
    from-scratch rows; the figures are written; a second run reuses every pretraining and end-to-end run and
    gives the same numbers (a changed flag reusing nothing: tests/engine/test_compare_runs.py)."""
    data = prepared_folder(tiny_data)
    argv = [
        "--data_path",
        str(data),
        "--out",
        str(tmp_path / "o"),
        "--targets",
        "pop",
        "--variants",
        "mean",
        "random",
        "mmgr",
        "poi_encoder",
        "poi_counts",
        "supervised",
        "--lambdas",
        "0.25",
        "0.5",
        "--label_fractions",
        "0.25",
        "1",
        "--label_variants",  # image only fine-tuned and the λ ends' paired tests: the GPU script's tiny test
        "mmgr_frozen",
        "mmgr_finetuned",
        "scratch",
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
    for v in ("mmgr", "lambda_0.25"):
        assert out.count(f"pretrained {v} seed") == 2
    assert out.count("supervised pop seed") == 2
    assert "trained scratch pop at 25 % of the labels, seed 0" in out
    assert "trained scratch pop at 100 %" not in out  # from scratch with all labels is the bound's run
    md = (tmp_path / "o" / "results.md").read_text()
    assert f"Command: `python compare.py --data_path {data}" in md and "fit on train.txt, scored on val.txt" in md
    assert first["city_version"] is None and "synthetic city" not in md.split("Machine")[0]
    rows = {"mean", "random", "mmgr", "poi_encoder", "poi_counts", "supervised", "lambda_0.25"}
    assert set(first["results"]) == rows
    assert set(first["results"]["poi_counts"]) == {"0"}  # no learning: one row, like the mean predictor
    assert "| POI only: category counts (ref.) | 1 |" in md
    assert "| 0.25 | MMGR (λ=0.25) | 2 |" in md and "| 0.5 | MMGR (λ=0.5) | 2 |" in md
    assert "| MMGR fine-tuned (λ=0.5) | " in md and "| 0.25 (2 tiles) | 1 (8 tiles) |" in md
    df = pd.read_csv(tmp_path / "o" / "results.csv")
    assert list(df.columns) == ["study", "variant", "label", "lambda", "label_fraction", "seed", "target", "method",
                                "metric", "value"]  # fmt: skip
    lam = df[df.study.eq("comparison") & df.method.eq("ridge") & df.metric.eq("R2") & df.variant.ne("poi_encoder")]
    assert set(lam.dropna(subset=["lambda"])["lambda"]) == {0.25, 0.5}
    few = df[df.study.eq("few_labels") & df.metric.eq("R2")]
    assert set(few.label_fraction) == {0.25, 1.0}
    for f in (0.25, 1.0):
        at = few[few.label_fraction.eq(f)]
        assert set(at.variant) == {"mmgr_frozen", "mmgr_finetuned", "scratch"}
        assert set(at[at.variant.eq("mmgr_finetuned")].method) == {"end_to_end"}
        assert len(at[at.variant.eq("scratch")]) == 2  # one per seed
    bound = df[df.variant.eq("supervised") & df.metric.eq("R2")].sort_values("seed").value.to_numpy()
    scratch = few[few.variant.eq("scratch") & few.label_fraction.eq(1.0)].sort_values("seed").value.to_numpy()
    assert np.array_equal(bound, scratch)
    for png in ("compare.png", "lambda.png", "label_fractions.png"):
        assert (tmp_path / "o" / png).read_bytes()[:4] == b"\x89PNG"

    second = compare.main(argv)
    out = capsys.readouterr().out
    assert "pretrained" not in out and "supervised pop seed" not in out and "  trained " not in out
    assert second["results"] == first["results"] and second["few_labels"] == first["few_labels"]


def test_bad_jobs_and_missing_data_are_one_sentence(tmp_path):
    with pytest.raises(UserError, match="--jobs"):
        compare.parse_args(["--jobs", "-1"])
    with pytest.raises(UserError, match="does not exist"):
        compare.main(["--data_path", str(tmp_path / "nope"), "--out", str(tmp_path / "o")])
    assert sys.modules["compare"] is compare


@pytest.mark.parametrize(
    "extra, match",
    [
        (["--label_fractions", "0"], r"--label_fractions 0 lies outside \(0, 1\]"),
        (["--label_fractions", "1.5"], r"--label_fractions 1.5 lies outside \(0, 1\]"),
        (["--lambdas", "-0.1"], r"--lambdas -0.1 lies outside \[0, 1\]"),
        (["--lambdas", "0.5", "2"], r"--lambdas 2 lies outside \[0, 1\]"),
        (["--label_fractions", "0.1"], "leaves 1 labelled tile of the 8"),
        (["--targets", "pop1km", "gdp1km"], "has no target .gdp1km.*its targets are pop1km"),
        (["--label_targets", "func"], "--label_targets func is not among --targets"),
        (["--test_fractions", "0"], r"--test_fractions 0 lies outside \(0, 1\]"),
        (["--test_city", "b"], "--test_city draws a synthetic city .* pass --test_data_path instead"),
        (["--test_data_path", "{data}"], "is the comparison's own data; pass another city's folder"),
        (["--test_data_path", "{tmp}/nope"], "--test_data_path .*nope does not exist"),
        (["--test_data_path", "{data}", "--test_city", "b"], "--test_data_path and --test_city both name"),
    ],
)
def test_bad_inputs_end_in_one_sentence_before_any_training(tmp_path, tiny_data, extra, match):
    argv = [
        "--data_path",
        str(tiny_data),
        "--out",
        str(tmp_path / "o"),
        "--jobs",
        "0",
        "--batch_size",
        "4",
        "--targets",
        "pop1km",
    ]
    argv += [x.format(data=tiny_data, tmp=tmp_path) for x in extra]
    with pytest.raises(UserError, match=match) as err:
        compare.main(argv)
    assert "\n" not in str(err.value)
    assert not (tmp_path / "o" / "ckpt").exists() and not (tmp_path / "o" / "end_to_end").exists()


def test_data_without_targets_is_refused_before_any_training(tmp_path, tiny_data):
    """A prepared folder whose targets were never written: refused before the city is decoded or any run starts."""
    (tiny_data / "pop1km" / "t009.txt").unlink()
    with pytest.raises(UserError, match="t009.txt does not exist"):
        compare.main(["--data_path", str(tiny_data), "--out", str(tmp_path / "o"), "--jobs", "0"])
    for d in ("pop1km",):
        for f in (tiny_data / d).iterdir():
            f.unlink()
        (tiny_data / d).rmdir()
    with pytest.raises(UserError, match="has no target 'pop1km'"):
        compare.main(["--data_path", str(tiny_data), "--out", str(tmp_path / "o"), "--jobs", "0"])
    assert not (tmp_path / "o" / "ckpt").exists() and not (tmp_path / "o" / "end_to_end").exists()


@pytest.mark.slow
def test_transfer_to_another_city(tmp_path, tiny_data, capsys):
    """--test_data_path: every transfer row scored on the test city's validation list, MMGR pretrained on both
    cities through mmgr.py's several roots, the test city's bound and few-label rows; tables, figures and
    results.csv; a rerun reuses every run; a test city missing a target is refused before any training."""
    other = make_layout(tmp_path / "other", seed=1)
    argv = ["--data_path", str(tiny_data), "--out", str(tmp_path / "o"), "--test_data_path", str(other)]
    argv += ["--targets", "pop1km", "--variants", "random", "mmgr", "--test_fractions", "0.5", "1"]
    argv += ["--epochs", "1", "--batch_size", "4", "--img_size", "16", "--seeds", "0", "1", "--knn", "3"]
    argv += ["--jobs", "0"]
    first = compare.main(argv)
    out = capsys.readouterr().out
    assert out.count("pretrained mmgr_ab seed") == 2 and out.count("pretrained mmgr seed") == 2
    assert "test city: supervised pop1km seed 1" in out and "test city: mmgr_finetuned at 50 % of the labels" in out
    logs = sorted((tmp_path / "o" / "logs").glob("mmgr_ab_s0_*.log"))
    assert len(logs) == 1 and "2 roots" in logs[0].read_text()  # mmgr.py's start line: pretrained on the union
    tr = first["transfer"]
    assert set(tr["results"]) == {"mean", "random", "mmgr", "mmgr_ab", "supervised"}
    assert set(tr["results"]["mmgr_ab"]) == {"0", "1"} and set(tr["few_labels"]["scratch"]) == {"0.5", "1"}
    # The probe is fit on the training city and scored on the test city's validation tiles: recomputed here.
    ckpt = next((tmp_path / "o" / "ckpt").glob("mmgr_s1_*")) / "wuhan_img_1.tar"
    enc = load_image_encoder(ckpt)
    fa, fb = (
        backbone_embeddings(enc, load_tiles(list_images(d / "img"), 0), torch.device("cpu")) for d in (tiny_data, other)
    )
    tr_names = (tiny_data / "train-wuhan.txt").read_text().split()
    va_names = (other / "val-wuhan.txt").read_text().split()
    idx = {n: i for i, n in enumerate(sorted(p.name for p in (tiny_data / "img").iterdir()))}
    want = fit_and_score(
        fa[[idx[n] for n in tr_names]], load_targets(tiny_data, "pop1km", tr_names),
        fb[[idx[n] for n in va_names]], load_targets(other, "pop1km", va_names), k=3,
    )["ridge"]["R2"]  # fmt: skip
    assert tr["results"]["mmgr"]["1"]["pop1km/ridge/R2"] == pytest.approx(want, rel=1e-6)
    # With all its labels, from scratch is the test city's bound (one run).
    bound = [tr["results"]["supervised"][s]["pop1km/end_to_end/R2"] for s in ("0", "1")]
    assert bound == [tr["few_labels"]["scratch"]["1"][s]["pop1km/end_to_end/R2"] for s in ("0", "1")]
    md = (tmp_path / "o" / "results.md").read_text()
    section = md.split("## Transfer to another city")[1]
    assert f"Test city: {other}." in section and "| MMGR pretrained on both cities (λ=0.5) | 2 |" in section
    assert "| MMGR pretrained on both cities (λ=0.5) − MMGR (λ=0.5) | pop1km |" in section
    assert "| 0.5 (4 tiles) | 1 (8 tiles) |" in section
    for png in ("transfer.png", "transfer_fractions.png"):
        assert (tmp_path / "o" / png).read_bytes()[:4] == b"\x89PNG"
    df = pd.read_csv(tmp_path / "o" / "results.csv")
    assert set(df.query("study == 'transfer'").variant) == set(tr["results"])
    assert set(df.query("study == 'transfer_few_labels'").label_fraction) == {0.5, 1.0}

    second = compare.main(argv)
    again = capsys.readouterr().out
    assert (
        "  pretrained " not in again and "test city: supervised pop1km seed" not in again and "  trained " not in again
    )
    assert second["transfer"]["results"] == tr["results"] and second["transfer"]["few_labels"] == tr["few_labels"]

    (other / "pop1km" / "t011.txt").unlink()
    with pytest.raises(UserError, match="t011.txt does not exist"):
        compare.main([*argv[:2], "--out", str(tmp_path / "o2"), *argv[4:]])
    assert not (tmp_path / "o2" / "ckpt").exists()
