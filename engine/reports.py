"""What a downstream run leaves behind besides its record file: the summary over seeds, the per-tile
predictions CSV and the predicted-vs-true scatter plot.

:func:`write_reports` is the one reporting step: it receives everything a writer could need (tile
names of the split, truth, every seed's predictions in original units, the task's columns, the output
paths), so that another writer (a map, for example) is one more call inside it.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from pyproj import CRS

from data.downstream import read_target
from data.layout import DownstreamLayout
from engine.tasks import Task
from prepare.tile_index import TileIndex, read_tile_index
from utils.fileio import atomic_write_bytes, atomic_write_text
from utils.metrics import std_ratio

__all__ = [
    "SeedResult",
    "Outputs",
    "MapTiles",
    "map_tiles",
    "summarize",
    "summary_lines",
    "write_predictions",
    "scatter_plot",
    "write_reports",
    "baseline_intro",
    "comparison_lines",
]


@dataclass
class SeedResult:
    """One run: per-evaluation metrics and the last epoch's validation predictions (original units)."""

    seed: int
    history: list[dict] = field(default_factory=list)
    pred: np.ndarray | None = None  # [N_val, K]
    dead_warned: bool = False  # the task's warning is printed once per run
    train_mean: np.ndarray | None = None  # [K] mean training target (original units): the mean predictor
    map_pred: np.ndarray | None = None  # [T, K] the final model's predictions on every mapped tile

    def best(self, task: Task) -> dict:
        def score(h: dict) -> float:
            v = h[task.best_key]
            return -np.inf if np.isnan(v) else (v if task.higher_is_better else -v)

        return max(self.history, key=score)


@dataclass(frozen=True)
class Outputs:
    """Where a run's reports go: the predictions CSV, the scatter plot (None: not drawn) and the stem
    ``<folder>/<record name without suffix>`` that further writers name their files after."""

    pred_csv: Path
    plot: Path | None
    stem: Path


def metric_text(m: dict) -> str:
    """``"MAE 1.0000  RMSE ..."``: a metrics dict as printed (epoch and seed left out)."""
    return "  ".join(f"{k} {v:.4f}" for k, v in m.items() if k not in ("epoch", "seed"))


def summarize(results: list[SeedResult], task: Task) -> dict[str, dict[str, tuple[float, float]]]:
    """``{"best"|"last": {metric: (mean, std)}}`` over seeds (sample std, 0 for one seed)."""
    out: dict[str, dict[str, tuple[float, float]]] = {}
    for tag in ("best", "last"):
        rows = [r.best(task) if tag == "best" else r.history[-1] for r in results if r.history]
        if not rows:
            continue
        keys = [k for k in rows[0] if k != "epoch"]
        out[tag] = {}
        for k in keys:
            v = np.array([r[k] for r in rows], dtype=np.float64)
            out[tag][k] = (float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else 0.0)
    return out


def summary_lines(summary: dict[str, dict[str, tuple[float, float]]], n_seeds: int) -> list[str]:
    """``mean ± std over N seeds (best|last): ...`` lines (none for a single seed)."""
    if n_seeds <= 1:
        return []
    return [
        f"mean ± std over {n_seeds} seeds ({tag}): "
        + "  ".join(f"{k} {m:.4f} ± {s:.4f}" for k, (m, s) in stats.items())
        for tag, stats in summary.items()
    ]


def write_predictions(path: Path, names: list[str], y_true: np.ndarray, results: list[SeedResult], task: Task) -> None:
    """CSV, one row per (seed, tile): ``name,seed,true_<col>...,pred_<col>...`` (original units)."""
    header = ["name", "seed"] + [f"true_{c}" for c in task.columns] + [f"pred_{c}" for c in task.columns]
    lines = [",".join(header)]
    for r in results:
        if r.pred is None:
            continue
        for i, name in enumerate(names):
            vals = [f"{v:.6g}" for v in y_true[i]] + [f"{v:.6g}" for v in r.pred[i]]
            lines.append(",".join([name, str(r.seed), *vals]))
    atomic_write_text("\n".join(lines) + "\n", path)


def scatter_plot(path: Path, y_true: np.ndarray, results: list[SeedResult], title: str, log: bool) -> None:
    """Predicted vs true (last epoch, every seed), with the identity line; PNG on an Agg canvas (no global backend)."""
    fig = Figure(figsize=(4.5, 4.5), dpi=120)
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    lo, hi = float(np.min(y_true)), float(np.max(y_true))
    for r in results:
        if r.pred is not None:
            ax.scatter(y_true[:, 0], r.pred[:, 0], s=8, alpha=0.6, label=f"seed {r.seed}")
            lo, hi = min(lo, float(r.pred.min())), max(hi, float(r.pred.max()))
    ax.plot([lo, hi], [lo, hi], "k--", lw=1, label="y = x")
    if log:
        ax.set_xscale("symlog")
        ax.set_yscale("symlog")
    ax.set_xlabel("true")
    ax.set_ylabel("predicted")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    atomic_write_bytes(buf.getvalue(), path)


@dataclass(frozen=True)
class MapTiles:
    """The tiles a run maps: every tile of the data folder's tile index (with a CRS) that has an image.

    ``truth`` ``[N, K]`` holds NaN rows for tiles without a target file; ``split`` is ``train``/``val``/empty.
    """

    index: TileIndex
    target: str
    names: list[str]
    files: list[Path]
    truth: np.ndarray
    split: list[str]


def map_tiles(layout: DownstreamLayout, train_names: list[str], val_names: list[str], k: int) -> MapTiles | None:
    """The tiles to map when ``layout``'s folder has a tile index with a CRS (docs/real_data.md), else None."""
    index = read_tile_index(layout.root)
    if index is None or index.crs is None:
        return None
    names = [n for n in index.names if (layout.root / layout.img_dir / n).is_file()]
    if not names:
        return None
    truth = np.full((len(names), k), np.nan)
    for i, n in enumerate(names):
        target = layout.targets / (Path(n).stem + ".txt")
        if target.is_file():
            truth[i] = read_target(target)
    side = {Path(n).stem: "train" for n in train_names} | {Path(n).stem: "val" for n in val_names}
    return MapTiles(
        index,
        layout.target_dir,
        names,
        [layout.root / layout.img_dir / n for n in names],
        truth,
        [side.get(Path(n).stem, "") for n in names],
    )


def write_reports(
    out: Outputs,
    task: Task,
    val_names: list[str],
    y_val: np.ndarray,
    results: list[SeedResult],
    summary: dict[str, dict[str, tuple[float, float]]],
    label: str,
    tiles: MapTiles | None = None,
) -> None:
    """Every report of a run, each announced on stdout.

    Args:
        out: the output paths.
        task: the task (its ``columns`` name the CSV columns; ``scatter``/``log_scale`` shape the plot).
        val_names: the ``N`` validation tile names, the row order of ``y_val`` and of each ``pred``.
        y_val: ``[N, K]`` true values (original units).
        results: one per seed, ``pred`` ``[N, K]`` in original units (last epoch).
        summary: :func:`summarize` of ``results`` (the plot's title quotes the last R² when there is one).
        label: what was evaluated, e.g. ``"pop1km: wuhan_img_8.tar"`` (the titles).
        tiles: the tiles to map (every tile of a tile index with a CRS); ``map_pred`` of each seed on them.
    """
    write_predictions(out.pred_csv, val_names, y_val, results, task)
    print(f"predictions: {out.pred_csv}", flush=True)
    if task.scatter and out.plot is not None:
        last = summary.get("last", {})
        r2 = f"  R2 {last['R2'][0]:.3f}" if "R2" in last else ""
        scatter_plot(out.plot, y_val, results, f"{label}{r2} (last epoch)", log=task.log_scale)
        print(f"scatter plot: {out.plot}", flush=True)
    preds = [r.map_pred for r in results if r.map_pred is not None]
    if tiles is not None and preds:
        gpkg, png = out.stem.with_name(out.stem.name + "_map.gpkg"), out.stem.with_name(out.stem.name + "_map.png")
        seeds = f", mean of {len(preds)} seeds" if len(preds) > 1 else ""
        task.write_map(
            tiles.index,
            tiles.names,
            tiles.truth,
            np.mean(preds, axis=0),
            gpkg,
            png,
            tiles.split,
            f"{label} on all {len(tiles.names)} tiles{seeds}, split as in the lists",
            tiles.target,
        )
        crs = tiles.index.crs if len(tiles.index.crs) < 40 else CRS(tiles.index.crs).name
        print(f"map: {png} and {gpkg} (every tile of the tile index, CRS {crs})", flush=True)


def baseline_intro(label: str, resnet: str, target_dir: str) -> str:
    """What a run with ``--baselines`` is about to do, in words a new user can follow."""
    return (
        f"What does pretraining buy on {target_dir}? The same head (same seeds, epochs and lr) is trained on the "
        f"frozen features of\n  (1) the pretrained encoder {label}, then of\n  (2) a randomly initialised "
        f"{resnet} (the lower bound: what the architecture alone gives), and both are compared with\n  (3) the "
        "mean predictor, which predicts the mean training target for every tile.\n"
        "--- (1) the pretrained encoder"
    )


def _last_metrics(task: Task, y: np.ndarray, results: list[SeedResult]) -> dict[str, float]:
    """Last-epoch metrics, mean over seeds, plus the std ratio of the predictions."""
    rows = [{**task.metrics(y, r.pred), "std ratio": std_ratio(y, r.pred)} for r in results if r.pred is not None]
    return {k: float(np.mean([m[k] for m in rows])) for k in rows[0]}


def comparison_lines(
    task: Task,
    y_val: np.ndarray,
    results: list[SeedResult],
    baselines: dict[str, list[SeedResult]],
    label: str,
    target_dir: str,
) -> list[str]:
    """The comparison table of ``--baselines``: the run's encoder (``label``, e.g. ``"pretrained (x.tar)"``),
    each baseline, the mean predictor, and the differences, then how to read them.

    ``y_val`` ``[N, K]`` original units; every ``pred`` ``[N, K]`` in original units (last epoch); mean over seeds.
    """
    rows = {label: _last_metrics(task, y_val, results)}
    rows.update({k: _last_metrics(task, y_val, v) for k, v in baselines.items()})
    mean_pred = [SeedResult(r.seed, pred=np.repeat(r.train_mean[None], len(y_val), axis=0)) for r in results]
    rows["mean predictor"] = _last_metrics(task, y_val, mean_pred)
    first, short = rows[label], label.split(" (")[0]
    others = list(rows)[1:]
    diffs = {f"{short} - {k}": {m: first[m] - rows[k][m] for m in first} for k in others}
    keys = list(first)
    width = max(len(k) for k in [*rows, *diffs]) + 2
    seeds = f"mean over {len(results)} seeds, " if len(results) > 1 else ""
    lines = [
        f"comparison on the {len(y_val)} validation tiles of {target_dir} ({seeds}last epoch):",
        " " * width + "".join(f"{k:>12}" for k in keys),
    ]
    lines += [f"{k:<{width}}" + "".join(f"{v[m]:>12.4f}" for m in keys) for k, v in rows.items()]
    lines += [f"{k:<{width}}" + "".join(f"{v[m]:>+12.4f}" for m in keys) for k, v in diffs.items()]
    return lines + [
        task.explain_metrics(),
        std_ratio_sentence(short, first["std ratio"]),
        verdict(task, short, {k: rows[k] for k in others}, first, len(y_val), len(results)),
    ]


def verdict(
    task: Task, short: str, others: dict[str, dict[str, float]], first: dict[str, float], n_tiles: int, n_seeds: int
) -> str:
    """Where the run's encoder stands against each baseline on the task's main metric, in words."""
    key, sign = task.best_key, (1.0 if task.higher_is_better else -1.0)
    parts = []
    for k, v in others.items():
        gain = sign * (first[key] - v[key])
        parts.append(f"{'ahead of' if gain > 0 else 'behind'} {k} by {abs(gain):.3f}")
    better = "higher" if task.higher_is_better else "lower"
    seeds = f"{n_seeds} seeds" if n_seeds > 1 else "one seed; --seeds 0 1 2 repeats it for a mean ± std"
    return f"On {key} ({better} is better) {short} is {' and '.join(parts)} ({n_tiles} tiles, {seeds})."


def std_ratio_sentence(short: str, ratio: float) -> str:
    """Whether the run's predictions vary with the truth, in one sentence."""
    verdict = (
        "they vary with the truth"
        if ratio >= 0.3
        else "they hardly vary: the head predicts nearly the same value for every tile"
    )
    return (
        f"std ratio = std(predictions) / std(truth) per target column, averaged: 0 for a constant prediction, "
        f"about 1 when the predictions spread like the truth. {short}: {ratio:.2f}, {verdict}."
    )
