"""`--json` is for scripts: every 64-bit integer is a number (as the 32-bit ones and the CLI's
own figures are), enum values are lowercase words, and the output stays valid JSON when a value
is NaN or infinite."""

from __future__ import annotations

import json
import tomllib

import numpy as np
import pytest

from tests.integration.cli.test_cli_follow import JOB_SPEC
from tests.integration.sdk.affine import affine_onnx


@pytest.fixture
def model_file(tmp_path):
    return affine_onnx(tmp_path / "affine.onnx")


def test_64_bit_integers_are_numbers_in_every_command(tessera_cli, client, model_file, tmp_path):
    pushed = tessera_cli("--json", "models", "push", "affine", str(model_file)).json()
    assert pushed["version"] == 1 and pushed["size_bytes"] == model_file.stat().st_size
    assert [v["version"] for v in tessera_cli("--json", "models", "versions", "affine").json()] == [1]
    assert tessera_cli("--json", "models", "deploy", "affine", "1=100").json()["revision"] == 1
    data = tmp_path / "table.npz"
    np.savez(data, x=np.zeros((40, 4), np.float32))
    assert tessera_cli("--json", "datasets", "push", "table", str(data)).json()["num_samples"] == 40
    assert tessera_cli("--json", "datasets", "show", "table").json()["version"] == 1

    client.inference.load("affine")
    inputs = tmp_path / "inputs.npz"
    np.savez(inputs, input=np.ones((2, 4), np.float32))
    predicted = tessera_cli("--json", "predict", "affine", "--input", str(inputs)).json()
    assert predicted["version"] == 1
    (stats,) = tessera_cli("--json", "stats").json()
    assert stats["version"] == 1 and stats["request_count"] == 1
    changes = tessera_cli("--json", "models", "changes", "--from-seq", "1").out.splitlines()
    assert changes and all(isinstance(json.loads(line)["seq"], int) for line in changes)


def test_nan_and_infinity_are_written_as_protobuf_json_writes_them(tessera_cli, client, model_file, tmp_path):
    tessera_cli("models", "push", "affine", str(model_file))
    client.inference.load("affine")
    inputs = tmp_path / "inputs.npz"
    np.savez(inputs, input=np.array([[np.nan, np.inf, -np.inf, 1.0]], np.float32))
    predicted = tessera_cli("--json", "predict", "affine", "--input", str(inputs))
    assert predicted.code == 0, predicted.err
    assert predicted.json()["outputs"]["output"] == [["NaN", "Infinity", "-Infinity", 3.0]]


def test_json_may_follow_the_command_as_well_as_precede_it(tessera_cli, model_file):
    tessera_cli("models", "push", "affine", str(model_file))
    before = tessera_cli("--json", "models", "versions", "affine")
    after = tessera_cli("models", "versions", "affine", "--json")
    assert after.code == 0 and after.json() == before.json()
    assert tessera_cli("info", "--json").json()["version"]


def test_enum_values_are_named_alike_in_job_events_and_messages(tessera_cli, client, table_dataset):
    """`jobs watch --json` printed "succeeded" in its event lines and "JOB_STATE_SUCCEEDED" in
    the job's final line: every enum value is now said as the events and tables say it."""
    job = client.training.submit(tomllib.loads(JOB_SPEC))
    job.wait(timeout=300)
    result = tessera_cli("--json", "jobs", "watch", job.id)
    assert result.code == 0, result.err
    lines = [json.loads(line) for line in result.out.splitlines()]
    states = [line["state"] for line in lines if "state" in line]
    assert lines[-1]["kind"] == "Job" and lines[-1]["state"] == "succeeded"
    assert "succeeded" in states[:-1]
    assert all(state.islower() for state in states), states


def test_errors_under_json_stay_one_line_of_text_on_stderr_and_leave_stdout_empty(
    tessera_cli, model_file, tmp_path
):
    # As gh, kubectl and aws do: stdout holds JSON or nothing, the status says the kind of
    # failure and, for the daemon's (3), the line starts with its gRPC code for a script to test.
    tessera_cli("models", "push", "affine", str(model_file))
    failures = {
        3: tessera_cli("--json", "models", "show", "absent"),
        2: tessera_cli("--json", "models", "deploy", "affine", "1=50", "1=50"),
        1: tessera_cli("--json", "datasets", "push", "t", str(tmp_path / "missing.npz")),
    }
    for status, result in failures.items():
        assert result.code == status, result.err
        assert result.out == ""
        last = result.err.splitlines()[-1]
        assert last.startswith("tessera"), result.err
    assert failures[3].err.startswith("tessera: NOT_FOUND: ")


def test_fields_at_their_zero_value_are_printed(tessera_cli, client, model_file, tmp_path):
    """proto3's JSON leaves out a field at 0, "" or false: a sweep's trial 0 had no "number" and
    a trial whose val_loss was 0 no "metric", so `jq '.trials[0].number'` read null."""
    tessera_cli("models", "push", "affine", str(model_file))
    client.inference.load("affine")
    inputs = tmp_path / "inputs.npz"
    np.savez(inputs, input=np.ones((2, 4), np.float32))
    assert tessera_cli("predict", "affine", "--input", str(inputs)).code == 0
    (stats,) = tessera_cli("--json", "stats").json()
    assert stats["error_count"] == 0, stats
    (version,) = tessera_cli("--json", "models", "versions", "affine").json()
    assert version["description"] == "" and version["version"] == 1, version
