#!/usr/bin/env bash
# GPU checks of the fast VQ-Seg training path, in one command (about 6-8 minutes on one H100 / H200).
#
#   bash scripts/gpu_checks.sh
#
# With the device tool: run(command="bash scripts/gpu_checks.sh", carry=[".cache/gpu_wheels"], timeout_s=600).
# .cache/gpu_wheels holds the pure-python wheels the GPU image lacks (monai 1.6.1, pytorch-ignite 0.5.5,
# nibabel 5.4.2, fire 0.7.1, termcolor 3.3.0), fetched by `bash scripts/prepare_gpu_carry.sh`, i.e.
#   python -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#       --platform manylinux2014_x86_64 --platform any -d .cache/gpu_wheels monai==1.6.1 pytorch-ignite==0.5.5 \
#       nibabel==5.4.2 fire==0.7.1 termcolor==3.3.0
# The whole literature protocol (these checks, the speed table and the ACDC headline variants trained inside one
# budget) is scripts/gpu_protocol.sh.
#
# Steps (each under its own time limit, so one slow step cannot eat the others' time):
#   1. environment (nvidia-smi, torch, CUDA)                                  -> $OUT/env.txt
#   2. correctness: tests/speed (distribution of the batched augmentation vs MONAI, loss equivalence,
#      CUDA vs CPU, no host sync in the device loader) + tests/networks QPM / quantizer -> $OUT/checks.log
#   3. speed: both backbones at default batch / size, QPM eps 0.1 and 0.7, fp32, TF32 and bf16 + channels-last,
#      batched on-device data, validation amortised                           -> $OUT/bench_main.{txt,json}
#   4. the same U-Net step with the MONAI DataLoader path (8 workers), for the before / after figure
#                                                                             -> $OUT/bench_monai.{txt,json}
#   5. torch.compile of the U-Net step (bf16 + channels-last); compile time is in run_s
#                                                                             -> $OUT/bench_compile.{txt,json}
set -uo pipefail
cd "$(dirname "$0")/.." || exit 2
OUT=${OUT:-outputs/gpu_checks}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
PY=${PYTHON:-python3}
if ! $PY -c "import monai, ignite, nibabel" 2>/dev/null; then
    if ls .cache/gpu_wheels/*.whl >/dev/null 2>&1; then
        $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .cache/gpu_wheels/*.whl \
            && export PYTHONPATH="$PYTHONPATH:/tmp/site"
    else
        echo "monai / ignite / nibabel missing and no .cache/gpu_wheels to install them from" >&2
        exit 2
    fi
fi
CACHE=/tmp/vqseg_demo_data
# smoke-testing this script without a GPU: SKIP_TESTS=1 SKIP_COMPILE=1 DEVICE=cpu ITERS=1 WARMUP=1 BACKBONES=unet \\
#     BENCH_SET='{"image_size": 32, ...}' PYTHON=.venv/bin/python bash scripts/gpu_checks.sh
DEVICE=${DEVICE:-cuda}
ITERS=${ITERS:-30}
WARMUP=${WARMUP:-5}
BACKBONES=${BACKBONES:-unet,vit}
SET=()
if [ -n "${BENCH_SET:-}" ]; then SET=(--set "$BENCH_SET"); fi

{
    date -u
    nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv 2>&1
    $PY -c "import torch, monai; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'monai', monai.__version__, 'device', torch.cuda.get_device_name(0))"
} 2>&1 | tee "$OUT/env.txt"

echo "== correctness" | tee "$OUT/checks.log"
[ -n "${SKIP_TESTS:-}" ] || timeout 150 "$PY" -m pytest -q -p no:cacheprovider tests/speed tests/networks/test_net_qpm.py tests/networks/test_net_quantizer.py 2>&1 | tail -25 | tee -a "$OUT/checks.log"

echo "== speed: main table" | tee -a "$OUT/checks.log"
timeout 300 "$PY" scripts/benchmark_speed.py --device "$DEVICE" --inprocess --backbone "$BACKBONES" --eps 0.1,0.7 \
    --variants fp32,tf32,bf16_cl --data batched --warmup "$WARMUP" --iterations "$ITERS" --validation --data_cache_dir "$CACHE" "${SET[@]}" \
    --json "$OUT/bench_main.json" 2>&1 | tee "$OUT/bench_main.txt" | grep -v "^# done"

echo "== speed: MONAI DataLoader path (before)" | tee -a "$OUT/checks.log"
timeout 90 "$PY" scripts/benchmark_speed.py --device "$DEVICE" --inprocess --backbone unet --eps 0.7 --variants fp32,bf16_cl \
    --data monai --num_workers 8 --warmup "$WARMUP" --iterations "$ITERS" --data_cache_dir "$CACHE" "${SET[@]}" \
    --json "$OUT/bench_monai.json" 2>&1 | tee "$OUT/bench_monai.txt" | grep -v "^# done"

echo "== speed: torch.compile" | tee -a "$OUT/checks.log"
[ -n "${SKIP_COMPILE:-}" ] || timeout 200 "$PY" scripts/benchmark_speed.py --device "$DEVICE" --inprocess --backbone unet --eps 0.7 --variants bf16_cl_compile \
    --data batched --warmup "$WARMUP" --iterations "$ITERS" --data_cache_dir "$CACHE" "${SET[@]}" \
    --json "$OUT/bench_compile.json" 2>&1 | tee "$OUT/bench_compile.txt" | grep -v "^# done"
echo "done; results in $OUT"
