"""Statistics of repeated runs for comparison tables (docs/downstream.md, "Reading the comparison").

A comparison runs every variant with the same pretraining seeds; seed ``s`` of two variants shares the
data, the split and the evaluation, so their difference is paired. For each cell: the mean and a
95 % confidence interval from Student's t over the seeds; for a pair of variants: the per-seed
differences, their mean with its interval, a paired t-test and, as a check that needs no normality,
the exact Wilcoxon signed-rank test (with 5 seeds its smallest two-sided p-value is 0.0625, so it can
confirm a direction but never reach 0.05 alone).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from scipy import stats

__all__ = ["mean_ci", "paired_comparison", "gap_closed", "format_ci"]


def mean_ci(values: Sequence[float], level: float = 0.95) -> tuple[float, float]:
    """``(mean, half-width of the two-sided t interval)`` of ``values``; the half-width is NaN for one value."""
    v = np.asarray(values, dtype=np.float64)
    if v.size == 0:
        return float("nan"), float("nan")
    if v.size == 1:
        return float(v[0]), float("nan")
    half = stats.t.ppf(0.5 + level / 2, df=v.size - 1) * v.std(ddof=1) / math.sqrt(v.size)
    return float(v.mean()), float(half)


def paired_comparison(a: Sequence[float], b: Sequence[float], level: float = 0.95) -> dict[str, float]:
    """``a - b`` seed by seed: mean difference and its interval, paired t-test and Wilcoxon p-values.

    Returns ``{"n", "diff", "ci", "t", "p_t", "p_wilcoxon", "wins"}`` (``wins``: seeds where a > b).
    Identical values give ``p = 1`` (no evidence of a difference), not NaN.
    """
    x, y = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if x.shape != y.shape:
        raise ValueError(f"paired values need the same seeds, got {x.size} and {y.size}")
    d = x - y
    diff, ci = mean_ci(d, level)
    if d.size < 2 or not np.any(d):
        t, p_t = float("nan"), 1.0
    else:
        res = stats.ttest_rel(x, y)
        t, p_t = float(res.statistic), float(res.pvalue)
        if not np.isfinite(p_t):  # every difference equal and non-zero: no spread, a sure sign
            p_t = 0.0
    p_w = float(stats.wilcoxon(d, method="exact").pvalue) if d.size >= 2 and np.any(d) else 1.0
    return {"n": int(d.size), "diff": diff, "ci": ci, "t": t, "p_t": p_t, "p_wilcoxon": p_w, "wins": int(np.sum(d > 0))}


def gap_closed(value: float, lower: float, upper: float) -> float:
    """Fraction of the gap between a lower bound (random init) and an upper bound (supervised) that
    ``value`` closes: 0 at the lower, 1 at the upper bound. Works for higher- and lower-is-better
    metrics alike (the signs cancel); NaN when the bounds coincide."""
    span = upper - lower
    return float((value - lower) / span) if span != 0 and np.isfinite(span) else float("nan")


def format_ci(mean: float, half: float, digits: int = 3) -> str:
    """``'0.412 ± 0.031'`` (or the mean alone when there is no interval)."""
    if not np.isfinite(mean):
        return "–"
    return f"{mean:.{digits}f}" if not np.isfinite(half) else f"{mean:.{digits}f} ± {half:.{digits}f}"
