#!/usr/bin/env bash
# Everything the project wants measured on a GPU, in one call of at most 8 minutes.
#
#   bash benchmarks/gpu_check.sh --out gpu_check                     # on the GPU machine
#   bash benchmarks/gpu_check.sh --device cpu --tiny --out /tmp/gc   # anywhere, in seconds: checks the script
#
# --tiny runs the same steps at tiny sizes in one Python process (benchmarks/gpu_check_tiny.py); if that process
# dies, the steps it did not record are recorded failed with its exit code.
#
# Options: --device cuda|cpu (default cuda), --tiny (tiny sizes), --out DIR (default gpu_check_out),
# --fmnist-root DIR (Fashion-MNIST's IDX files when the machine has no /usr/share/datasets/fashion-mnist
# and no network), --python PATH (default: python3, or $PYTHON).
#
# Steps, each under its own `timeout`, each writing its result into DIR the moment it has it:
#   machine.txt                  the GPU, the driver, torch
#   throughput.md                benchmarks/throughput.py (CIFAR-shaped training throughput of the pipelines)
#   image_pipeline.md            benchmarks/image_pipeline.py (the JPEG pipeline per core and into the device)
#   cifar100_lt_resnet32.json    benchmarks/cifar_lt_epochs.py: ResNet-32 on CIFAR-100-LT-shaped synthetic data
#                                (10,847 images, batch 128), 2 and 6 epochs timed, 200 epochs extrapolated
#   fmnist_sweep.yaml, fmnist_runs/, fmnist_report/results.md
#                                the Fashion-MNIST-LT method table (IF 100, seeds 0-2) via `longtail sweep`
#                                and `longtail report`
#   <step>.log                   each step's output; steps.tsv: step, status (ok / failed rc=N / timed out),
#                                seconds, limit, one line per step as it ends
# A step that fails or runs out of time is recorded and the next one runs. No step reads a pipe or
# waits on a background process: every command writes straight to its log file. Calling the script again
# with the same --out resumes the sweep (finished runs are skipped, partial ones resumed).
set -u

ROOT=$(cd "$(dirname "$0")/.." && pwd)
DEVICE=cuda
TINY=0
OUT=gpu_check_out
FMNIST_ROOT=""
PY=${PYTHON:-python3}
while [ $# -gt 0 ]; do
    case "$1" in
        --device) DEVICE=$2; shift 2 ;;
        --tiny) TINY=1; shift ;;
        --out) OUT=$2; shift 2 ;;
        --fmnist-root) FMNIST_ROOT=$2; shift 2 ;;
        --python) PY=$2; shift 2 ;;
        *) echo "gpu_check.sh: unknown option '$1' (see the header of $0)" >&2; exit 2 ;;
    esac
done
case "$DEVICE" in cuda|cpu) ;; *) echo "gpu_check.sh: --device must be cuda or cpu, got '$DEVICE'" >&2; exit 2 ;; esac

mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
export PYTHONPATH="$ROOT/src${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
STEPS="$OUT/steps.tsv"
printf 'step\tstatus\tseconds\tlimit_s\n' > "$STEPS"
START=$(date +%s)

# step NAME LIMIT_SECONDS COMMAND...: run under timeout, output to NAME.log, one line to steps.tsv
step() {
    local name=$1 limit=$2 start rc status
    shift 2
    start=$(date +%s)
    echo "[$(date -u +%H:%M:%S)] $name (at most ${limit} s)"
    timeout --kill-after=10 "$limit" "$@" > "$OUT/$name.log" 2>&1 < /dev/null
    rc=$?
    case $rc in
        0) status=ok ;;
        124|137) status="timed out" ;;
        *) status="failed rc=$rc" ;;
    esac
    printf '%s\t%s\t%s\t%s\n' "$name" "$status" "$(( $(date +%s) - start ))" "$limit" >> "$STEPS"
    echo "[$(date -u +%H:%M:%S)] $name: $status"
}

if [ "$TINY" = 1 ]; then  # the other steps' tiny arguments are in benchmarks/gpu_check_tiny.py
    SWEEP_OVERRIDES="dataset.n_max=100, dataset.val_per_class=10, model.name=resnet8, train.epochs=1, train.batch_size=32, data.num_workers=0, eval.batch_size=256, train.amp=false"
    SEEDS="[0]"
else
    THROUGHPUT_ARGS=(--quick --rounds 1)
    PIPELINE_ARGS=(--files 120 --images 200)
    CIFAR_ARGS=(--epochs 6)
    SWEEP_OVERRIDES=""
    SEEDS="[0, 1, 2]"
    JOBS=$([ "$DEVICE" = cuda ] && echo 6 || echo 1)  # small models: six runs share the GPU, 16 cores
    LIMITS=(10 75 90 60 225 20)  # 480 s in all: 8 minutes
fi

# the sweep file of step 5 (the Fashion-MNIST-LT method table through `longtail sweep`), paths absolute
ROOT_OVERRIDE=""
[ -n "$FMNIST_ROOT" ] && ROOT_OVERRIDE="dataset.root=$(cd "$FMNIST_ROOT" && pwd), dataset.download=false, "
CONFIGS="$ROOT/configs/fmnist_lt"
if [ "$TINY" = 1 ]; then  # one training and one post-hoc step
    VARIANTS="  - {name: ce}
  - {name: ce_posthoc_la, from: ce, step: evaluate --posthoc la --tau 1 --save}"
else
    VARIANTS="  - {name: ce}
  - {name: la_loss, base: $CONFIGS/loss_imba100.yaml}
  - {name: ce_posthoc_la, from: ce, step: evaluate --posthoc la --tau 1 --save}
  - {name: ce_posthoc_la_tuned, from: ce, step: tune --posthoc la --grid 0:2:0.1}
  - {name: gala, base: $CONFIGS/gala_imba100.yaml}
  - {name: gala_pn, base: $CONFIGS/gala_pn_imba100.yaml}
  - {name: bagmar, base: $CONFIGS/bagmar_imba100.yaml}
  - {name: balanced_softmax, base: $CONFIGS/balanced_softmax_imba100.yaml}
  - {name: ldam_drw, base: $CONFIGS/ldam_drw_imba100.yaml}
  - {name: lgla, base: $CONFIGS/lgla_imba100.yaml}"
fi
cat > "$OUT/fmnist_sweep.yaml" <<EOF
# written by benchmarks/gpu_check.sh: benchmarks/fmnist_methods.yaml at imbalance factor 100, seeds $SEEDS
base: $CONFIGS/ce_imba100.yaml
out: $OUT/fmnist_runs
overrides: [${ROOT_OVERRIDE}device=$DEVICE${SWEEP_OVERRIDES:+, $SWEEP_OVERRIDES}]
axes:
  dataset.imbalance_factor: [100]
  seed: $SEEDS
variants:
$VARIANTS
EOF
if [ "$TINY" = 1 ]; then
    "$PY" "$ROOT/benchmarks/gpu_check_tiny.py" --device "$DEVICE" --out "$OUT"
    rc=$?
    for name in machine throughput image_pipeline cifar100_lt_resnet32 fmnist_sweep fmnist_report; do
        cut -f1 "$STEPS" | grep -qx "$name" || printf '%s\tfailed rc=%s\t0\t300\n' "$name" "$rc" >> "$STEPS"
    done
    echo "gpu_check: $(( $(date +%s) - START )) s; results in $OUT (steps.tsv):"
    cat "$STEPS"
    exit 0
fi

# 1. the machine
step machine "${LIMITS[0]}" bash -c "{ date -u; nvidia-smi || echo 'no nvidia-smi'; \"$PY\" -c 'import torch; print(\"torch\", torch.__version__, \"cuda\", torch.version.cuda, \"available\", torch.cuda.is_available())'; nproc; } > \"$OUT/machine.txt\""

# 2. training throughput of longtail's pipelines (CIFAR-shaped)
step throughput "${LIMITS[1]}" "$PY" "$ROOT/benchmarks/throughput.py" --device "$DEVICE" "${THROUGHPUT_ARGS[@]}" \
    --markdown "$OUT/throughput.md"

# 3. the JPEG pipeline, per core and into the device
step image_pipeline "${LIMITS[2]}" "$PY" "$ROOT/benchmarks/image_pipeline.py" --device "$DEVICE" "${PIPELINE_ARGS[@]}" \
    --out "$OUT/image_pipeline.md"

# 4. CIFAR-100-LT-shaped ResNet-32, 200 epochs extrapolated
step cifar100_lt_resnet32 "${LIMITS[3]}" "$PY" "$ROOT/benchmarks/cifar_lt_epochs.py" --device "$DEVICE" "${CIFAR_ARGS[@]}" \
    --out "$OUT/cifar100_lt_resnet32.json"

# 5. the Fashion-MNIST-LT method table
step fmnist_sweep "${LIMITS[4]}" "$PY" -m longtail sweep "$OUT/fmnist_sweep.yaml" --jobs "$JOBS"
step fmnist_report "${LIMITS[5]}" "$PY" -m longtail report "$OUT/fmnist_runs" --out "$OUT/fmnist_report"

echo "gpu_check: $(( $(date +%s) - START )) s; results in $OUT (steps.tsv):"
cat "$STEPS"
