"""The transfer study: train on one city, evaluate on another (``compare.py --test_data_path B`` or
``--test_city b``, the synthetic city of style b; docs/downstream.md, "Transfer to another city").

The comparison's data is city A: its encoders, its training labels. Every row below is scored on the
validation list of the test city B, so that B's own supervised bound is on the same tiles:

  mean          the mean of A's training targets for every tile (no image)
  random        a randomly initialised backbone; ridge (and kNN) fit on A's training list
  mmgr          MMGR pretrained on A alone (the comparison's run of the seed); probe fit on A's training list
  mmgr_ab       MMGR pretrained on A and B together (``mmgr.py --data_path A B``: B's images and POIs, never
                its labels); probe fit on A's training list
  supervised    B's own bound: the same network from random init, end to end on all of B's training labels

Few labels in B (``--test_fractions``, default 0.1 1): at each fraction of B's training list and seed, the
encoder pretrained on A alone, frozen with the ridge probe (``mmgr_frozen``) or fine-tuned end to end
(``mmgr_finetuned``), and the same network from scratch (``scratch``; with all labels it is B's bound). The
end-to-end rows train on ``--label_targets`` only (each target is a model per seed); the probed rows cover
every target.

Paired seed by seed (seed s of every row shares A's encoder run, the probe, B's subset): MMGR against
random init (does pretraining carry over?), pretrained on both against on A alone (does seeing B's
images help?), B's bound against MMGR (what transfer leaves on the table); at each fraction fine-tuned and
frozen against scratch.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from data.downstream import read_list, select_fraction
from data.layout import DownstreamLayout, check_target
from engine.compare.rows import (
    TRANSFER_FEW_PAIRS,
    TRANSFER_FEW_ROWS,
    TRANSFER_PAIRS,
    TRANSFER_ROWS,
)
from engine.compare.runs import (
    check_labelled_list,
    city_version_of,
    config_key,
    fingerprint,
    pretrain,
    pretraining_source,
)
from engine.compare.summary import few_label_summary, flatten, paired_tests, summarise
from engine.probes import fit_and_score, load_targets, score
from engine.supervised import backbone_embeddings
from models.loading import load_image_encoder
from synthetic.city import ensure_city
from utils.errors import UserError

if TYPE_CHECKING:  # engine/compare/run.py builds the study on its Comparison
    from engine.compare.run import Comparison

__all__ = ["test_city", "Transfer"]


def test_city(args: argparse.Namespace, out: Path, data: Path) -> tuple[DownstreamLayout, str] | None:
    """The test city's layout and a description (None without ``--test_data_path``/``--test_city``), its
    inputs checked before any training: a folder that is the data itself or lacks a target or a list, a
    fraction that leaves fewer than 2 labelled tiles, a training list smaller than one batch."""
    if args.test_data_path is None and args.test_city is None:
        return None
    if args.test_data_path is not None:
        root = Path(args.test_data_path)
        if not root.is_dir():
            raise UserError(f"--test_data_path {root} does not exist; pass a folder prepared like --data_path")
        where = str(root)
    else:
        if args.data_path is not None:
            raise UserError(
                "--test_city draws a synthetic city to test the synthetic city on; with --data_path pass "
                "--test_data_path instead"
            )
        root = ensure_city(
            out / f"city_{args.test_city}", args.n_tiles, args.tile_size, args.city_seed, style=args.test_city
        )
        where = f"synthetic city version {city_version_of(root)}, style {args.test_city} ({args.n_tiles} tiles of {args.tile_size} px, seed {args.city_seed})"
    if root.resolve() == data.resolve():
        raise UserError(f"--test_data_path {root} is the comparison's own data; pass another city's folder")
    for t in args.targets:
        check_target(root, t, flag="--targets")
    layout = DownstreamLayout.find(root, args.targets[0])
    train, val = read_list(root / layout.train_list), read_list(root / layout.val_list)
    for t in args.targets:
        load_targets(root, t, train + val)
    check_labelled_list(train, root / layout.train_list, args.batch_size, args.test_fractions, "--test_fractions")
    return layout, where


class Transfer:
    """The transfer study's state: the test city decoded as a :class:`Comparison` of its own (its rows print
    as ``test city: ...``), whose encoders are the comparison's runs on A, and the runs pretrained on both."""

    def __init__(self, cmp: Comparison, layout: DownstreamLayout, where: str):
        a = cmp.args
        self.cmp, self.where = cmp, where
        phases: dict[str, float] = {}
        self.b = type(cmp)(  # the test city as a Comparison of its own (no import cycle with run.py)
            a, layout, cmp.pretrain_data, cmp.out, where, cmp.argv, cmp.started, phases, cmp.pretrain_main
        )
        cmp.phases["decode test city"] = phases["decode"]
        self.b.tag = "test city: "
        self.b.source = cmp.source
        self.b.checkpoint = cmp.checkpoint  # type: ignore[method-assign]  # B's encoders are A's runs (queued or not)
        self.ab_data = [cmp.pretrain_data, layout.root]
        self.ab_source = config_key(
            {"roots": [cmp.source, fingerprint(pretraining_source(a, layout.root))], "pack": [bool(a.pack), False]}
        )
        self.ab_futures: dict[int, object] = {}

    def queue(self, pool) -> None:
        """Queue the runs pretrained on both cities (``--jobs`` 2 or more), after the comparison's own."""
        for s in self.cmp.args.seeds:
            self.ab_futures[s] = pool.submit(self._pretrain_ab, s)

    def _pretrain_ab(self, seed: int) -> Path:
        c = self.cmp
        return pretrain(c.args, self.ab_data, c.out, self.ab_source, "mmgr_ab", seed, c.pretrain_main)

    def ab_checkpoint(self, seed: int) -> Path:
        return self.ab_futures[seed].result() if seed in self.ab_futures else self._pretrain_ab(seed)  # type: ignore[attr-defined]

    # --- rows -------------------------------------------------------------------------------------------------

    def _a_train(self, target: str) -> tuple[list[int], np.ndarray]:
        c = self.cmp
        return c.rows_of(c.train_names), load_targets(c.data, target, c.train_names)

    def _b_val(self, target: str) -> tuple[list[int], np.ndarray]:
        b = self.b
        return b.rows_of(b.val_names), load_targets(b.data, target, b.val_names)

    def mean_row(self) -> None:
        values: dict[str, float] = {}
        for t in self.cmp.args.targets:
            (_, y_tr), (_, y_va) = self._a_train(t), self._b_val(t)
            m = score(y_va, np.repeat(y_tr.mean(0, keepdims=True), len(y_va), 0))
            values.update({f"{t}/mean/{k}": v for k, v in m.items()})
        self.b.record("mean", 0, values)

    def probed_row(self, variant: str, seed: int) -> None:
        """A frozen encoder's probe fit on A's training tiles, scored on B's validation tiles."""
        a = self.cmp.args
        if variant == "mmgr_ab":
            enc = load_image_encoder(self.ab_checkpoint(seed))
            feats_a = backbone_embeddings(enc, self.cmp.images, self.cmp.device)
            feats_b = backbone_embeddings(enc, self.b.images, self.b.device)
        else:
            feats_a, feats_b = self.cmp.encoder_features(variant, seed), self.b.encoder_features(variant, seed)
        probe = {}
        for t in a.targets:
            (tr, y_tr), (va, y_va) = self._a_train(t), self._b_val(t)
            probe[t] = fit_and_score(feats_a[tr], y_tr, feats_b[va], y_va, k=a.knn, log_target=bool(a.log_target))
        self.b.record(variant, seed, flatten(probe))

    def bound_row(self, seed: int) -> None:
        """B's own bound on ``--label_targets``: from scratch on all of B's training labels."""
        a = self.cmp.args
        values: dict[str, float] = {}
        for t in a.label_targets:
            res, trained = self.b.end_to_end(t, 1.0, seed, None, a.finetune_epochs)
            if trained:
                print(f"  test city: supervised {t} seed {seed}: {a.resnet}, {a.finetune_epochs} epochs", flush=True)
            values.update({f"{t}/end_to_end/{k}": v for k, v in res.items() if k in _METRICS})
        self.b.record("supervised", seed, values)

    def run_untrained(self, seed: int) -> None:
        """The rows of one seed that need no pretraining: B's bound and from scratch at each fraction (run
        while the pretraining runs are queued)."""
        self.bound_row(seed)
        for f in self.cmp.args.test_fractions:
            self.b.few_label_row("scratch", f, seed)

    def run(self, seed: int) -> None:
        """The rows of one seed that start from a pretrained encoder: the few-label rows (A's run) at each
        fraction, then the probed rows (the run on both cities last: it is queued last)."""
        for f in self.cmp.args.test_fractions:
            for v in TRANSFER_FEW_ROWS:
                if v != "scratch":
                    self.b.few_label_row(v, f, seed)
        for v in ("random", "mmgr", "mmgr_ab"):
            self.probed_row(v, seed)

    # --- output -----------------------------------------------------------------------------------------------

    def blob(self) -> dict:
        a, b = self.cmp.args, self.b
        tiles = {f"{f:g}": len(select_fraction(b.train_names, f, 0)) for f in a.test_fractions}
        few = few_label_summary(
            b.few, a.label_targets, list(TRANSFER_FEW_ROWS), a.test_fractions, pairs=TRANSFER_FEW_PAIRS
        )
        return {
            "data": self.where,
            "layout": {k: getattr(b.layout, k) for k in ("img_dir", "train_list", "val_list")},
            "rows": list(TRANSFER_ROWS),
            "results": b.results,
            "summary": summarise(b.results, a.targets, list(TRANSFER_ROWS)),
            "summary_knn": summarise(b.results, a.targets, list(TRANSFER_ROWS), "knn"),
            "paired": paired_tests(b.results, a.targets, pairs=TRANSFER_PAIRS),
            "paired_knn": paired_tests(b.results, a.targets, "knn", pairs=TRANSFER_PAIRS),
            "few_labels": b.few,
            "labelled_tiles": tiles,
            **few,
            "seconds": round(time.time() - self.cmp.started, 1),
        }


_METRICS = ("R2", "MAE", "RMSE", "KL", "L1", "cos")
