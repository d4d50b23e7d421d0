"""`tesserad ... --help` answers an operator without the source, as `tessera`'s does: every
command says what it does and every argument what it takes."""

from __future__ import annotations

import pytest

from tesserad.cli import build_parser
from tests.unit.sdk.test_cli_help import commands


def test_every_command_has_a_description_and_every_argument_a_help():
    found = list(commands(build_parser()))
    assert len(found) >= 7, "the walk found too few commands: is it still reading the subparsers?"
    undescribed = [" ".join(path) for path, parser in found if not parser.description]
    unexplained = [
        f"{' '.join(path)} {(action.option_strings or [action.metavar or action.dest])[-1]}"
        for path, parser in found
        for action in parser._actions
        if not action.help
    ]
    assert not undescribed, f"commands without a description: {undescribed}"
    assert not unexplained, f"arguments without a help text: {unexplained}"


def test_serve_flags_show_the_form_of_their_value():
    """Every flag of `tesserad serve` read VALUE in the usage line, an address and a directory alike."""
    usage = build_parser()._subparsers._group_actions[0].choices["serve"].format_usage()
    assert "VALUE" not in usage, usage
    assert "--listen HOST:PORT" in usage and "--data-dir DIR" in usage, usage


@pytest.mark.parametrize(
    ("args", "prog", "names"),
    [
        ((), "tesserad", "serve, tokens, restore, verify, settings"),
        (("tokens",), "tesserad tokens", "add, remove, list, hash"),
    ],
)
def test_a_missing_command_is_refused_naming_the_ones_there_are(capsys, args, prog, names):
    """argparse said only "the following arguments are required: COMMAND"."""
    with pytest.raises(SystemExit) as exited:
        build_parser().parse_args(list(args))
    assert exited.value.code == 2
    assert f"{prog}: error: " in (err := capsys.readouterr().err)
    assert f"given: {names} (`{prog} --help` says what each does)" in err, err
