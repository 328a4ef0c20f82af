"""engine/compare/longform.py (results.csv, read back with pandas) and figures.py on a hand-made results blob."""

import numpy as np
import pandas as pd
import pytest

from engine.compare import figures, longform, summary


def _blob() -> dict:
    results = {
        "mean": {"0": {"pop1km/mean/R2": 0.0, "func/mean/KL": 0.9}},
        "random": {
            s: {"pop1km/ridge/R2": 0.2 + i / 10, "pop1km/knn/R2": 0.1, "func/ridge/KL": 0.5} for i, s in enumerate("01")
        },  # fmt: skip
        "supervised": {s: {"pop1km/end_to_end/R2": 0.8, "func/end_to_end/KL": 0.2} for s in "01"},
        "img_poi": {s: {"pop1km/ridge/R2": 0.6 + i / 100, "func/ridge/KL": 0.3} for i, s in enumerate("01")},
        "lambda_0.25": {s: {"pop1km/ridge/R2": 0.65 + i / 100, "func/ridge/KL": 0.3} for i, s in enumerate("01")},
        "mmgr": {s: {"pop1km/ridge/R2": 0.7 + i / 100, "func/ridge/KL": 0.25} for i, s in enumerate("01")},
        "simclr": {s: {"pop1km/ridge/R2": 0.68 + i / 100, "func/ridge/KL": 0.28} for i, s in enumerate("01")},
    }
    few = {
        v: {
            f: {s: {f"pop1km/{m}/R2": x * float(f) + i / (50 * x)} for i, s in enumerate("01")}
            for f in ("0.05", "0.5", "1")
        }
        for v, m, x in (
            ("mmgr_frozen", "ridge", 0.7),
            ("mmgr_finetuned", "end_to_end", 0.8),
            ("simclr_finetuned", "end_to_end", 0.75),
            ("scratch", "end_to_end", 0.6),
        )
    }
    args = {
        "targets": ["pop1km", "func"],
        "lambdas": [0.0, 0.25, 0.5, 1.0],
        "label_fractions": [0.05, 0.5, 1.0],
        "label_targets": ["pop1km"],
        "label_variants": ["mmgr_frozen", "mmgr_finetuned", "simclr_finetuned", "scratch"],
    }
    rows = ["mean", "random", "img_poi", "mmgr", "simclr", "supervised", "lambda_0.25"]
    return {
        "args": args,
        "results": results,
        "summary": summary.summarise(results, args["targets"], rows),
        "few_labels": few,
        **summary.few_label_summary(few, ["pop1km"], args["label_variants"], args["label_fractions"]),
    }


def test_results_csv_is_long_form_and_reads_with_pandas(tmp_path):
    blob = _blob()
    longform.write_long_form(blob, tmp_path / "results.csv")
    df = pd.read_csv(tmp_path / "results.csv")
    assert tuple(df.columns) == longform.COLUMNS
    n_comparison = sum(len(vals) for seeds in blob["results"].values() for vals in seeds.values())
    assert len(df) == n_comparison + 4 * 3 * 2  # few labels: 4 rows x 3 fractions x 2 seeds, one metric each
    assert df["seed"].dtype.kind == "i" and df["value"].dtype.kind == "f" and df["label_fraction"].dtype.kind == "f"
    lam = df.dropna(subset=["lambda"]).query("study == 'comparison' and method == 'ridge' and metric == 'R2'")
    assert sorted(set(lam["lambda"])) == [0.0, 0.25, 0.5, 1.0]
    assert df.query("variant == 'mean'")["lambda"].isna().all()
    ft = df.query("study == 'few_labels' and variant == 'mmgr_finetuned' and label_fraction == 0.05")
    assert list(ft["method"]) == ["end_to_end"] * 2 and ft["lambda"].tolist() == [0.5, 0.5]
    assert ft["value"].to_numpy() == pytest.approx([0.8 * 0.05, 0.8 * 0.05 + 1 / 40])
    assert set(df.query("study == 'few_labels'")["label"]) >= {"from scratch (random init, end to end)"}
    cell = df.query("variant == 'random' and seed == 1 and method == 'ridge' and target == 'pop1km'")["value"]
    assert cell.item() == 0.2 + 1 / 10  # written exactly (repr), read back exactly
    assert np.isnan(df.query("variant == 'scratch'")["lambda"]).all()


def test_figures_of_both_studies_are_written(tmp_path):
    blob = _blob()
    figures.plot_lambdas(blob, tmp_path / "lambda.png", "title")
    figures.plot_label_fractions(blob, tmp_path / "label_fractions.png", "title")
    for name in ("lambda.png", "label_fractions.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
