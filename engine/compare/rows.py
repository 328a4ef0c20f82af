"""The comparison's rows and configurations (what each row is: engine/compare/__init__.py).

Three kinds of rows, each named by its ``variant``:

* the comparison's rows (:data:`VARIANTS`): bounds, pretrained encoders, POI references, each probed (or
  trained) with all labels;
* the λ ablation (``--lambdas``): one pretrained encoder per λ (``--img_lmd``), probed as the others; λ 0,
  0.5 and 1 are the runs of ``img_poi``, ``mmgr`` and ``simclr`` (:func:`lambda_variant`);
* the few-label rows (``--label_fractions``, :data:`FEW_LABEL_ROWS`): at each fraction of the training
  labels, MMGR frozen + ridge, MMGR and image-only fine-tuned, and the same network from scratch.

A new pretraining variant is one entry of :data:`PRETRAINED` (its mmgr.py flags), :data:`LABELS` and
:data:`VARIANTS`.

Tiles without POIs: every pretraining with an image–POI term (λ < 1) passes ``--empty_poi_tiles`` explicitly, so
its run is keyed on the behaviour; the ``*_include`` rows are ``img_poi`` and ``mmgr`` with the published
behaviour (``include``), paired seed by seed with the default (``exclude``) rows.
"""

from __future__ import annotations

# variant -> extra mmgr.py flags
PRETRAINED = {
    "simclr": ["--img_lmd", "1"],
    "img_poi": ["--img_lmd", "0"],
    "mmgr": ["--img_lmd", "0.5"],
    "mmgr_gcn": ["--img_lmd", "0.5", "--poi_encoder", "gcn"],
    "img_poi_include": ["--img_lmd", "0", "--empty_poi_tiles", "include"],
    "mmgr_include": ["--img_lmd", "0.5", "--empty_poi_tiles", "include"],
    "mmgr_ab": ["--img_lmd", "0.5"],  # the transfer study: pretrained on the data and the test city together
}
VARIANTS = (
    "mean",
    "random",
    "simclr",
    "img_poi",
    "mmgr",
    "mmgr_gcn",
    "img_poi_include",
    "mmgr_include",
    "poi_encoder",
    "poi_counts",
    "supervised",
)
ON_REQUEST = ("mmgr_gcn", "img_poi_include", "mmgr_include")
DEFAULT_VARIANTS = tuple(v for v in VARIANTS if v not in ON_REQUEST)
LABELS = {
    "mean": "mean predictor (lower bound)",
    "random": "random init (lower bound)",
    "simclr": "image only (λ=1)",
    "img_poi": "image–POI only (λ=0)",
    "mmgr": "MMGR (λ=0.5)",
    "mmgr_gcn": "MMGR, GCN POI encoder",
    "img_poi_include": "image–POI only (λ=0), empty-POI tiles included (published)",
    "mmgr_include": "MMGR (λ=0.5), empty-POI tiles included (published)",
    "poi_encoder": "POI only: MMGR POI encoder (ref.)",
    "poi_counts": "POI only: category counts (ref.)",
    "supervised": "supervised end to end (upper bound)",
    "mmgr_frozen": "MMGR frozen + ridge (λ=0.5)",
    "mmgr_finetuned": "MMGR fine-tuned (λ=0.5)",
    "simclr_finetuned": "image only fine-tuned (λ=1)",
    "scratch": "from scratch (random init, end to end)",
    "mmgr_ab": "MMGR pretrained on both cities (λ=0.5)",
}
# MMGR against each of these, seed by seed (when both rows ran).
PAIRS = (
    ("mmgr", "simclr"),
    ("mmgr", "img_poi"),
    ("mmgr", "random"),
    ("mmgr", "mmgr_include"),
    ("img_poi", "img_poi_include"),
)

# Few-label rows: variant -> (how it learns from the labelled subset, the pretraining it starts from).
# "probe": ridge (and kNN) on the frozen backbone's features; "finetune": the whole network end to end from
# the pretrained weights (backbone at --finetune_backbone_lr, default --bound_lr; head at --bound_lr); "scratch":
# end to end from random initialisation (every parameter at --bound_lr), i.e. the supervised bound on fewer labels.
FEW_LABEL_ROWS = {
    "mmgr_frozen": ("probe", "mmgr"),
    "mmgr_finetuned": ("finetune", "mmgr"),
    "simclr_finetuned": ("finetune", "simclr"),
    "scratch": ("scratch", None),
}


def runs_at(variant: str, fraction: float, image_only_up_to: float) -> bool:
    """Whether a few-label row runs at ``fraction``: the image-only fine-tuned row only up to
    ``--image_only_up_to`` (the CPU configuration's hour allows no more), every other row always."""
    return variant != "simclr_finetuned" or fraction <= image_only_up_to


# At each fraction, seed by seed: does fine-tuning beat training from scratch, MMGR beat image-only
# pretraining when both are fine-tuned, fine-tuning beat the frozen probe, the frozen probe beat scratch?
FEW_LABEL_PAIRS = (
    ("mmgr_finetuned", "scratch"),
    ("mmgr_finetuned", "simclr_finetuned"),
    ("mmgr_finetuned", "mmgr_frozen"),
    ("mmgr_frozen", "scratch"),
)

# Rows not read through a probe: the same values in the ridge and the kNN table.
PROTOCOL = {
    "mean": "mean",
    "supervised": "end_to_end",
    "mmgr_finetuned": "end_to_end",
    "simclr_finetuned": "end_to_end",
    "scratch": "end_to_end",
}
LOWER_IS_BETTER = {"KL", "L1", "MAE", "RMSE"}

# λ of the pretraining each image encoder comes from (loss = (1 − λ) inter-modal + λ image–image).
_LAMBDA = {
    "simclr": 1.0,
    "img_poi": 0.0,
    "mmgr": 0.5,
    "mmgr_gcn": 0.5,
    "img_poi_include": 0.0,
    "mmgr_include": 0.5,
    "mmgr_ab": 0.5,
}
_BY_LAMBDA = {0.0: "img_poi", 0.5: "mmgr", 1.0: "simclr"}
LAMBDA_PREFIX = "lambda_"


def lambda_variant(lmd: float) -> str:
    """The row of λ: ``img_poi``/``mmgr``/``simclr`` for 0/0.5/1 (their runs serve both), else ``lambda_<λ>``."""
    return _BY_LAMBDA.get(float(lmd), f"{LAMBDA_PREFIX}{float(lmd):g}")


def lambda_of(variant: str) -> float | None:
    """λ of the pretraining behind a row's image encoder (None for rows without one: bounds, POI, scratch)."""
    if variant.startswith(LAMBDA_PREFIX):
        return float(variant[len(LAMBDA_PREFIX) :])
    if variant in FEW_LABEL_ROWS:
        start = FEW_LABEL_ROWS[variant][1]
        return _LAMBDA.get(start) if start else None
    return _LAMBDA.get(variant)


def pretraining_flags(variant: str) -> list[str]:
    """mmgr.py's extra flags of a pretrained variant (a λ row: ``--img_lmd λ``), with ``--empty_poi_tiles``
    (default ``exclude``) wherever there is an image–POI term (λ < 1): runs are keyed on their flags, so a run
    of one behaviour is never reused for the other. λ = 1 has no image–POI term: the flag would change
    nothing, and its runs stay keyed as before."""
    flags = ["--img_lmd", f"{lambda_of(variant):g}"] if variant.startswith(LAMBDA_PREFIX) else list(PRETRAINED[variant])
    if lambda_of(variant) < 1.0 and "--empty_poi_tiles" not in flags:
        flags += ["--empty_poi_tiles", "exclude"]
    return flags


def label(variant: str) -> str:
    """How a row is named in the tables."""
    if variant.startswith(LAMBDA_PREFIX):
        return f"MMGR (λ={lambda_of(variant):g})"
    return LABELS[variant]


# The CPU configuration (ours; docs/downstream.md, "The comparison"): city version 2 at the size whose
# supervised bound was measured (benchmarks/RESULTS.md), pretraining epochs chosen so that the whole
# default comparison takes about 30-40 min on 2 cores, and with both studies about an hour
# (benchmarks/RESULTS.md).
CPU = {
    "n_tiles": 400,
    "tile_size": 96,
    "resnet": "resnet18",
    "img_size": 64,
    "batch_size": 32,
    "epochs": 15,
    "schedule": [],
    "cos": True,
    "lr": 1e-3,
    "seeds": [0, 1, 2, 3, 4],
    "image_only_up_to": 0.25,
}
FULL = {
    "n_tiles": 1000,
    "tile_size": 256,
    "resnet": "resnet50",
    "img_size": 224,
    "batch_size": 128,
    "epochs": 120,
    "schedule": [90, 110],
    "cos": False,
    "lr": 1e-2,
    "seeds": [0, 1, 2, 3, 4],
    "image_only_up_to": 1.0,
}


def comparison_rows(variants: list[str], lambdas: list[float]) -> list[str]:
    """The rows of the comparison's tables, in order: the requested variants and the λ rows' own runs in
    :data:`VARIANTS` order, then the other λ rows by λ."""
    series = [lambda_variant(x) for x in sorted(lambdas)]
    return [v for v in VARIANTS if v in variants or v in series] + [v for v in series if v not in VARIANTS]


def pretrained_needed(variants: list[str], lambdas: list[float], label_variants: list[str]) -> list[str]:
    """Every pretraining variant the requested rows need, those the few-label rows fine-tune first (their
    rows can start while the others pretrain), then in :data:`VARIANTS` order, then the λ rows by λ."""
    wanted = {FEW_LABEL_ROWS[v][1] for v in label_variants} - {None}
    wanted |= {v for v in variants if v in PRETRAINED} | {lambda_variant(x) for x in lambdas}
    if "poi_encoder" in variants:
        wanted.add("mmgr")
    first = [FEW_LABEL_ROWS[v][1] for v in FEW_LABEL_ROWS if v in label_variants and FEW_LABEL_ROWS[v][1]]
    order = list(dict.fromkeys(first + list(PRETRAINED) + [lambda_variant(x) for x in sorted(lambdas)]))
    return [v for v in order if v in wanted]


# The transfer study (``--test_data_path`` / ``--test_city``; engine/compare/transfer.py): rows scored on the
# test city's validation list. Probed rows are fit on the data's training list; ``supervised`` is the test
# city's own bound (end to end on its training list); the few-label rows learn from a fraction of the test
# city's training labels, starting from the MMGR encoder pretrained on the data alone.
TRANSFER_ROWS = ("mean", "random", "mmgr", "mmgr_ab", "supervised")
TRANSFER_FEW_ROWS = ("mmgr_frozen", "mmgr_finetuned", "scratch")
TRANSFER_PAIRS = (("mmgr", "random"), ("mmgr_ab", "mmgr"), ("mmgr_ab", "random"), ("supervised", "mmgr"))
TRANSFER_FEW_PAIRS = (("mmgr_finetuned", "scratch"), ("mmgr_frozen", "scratch"), ("mmgr_finetuned", "mmgr_frozen"))
