#!/usr/bin/env bash
# The literature's ACDC protocol in one GPU slot (issue 17): one command, one wall budget, one output folder.
#
#   bash scripts/gpu_protocol.sh OUT_DIR            # BUDGET_S=480 by default (seconds, this script's start to end)
#
# With the device tool (prepare the carried files first: bash scripts/prepare_gpu_carry.sh):
#   run(command="bash scripts/gpu_protocol.sh $OUT", carry=[".cache/gpu_wheels", ".cache/acdc_8bit.tar.xz"],
#       timeout_s=600)
#
# Steps (scripts/gpu_protocol.py holds the logic and the budget arithmetic; every step is time-limited):
#   1. the wheels the GPU image lacks (.cache/gpu_wheels: monai, pytorch-ignite, nibabel, fire, termcolor) are
#      installed into /tmp/site; environment (nvidia-smi, versions)
#   2. CUDA / speed-path tests (tests/speed, QPM and quantizer tests)
#   3. the ACDC archive (.cache/acdc_8bit.tar.xz) unpacked once by a dry run of scripts/benchmark_acdc.py
#   4. the speed table (scripts/benchmark_speed.py): U-Net and ViT, fp32 and bf16 + channels-last, QPM eps 0.1 / 0.7,
#      then the torch.compile'd U-Net step
#   5. calibration: every variant trained CAL_ITERS iterations side by side on the GPU and evaluated, through
#      `benchmark_acdc.py run` (its CLI only): per-iteration time under sharing, validation, start-up, evaluation
#   6. plan: iterations = floor((time left - start-up - evaluation - packing - margin)
#                               / (VAL_EVERY x slowest per-iteration time + validation time)) x VAL_EVERY
#   7. the variants (default labeled_only, unimatch, vq_unimatch_qpm_dropout_guarded; 3 labeled patients; 256 px)
#      trained side by side for that many iterations, same schedule for all, each teacher evaluated on the 20
#      validation volumes by configs/evaluate.yaml
#   8. OUT_DIR receives at most 8 files of at most 16 MiB: summary.md, results.json, protocol.tar.gz (tables,
#      curves, logs, run records), model.pt + model.json (the best teacher), protocol.log
#
# Knobs (environment): BUDGET_S, DEVICE (cuda | cpu), VARIANTS, LABELED, SEED, VAL_EVERY, CAL_ITERS, PARALLEL,
# PRECISION (auto | fp32 | tf32 | bf16_cl), TRAIN_EXTRA (config overrides, a Python / JSON dict), TESTS=0,
# TESTS_S, SPEED_S, COMPILE_S, BACKBONES, SPEED_VARIANTS, SPEED_EPS, SPEED_ITERS, SPEED_WARMUP, BENCH_SET,
# DATASET_ARCHIVE, DATASET_DIR, WORK (scratch folder, emptied; default /tmp/vqseg_gpu_protocol), PYTHON.
# CPU smoke run (what tests/speed/test_speed_gpu_protocol.py does): DEVICE=cpu BUDGET_S=150 TESTS=0 ... (see there).
set -uo pipefail
PROTOCOL_T0=$(date +%s.%N)
export PROTOCOL_T0
OUT=${1:-${OUT:-outputs/gpu_protocol}}
cd "$(dirname "$0")/.." || exit 2
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
export PYTHONUNBUFFERED=1
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
PY=${PYTHON:-python3}

# find_spec, not import: importing monai (and torch) here would cost seconds of the budget
HAVE="import importlib.util as u, sys; sys.exit(any(u.find_spec(m) is None for m in ('monai', 'ignite', 'nibabel', 'fire')))"
if ! $PY -c "$HAVE"; then
    if ls .cache/gpu_wheels/*.whl >/dev/null 2>&1; then
        echo "installing $(find .cache/gpu_wheels -name '*.whl' | wc -l) carried wheels into /tmp/site"
        $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
            .cache/gpu_wheels/*.whl || exit 2
        export PYTHONPATH="$PYTHONPATH:/tmp/site"
    else
        echo "monai / ignite / nibabel / fire missing and no .cache/gpu_wheels to install them from" >&2
        echo "(run bash scripts/prepare_gpu_carry.sh here and carry .cache/gpu_wheels)" >&2
        exit 2
    fi
fi

if [ -z "${DATASET_ARCHIVE:-}" ] && [ -z "${DATASET_DIR:-}" ]; then
    for a in .cache/acdc_8bit.tar.xz ../shared/data/acdc_8bit.tar.xz; do
        if [ -f "$a" ]; then
            DATASET_ARCHIVE=$a
            break
        fi
    done
    if [ -z "${DATASET_ARCHIVE:-}" ]; then
        if [ -d ../shared/data/acdc ]; then DATASET_DIR=../shared/data/acdc; else DATASET_DIR=demo; fi
    fi
fi
export DATASET_ARCHIVE=${DATASET_ARCHIVE:-} DATASET_DIR=${DATASET_DIR:-}
echo "dataset: ${DATASET_ARCHIVE:-$DATASET_DIR}; output: $OUT; budget ${BUDGET_S:-480} s"

$PY scripts/gpu_protocol.py "$OUT"
