"""The comparison's tables and report, OUT/results.md (how to read them: docs/downstream.md, "The comparison")."""

from __future__ import annotations

import argparse
import os
import platform
from pathlib import Path

import numpy as np
import torch

from engine.compare.rows import LOWER_IS_BETTER, PROTOCOL, comparison_rows, label, lambda_variant
from engine.compare.summary import primary_metric, row_values
from engine.stats import format_ci, mean_ci

__all__ = [
    "main_table",
    "paired_table",
    "secondary_table",
    "per_seed_table",
    "lambda_table",
    "few_label_table",
    "few_label_paired_table",
    "machine",
    "load_average",
    "report",
]


def ci_text(values: list[float]) -> str:
    """Mean ± 95 % half-width of ``values``: 3 decimals, or none for values of 100 and more (persons, yuan)."""
    m, half = mean_ci(values)
    return format_ci(m, half, 0 if np.isfinite(m) and abs(m) >= 100 else 3)


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
        lines.append(f"| {label(v)} | {n} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def paired_table(paired: dict, fraction: str | None = None) -> str:
    """One line per (pair, target); with ``fraction``, no header and a leading column of the label fraction."""
    lines = [
        "| comparison | target | metric | per-seed difference (seeds) | mean diff ± 95 % CI | seeds better | "
        "paired t p | Wilcoxon p | verdict |",
        "|---|---|---|---|---:|---:|---:|---:|---|",
    ]
    if fraction is not None:
        lines = []
    for pair, per_target in paired.items():
        a, b = pair.split("-", 1)
        for t, c in per_target.items():
            diffs = ", ".join(f"{d:+.3f}" for d in c["diffs"])
            metric = "R²" if c["metric"] == "R2" else c["metric"]
            seeds = ", ".join(map(str, c["seeds"]))
            lines.append(
                ("" if fraction is None else f"| {fraction} ")
                + f"| {label(a)} − {label(b)} | {t} | {metric} | {diffs} ({seeds}) "
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
        lines.append(f"| {label(v)} | " + " | ".join(cells) + " |")
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
            key = f"{t}/{proto}/{metric}"
            if not any(key in results[v].get(s, {}) for s in seeds):
                continue  # a row not run on this target (the transfer study's bound: --label_targets only)
            cells = [f"{results[v][s][key]:.3f}" if key in results[v].get(s, {}) else "" for s in seeds]
            lines.append(f"| {label(v)} | {t} {'R²' if metric == 'R2' else metric} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _metric_head(metric: str) -> str:
    return f"{'R²' if metric == 'R2' else metric} {'↓' if metric in LOWER_IS_BETTER else '↑'}"


def lambda_table(summary: dict, targets: list[str], lambdas: list[float]) -> str:
    """One line per λ: its row's primary metric (ridge probe) per target, mean ± 95 % CI."""
    cols = [(t, next((summary[v][t]["metric"] for v in summary if t in summary[v]), "R2")) for t in targets]
    lines = [
        "| λ | row | n | " + " | ".join(f"{t} {_metric_head(m)}" for t, m in cols) + " |",
        "|---:|---|---:|" + "---:|" * len(cols),
    ]
    for x in sorted(lambdas):
        v = lambda_variant(x)
        if v not in summary:
            continue
        cells = [format_ci(summary[v][t]["mean"], summary[v][t]["ci"]) if t in summary[v] else "–" for t, _ in cols]
        n = max(c["n"] for c in summary[v].values())
        lines.append(f"| {x:g} | {label(v)} | {n} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def few_label_table(by_fraction: dict, target: str, variants: list[str], tiles: dict[str, int]) -> str:
    """Rows x label fractions for one target: the primary metric, mean ± 95 % CI (n seeds)."""
    fractions = list(by_fraction)
    metric = next((c[target]["metric"] for s in by_fraction.values() for c in s.values() if target in c), "R2")
    lines = [
        f"| {target} {_metric_head(metric)} | "
        + " | ".join(f"{f} ({tiles.get(f, '?')} tiles)" for f in fractions)
        + " |",
        "|---|" + "---:|" * len(fractions),
    ]
    for v in variants:
        cells = []
        for f in fractions:
            c = by_fraction[f].get(v, {}).get(target)
            cells.append("–" if c is None else format_ci(c["mean"], c["ci"]) + ("" if c["n"] > 1 else " (1 seed)"))
        lines.append(f"| {label(v)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def few_label_paired_table(paired: dict) -> str:
    """The few-label rows' paired tests, one line per (fraction, pair, target)."""
    lines = [
        "| fraction | comparison | target | metric | per-seed difference (seeds) | mean diff ± 95 % CI | "
        "seeds better | paired t p | Wilcoxon p | verdict |",
        "|---:|---|---|---|---|---:|---:|---:|---:|---|",
    ]
    for f, per_pair in paired.items():
        if per_pair:
            lines.append(paired_table(per_pair, f))
    return "\n".join(lines)


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
    results, variants = blob["results"], comparison_rows(a.variants, a.lambdas)
    lists = blob["layout"]
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
        f"on {lists['train_list']}, scored on {lists['val_list']}"
        f"{', scalar targets fit as log1p' if a.log_target else ''}.",
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
    if a.lambdas:
        lines += _lambda_section(blob, a)
    if a.label_fractions:
        lines += _few_label_section(blob, a)
    if blob.get("transfer"):
        lines += _transfer_section(blob, a)
    return "\n".join(lines)


def _transfer_section(blob: dict, a: argparse.Namespace) -> list[str]:
    tr = blob["transfer"]
    rows, lists = tr["rows"], tr["layout"]
    lines = [
        "## Transfer to another city",
        "",
        f"Test city: {tr['data']}. Every row is scored on its {lists['val_list']}: the mean of the training "
        f"city's targets; random init, MMGR pretrained on the training city alone and MMGR pretrained on both "
        f"cities (the test city's images and POIs, never its labels), each with the ridge (and kNN) probe fit on "
        f"the training city's {blob['layout']['train_list']}; and the test city's own bound, trained end to end "
        f"on all of its {lists['train_list']} ({', '.join(a.label_targets)} only). Primary metric, ridge probe, "
        "mean ± 95 % CI over seeds; gap closed = (row − random init) / (test city's bound − random init) "
        "(figure: transfer.png):",
        "",
        main_table(tr["summary"], a.targets, rows),
        "",
    ]
    if tr["paired"]:
        lines += [
            "Paired by seed (ridge, primary metric; difference = first − second):",
            "",
            paired_table(tr["paired"]),
            "",
        ]
    lines += [
        f"Secondary: kNN probe (k = {a.knn}), mean ± 95 % CI:",
        "",
        secondary_table(tr["results"], a.targets, rows, "knn"),
        "",
        "Per seed (primary metric):",
        "",
        per_seed_table(tr["results"], a.targets, rows),
        "",
    ]
    if a.test_fractions:
        variants = list(tr["few_labels"])
        lines += [
            f"Few labels in the test city: at each fraction of its {lists['train_list']} (a subset drawn with each "
            "seed), MMGR pretrained on the training city alone, frozen with the ridge probe or fine-tuned end to "
            f"end ({a.finetune_epochs} epochs, backbone at lr {a.finetune_backbone_lr:g}, head at {a.bound_lr:g}), "
            "and the same network from scratch; scored on its validation list (figure: transfer_fractions.png):",
            "",
        ]
        for t in a.label_targets:
            lines += [few_label_table(tr["few_labels_summary"], t, variants, tr["labelled_tiles"]), ""]
        if any(tr["few_labels_paired"].values()):
            lines += ["Paired by seed at each fraction:", "", few_label_paired_table(tr["few_labels_paired"]), ""]
    return lines


def _lambda_section(blob: dict, a: argparse.Namespace) -> list[str]:
    lines = [
        "## λ ablation",
        "",
        "loss = (1 − λ) · image–POI + λ · image–image: λ = 0 is image–POI only, λ = 1 image only, λ = 0.5 MMGR as "
        "published; the same seeds, data and probe as every row above. Primary metric, ridge probe, mean ± 95 % "
        "CI over seeds (figure: lambda.png):",
        "",
        lambda_table(blob["summary"], a.targets, a.lambdas),
        "",
    ]
    if blob["lambda_paired"]:
        lines += [
            "Both loss terms matter if a λ strictly between 0 and 1 beats both ends; each such λ against λ = 0 and "
            "λ = 1, paired by seed (ridge, primary metric):",
            "",
            paired_table(blob["lambda_paired"]),
            "",
        ]
    return lines


def _few_label_section(blob: dict, a: argparse.Namespace) -> list[str]:
    tiles = blob.get("labelled_tiles", {})
    lines = [
        "## Few labels",
        "",
        f"At each fraction of the labels of {blob['layout']['train_list']} (a subset drawn with each seed, the same "
        "for every row; "
        f"the validation list whole), {a.finetune_epochs} epochs for each end-to-end row (batch {a.batch_size}, or "
        f"every labelled tile when they are fewer; {a.img_size} px crops; Adam, head at lr {a.bound_lr:g}; "
        f"fine-tuned backbones at {a.finetune_backbone_lr:g}, from scratch every parameter at {a.bound_lr:g}); "
        "the frozen row is the comparison's ridge probe fit on the same labelled tiles"
        + (
            f"; image only fine-tuned up to {a.image_only_up_to:g} of the labels (--image_only_up_to)"
            if "simclr_finetuned" in a.label_variants and a.image_only_up_to < max(a.label_fractions)
            else ""
        )
        + ". "
        "Primary metric, mean ± 95 % CI over seeds (figure: label_fractions.png):",
        "",
    ]
    for t in a.label_targets:
        lines += [few_label_table(blob["few_labels_summary"], t, a.label_variants, tiles), ""]
    if any(blob["few_labels_paired"].values()):
        lines += [
            "Paired by seed at each fraction (difference = first − second; for KL a negative difference means the "
            "first is better):",
            "",
            few_label_paired_table(blob["few_labels_paired"]),
            "",
        ]
    return lines
