#!/usr/bin/env bash
# The GPU check, in one run of under 8 minutes on a machine with a CUDA GPU:
#   1. the CUDA tests (pytest -m cuda, with TESSERA_REQUIRE_GPU set: a CUDA test that skips fails);
#   2. Conv4d on CUDA: the forty unit-test configurations in fp32/fp16/bf16 against the CPU
#      float64 reference, then the Conv4d bench and torch.compile of the cnn4d
#      (bench/results/conv4d_cuda_correctness.json, bench/results/conv4d_cuda.json);
#   3. onnxruntime's CUDA provider on the cnn4d by batch size, per cuDNN algorithm search
#      (bench/results/ort_cuda_probe.json);
#   4. serve_bench for the cnn4d with onnxruntime's CUDA provider: batching on against off,
#      served against in-process (bench/results/serve_bench_cuda.json).
# Every step runs even when an earlier one failed; the script then fails naming each failed
# step, and bench/results/gpu_check.json records each step's exit status and seconds.
# It fails at once, with a message, when there is no usable GPU: asked to run, it never skips.
#
#     bench/gpu_check.sh            # from the repository root; PYTHON overrides .venv/bin/python
set -uo pipefail

cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv/bin/python}
export PYTHONPATH="$PWD/src:$PWD/clients/python/src${PYTHONPATH:+:$PYTHONPATH}"
export TESSERA_REQUIRE_GPU=1 PYTHONUNBUFFERED=1
RESULTS=bench/results
started=$(date +%s)
failed=()
steps=()

fail() {
    echo "gpu_check: FAILED: $*" >&2
    exit 1
}

# run_step NAME SECONDS COMMAND...: runs COMMAND under a cap, records its status and time.
run_step() {
    local name=$1 cap=$2 begun status
    shift 2
    begun=$(date +%s)
    echo "gpu_check: [$((begun - started)) s] $name"
    timeout "$cap" "$@"
    status=$?
    [ "$status" -eq 124 ] && echo "gpu_check: $name ran past its $cap s cap" >&2
    [ "$status" -ne 0 ] && failed+=("$name (exit $status)")
    steps+=("{\"step\": \"$name\", \"exit\": $status, \"seconds\": $(($(date +%s) - begun)), \"cap_s\": $cap}")
}

command -v nvidia-smi >/dev/null || fail "nvidia-smi not found: this machine has no NVIDIA driver, so no CUDA GPU to check"
gpu=$(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader) ||
    fail "nvidia-smi sees no GPU"
echo "gpu_check: $gpu"
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

run_step "CUDA tests" 150 "$PYTHON" -m pytest -q -p no:cacheprovider -m cuda -rs tests
run_step "Conv4d on CUDA" 240 "$PYTHON" bench/gpu_check_conv4d.py --compile-timeout 90
run_step "onnxruntime CUDA probe" 60 "$PYTHON" bench/ort_cuda_probe.py
run_step "serve_bench cnn4d on CUDA" 150 "$PYTHON" bench/serve_bench.py --models cnn4d --device cuda:0 \
    --concurrency 1 8 32 --seconds 1.5 --repeats 3 --out "$RESULTS/serve_bench_cuda.json"

total=$(($(date +%s) - started))
{
    printf '{"gpu": "%s", "seconds": %d, "steps": [' "$gpu" "$total"
    (IFS=,; printf '%s' "${steps[*]}")
    printf ']}\n'
} >"$RESULTS/gpu_check.json"
if [ ${#failed[@]} -gt 0 ]; then
    printf 'gpu_check: FAILED after %d s: %s\n' "$total" "$(IFS=';'; echo "${failed[*]}")" >&2
    exit 1
fi
echo "gpu_check: passed in $total s; figures in $RESULTS/conv4d_cuda*.json and $RESULTS/serve_bench_cuda.json"
