"""The comparison's statistics, tables, figure and report (how to read them: docs/downstream.md)."""

from __future__ import annotations

import argparse
import os
import platform
from pathlib import Path

import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from engine.compare.rows import LABELS, LOWER_IS_BETTER, PAIRS, PROTOCOL, VARIANTS
from engine.stats import format_ci, gap_closed, mean_ci, paired_comparison


def ci_text(values: list[float]) -> str:
    """Mean ± 95 % half-width of ``values``: 3 decimals, or none for values of 100 and more (persons, yuan)."""
    m, half = mean_ci(values)
    return format_ci(m, half, 0 if np.isfinite(m) and abs(m) >= 100 else 3)


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


def paired_tests(results: dict, targets: list[str], method: str = "ridge") -> dict:
    """``{"mmgr-simclr": {target: paired_comparison(...) + metric, per-seed differences, seeds better}}``."""
    out: dict = {}
    for a, b in PAIRS:
        if a not in results or b not in results:
            continue
        seeds = sorted(set(results[a]) & set(results[b]), key=int)
        for t in targets:
            metric = primary_metric(results, t)
            key = f"{t}/{method}/{metric}"
            if len(seeds) < 2 or any(key not in results[v][s] for v in (a, b) for s in seeds):
                continue
            x = [results[a][s][key] for s in seeds]
            y = [results[b][s][key] for s in seeds]
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


def main_table(summary: dict, targets: list[str], variants: list[str]) -> str:
    """Rows x targets: mean ± 95 % CI of the primary metric, and the gap closed."""
    cols = [(t, next((summary[v][t]["metric"] for v in summary if t in summary[v]), "R2")) for t in targets]
    head = (
        "| row | n | "
        + " | ".join(
            f"{t} {'R²' if m == 'R2' else m} {'↓' if m in LOWER_IS_BETTER else '↑'} | {t} gap closed" for t, m in cols
        )
        + " |"
    )
    lines = [head, "|---|---:|" + "---:|---:|" * len(cols)]
    for v in variants:
        if v not in summary:
            continue
        n = max(c["n"] for c in summary[v].values())
        cells = []
        for t, _ in cols:
            c = summary[v].get(t)
            if c is None:
                cells += ["–", "–"]
                continue
            g = {"random": "0 (def.)", "supervised": "1 (def.)"}.get(
                v, f"{c['gap_closed']:.2f}" if np.isfinite(c["gap_closed"]) else "–"
            )
            cells += [format_ci(c["mean"], c["ci"]), g]
        lines.append(f"| {LABELS[v]} | {n} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def paired_table(paired: dict) -> str:
    lines = [
        "| comparison | target | metric | per-seed difference (seeds) | mean diff ± 95 % CI | seeds better | "
        "paired t p | Wilcoxon p | verdict |",
        "|---|---|---|---|---:|---:|---:|---:|---|",
    ]
    for pair, per_target in paired.items():
        a, b = pair.split("-")
        for t, c in per_target.items():
            diffs = ", ".join(f"{d:+.3f}" for d in c["diffs"])
            metric = "R²" if c["metric"] == "R2" else c["metric"]
            seeds = ", ".join(map(str, c["seeds"]))
            lines.append(
                f"| {LABELS[a]} − {LABELS[b]} | {t} | {metric} | {diffs} ({seeds}) "
                f"| {format_ci(c['diff'], c['ci'])} | {c['better']}/{c['n']} "
                f"| {c['p_t']:.3g} | {c['p_wilcoxon']:.3g} | {c['verdict']} |"
            )
    return "\n".join(lines)


def secondary_table(results: dict, targets: list[str], variants: list[str], method: str) -> str:
    """Every metric of every target, mean ± 95 % CI."""
    metrics = []
    for t in targets:
        keys = ("R2", "MAE", "RMSE") if primary_metric(results, t) == "R2" else ("KL", "L1", "cos")
        metrics += [(t, k) for k in keys]
    lines = ["| row | " + " | ".join(f"{t} {k}" for t, k in metrics) + " |", "|---|" + "---:|" * len(metrics)]
    for v in variants:
        if v not in results:
            continue
        cells = [ci_text(row_values(results, v, t, k, method)) for t, k in metrics]
        lines.append(f"| {LABELS[v]} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def per_seed_table(results: dict, targets: list[str], variants: list[str]) -> str:
    seeds = sorted({s for v in results.values() for s in v}, key=int)
    lines = ["| row | target | " + " | ".join(f"seed {s}" for s in seeds) + " |", "|---|---|" + "---:|" * len(seeds)]
    for v in variants:
        if v not in results:
            continue
        for t in targets:
            metric = primary_metric(results, t)
            proto = PROTOCOL.get(v, "ridge")
            cells = [f"{results[v][s][f'{t}/{proto}/{metric}']:.3f}" if s in results[v] else "" for s in seeds]
            lines.append(f"| {LABELS[v]} | {t} {'R²' if metric == 'R2' else metric} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(summary: dict, targets: list[str], variants: list[str], path: Path, title: str) -> None:
    """One panel per target: the primary metric of each row, with its 95 % interval as an error bar."""
    vs = [v for v in variants if v in summary]
    fig = Figure(figsize=(3.6 * len(targets), 4.2), dpi=110)
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(targets), squeeze=False)
    colours = {"mean": "0.75", "random": "0.55", "supervised": "0.25", "poi_encoder": "C7", "poi_counts": "C7"}
    for ax, t in zip(axes[0], targets, strict=True):
        rows = [v for v in vs if t in summary[v]]
        if not rows:
            continue
        metric = summary[rows[0]][t]["metric"]
        means = [summary[v][t]["mean"] for v in rows]
        cis = [summary[v][t]["ci"] if np.isfinite(summary[v][t]["ci"]) else 0.0 for v in rows]
        ax.bar(
            range(len(rows)), means, yerr=cis, capsize=3, color=[colours.get(v, f"C{i}") for i, v in enumerate(rows)]
        )
        ax.set_xticks(range(len(rows)))
        ax.set_xticklabels(rows, rotation=60, ha="right", fontsize=7)
        ax.axhline(0, color="black", linewidth=0.5)
        arrow = "lower is better" if metric in LOWER_IS_BETTER else "higher is better"
        ax.set_title(f"{t} {'R²' if metric == 'R2' else metric} ({arrow})\nmean ± 95 % CI over seeds", fontsize=8)
    fig.suptitle(title, fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)


def machine() -> dict:
    """What ran it: CPU model and the flags that matter, GPU, versions, load."""
    info = {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpus": os.cpu_count(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "torch_threads": torch.get_num_threads(),
    }
    try:
        text = Path("/proc/cpuinfo").read_text()
        model = next((ln.split(":", 1)[1].strip() for ln in text.splitlines() if ln.startswith("model name")), "?")
        flags = next((ln.split(":", 1)[1].split() for ln in text.splitlines() if ln.startswith("flags")), [])
        info["cpu"] = model
        info["cpu_flags"] = [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile") if f in flags]
    except OSError:
        info["cpu"] = platform.processor()
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def load_average() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "?"


def bound_check(results: dict) -> str | None:
    pops = row_values(results, "supervised", "pop1km", "R2")
    if not pops:
        return None
    m, ci = mean_ci(pops)
    ok = m >= 0.7
    return (
        f"Supervised bound on population: R² {format_ci(m, ci)} over {len(pops)} seeds (min {min(pops):.3f}); "
        f"requirement R² ≥ 0.7: {'met' if ok else 'NOT met'}."
    )


def report(blob: dict, load_start: str, load_end: str) -> str:
    a = argparse.Namespace(**blob["args"])
    results, variants = blob["results"], [v for v in VARIANTS if v in a.variants]
    mach = blob["machine"]
    hw = f"{mach.get('gpu') or mach.get('cpu')}" + (
        f" (flags: {', '.join(mach.get('cpu_flags', [])) or 'none'})" if "gpu" not in mach else ""
    )
    sched = "cosine decay" if a.cos else f"lr x0.1 at epochs {a.schedule}"
    lines = [
        f"Command: `{blob['command']}`",
        "",
        f"Data: {blob['data']}.",
        f"Pretraining: {a.resnet}, {a.img_size} px crops, batch {a.batch_size}, {a.epochs} epochs, Adam lr "
        f"{a.lr:g}, {sched}, precision {a.precision}, augmentation on {a.augment}; seeds {a.seeds}.",
        f"Probed rows: ridge (primary) and kNN (k = {a.knn}) on frozen backbone embeddings of the whole tile, fit "
        f"on train-wuhan.txt, scored on val-wuhan.txt{', scalar targets fit as log1p' if a.log_target else ''}.",
        f"Supervised bound: the same {a.resnet} from random init trained end to end per task, {a.bound_epochs} "
        f"epochs (same budget: pretraining's epochs, batch, crop size and schedule), Adam lr {a.bound_lr:g}, "
        f"last epoch on the validation tiles.",
        f"Machine: {hw}; {mach['platform']}; torch {mach['torch']}; OMP_NUM_THREADS={mach['omp_num_threads']}; "
        f"load average at start {load_start}, at end {load_end}. Started {blob['started']}; "
        f"total {blob['seconds'] / 60:.1f} min ("
        + ", ".join(f"{k} {v:.0f} s" for k, v in blob["phase_seconds"].items())
        + ").",
        "",
    ]
    check = bound_check(results)
    if check:
        lines += [check, ""]
    lines += [
        "Primary metrics (ridge probe), mean ± 95 % CI over seeds (Student t); gap closed = (row − random "
        "init) / (supervised − random init) on the means:",
        "",
        main_table(blob["summary"], a.targets, variants),
        "",
    ]
    if blob["paired"]:
        lines += [
            "Paired by seed (ridge, primary metric; difference = first − second; for KL a negative difference "
            "means the first is better; 'established' needs p < 0.05 and every seed the same way):",
            "",
            paired_table(blob["paired"]),
            "",
        ]
    lines += [
        "Every metric, ridge probe (mean ± 95 % CI):",
        "",
        secondary_table(results, a.targets, variants, "ridge"),
        "",
        f"Secondary: kNN probe (k = {a.knn}, cosine), mean ± 95 % CI (bounds' rows as above):",
        "",
        secondary_table(results, a.targets, variants, "knn"),
        "",
    ]
    if blob["paired_knn"]:
        lines += ["kNN, paired by seed:", "", paired_table(blob["paired_knn"]), ""]
    lines += ["Per seed (primary metric; ridge for probed rows):", "", per_seed_table(results, a.targets, variants), ""]
    return "\n".join(lines)
