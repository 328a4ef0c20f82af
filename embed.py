"""Export region embeddings of every tile from a pretrained MMGR checkpoint, and probe them.

    python embed.py --ckpt ckpt/wuhan_img_120.tar --data_path DATA --out emb
    python embed.py --ckpt ckpt/checkpoint_last.pt --data_path DATA --out emb --projected --poi
    python embed.py --ckpt ... --data_path DATA --out emb --probe pop1km gdp1km func [--cv 5]
    python embed.py --demo --probe pop1km gdp1km func      # after `python mmgr.py --demo`

Writes to ``--out``: ``names.txt`` (one tile file name per line, the row order), ``backbone.npy``
``[N, d]``, with ``--projected`` ``projection.npy`` ``[N, P]``, with ``--poi`` ``poi.npy`` ``[N, P]``,
``embeddings.csv`` (``name`` then one column per dimension: ``b0..``, ``proj0..``, ``poi0..``) for GIS
joins, ``embeddings.parquet``, and ``meta.json``; when the data folder has a tile index with a CRS
(prepare_pois.py writes one), also ``embeddings_map.parquet`` (GeoParquet with the tile polygons) and
``embeddings_map.png`` (the first three principal components as RGB; k-means clusters with
``--clusters K``; ``--cluster_min_poi`` and ``--cluster_min_brightness`` leave tiles out of the
clustering, engine/cluster_rules.py), the kind of urban-structure map the paper shows. With ``--probe``,
ridge and kNN probes (scikit-learn, engine/probes.py) fit on the training list and score on the
validation list, beside two references on the same tiles: the mean predictor and the same probes on a
randomly initialised encoder of the checkpoint's architecture; with ``--cv K`` also by K-fold
cross-validation over all labelled tiles (folds grouped by spatial blocks when the data folder has a
tile index); results print and go to ``probe.json``.
The lists default to ``train-wuhan.txt``/``val-wuhan.txt`` when present, else ``train.txt``/``val.txt``.

Several roots (``--data_path A B``, e.g. two cities pretrained on together): one row per tile of each,
in root order, named ``LABEL/NAME`` (LABEL: the root's folder name, with its parents' names when two
roots share one), one map per root (``embeddings_map_LABEL.*``), and ``meta.json`` lists the roots;
probes read one root's lists, so ``--probe`` takes one root.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from data.downstream import read_list
from data.layout import resolve_img_dir, resolve_list
from data.roots import check_distinct, data_roots, root_labels
from engine.cluster_rules import (
    Rule,
    TileFacts,
    apply_rules,
    labelled_domain_rule,
    min_brightness_rule,
    min_poi_rule,
)
from engine.embeddings import (
    image_embeddings,
    poi_checkpoint_for,
    poi_embeddings,
    random_image_embeddings,
    tile_files,
    tile_poi_counts,
    write_meta,
)
from engine.maps import write_embedding_map
from engine.probes import mean_predictor_scores, probe_target, probe_target_cv
from engine.run_folder import consistent_image_checkpoint
from prepare.tile_index import read_tile_index
from utils.args import parse_with_demo, resolve_device, str2bool
from utils.errors import UserError, run_main
from utils.fileio import atomic_path, atomic_save_npy, atomic_write_text

PREFIX = {"backbone": "b", "projection": "proj", "poi": "poi"}


def build_parser() -> argparse.ArgumentParser:
    """embed.py's flags, one group per theme (the module docstring says what each output holds)."""
    p = argparse.ArgumentParser(description="Export MMGR region embeddings (one row per tile) and probe them.")
    _input_flags(p)
    _export_flags(p)
    _probe_flags(p)
    p.add_argument("--demo", action="store_true", help="use the demo city and checkpoints of `python mmgr.py --demo`")
    p.add_argument("--demo_dir", default="mmgr_demo", help="where --demo keeps its files (default 'mmgr_demo')")
    return p


def _input_flags(p: argparse.ArgumentParser) -> None:
    """Which encoder (``--ckpt``, or the newest in ``--model_path``) and which tiles of which data folder."""
    g = p.add_argument_group("checkpoint and data")
    g.add_argument(
        "--ckpt",
        default=None,
        help="image checkpoint (*_img_<epoch>.tar or checkpoint_last.pt); default: the newest *_img_*.tar "
        "in --model_path",
    )
    g.add_argument(
        "--model_path", default="./checkpoints", help="where to look when --ckpt is not given (default './checkpoints')"
    )
    g.add_argument(
        "--data_path",
        nargs="+",
        default="./DATA",
        help="data root in either published layout (default './DATA'), or several roots: one row per tile of "
        "each, named LABEL/NAME (LABEL: the root's folder name, README 'Two cities'), one map per root",
    )
    g.add_argument(
        "--img_dir",
        default=None,
        help="tile directory under --data_path (default: 'img' if present, else 'sub_shanghai_img')",
    )
    g.add_argument(
        "--lists",
        nargs="*",
        default=None,
        help="export only the tiles named in these list files under --data_path (default: every tile of --img_dir)",
    )


def _export_flags(p: argparse.ArgumentParser) -> None:
    """What is written to ``--out`` (backbone always; projection, POI embeddings, CSV on request) and how fast."""
    g = p.add_argument_group("export")
    g.add_argument("--out", default="embeddings", help="output directory (default './embeddings')")
    g.add_argument(
        "--projected",
        type=str2bool,
        nargs="?",
        const=True,
        default=False,
        help="also export the image projection head's output (default off)",
    )
    g.add_argument(
        "--poi",
        type=str2bool,
        nargs="?",
        const=True,
        default=False,
        help="also export the POI-encoder embedding of each tile's POI graph (default off)",
    )
    g.add_argument(
        "--poi_ckpt",
        default=None,
        help="POI checkpoint (default: <prefix>_poi_<epoch>.tar beside --ckpt, or --ckpt itself if it is "
        "checkpoint_last.pt)",
    )
    g.add_argument(
        "--csv", type=str2bool, nargs="?", const=True, default=True, help="write embeddings.csv (default on)"
    )
    g.add_argument("--batch_size", type=int, default=64, help="tiles per forward pass (default 64)")
    g.add_argument("--workers", type=int, default=2, help="DataLoader worker processes (default 2)")
    g.add_argument("--device", default=None, help="'cpu', 'cuda', ... (default: cuda if available, else cpu)")


def _probe_flags(p: argparse.ArgumentParser) -> None:
    """Ridge and kNN probes of the exported embeddings (engine/probes.py) and the embedding map's clusters."""
    g = p.add_argument_group("probes and map")
    g.add_argument(
        "--probe",
        nargs="*",
        default=None,
        help="target directories to probe with ridge and kNN on the exported embeddings, e.g. pop1km "
        "gdp1km func (default: no probe)",
    )
    g.add_argument(
        "--probe_features",
        default="backbone",
        choices=tuple(PREFIX),
        help="which exported embedding the probes and the map read (default backbone)",
    )
    g.add_argument(
        "--clusters",
        type=int,
        default=0,
        help="with a tile index with a CRS in --data_path, also colour the embedding map by K k-means "
        "clusters (default 0: the principal-components map only)",
    )
    g.add_argument(
        "--cluster_min_poi",
        type=int,
        default=0,
        help="leave tiles with fewer POIs out of the k-means (cluster -1, grey on the map), e.g. 1 for a city "
        "whose empty tiles are sea or countryside (default 0: cluster every tile)",
    )
    g.add_argument(
        "--cluster_min_brightness",
        type=float,
        default=0.0,
        help="leave tiles whose darkest channel's mean (0-255) is lower out of the k-means: open water is dark "
        "in near-infrared and red, e.g. 20 on tiles cut with a near-infrared band (docs/downstream.md) "
        "(default 0: cluster every tile)",
    )
    g.add_argument(
        "--cluster_in_domain",
        type=str2bool,
        nargs="?",
        const=True,
        default=False,
        help="leave tiles outside the labelled domain of the training list's tiles out of the k-means: the sea, "
        "clouds, land unlike any labelled tile (engine/domain.py, docs/downstream.md) (default off)",
    )
    g.add_argument(
        "--seed", type=int, default=0, help="seed of the k-means clustering and the random encoder (default 0)"
    )
    g.add_argument(
        "--train_list",
        default=None,
        help="probe training list (default 'train-wuhan.txt' when present (published), else 'train.txt', "
        "what prepare_pois.py writes)",
    )
    g.add_argument(
        "--val_list",
        default=None,
        help="probe validation list (default 'val-wuhan.txt' when present (published), else 'val.txt')",
    )
    g.add_argument(
        "--cv",
        type=int,
        default=0,
        help="also score the probes by K-fold cross-validation over every labelled tile (train and val "
        "lists), folds grouped by spatial blocks when the data folder has a tile index; mean ± std "
        "over folds (default 0: off)",
    )
    g.add_argument(
        "--block_tiles", type=int, default=4, help="side of the spatial blocks of --cv, in tiles (default 4, ours)"
    )
    g.add_argument("--knn", type=int, default=10, help="neighbours of the kNN probe (default 10)")
    g.add_argument(
        "--probe_references",
        type=str2bool,
        nargs="?",
        const=True,
        default=True,
        help="print beside the probes the mean predictor and the same probes on a randomly initialised encoder "
        "of the checkpoint's architecture (seed --seed), which costs one more pass over the labelled tiles "
        "(default on)",
    )
    g.add_argument(
        "--log_target",
        type=str2bool,
        nargs="?",
        const=True,
        default=False,
        help="probes fit log1p of scalar targets, metrics in original units (default off)",
    )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    args = parse_with_demo(build_parser(), argv, {"out": "{demo}/embeddings"})
    if isinstance(args.data_path, list) and len(args.data_path) == 1:
        args.data_path = args.data_path[0]  # one root: the value it always was
    return args


def write_csv(path: Path, names: list[str], arrays: dict[str, np.ndarray]) -> None:
    """``name,b0,...,proj0,...,poi0,...`` one row per tile."""
    header = ["name"] + [f"{PREFIX[k]}{j}" for k, a in arrays.items() for j in range(a.shape[1])]
    joined = np.concatenate(list(arrays.values()), axis=1)
    lines = [",".join(header)] + [
        name + "," + ",".join(f"{v:.6g}" for v in row) for name, row in zip(names, joined, strict=True)
    ]
    atomic_write_text("\n".join(lines) + "\n", path)


def write_parquet(path: Path, names: list[str], arrays: dict[str, np.ndarray]) -> None:
    """Parquet copy of the CSV (same columns)."""
    cols = {"name": pa.array(names)}
    for k, a in arrays.items():
        for j in range(a.shape[1]):
            cols[f"{PREFIX[k]}{j}"] = pa.array(a[:, j])
    with atomic_path(path) as tmp:
        pq.write_table(pa.table(cols), tmp)


def cluster_rules(args: argparse.Namespace) -> list[Rule]:
    """The rules that leave tiles out of the k-means (engine/cluster_rules.py), from the flags; a new rule
    (e.g. a labelled-domain test) is one more entry here."""
    rules = []
    if args.cluster_min_poi > 0:
        rules.append(min_poi_rule(args.cluster_min_poi))
    if args.cluster_min_brightness > 0:
        rules.append(min_brightness_rule(args.cluster_min_brightness))
    if args.cluster_in_domain:
        rules.append(labelled_domain_rule())
    return rules


def _train_rows(root: Path, args: argparse.Namespace, names: list[str]) -> np.ndarray | None:
    """Rows of ``names`` that ``root``'s training list names (None when the folder has no training list)."""
    try:
        listed = {Path(n).stem for n in read_list(root / resolve_list(root, args.train_list, "train"))}
    except UserError:
        return None
    return np.array([i for i, n in enumerate(names) if Path(n).stem in listed], dtype=np.int64)


def write_map(
    args: argparse.Namespace,
    names: list[str],
    arrays: dict[str, np.ndarray],
    brightness: np.ndarray,
    img_dir: str,
    root: Path | None = None,
    stem: str = "embeddings_map",
    tile_names: list[str] | None = None,
) -> list[str]:
    """With a tile index with a CRS in the data folder ``root`` (default ``--data_path``): ``STEM.parquet``
    (GeoParquet: tile polygons, the first three principal components, k-means clusters with ``--clusters``,
    the vectors) and ``STEM.png`` (PCs as RGB, clusters); returns the files written (none without such an
    index). ``tile_names``: the tiles' own file names when ``names`` carry a root's label."""
    root = Path(args.data_path) if root is None else root
    index = read_tile_index(root)
    if index is None or index.crs is None:
        return []
    tile_names = names if tile_names is None else tile_names
    out = Path(args.out)
    kind = args.probe_features if args.probe_features in arrays else "backbone"
    clusters = args.clusters or None
    mask, rules = None, cluster_rules(args) if clusters else []
    if rules:
        n_poi = tile_poi_counts(root, img_dir, tile_names, index)
        facts = TileFacts(tile_names, arrays[kind], brightness, n_poi, _train_rows(root, args, tile_names))
        mask, left_out = apply_rules(facts, rules)
        print(
            f"clusters: {int(mask.sum())} of {len(names)} tiles clustered; left out: "
            + ", ".join(f"{n} with {why}" for why, n in left_out.items()),
            flush=True,
        )
    write_embedding_map(
        index,
        tile_names,
        arrays[kind],
        out / f"{stem}.parquet",
        out / f"{stem}.png",
        clusters=clusters,
        seed=args.seed,
        title=f"{kind} embeddings of {len(names)} tiles" + ("" if stem == "embeddings_map" else f" of {root.name}"),
        cluster_mask=mask,
    )
    return [f"{stem}.parquet", f"{stem}.png"]


def export(args: argparse.Namespace) -> tuple[list[str], dict[str, np.ndarray], Path]:
    """Embed every tile (or the listed ones) of every ``--data_path`` root and write names, arrays, CSV,
    Parquet, maps and meta to ``--out``.

    Returns ``(names, {"backbone": [N, d], "projection": [N, P], "poi": [N, P]}, image checkpoint)`` (only
    what was asked). With several roots the rows follow the roots' order and the names are ``LABEL/NAME``.
    """
    roots = data_roots(args.data_path)
    check_distinct(roots)
    for root in roots:
        if not root.is_dir():
            hint = "run `python mmgr.py --demo` first" if args.demo else "pass --data_path"
            raise UserError(f"data directory {root} does not exist; {hint}")
    if len(roots) > 1 and args.probe:
        raise UserError(
            "--probe fits and scores on one root's train/val lists; export several --data_path roots without "
            "--probe, or probe one root at a time"
        )
    ckpt = Path(args.ckpt) if args.ckpt else consistent_image_checkpoint(args.model_path)
    device = resolve_device(args.device)
    labels = root_labels(roots) if len(roots) > 1 else [""]
    parts = []  # (root, label, img_dir, files) of each root
    for root, label in zip(roots, labels, strict=True):
        img_dir = resolve_img_dir(root, args.img_dir)
        parts.append((root, label, img_dir, tile_files(root, img_dir, args.lists)))
    files = [p for *_, fs in parts for p in fs]
    names = [f"{label}/{p.name}" if label else p.name for _, label, _, fs in parts for p in fs]
    arrays, resnet, brightness = image_embeddings(ckpt, files, device, args.batch_size, args.workers, args.projected)
    poi_ckpt = None
    if args.poi:
        poi_ckpt = Path(args.poi_ckpt) if args.poi_ckpt else poi_checkpoint_for(ckpt)
        arrays["poi"] = np.concatenate(
            [poi_embeddings(poi_ckpt, root, img_dir, fs, device, args.batch_size) for root, _, img_dir, fs in parts]
        )
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text("".join(n + "\n" for n in names), out / "names.txt")
    for k, a in arrays.items():
        atomic_save_npy(a.astype(np.float32), out / f"{k}.npy")
    written = [f"{k}.npy {tuple(a.shape)}" for k, a in arrays.items()]
    if args.csv:
        write_csv(out / "embeddings.csv", names, arrays)
        written.append("embeddings.csv")
    write_parquet(out / "embeddings.parquet", names, arrays)
    written.append("embeddings.parquet")
    if len(parts) == 1:
        written += write_map(args, names, arrays, brightness, parts[0][2])
    else:
        written += _write_root_maps(args, parts, names, arrays, brightness)
    meta = {
        "ckpt": str(ckpt),
        "poi_ckpt": str(poi_ckpt) if poi_ckpt else None,
        "resnet": resnet,
        "data_path": str(roots[0]) if len(roots) == 1 else [str(r) for r in roots],
        "img_dir": parts[0][2],
        "n_tiles": len(names),
        "dims": {k: int(a.shape[1]) for k, a in arrays.items()},
    }
    if len(parts) > 1:
        meta["roots"] = [
            {"data_path": str(root), "label": label, "img_dir": img_dir, "n_tiles": len(fs)}
            for root, label, img_dir, fs in parts
        ]
    write_meta(out / "meta.json", meta)
    source = (
        f"from {roots[0] / parts[0][2]}"
        if len(parts) == 1
        else "(" + ", ".join(f"{len(fs)} from {root / img_dir}" for root, _, img_dir, fs in parts) + ")"
    )
    print(f"{len(names)} tiles {source} with {ckpt.name} ({resnet}) -> {out}: {', '.join(written)}", flush=True)
    return names, arrays, ckpt


def _write_root_maps(
    args: argparse.Namespace,
    parts: list[tuple[Path, str, str, list[Path]]],
    names: list[str],
    arrays: dict[str, np.ndarray],
    brightness: np.ndarray,
) -> list[str]:
    """Several roots: one map per root that has a tile index with a CRS, ``embeddings_map_LABEL.*`` (each its
    own principal components and clusters: its colours are not comparable with another root's)."""
    written, start = [], 0
    for root, label, img_dir, fs in parts:
        rows = slice(start, start + len(fs))
        start += len(fs)
        written += write_map(
            args,
            names[rows],
            {k: a[rows] for k, a in arrays.items()},
            brightness[rows],
            img_dir,
            root=root,
            stem="embeddings_map_" + label.replace("/", "_"),
            tile_names=[p.name for p in fs],
        )
    return written


def probe(args: argparse.Namespace, names: list[str], arrays: dict[str, np.ndarray], ckpt: Path | None = None) -> dict:
    """Ridge and kNN probes of each ``--probe`` target on the chosen embedding (validation list, and with
    ``--cv`` cross-validated), with the mean predictor and a random encoder's probes as references (with
    ``ckpt``, the image checkpoint, and ``--probe_references``); printed and written to probe.json."""
    if args.probe_features not in arrays:
        flag = "projected" if args.probe_features == "projection" else "poi"
        raise UserError(f"--probe_features {args.probe_features} was not exported; add --{flag}")
    feats, root = arrays[args.probe_features], Path(args.data_path)
    lists = [resolve_list(root, args.train_list, "train"), resolve_list(root, args.val_list, "val")]
    n_train, n_val = (len(read_list(root / lf)) for lf in lists)
    random_feats = _random_features(args, names, lists, ckpt) if args.probe_references and ckpt else None
    print(
        f"probes fit on {n_train} tiles of {lists[0]} and score on {n_val} tiles of {lists[1]} "
        f"(of {len(names)} exported)",
        flush=True,
    )
    probes: dict = {}
    for target in args.probe:
        probes[target] = probe_target(feats, names, root, target, *lists, k=args.knn, log_target=args.log_target)
        for method, m in probes[target].items():
            text = "  ".join(f"{k} {v:.4f}" for k, v in m.items() if k != "alpha")
            print(f"probe {target:>8} {method:>5} ({args.probe_features}): {text}", flush=True)
        if args.probe_references:
            probes[target]["references"] = _references(args, root, target, lists, random_feats, names)
        probes[target]["tiles"] = {"train": n_train, "val": n_val}
        if args.cv:
            _cross_validate(args, feats, names, root, target, lists, probes)
    atomic_write_text(json.dumps(probes, indent=2) + "\n", Path(args.out) / "probe.json")
    return probes


def _random_features(args: argparse.Namespace, names: list[str], lists: list[str], ckpt: Path) -> np.ndarray:
    """``[N, d]`` backbone embeddings of a random encoder of ``ckpt``'s architecture, rows of the labelled
    tiles filled (the others 0: no probe reads them)."""
    root = Path(args.data_path)
    labelled = set(n for lf in lists for n in read_list(root / lf))
    rows = [i for i, n in enumerate(names) if n in labelled]
    files = tile_files(root, resolve_img_dir(root, args.img_dir))
    by_name = {p.name: p for p in files}
    emb = random_image_embeddings(
        ckpt,
        [by_name[names[i]] for i in rows],
        resolve_device(args.device),
        args.batch_size,
        args.workers,
        args.seed,
    )
    out = np.zeros((len(names), emb.shape[1]), np.float32)
    out[rows] = emb
    return out


def _references(
    args: argparse.Namespace,
    root: Path,
    target: str,
    lists: list[str],
    random_feats: np.ndarray | None,
    names: list[str],
) -> dict:
    """The mean predictor's scores and (with ``random_feats``) the random encoder's probes on the same split;
    printed."""
    refs = {"mean": mean_predictor_scores(root, target, *lists)}
    if random_feats is not None:
        refs["random_init"] = probe_target(
            random_feats, names, root, target, *lists, k=args.knn, log_target=args.log_target
        )
    shown = [("mean predictor", refs["mean"])]
    if random_feats is not None:
        shown += [(f"random init {m}", refs["random_init"][m]) for m in ("ridge", "knn")]  # backbone features
    for label, m in shown:
        text = "  ".join(f"{k} {v:.4f}" for k, v in m.items() if k != "alpha")
        print(f"  reference {target:>8} {label:>16}: {text}", flush=True)
    return refs


def _cross_validate(
    args: argparse.Namespace,
    feats: np.ndarray,
    names: list[str],
    root: Path,
    target: str,
    lists: list[str],
    probes: dict,
) -> None:
    """``--cv``: the probes scored by K-fold cross-validation; printed and added to ``probes[target]``."""
    cv = probe_target_cv(
        feats,
        names,
        root,
        target,
        lists,
        args.cv,
        k=args.knn,
        log_target=args.log_target,
        block_tiles=args.block_tiles,
    )
    probes[target]["cv"] = cv
    for method in ("ridge", "knn"):
        text = "  ".join(f"{k} {m:.4f} ± {s:.4f}" for k, (m, s) in cv[method].items())
        pooled = "  ".join(f"{k} {v:.4f}" for k, v in cv["pooled"][method].items())
        print(
            f"probe {target:>8} {method:>5} ({args.probe_features}, {args.cv}-fold CV): {text}  |  "
            f"pooled out-of-fold: {pooled}",
            flush=True,
        )
    print(f"  ({cv['grouping']}; mean ± std over folds, then all folds' predictions together)", flush=True)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    names, arrays, ckpt = export(args)
    probes = probe(args, names, arrays, ckpt) if args.probe else {}
    return {"names": names, "arrays": arrays, "probes": probes}


if __name__ == "__main__":
    run_main(main)
