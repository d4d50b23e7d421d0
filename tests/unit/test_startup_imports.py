"""Starting the daemon or the CLI imports no torch, onnx or onnxruntime: they cost seconds of
CPU at every start and are imported by the code that trains, exports or serves with them."""

from __future__ import annotations

import subprocess
import sys

import pytest

HEAVY = ("torch", "onnx", "onnxruntime")


@pytest.mark.parametrize("module", ["tesserad.server", "tesserad.cli", "tessera.entry"])
def test_importing_an_entry_point_imports_no_torch_or_onnx(module: str) -> None:
    code = f"import sys, {module}; print(' '.join(name for name in {HEAVY!r} if name in sys.modules))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == ""


def test_the_nn_specs_import_no_torch() -> None:
    code = "import sys, tesserad.nn.specs; print('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"
