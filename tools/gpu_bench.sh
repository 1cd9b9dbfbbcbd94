#!/usr/bin/env bash
# Issue 25's GPU benchmark in one command (experiments/benchmarks/README.md, "GPU script"):
#
#   OUT=DIR bash tools/gpu_bench.sh             # on one GPU: ends within BUDGET_S (540 s)
#   OUT=DIR DRY_RUN=1 bash tools/gpu_bench.sh   # toy sizes, on CPU (tests/test_gpu_bench.py)
#
# Parts, each a tools/benchmark.py process with its own timeout, in this order; one that fails
# or times out is recorded and the next one runs, and once the budget is spent the rest are
# recorded as skipped:
#   train_<data>_b<B>_<dtype>  the train step of configs/fashion_mnist_gpu.py and
#                              configs/cifar10.py at each batch and dtype (model and encoder),
#                              on a random-weight ConvEncoder; batch 256 first, then larger
#   stream_k0, stream_k1       the streaming loss at N = 65,536, D = 768
#   grid                       the drift loss at each loss.matmul_precision against the float64
#                              reference, and the official code's (OFFICIAL_DIR) likewise
# Output: OUT/table.md, OUT/results.json (every part's report and outcome) and
# OUT/parts.tar.gz (the per-part JSON and logs; KEEP_PARTS=1 also leaves OUT/parts/).
#
# Environment: OUT (required); DRY_RUN=1; OFFICIAL_DIR (a folder holding the official
# drift_loss.py); ONLY (a regex: run only the parts it matches); BUDGET_S; TRAIN_TIMEOUT_S,
# STREAM_TIMEOUT_S, GRID_TIMEOUT_S (per part); DATASETS, BATCHES, DTYPES (the train matrix);
# FASHION_MNIST_DIR, CIFAR10_DIR (real data where the folder exists, else random images: the
# step costs the same); WHEELS (a folder of wheels to install offline first, e.g.
# ml_collections); PEAK_TFLOPS (one device's peak for the MFU where the chip is not in
# benchmark.py's PEAK_TFLOPS); PYTHON (default python3).

set -uo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT" || exit 1
: "${OUT:?set OUT to the folder for the results}"
DRY_RUN="${DRY_RUN:-0}"
PY="${PYTHON:-python3}"
ONLY="${ONLY:-}"
PARTS="$OUT/parts"
mkdir -p "$PARTS" || exit 1
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1

if [[ -n "${WHEELS:-}" ]]; then
  site="$(mktemp -d)"
  "$PY" -m pip install -q --no-index --no-deps --no-compile --target "$site" "$WHEELS"/*.whl \
    || exit 1
  export PYTHONPATH="$PYTHONPATH:$site"
fi

FASHION_MNIST_DIR="${FASHION_MNIST_DIR:-/usr/share/datasets/fashion-mnist}"
CIFAR10_DIR="${CIFAR10_DIR:-}"
if [[ "$DRY_RUN" == 1 ]]; then
  BUDGET_S="${BUDGET_S:-1800}"
  TRAIN_TIMEOUT_S="${TRAIN_TIMEOUT_S:-300}"
  STREAM_TIMEOUT_S="${STREAM_TIMEOUT_S:-300}"
  GRID_TIMEOUT_S="${GRID_TIMEOUT_S:-300}"
  BATCHES="${BATCHES:-8 16}"
  STEPS=(--steps=2 --warmup=1)
  # A one-level U-Net, a one-stage encoder, few feature groups; XLA's CPU compiler unoptimised.
  TINY=(--random_encoder=8 --config.model.base_channels=8 --config.model.attention=False
        "--config.model.channel_mults=(1,)" --config.encoder.include_locations=False
        "--config.encoder.patch_sizes=(4,)")
  XLA_FLAGS="${XLA_FLAGS:-} --xla_backend_optimization_level=0"
  export XLA_FLAGS="$XLA_FLAGS --xla_llvm_disable_expensive_passes=true"
  STREAM=(--drift_dims=64 --drift_batch_sizes=256 --config.loss.block_size=64)
  STREAM_N=256 STREAM_D=64
  GRID=(--compare_shapes=1x16x8,2x16x4 --compare_steps=2)
else
  BUDGET_S="${BUDGET_S:-540}"
  TRAIN_TIMEOUT_S="${TRAIN_TIMEOUT_S:-120}"
  STREAM_TIMEOUT_S="${STREAM_TIMEOUT_S:-150}"
  GRID_TIMEOUT_S="${GRID_TIMEOUT_S:-150}"
  BATCHES="${BATCHES:-256 1024 2048}"
  STEPS=(--steps=5 --warmup=1)
  TINY=(--random_encoder=32,64,128)  # the widths of configs/encoder_fashion_mnist.py
  STREAM=(--drift_dims=768 --drift_batch_sizes=65536)
  STREAM_N=65536 STREAM_D=768
  GRID=(--compare_shapes=1x256x768,1x512x768,4x256x64 --compare_steps=5)
fi
DATASETS="${DATASETS:-fashion_mnist cifar10}"
DTYPES="${DTYPES:-float32 bfloat16}"
deadline=$(( $(date +%s) + BUDGET_S ))
order=0

# run_part NAME TIMEOUT_S META COMMAND...: runs COMMAND --json=PARTS/NAME.json under a timeout
# (cut to the budget left) and writes PARTS/NAME.status.json: the outcome, and META (JSON
# fields describing the part).
run_part() {
  local name="$1" limit="$2" meta="$3"
  shift 3
  [[ -n "$ONLY" && ! "$name" =~ $ONLY ]] && return 0
  local left=$(( deadline - $(date +%s) )) start rc=null status
  start=$(date +%s)
  if (( left < 20 )); then
    status="skipped (budget spent)"
    echo "== $name: skipped, $left s of the budget left"
  else
    (( limit > left )) && limit=$left
    echo "== $name (at most $limit s)"
    timeout -k 10 "$limit" "$@" --json="$PARTS/$name.json" >"$PARTS/$name.log" 2>&1
    rc=$?
    case $rc in
      0) status=ok ;;
      124|137) status="timed out" ;;
      *) status=failed ;;
    esac
    echo "   $status after $(( $(date +%s) - start )) s; log: $PARTS/$name.log"
  fi
  order=$(( order + 1 ))
  printf '{"part": "%s", "order": %d, "status": "%s", "rc": %s, "timeout_s": %d, ' \
    "$name" "$order" "$status" "$rc" "$limit" >"$PARTS/$name.status.json"
  printf '"seconds": %d, "dry_run": %s, %s}\n' "$(( $(date +%s) - start ))" \
    "$([[ "$DRY_RUN" == 1 ]] && echo true || echo false)" "$meta" >>"$PARTS/$name.status.json"
}

bench=("$PY" tools/benchmark.py)
peak=()
[[ -n "${PEAK_TFLOPS:-}" ]] && peak=("--peak_tflops=$PEAK_TFLOPS")

train() {  # train BATCH: every dataset and dtype at that batch
  local batch="$1" data dtype config source
  for data in $DATASETS; do
    case $data in
      fashion_mnist) config=configs/fashion_mnist_gpu.py; source="$FASHION_MNIST_DIR" ;;
      cifar10) config=configs/cifar10.py; source="$CIFAR10_DIR" ;;
      *) echo "unknown data set $data (DATASETS)"; continue ;;
    esac
    local input=(--synthetic_batch)
    if [[ -n "$source" && -e "$source" ]]; then
      input=("--config.data.data_dir=$source")
    fi
    for dtype in $DTYPES; do
      run_part "train_${data}_b${batch}_${dtype}" "$TRAIN_TIMEOUT_S" \
        "\"kind\": \"train\", \"data\": \"$data\", \"batch\": $batch, \"dtype\": \"$dtype\"" \
        "${bench[@]}" "--config=$config" --nodrift "${STEPS[@]}" "${TINY[@]}" "${input[@]}" \
        "${peak[@]}" \
        "--config.data.batch_size=$batch" "--config.model.dtype=$dtype" \
        "--config.encoder.dtype=$dtype"
    done
  done
}

for data in $DATASETS; do
  case $data in
    fashion_mnist) dir="$FASHION_MNIST_DIR" ;;
    cifar10) dir="$CIFAR10_DIR" ;;
    *) dir="" ;;
  esac
  if [[ -n "$dir" && -e "$dir" ]]; then
    echo "$data: images from $dir"
  else
    echo "$data: no data at '${dir}', random images (--synthetic_batch)"
  fi
done
if [[ -z "${OFFICIAL_DIR:-}" ]]; then
  echo "OFFICIAL_DIR not set: the loss grid runs without the official code"
fi
command -v nvidia-smi >/dev/null && nvidia-smi >"$PARTS/nvidia-smi.txt" 2>&1

batches=($BATCHES)
train "${batches[0]}"
for k in 0 1; do
  run_part "stream_k$k" "$STREAM_TIMEOUT_S" \
    "\"kind\": \"stream\", \"n\": $STREAM_N, \"d\": $STREAM_D, \"k\": $k" \
    "${bench[@]}" --config=configs/fashion_mnist.py --notrain_step "${STREAM[@]}" \
    "--drift_ks=$k" --drift_steps=2 --drift_warmup=0 --config.loss.field_impl=streaming
done
official=()
[[ -n "${OFFICIAL_DIR:-}" ]] && official=("--compare_official=$OFFICIAL_DIR")
run_part grid "$GRID_TIMEOUT_S" '"kind": "grid"' \
  "${bench[@]}" --config=configs/fashion_mnist.py "${GRID[@]}" \
  --compare_precisions=default,high,highest "${official[@]}"
for batch in "${batches[@]:1}"; do
  train "$batch"
done

timeout 120 "$PY" tools/gpu_bench_table.py "$OUT" || echo "gpu_bench_table.py failed"
tar -czf "$OUT/parts.tar.gz" -C "$OUT" parts
[[ "${KEEP_PARTS:-0}" == 1 ]] || rm -rf "$PARTS"
echo "wrote $OUT/table.md, $OUT/results.json and $OUT/parts.tar.gz"
