#!/usr/bin/env bash
# All GPU checks in one go, for a machine with a CUDA card (the device tool's H100/H200):
#   1. the test suite with CUDA visible (AMP/bf16/channels_last paths run for real),
#   2. make bench for resnet50 and convnext_tiny at 224 px (bf16, channels_last),
#   3. the digits demo on the GPU.
# Results land in $OUT (or ./gpu-check) as logs plus runs/bench/latest.json.
set -uo pipefail
OUT=${OUT:-gpu-check}
mkdir -p "$OUT"
export KAGGLECV_NO_PROGRESS=1
# The device image has torch, timm, pandas, scikit-learn, rich and opencv; the rest comes as wheels
# built here beforehand and carried along (the machine has no internet):
#   .venv/bin/pip download -d gpu-wheels albumentations albucore simsimd stringzilla pydantic kaggle six
#   then run this script with carry=["gpu-wheels"]
if [ -d gpu-wheels ]; then
  python -m pip install -q --no-index --find-links gpu-wheels albumentations kaggle six >"$OUT/install.log" 2>&1
fi
python -m pip install -q --no-deps --no-build-isolation -e . >>"$OUT/install.log" 2>&1 || true
nvidia-smi >"$OUT/nvidia-smi.txt" 2>&1
python -m pytest -q -x tests/test_gpu.py tests/test_finetune.py tests/test_end_to_end.py >"$OUT/tests.log" 2>&1; echo "tests rc=$?"
python -m kagglecv.cli bench --models resnet50,convnext_tiny --img-size 224 --batch-size 128 --images 2048 \
  --batches 30 >"$OUT/bench.log" 2>&1; echo "bench rc=$?"
cp runs/bench/latest.json "$OUT/bench.json" 2>/dev/null
python -m kagglecv.cli demo >"$OUT/demo.log" 2>&1; echo "demo rc=$?"
tail -5 "$OUT/bench.log" "$OUT/demo.log"
