"""`tessera ... --help` answers a newcomer without the source: every command says what it does
and every option what it means (and its default where it has one)."""

from __future__ import annotations

import argparse
from collections.abc import Iterator

from tessera.cli.parser import build_parser


def commands(
    parser: argparse.ArgumentParser, path: tuple[str, ...] = ()
) -> Iterator[tuple[tuple[str, ...], argparse.ArgumentParser]]:
    """Each runnable command's words and parser, aliases (`list` for `ls`) left out."""
    groups = [action for action in parser._actions if isinstance(action, argparse._SubParsersAction)]
    if not groups:
        yield path, parser
    for group in groups:
        seen: set[int] = set()
        for name, sub in group.choices.items():
            if id(sub) not in seen:
                seen.add(id(sub))
                yield from commands(sub, (*path, name))


def test_every_command_has_a_description_and_every_option_a_help():
    found = list(commands(build_parser()))
    assert len(found) > 30, "the walk found too few commands: is it still reading the subparsers?"
    undescribed = [" ".join(path) for path, parser in found if not parser.description]
    unexplained = [
        f"{' '.join(path)} {action.option_strings[-1]}"
        for path, parser in found
        for action in parser._actions
        if action.option_strings and not action.help
    ]
    assert not undescribed, f"commands without a description: {undescribed}"
    assert not unexplained, f"options without a help text: {unexplained}"


def test_every_positional_argument_says_what_it_takes():
    """`model`, `ref` or `job_id` alone in the usage line left open what to write (a name or a
    version? NAME:VERSION? where to find an id?)."""
    unexplained = [
        f"{' '.join(path)} {action.metavar or action.dest}"
        for path, parser in commands(build_parser())
        for action in parser._actions
        if not action.option_strings and not action.help
    ]
    assert not unexplained, f"positional arguments without a help text: {unexplained}"
