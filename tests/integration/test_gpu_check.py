"""bench/gpu_check.sh asked to run where there is no GPU fails loudly, and under it (with
TESSERA_REQUIRE_GPU set) a CUDA test that would skip fails instead."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
CUDA_TEST = "tests/unit/nn/test_conv4d.py::test_cuda_benchmark_mode_and_backward"


def test_gpu_check_fails_with_a_message_without_a_driver(tmp_path: Path) -> None:
    # A PATH holding only what the script needs besides nvidia-smi.
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("bash", "dirname", "date", "timeout", "mkdir", "cat", "env"):
        found = subprocess.run(["which", tool], capture_output=True, text=True, check=True).stdout.strip()
        (bin_dir / tool).symlink_to(found)
    result = subprocess.run(
        ["bash", str(ROOT / "bench" / "gpu_check.sh")],
        env={"PATH": str(bin_dir), "PYTHON": sys.executable},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 1
    assert "gpu_check: FAILED: nvidia-smi not found" in result.stderr


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks what happens without a GPU")
def test_a_cuda_test_that_skips_fails_when_a_gpu_is_required() -> None:
    # Without TESSERA_REQUIRE_GPU the same test skips: the suite's own run of it shows that.
    required = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "cuda", CUDA_TEST],
        cwd=ROOT,
        env={**os.environ, "COLUMNS": "300", "TESSERA_REQUIRE_GPU": "1"},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert required.returncode == 1
    assert "skipped although TESSERA_REQUIRE_GPU is set: needs a CUDA GPU" in required.stdout
