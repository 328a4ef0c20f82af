"""The comparison's run: the data, every (row, seed), the λ rows and the few-label rows, saved after every row.

Pretraining runs ``mmgr.py``: in its own process per run (``--jobs N`` at once) or, with ``--jobs 0``, in
this process through the ``pretrain_main`` the script passes in (``mmgr.main``; the engine does not import
the scripts above it). Finished runs are reused when, and only when, their configuration is the same
(engine/compare/runs.py), so an interrupted comparison continues where it stopped.
"""

from __future__ import annotations

import argparse
import datetime
import json
import shlex
import sys
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

from data.downstream import read_list, select_fraction
from data.layout import DownstreamLayout, check_target
from data.pack import is_packed, pack
from data.pretrain import list_images
from engine.compare.figures import plot, plot_label_fractions, plot_lambdas, plot_transfer
from engine.compare.longform import write_long_form
from engine.compare.report import load_average, machine, report
from engine.compare.rows import (
    FEW_LABEL_ROWS,
    TRANSFER_FEW_ROWS,
    TRANSFER_ROWS,
    comparison_rows,
    pretrained_needed,
    runs_at,
)
from engine.compare.runs import (
    PretrainMain,
    check_labelled_list,
    city_version_of,
    fingerprint,
    pretrain,
    pretraining_source,
    random_checkpoint,
    train_cached,
)
from engine.compare.summary import few_label_summary, flatten, lambda_paired, paired_tests, summarise
from engine.compare.transfer import Transfer, test_city
from engine.embeddings import poi_embeddings
from engine.probes import load_targets, probe_target, score
from engine.supervised import backbone_embeddings, load_tiles
from models.loading import load_image_encoder
from synthetic.city import ensure_city
from utils.errors import UserError
from utils.fileio import atomic_write_text, load_file

__all__ = ["Comparison", "run_comparison", "check_inputs", "category_counts"]


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


def check_inputs(args: argparse.Namespace, layout: DownstreamLayout) -> None:
    """Everything a user can get wrong in the data, refused in one sentence before any training: the lists,
    every target folder and file of the listed tiles, a batch larger than the training list, a label fraction
    that leaves fewer than 2 labelled tiles."""
    data = layout.root
    train, val = read_list(data / layout.train_list), read_list(data / layout.val_list)
    for t in args.targets:
        check_target(data, t, flag="--targets")  # names the targets the folder has, or why it has none
        load_targets(data, t, train + val)
    label_variants = few_label_variants(args)
    trained = "supervised" in args.variants or any(FEW_LABEL_ROWS[v][0] != "probe" for v in label_variants)
    batch = args.batch_size if trained else None
    check_labelled_list(train, data / layout.train_list, batch, args.label_fractions, "--label_fractions")


def few_label_variants(args: argparse.Namespace) -> list[str]:
    """The few-label rows that run at some requested fraction (none without ``--label_fractions``)."""
    fractions = args.label_fractions
    return [v for v in args.label_variants if any(runs_at(v, f, args.image_only_up_to) for f in fractions)]


class Comparison:
    """State of one comparison: data, decoded tiles, runs, results so far (written after every row)."""

    def __init__(
        self,
        args: argparse.Namespace,
        layout: DownstreamLayout,
        pretrain_data: Path,
        out: Path,
        where: str,
        argv: list[str] | None,
        started: float,
        phases: dict[str, float],
        pretrain_main: PretrainMain,
    ):
        data = layout.root
        self.args, self.layout, self.data, self.pretrain_data, self.out = args, layout, data, pretrain_data, out
        self.where, self.argv = where, argv
        self.started, self.phases, self.pretrain_main = started, phases, pretrain_main
        self.source = fingerprint(pretraining_source(args, data))
        self.device = torch.device(args.device)
        self.files = list_images(data / layout.img_dir)
        self.names = [p.name for p in self.files]
        t0 = time.perf_counter()
        self.images = load_tiles(self.files, args.workers)
        phases["decode"] = time.perf_counter() - t0
        self.index = {n: i for i, n in enumerate(self.names)}
        lists = [data / layout.train_list, data / layout.val_list]
        self.train_names, self.val_names = read_list(lists[0]), read_list(lists[1])
        self.data_keys = {t: fingerprint([data / layout.img_dir, *lists, data / t]) for t in args.targets}
        self.results: dict[str, dict[str, dict[str, float]]] = {}
        # few-label rows: {variant: {fraction: {seed: values}}}
        self.few: dict[str, dict[str, dict[str, dict[str, float]]]] = {}
        self.features: dict[tuple[str, int], np.ndarray] = {}
        self.futures: dict[tuple[str, int], Future] = {}
        self.extra: dict = {"supervised_std_ratio": {}, "supervised_seconds": {}}
        self.tag = ""  # printed before each row's line ("test city: " for the transfer study's)
        self.transfer_blob: Callable[[], dict] | None = None  # the transfer study's results, when one runs

    # --- runs -------------------------------------------------------------------------------------------------

    def checkpoint(self, variant: str, seed: int) -> Path:
        """The image checkpoint of a pretraining run: queued (``--jobs`` 2 or more), or run now."""
        if (variant, seed) in self.futures:
            return self.futures[(variant, seed)].result()
        return pretrain(self.args, self.pretrain_data, self.out, self.source, variant, seed, self.pretrain_main)

    def queue(self, pool: ThreadPoolExecutor, runs: list[tuple[str, int]]) -> None:
        for variant, seed in runs:
            self.futures[(variant, seed)] = pool.submit(
                pretrain, self.args, self.pretrain_data, self.out, self.source, variant, seed, self.pretrain_main
            )

    def rows_of(self, names: list[str]) -> list[int]:
        missing = [n for n in names if n not in self.index]
        if missing:
            raise UserError(
                f"{len(missing)} listed tiles are missing from {self.data / self.layout.img_dir} (first: {missing[0]}); "
                "fix the lists"
            )
        return [self.index[n] for n in names]

    def encoder_features(self, variant: str, seed: int) -> np.ndarray:
        """``[N, d]`` eval-mode backbone features of every tile for a pretrained (or ``random``) encoder."""
        if (variant, seed) not in self.features:
            ckpt = (
                random_checkpoint(self.args, self.out, seed) if variant == "random" else self.checkpoint(variant, seed)
            )
            self.features[(variant, seed)] = backbone_embeddings(load_image_encoder(ckpt), self.images, self.device)
        return self.features[(variant, seed)]

    def end_to_end(self, target: str, fraction: float, seed: int, start: str | None, epochs: int) -> tuple[dict, bool]:
        """An end-to-end model on the ``fraction`` subset of the training labels drawn with ``seed`` (the same
        subset for every row), from scratch (``start`` None) or fine-tuned from ``start``'s run of ``seed``."""
        labelled = select_fraction(self.train_names, fraction, seed)
        tr, va = self.rows_of(labelled), self.rows_of(self.val_names)
        y_tr, y_va = load_targets(self.data, target, labelled), load_targets(self.data, target, self.val_names)
        begin = None
        if start is not None:
            ckpt = self.checkpoint(start, seed)
            begin = (start, ckpt, ckpt.parent.name)
        return train_cached(
            self.args,
            self.out,
            self.data_keys[target],
            target,
            fraction,
            seed,
            begin,
            epochs,
            (self.images[tr], y_tr),
            (self.images[va], y_va),
            self.device,
        )

    # --- rows -------------------------------------------------------------------------------------------------

    def record(self, variant: str, seed: int, values: dict[str, float], fraction: float | None = None) -> None:
        if fraction is None:
            self.results.setdefault(variant, {})[str(seed)] = values
        else:
            self.few.setdefault(variant, {}).setdefault(f"{fraction:g}", {})[str(seed)] = values
        shown = {
            k: round(v, 3) for k, v in values.items() if k.split("/")[2] in ("R2", "KL") and k.split("/")[1] != "knn"
        }
        at = "" if fraction is None else f" at {100 * fraction:g} % of the labels"
        print(f"  {self.tag}{variant}{at} seed {seed}: {shown}", flush=True)

    def probe(
        self,
        variant: str,
        seed: int,
        feats: np.ndarray,
        fraction: float | None = None,
        targets: list[str] | None = None,
    ) -> None:
        """Ridge and kNN probes of each target fit on the training list (or its ``fraction`` drawn with ``seed``)."""
        probe = {
            t: probe_target(
                feats,
                self.names,
                self.data,
                t,
                self.layout.train_list,
                self.layout.val_list,
                k=self.args.knn,
                log_target=bool(self.args.log_target),
                label_fraction=1.0 if fraction is None else fraction,
                seed=seed,
            )
            for t in (targets or self.args.targets)
        }
        self.record(variant, seed, flatten(probe), fraction)

    def mean_predictor(self) -> None:
        values = {}
        for t in self.args.targets:
            y_tr, y_va = load_targets(self.data, t, self.train_names), load_targets(self.data, t, self.val_names)
            m = score(y_va, np.repeat(y_tr.mean(0, keepdims=True), len(y_va), 0))
            values.update({f"{t}/mean/{k}": v for k, v in m.items()})
        self.record("mean", 0, values)

    def supervised(self, seed: int) -> None:
        """The upper bound: one end-to-end model per target for this seed, from scratch on all the labels."""
        a = self.args
        values: dict[str, float] = {}
        for t in a.targets:
            res, trained = self.end_to_end(t, 1.0, seed, None, a.bound_epochs)
            if trained:
                print(f"  supervised {t} seed {seed}: {a.resnet}, {a.bound_epochs} epochs", flush=True)
            values.update(_end_to_end_values(t, res))
            self.extra["supervised_std_ratio"].setdefault(t, {})[str(seed)] = res.get("pred_std_over_true_std")
            self.extra["supervised_seconds"].setdefault(t, {})[str(seed)] = res.get("train_seconds")
        self.record("supervised", seed, values)

    def comparison_row(self, variant: str, seed: int) -> None:
        """One probed row of the comparison (a pretrained or random encoder, or a POI reference) for one seed."""
        if variant == "poi_counts":  # no learning: one row, like the mean predictor
            if variant not in self.results:
                self.probe(variant, 0, category_counts(self.data, self.files))
        elif variant == "poi_encoder":
            ckpt = self.checkpoint("mmgr", seed)
            poi = ckpt.with_name(ckpt.name.replace("_img_", "_poi_"))
            feats = poi_embeddings(poi, self.data, self.layout.img_dir, self.files, self.device, progress=False)
            self.probe(variant, seed, feats)
        else:
            self.probe(variant, seed, self.encoder_features(variant, seed))

    def few_label_row(self, variant: str, fraction: float, seed: int) -> None:
        """One few-label row at one fraction and seed, on each of ``--label_targets``."""
        a = self.args
        how, start = FEW_LABEL_ROWS[variant]
        if how == "probe":
            self.probe(variant, seed, self.encoder_features(start, seed), fraction, a.label_targets)
            return
        values: dict[str, float] = {}
        for t in a.label_targets:
            res, trained = self.end_to_end(t, fraction, seed, start, a.finetune_epochs)
            if trained:
                print(
                    f"  trained {variant} {t} at {100 * fraction:g} % of the labels, seed {seed}, in "
                    f"{res['train_seconds']} s",
                    flush=True,
                )
            values.update(_end_to_end_values(t, res))
        self.record(variant, seed, values, fraction)

    # --- output -----------------------------------------------------------------------------------------------

    def save(self) -> dict:
        a = self.args
        rows = comparison_rows(a.variants, a.lambdas)
        summary = summarise(self.results, a.targets, rows)
        blob = {
            "city_version": city_version_of(self.data),
            "data": self.where,
            "layout": {k: getattr(self.layout, k) for k in ("img_dir", "train_list", "val_list")},
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
            "summary_knn": summarise(self.results, a.targets, rows, "knn"),
            "paired": paired_tests(self.results, a.targets),
            "paired_knn": paired_tests(self.results, a.targets, "knn"),
            "lambda_paired": lambda_paired(self.results, a.targets, a.lambdas),
            "few_labels": self.few,
            "labelled_tiles": {f"{f:g}": len(select_fraction(self.train_names, f, 0)) for f in a.label_fractions},
            **few_label_summary(self.few, a.label_targets, a.label_variants, a.label_fractions),
            **self.extra,
        }
        if self.transfer_blob is not None:
            blob["transfer"] = self.transfer_blob()
        atomic_write_text(json.dumps(blob, indent=1, default=float) + "\n", self.out / "results.json")
        write_long_form(blob, self.out / "results.csv")
        return blob

    def command(self) -> str:
        argv = sys.argv[1:] if self.argv is None else self.argv
        return "python compare.py " + " ".join(shlex.quote(x) for x in argv)


def _end_to_end_values(target: str, res: dict) -> dict[str, float]:
    return {f"{target}/end_to_end/{k}": v for k, v in res.items() if k in ("R2", "MAE", "RMSE", "KL", "L1", "cos")}


def comparison_data(args: argparse.Namespace, out: Path, phases: dict) -> tuple[DownstreamLayout, Path, str]:
    """The data (the synthetic city, generated once, or --data_path; its inputs checked) with its downstream
    names (the published ``img/``, ``train-wuhan.txt`` and ``val-wuhan.txt``, or what prepare_pois.py writes:
    ``sub_shanghai_img/``, ``train.txt``, ``val.txt``), what pretraining reads (a pack of the data with
    ``--pack 1``), and a description."""
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
    layout = DownstreamLayout.find(data, args.targets[0])
    check_inputs(args, layout)
    pretrain_data = Path(args.pretrain_data) if args.pretrain_data else data
    if args.pack:
        # One pack per version of the data: a regenerated city or changed folder is packed anew.
        t0 = time.perf_counter()
        pretrain_data = out / f"packed_{fingerprint(pretraining_source(args, data))}"
        if not is_packed(pretrain_data):
            pack(data, pretrain_data, workers=args.workers, progress=False)
        phases["pack"] = time.perf_counter() - t0
    return layout, pretrain_data, where


def run_comparison(args: argparse.Namespace, argv: list[str] | None, pretrain_main: PretrainMain) -> dict:
    """The whole comparison of ``args`` (parsed by compare.py; ``argv`` is recorded as its command): every row and
    seed, the λ rows and the few-label rows, then OUT/results.json, results.csv, results.md and the figures.
    Returns the results blob."""
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    started, load_start, phases = time.time(), load_average(), {}
    layout, pretrain_data, where = comparison_data(args, out, phases)
    test = test_city(args, out, layout.root)
    rows = comparison_rows(args.variants, args.lambdas)
    print(
        f"comparison on {where}: {args.resnet}, crops {args.img_size}, batch {args.batch_size}, {args.epochs} "
        f"pretraining epochs, lr {args.lr:g}, bound {args.bound_epochs} epochs; seeds {args.seeds}; rows "
        f"{' '.join(rows)}"
        + (
            f"; at label fractions {' '.join(f'{f:g}' for f in args.label_fractions)}: "
            f"{' '.join(few_label_variants(args))} on {' '.join(args.label_targets)}, {args.finetune_epochs} epochs"
            if args.label_fractions
            else ""
        )
        + (
            f"; transfer to {test[1]}: rows {' '.join(TRANSFER_ROWS)}, at fractions of its labels "
            f"{' '.join(f'{f:g}' for f in args.test_fractions)}: {' '.join(TRANSFER_FEW_ROWS)} on "
            f"{' '.join(args.label_targets)}"
            if test
            else ""
        )
        + f"; jobs {args.jobs}; threads {torch.get_num_threads()}",
        flush=True,
    )
    cmp = Comparison(args, layout, pretrain_data, out, where, argv, started, phases, pretrain_main)
    print(f"decoded {len(cmp.files)} tiles in {phases['decode']:.1f} s", flush=True)
    transfer = Transfer(cmp, *test) if test else None
    if transfer is not None:
        cmp.transfer_blob = transfer.blob
        print(
            f"decoded {len(transfer.b.files)} tiles of the test city in {phases['decode test city']:.1f} s", flush=True
        )
    if "mean" in args.variants:
        cmp.mean_predictor()

    label_variants = few_label_variants(args)
    needed = pretrained_needed(args.variants, args.lambdas, label_variants)
    if transfer is not None and "mmgr" not in needed:
        needed = ["mmgr", *needed]
    # With 2 or more --jobs every pretraining run is queued at once, seed by seed, and the bound and the
    # from-scratch rows train here meanwhile; otherwise each runs when its row is due.
    pool = ThreadPoolExecutor(max_workers=max(1, args.jobs))
    if args.jobs >= 2:
        cmp.queue(pool, [(v, s) for s in args.seeds for v in needed])
        if transfer is not None:
            transfer.queue(pool)
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
        if "scratch" in label_variants:  # needs no pretraining; with all labels it is the bound's run
            for seed in args.seeds:
                for f in args.label_fractions:
                    cmp.few_label_row("scratch", f, seed)
                cmp.save()
        phases["few labels: from scratch"] = time.perf_counter() - t0
        if transfer is not None:  # the test city's rows that need no pretraining, likewise first
            t0 = time.perf_counter()
            transfer.mean_row()
            for seed in args.seeds:
                transfer.run_untrained(seed)
                cmp.save()
            phases["test city: bound, from scratch"] = time.perf_counter() - t0
        # Seed by seed: the rows whose encoders the few-label rows start from (queued first), the few-label
        # rows, then the other pretrained rows, so that fine-tuning overlaps the seed's last pretraining runs.
        t0 = time.perf_counter()
        starts = {FEW_LABEL_ROWS[v][1] for v in label_variants} - {None}
        probed = [v for v in rows if v not in ("mean", "supervised")]
        late = [v for v in probed if v in needed and v not in starts]
        for seed in args.seeds:
            for variant in [v for v in probed if v not in late]:
                cmp.comparison_row(variant, seed)
            cmp.save()
            for f in args.label_fractions:
                for variant in [v for v in label_variants if v != "scratch" and runs_at(v, f, args.image_only_up_to)]:
                    cmp.few_label_row(variant, f, seed)
            for variant in late:
                cmp.comparison_row(variant, seed)
            cmp.save()
            if transfer is not None:
                transfer.run(seed)
                cmp.save()
        phases["pretraining, probes, fine-tuning"] = time.perf_counter() - t0
    finally:
        pool.shutdown(wait=True, cancel_futures=True)

    blob = cmp.save()
    text = report(blob, load_start, load_average())
    atomic_write_text(text, out / "results.md")
    title = f"{where}; {args.resnet}, {args.epochs} epochs; n = {len(args.seeds)} seeds"
    written = [out / "results.md", out / "results.json", out / "results.csv", out / "compare.png"]
    plot(blob["summary"], args.targets, rows, out / "compare.png", f"{title}; ridge probe")
    if args.lambdas:
        plot_lambdas(blob, out / "lambda.png", f"{title}; ridge probe")
        written.append(out / "lambda.png")
    if args.label_fractions:
        plot_label_fractions(blob, out / "label_fractions.png", title)
        written.append(out / "label_fractions.png")
    if transfer is not None:
        written += plot_transfer(
            blob,
            out,
            f"on the test city ({test[0].root.name}); {args.resnet}, {args.epochs} epochs; n = {len(args.seeds)} seeds",
        )
    print("\n" + text, flush=True)
    print(f"wrote {', '.join(map(str, written))} ({blob['seconds'] / 60:.1f} min)", flush=True)
    return blob
