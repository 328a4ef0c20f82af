#!/usr/bin/env bash
# One-shot GPU check of the speed work (issue 5), for a lent H100/H200 (with several GPUs visible it
# also checks DDP over NCCL: gradients against one process, throughput scaling, mmgr.py under torchrun).
# Run from the repository root:
#
#     bash benchmarks/gpu_check.sh                  # at most ~6 minutes (GPU_CHECK_BUDGET_S=345 s of steps)
#     GPU_CHECK_TINY=1 bash benchmarks/gpu_check.sh # the same steps, tiny, on CPU (to test this script;
#                                                   # two gloo processes stand in for several GPUs)
#     GPU_CHECK_BUDGET_S=700 bash benchmarks/gpu_check.sh  # several GPUs: the DDP steps need ~5 more minutes
#     GPU_CHECK_ONLY=reliability bash benchmarks/gpu_check.sh   # only the reliability checks (issue 13), ~4 minutes:
#                                                   # --deterministic reruns bit-identical, SIGKILL soak on the device
#     GPU_CHECK_ONLY=speed bash benchmarks/gpu_check.sh         # only the speed checks
#
# The reliability checks run after the speed checks with an allowance of their own
# (GPU_CHECK_RELIABILITY_S, default 240 s), so the full script takes up to ~10 minutes.
#
# Needs torch, torchvision, torch_geometric, numpy, scipy, pillow, tqdm; no data, no downloads
# (synthetic in-memory tiles). Writes everything to $OUT/gpu_results.txt if $OUT is set, else
# ./gpu_results.txt, and prints it at the end. A failing step is recorded and the next one runs.
set -u
cd "$(dirname "$0")/.."
RES="${OUT:-.}/gpu_results.txt"
mkdir -p "$(dirname "$RES")"
: > "$RES"
JSON="$(mktemp)"
WORK="$(mktemp -d)"
START=$(date +%s)
log() { echo "$*" | tee -a "$RES"; }
elapsed() { echo $(( $(date +%s) - START )); }
# Python is $PYTHON when set (the tests set it to their own interpreter; a job script may pass a virtual
# environment's bin/python without activating it), else the first `python` on PATH.
PY="${PYTHON:-python}"
QPY=$(printf %q "$PY")  # the same, quoted for the command strings given to bash -c
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONWARNINGS=ignore

log "== MMGR gpu_check $(date -u +%FT%TZ)  commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
if ! "$PY" - >>"$RES" 2>&1 <<'PY'
import importlib, sys
missing = []
for m in ("torch", "torchvision", "torch_geometric", "numpy", "scipy", "PIL", "tqdm"):
    try:
        mod = importlib.import_module(m)
        print(f"{m} {getattr(mod, '__version__', '?')}")
    except Exception as exc:
        missing.append(f"{m} ({exc.__class__.__name__}: {exc})")
if missing:
    print("MISSING: " + ", ".join(missing) + " -- install them (pip install torch_geometric ...) and rerun")
    sys.exit(1)
import torch
print(f"python {sys.version.split()[0]}; cuda available {torch.cuda.is_available()}; "
      f"cuda {torch.version.cuda}; cudnn {torch.backends.cudnn.version()}; cpus {__import__('os').cpu_count()}")
if torch.cuda.is_available():
    print(f"gpu {torch.cuda.get_device_name(0)}")
PY
then cat "$RES"; echo "gpu_check: missing packages, stopped (see above)"; exit 1; fi
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader >>"$RES" 2>&1

if [ "${GPU_CHECK_TINY:-0}" = 1 ]; then
  DEV=cpu; NET="--resnet resnet18 --img_size 32 --tile_size 40"; B=8; B_SMALL=4; W=0; WP=0
  IT="--warmup 1 --iters 2"; IT_PUB="--warmup 1 --iters 1"; IT_C="--warmup 1 --iters 1"; SMOKE_SIZE=32
  NGPU=2  # two gloo CPU processes stand in for several GPUs
else
  "$PY" -c "import torch,sys; sys.exit(0 if torch.cuda.is_available() else 1)" || { log "no CUDA device visible: stopped"; cat "$RES"; exit 1; }
  DEV=cuda; NET="--resnet resnet50 --img_size 224 --tile_size 256"; B=256; B_SMALL=64; W=8; WP=14
  IT="--warmup 5 --iters 15"; IT_PUB="--warmup 2 --iters 4"; IT_C="--warmup 3 --iters 10"; SMOKE_SIZE=64
  NGPU=$("$PY" -c "import torch; print(torch.cuda.device_count())")
fi
CPUS=$("$PY" -c "import os; print(len(os.sched_getaffinity(0)))")
TR="$QPY -m torch.distributed.run --standalone --nproc_per_node $NGPU"
TP="$QPY benchmarks/train_throughput.py --device $DEV $NET --json_out $JSON"

BUDGET=${GPU_CHECK_BUDGET_S:-345}  # the whole script stays under 6 minutes: later steps get what is left
GROUP=speed  # the group of the steps that follow; GPU_CHECK_ONLY=<group> runs only that one
step() {  # step NAME TIMEOUT_S COMMAND...
  local name=$1 limit=$2; shift 2
  if [ -n "${GPU_CHECK_ONLY:-}" ] && [ "$GPU_CHECK_ONLY" != "$GROUP" ]; then log "-- [$name] not run (GPU_CHECK_ONLY=$GPU_CHECK_ONLY)"; return; fi
  local left=$(( BUDGET - $(elapsed) ))
  [ $left -lt $limit ] && limit=$left
  if [ $limit -lt 20 ]; then log ""; log "-- [$name] skipped: time budget of ${BUDGET}s used"; return; fi
  log ""; log "-- [$name] (t=$(elapsed)s, limit ${limit}s): $*"
  timeout --kill-after=10 "$limit" "$@" >>"$RES" 2>&1
  local rc=$?
  [ $rc -eq 0 ] && log "-- [$name] ok" || log "-- [$name] FAILED rc=$rc"
}

# 1. Correctness on the device: batched augmentation and loss equal their CPU results; mmgr.py end to end.
step "device correctness" 60 "$PY" - "$DEV" <<'PY'
import sys, torch
from data.gpu_augment import GPUAugment
from models.loss import nt_xent
dev = torch.device(sys.argv[1])
g = torch.Generator().manual_seed(0)
images = torch.randint(0, 256, (32, 3, 64, 80), dtype=torch.uint8, generator=g)
aug = GPUAugment(48)
p = aug.sample(32, 64, 80, generator=g)
cpu, dv = aug.apply(images, p), aug.apply(images.to(dev), p).cpu()
print(f"augment device vs cpu: max abs diff {(cpu - dv).abs().max().item():.2e}")
assert torch.allclose(cpu, dv, atol=1e-3)
za, zb = torch.randn(300, 128, generator=g), torch.randn(300, 128, generator=g)
a, b = nt_xent(za, zb).item(), nt_xent(za.to(dev), zb.to(dev)).item()
print(f"nt_xent cpu {a:.6f} device {b:.6f}")
assert abs(a - b) < 1e-4
PY
step "mmgr.py on the device (bf16, --augment gpu)" 90 bash -c "
$QPY -c 'from benchmarks.data_path import write_layout; write_layout(\"$WORK/city\", 64, $SMOKE_SIZE)' &&
cd $WORK && $QPY $PWD/mmgr.py --data_path city --model_path ck --device $DEV --resnet resnet18 --img_size $SMOKE_SIZE \
  --batch_size 16 --total_epoch 2 --lr 1e-3 --workers 2 --augment gpu --precision bf16 --train_record r.txt &&
ls ck && tail -n 2 ck/train_log.jsonl"

# 2. Our fast path: bf16 + channels_last + batched device augmentation.
step "ours bf16 channels_last augment=gpu batch $B" 120 $TP --batch_size $B --precision bf16 --augment gpu --workers $W $IT
# 3. The published pipeline's choices on the same card: fp32, PIL per sample, broadcast loss, NCHW.
step "published-style fp32 batch $B" 120 $TP --batch_size $B --published_style --workers $WP $IT_PUB
# 3b. Several GPUs (only where more than one is visible): torchrun/DDP over NCCL.
if [ "$NGPU" -gt 1 ]; then
  # decode workers per process: the CPUs shared out (one left for the process itself), at most $W
  WN=$(( CPUS / NGPU - 1 )); [ "$WN" -lt 1 ] && WN=1; [ "$WN" -gt "$W" ] && WN=$W
  step "DDP correctness, $NGPU processes" 90 $TR benchmarks/ddp_check.py --device $DEV
  step "DDP ours bf16 augment=gpu, $NGPU processes x batch $B" 150 $TR benchmarks/train_throughput.py --device $DEV $NET \
    --json_out $JSON --batch_size $B --precision bf16 --augment gpu --workers $WN $IT
  step "mmgr.py under torchrun, $NGPU processes" 120 bash -c "
cd $WORK && $TR $PWD/mmgr.py --data_path city --model_path ck_ddp --device $DEV --resnet resnet18 --img_size $SMOKE_SIZE \
  --batch_size 4 --total_epoch 2 --lr 1e-3 --workers 1 --augment gpu --precision bf16 --train_record r_ddp.txt &&
ls ck_ddp && tail -n 2 ck_ddp/train_log.jsonl"
else
  log ""; log "-- [several GPUs] skipped: $NGPU GPU visible (DDP over NCCL needs at least 2)"
fi

# 4. fp16 with a GradScaler (smoke: finite loss, throughput).
step "ours fp16 GradScaler batch $B_SMALL" 60 $TP --batch_size $B_SMALL --precision fp16 --augment gpu --workers $W --warmup 2 --iters 3
# 5. torch.compile, only if time is left (compilation of ResNet-50 takes a minute or two).
if [ "$(elapsed)" -lt 220 ]; then
  step "ours bf16 + torch.compile batch $B" 150 $TP --batch_size $B --precision bf16 --augment gpu --workers $W --compile $IT_C
else
  log ""; log "-- [torch.compile] skipped: $(elapsed)s used already"
fi

# 6. Reliability on the device (issue 13, docs/run_folder.md): --deterministic reruns are bit-identical,
# and SIGKILLs at random moments followed by --resume auto end bit-identical to an uninterrupted run.
GROUP=reliability
BUDGET=$(( $(elapsed) + ${GPU_CHECK_RELIABILITY_S:-240} ))
if [ "${GPU_CHECK_TINY:-0}" = 1 ]; then
  DET_TILES=16; DET_BATCH=4; SOAK="--kills 2 --epochs 3 --workers 0 --max_delay 1 --startup_kills 0"
else
  DET_TILES=64; DET_BATCH=16; SOAK="--kills 4 --epochs 8 --workers 2 --max_delay 2"
fi
step "--deterministic reruns bit-identical" 150 "$PY" - "$DEV" "$WORK" "$SMOKE_SIZE" "$DET_TILES" "$DET_BATCH" <<'PY'
import os, subprocess, sys, time
from pathlib import Path
import torch
from benchmarks.data_path import write_layout
dev, work, size, n_tiles, batch = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
city = work / "det_city"
write_layout(str(city), n_tiles, size)
configs = {"fp32, augmentation on CPU workers": [],
           "bf16, --augment gpu": ["--augment", "gpu", "--precision", "bf16"]}
ok = True
for i, (name, extra) in enumerate(configs.items()):
    runs = []
    for r in (1, 2):
        d = work / f"det{i}_{r}"
        d.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, str(Path.cwd() / "mmgr.py"), "--data_path", str(city), "--model_path", "ck", "--device", dev,
               "--resnet", "resnet18", "--img_size", str(size), "--batch_size", batch, "--total_epoch", "2", "--lr", "1e-3",
               "--workers", "2", "--deterministic", "--train_record", "r.txt", *extra]
        t0 = time.time()
        p = subprocess.run(cmd, cwd=d, capture_output=True, text=True)
        if p.returncode != 0:
            print(f"{name}: run {r} failed (exit {p.returncode}):\n{p.stderr[-2000:]}")
            sys.exit(1)
        runs.append(d)
        print(f"{name}: run {r} {time.time() - t0:.1f}s")
    same = {}
    for kind in ("img", "poi"):
        a, b = (torch.load(d / "ck" / f"wuhan_{kind}_2.tar", weights_only=True) for d in runs)
        diff = max(((a[k].double() - b[k].double()).abs().max().item() if a[k].numel() else 0.0) for k in a)
        same[kind] = a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
        print(f"{name}: {kind} state dicts bit-identical {same[kind]} (max abs diff {diff:.3e})")
    rec = (runs[0] / "train-records" / "r.txt").read_bytes() == (runs[1] / "train-records" / "r.txt").read_bytes()
    print(f"{name}: per-step records identical {rec}")
    ok &= all(same.values()) and rec
print("deterministic reruns: " + ("bit-identical" if ok else "NOT bit-identical"))
sys.exit(0 if ok else 1)
PY
step "SIGKILL soak on the device" 200 "$PY" benchmarks/soak.py --device "$DEV" $SOAK --out "$WORK/soak"

log ""; log "== summary"
"$PY" - "$JSON" >>"$RES" 2>&1 <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
for r in rows:
    print(f"{r['mode']:>15} {r['precision']:>5} aug={r['augment']:<28} compile={r['compile']!s:<5} "
          f"procs {r.get('world_size', 1)} batch {r['batch_size']:>4}: "
          f"{r['samples_per_s']:>8.1f} samples/s (median of {r['iters']}; mean {r['mean_samples_per_s']:.1f}), "
          f"peak {r['peak_mem_mb']:.0f} MB, loss {r.get('last_loss')}")
ours = [r for r in rows if r["mode"] == "ours" and r["precision"] == "bf16" and not r["compile"] and r.get("world_size", 1) == 1]
multi = [r for r in rows if r.get("world_size", 1) > 1]
if ours and multi:
    n = multi[0]["world_size"]
    print(f"scaling: {n} processes {multi[0]['samples_per_s']:.0f} samples/s = {multi[0]['samples_per_s'] / ours[0]['samples_per_s']:.2f}x "
          f"one process ({multi[0]['samples_per_s'] / ours[0]['samples_per_s'] / n:.0%} efficiency)")
pub = [r for r in rows if r["mode"] == "published_style"]
if ours and pub:
    print(f"ratio ours bf16 / published fp32: {ours[0]['samples_per_s'] / pub[0]['samples_per_s']:.2f}x")
if ours:
    print(f"target >= 2500 samples/s (two views each): {'met' if ours[0]['samples_per_s'] >= 2500 else 'NOT met'} "
          f"({ours[0]['samples_per_s']:.0f})")
PY
log "total $(elapsed)s"
rm -rf "$JSON" "$WORK"
echo; echo "===== $RES ====="; cat "$RES"
