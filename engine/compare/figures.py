"""The comparison's figures: each row's primary metric, the λ ablation, the few-label curves (95 % intervals
drawn; how to read them: docs/downstream.md, "The comparison")."""

from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from engine.compare.rows import FEW_LABEL_ROWS, LOWER_IS_BETTER, label, lambda_variant

__all__ = ["plot", "plot_lambdas", "plot_label_fractions"]


def _axes(n: int, width: float = 3.8, height: float = 3.6) -> tuple[Figure, np.ndarray]:
    fig = Figure(figsize=(max(width * n, 5.5), height), dpi=110)
    FigureCanvasAgg(fig)
    return fig, fig.subplots(1, n, squeeze=False)[0]


def _title(target: str, metric: str) -> str:
    arrow = "lower is better" if metric in LOWER_IS_BETTER else "higher is better"
    return f"{target} {'R²' if metric == 'R2' else metric} ({arrow})\nmean ± 95 % CI over seeds"


def _save(fig: Figure, path: Path, title: str) -> None:
    fig.suptitle("\n".join(textwrap.wrap(title, int(fig.get_figwidth() * 15))), fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)


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


def plot_lambdas(blob: dict, path: Path, title: str) -> None:
    """The λ ablation: one panel per target, the primary metric (ridge probe) of each λ's encoder with its 95 %
    interval as an error bar, the bounds' means as dashed lines (the paper's figure of λ)."""
    a, summary = blob["args"], blob["summary"]
    fig, axes = _axes(len(a["targets"]))
    for ax, t in zip(axes, a["targets"], strict=True):
        xs = [x for x in sorted(a["lambdas"]) if t in summary.get(lambda_variant(x), {})]
        if not xs:
            continue
        cells = [summary[lambda_variant(x)][t] for x in xs]
        cis = [c["ci"] if np.isfinite(c["ci"]) else 0.0 for c in cells]
        ax.errorbar(xs, [c["mean"] for c in cells], yerr=cis, fmt="o-", capsize=3, color="C0", label="pretrained")
        for v, colour in (("random", "0.55"), ("supervised", "0.25")):
            if t in summary.get(v, {}):
                ax.axhline(summary[v][t]["mean"], linestyle="--", linewidth=1, color=colour, label=label(v))
        ax.set_xticks(xs)
        ax.set_xticklabels([f"{x:g}" for x in xs])
        ax.set_xlabel("λ (0: image–POI only, 1: image only)", fontsize=8)
        ax.set_title(_title(t, cells[0]["metric"]), fontsize=8)
    axes[0].legend(fontsize=6)
    _save(fig, path, title)


def plot_label_fractions(blob: dict, path: Path, title: str) -> None:
    """Few labels: one panel per target, the primary metric of each few-label row against the fraction of the
    labels (log scale), its 95 % interval as a band; fine-tuned solid, frozen dashed, from scratch dotted."""
    a, by_fraction = blob["args"], blob["few_labels_summary"]
    fractions = [f"{f:g}" for f in a["label_fractions"]]
    style = {"probe": "--", "finetune": "-", "scratch": ":"}
    fig, axes = _axes(len(a["label_targets"]), width=4.2)
    for ax, t in zip(axes, a["label_targets"], strict=True):
        metric = "R2"
        for i, v in enumerate(a["label_variants"]):
            pts = [(float(f), by_fraction[f][v][t]) for f in fractions if t in by_fraction.get(f, {}).get(v, {})]
            if not pts:
                continue
            x = np.array([p[0] for p in pts])
            m = np.array([p[1]["mean"] for p in pts])
            ci = np.nan_to_num(np.array([p[1]["ci"] for p in pts]))
            metric = pts[0][1]["metric"]
            colour = "0.35" if v == "scratch" else f"C{i}"
            ax.plot(x, m, style[FEW_LABEL_ROWS[v][0]], marker="o", color=colour, label=label(v))
            ax.fill_between(x, m - ci, m + ci, color=colour, alpha=0.15, linewidth=0)
        ax.set_xscale("log")
        ax.set_xticks([float(f) for f in fractions])
        ax.set_xticklabels(fractions)
        ax.minorticks_off()
        ax.set_xlabel("fraction of the training labels (log scale)", fontsize=8)
        ax.set_title(_title(t, metric), fontsize=8)
    axes[0].legend(fontsize=6)
    _save(fig, path, title)


def plot_transfer(blob: dict, out: Path, title: str) -> list[Path]:
    """The transfer study (blob["transfer"]): transfer.png, its rows' primary metric on the test city with 95 %
    intervals; transfer_fractions.png, the few-label rows against the fraction of the test city's labels."""
    tr, a = blob["transfer"], blob["args"]
    paths = [out / "transfer.png"]
    plot(tr["summary"], a["targets"], tr["rows"], paths[0], f"{title}; ridge probe fit on the training city")
    if a["test_fractions"]:
        fake = {
            "args": {**a, "label_fractions": a["test_fractions"], "label_variants": list(tr["few_labels"])},
            "few_labels_summary": tr["few_labels_summary"],
        }
        paths.append(out / "transfer_fractions.png")
        plot_label_fractions(fake, paths[1], f"{title}; labels of the test city")
    return paths
