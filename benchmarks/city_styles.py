"""Two styles of the synthetic city side by side: how they differ, and what a model fit on style a loses on b.

    OMP_NUM_THREADS=1 python benchmarks/city_styles.py --out OUT                  # generates both cities
    OMP_NUM_THREADS=1 python benchmarks/city_styles.py --a CITY_A --b CITY_B --supervised_seeds 0 1 2

Without ``--a`` / ``--b`` the two cities are generated (once) in ``OUT/a`` and ``OUT/b``: style a and
style b, 400 tiles of 96 px, seed 0 (the CPU configuration of docs/synthetic_city.md). Printed and
written to ``OUT/results.json``:

* per style: the mean colour of the tiles, the building footprint share of the land, the floor area
  share of each building kind (``truth_components.csv``), land uses, POIs per tile and the targets'
  sizes -- what the styles make different;
* cross-style probes: a ridge (engine.probes, penalty by leave-one-out) on frozen features fit on the
  training list of one city and scored on the validation list of the same city and of the other. Features:
  a random-init ResNet-18 (one per ``--seeds``, the same weights for both cities: a shared frozen
  encoder) and log(1 + count) of each POI category (one column per category of ``categories.csv``,
  the same table in both styles). Rows: a -> a, a -> b, b -> b;
* with ``--supervised_seeds``: the supervised bound's model (engine.supervised.train_supervised, the
  configuration of benchmarks/city_bound.py) trained end to end on city a's population labels and
  scored on the validation tiles of a and of b. (b -> b is city_bound.py on city b.)
* with ``--look_ablation`` as well: the same models scored on variants of city b that take back one part
  of style a's look (roofs; ground, vegetation, water and roads; sun; sensor and haze; all of them),
  generated in ``OUT/look/`` with city b's parameters. The layout and the targets are city b's (the look
  does not change them), so the rows say what each part of the look costs a model trained on a.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from data.downstream import read_list  # noqa: E402
from data.pretrain import list_images  # noqa: E402
from engine.probes import fit_and_score, load_targets  # noqa: E402
from engine.supervised import backbone_embeddings, load_tiles, task_for, train_supervised  # noqa: E402
from models.image_encoder import ImageEncoder  # noqa: E402
from synthetic.city import (  # noqa: E402
    KINDS,
    LAND_USES,
    STYLE_A,
    STYLE_B,
    STYLES,
    city_style,
    ensure_city,
    plan_city,
    tile_layout,
)
from utils.errors import UserError, run_main  # noqa: E402
from utils.fileio import atomic_write_text, load_file  # noqa: E402
from utils.metrics import regression_metrics  # noqa: E402
from utils.reproducibility import seed_everything  # noqa: E402

TARGETS = ("pop1km", "gdp1km")
# Parts of style b's look that --look_ablation gives back to style a's values, one variant each.
_ROOFS = ("roof", "village")
_GROUND = ("ground", "trees", "farm", "fixed")
_SUN = ("shadow_per_m", "shadow_east")
_SENSOR = ("haze", "noise_std", "texture")
LOOK_PARTS = {
    "a_roofs": _ROOFS,
    "a_ground": _GROUND,
    "a_sun": _SUN,
    "a_sensor": _SENSOR,
    "a_look": _ROOFS + _GROUND + _SUN + _SENSOR,
}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Compare two synthetic city styles and probe a -> b transfer.")
    p.add_argument("--a", default=None, help="city of style a (default: generated in OUT/a, 400 tiles of 96 px)")
    p.add_argument("--b", default=None, help="city of style b (default: generated in OUT/b, 400 tiles of 96 px)")
    p.add_argument("--out", default="city_styles_out", help="output folder (default 'city_styles_out')")
    p.add_argument("--n_tiles", type=int, default=400, help="tiles of the generated cities (default 400, ours)")
    p.add_argument("--tile_size", type=int, default=96, help="px of the generated cities' tiles (default 96, ours)")
    p.add_argument("--city_seed", type=int, default=0, help="seed of the generated cities (default 0)")
    p.add_argument(
        "--seeds", type=int, nargs="+", default=[0, 1, 2], help="random-init encoders, one each (default 0 1 2)"
    )
    p.add_argument(
        "--supervised_seeds",
        type=int,
        nargs="*",
        default=[],
        help="end-to-end models trained on a, scored on a and b (default none; minutes each on a CPU)",
    )
    p.add_argument(
        "--look_ablation",
        action="store_true",
        help="also score the end-to-end models on variants of b with parts of a's look (default off)",
    )
    p.add_argument("--epochs", type=int, default=20, help="end-to-end epochs (default 20, city_bound.py's)")
    p.add_argument("--img_size", type=int, default=64, help="end-to-end training crop px (default 64, city_bound.py's)")
    return p


def read_rows(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def block_shares(data: Path) -> dict[str, float] | None:
    """Share of the blocks of each building kind, from the city's layouts drawn again (its ``.complete``
    gives the arguments; the layout does not depend on the tile size); None for a city of another style."""
    params = json.loads((data / ".complete").read_text())
    style = params.get("style", "a")
    if style not in STYLES:
        return None
    plan = plan_city(params["n_tiles"], params["seed"], style)
    n = sum(
        np.bincount(tile_layout(plan, i, params["seed"])["block_kind"].ravel(), minlength=len(KINDS))
        for i in range(params["n_tiles"])
    )
    return {k.name: round(float(v), 3) for k, v in zip(KINDS, n / n.sum(), strict=True)}


def summary(data: Path, tiles: torch.Tensor) -> dict:
    """What a style makes different: colour, density, kind mix, land use, POIs and the targets' sizes."""
    comp = read_rows(data / "truth_components.csv")
    tiles_csv = read_rows(data / "tiles.csv")
    floor = np.array([[float(r[f"floor_m2_{k.name}"]) for k in KINDS] for r in comp])
    pop = np.array([float(r["population"]) for r in comp])
    gdp = np.array([float(r["gdp"]) for r in comp])
    lu = [r["land_use"] for r in tiles_csv]
    rgb = tiles.float().mean(dim=(0, 2, 3))
    return {
        "style": city_style(data),
        "n_tiles": len(comp),
        "mean_rgb": [round(float(v), 1) for v in rgb],
        "brightness_std_within_tile": round(float(tiles.float().mean(dim=1).std(dim=(1, 2)).mean()), 1),
        "block_share": block_shares(data),
        "footprint_share": round(float(np.mean([float(r["footprint_m2"]) for r in comp]) / 1e6), 3),
        "floor_share": {k.name: round(float(v), 3) for k, v in zip(KINDS, floor.sum(0) / floor.sum(), strict=True)},
        "land_use_share": {u: round(lu.count(u) / len(lu), 3) for u in LAND_USES},
        "pois_per_tile": round(float(np.mean([int(r["n_poi"]) for r in tiles_csv])), 1),
        "population_zero_share": round(float((pop == 0).mean()), 3),
        "population_median_p95": [round(float(np.median(pop))), round(float(np.percentile(pop, 95)))],
        "gdp_median_p95": [round(float(np.median(gdp))), round(float(np.percentile(gdp, 95)))],
    }


def poi_counts(data: Path, files: list[Path]) -> np.ndarray:
    """``[N, C+1]``: log(1 + count) of each category of ``category_embeddings.csv`` (its row order, so the
    columns mean the same in every city) and log(1 + total), per tile."""
    with open(data / "category_embeddings.csv", newline="") as f:
        table = np.array([[float(v) for v in r[1:]] for r in list(csv.reader(f))[1:]])
    out = np.zeros((len(files), len(table) + 1))
    for i, p in enumerate(files):
        emb = load_file(data / "sub_shanghai_emb" / (p.stem + ".tensor"), "POI embedding file").double().numpy()
        if len(emb):
            cat = np.abs(emb[:, None, :] - table[None]).sum(-1).argmin(1)  # the category each row was written from
            np.add.at(out[i], cat, 1.0)
        out[i, -1] = len(emb)
    return np.log1p(out)


def look_variants(b: Path, out: Path) -> dict[str, Path]:
    """City b again with parts of style a's look (:data:`LOOK_PARTS`), generated once in ``out/NAME``."""
    params = json.loads((b / ".complete").read_text())
    if params.get("style") != "b":
        raise UserError(f"--look_ablation needs --b to be a style-b city; {b} is not")
    keep = ("n_tiles", "tile_size", "seed", "embed_dim", "val_fraction")
    made = {}
    for name, fields in LOOK_PARTS.items():
        style = STYLE_B._replace(
            name=f"b+{name}",
            title=f"Style b with style a's {', '.join(fields)} (benchmarks/city_styles.py --look_ablation).",
            **{f: getattr(STYLE_A, f) for f in fields},
        )
        made[f"b+{name}"] = ensure_city(out / name, **{k: params[k] for k in keep}, style=style)
    return made


def split_rows(data: Path, files: list[Path]) -> dict[str, np.ndarray]:
    """Row indices (into ``files``) of the training and validation lists."""
    index = {p.name: i for i, p in enumerate(files)}
    return {s: np.array([index[n] for n in read_list(data / f"{s}-wuhan.txt")]) for s in ("train", "val")}


def cross_probe(feats: dict[str, np.ndarray], cities: dict[str, dict]) -> dict[str, dict[str, float]]:
    """Ridge R² of every target for a -> a, a -> b and b -> b (fit on the first city's training list)."""
    out = {}
    for src, dst in (("a", "a"), ("a", "b"), ("b", "b")):
        cs, cd = cities[src], cities[dst]
        res = {}
        for t in TARGETS:
            r = fit_and_score(
                feats[src][cs["rows"]["train"]], cs["y"][t]["train"], feats[dst][cd["rows"]["val"]], cd["y"][t]["val"]
            )
            res[t] = round(r["ridge"]["R2"], 4)
        out[f"{src}->{dst}"] = res
    return out


def load_city(data: Path) -> dict:
    """A city's decoded tiles, list rows and population and GDP targets per split."""
    files = list_images(data / "img")
    tiles = load_tiles(files)
    rows = split_rows(data, files)
    y = {t: {s: load_targets(data, t, [files[i].name for i in rows[s]]) for s in rows} for t in TARGETS}
    return {"data": data, "files": files, "tiles": tiles, "rows": rows, "y": y}


def supervised_on_a(args: argparse.Namespace, a: dict, scored: dict[str, dict], seed: int) -> dict:
    """One end-to-end model trained on city a's population labels, scored on the validation tiles of every
    city of ``scored`` (scored together, split afterwards) -> ``{"a->NAME": metrics}``."""
    val = torch.cat([c["tiles"][c["rows"]["val"]] for c in scored.values()])
    y_va = np.concatenate([c["y"]["pop1km"]["val"] for c in scored.values()])
    y_tr = a["y"]["pop1km"]["train"]
    run = train_supervised(
        a["tiles"][a["rows"]["train"]],
        torch.from_numpy(y_tr).float(),
        val,
        y_va,
        task_for(y_tr, "pop1km"),
        resnet="resnet18",
        img_size=args.img_size,
        batch_size=32,
        epochs=args.epochs,
        lr=1e-3,
        seed=seed,
        device=torch.device("cpu"),
        log=False,
    )
    pred, row, start = run["predictions"][:, 0], {"seed": seed, "train_seconds": run["train_seconds"]}, 0
    for name, c in scored.items():
        n = len(c["rows"]["val"])
        row[f"a->{name}"] = regression_metrics(y_va[start : start + n, 0], pred[start : start + n])
        start += n
    return row


def _mean_std(values: list[float]) -> str:
    return f"{np.mean(values):.3f}" + (f" ± {np.std(values, ddof=1):.3f}" if len(values) > 1 else "")


def main(argv: list[str] | None = None) -> dict:
    args = build_parser().parse_args(argv)
    if args.look_ablation and not args.supervised_seeds:
        raise UserError("--look_ablation scores the end-to-end models; give them with --supervised_seeds")
    torch.set_num_threads(max(1, torch.get_num_threads()))
    out = Path(args.out)
    cities: dict[str, dict] = {}
    for style in ("a", "b"):
        given = getattr(args, style)
        if given is None:
            data = ensure_city(out / style, args.n_tiles, args.tile_size, args.city_seed, style=style)
        else:
            data = Path(given)
            if not (data / "truth_components.csv").is_file():
                raise UserError(f"--{style} {data} is not a synthetic city; pass a folder written by synthetic.city")
        cities[style] = load_city(data)
        print(f"style {style}: {data} ({len(cities[style]['files'])} tiles of {cities[style]['tiles'].shape[-1]} px)")
    if cities["a"]["tiles"].shape[1:] != cities["b"]["tiles"].shape[1:]:
        raise UserError("the two cities' tiles differ in size; generate both with the same --tile_size")

    result: dict = {"config": vars(args), "summary": {}, "probes": {}, "supervised": []}
    for style, c in cities.items():
        result["summary"][style] = summary(c["data"], c["tiles"])
        print(f"summary {style}: {json.dumps(result['summary'][style])}", flush=True)

    poi = {s: poi_counts(c["data"], c["files"]) for s, c in cities.items()}
    result["probes"]["poi_counts"] = cross_probe(poi, cities)
    print(f"ridge on POI category counts, R2: {result['probes']['poi_counts']}", flush=True)
    rand = []
    for seed in args.seeds:
        seed_everything(seed)
        enc = ImageEncoder("resnet18")  # one encoder, frozen, for both cities
        feats = {s: backbone_embeddings(enc, c["tiles"], torch.device("cpu")) for s, c in cities.items()}
        rand.append(cross_probe(feats, cities))
        print(f"ridge on random-init resnet18 (seed {seed}), R2: {rand[-1]}", flush=True)
    result["probes"]["random_resnet18"] = rand

    scored = dict(cities)
    if args.look_ablation:
        for name, data in look_variants(cities["b"]["data"], out / "look").items():
            scored[name] = load_city(data)
            # The look does not change the layout: the variant's targets are city b's.
            assert np.array_equal(scored[name]["y"]["pop1km"]["val"], cities["b"]["y"]["pop1km"]["val"])
    for seed in args.supervised_seeds:
        row = supervised_on_a(args, cities["a"], scored, seed)
        result["supervised"].append(row)
        print(
            f"end-to-end resnet18 trained on a (seed {seed}), population R2: "
            + ", ".join(f"{k} {v['R2']:.3f}" for k, v in row.items() if k.startswith("a->"))
            + f" ({row['train_seconds']:.0f} s)",
            flush=True,
        )

    lines = ["", "ridge R2 on the validation list (fit on the first city's training list):"]
    for name, per in (("POI category counts", [result["probes"]["poi_counts"]]), ("random-init resnet18", rand)):
        for d in ("a->a", "a->b", "b->b"):
            lines.append(f"  {name:22s} {d}  " + "  ".join(f"{t} {_mean_std([p[d][t] for p in per])}" for t in TARGETS))
    if result["supervised"]:
        seeds = ", ".join(str(r["seed"]) for r in result["supervised"])
        lines.append(
            f"end-to-end resnet18 trained on a's population labels (seeds {seeds}), R2 on the validation list:"
        )
        for name in scored:
            lines.append(f"  a->{name:12s} {_mean_std([r[f'a->{name}']['R2'] for r in result['supervised']])}")
    print("\n".join(lines))
    result["config"] = {k: (str(v) if isinstance(v, Path) else v) for k, v in result["config"].items()}
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(json.dumps(result, indent=2) + "\n", out / "results.json")
    return result


if __name__ == "__main__":
    run_main(main)
