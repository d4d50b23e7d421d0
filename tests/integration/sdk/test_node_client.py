"""The Node.js client (clients/node) against a real daemon: list models and Predict."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

NODE_CLIENT = Path(__file__).resolve().parents[3] / "clients" / "node"


def run_node(target: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["node", str(NODE_CLIENT / "cli.js"), "--target", target, *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.fixture
def node_ready() -> None:
    if shutil.which("node") is None:
        pytest.skip("node is not installed; install Node.js 18+ to test clients/node")
    if not (NODE_CLIENT / "node_modules" / "@grpc" / "grpc-js").is_dir():
        pytest.skip("clients/node/node_modules is missing; run `npm ci` in clients/node")


def test_node_client_lists_models_and_predicts(node_ready, daemon, client, onnx_file):
    client.models.push("affine", onnx_file, alias="production")
    client.inference.load("affine")

    listed = run_node(daemon.target, "models")
    assert listed.returncode == 0, listed.stderr
    (model,) = json.loads(listed.stdout)
    assert model["name"] == "affine" and model["latest_version"] == 1

    inputs = {"input": {"dtype": "DATA_TYPE_FLOAT32", "shape": [2, 4], "values": list(range(8))}}
    predicted = run_node(daemon.target, "predict", "affine", json.dumps(inputs), "--alias", "production")
    assert predicted.returncode == 0, predicted.stderr
    result = json.loads(predicted.stdout)
    output = result["outputs"]["output"]
    assert result["version"] == 1 and output["shape"] == [2, 4]
    np.testing.assert_allclose(output["values"], np.arange(8) * 2 + 1)


def test_node_client_reports_the_daemon_error_and_exits_non_zero(node_ready, daemon):
    inputs = {"input": {"dtype": "DATA_TYPE_FLOAT32", "shape": [1, 4], "values": [0, 0, 0, 0]}}
    failed = run_node(daemon.target, "predict", "absent", json.dumps(inputs))
    assert failed.returncode == 1
    assert failed.stderr.startswith("tessera-node: NOT_FOUND: ")
    assert "absent" in failed.stderr


def test_node_client_version_is_digits_0_to_9(node_ready, daemon, client, onnx_file):
    """Number() also reads "0x1", "1e0" and " 1" as 1 and "" as 0 (the latest version)."""
    client.models.push("affine", onnx_file)
    inputs = json.dumps({"input": {"dtype": "DATA_TYPE_FLOAT32", "shape": [1, 4], "values": [0, 0, 0, 0]}})
    for text in ("0x1", "1e0", " 1", "", "\u0663", str(2**64)):
        failed = run_node(daemon.target, "predict", "affine", inputs, "--version", text)
        assert failed.returncode == 1, (text, failed.stdout)
        assert failed.stderr.startswith("tessera-node: --version must be a whole number"), failed.stderr
    predicted = run_node(daemon.target, "predict", "affine", inputs, "--version", "1")
    assert predicted.returncode == 0, predicted.stderr
    assert json.loads(predicted.stdout)["version"] == 1
