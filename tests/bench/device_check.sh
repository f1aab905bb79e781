#!/usr/bin/env bash
# The device check of issue 31, in one call of at most 9 minutes on one GPU; everything goes under OUT.
#
#   tests/bench/device_check.sh OUT              # on the GPU machine (needs CUDA)
#   tests/bench/device_check.sh OUT --dry-run    # the same steps on the CPU at toy size (< 5 minutes)
#
# Steps, each under its own `timeout` (SIGABRT: Python's faulthandler then prints every thread's
# stack into the step's log before it dies, so a stall still says where it waited), all capped
# by a deadline of DEADLINE seconds from the start:
#   1. pytest tests/test_cuda.py                                   -> OUT/test_cuda.txt
#   2. a 20,000-image 256 px archive; tests/bench/stall_probe.py: finetune AlexNet, 224 px,
#      --amp, batch 256, 8 workers, with stacks every 30 s, a torch.profiler table of 30 steps,
#      the data path alone and the bare training step / forward     -> OUT/probe/, OUT/probe.txt
#      tests/bench/bench_datapath.py on the same archive (8 workers, the device) -> OUT/datapath.txt
#   3. a 216,000-image 256 px archive; tests/bench/bench_iteration.py with AlexNet fc7, then
#      ResNet-50 (k = 1000, 1 epoch, --amp, batch 256, 8 workers) -> OUT/iteration-*.txt
# nvidia-smi samples GPU use every 500 ms throughout                  -> OUT/gpu-util.csv
# OUT/summary.txt: each step's exit status and seconds, and the figure lines of every log.
# --dry-run: resnet18 at 32 px stands in for AlexNet, toy archives, CPU, a 290 s deadline.
# Nothing is downloaded (random-init weights); the archives go to a temporary folder, removed.
set -u
OUT=""
DRY=0
for arg in "$@"; do
    case "$arg" in
        --dry-run) DRY=1 ;;
        -h|--help) sed -n '2,22p' "$0"; exit 0 ;;
        *) OUT="$arg" ;;
    esac
done
if [ -z "$OUT" ]; then
    echo "usage: $0 OUT [--dry-run]" >&2
    exit 2
fi
mkdir -p "$OUT" || exit 2
OUT=$(cd "$OUT" && pwd)
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
cd "$ROOT" || exit 2
PY=${PYTHON:-python}
WORK=$(mktemp -d "${TMPDIR:-/tmp}/device-check.XXXXXX")
START=$(date +%s)
SMI=""
cleanup() {
    [ -n "$SMI" ] && kill "$SMI" 2>/dev/null
    rm -rf "$WORK"
}
trap cleanup EXIT

if [ "$DRY" = 1 ]; then
    DEADLINE=290
    DEVICE=cpu
    # resnet18 at 32 px stands in for AlexNet (whose 58M fully connected weights take seconds a step on a
    # shared 2-core CPU); the steps, scripts and code paths are the same
    ARCH=resnet18; LAYER=avgpool
    N_PROBE=320; SIZE=64; INPUT=32; BATCH=8; WORKERS=2; AMP=""; STEPS=10
    N_ITER=256; K=4; N_R50=48; BATCH_R50=8; BARE=0.5; WINDOW=0.25
    export OMP_NUM_THREADS=1  # a shared CPU: OpenMP threads that spin at barriers cost seconds a step
else
    DEADLINE=530
    DEVICE=cuda
    ARCH=alexnet; LAYER=fc7
    N_PROBE=20000; SIZE=256; INPUT=224; BATCH=256; WORKERS=8; AMP="--amp"
    N_ITER=216000; K=1000; N_R50=216000; BATCH_R50=256; BARE=3; WINDOW=256; STEPS=30
fi
GEN_WORKERS=$(( $(nproc) > 2 ? $(nproc) - 2 : 1 ))

log() { echo "[$(date -u +%H:%M:%S) +$(( $(date +%s) - START ))s] $*" | tee -a "$OUT/summary.txt"; }

# step NAME LIMIT LOG COMMAND...: run under timeout (capped by the deadline), log status and time
step() {
    local name=$1 limit=$2 logfile=$3
    shift 3
    local left=$(( DEADLINE - ($(date +%s) - START) ))
    if [ "$left" -lt 15 ]; then
        log "$name: skipped (${left}s left before the ${DEADLINE}s deadline)"
        return 0
    fi
    [ "$limit" -gt "$left" ] && limit=$left
    local t0; t0=$(date +%s)
    timeout -s ABRT -k 10 "$limit" "$@" >"$logfile" 2>&1
    local code=$?
    local took=$(( $(date +%s) - t0 ))
    if [ "$code" = 124 ] || [ "$code" = 134 ] || [ "$code" = 137 ]; then
        log "$name: STOPPED at its ${limit}s limit after ${took}s (exit $code; stacks at the end of $(basename "$logfile"))"
    else
        log "$name: exit $code in ${took}s"
    fi
    return 0
}

log "device check (dry run: $DRY), $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo '?'), out $OUT, work $WORK"
{
    date -u
    uname -a
    nproc
    free -g 2>/dev/null
    df -h /dev/shm "$WORK" 2>/dev/null
    "$PY" -c "import torch, sys; print('python', sys.version.split()[0], 'torch', torch.__version__, 'cuda', \
torch.version.cuda, 'available', torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else '')"
    nvidia-smi 2>&1 || echo "no nvidia-smi"
} >"$OUT/env.txt" 2>&1
if command -v nvidia-smi >/dev/null 2>&1; then
    nvidia-smi --query-gpu=timestamp,utilization.gpu,utilization.memory,memory.used,power.draw \
        --format=csv -lms 500 >"$OUT/gpu-util.csv" 2>&1 &
    SMI=$!
else
    echo "no nvidia-smi on this machine" >"$OUT/gpu-util.csv"
fi
export PYTHONFAULTHANDLER=1 PYTHONUNBUFFERED=1

# 1. the CUDA tests (they skip on a machine without CUDA)
step "pytest tests/test_cuda.py" 70 "$OUT/test_cuda.txt" "$PY" -m pytest tests/test_cuda.py -q -rs -p no:cacheprovider

# 2. the stall-and-speed probe on a 20,000-image archive, and the data path alone beside it
step "archive $N_PROBE x $SIZE px" 40 "$OUT/archive-probe.txt" \
    "$PY" -c "from ldpo.stages import main; main()" toy-data archive --n "$N_PROBE" --size "$SIZE" \
    --out "$WORK/probe.zarr" --workers "$GEN_WORKERS" --no-progress
step "stall probe (finetune $ARCH $INPUT px, batch $BATCH, $WORKERS workers)" 130 "$OUT/probe.txt" \
    "$PY" tests/bench/stall_probe.py --store "$WORK/probe.zarr" --out "$OUT/probe" --device "$DEVICE" $AMP \
    --arch "$ARCH" --input-size "$INPUT" --batch-size "$BATCH" --workers "$WORKERS" --bare-seconds "$BARE" --profile-steps "$STEPS"
step "data path alone" 45 "$OUT/datapath.txt" \
    "$PY" tests/bench/bench_datapath.py --store "$WORK/probe.zarr" --device "$DEVICE" --workers "$WORKERS" \
    --batch "$BATCH" --window-mib "$WINDOW" --repeats 2

# 3. one LDPO iteration at archive scale: AlexNet fc7, then ResNet-50
step "archive $N_ITER x $SIZE px" 50 "$OUT/archive-iteration.txt" \
    "$PY" -c "from ldpo.stages import main; main()" toy-data archive --n "$N_ITER" --size "$SIZE" --classes 20 \
    --out "$WORK/iteration.zarr" --workers "$GEN_WORKERS" --no-progress
step "iteration, $ARCH $LAYER" 130 "$OUT/iteration-alexnet.txt" \
    "$PY" tests/bench/bench_iteration.py --store "$WORK/iteration.zarr" --size "$SIZE" --arch "$ARCH" --layer "$LAYER" \
    --input-size "$INPUT" --k "$K" --epochs 1 --device "$DEVICE" $AMP --workers "$WORKERS" --batch-size "$BATCH" \
    --bare-seconds "$BARE" -v
if [ "$N_R50" != "$N_ITER" ]; then  # the dry run: a smaller archive for ResNet-50 on the CPU
    step "archive $N_R50 x $SIZE px" 30 "$OUT/archive-r50.txt" \
        "$PY" -c "from ldpo.stages import main; main()" toy-data archive --n "$N_R50" --size "$SIZE" --classes 4 \
        --out "$WORK/r50.zarr" --workers "$GEN_WORKERS" --no-progress
    R50_STORE="$WORK/r50.zarr"; R50_K=4
else
    R50_STORE="$WORK/iteration.zarr"; R50_K=$K
fi
step "iteration, ResNet-50" 170 "$OUT/iteration-resnet50.txt" \
    "$PY" tests/bench/bench_iteration.py --store "$R50_STORE" --size "$SIZE" --arch resnet50 \
    --input-size "$INPUT" --k "$R50_K" --epochs 1 --device "$DEVICE" $AMP --workers "$WORKERS" \
    --batch-size "$BATCH_R50" --bare-seconds "$BARE" -v

[ -n "$SMI" ] && kill "$SMI" 2>/dev/null
SMI=""
log "done in $(( $(date +%s) - START ))s"
{
    echo "--- figures"
    grep -h -E "passed|failed|skipped|error" "$OUT/test_cuda.txt" | tail -n 2
    grep -h -E "^(probe|datapath|ratios):|^(archive|finetune|featurize|cluster|converge|iteration) *:|img/s|images/s" \
        "$OUT"/archive-*.txt "$OUT/probe.txt" "$OUT/datapath.txt" "$OUT"/iteration-*.txt 2>/dev/null | grep -v "^ldpo: " | tail -n 40
    if [ -s "$OUT/gpu-util.csv" ] && [ "$DEVICE" = cuda ]; then
        awk -F', ' 'NR > 1 && $2 + 0 == $2 + 0 { n++; s += $2 } END { if (n) printf "GPU utilisation: mean %.0f%% over %d samples\n", s / n, n }' \
            "$OUT/gpu-util.csv"
    fi
} >>"$OUT/summary.txt" 2>&1
cat "$OUT/summary.txt"
