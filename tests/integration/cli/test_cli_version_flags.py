"""Every command that names a version takes it alike: --version N or ALIAS, or --alias ALIAS, one
of the two; and the numbers the CLI checks are checked as the daemon checks them, said in flags."""

from __future__ import annotations

import numpy as np
import pytest

from tessera.cli import EXIT_USAGE
from tessera.cli.arguments import SERVING_LIMITS
from tesserad.serving.pool import CONFIG_LIMITS
from tests.integration.sdk.affine import affine_onnx

# Each command naming a version of model "affine", as the test runs it (after load).
NAMING_A_VERSION = [
    ("models", "show", "affine"),
    ("load", "affine"),
    ("stats", "affine"),
    ("predict", "affine", "--input", "{inputs}"),
    ("models", "download", "affine", "-o", "{tmp}/affine-{n}.onnx"),
    ("unload", "affine"),
]


def refused(tessera_cli, capsys, *args: str) -> str:
    """The usage error argparse exits with for `args`, as one line."""
    with pytest.raises(SystemExit) as exited:
        tessera_cli(*args)
    assert exited.value.code == EXIT_USAGE
    return " ".join(capsys.readouterr().err.split())


@pytest.fixture
def staged(client, tmp_path):
    client.models.push("affine", affine_onnx(tmp_path / "affine.onnx"))
    client.models.set_alias("affine", "staging", 1)
    inputs = tmp_path / "inputs.npz"
    np.savez(inputs, input=np.ones((2, 4), np.float32))
    return inputs


@pytest.mark.parametrize("flags", [("--alias", "staging"), ("--version", "staging"), ("--version", "1")])
def test_every_command_naming_a_version_takes_a_number_or_an_alias(tessera_cli, staged, tmp_path, flags):
    for n, command in enumerate(NAMING_A_VERSION):
        line = [part.format(inputs=staged, tmp=tmp_path, n=n) for part in command]
        result = tessera_cli(*line, *flags)
        assert result.code == 0, (line, flags, result.err)


# explain and export need torch weights.
@pytest.mark.parametrize(
    "command", [*NAMING_A_VERSION, ("explain", "affine", "--input", "x.npz"), ("export", "onnx", "affine")]
)
def test_both_flags_are_a_usage_error_and_the_help_says_it_alike(tessera_cli, capsys, command):
    line = [part.format(inputs="x.npz", tmp=".", n=0) for part in command]
    both = refused(tessera_cli, capsys, *line, "--version", "1", "--alias", "staging")
    assert "argument --alias: not allowed with argument --version" in both, both
    with pytest.raises(SystemExit):
        tessera_cli(*line[:3] if command[0] in ("models", "export") else line[:2], "--help")
    text = " ".join(capsys.readouterr().out.split())
    assert "--version N|ALIAS" in text, text
    assert "a version number (from 1) or an alias" in text, text


def test_a_version_that_is_no_number_from_1_is_said_in_cli_words(tessera_cli, capsys):
    shown = refused(tessera_cli, capsys, "models", "show", "affine", "--version", "-1")
    assert "argument --version: a version is a number from 1 or an alias, got '-1'" in shown, shown
    zero = refused(tessera_cli, capsys, "load", "affine", "--version", "0")
    assert "a version is a number from 1 or an alias, got '0'" in zero, zero
    pointed = refused(tessera_cli, capsys, "models", "alias", "affine", "x", "0")
    assert "argument version: a version is a number from 1, got '0'" in pointed, pointed


def test_serving_limits_are_the_daemons(tessera_cli, capsys, staged):
    assert SERVING_LIMITS == CONFIG_LIMITS
    default = tessera_cli("load", "affine", "--instances", "0")
    assert default.code == 0, default.err
    over = refused(tessera_cli, capsys, "load", "affine", "--instances", "65")
    assert "argument --instances: must be in 1..64 (0 for the daemon's default), got '65'" in over, over
    delay = refused(tessera_cli, capsys, "load", "affine", "--max-queue-delay-us", "10000001")
    assert "argument --max-queue-delay-us: must be in 0..10000000, got '10000001'" in delay, delay
