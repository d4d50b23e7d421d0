"""The Node.js client (clients/node) against a real daemon: list models and Predict, each call
within a deadline (the Python SDK's rule: a timeout left out takes the default, and one not
above 0 is refused before anything is sent)."""

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


def run_node_script(script: str, target: str) -> subprocess.CompletedProcess[str]:
    """`script` with `Client` (clients/node/tessera.js) in scope and `target` as TARGET."""
    prelude = f"const {{ Client }} = require({json.dumps(str(NODE_CLIENT / 'tessera.js'))});\n"
    prelude += f"const TARGET = {json.dumps(target)};\n"
    return subprocess.run(
        ["node", "-e", prelude + script], capture_output=True, text=True, timeout=60, check=False
    )


def test_node_client_refuses_a_timeout_not_above_0(node_ready, daemon):
    """0 took the default (`timeoutMs || 30000`); NaN and a negative one no deadline to speak of."""
    refused = run_node_script(
        """
        const values = [0, -1, NaN, Infinity, '5', 1e13];
        for (const timeoutMs of values) {
          try {
            new Client(TARGET, { timeoutMs });
            console.log(`constructed with ${timeoutMs}`);
          } catch (err) {
            console.log(err.name);
          }
        }
        const client = new Client(TARGET);
        const calls = [
          client.info({ timeoutMs: 0 }),
          client.listModels('', { timeoutMs: 0 }),
          client.predict('absent', {}, { timeoutMs: -5 }),
        ];
        Promise.allSettled(calls).then((results) => {
          for (const result of results) console.log(result.status, result.reason && result.reason.name);
          client.close();
        });
        """,
        daemon.target,
    )
    assert refused.returncode == 0, refused.stderr
    assert refused.stdout.split("\n") == [*(["RangeError"] * 6), *(["rejected RangeError"] * 3), ""]
    for text in ("0", "-1", "nan", "Infinity", "", "0x10", "1e3"):
        failed = run_node(daemon.target, "--timeout", text, "info")
        assert failed.returncode == 1, (text, failed.stdout)
        assert failed.stderr.startswith("tessera-node: --timeout must be seconds above 0"), failed.stderr


def test_node_client_calls_end_at_their_deadline(node_ready, daemon, client, onnx_file):
    # A lone request waits 10 s for more rows to batch with: a model for each call, so that
    # neither is batched with the other.
    for model in ("affine", "affine-too"):
        client.models.push(model, onnx_file)
        client.inference.load(model, max_batch_size=8, max_queue_delay_us=10_000_000)
    inputs = json.dumps({"input": {"dtype": "DATA_TYPE_FLOAT32", "shape": [1, 4], "values": [0, 0, 0, 0]}})
    failed = run_node(daemon.target, "--timeout", "0.5", "predict", "affine", inputs)
    assert failed.returncode == 1
    assert failed.stderr.startswith("tessera-node: DEADLINE_EXCEEDED: "), failed.stderr
    per_call = run_node_script(
        f"""
        const client = new Client(TARGET);
        const inputs = {inputs};
        client.predict('affine-too', inputs, {{ timeoutMs: 500 }}).then(
          () => console.log('answered'),
          (err) => console.log(err.code),
        ).finally(() => client.close());
        """,
        daemon.target,
    )
    assert (per_call.returncode, per_call.stdout) == (0, "DEADLINE_EXCEEDED\n"), per_call.stderr
