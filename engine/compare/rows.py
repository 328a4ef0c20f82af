"""The comparison's rows and configurations (what each row is: engine/compare/__init__.py)."""

from __future__ import annotations

# variant -> extra mmgr.py flags
PRETRAINED = {
    "simclr": ["--img_lmd", "1"],
    "img_poi": ["--img_lmd", "0"],
    "mmgr": ["--img_lmd", "0.5"],
    "mmgr_gcn": ["--img_lmd", "0.5", "--poi_encoder", "gcn"],
}
VARIANTS = ("mean", "random", "simclr", "img_poi", "mmgr", "mmgr_gcn", "poi_encoder", "poi_counts", "supervised")
DEFAULT_VARIANTS = tuple(v for v in VARIANTS if v != "mmgr_gcn")
LABELS = {
    "mean": "mean predictor (lower bound)",
    "random": "random init (lower bound)",
    "simclr": "image only (λ=1)",
    "img_poi": "image–POI only (λ=0)",
    "mmgr": "MMGR (λ=0.5)",
    "mmgr_gcn": "MMGR, GCN POI encoder",
    "poi_encoder": "POI only: MMGR POI encoder (ref.)",
    "poi_counts": "POI only: category counts (ref.)",
    "supervised": "supervised end to end (upper bound)",
}
# MMGR against each of these, seed by seed (when both rows ran).
PAIRS = (("mmgr", "simclr"), ("mmgr", "img_poi"), ("mmgr", "random"))
# Rows not read through a probe: the same values in the ridge and the kNN table.
PROTOCOL = {"mean": "mean", "supervised": "end_to_end"}
LOWER_IS_BETTER = {"KL", "L1", "MAE", "RMSE"}

# The CPU configuration (ours; docs/downstream.md, "The comparison"): city version 2 at the size whose
# supervised bound was measured (benchmarks/RESULTS.md), pretraining epochs chosen so that the whole
# default comparison takes about 60-90 min on 2 cores (benchmarks/RESULTS_compare.md).
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
}
