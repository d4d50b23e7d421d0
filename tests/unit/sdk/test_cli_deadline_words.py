"""What the CLI says when a deadline passes: the limit of the call that ran past it. load,
export, explain and demo give their slow call 300 s at least and unload 120 s, whatever
--timeout says, so naming only --timeout misstated the limit that passed."""

from __future__ import annotations

import pytest

from tessera.cli.parser import build_parser
from tessera.cli.runner import deadline_words

TRANSFERS = "an upload, download or backup --transfer-timeout (3600 s): give the one it ran past more seconds"


@pytest.mark.parametrize(
    ("argv", "limit"),
    [
        (["load", "m"], "loading the model 300 s (the longer of --timeout and 300 s)"),
        (["--timeout", "500", "load", "m"], "loading the model 500 s (the longer of --timeout and 300 s)"),
        (["unload", "m"], "unloading it 120 s (the longer of --timeout and 120 s)"),
        (["--timeout", "200", "unload", "m"], "unloading it 200 s (the longer of --timeout and 120 s)"),
        (["export", "onnx", "m"], "the export 300 s (the longer of --timeout and 300 s)"),
        (["explain", "m", "--input", "x.npz"], "the explanation 300 s (the longer of --timeout and 300 s)"),
        (["demo"], "the demo's export and load 300 s (the longer of --timeout and 300 s)"),
    ],
)
def test_a_command_with_a_longer_call_names_its_limit(argv: list[str], limit: str) -> None:
    args = build_parser().parse_args(["--transfer-timeout", "3600", *argv])
    assert deadline_words(args) == f"a call may take --timeout ({args.timeout:g} s), {limit}, {TRANSFERS}"


def test_other_commands_name_the_timeout_and_transfer_timeout() -> None:
    args = build_parser().parse_args(["--timeout", "7", "--transfer-timeout", "3600", "models", "ls"])
    assert deadline_words(args) == f"a call may take --timeout (7 s), {TRANSFERS}"
