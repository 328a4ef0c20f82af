"""The paper's comparison as an engine: bounds, pretraining variants, repeated seeds, paired tests.

``compare.py`` (the command) parses the flags and calls :func:`engine.compare.run.run_comparison`.

Rows (``--variants``; all but ``mmgr_gcn`` by default):
  mean        lower bound: the mean training target for every tile (no image; seed-free)
  random      lower bound: the same backbone with random weights (seeded), the same probe
  simclr      image-only contrastive pretraining, λ = 1 (SimCLR-style: only the image–image term)
  img_poi     image–POI contrastive only, λ = 0
  mmgr        MMGR, λ = 0.5 (published), released Set2Set POI encoder
  mmgr_gcn    MMGR, λ = 0.5, GCN POI encoder (the paper's description)
  poi_encoder reference, POI only: the POI-encoder embedding of the mmgr run
  poi_counts  reference, POI only: log(1 + count) of each POI category in the tile (no learning; seed-free)
  supervised  upper bound: the same backbone trained end to end on the training tiles' labels, one model
              per task and seed, same split, same crop size, same budget (below)

Protocol of the probed rows (random, pretrained, POI): each encoder embeds every tile once (backbone
features of the full tile, no augmentation), then a ridge probe (primary; penalty by leave-one-out) and a
kNN probe (secondary) are fit on the training list and scored on the validation list (engine/probes.py).
Primary metrics: R² for scalar targets (population, GDP), KL(true ‖ predicted) for distributions (urban
functions). The supervised bound is scored on the same validation tiles (full tile, last epoch, no
selection on the validation list), with the downstream tasks' targets, losses and metrics
(engine/tasks.py: z-scored scalar targets, ReLU(μ + σ·h) in original units; softmax + KL for functions).

Same budget: the supervised model trains ``--bound_epochs`` epochs (default: the pretraining's
``--epochs``) at the pretraining's batch size and crop size, with Adam and the same lr schedule shape
(cosine or steps) over its epochs, i.e. as many passes over its (labelled) tiles as each pretraining run
makes over its (unlabelled) tiles; its lr is ``--bound_lr``.

Statistics (engine/stats.py): every cell is the mean over the seeds ± the half-width of the 95 % Student-t
interval; MMGR against image-only, image–POI only and random init is compared seed by seed (seed ``s`` of
two rows shares data, split and probe): paired differences, paired t-test p-value and the exact Wilcoxon
signed-rank p-value as a check. Gap closed = (row − random init) / (supervised − random init) on the means
(0 = no better than random weights, 1 = as good as end-to-end supervision).

Pretraining runs ``mmgr.py`` itself: in its own process per run (``--jobs N`` at once, e.g. several on one
GPU) or, with ``--jobs 0``, in this process one after another (no process start-up: tiny runs and tests).
A run whose final checkpoint exists is reused, and each supervised run's result is kept in
OUT/supervised/, so an interrupted comparison continues where it stopped.

Modules: ``rows`` (what each row is, the CPU and published configurations), ``run`` (the data, the
runs, the probes and the bound), ``report`` (statistics, tables, figure). Writes OUT/results.json (every number, the configuration, city version, machine, timings),
OUT/results.md (the tables and the command) and OUT/compare.png (primary metric, 95 % intervals drawn).
How to read the tables: docs/downstream.md, "The comparison".
"""

from __future__ import annotations
