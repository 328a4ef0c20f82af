"""The paper's claims as an engine: the comparison with bounds, the ablation over λ, few labels; repeated seeds,
paired tests.

``compare.py`` (the command) parses the flags and calls :func:`engine.compare.run.run_comparison`.

Rows of the comparison (``--variants``; all but ``mmgr_gcn`` and the ``*_include`` rows by default):
  mean        lower bound: the mean training target for every tile (no image; seed-free)
  random      lower bound: the same backbone with random weights (seeded), the same probe
  simclr      image-only contrastive pretraining, λ = 1 (SimCLR-style: only the image–image term)
  img_poi     image–POI contrastive only, λ = 0
  mmgr        MMGR, λ = 0.5 (published), released Set2Set POI encoder
  mmgr_gcn    MMGR, λ = 0.5, GCN POI encoder (the paper's description)
  img_poi_include, mmgr_include
              img_poi and mmgr with the published treatment of tiles without POIs (``mmgr.py --empty_poi_tiles
              include``: their empty graphs enter the image–POI term); the rows above leave them out of it
              (``exclude``, the default). Paired with img_poi and mmgr seed by seed.
  poi_encoder reference, POI only: the POI-encoder embedding of the mmgr run
  poi_counts  reference, POI only: log(1 + count) of each POI category in the tile (no learning; seed-free)
  supervised  upper bound: the same backbone trained end to end on the training tiles' labels, one model
              per task and seed, same split, same crop size, same budget (below)

The λ ablation (``--lambdas``): one more pretrained row per λ (``mmgr.py --img_lmd λ``; loss = (1 − λ) ·
image–POI + λ · image–image), probed like the others with the same seeds; λ 0, 0.5 and 1 are the rows
``img_poi``, ``mmgr`` and ``simclr`` themselves (one run each, not two). Paired: each λ strictly between 0
and 1 against both ends ("both loss terms matter" if it beats both).

Few labels (``--label_fractions``): at each fraction ``f`` and seed ``s`` one labelled subset of the
training list (``data.downstream.select_fraction(train, f, s)``: the same tiles for every row), the
validation list whole, and the rows of ``--label_variants`` (rows.FEW_LABEL_ROWS):
  mmgr_frozen       MMGR's frozen backbone + the ridge probe (and kNN) fit on the subset
  mmgr_finetuned    MMGR's encoder (run of seed s) fine-tuned end to end: backbone at --finetune_backbone_lr
                    (default --bound_lr), head at --bound_lr
  simclr_finetuned  the image-only encoder (run of seed s), fine-tuned the same way
  scratch           the same network from random initialisation trained end to end (every parameter at
                    --bound_lr): the supervised bound on fewer labels
Every end-to-end row trains ``--finetune_epochs`` (default ``--bound_epochs``) epochs over its labelled
tiles at the batch size (or all of them when fewer), so from scratch with all labels *is* the bound's run.
Paired at each fraction: fine-tuned − scratch, MMGR − image-only fine-tuned, fine-tuned − frozen, frozen −
scratch.

Protocol of the probed rows (random, pretrained, POI): each encoder embeds every tile once (backbone
features of the full tile, no augmentation), then a ridge probe (primary; penalty by leave-one-out) and a
kNN probe (secondary) are fit on the training list and scored on the validation list (engine/probes.py).
Primary metrics: R² for scalar targets (population, GDP), KL(true ‖ predicted) for distributions (urban
functions). The end-to-end rows are scored on the same validation tiles (full tile, last epoch, no
selection on the validation list), with the downstream tasks' targets, losses and metrics
(engine/tasks.py: z-scored scalar targets, ReLU(μ + σ·h) in original units; softmax + KL for functions),
trained by the project's one end-to-end trainer (engine/supervised.py).

Same budget: the supervised model trains ``--bound_epochs`` epochs (default: the pretraining's
``--epochs``) at the pretraining's batch size and crop size, with Adam and the same lr schedule shape
(cosine or steps) over its epochs, i.e. as many passes over its (labelled) tiles as each pretraining run
makes over its (unlabelled) tiles; its lr is ``--bound_lr``.

Statistics (engine/stats.py): every cell is the mean over the seeds ± the half-width of the 95 % Student-t
interval; rows are compared seed by seed (seed ``s`` of two rows shares data, split, labelled subset and
probe): paired differences, paired t-test p-value and the exact Wilcoxon signed-rank p-value as a check.
Gap closed = (row − random init) / (supervised − random init) on the means (0 = no better than random
weights, 1 = as good as end-to-end supervision).

Runs: pretraining runs ``mmgr.py`` itself, in its own process per run (``--jobs N`` at once, e.g. several on
one GPU) or, with ``--jobs 0``, in this process one after another (no process start-up: tiny runs and
tests); meanwhile the bound and the from-scratch rows train in this process. Every finished run is reused
when, and only when, its configuration and data are the same (``runs``), so an interrupted comparison
continues where it stopped and a changed flag starts afresh.

Modules: ``rows`` (what each row is, the CPU and published configurations), ``runs`` (pretraining, random
init and end-to-end runs, keyed on their configuration), ``run`` (the data, the checks of the inputs, every
row), ``summary`` (statistics), ``report`` (the tables of OUT/results.md), ``figures`` (compare.png,
lambda.png, label_fractions.png: primary metrics with their 95 % intervals), ``longform`` (OUT/results.csv,
one row per variant, λ, label fraction, seed, target, method and metric). OUT/results.json holds every
number, the configuration, city version, machine and timings. How to read them: docs/downstream.md,
"The comparison".
"""

from __future__ import annotations
