"""The comparison's run: the data, every (row, seed), the probes and the bound, saved after every row.

Pretraining runs ``mmgr.py``: in its own process per run (``--jobs N`` at once) or, with ``--jobs 0``, in
this process through the ``pretrain_main`` the script passes in (``mmgr.main``; the engine does not import
the scripts above it). A run whose final checkpoint exists is reused, and each supervised run's result is
kept in OUT/supervised/, so an interrupted comparison continues where it stopped.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import hashlib
import json
import os
import shlex
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

from data.downstream import read_list
from data.pack import is_packed, pack
from data.pretrain import list_images
from engine.checkpoints import PUBLISHED_PREFIX
from engine.compare.report import flatten, load_average, machine, paired_tests, plot, report, summarise
from engine.compare.rows import PRETRAINED, VARIANTS
from engine.embeddings import poi_embeddings
from engine.probes import load_targets, probe_target, score
from engine.supervised import backbone_embeddings, load_tiles, task_for, train_supervised
from models.image_encoder import ImageEncoder
from models.loading import load_image_encoder
from synthetic.city import ensure_city
from utils.errors import UserError
from utils.fileio import atomic_save, atomic_write_text, load_file
from utils.speed import default_channels_last

__all__ = ["PretrainMain", "Comparison", "run_comparison", "pretrain", "random_checkpoint", "category_counts"]

ROOT = Path(__file__).resolve().parents[2]
# mmgr.main: runs one pretraining from its argv (raises UserError on a user error)
PretrainMain = Callable[[list[str]], None]


def pretrain_argv(args: argparse.Namespace, data: Path, out: Path, variant: str, seed: int) -> list[str]:
    """mmgr.py's flags for one (variant, seed)."""
    argv = [
        "--data_path",
        str(data.resolve()),
        "--model_path",
        str((out / "ckpt" / f"{variant}_s{seed}").resolve()),
        "--resnet",
        args.resnet,
        "--img_size",
        str(args.img_size),
        "--batch_size",
        str(args.batch_size),
        "--total_epoch",
        str(args.epochs),
        "--lr",
        str(args.lr),
        "--seed",
        str(seed),
        "--ckpt_prefix",  # the name final_checkpoint looks for, whatever kind of data folder this is
        PUBLISHED_PREFIX,
        "--workers",
        str(args.workers),
        "--device",
        args.device,
        "--save_every",
        str(args.epochs),
        "--train_record",
        str((out / "train-records" / f"{variant}_s{seed}.txt").resolve()),
        "--resume",
        "auto",
        "--precision",
        args.precision,
        "--augment",
        args.augment,
    ]
    argv += ["--cos", "true"] if args.cos else ["--schedule", *map(str, args.schedule)]
    if args.channels_last is not None:
        argv += ["--channels_last", "true" if args.channels_last else "false"]
    return argv + PRETRAINED[variant]


def final_checkpoint(args: argparse.Namespace, out: Path, variant: str, seed: int) -> Path:
    return out / "ckpt" / f"{variant}_s{seed}" / f"{PUBLISHED_PREFIX}_img_{args.epochs}.tar"


def pretrain(
    args: argparse.Namespace, data: Path, out: Path, variant: str, seed: int, pretrain_main: PretrainMain | None = None
) -> Path:
    """Run mmgr.py for one (variant, seed) unless its final checkpoint exists; returns the image checkpoint.

    With ``--jobs 0`` the run is ``pretrain_main(argv)`` in this process (``mmgr.main``), else its own process.
    """
    final = final_checkpoint(args, out, variant, seed)
    if final.is_file():
        return final
    argv = pretrain_argv(args, data, out, variant, seed)
    log = out / "logs" / f"{variant}_s{seed}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    if args.jobs == 0:
        if pretrain_main is None:
            raise ValueError("--jobs 0 runs mmgr.py in this process: pass pretrain_main (mmgr.main)")
        ok = True
        with open(log, "w") as f, contextlib.redirect_stdout(f), contextlib.redirect_stderr(f):
            try:
                pretrain_main(argv)
            except UserError as exc:
                print(f"error: {exc}")
                ok = False
        text = log.read_text()
    else:
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        r = subprocess.run(
            [sys.executable, str(ROOT / "mmgr.py"), *argv], cwd=out, env=env, capture_output=True, text=True
        )
        text = r.stdout + r.stderr
        log.write_text(text)
        ok = r.returncode == 0
    if not ok or not final.is_file():
        raise UserError(f"pretraining {variant} (seed {seed}) failed, see {log}")
    last = [ln for ln in text.splitlines() if ln.startswith("epoch ")][-1:]
    print(f"  pretrained {variant} seed {seed} in {time.time() - t0:.0f} s: {last[0] if last else ''}", flush=True)
    return final


def random_checkpoint(args: argparse.Namespace, out: Path, seed: int) -> Path:
    """A randomly initialised encoder (torchvision's init, seeded), saved like a pretrained one."""
    path = out / "ckpt" / f"random_s{seed}" / f"{PUBLISHED_PREFIX}_img_0.tar"
    if not path.is_file():
        torch.manual_seed(seed)
        atomic_save(ImageEncoder(args.resnet, 128).state_dict(), path)
    return path


def category_counts(data: Path, files: list[Path]) -> np.ndarray:
    """``[N, C+1]``: log(1 + count) of each POI category per tile, and log(1 + total).

    Categories are recovered from the POI embedding tensors themselves (each distinct category
    vector is one category), so this works on any data in the published layout.
    """
    rows = [load_file(data / "sub_shanghai_emb" / (p.stem + ".tensor"), "POI embedding file").float() for p in files]
    vocab: dict[bytes, int] = {}
    ids = []
    for x in rows:
        keys = [r.numpy().round(5).tobytes() for r in x]
        ids.append([vocab.setdefault(k, len(vocab)) for k in keys])
    counts = np.zeros((len(files), len(vocab) + 1))
    for i, t in enumerate(ids):
        np.add.at(counts[i], t, 1.0)
        counts[i, -1] = len(t)
    return np.log1p(counts)


class Comparison:
    """State of one comparison: data, decoded tiles, results so far, written after every row."""

    def __init__(
        self,
        args: argparse.Namespace,
        data: Path,
        out: Path,
        where: str,
        argv: list[str] | None,
        started: float,
        phases: dict[str, float],
    ):
        self.args, self.data, self.out, self.where, self.argv = args, data, out, where, argv
        self.started, self.phases = started, phases
        self.device = torch.device(args.device)
        self.files = list_images(data / "img")
        self.names = [p.name for p in self.files]
        t0 = time.perf_counter()
        self.images = load_tiles(self.files, args.workers)
        phases["decode"] = time.perf_counter() - t0
        self.index = {n: i for i, n in enumerate(self.names)}
        self.results: dict[str, dict[str, dict[str, float]]] = {}
        self.extra: dict = {"supervised_std_ratio": {}, "supervised_seconds": {}}

    def rows_of(self, list_file: str) -> list[int]:
        wanted = read_list(self.data / list_file)
        missing = [n for n in wanted if n not in self.index]
        if missing:
            raise UserError(
                f"{len(missing)} tiles of {self.data / list_file} are missing from {self.data / 'img'} "
                f"(first: {missing[0]}); fix the list"
            )
        return [self.index[n] for n in wanted]

    def record(self, variant: str, seed: int, values: dict[str, float]) -> None:
        self.results.setdefault(variant, {})[str(seed)] = values
        shown = {
            k: round(v, 3) for k, v in values.items() if k.split("/")[2] in ("R2", "KL") and k.split("/")[1] != "knn"
        }
        print(f"  {variant} seed {seed}: {shown}", flush=True)

    def probe(self, variant: str, seed: int, feats: np.ndarray) -> None:
        probe = {
            t: probe_target(
                feats,
                self.names,
                self.data,
                t,
                "train-wuhan.txt",
                "val-wuhan.txt",
                k=self.args.knn,
                log_target=bool(self.args.log_target),
            )
            for t in self.args.targets
        }
        self.record(variant, seed, flatten(probe))

    def mean_predictor(self) -> None:
        tr, va = read_list(self.data / "train-wuhan.txt"), read_list(self.data / "val-wuhan.txt")
        values = {}
        for t in self.args.targets:
            y_tr, y_va = load_targets(self.data, t, tr), load_targets(self.data, t, va)
            m = score(y_va, np.repeat(y_tr.mean(0, keepdims=True), len(y_va), 0))
            values.update({f"{t}/mean/{k}": v for k, v in m.items()})
        self.record("mean", 0, values)

    def supervised(self, seed: int) -> None:
        """One end-to-end model per target for this seed (cached in OUT/supervised/)."""
        a = self.args
        config = {
            "data": self.where,
            **{
                k: getattr(a, k)
                for k in (
                    "resnet",
                    "img_size",
                    "batch_size",
                    "bound_epochs",
                    "bound_lr",
                    "schedule",
                    "cos",
                    "precision",
                )
            },
        }
        key = hashlib.sha1(json.dumps(config, sort_keys=True).encode()).hexdigest()[:10]
        tr, va = self.rows_of("train-wuhan.txt"), self.rows_of("val-wuhan.txt")
        values: dict[str, float] = {}
        for t in a.targets:
            cache = self.out / "supervised" / f"{t}_s{seed}_{key}.json"
            if cache.is_file():
                res = json.loads(cache.read_text())
            else:
                y_tr = load_targets(self.data, t, [self.names[i] for i in tr])
                y_va = load_targets(self.data, t, [self.names[i] for i in va])
                print(f"  supervised {t} seed {seed}: {a.resnet}, {a.bound_epochs} epochs", flush=True)
                res = train_supervised(
                    self.images[tr],
                    torch.from_numpy(y_tr).float(),
                    self.images[va],
                    y_va,
                    task_for(y_tr, t),
                    resnet=a.resnet,
                    img_size=a.img_size,
                    batch_size=a.batch_size,
                    epochs=a.bound_epochs,
                    lr=a.bound_lr,
                    seed=seed,
                    device=self.device,
                    schedule=a.schedule,
                    cos=a.cos,
                    precision=a.precision,
                    channels_last=bool(a.channels_last)
                    if a.channels_last is not None
                    else default_channels_last(self.device),
                    log=False,
                )
                res.pop("predictions")
                atomic_write_text(json.dumps({"config": config, **res}) + "\n", cache)
            for k, v in res.items():
                if k in ("R2", "MAE", "RMSE", "KL", "L1", "cos"):
                    values[f"{t}/end_to_end/{k}"] = v
            self.extra["supervised_std_ratio"].setdefault(t, {})[str(seed)] = res.get("pred_std_over_true_std")
            self.extra["supervised_seconds"].setdefault(t, {})[str(seed)] = res.get("train_seconds")
        self.record("supervised", seed, values)

    def encoder_row(self, variant: str, seed: int, ckpt: Path) -> None:
        feats = backbone_embeddings(load_image_encoder(ckpt), self.images, self.device)
        self.probe(variant, seed, feats)

    def save(self) -> dict:
        a = self.args
        variants = [v for v in VARIANTS if v in a.variants]
        summary = summarise(self.results, a.targets, variants)
        blob = {
            "city_version": city_version_of(self.data),
            "data": self.where,
            "args": vars(a),
            "command": self.command(),
            "machine": machine(),
            "started": datetime.datetime.fromtimestamp(self.started, datetime.timezone.utc).isoformat(
                timespec="seconds"
            ),
            "seconds": round(time.time() - self.started, 1),
            "phase_seconds": {k: round(v, 1) for k, v in self.phases.items()},
            "results": self.results,
            "summary": summary,
            "summary_knn": summarise(self.results, a.targets, variants, "knn"),
            "paired": paired_tests(self.results, a.targets),
            "paired_knn": paired_tests(self.results, a.targets, "knn"),
            **self.extra,
        }
        atomic_write_text(json.dumps(blob, indent=1, default=float) + "\n", self.out / "results.json")
        return blob

    def command(self) -> str:
        argv = sys.argv[1:] if self.argv is None else self.argv
        return "python compare.py " + " ".join(shlex.quote(x) for x in argv)


def city_version_of(data: Path) -> int | None:
    """The synthetic city version recorded in a data folder written by synthetic/city.py (None otherwise)."""
    try:
        return int(json.loads((data / ".complete").read_text())["city_version"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def comparison_data(args: argparse.Namespace, out: Path, phases: dict) -> tuple[Path, Path, str]:
    """The data (the synthetic city, generated once, or --data_path), what pretraining reads, and a description."""
    t0 = time.perf_counter()
    if args.data_path is None:
        data = ensure_city(out / "city", args.n_tiles, args.tile_size, args.city_seed)
    else:
        data = Path(args.data_path)
        if not data.is_dir():
            raise UserError(f"data directory {data} does not exist; pass --data_path of a published layout")
    version = city_version_of(data)
    where = (
        f"synthetic city version {version} ({args.n_tiles} tiles of {args.tile_size} px, seed {args.city_seed})"
        if args.data_path is None
        else str(data) + (f" (synthetic city version {version})" if version else "")
    )
    phases["data"] = time.perf_counter() - t0
    pretrain_data = Path(args.pretrain_data) if args.pretrain_data else data
    if args.pack:
        t0 = time.perf_counter()
        pretrain_data = out / "packed"
        if not is_packed(pretrain_data):
            pack(data, pretrain_data, workers=args.workers, progress=False)
        phases["pack"] = time.perf_counter() - t0
    return data, pretrain_data, where


def run_comparison(args: argparse.Namespace, argv: list[str] | None, pretrain_main: PretrainMain) -> dict:
    """The whole comparison of ``args`` (parsed by compare.py; ``argv`` is recorded as its command): every row and
    seed, then OUT/results.json, results.md and compare.png. Returns the results blob."""
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    started, load_start, phases = time.time(), load_average(), {}
    data, pretrain_data, where = comparison_data(args, out, phases)
    print(
        f"comparison on {where}: {args.resnet}, crops {args.img_size}, batch {args.batch_size}, {args.epochs} "
        f"pretraining epochs, lr {args.lr:g}, bound {args.bound_epochs} epochs; seeds {args.seeds}; rows "
        f"{' '.join(v for v in VARIANTS if v in args.variants)}; jobs {args.jobs}; threads {torch.get_num_threads()}",
        flush=True,
    )
    cmp = Comparison(args, data, out, where, argv, started, phases)
    print(f"decoded {len(cmp.files)} tiles in {phases['decode']:.1f} s", flush=True)
    if "mean" in args.variants:
        cmp.mean_predictor()

    # Pretraining runs: with 2 or more --jobs all are queued at once and the bound trains here meanwhile;
    # otherwise each runs when its row is due (seed by seed, so results.json fills as the runs finish).
    todo = [
        (v, s)
        for s in args.seeds
        for v in PRETRAINED
        if v in args.variants or (v == "mmgr" and "poi_encoder" in args.variants)
    ]
    pool = ThreadPoolExecutor(max_workers=max(1, args.jobs))
    futures = (
        {vs: pool.submit(pretrain, args, pretrain_data, out, *vs, pretrain_main) for vs in todo}
        if args.jobs >= 2
        else {}
    )

    def checkpoint(variant: str, seed: int) -> Path:
        if (variant, seed) in futures:
            return futures[(variant, seed)].result()
        return pretrain(args, pretrain_data, out, variant, seed, pretrain_main)

    try:
        # The bound first: had it failed the city check, the configuration (not the city) would need work,
        # which is worth knowing before the pretraining hour.
        t0 = time.perf_counter()
        if "supervised" in args.variants:
            for seed in args.seeds:
                cmp.supervised(seed)
            cmp.save()
        phases["supervised"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        counts = None
        for seed in args.seeds:
            for variant in [v for v in VARIANTS if v in args.variants and v not in ("mean", "supervised")]:
                if variant == "poi_counts":  # no learning: one row, like the mean predictor
                    if counts is None:
                        counts = category_counts(data, cmp.files)
                        cmp.probe(variant, 0, counts)
                elif variant == "random":
                    cmp.encoder_row(variant, seed, random_checkpoint(args, out, seed))
                elif variant == "poi_encoder":
                    ckpt = checkpoint("mmgr", seed)
                    poi = ckpt.with_name(ckpt.name.replace("_img_", "_poi_"))
                    cmp.probe(variant, seed, poi_embeddings(poi, data, "img", cmp.files, cmp.device, progress=False))
                else:
                    cmp.encoder_row(variant, seed, checkpoint(variant, seed))
                cmp.save()
        phases["pretraining and probes"] = time.perf_counter() - t0
    finally:
        pool.shutdown(wait=True, cancel_futures=True)

    blob = cmp.save()
    text = report(blob, load_start, load_average())
    atomic_write_text(text, out / "results.md")
    variants = [v for v in VARIANTS if v in args.variants]
    plot(
        blob["summary"],
        args.targets,
        variants,
        out / "compare.png",
        f"{where}; {args.resnet}, {args.epochs} epochs; ridge probe; n = {len(args.seeds)} seeds",
    )
    print("\n" + text, flush=True)
    print(
        f"wrote {out / 'results.md'}, {out / 'results.json'}, {out / 'compare.png'} ({blob['seconds'] / 60:.1f} min)",
        flush=True,
    )
    return blob
