"""Maps of per-tile results: predictions and embeddings as GIS files and PNG maps (docs/real_data.md).

Every function here is pure: it takes the tile index of the data folder (``prepare.tile_index``) and
arrays in the order of a list of tile names, and returns a GeoDataFrame or writes files (atomically,
``utils.fileio``). The scripts (``res_pop.py``, ``res_func.py``, ``embed.py``) call them when the data
folder has a tile index.

- :func:`write_prediction_map`: a GeoPackage (tile polygon, name, split, truth, prediction, residual =
  prediction - truth, ``pred_std``, ``in_domain``) and a PNG with truth, prediction, residual and the
  spread side by side; truth and prediction share one colour scale, the residual has a diverging one
  centred on 0; tiles outside the labelled domain (engine/domain.py) are hatched grey over the
  prediction, and the legend says how many.
- :func:`write_prediction_tif`: prediction and ``pred_std`` as a two-band GeoTIFF, one pixel per tile in
  the tile index's CRS, NaN (nodata) where there is no tile (rasterio): the form of gridded population
  products.
- :func:`write_distribution_map`: the same for a distribution per tile (urban functions): every
  share and its spread, the dominant class of truth and prediction, and a categorical map of the
  dominant class (out-of-domain tiles hatched).
- :func:`write_embedding_map`: GeoParquet (or GeoPackage) of the embeddings with the tile geometry,
  and a PNG of the first three principal components as RGB and, given K, k-means clusters.

Figures are drawn with matplotlib's object API on an Agg canvas (no display, no global backend).
Tiles on a regular grid are drawn as one image (fast and crisp for 100,000 tiles); other tiles as
polygons. Axes are in the CRS's units, with a scale bar.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from pathlib import Path

import geopandas as gpd
import numpy as np
import pandas as pd
import pyproj
import rasterio
from affine import Affine
from matplotlib import colormaps, colors
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.collections import PolyCollection
from matplotlib.figure import Figure
from matplotlib.patches import Patch
from matplotlib.ticker import MaxNLocator
from mpl_toolkits.axes_grid1.anchored_artists import AnchoredSizeBar
from sklearn.cluster import KMeans
from sklearn.decomposition import PCA

from prepare.tile_index import TileIndex
from utils.fileio import atomic_path

__all__ = [
    "prediction_frame",
    "distribution_frame",
    "embedding_frame",
    "write_frame",
    "plot_prediction_map",
    "plot_distribution_map",
    "plot_embedding_map",
    "write_prediction_map",
    "write_distribution_map",
    "write_embedding_map",
    "write_prediction_tif",
]


# --------------------------------------------------------------------------------------------------
# Frames


def _base(index: TileIndex, names: Sequence[str], split: Sequence[str] | None):
    pos = index.locate(list(names))
    split = [""] * len(pos) if split is None else [str(s) for s in split]
    if len(split) != len(pos):
        raise ValueError(f"split has {len(split)} entries for {len(pos)} tiles")
    data = {"name": [index.names[k] for k in pos], "split": split}
    return gpd.GeoDataFrame(data, geometry=index.polygons()[pos], crs=index.crs), pos


def _trust(frame, n: int, pred_std: np.ndarray | None, in_domain: np.ndarray | None, columns: list[str]) -> None:
    """Add the spread columns (``[N]`` or ``[N, K]`` for ``columns``) and ``in_domain`` (``[N]`` bool) to ``frame``."""
    if pred_std is not None:
        std = np.asarray(pred_std, np.float64).reshape(n, -1)
        for k, c in enumerate(columns):
            frame[c] = std[:, k]
    if in_domain is not None:
        frame["in_domain"] = np.asarray(in_domain, bool).reshape(-1)


def prediction_frame(
    index: TileIndex,
    names: Sequence[str],
    truth: np.ndarray,
    prediction: np.ndarray,
    split: Sequence[str] | None = None,
    pred_std: np.ndarray | None = None,
    in_domain: np.ndarray | None = None,
):
    """Per-tile truth, prediction and residual with the tile polygons.

    Args:
        index: the data folder's tile index.
        names: ``[N]`` tile names (with or without extension) of the rows of ``truth``/``prediction``.
        truth, prediction: ``[N]`` values.
        split: ``[N]`` ``"train"``/``"val"``... (default: empty).
        pred_std: ``[N]`` spread of the prediction over seeds or ensemble members (NaN: not measured).
        in_domain: ``[N]`` bool, the tile lies in the labelled domain (engine/domain.py).

    Returns:
        GeoDataFrame with columns ``name, split, truth, prediction, residual`` (prediction - truth), and
        ``pred_std``, ``in_domain`` when given, geometry.
    """
    frame, _ = _base(index, names, split)
    truth = np.asarray(truth, np.float64).reshape(-1)
    prediction = np.asarray(prediction, np.float64).reshape(-1)
    frame["truth"], frame["prediction"], frame["residual"] = truth, prediction, prediction - truth
    _trust(frame, len(frame), pred_std, in_domain, ["pred_std"])
    return frame


def distribution_frame(
    index: TileIndex,
    names: Sequence[str],
    truth: np.ndarray,
    prediction: np.ndarray,
    classes: Sequence[str],
    split: Sequence[str] | None = None,
    pred_std: np.ndarray | None = None,
    in_domain: np.ndarray | None = None,
):
    """Per-tile distributions (e.g. urban-function shares) with the tile polygons.

    Args:
        truth, prediction: ``[N, K]`` shares; classes: ``[K]`` class names.
        pred_std: ``[N, K]`` spread of each share; in_domain: ``[N]`` bool (as :func:`prediction_frame`).

    Returns:
        GeoDataFrame with ``name, split``, ``truth_<class>`` and ``pred_<class>`` for every class,
        ``dominant_truth``, ``dominant_pred`` (class names), ``l1`` (sum of absolute share errors), and
        ``pred_std_<class>``, ``in_domain`` when given, geometry.
    """
    frame, _ = _base(index, names, split)
    truth, prediction = np.asarray(truth, np.float64), np.asarray(prediction, np.float64)
    classes = [str(c) for c in classes]
    if truth.shape != prediction.shape or truth.shape[1] != len(classes):
        raise ValueError(f"truth {truth.shape} and prediction {prediction.shape} must both be [N, {len(classes)}]")
    for k, c in enumerate(classes):
        frame[f"truth_{c}"] = truth[:, k]
    for k, c in enumerate(classes):
        frame[f"pred_{c}"] = prediction[:, k]
    known = np.isfinite(truth).all(axis=1)  # tiles without a target (unlabelled) have NaN rows
    frame["dominant_truth"] = [
        classes[k] if ok else "" for k, ok in zip(np.nan_to_num(truth).argmax(axis=1), known, strict=True)
    ]
    frame["dominant_pred"] = [classes[k] for k in prediction.argmax(axis=1)]
    frame["l1"] = np.where(known, np.abs(prediction - truth).sum(axis=1), np.nan)
    _trust(frame, len(frame), pred_std, in_domain, [f"pred_std_{c}" for c in classes])
    return frame


def embedding_frame(
    index: TileIndex,
    names: Sequence[str],
    embeddings: np.ndarray,
    clusters: int | None = None,
    seed: int = 0,
    keep_vectors: bool = True,
    cluster_mask: np.ndarray | None = None,
):
    """Embeddings with the tile polygons, their first three principal components and k-means clusters.

    Args:
        embeddings: ``[N, D]``.
        clusters: K for k-means (scikit-learn, ``n_init=10``), or None.
        cluster_mask: ``[N]`` bool, the tiles k-means clusters (engine/cluster_rules.py); the others get
            cluster -1. None: every tile.
        keep_vectors: add the vector itself as columns ``e0..e{D-1}`` (GeoParquet; a GeoPackage holds at
            most ~2,000 columns, so leave it off there for wide embeddings).

    Returns:
        GeoDataFrame with ``name, split, pc1, pc2, pc3`` (and ``cluster``, and ``e*``), geometry.
    """
    frame, _ = _base(index, names, None)
    x = np.asarray(embeddings, np.float64).reshape(len(frame), -1)
    n_comp = min(3, x.shape[0], x.shape[1])
    pcs = np.zeros((x.shape[0], 3))
    if n_comp > 0 and x.shape[0] > 1:
        pcs[:, :n_comp] = PCA(n_components=n_comp, random_state=seed).fit_transform(x)
    for k in range(3):
        frame[f"pc{k + 1}"] = pcs[:, k]
    if clusters:
        mask = np.ones(len(x), bool) if cluster_mask is None else np.asarray(cluster_mask, bool)
        k = min(int(clusters), int(mask.sum()))
        labels = np.full(len(x), -1, dtype=np.int64)
        labels[mask] = KMeans(n_clusters=k, n_init=10, random_state=seed).fit_predict(x[mask])
        frame["cluster"] = labels
    if keep_vectors:
        vec = pd.DataFrame(x.astype(np.float32), columns=[f"e{k}" for k in range(x.shape[1])], index=frame.index)
        frame = frame.join(vec)
    return frame


def write_frame(frame, path: str | Path) -> None:
    """Write a GeoDataFrame as GeoPackage (``.gpkg``) or GeoParquet (``.parquet``), atomically."""
    path = Path(path)
    ext = path.suffix.lower()
    with atomic_path(path) as tmp, warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*crs.* was not provided")  # tiles of unknown CRS: fine
        if ext == ".gpkg":
            frame.to_file(tmp, driver="GPKG", layer=path.stem, engine="pyogrio")
        elif ext in (".parquet", ".geoparquet"):
            frame.to_parquet(tmp)
        else:
            raise ValueError(f"unknown vector format {path.suffix!r}; use .gpkg or .parquet")


# --------------------------------------------------------------------------------------------------
# Drawing


def _figure(n_panels: int, title: str, frame, context=None):
    """A figure of ``n_panels`` maps side by side, each panel shaped like the tiles' extent."""
    b = frame.geometry.bounds.to_numpy(np.float64)
    if context is not None and len(context):
        b = np.concatenate([b, context])
    w, h = (b[:, 2].max() - b[:, 0].min(), b[:, 3].max() - b[:, 1].min()) if len(b) else (1.0, 1.0)
    panel_w = float(np.clip(4.5 * w / h if h > 0 else 4.5, 2.5, 9.0)) + 1.3  # + colour bar and labels
    fig = Figure(figsize=(panel_w * n_panels, 5.0), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, n_panels, squeeze=False)[0]
    if title:
        fig.suptitle(title)
    return fig, axes


def _save(fig, path: str | Path) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)


def _grid(bounds: np.ndarray):
    """``(rows, cols, extent)`` when the tiles are equal squares on one grid, else None."""
    if len(bounds) == 0:
        return None
    w, h = bounds[:, 2] - bounds[:, 0], bounds[:, 3] - bounds[:, 1]
    s = float(np.median(w))
    if not (np.allclose(w, s, rtol=1e-6) and np.allclose(h, s, rtol=1e-6)):
        return None
    x0, y1 = bounds[:, 0].min(), bounds[:, 3].max()
    cf, rf = (bounds[:, 0] - x0) / s, (y1 - bounds[:, 3]) / s
    cols, rows = np.rint(cf).astype(np.int64), np.rint(rf).astype(np.int64)
    if not (np.allclose(cf, cols, atol=1e-6) and np.allclose(rf, rows, atol=1e-6)):
        return None
    n_r, n_c = int(rows.max()) + 1, int(cols.max()) + 1
    if n_r * n_c > 50_000_000:  # a sparse grid too large for one image: draw polygons
        return None
    return rows, cols, (x0, x0 + n_c * s, y1 - n_r * s, y1)


def _draw(ax, frame, values: np.ndarray, cmap, norm=None, context=None):
    """Draw ``values`` (``[N]`` numbers or ``[N, 3]`` RGB in [0, 1]) on the tiles of ``frame``.

    ``context``: ``[M, 4]`` bounds of other tiles of the index, drawn in light grey underneath.
    """
    bounds = frame.geometry.bounds.to_numpy(np.float64)
    everything = bounds if context is None or len(context) == 0 else np.concatenate([bounds, context])
    g = _grid(everything)
    rgb = values.ndim == 2
    if g is not None:
        rows, cols, extent = g
        n_r, n_c = int(rows.max()) + 1, int(cols.max()) + 1
        if context is not None and len(context):
            bg = np.zeros((n_r, n_c, 4))
            bg[rows[len(bounds) :], cols[len(bounds) :]] = (0.85, 0.85, 0.85, 1.0)
            ax.imshow(bg, extent=extent, origin="upper", interpolation="nearest")
        r, c = rows[: len(bounds)], cols[: len(bounds)]
        if rgb:
            img = np.zeros((n_r, n_c, 4))
            img[r, c, :3], img[r, c, 3] = values, 1.0
            return ax.imshow(img, extent=extent, origin="upper", interpolation="nearest")
        img = np.full((n_r, n_c), np.nan)
        img[r, c] = values
        return ax.imshow(
            np.ma.masked_invalid(img), extent=extent, origin="upper", interpolation="nearest", cmap=cmap, norm=norm
        )

    def boxes(b):
        return [[(x0, y0), (x1, y0), (x1, y1), (x0, y1)] for x0, y0, x1, y1 in b]

    if context is not None and len(context):
        ax.add_collection(PolyCollection(boxes(context), facecolors="0.85", edgecolors="none"))
    if rgb:
        art = PolyCollection(boxes(bounds), facecolors=values, edgecolors="none")
    else:
        art = PolyCollection(
            boxes(bounds), array=np.asarray(values, np.float64), cmap=cmap, norm=norm, edgecolors="none"
        )
    ax.add_collection(art)
    ax.set_xlim(everything[:, 0].min(), everything[:, 2].max())
    ax.set_ylim(everything[:, 1].min(), everything[:, 3].max())
    return art


def _hatch_out_of_domain(ax, frame) -> Patch | None:
    """Grey, hatched boxes over the tiles of ``frame`` outside the labelled domain; the legend entry that
    says how many (None when every tile is inside, or the frame does not say)."""
    if "in_domain" not in frame.columns:
        return None
    out = ~frame["in_domain"].to_numpy(bool)
    if not out.any():
        return None
    b = frame.geometry.bounds.to_numpy(np.float64)[out]
    boxes = [[(x0, y0), (x1, y0), (x1, y1), (x0, y1)] for x0, y0, x1, y1 in b]
    style = dict(facecolor=(0.55, 0.55, 0.55, 0.8), edgecolor=(0.25, 0.25, 0.25), hatch="////", linewidth=0)
    ax.add_collection(PolyCollection(boxes, **style))
    return Patch(**style, label=f"outside the labelled domain: {int(out.sum())} of {len(out)} tiles")


def _axes_in_crs(ax, crs, title: str) -> None:
    """Equal aspect, axis labels with the CRS's units, and a scale bar of a round length."""
    ax.set_aspect("equal")
    ax.set_title(title)
    unit, names = "", ("x", "y")
    if crs is not None:
        c = pyproj.CRS.from_user_input(crs)
        if len(c.axis_info) >= 2:
            unit = c.axis_info[0].unit_name
            names = ("easting", "northing") if c.is_projected else ("longitude", "latitude")
    ax.set_xlabel(f"{names[0]} ({unit})" if unit else names[0])
    ax.set_ylabel(f"{names[1]} ({unit})" if unit else names[1])
    ax.ticklabel_format(style="plain", useOffset=False)
    ax.xaxis.set_major_locator(MaxNLocator(4))  # easting labels are long: few of them
    ax.yaxis.set_major_locator(MaxNLocator(5))
    ax.tick_params(labelsize=7)
    x0, x1 = ax.get_xlim()
    span = abs(x1 - x0) / 4
    if span > 0:
        length = 10 ** np.floor(np.log10(span))
        length *= 5 if 5 * length <= span else (2 if 2 * length <= span else 1)
        label = (
            f"{length / 1000:g} km"
            if unit == "metre" and length >= 1000
            else f"{length:g} {'m' if unit == 'metre' else unit}".strip()
        )
        ax.add_artist(
            AnchoredSizeBar(
                ax.transData,
                length,
                label,
                "lower left",
                pad=0.4,
                frameon=True,
                size_vertical=abs(ax.get_ylim()[1] - ax.get_ylim()[0]) / 200,
            )
        )


def _context(index: TileIndex | None, frame) -> np.ndarray | None:
    """Bounds of the index's tiles that are not in ``frame`` (drawn in grey for orientation)."""
    if index is None:
        return None
    mine = {os.path.splitext(n)[0] for n in frame["name"]}
    other = [k for k, n in enumerate(index.names) if os.path.splitext(n)[0] not in mine]
    return index.bounds[other]


def plot_prediction_map(
    frame, path: str | Path, title: str = "", label: str = "value", index: TileIndex | None = None
) -> None:
    """PNG: truth | prediction (one colour scale) | residual (diverging, centred on 0).

    ``frame`` from :func:`prediction_frame`; ``index`` (optional) draws the other tiles in grey.
    """
    ctx = _context(index, frame)
    spread = frame["pred_std"].to_numpy(np.float64) if "pred_std" in frame.columns else np.array([np.nan])
    has_std = bool(np.isfinite(spread).any())
    fig, axes = _figure(4 if has_std else 3, title, frame, ctx)
    a0, a1, a2 = axes[:3]
    both = np.concatenate([frame["truth"].to_numpy(), frame["prediction"].to_numpy()])
    both = both[np.isfinite(both)]
    lo, hi = np.percentile(both, [1, 99]) if both.size else (0.0, 1.0)
    norm = colors.Normalize(vmin=lo, vmax=hi if hi > lo else lo + 1)
    _draw(a0, frame, frame["truth"].to_numpy(), "viridis", norm, ctx)
    art = _draw(a1, frame, frame["prediction"].to_numpy(), "viridis", norm, ctx)
    fig.colorbar(art, ax=[a0, a1], shrink=0.8, label=label, extend="both")
    res = frame["residual"].to_numpy()
    m = float(np.nanpercentile(np.abs(res), 99)) if np.isfinite(res).any() else 1.0
    art = _draw(a2, frame, res, "RdBu_r", colors.Normalize(vmin=-(m or 1.0), vmax=m or 1.0), ctx)
    fig.colorbar(art, ax=a2, shrink=0.8, label="prediction - truth", extend="both")
    panels = [(a0, "truth"), (a1, "prediction"), (a2, "residual")]
    if has_std:
        hi = float(np.nanpercentile(spread, 99))
        art = _draw(axes[3], frame, spread, "magma_r", colors.Normalize(vmin=0, vmax=hi if hi > 0 else 1.0), ctx)
        fig.colorbar(art, ax=axes[3], shrink=0.8, label="pred_std", extend="max")
        panels.append((axes[3], "spread of the prediction"))
    for ax, t in panels:
        _axes_in_crs(ax, frame.crs, t)
    legend = _hatch_out_of_domain(a1, frame)
    if legend is not None:
        for ax, _ in panels[2:]:
            _hatch_out_of_domain(ax, frame)
        fig.legend(handles=[legend], loc="outside lower center", fontsize=8)
    _save(fig, path)


def _class_colours(classes: Sequence[str]):
    cmap = colormaps["tab10" if len(classes) <= 10 else "tab20"]
    return {c: cmap(k % cmap.N) for k, c in enumerate(classes)}


def plot_distribution_map(
    frame, path: str | Path, classes: Sequence[str], title: str = "", index: TileIndex | None = None
) -> None:
    """PNG: dominant class of truth | of prediction (categorical) | sum of absolute share errors.

    ``frame`` from :func:`distribution_frame`.
    """
    classes = [str(c) for c in classes]
    col = _class_colours(classes)
    ctx = _context(index, frame)
    fig, (a0, a1, a2) = _figure(3, title, frame, ctx)
    for ax, key, t in (
        (a0, "dominant_truth", "dominant class (truth)"),
        (a1, "dominant_pred", "dominant class (prediction)"),
    ):
        # unlabelled tiles (no true class) in light grey
        _draw(
            ax,
            frame,
            np.array([col.get(c, (0.85, 0.85, 0.85))[:3] for c in frame[key]]).reshape(-1, 3),
            None,
            None,
            ctx,
        )
        _axes_in_crs(ax, frame.crs, t)
    out_patch = _hatch_out_of_domain(a1, frame)
    fig.legend(
        handles=[Patch(color=col[c], label=c) for c in classes] + ([out_patch] if out_patch is not None else []),
        loc="outside lower center",
        ncol=min(len(classes) + (out_patch is not None), 8),
        fontsize=8,
    )
    art = _draw(a2, frame, frame["l1"].to_numpy(), "magma_r", None, ctx)
    fig.colorbar(art, ax=a2, shrink=0.8, label="sum of |share error|")
    _axes_in_crs(a2, frame.crs, "error")
    _save(fig, path)


def _rgb(pcs: np.ndarray) -> np.ndarray:
    """``[N, 3]`` principal components -> colours in [0, 1], each stretched between its 2 % and 98 % values."""
    lo, hi = np.percentile(pcs, 2, axis=0), np.percentile(pcs, 98, axis=0)
    return np.clip((pcs - lo) / np.where(hi > lo, hi - lo, 1.0), 0.0, 1.0)


def plot_embedding_map(frame, path: str | Path, title: str = "", index: TileIndex | None = None) -> None:
    """PNG: the first three principal components as RGB | k-means clusters (when ``frame`` has them)."""
    has_k = "cluster" in frame.columns
    ctx = _context(index, frame)
    fig, axes = _figure(2 if has_k else 1, title, frame, ctx)
    _draw(axes[0], frame, _rgb(frame[["pc1", "pc2", "pc3"]].to_numpy(np.float64)), None, None, ctx)
    _axes_in_crs(axes[0], frame.crs, "principal components 1-3 as RGB")
    if has_k:
        ks = sorted(int(k) for k in np.unique(frame["cluster"]) if k >= 0)
        col = _class_colours([str(k) for k in ks])
        col["-1"] = (0.85, 0.85, 0.85, 1.0)  # left out of the clustering by a rule (engine/cluster_rules.py)
        _draw(
            axes[1], frame, np.array([col[str(int(k))][:3] for k in frame["cluster"]]).reshape(-1, 3), None, None, ctx
        )
        _axes_in_crs(axes[1], frame.crs, f"k-means, K = {len(ks)}")
        left = [-1] if (frame["cluster"] < 0).any() else []
        axes[1].legend(
            handles=[Patch(color=col[str(k)], label=f"cluster {k}" if k >= 0 else "left out") for k in ks + left],
            fontsize=7,
            loc="upper right",
            ncol=1 + len(ks) // 10,
        )
    _save(fig, path)


# --------------------------------------------------------------------------------------------------
# One call per script


def write_prediction_map(
    index: TileIndex,
    names: Sequence[str],
    truth: np.ndarray,
    prediction: np.ndarray,
    gpkg_path: str | Path,
    png_path: str | Path,
    split: Sequence[str] | None = None,
    title: str = "",
    label: str = "value",
    pred_std: np.ndarray | None = None,
    in_domain: np.ndarray | None = None,
):
    """GeoPackage + PNG map of a regression's predictions (``res_pop.py``); returns the frame."""
    frame = prediction_frame(index, names, truth, prediction, split, pred_std, in_domain)
    write_frame(frame, gpkg_path)
    plot_prediction_map(frame, png_path, title, label, index)
    return frame


def write_distribution_map(
    index: TileIndex,
    names: Sequence[str],
    truth: np.ndarray,
    prediction: np.ndarray,
    classes: Sequence[str],
    gpkg_path: str | Path,
    png_path: str | Path,
    split: Sequence[str] | None = None,
    title: str = "",
    pred_std: np.ndarray | None = None,
    in_domain: np.ndarray | None = None,
):
    """GeoPackage + PNG map of predicted distributions (``res_func.py``); returns the frame."""
    frame = distribution_frame(index, names, truth, prediction, classes, split, pred_std, in_domain)
    write_frame(frame, gpkg_path)
    plot_distribution_map(frame, png_path, classes, title, index)
    return frame


def write_embedding_map(
    index: TileIndex,
    names: Sequence[str],
    embeddings: np.ndarray,
    vector_path: str | Path,
    png_path: str | Path,
    clusters: int | None = None,
    seed: int = 0,
    title: str = "",
    cluster_mask: np.ndarray | None = None,
):
    """GeoParquet (``.parquet``: PCs, clusters and the vectors) or GeoPackage (``.gpkg``: PCs and clusters)
    + PNG map of embeddings (``embed.py``); returns the frame. ``cluster_mask``: :func:`embedding_frame`."""
    keep = Path(vector_path).suffix.lower() != ".gpkg"
    frame = embedding_frame(index, names, embeddings, clusters, seed, keep_vectors=keep, cluster_mask=cluster_mask)
    write_frame(frame, vector_path)
    plot_embedding_map(frame, png_path, title, index)
    return frame


def write_prediction_tif(
    index: TileIndex,
    names: Sequence[str],
    prediction: np.ndarray,
    pred_std: np.ndarray,
    path: str | Path,
    label: str = "value",
) -> None:
    """Two-band float32 GeoTIFF on the tile grid: band 1 the prediction, band 2 ``pred_std`` (``[N]`` each, in
    the order of ``names``), one pixel per tile, in the index's CRS, NaN (the nodata value) where there is no
    tile. Written with rasterio, atomically.

    Raises:
        ValueError: the tiles are not equal squares on one grid (a GeoTIFF needs one).
    """
    pos = index.locate(list(names))
    g = _grid(index.bounds[pos])
    if g is None:
        raise ValueError("the tiles are not equal squares on one grid; no GeoTIFF")
    rows, cols, (x0, x1, y0, y1) = g
    n_r, n_c = int(rows.max()) + 1, int(cols.max()) + 1
    bands = np.full((2, n_r, n_c), np.nan, np.float32)
    bands[0, rows, cols] = np.asarray(prediction, np.float32).reshape(-1)
    bands[1, rows, cols] = np.asarray(pred_std, np.float32).reshape(-1)
    profile = dict(
        driver="GTiff",
        width=n_c,
        height=n_r,
        count=2,
        dtype="float32",
        crs=index.crs,
        transform=Affine((x1 - x0) / n_c, 0.0, x0, 0.0, -(y1 - y0) / n_r, y1),  # north up, from the top-left corner
        nodata=float("nan"),
        compress="deflate",
    )
    with atomic_path(path) as tmp, rasterio.open(tmp, "w", **profile) as dst:
        dst.write(bands)
        dst.set_band_description(1, f"prediction ({label})")
        dst.set_band_description(2, "pred_std")
