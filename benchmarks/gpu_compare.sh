#!/usr/bin/env bash
# The paper's claims (compare.py) at GPU scale, in one go, for a lent H100/H200 (issues 12 §4, 19 §5):
# bounds (mean predictor, random init, supervised end to end), image-only, image–POI only and MMGR
# pretraining, the λ ablation (λ = 0, 0.25, 0.5, 0.75, 1) and few labels (MMGR frozen + ridge, MMGR and
# image-only fine-tuned, from scratch, at 5 %, 10 %, 25 %, 50 % and 100 % of the training labels), 5 seeds
# each, ridge and kNN probes, paired tests; prints the tables. Run from anywhere:
#
#     bash benchmarks/gpu_compare.sh                      # on a GPU: ~8-11 min estimated (see below)
#     GPU_COMPARE_TINY=1 bash benchmarks/gpu_compare.sh   # the same flow, tiny, on CPU in ~30 s (tested by
#                                                         # tests/scripts/test_compare.py)
#     GPU_COMPARE_EPOCHS=15 bash benchmarks/gpu_compare.sh  # fewer epochs if the first run was too slow
#     GPU_COMPARE_STUDIES=0 bash benchmarks/gpu_compare.sh  # the comparison alone (no λ rows, no few labels)
#
# Configuration (GPU): synthetic city version 2, 4,000 tiles of 256 px (seed 0; 3,200 training and 800
# validation tiles), ResNet-18, 128 px crops, batch 256, 25 epochs, Adam lr 1e-3 with cosine decay, bf16,
# channels-last, augmentation on the GPU (data/gpu_augment.py), pretraining from a pack of the city
# (data/pack.py: memory-mapped shards); 5 pretraining runs at once on the one GPU (--jobs 5, each an
# mmgr.py process with 2 decode workers), while the supervised bound and the few-label rows (the same
# budget: 25 epochs of 128 px crops over their labelled tiles) train in the main process.
#
# Time: NOT MEASURED at this size (no GPU run of it yet); an estimate from the H200 figures of
# benchmarks/RESULTS.md (ResNet-50 at 224 px, bf16, device augmentation: about 1,900-2,400 pretraining
# samples/s, two views each). ResNet-18 at 128 px costs about 1/7 of those FLOPs per view; assuming only
# a 4-5x speed-up (small kernels fill a GPU less well; several processes at once help) gives 8,000-10,000
# samples/s: 25 pretraining runs (15 for the comparison, 10 more for λ 0.25 and 0.75) x 25 epochs x 4,000
# tiles = 2.5 M samples, 250-310 s; the bound (15 runs x 25 epochs x 3,200 single views, about 1/2 the work
# per sample) and the few-label rows of population (3 trained rows x 5 seeds x 25 epochs x 3,200 x 1.9 of
# the labels, image only fine-tuned at every fraction here, the bound's runs reused for 100 % from scratch)
# another 190-240 s of the same GPU, in the main
# process, overlapping the pretraining; city generation about 65 s (16 s per 1,000 tiles of 256 px measured
# on the project's CPU); packing, decoding, process start-ups and probes 40-60 s. Total 8-11 min. If a run is
# slower, rerun with GPU_COMPARE_EPOCHS lower: finished runs of the same settings are reused (keyed on their
# configuration), so an interrupted run continues (in the same GPU_COMPARE_WORK).
#
# Writes $OUT/gpu_compare.txt (everything printed), $OUT/results.md, results.json, results.csv and the
# figures (compare.png, lambda.png, label_fractions.png) if $OUT is set, else ./gpu_compare_out/. Needs
# torch, torchvision, torch_geometric, scikit-learn, scipy, matplotlib; nothing is downloaded. Python is
# $PYTHON when set (the tests set it to their own interpreter), else the first `python` on PATH.
set -u
cd "$(dirname "$0")/.."
RES_DIR="${OUT:-./gpu_compare_out}"
mkdir -p "$RES_DIR"
RES="$RES_DIR/gpu_compare.txt"
: > "$RES"
WORK="${GPU_COMPARE_WORK:-$(mktemp -d)}"
START=$(date +%s)
log() { echo "$*" | tee -a "$RES"; }
PY="${PYTHON:-python}"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONWARNINGS=ignore

log "== MMGR gpu_compare $(date -u +%FT%TZ)  commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown)  work $WORK"
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader >>"$RES" 2>&1
if [ "${GPU_COMPARE_TINY:-0}" = 1 ]; then
  # Every step of the GPU flow (pack, device augmentation, channels-last, several seeds, bounds, paired
  # tests), tiny and on CPU. fp32: bf16 is emulated on most CPUs, and the flow, not the precision, is tested.
  ARGS=(--device cpu --n_tiles 36 --tile_size 24 --img_size 16 --batch_size 8 --epochs "${GPU_COMPARE_EPOCHS:-1}"
        --seeds 0 1 --jobs 0 --workers 0 --knn 3 --precision fp32)
  STUDIES=(--lambdas 0 0.5 1 --label_fractions 1 --image_only_up_to 1)  # no pretraining beyond the comparison's
else
  "$PY" -c "import torch,sys; sys.exit(0 if torch.cuda.is_available() else 1)" \
    || { log "no CUDA device visible: stopped (GPU_COMPARE_TINY=1 runs the tiny CPU version)"; exit 1; }
  ARGS=(--device cuda --n_tiles 4000 --tile_size 256 --img_size 128 --batch_size 256 --epochs "${GPU_COMPARE_EPOCHS:-25}"
        --seeds 0 1 2 3 4 --jobs "${GPU_COMPARE_JOBS:-5}" --workers 2 --precision bf16)
  STUDIES=(--lambdas 0 0.25 0.5 0.75 1 --label_fractions 0.05 0.1 0.25 0.5 1 --image_only_up_to 1)
fi
[ "${GPU_COMPARE_STUDIES:-1}" = 0 ] && STUDIES=()
ARGS+=(--resnet resnet18 --lr 1e-3 --cos 1 --channels_last 1 --augment gpu --pack 1 ${STUDIES[@]+"${STUDIES[@]}"}
       --out "$WORK/compare")
log "python compare.py ${ARGS[*]}"
"$PY" compare.py "${ARGS[@]}" 2>&1 | tee -a "$RES"
rc=${PIPESTATUS[0]}
for f in results.md results.json results.csv compare.png lambda.png label_fractions.png; do
  [ -f "$WORK/compare/$f" ] && cp "$WORK/compare/$f" "$RES_DIR/$f"
done
log "== gpu_compare exit $rc, total $(( $(date +%s) - START )) s"
exit "$rc"
