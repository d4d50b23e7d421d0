"""The Node CLI (clients/node/cli.js) answers a mistyped choice or command with the word the
Python CLI suggests: names.js ports difflib.get_close_matches, which tessera.command_parser uses."""

from __future__ import annotations

import difflib
import json
import re
import subprocess

import pytest

from tessera.cli import main
from tests.integration.sdk.test_node_client import EXIT_USAGE, NODE_CLIENT, node_ready, run_node, run_nodes

__all__ = ["node_ready"]


CHOICE_WORDS = [
    "runing",
    "RUNNNG",
    "queud",
    "sucess",
    "faild",
    "canceled",
    "interupted",
    "done",
    "x",
    "unning",
    "ning",
]
CHOICE_SETS = [
    ["queued", "running", "succeeded", "failed", "cancelled", "interrupted"],
    ["ape", "apple", "peach", "puppy"],
    ["ab", "ba"],
    ["abcd", "abdc", "bacd", "dcba"],
    ["snow", "sn\u00f6w", "\U0001f600w", "now"],
    # Past 200 characters difflib takes a character in over 1% of the word for no anchor.
    ["a" * 205 + "b", "b" + "a" * 200, "ab" * 110],
]
CHOICE_INPUTS = [
    "appel",
    "ab",
    "abc",
    "bca",
    "snow",
    "s\u00f6w",
    "\U0001f600",
    "nw",
    "",
    "a" * 210,
    *CHOICE_WORDS,
]


def test_node_suggests_what_difflib_suggests(node_ready):
    """names.js ports difflib.get_close_matches, whose nearest word the Python CLI suggests."""
    script = f"""
        const {{ closeMatches }} = require({json.dumps(str(NODE_CLIENT / "names.js"))});
        const found = {json.dumps(CHOICE_SETS)}.map((choices) =>
          {json.dumps(CHOICE_INPUTS)}.map((word) => closeMatches(word, choices, 3)));
        console.log(JSON.stringify(found));
        """
    done = subprocess.run(["node", "-e", script], capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    expected = [
        [difflib.get_close_matches(word, choices, n=3) for word in CHOICE_INPUTS] for choices in CHOICE_SETS
    ]
    assert json.loads(done.stdout) == expected


def python_suggestion(capsys, *args: str) -> str | None:
    """The word the Python CLI's refusal of `args` suggests (None: none)."""
    with pytest.raises(SystemExit):
        main(["--target", "127.0.0.1:1", *args])
    meant = re.search(r"did you mean '([^']*)'\?", capsys.readouterr().err)
    return meant and meant.group(1)


def node_suggestion(*args: str) -> str | None:
    refused = run_node("127.0.0.1:1", *args)
    assert refused.returncode == EXIT_USAGE, refused.stderr
    meant = re.search(r"did you mean '([^']*)'\?", refused.stderr)
    return meant and meant.group(1)


@pytest.mark.parametrize(
    ("command", "flag"), [(("jobs", "ls"), "--state"), (("runs", "ls"), "--status")], ids=["state", "status"]
)
def test_node_cli_suggests_the_choice_the_python_cli_suggests(node_ready, capsys, command, flag):
    suggested = {word: node_suggestion(*command, flag, word) for word in CHOICE_WORDS}
    assert suggested == {word: python_suggestion(capsys, *command, flag, word) for word in CHOICE_WORDS}
    assert suggested["runing"] == "running" and suggested["x"] is None


def test_node_cli_suggests_the_command_meant(node_ready):
    assert node_suggestion("jbos", "ls") == "jobs"
    assert node_suggestion("jobs", "sbmit") == "submit"
    assert node_suggestion("models", "rn", "affine", "1") is None
    assert node_suggestion("xyzzy") is None


@pytest.mark.parametrize(
    ("command", "flag", "choices"),
    [
        (("load", "affine"), "--runtime", "onnx, torch"),
        (("jobs", "ls"), "--state", "queued, running, succeeded, failed, cancelled, interrupted"),
        (("runs", "ls"), "--status", "running, succeeded, failed, cancelled, interrupted"),
    ],
    ids=["runtime", "state", "status"],
)
def test_node_cli_choice_errors_say_the_choices(node_ready, command, flag, choices):
    """A value that is none of the choices, and a flag left without one, are refused in the same
    words for each flag, with the choices and the command's usage line: `--runtime` alone said
    that it needs a value and where the commands are listed."""
    first = choices.split(", ")[0]
    mistyped = first[:-1]
    refused = {
        (flag, "x"): f'{flag}: "x" is not one of {choices}',
        (flag, mistyped): f"{flag}: {json.dumps(mistyped)} is not one of {choices}; did you mean '{first}'?",
        (flag,): f"{flag} needs a value: one of {choices}",
    }
    failures = run_nodes("127.0.0.1:1", [(*command, *args) for args in refused])
    for (args, message), failed in zip(refused.items(), failures, strict=True):
        assert failed.returncode == EXIT_USAGE, (args, failed.stdout)
        said, usage = failed.stderr.splitlines()
        assert said == f"tessera-node: {message}", args
        assert usage.startswith(f"usage: tessera-node {command[0]} "), (args, usage)


def test_node_cli_takes_flag_equals_value_as_argparse_does(node_ready):
    """`--runtime=onnx` was refused as an unknown option `--runtime=onnx`."""
    mistyped = run_node("127.0.0.1:1", "load", "affine", "--runtime=onnxx")
    assert mistyped.returncode == EXIT_USAGE, mistyped.stderr
    assert mistyped.stderr.splitlines()[0] == (
        "tessera-node: --runtime: \"onnxx\" is not one of onnx, torch; did you mean 'onnx'?"
    )
    # Taken: the call goes on to find no daemon at the address.
    taken = run_node("127.0.0.1:1", "load", "affine", "--runtime=onnx", "--timeout=5")
    assert taken.returncode not in (0, EXIT_USAGE), taken.stderr
    assert "UNAVAILABLE" in taken.stderr, taken.stderr
    # An empty value is a value, as argparse's `--comment=`.
    empty = run_node("127.0.0.1:1", "models", "deploy", "m", "1=100", "--comment=", "--timeout=5")
    assert empty.returncode not in (0, EXIT_USAGE), empty.stderr

    switch = run_node("127.0.0.1:1", "models", "rm", "m", "--force=yes")
    assert switch.returncode == EXIT_USAGE
    said, usage = switch.stderr.splitlines()
    assert said == 'tessera-node: --force takes no value, got "yes"'
    assert usage.startswith("usage: tessera-node models rm "), usage


@pytest.mark.parametrize(
    "args",
    # The last: --state ending the line was refused for its missing value before --runtime was seen.
    [("--runtime",), ("--runtime=onnx",), ("--force=yes",), ("--runtime", "x", "--state")],
    ids=["flag-alone", "flag-equals-value", "switch-equals-value", "before-a-flag-ending-the-line"],
)
def test_node_cli_refuses_another_commands_flag_as_not_an_option_first(node_ready, args):
    """`jobs ls --runtime` was told that --runtime needs a value (and `--force=yes` that --force
    takes none), as if giving one would do: --runtime is `load`'s, not an option of jobs ls."""
    failed = run_node("127.0.0.1:1", "jobs", "ls", *args)
    assert failed.returncode == EXIT_USAGE, failed.stdout
    said, usage = failed.stderr.splitlines()
    flag = args[0].split("=", 1)[0]
    assert said == f"tessera-node: {flag} is not an option of jobs ls", said
    assert usage.startswith("usage: tessera-node jobs ls "), usage
