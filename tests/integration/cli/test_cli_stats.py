"""`tessera stats`: figures of loaded versions; a model that does not exist, or has nothing
loaded, fails with a non-zero exit and what to do instead of printing an empty table."""

from __future__ import annotations

import numpy as np

from tessera.cli import EXIT_DAEMON, EXIT_USAGE
from tests.integration.sdk.affine import affine_onnx


def test_stats_of_a_model_that_does_not_exist_fails_with_not_found(tessera_cli):
    result = tessera_cli("stats", "absent")
    assert result.code == EXIT_DAEMON and "Traceback" not in result.err + result.out
    assert result.err.startswith("tessera: NOT_FOUND: model 'absent' does not exist")
    assert "latency" not in result.out  # no empty table


def test_stats_of_a_model_with_nothing_loaded_says_how_to_load_it(tessera_cli, client, tmp_path):
    client.models.push("affine", affine_onnx(tmp_path / "affine.onnx"))
    assert tessera_cli("--json", "stats").json() == []  # every loaded version: none, and that is no error
    result = tessera_cli("stats", "affine")
    assert result.code == EXIT_DAEMON and result.err.startswith(
        "tessera: NOT_FOUND: model 'affine' is registered but has no loaded version, so it has no statistics yet"
    )
    # The daemon's "(tessera predict, or Predict)" came out as "(tessera predict, or `tessera predict ...`)".
    assert result.err.endswith(
        "; send it a request (`tessera predict MODEL --input FILE`) to load it, or load it with `tessera load MODEL`\n"
    ), result.err
    version = tessera_cli("stats", "affine", "--version", "1")
    assert version.code == EXIT_DAEMON and "model 'affine' version 1 is not loaded" in version.err
    assert tessera_cli("stats", "affine", "--version", "7").code == EXIT_DAEMON

    inputs = tmp_path / "inputs.npz"
    np.savez(inputs, input=np.ones((2, 4), np.float32))
    assert tessera_cli("predict", "affine", "--input", str(inputs)).code == 0
    loaded = tessera_cli("stats", "affine")
    assert loaded.code == 0 and "affine v1: 1 request (0 failed)" in loaded.out
    # "batch rows:count 2:1" left the reader to work out which number was which.
    assert "batches: 1 of 2 rows" in loaded.out, loaded.out
    assert [s["model"] for s in tessera_cli("--json", "stats").json()] == ["affine"]


def test_a_version_without_a_model_is_a_usage_error(tessera_cli):
    # It was left out of the request, so every loaded version's figures came back.
    for args in (("stats", "--version", "2"), ("stats", "--version", "production", "--cluster")):
        result = tessera_cli(*args)
        assert result.code == EXIT_USAGE and result.out == "", result
        assert result.err.startswith("usage: tessera stats"), result.err
        assert (
            f"error: --version picks a version of a model: name it too (`tessera stats MODEL --version {args[2]}`)"
            in result.err
        )


def test_stats_of_a_version_not_loaded_says_how_to_load_that_version(tessera_cli, client, tmp_path):
    """It said to send the model a request, which without --version loads the version requests
    are routed to (here v2), never the v1 asked about."""
    for scale in (1.0, 2.0):
        client.models.push("affine", affine_onnx(tmp_path / f"affine-{scale}.onnx", scale=scale))
    unloaded = tessera_cli("stats", "affine", "--version", "1")
    assert unloaded.code == EXIT_DAEMON
    assert unloaded.err == (
        "tessera: NOT_FOUND: model 'affine' version 1 is not loaded, so it has no statistics yet; "
        "load it with `tessera load MODEL --version 1`, or by a `tessera predict MODEL --input FILE "
        "--version 1` (one naming no version loads the one requests are routed to)\n"
    )
    inputs = tmp_path / "inputs.npz"
    np.savez(inputs, input=np.ones((2, 4), np.float32))
    assert tessera_cli("predict", "affine", "--input", str(inputs), "--version", "1").code == 0
    loaded = tessera_cli("stats", "affine", "--version", "1")
    assert loaded.code == 0 and "affine v1: 1 request (0 failed)" in loaded.out, loaded
