"""engine/compare/summary.py and report.py on hand-made numbers: gap closed, paired verdicts, the λ pairs, the
few-label rows at each fraction (trained rows read through their own protocol)."""

import pytest

from engine.compare import report, rows, summary


def _results(values: dict[str, list[float]], target: str = "pop1km", metric: str = "R2") -> dict:
    return {
        v: {str(s): {f"{target}/{rows.PROTOCOL.get(v, 'ridge')}/{metric}": x} for s, x in enumerate(xs)}
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
    s = summary.summarise(res, ["pop1km"], list(rows.VARIANTS))
    assert s["mmgr"]["pop1km"]["mean"] == pytest.approx(0.5)
    assert s["mmgr"]["pop1km"]["gap_closed"] == pytest.approx((0.5 - 0.25) / (0.8 - 0.25))
    assert s["supervised"]["pop1km"]["ci"] == 0  # identical values: a zero-width interval
    paired = summary.paired_tests(res, ["pop1km"])
    assert paired["mmgr-simclr"]["pop1km"]["better"] == 5 and paired["mmgr-simclr"]["pop1km"]["p_t"] < 0.05
    assert paired["mmgr-simclr"]["pop1km"]["verdict"] == "better (p < 0.05, all 5 seeds)"
    assert paired["mmgr-img_poi"]["pop1km"]["verdict"] == "not established (p >= 0.05)"
    assert paired["mmgr-random"]["pop1km"]["diffs"] == pytest.approx([0.25, 0.25, 0.25, 0.23, 0.27])
    table = report.main_table(s, ["pop1km"], list(rows.VARIANTS))
    assert "| MMGR (λ=0.5) | 5 | 0.500 ± 0.062 | 0.45 |" in table  # t(4) 2.776 x 0.05 / sqrt(5)


def test_each_treatment_of_tiles_without_pois_is_paired_with_the_published_one():
    res = _results(
        {
            "mmgr": [0.50, 0.52, 0.55],
            "mmgr_include": [0.48, 0.49, 0.50],
            "img_poi": [0.40, 0.41, 0.42],
            "img_poi_include": [0.40, 0.42, 0.41],
        }
    )
    paired = summary.paired_tests(res, ["pop1km"])
    assert {"mmgr-mmgr_include", "img_poi-img_poi_include"} <= set(paired)
    assert paired["mmgr-mmgr_include"]["pop1km"]["diffs"] == pytest.approx([0.02, 0.03, 0.05])
    table = report.paired_table(paired)
    assert "| MMGR (λ=0.5) − MMGR (λ=0.5), empty-POI tiles included (published) | pop1km |" in table
    assert rows.lambda_of("mmgr_include") == 0.5 and "mmgr_include" not in rows.DEFAULT_VARIANTS


def test_kl_lower_is_better_in_verdicts():
    res = _results({"simclr": [0.50, 0.52, 0.55, 0.51, 0.53], "mmgr": [0.40, 0.41, 0.43, 0.42, 0.40]}, "func", "KL")
    c = summary.paired_tests(res, ["func"])["mmgr-simclr"]["func"]
    assert c["metric"] == "KL" and c["diff"] < 0 and c["better"] == 5
    assert c["verdict"] == "better (p < 0.05, all 5 seeds)"


def test_lambda_rows_are_named_by_their_lambda_and_paired_with_both_ends():
    assert [rows.lambda_variant(x) for x in (0, 0.25, 0.5, 0.75, 1)] == [
        "img_poi",
        "lambda_0.25",
        "mmgr",
        "lambda_0.75",
        "simclr",
    ]
    assert rows.pretraining_flags("lambda_0.25") == ["--img_lmd", "0.25", "--empty_poi_tiles", "exclude"]
    assert rows.lambda_of("lambda_0.75") == 0.75
    assert rows.lambda_of("mmgr_finetuned") == 0.5 and rows.lambda_of("scratch") is None
    assert rows.comparison_rows(["mean", "mmgr", "supervised"], [0.75, 0, 0.25]) == [
        "mean",
        "img_poi",
        "mmgr",
        "supervised",
        "lambda_0.25",
        "lambda_0.75",
    ]
    res = _results(
        {
            "img_poi": [0.50, 0.52, 0.51],
            "lambda_0.25": [0.60, 0.61, 0.62],
            "mmgr": [0.55, 0.50, 0.57],
            "simclr": [0.58, 0.59, 0.57],
        }
    )
    pairs = summary.lambda_paired(res, ["pop1km"], [0, 0.25, 0.5, 1])
    assert set(pairs) == {"lambda_0.25-img_poi", "lambda_0.25-simclr", "mmgr-img_poi", "mmgr-simclr"}
    assert pairs["lambda_0.25-simclr"]["pop1km"]["better"] == 3
    s = summary.summarise(res, ["pop1km"], list(res))
    table = report.lambda_table(s, ["pop1km"], [0, 0.25, 0.5, 1])
    assert "| 0.25 | MMGR (λ=0.25) | 3 | 0.610 ± 0.025 |" in table and table.index("| 0 |") < table.index("| 1 |")


def test_few_label_rows_pair_trained_with_probed_rows_at_each_fraction():
    """Fine-tuned and from-scratch rows hold end_to_end values, the frozen row ridge values: each is read
    through its own protocol, at each fraction separately."""
    few = {
        "mmgr_frozen": {"0.1": {"0": {"pop1km/ridge/R2": 0.40}, "1": {"pop1km/ridge/R2": 0.42}}},
        "mmgr_finetuned": {
            "0.1": {"0": {"pop1km/end_to_end/R2": 0.50}, "1": {"pop1km/end_to_end/R2": 0.55}},
            "1": {"0": {"pop1km/end_to_end/R2": 0.80}, "1": {"pop1km/end_to_end/R2": 0.82}},
        },
        "scratch": {
            "0.1": {"0": {"pop1km/end_to_end/R2": 0.10}, "1": {"pop1km/end_to_end/R2": 0.20}},
            "1": {"0": {"pop1km/end_to_end/R2": 0.78}, "1": {"pop1km/end_to_end/R2": 0.79}},
        },
    }
    out = summary.few_label_summary(few, ["pop1km"], list(rows.FEW_LABEL_ROWS), [0.1, 1.0])
    s, p = out["few_labels_summary"], out["few_labels_paired"]
    assert set(s) == {"0.1", "1"} and s["0.1"]["mmgr_frozen"]["pop1km"]["mean"] == pytest.approx(0.41)
    assert "mmgr_frozen" not in s["1"] and s["1"]["scratch"]["pop1km"]["n"] == 2
    assert p["0.1"]["mmgr_finetuned-scratch"]["pop1km"]["diffs"] == pytest.approx([0.40, 0.35])
    assert p["0.1"]["mmgr_frozen-scratch"]["pop1km"]["diffs"] == pytest.approx([0.30, 0.22])
    assert p["1"]["mmgr_finetuned-scratch"]["pop1km"]["diffs"] == pytest.approx([0.02, 0.03])
    table = report.few_label_table(s, "pop1km", list(rows.FEW_LABEL_ROWS), {"0.1": 32, "1": 320})
    assert table.splitlines()[0] == "| pop1km R² ↑ | 0.1 (32 tiles) | 1 (320 tiles) |"
    assert "| MMGR fine-tuned (λ=0.5) | 0.525 ± 0.318 | 0.810 ± 0.127 |" in table
    assert "| image only fine-tuned (λ=1) | – | – |" in table
    paired = report.few_label_paired_table(p)
    assert "| 0.1 | MMGR fine-tuned (λ=0.5) − from scratch (random init, end to end) | pop1km | R² |" in paired


def test_tables_leave_out_a_target_a_row_did_not_run():
    """The transfer study trains its bound on --label_targets only: its other targets are blank, not an error."""
    results = {
        "random": {s: {"pop1km/ridge/R2": 0.1 + i, "gdp1km/ridge/R2": 0.2} for i, s in enumerate(("0", "1"))},
        "supervised": {s: {"pop1km/end_to_end/R2": 0.5} for s in ("0", "1")},
    }
    table = report.per_seed_table(results, ["pop1km", "gdp1km"], ["random", "supervised"])
    assert "| supervised end to end (upper bound) | pop1km R² | 0.500 | 0.500 |" in table
    assert "| supervised end to end (upper bound) | gdp1km" not in table
    assert "| random init (lower bound) | gdp1km R² | 0.200 | 0.200 |" in table
