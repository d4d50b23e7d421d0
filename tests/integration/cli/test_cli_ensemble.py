"""`tessera models ensemble`: register an ensemble of versions, a stacking one fitted on held-out rows."""

from __future__ import annotations

import re

import numpy as np
import pytest

from tessera.cli import EXIT_DAEMON, EXIT_USAGE
from tests.integration.sdk.affine import affine_onnx

X = np.linspace(-2, 2, 12, dtype=np.float32).reshape(4, 3)


def test_ensemble_command_registers_and_serves(tessera_cli, client, tmp_path):
    client.models.push("a", affine_onnx(tmp_path / "a.onnx", features=3, scale=2.0, bias=1.0))
    client.models.push("b", affine_onnx(tmp_path / "b.onnx", features=3, scale=-1.0, bias=0.0))
    ya, yb = 2 * X + 1, -X

    mean = tessera_cli("models", "ensemble", "ens", "a:1", "b:1", "--set-alias", "production")
    assert mean.code == 0, mean.err
    assert "registered ens v1: mean of a:1, b:1" in mean.out
    np.testing.assert_allclose(
        client.inference.predict("ens", {"input": X}, alias="production")["output"], (ya + yb) / 2, rtol=1e-6
    )
    shown = tessera_cli("models", "show", "ens")
    assert "ensemble" in shown.out
    status = tessera_cli("serve-status", "ens")
    # Its runtime is its members': "unspecified" on the wire, which the table once showed.
    assert re.search(r"ens\W+1\W+ready\W+ensemble\W", status.out), status.out

    weighted = tessera_cli(
        "models", "ensemble", "ens", "a:1", "b:1", "--combine", "weighted_mean", "--weights", "3,1"
    )
    assert weighted.code == 0, weighted.err
    np.testing.assert_allclose(
        client.inference.predict("ens", {"input": X}, version=2)["output"], (3 * ya + yb) / 4, rtol=1e-6
    )

    held_out = tmp_path / "held_out.npz"
    rows = np.random.default_rng(0).standard_normal((32, 3)).astype(np.float32)
    np.savez(held_out, input=rows, y=0.5 * (2 * rows + 1) - 2 * (-rows))
    stacked = tessera_cli(
        "models", "ensemble", "ens", "a:1", "b:1", "--combine", "stacking", "--fit", str(held_out)
    )
    assert stacked.code == 0, stacked.err
    np.testing.assert_allclose(
        client.inference.predict("ens", {"input": X}, version=3)["output"],
        0.5 * ya - 2 * yb,
        rtol=1e-3,
        atol=1e-3,
    )


def test_ensemble_command_errors(tessera_cli, client, tmp_path, capsys):
    client.models.push("a", affine_onnx(tmp_path / "a.onnx", features=3))
    client.models.push("wide", affine_onnx(tmp_path / "wide.onnx", features=5))
    mismatch = tessera_cli("models", "ensemble", "ens", "a:1", "wide:1")
    assert mismatch.code == EXIT_DAEMON
    assert mismatch.err.startswith("tessera: INVALID_ARGUMENT: ensemble members' signatures must agree")
    assert "wide:1 differs from a:1" in mismatch.err
    missing = tessera_cli("models", "ensemble", "ens", "a:1", "a:4")
    assert missing.code == EXIT_DAEMON and "NOT_FOUND: ensemble member a:4 does not exist" in missing.err
    with pytest.raises(SystemExit) as syntax:
        tessera_cli("models", "ensemble", "ens", "a:1", "a")
    assert syntax.value.code == EXIT_USAGE
    assert "argument MEMBER: ensemble member 'a': write it MODEL:VERSION" in capsys.readouterr().err
    fit_without_stacking = tessera_cli("models", "ensemble", "ens", "a:1", "wide:1", "--fit", "x.npz")
    assert (
        fit_without_stacking.code == EXIT_USAGE
        and "use it with --combine stacking" in fit_without_stacking.err
    )
    assert "Traceback" not in mismatch.err + missing.err + fit_without_stacking.err
