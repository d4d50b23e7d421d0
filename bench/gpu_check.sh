#!/usr/bin/env bash
# The GPU check, in one run of under 8 minutes on a machine with a CUDA GPU:
#   1. the CUDA tests (pytest -m cuda);
#   2. the Conv4d bench on CUDA (bench/results/conv4d_cuda.json);
#   3. serve_bench for the cnn4d with onnxruntime's CUDA provider: batching on against off,
#      served against in-process (bench/results/serve_bench_cuda.json).
# It fails, with a message, when there is no usable GPU: asked to run, it never skips.
#
#     bench/gpu_check.sh            # from the repository root; PYTHON overrides .venv/bin/python
set -euo pipefail

cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv/bin/python}
export PYTHONPATH="$PWD/src:$PWD/clients/python/src${PYTHONPATH:+:$PYTHONPATH}"
RESULTS=bench/results
started=$(date +%s)

fail() {
    echo "gpu_check: FAILED: $*" >&2
    exit 1
}

step() {
    echo "gpu_check: [$(($(date +%s) - started)) s] $*"
}

command -v nvidia-smi >/dev/null || fail "nvidia-smi not found: this machine has no NVIDIA driver, so no CUDA GPU to check"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader ||
    fail "nvidia-smi sees no GPU"
"$PYTHON" - <<'EOF' || fail "torch or onnxruntime cannot use the GPU (see above); install the CUDA builds"
import sys

import onnxruntime
import torch

problems = []
if not torch.cuda.is_available():
    problems.append(f"torch {torch.__version__} sees no CUDA device")
if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
    problems.append(
        f"onnxruntime {onnxruntime.__version__} has no CUDAExecutionProvider "
        f"(providers: {', '.join(onnxruntime.get_available_providers())}); install onnxruntime-gpu"
    )
for problem in problems:
    print(problem, file=sys.stderr)
if not problems:
    print(f"torch {torch.__version__} on {torch.cuda.get_device_name(0)}; onnxruntime {onnxruntime.__version__} with CUDA")
sys.exit(1 if problems else 0)
EOF
mkdir -p "$RESULTS"

step "CUDA tests (pytest -m cuda)"
timeout 180 "$PYTHON" -m pytest -q -p no:cacheprovider -m cuda -rs tests ||
    fail "the CUDA tests failed (or ran past 180 s)"

step "Conv4d bench on CUDA"
timeout 150 "$PYTHON" bench/conv4d_bench.py --device cuda --quick ||
    fail "the Conv4d bench on CUDA failed (or ran past 150 s)"
[ -s "$RESULTS/conv4d_cuda.json" ] || fail "the Conv4d bench wrote no $RESULTS/conv4d_cuda.json"

step "serve_bench: cnn4d on the CUDA provider"
timeout 240 "$PYTHON" bench/serve_bench.py --models cnn4d --device cuda:0 --concurrency 1 8 32 \
    --seconds 1.5 --repeats 3 --out "$RESULTS/serve_bench_cuda.json" ||
    fail "serve_bench on CUDA failed (or ran past 240 s)"

step "done: $RESULTS/conv4d_cuda.json and $RESULTS/serve_bench_cuda.json"
