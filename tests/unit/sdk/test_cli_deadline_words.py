"""What the CLI says when a deadline passes: the limit of the call that ran past it and the flag
that lengthens it. load, export, explain and demo give their slow call 300 s at least and unload
120 s, whatever --timeout says, so naming only --timeout misstated the limit that passed; a
command that only transfers runs under --transfer-timeout alone, one that makes no transfer
under --timeout alone, so naming both left the reader to guess."""

from __future__ import annotations

import pytest

from tessera.cli.parser import build_parser
from tessera.cli.runner import deadline_words

EITHER = "give the one it ran past more seconds"


def words(*argv: str) -> str:
    return deadline_words(build_parser().parse_args(["--transfer-timeout", "3600", *argv]))


@pytest.mark.parametrize(
    ("argv", "limit"),
    [
        (
            ["--timeout", "0.1", "jobs", "watch", "j"],
            "looking the job up 30 s (the longer of --timeout and 30 s)",
        ),
        (
            ["--timeout", "0.1", "train", "s.toml", "--follow"],
            "submitting the job and looking it up 30 s (the longer of --timeout and 30 s)",
        ),
        (
            ["--timeout", "0.1", "sweep", "s.toml", "--follow"],
            "submitting the sweep and looking it up 30 s (the longer of --timeout and 30 s)",
        ),
        (
            ["--timeout", "0.1", "sweeps", "show", "s", "--follow"],
            "looking the sweep up 30 s (the longer of --timeout and 30 s)",
        ),
        (["load", "m"], "loading the model 300 s (the longer of --timeout and 300 s)"),
        (["--timeout", "500", "load", "m"], "loading the model 500 s (the longer of --timeout and 300 s)"),
        (["unload", "m"], "unloading it 120 s (the longer of --timeout and 120 s)"),
        (["--timeout", "200", "unload", "m"], "unloading it 200 s (the longer of --timeout and 120 s)"),
        (["export", "onnx", "m"], "the export 300 s (the longer of --timeout and 300 s)"),
        (["explain", "m", "--input", "x.npz"], "the explanation 300 s (the longer of --timeout and 300 s)"),
    ],
)
def test_a_command_with_a_longer_call_names_its_limit_and_only_the_timeout(
    argv: list[str], limit: str
) -> None:
    timeout = build_parser().parse_args(argv).timeout
    assert words(*argv) == f"a call may take --timeout ({timeout:g} s), {limit}: give --timeout more seconds"


@pytest.mark.parametrize(
    "argv", [["models", "ls"], ["train", "s.toml"], ["sweep", "s.toml"], ["sweeps", "show", "s"]]
)
def test_a_command_without_a_transfer_names_only_the_timeout(argv: list[str]) -> None:
    """train, sweep and sweeps show follow nothing without --follow: their calls get --timeout."""
    assert words("--timeout", "7", *argv) == "a call may take --timeout (7 s): give --timeout more seconds"


@pytest.mark.parametrize(
    "argv",
    [
        ["models", "push", "m", "m.onnx"],
        ["datasets", "push", "d", "d.npz"],
        ["runs", "artifacts", "put", "r", "f.txt"],
        ["admin", "backup", "-o", "b.tar"],
    ],
)
def test_a_command_that_only_transfers_names_only_the_transfer_timeout(argv: list[str]) -> None:
    assert (
        words("--timeout", "7", *argv)
        == "the transfer may take --transfer-timeout (3600 s): give it more seconds"
    )


@pytest.mark.parametrize(
    "argv",
    [
        ["models", "download", "m", "m.onnx"],
        ["datasets", "download", "d", "-o", "d.npz"],
        ["runs", "artifacts", "get", "r", "f.txt"],
    ],
)
def test_a_command_that_looks_up_then_downloads_names_both(argv: list[str]) -> None:
    assert words("--timeout", "7", *argv) == (
        f"a call may take --timeout (7 s), the transfer --transfer-timeout (3600 s): {EITHER}"
    )


def test_the_demo_names_its_longer_call_and_its_transfers() -> None:
    assert words("demo") == (
        "a call may take --timeout (30 s), the demo's export and load 300 s (the longer of --timeout "
        f"and 300 s), the transfer --transfer-timeout (3600 s): {EITHER}"
    )
