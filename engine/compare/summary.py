"""The comparison's statistics: per-row summaries with 95 % intervals, paired tests seed by seed, and the
same for the λ rows and at each label fraction (how to read them: docs/downstream.md, "The comparison")."""

from __future__ import annotations

from engine.compare.rows import FEW_LABEL_PAIRS, LOWER_IS_BETTER, PAIRS, PROTOCOL, lambda_variant
from engine.stats import gap_closed, mean_ci, paired_comparison

__all__ = [
    "flatten",
    "row_values",
    "primary_metric",
    "summarise",
    "paired_tests",
    "verdict",
    "lambda_paired",
    "at_fraction",
    "few_label_summary",
]


def flatten(probe: dict[str, dict[str, dict[str, float]]]) -> dict[str, float]:
    """``{target: {method: {metric: v}}}`` -> ``{"target/method/metric": v}``."""
    return {f"{t}/{m}/{k}": v for t, d in probe.items() for m, mm in d.items() for k, v in mm.items() if k != "alpha"}


def row_values(results: dict, variant: str, target: str, metric: str, method: str = "ridge") -> list[float]:
    """Per-seed values of one cell, in seed order. The bounds' rows have no probe: the mean predictor and the
    supervised bound give the same values in the ridge and the kNN table."""
    key = f"{target}/{PROTOCOL.get(variant, method)}/{metric}"
    seeds = results.get(variant, {})
    return [seeds[s][key] for s in sorted(seeds, key=int) if key in seeds[s]]


def primary_metric(results: dict, target: str) -> str:
    """R² for scalar targets, KL for distributions (whichever the rows hold)."""
    for seeds in results.values():
        for vals in seeds.values():
            if any(k.startswith(f"{target}/") and k.endswith("/KL") for k in vals):
                return "KL"
    return "R2"


def summarise(results: dict, targets: list[str], variants: list[str], method: str = "ridge") -> dict:
    """``{variant: {target: {"metric", "n", "mean", "ci", "gap_closed"}}}`` for the primary metric of each target."""
    out: dict = {}
    for t in targets:
        metric = primary_metric(results, t)
        lo = mean_ci(row_values(results, "random", t, metric, method))[0]
        hi = mean_ci(row_values(results, "supervised", t, metric, method))[0]
        for v in variants:
            vals = row_values(results, v, t, metric, method)
            if not vals:
                continue
            m, ci = mean_ci(vals)
            out.setdefault(v, {})[t] = {
                "metric": metric,
                "n": len(vals),
                "mean": m,
                "ci": ci,
                "gap_closed": gap_closed(m, lo, hi),
            }
    return out


def paired_tests(
    results: dict, targets: list[str], method: str = "ridge", pairs: tuple[tuple[str, str], ...] = PAIRS
) -> dict:
    """``{"mmgr-simclr": {target: paired_comparison(...) + metric, per-seed differences, seeds better}}`` for each
    pair of rows (probed rows through ``method``, the others through their own protocol)."""
    out: dict = {}
    for a, b in pairs:
        if a not in results or b not in results:
            continue
        seeds = sorted(set(results[a]) & set(results[b]), key=int)
        for t in targets:
            metric = primary_metric(results, t)
            ka, kb = (f"{t}/{PROTOCOL.get(v, method)}/{metric}" for v in (a, b))
            if len(seeds) < 2 or any(k not in results[v][s] for v, k in ((a, ka), (b, kb)) for s in seeds):
                continue
            x = [results[a][s][ka] for s in seeds]
            y = [results[b][s][kb] for s in seeds]
            cmp = paired_comparison(x, y)
            sign = -1.0 if metric in LOWER_IS_BETTER else 1.0
            diffs = [xi - yi for xi, yi in zip(x, y, strict=True)]
            cmp.update(
                {
                    "metric": metric,
                    "seeds": [int(s) for s in seeds],
                    "diffs": diffs,
                    "better": int(sum(sign * d > 0 for d in diffs)),
                }
            )
            cmp["verdict"] = verdict(cmp)
            out.setdefault(f"{a}-{b}", {})[t] = cmp
    return out


def verdict(cmp: dict) -> str:
    """Plain words for one paired test: established only if p < 0.05 and every seed points the same way."""
    better = cmp["better"] * 2 > cmp["n"]
    direction = "better" if better else "worse"
    unanimous = cmp["better"] in (0, cmp["n"])
    if cmp["p_t"] < 0.05 and unanimous:
        return f"{direction} (p < 0.05, all {cmp['n']} seeds)"
    if cmp["p_t"] < 0.05:
        return f"{direction} (p < 0.05, but not on every seed)"
    return "not established (p >= 0.05)"


def lambda_paired(results: dict, targets: list[str], lambdas: list[float]) -> dict:
    """Both loss terms matter if a λ strictly between 0 and 1 beats both ends: each such λ row against λ = 0
    (image–POI only) and λ = 1 (image only), seed by seed (ridge, primary metric)."""
    inside = [lambda_variant(x) for x in sorted(lambdas) if 0.0 < x < 1.0]
    pairs = tuple((v, end) for v in inside for end in (lambda_variant(0.0), lambda_variant(1.0)))
    return paired_tests(results, targets, pairs=pairs)


def at_fraction(few: dict, fraction: str) -> dict:
    """The few-label rows at one fraction as ``{variant: {seed: values}}`` (the comparison's ``results`` shape)."""
    return {v: by_f[fraction] for v, by_f in few.items() if fraction in by_f}


def few_label_summary(
    few: dict,
    targets: list[str],
    variants: list[str],
    fractions: list[float],
    pairs: tuple[tuple[str, str], ...] = FEW_LABEL_PAIRS,
) -> dict:
    """``{"few_labels_summary": {fraction: summarise(...)}, "few_labels_paired": {fraction: paired_tests(...)}}``
    of the few-label rows (primary metric; the frozen row through its ridge probe)."""
    keys = [f"{f:g}" for f in fractions]
    return {
        "few_labels_summary": {f: summarise(at_fraction(few, f), targets, variants) for f in keys},
        "few_labels_paired": {f: paired_tests(at_fraction(few, f), targets, pairs=pairs) for f in keys},
    }
