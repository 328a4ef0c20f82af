"""Comparison statistics against values computed by hand from the formulas."""

from __future__ import annotations

import math

import numpy as np
import pytest

from engine.stats import format_ci, gap_closed, mean_ci, paired_comparison


def test_mean_ci_is_the_t_interval():
    v = [1.0, 2.0, 3.0, 4.0, 5.0]
    mean, half = mean_ci(v)
    # t(0.975, 4) = 2.776445; sample std = sqrt(2.5)
    assert mean == 3.0 and half == pytest.approx(2.776445 * math.sqrt(2.5) / math.sqrt(5), rel=1e-6)
    assert mean_ci([0.7]) == (0.7, pytest.approx(float("nan"), nan_ok=True))


def test_paired_comparison_uses_the_per_seed_differences():
    a = np.array([0.50, 0.55, 0.52, 0.58, 0.51])
    b = a - np.array([0.02, 0.03, 0.01, 0.04, 0.02])
    r = paired_comparison(a, b)
    d = a - b
    t = d.mean() / (d.std(ddof=1) / math.sqrt(5))
    assert r["n"] == 5 and r["wins"] == 5
    assert r["diff"] == pytest.approx(0.024) and r["t"] == pytest.approx(t)
    assert r["p_t"] < 0.01 and r["p_wilcoxon"] == pytest.approx(0.0625)  # the exact minimum with 5 seeds
    same = paired_comparison(a, a)
    assert same["p_t"] == 1.0 and same["p_wilcoxon"] == 1.0 and same["wins"] == 0
    with pytest.raises(ValueError):
        paired_comparison([1.0, 2.0], [1.0])


def test_gap_closed_for_both_directions_and_format():
    assert gap_closed(0.5, 0.2, 0.8) == pytest.approx(0.5)  # R², higher is better
    assert gap_closed(0.3, 0.5, 0.1) == pytest.approx(0.5)  # KL, lower is better
    assert math.isnan(gap_closed(0.3, 0.2, 0.2))
    assert format_ci(0.41234, 0.0312) == "0.412 ± 0.031" and format_ci(0.4, float("nan")) == "0.400"
