#!/usr/bin/env bash
# Every GPU check in one go, for the device tool's H100/H200 (python3 3.12 with torch, timm, pandas,
# scikit-learn, rich, opencv; no internet):
#   1. the CUDA tests (tests/test_gpu.py: bf16/fp16 autocast, GradScaler, compile, resume on the card)
#      and the fast end-to-end tests with the GPU visible,
#   2. kagglecv bench for resnet50 and convnext_tiny at 224 px (bf16, channels_last),
#   3. the digits demo on the GPU.
# Logs and runs/bench/latest.json land in $OUT (or ./gpu-check).
#
# What the image lacks travels as Python 3.12 wheels in .whl/ (git-ignored via .git/info/exclude):
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
#     --platform manylinux2014_x86_64 -d .whl albumentations==2.0.8 albucore==0.0.24 simsimd==6.5.16 \
#     stringzilla==5.3.2 pydantic==2.14.4 pydantic_core==2.50.5 annotated-types==0.8.0 \
#     typing-inspection==0.4.5 typing_extensions==4.16.0 ImageHash==4.3.2 PyWavelets==1.9.0 \
#     cleanlab==2.9.0 termcolor==3.3.0 tqdm==4.70.1
# (cleanlab: the report's suspect labels, which the demo writes)
# then: run(command="bash scripts/gpu_check.sh", carry=[".whl"], timeout_s=600)
set -uo pipefail
OUT=${OUT:-gpu-check}
mkdir -p "$OUT"
export KAGGLECV_NO_PROGRESS=1 NO_ALBUMENTATIONS_UPDATE=1
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    >"$OUT/install.log" 2>&1 || { echo "wheel install failed:"; tail -5 "$OUT/install.log"; exit 1; }
  export PYTHONPATH=/tmp/site
fi
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
python3 -c "import albumentations, cleanlab, timm, torch, kagglecv.cli, kagglecv.report.page; print('torch', torch.__version__, 'timm', timm.__version__, 'cuda', torch.cuda.is_available())" \
  || { echo "imports failed"; exit 1; }
nvidia-smi >"$OUT/nvidia-smi.txt" 2>&1

stage() {  # stage NAME SECONDS CMD...: run with a time limit, keep the log, print the outcome
  local name=$1 limit=$2; shift 2
  local t0=$SECONDS
  timeout "$limit" "$@" >"$OUT/$name.log" 2>&1
  echo "$name: rc=$? in $((SECONDS - t0)) s"
}
stage tests 200 python3 -m pytest -q -m "not slow" -p no:cacheprovider tests/test_gpu.py tests/test_end_to_end.py
stage bench 200 python3 -m kagglecv bench --models resnet50,convnext_tiny --img-size 224 --batch-size 128 \
  --images 2048 --batches 30
cp runs/bench/latest.json "$OUT/bench.json" 2>/dev/null
stage demo 120 python3 -m kagglecv demo
tail -n 4 "$OUT/tests.log"; tail -n 12 "$OUT/bench.log"; tail -n 4 "$OUT/demo.log"
