#!/usr/bin/env bash
# The GPU check, prepared to run in one call on a lent GPU machine (issues 4 and 6):
#   bash tools/gpu/gpu_check.sh [BUDGET_SECONDS]      (from the repository root)
# Stages run in order of importance; each is skipped when too little of the budget is left, so
# a slow stage costs the ones after it, never the log. Everything is printed and kept under
# $OUT (log.txt, the benchmarks' JSON, the end-to-end run folders as a tarball).
# Needs torch with CUDA, h5py, click, matplotlib, joblib, tqdm, scikit-learn; nibabel and isal
# are installed from .whl/ when that folder exists (the device machine has no package index;
# `bash tools/gpu/fetch_wheels.sh` fills it).
# Environment: STAGES="environment bench-train ..." runs only those; BENCH_PATHS (fp32,bf16,pad8);
# GPU_TESTS_K (a pytest -k filter); SMALL=1 toy sizes and NO_WHEELS=1 to rehearse on a CPU;
# INPUT_POOL=K passed to `make experiments` (6 at BraTS geometry is what the 120x120 CPU runs
# point to: studies/geometry_and_pooling/README.md).
set -u
BUDGET=${1:-430}
cd "$(dirname "$0")/../.." || exit 1  # the repository root
START=$SECONDS
OUT=${OUT:-/tmp/smri-gpu-check}
mkdir -p "$OUT"
exec > >(tee -a "$OUT/log.txt") 2>&1
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export SMRI_BENCH_DIR=/tmp/smri-bench
PY=${PY:-python3}
JOBS=$(nproc)
# SMALL=1: the same stages at toy sizes, to rehearse the script on a CPU machine
if [ "${SMALL:-0}" = 1 ]; then N=16 VOLUME="16 32 32" XYZ="32 32 155" PREP=8; else
  N=64 VOLUME="32 240 240" XYZ="240 240 155" PREP=32; fi

if [ -d .whl ] && [ "${NO_WHEELS:-0}" != 1 ]; then  # NO_WHEELS=1: use what is installed
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH="$PYTHONPATH:/tmp/site"
fi

left() { echo $((BUDGET - (SECONDS - START))); }

stage() {  # stage NAME SECONDS_NEEDED COMMAND...
  local name=$1 need=$2 l t0 rc
  shift 2
  l=$(($(left) - 8))  # 8 s kept for packing what the last stage left
  if ((l < need)); then
    echo "== $name: SKIPPED ($l s of the budget left, needs $need)"
    return 0
  fi
  echo "== $name (at $((SECONDS - START)) s)"
  t0=$SECONDS
  timeout --kill-after=10 "$l" "$@"
  rc=$?
  echo "== $name: exit $rc after $((SECONDS - t0)) s"
}

environment() {
  df -h /dev/shm /tmp | tail -2
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.mem --format=csv
  $PY -c "import torch, h5py, nibabel, isal, smri
print('torch', torch.__version__, 'cuda', torch.version.cuda, 'cudnn', torch.backends.cudnn.version())
print(torch.cuda.get_device_name(), torch.cuda.mem_get_info())
print('h5py', h5py.__version__, 'nibabel', nibabel.__version__, 'isal', isal.__version__)"
  echo "cores: $JOBS"
}

end_to_end() {  # the real CLI on a BraTS-size synthetic cohort: preprocess, train x2, evaluate, predict
  local root store e2e=/tmp/smri-e2e t0
  root=$($PY -c "import sys; from benchmarks.common import cohort
print(cohort(int(sys.argv[1]), [int(v) for v in sys.argv[2:]]))" "$N" $XYZ | tail -1) || return 1
  rm -rf "$e2e" && mkdir -p "$e2e" && store=$e2e/store.h5
  t0=$(date +%s%N)
  $PY -m smri preprocess "$root" "$store" --jobs "$JOBS" || return 1
  echo "preprocess: $N patients in $((($(date +%s%N) - t0) / 1000000)) ms with $JOBS jobs"
  $PY -m smri info "$store"
  for cache in auto none; do
    $PY -m smri train "$store" --model cnn2 --epochs 6 --batch-size 8 --cache "$cache" \
      --workers 8 --out "$e2e/cnn2-$cache" || return 1
    cat "$e2e/cnn2-$cache/metrics.csv"
  done
  $PY -m smri evaluate "$e2e/cnn2-auto/best.pt" "$store" --out "$e2e/eval" || return 1
  $PY -m smri predict "$e2e/cnn2-auto/best.pt" "$(ls -d "$root"/HGG/* | head -1)" \
    "$(ls -d "$root"/LGG/* | head -1)" || return 1
  tar -czf "$OUT/e2e_runs.tar.gz" -C "$e2e" --exclude='*.pt' cnn2-auto cnn2-none eval
}

experiments() {  # `make experiments` with the machine's own python (no .venv: no index there)
  local bin quick
  bin=$(dirname "$(command -v "$PY")")
  quick=$([ "${SMALL:-0}" = 1 ] && echo 1 || echo 0)
  touch /tmp/smri-stamp  # stands in for the .venv stamp, so make installs nothing
  make experiments QUICK="$quick" STAMP=/tmp/smri-stamp BIN="$bin" SMRI="$PY -m smri" \
    HAS_GPU="$($PY -c 'import torch; print(int(torch.cuda.is_available()))')" \
    OUT=/tmp/smri-results JOBS="$JOBS" INPUT_POOL="${INPUT_POOL:-}"
}

pack() {  # whatever the experiments finished, without checkpoints, cohort or store
  tar -czf "$OUT/results.tar.gz" -C /tmp/smri-results --exclude='*.pt' --exclude=demo \
    --exclude=store.h5 .
}

want() { [ -z "${STAGES:-}" ] || [[ " $STAGES " == *" $1 "* ]]; }  # STAGES="a b": only those
run() { if want "$1"; then stage "$@"; fi; }

export PY JOBS OUT N XYZ SMALL INPUT_POOL
export -f environment end_to_end experiments pack  # `timeout` runs commands: functions via bash -c
run environment 10 bash -c environment
run gpu-tests 60 $PY -m pytest -q -p no:cacheprovider tests/system/test_gpu.py -k "${GPU_TESTS_K:-}"
run bench-train 150 $PY -m benchmarks.bench_train $N $VOLUME \
  --paths "${BENCH_PATHS:-fp32,bf16,pad8}" --json "$OUT/bench_train.json"
run profile 30 $PY -m studies.gpu_training_step.profile_step cnn2 $VOLUME
run end-to-end 90 bash -c end_to_end
run bench-compile 150 $PY -m benchmarks.bench_train $N $VOLUME --paths compile \
  --models cnn2,cnn1,cnn3 --json "$OUT/bench_compile.json"
run bench-input 90 $PY -m benchmarks.bench_input $N $XYZ
# preprocessing on all the host's cores: each fast path against the plain path (one round)
run bench-preprocess 120 $PY -m benchmarks.bench_preprocess $PREP 1 $XYZ
run experiments 200 bash -c experiments
run pack 1 bash -c pack
run all-tests 150 $PY -m pytest -q -p no:cacheprovider -m "not slow" -x
echo "== done at $((SECONDS - START)) s of $BUDGET"
