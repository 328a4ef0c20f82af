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
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from pyproj import CRS

from data.downstream import read_target
from data.layout import DownstreamLayout
from engine.domain import Domain
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
    "map_spread",
    "write_map_reports",
    "write_tile_csv",
    "std_ratio_sentence",
    "verdict",
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
    map_std: np.ndarray | None = None  # [T, K] the spread of an ensemble's members there (None: one head)
    domain: Domain | None = None  # the labelled domain of every mapped tile (engine/domain.py)
    test: SeedResult | None = None  # on every tile of --test_data_path: map_pred, map_std and domain

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
    """The tiles a run maps: every tile of the data folder's tile index that has an image.

    ``truth`` ``[N, K]`` holds NaN rows for tiles without a target file, the others checked as the validation
    targets are (``Task.check``); ``split`` is ``train``/``val``/empty (a test root's: ``test`` for its labelled
    tiles, the ones scored, else empty). An index without a CRS (``index.crs``
    None) gives a CSV of the tiles and no map.
    """

    index: TileIndex
    target: str
    names: list[str]
    files: list[Path]
    truth: np.ndarray
    split: list[str]


def map_tiles(layout: DownstreamLayout, train_names: list[str], val_names: list[str], task: Task) -> MapTiles | None:
    """The tiles to map when ``layout``'s folder has a tile index (docs/real_data.md), else None. Their truth
    passes ``task.check`` as the validation targets do (distributions renormalised, invalid files refused)."""
    index = read_tile_index(layout.root)
    if index is None:
        return None
    names = [n for n in index.names if (layout.root / layout.img_dir / n).is_file()]
    if not names:
        return None
    truth = np.full((len(names), len(task.columns)), np.nan)
    labelled = [i for i, n in enumerate(names) if (layout.targets / (Path(n).stem + ".txt")).is_file()]
    if labelled:
        raw = torch.tensor(
            np.stack([read_target(layout.targets / (Path(names[i]).stem + ".txt")) for i in labelled]),
            dtype=torch.float32,
        ).reshape(len(labelled), -1)
        if raw.shape[1] == truth.shape[1]:
            truth[labelled] = task.check(raw, layout.targets).double().numpy()
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
    if tiles is not None:
        write_map_reports(out, task, tiles, results, label)


def map_spread(results: list[SeedResult]) -> tuple[np.ndarray, np.ndarray, str]:
    """The map's prediction ``[T, K]`` (mean over seeds), its spread ``pred_std`` ``[T, K]`` and what the spread is.

    Several seeds with ensembles: the std over every member of every seed (within-seed variance plus the
    variance of the seeds' means); one head per seed: the std over seeds; one seed with one head: NaN (no
    spread to measure).
    """
    preds = np.stack([r.map_pred for r in results if r.map_pred is not None])
    stds = [r.map_std for r in results if r.map_pred is not None]
    mean = preds.mean(axis=0)
    if all(s is not None for s in stds):
        members = "members" if len(preds) == 1 else f"members of {len(preds)} seeds"
        return (
            mean,
            np.sqrt(np.mean(np.stack(stds) ** 2, axis=0) + preds.var(axis=0)),
            f"std over the ensemble's {members}",
        )
    if len(preds) > 1:
        return mean, preds.std(axis=0), f"std over {len(preds)} seeds"
    return mean, np.full_like(mean, np.nan), "not measured: one seed, one head (--seeds or --heads measure it)"


def write_tile_csv(
    path: Path, task: Task, tiles: MapTiles, pred: np.ndarray, std: np.ndarray, domain: Domain | None
) -> None:
    """CSV, one row per mapped tile: ``name,split,true_<col>...,pred_<col>...,pred_std_<col>...,in_domain``."""
    cols = task.columns
    header = ["name", "split", *[f"true_{c}" for c in cols], *[f"pred_{c}" for c in cols]]
    header += [f"pred_std_{c}" for c in cols] + ["in_domain"]
    lines = [",".join(header)]
    for i, name in enumerate(tiles.names):
        vals = [f"{v:.6g}" if np.isfinite(v) else "" for v in (*tiles.truth[i], *pred[i], *std[i])]
        dom = "" if domain is None else str(bool(domain.in_domain[i])).lower()
        lines.append(",".join([name, tiles.split[i], *vals, dom]))
    atomic_write_text("\n".join(lines) + "\n", path)


def write_map_reports(
    out: Outputs,
    task: Task,
    tiles: MapTiles,
    results: list[SeedResult],
    label: str,
    split_note: str = "split as in the lists",
    domain_label: str = "labelled domain",
) -> None:
    """Every tile's prediction, ``pred_std`` and ``in_domain``: a CSV always; with a CRS the map (GeoPackage +
    PNG, and a GeoTIFF for one value per tile); each announced on stdout, the domain's count too.
    ``split_note`` ends the map's title; ``domain_label`` starts the domain's line (a test root's names the
    training tiles it is measured against)."""
    if not any(r.map_pred is not None for r in results):
        return
    pred, std, spread = map_spread(results)
    domain = next((r.domain for r in results if r.domain is not None), None)
    csv = out.stem.with_name(out.stem.name + "_tiles.csv")
    write_tile_csv(csv, task, tiles, pred, std, domain)
    print(f"every tile: {csv} (prediction, pred_std = {spread}, in_domain)", flush=True)
    if domain is not None:
        print(f"{domain_label}: {domain.summary(np.asarray(tiles.split))}", flush=True)
    if tiles.index.crs is None:
        print(
            f"no map: the tile index of {tiles.files[0].parent.parent} has no CRS (tile_index.csv only), so its "
            "tiles cannot be placed on the Earth; prepare_pois.py writes tile_index.gpkg from a georeferenced "
            "--mosaic",
            flush=True,
        )
        return
    n = sum(r.map_pred is not None for r in results)
    seeds = f", mean of {n} seeds" if n > 1 else ""
    written = task.write_map(
        tiles.index,
        tiles.names,
        tiles.truth,
        pred,
        std,
        None if domain is None else domain.in_domain,
        out.stem.with_name(out.stem.name + "_map"),
        tiles.split,
        f"{label} on all {len(tiles.names)} tiles{seeds}, {split_note}",
        tiles.target,
    )
    crs = tiles.index.crs if len(tiles.index.crs) < 40 else CRS(tiles.index.crs).name
    print(f"map: {' and '.join(str(p) for p in written)} (every tile of the tile index, CRS {crs})", flush=True)


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
    """Where the run's encoder stands against each baseline on the task's main metric, in words; said plainly
    when it is behind one of them."""
    key, sign = task.best_key, (1.0 if task.higher_is_better else -1.0)
    parts, behind = [], []
    for k, v in others.items():
        gain = sign * (first[key] - v[key])
        parts.append(f"{'ahead of' if gain > 0 else 'behind'} {k} by {abs(gain):.3f}")
        if gain <= 0:
            behind.append(k)
    better = "higher" if task.higher_is_better else "lower"
    seeds = f"{n_seeds} seeds" if n_seeds > 1 else "one seed; --seeds 0 1 2 repeats it for a mean ± std"
    text = f"On {key} ({better} is better) {short} is {' and '.join(parts)} ({n_tiles} tiles, {seeds})."
    if "mean predictor" in behind:
        text += (
            f" Verdict: {short} does worse than predicting the training mean for every tile; its predictions are "
            "not usable here."
        )
    elif behind:
        text += (
            f" Verdict: {short} is behind {' and '.join(behind)}: on these tiles its features carry less about "
            f"{key} than the architecture alone does."
        )
    return text


OVER_DISPERSED = 1.2  # std ratio above which predictions spread more than the truth: errors, not signal
FLAT = 0.5  # below which the head predicts little more than the mean


def std_ratio_sentence(short: str, ratio: float) -> str:
    """Whether the run's predictions vary with the truth, in one sentence: over-dispersed above
    :data:`OVER_DISPERSED`, flat below :data:`FLAT`."""
    if not np.isfinite(ratio):
        verdict = "not measurable: the truth is the same on every tile"
    elif ratio > OVER_DISPERSED:
        verdict = (
            f"over-dispersed: they spread more than the truth (above {OVER_DISPERSED}), so part of what varies is error"
        )
    elif ratio < FLAT:
        verdict = (
            f"flat: they vary much less than the truth (below {FLAT}); the head predicts little more than the mean"
        )
    else:
        verdict = "they spread about as the truth does"
    return (
        f"std ratio = std(predictions) / std(truth) per target column, averaged: 0 for a constant prediction, "
        f"about 1 when the predictions spread like the truth. {short}: {ratio:.2f}, {verdict}."
    )
