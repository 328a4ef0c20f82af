"""OUT/results.csv: every number of a comparison in long form, one row per (row, seed, target, probe, metric).

Columns: ``study`` (``comparison``: the rows of the main table, the λ rows among them; ``few_labels``: the
rows at a label fraction; ``transfer`` and ``transfer_few_labels``: the same on the test city of the transfer
study, engine/compare/transfer.py), ``variant`` and ``label`` (engine/compare/rows.py), ``lambda`` (λ of the
pretraining behind the row's image encoder; empty for rows without one), ``label_fraction`` (1 in the
comparison), ``seed``, ``target``, ``method`` (``ridge``/``knn`` probes, ``end_to_end`` training, ``mean``
predictor), ``metric``, ``value``. For example, with pandas::

    df = pd.read_csv("OUT/results.csv")
    df.query("study == 'few_labels' and target == 'pop1km' and metric == 'R2' and method != 'knn'")
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

from engine.compare.rows import label, lambda_of
from utils.fileio import atomic_write_text

__all__ = ["COLUMNS", "long_rows", "write_long_form"]

COLUMNS = ("study", "variant", "label", "lambda", "label_fraction", "seed", "target", "method", "metric", "value")


def _rows(study: str, variant: str, fraction: float, seeds: dict) -> list[dict]:
    lmd = lambda_of(variant)
    out = []
    for seed in sorted(seeds, key=int):
        for key, value in seeds[seed].items():
            target, method, metric = key.split("/")
            out.append(
                {
                    "study": study,
                    "variant": variant,
                    "label": label(variant),
                    "lambda": "" if lmd is None else f"{lmd:g}",
                    "label_fraction": f"{fraction:g}",
                    "seed": int(seed),
                    "target": target,
                    "method": method,
                    "metric": metric,
                    "value": repr(float(value)),
                }
            )
    return out


def long_rows(blob: dict) -> list[dict]:
    """The rows of results.csv from a results blob (its ``results`` and ``few_labels``)."""
    rows = [r for v, seeds in blob["results"].items() for r in _rows("comparison", v, 1.0, seeds)]
    for v, by_fraction in blob.get("few_labels", {}).items():
        for f, seeds in sorted(by_fraction.items(), key=lambda kv: float(kv[0])):
            rows += _rows("few_labels", v, float(f), seeds)
    transfer = blob.get("transfer") or {}
    for v, seeds in transfer.get("results", {}).items():
        rows += _rows("transfer", v, 1.0, seeds)
    for v, by_fraction in transfer.get("few_labels", {}).items():
        for f, seeds in sorted(by_fraction.items(), key=lambda kv: float(kv[0])):
            rows += _rows("transfer_few_labels", v, float(f), seeds)
    return rows


def write_long_form(blob: dict, path: Path) -> None:
    """Write results.csv atomically (a reader never sees half a table)."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(long_rows(blob))
    atomic_write_text(buf.getvalue(), path)
