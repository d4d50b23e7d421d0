"""Numbers on the command line are digits 0-9 within int64: int() also reads other scripts'
digits ("٣" as 3), and str.isdigit() passes "²", which int() refuses with its own message."""

from __future__ import annotations

import numpy as np
import pytest

import tessera
from tessera.cli import EXIT_DAEMON, EXIT_USAGE
from tests.integration.sdk.affine import affine_onnx

SUPERSCRIPT_TWO, ARABIC_THREE = "\u00b2", "\u0663"
TOO_BIG = str(2**64)


@pytest.fixture
def three_versions(client, tmp_path):
    path = affine_onnx(tmp_path / "affine.onnx")
    for _ in range(3):
        client.models.push("affine", path)
        client.datasets.push("t", x=np.zeros((4, 2), np.float32))


def test_versions_and_percents_not_in_digits_0_to_9_are_refused(tessera_cli, client, three_versions):
    for text in (SUPERSCRIPT_TWO, ARABIC_THREE):
        # Not a number, so an alias: the daemon names what an alias may be.
        shown = tessera_cli("models", "show", "affine", "--version", text)
        assert shown.code == EXIT_DAEMON and f"alias {text!r} is not a valid name" in shown.err, shown.err
        deployed = tessera_cli("models", "deploy", "affine", f"{text}=100")
        assert deployed.code == EXIT_DAEMON and "is not a valid name" in deployed.err, deployed.err
    with pytest.raises(tessera.NotFound):
        client.models.deployment("affine")
    assert tessera_cli("models", "show", "affine", "--version", "3").code == 0


@pytest.mark.parametrize("text", [SUPERSCRIPT_TWO, ARABIC_THREE, TOO_BIG])
def test_malformed_numbers_in_refs_and_routes_are_usage_errors(tessera_cli, capsys, text):
    # Digits 0-9 past int64 make a percent the SDK refuses by its range.
    routes = (
        [] if text == TOO_BIG else [(("models", "deploy", "affine", f"1={text}"), "write VERSION=PERCENT")]
    )
    for args, words in (
        *routes,
        (("datasets", "show", f"t:{text}"), "write name or name:version"),
        (("models", "ensemble", "ens", "affine:1", f"affine:{text}"), "write it MODEL:VERSION"),
    ):
        with pytest.raises(SystemExit) as exited:
            tessera_cli(*args)
        err = capsys.readouterr().err
        assert exited.value.code == EXIT_USAGE and words in err, err
    with pytest.raises(SystemExit):
        tessera_cli("models", "show", "affine", "--version", TOO_BIG)
    assert f"argument --version: a version is a number from 1 or an alias, got '{TOO_BIG}'" in (
        capsys.readouterr().err
    )


@pytest.mark.parametrize("text", [SUPERSCRIPT_TWO, ARABIC_THREE, "+3", "1_0", TOO_BIG])
def test_number_options_take_digits_0_to_9(tessera_cli, capsys, text):
    with pytest.raises(SystemExit) as exited:
        tessera_cli("explain", "affine", "--input", "x.npz", "--steps", text)
    assert exited.value.code == 2
    assert "argument --steps: must be a whole number in 0.." in capsys.readouterr().err
    with pytest.raises(SystemExit):
        tessera_cli("explain", "affine", "--input", "x.npz", "--window", f"1,{text}")
    assert "argument --window: must be sizes separated by commas" in capsys.readouterr().err


def test_a_percent_past_int32_is_invalid_argument_and_a_shadow_percent_past_1_to_100_a_usage_error(
    tessera_cli, capsys, client, three_versions
):
    weight = tessera_cli("models", "deploy", "affine", "1=3000000000")
    assert weight.code == EXIT_DAEMON, weight.err
    assert "INVALID_ARGUMENT: routes[0].weight must be 1..100, got 3000000000" in weight.err
    for percent in ("0", "101", "4294967296"):
        with pytest.raises(SystemExit) as exited:
            tessera_cli("models", "deploy", "affine", "1=100", "--shadow", "2", "--shadow-percent", percent)
        assert exited.value.code == 2
        assert (
            f"argument --shadow-percent: must be a whole number in 1..100 written in digits 0-9, got '{percent}'"
            in (capsys.readouterr().err)
        )
    with pytest.raises(tessera.NotFound):
        client.models.deployment("affine")
