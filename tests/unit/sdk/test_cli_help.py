"""`tessera ... --help` answers a newcomer without the source: every command says what it does
and every option what it means (and its default where it has one)."""

from __future__ import annotations

import argparse
import shlex
from collections.abc import Iterator

from tessera.cli.arguments import TIMEOUT_ENV, TRANSFER_TIMEOUT_ENV
from tessera.cli.parser import HELP_WIDTH, build_parser
from tessera.transport import KEEPALIVE_ENV, TARGET_ENV, TOKEN_ENV


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


def groups(
    parser: argparse.ArgumentParser, path: tuple[str, ...] = ()
) -> Iterator[tuple[tuple[str, ...], argparse.ArgumentParser, argparse._SubParsersAction]]:
    """Each parser that holds commands (`tessera` itself first), with its words and its commands."""
    for group in parser._actions:
        if isinstance(group, argparse._SubParsersAction):
            yield path, parser, group
            for name, sub in group.choices.items():
                if name != "list":
                    yield from groups(sub, (*path, name))


def examples(parser: argparse.ArgumentParser) -> list[list[str]]:
    """The command lines under the `examples:` of a parser's epilog, without their `tessera`."""
    _, _, shown = (parser.epilog or "").partition("examples:\n")
    lines = [shlex.split(line, comments=True) for line in shown.splitlines()]
    return [words[1:] for words in lines if words[:1] == ["tessera"]]


def test_every_group_says_what_it_manages_and_shows_its_common_commands_run():
    """`tessera models --help` showed its subcommands under no description at all, and `datasets`
    was listed as "datasets": each group says what it manages and gives examples that parse."""
    found = list(groups(build_parser()))[1:]
    assert len(found) >= 8, "the walk found too few groups: is it still reading the subparsers?"
    for path, parser, _ in found:
        words = " ".join(path)
        assert len((parser.description or "").split()) >= 8, f"`tessera {words} --help` says too little"
        shown = examples(parser)
        assert any(line[: len(path)] == list(path) for line in shown), f"`tessera {words}`: no example"
        for line in shown:
            # An example that does not parse would teach a newcomer a usage error.
            assert build_parser().parse_args(line).handler, line


def test_every_command_listed_under_a_group_says_what_it_does():
    """A one- or two-word line ("datasets", "list models") in a group's list of commands left
    the reader to guess; each says in at least three words what the command does."""
    terse = [
        f"{' '.join((*path, choice.dest))}: {choice.help!r}"
        for path, _, group in groups(build_parser())
        for choice in group._choices_actions
        if len((choice.help or "").split()) < 3
    ]
    assert not terse, f"commands whose help line says too little: {terse}"


def test_the_first_screen_says_where_to_start_and_which_environment_variables_count():
    """Before the list of commands: the demo, the life cycle's commands in order, and every
    variable of the environment the CLI reads. The export and the latency figures, steps of the
    README's walk-through, were missing there."""
    head = build_parser().format_help().partition("positional arguments:")[0]
    assert "tessera demo" in head, head
    steps = [
        f"tessera {step} "
        for step in (
            "datasets push",
            "train",
            "models versions",
            "export onnx",
            "load",
            "predict",
            "stats",
            "models deploy",
        )
    ]
    assert all(step in head for step in steps), head
    assert sorted(steps, key=head.index) == steps, head
    for name in (TARGET_ENV, TOKEN_ENV, TIMEOUT_ENV, TRANSFER_TIMEOUT_ENV, KEEPALIVE_ENV):
        assert name in head, f"{name} missing from the first screen: {head}"


def test_the_text_laid_out_by_hand_fits_the_terminal():
    """argparse fits option and command help to the terminal, but leaves the lines of a raw
    description or epilog as they are: those written for `tessera --help` and the groups' fit."""
    texts = [build_parser().description or ""] + [
        f"{parser.description}\n{parser.epilog}" for _, parser, _ in list(groups(build_parser()))[1:]
    ]
    wide = [line for text in texts for line in text.splitlines() if len(line) > HELP_WIDTH]
    assert not wide, f"lines wider than {HELP_WIDTH} columns: {wide}"


def test_every_help_screen_fits_80_columns(monkeypatch):
    """The exit statuses under `tessera --help` and the choices in `jobs ls`, `runs ls` and
    `explain` usage lines ran past 80 columns, where argparse wraps nothing it did not lay out."""
    monkeypatch.setenv("COLUMNS", str(HELP_WIDTH))
    parser = build_parser()
    screens = [((), parser)] + [(path, sub) for path, sub, _ in list(groups(parser))[1:]]
    screens += list(commands(parser))
    wide = [
        f"{' '.join(('tessera', *path))} --help: {line!r}"
        for path, sub in screens
        for line in sub.format_help().splitlines()
        if len(line) > HELP_WIDTH
    ]
    assert not wide, f"lines wider than {HELP_WIDTH} columns: {wide}"


def test_load_help_says_how_each_protocol_refuses_a_full_queue_and_when_saved_options_apply(monkeypatch):
    """It named RESOURCE_EXHAUSTED alone, which the Open Inference Protocol answers as Triton does
    (UNAVAILABLE, 503 with Retry-After), and said saved options were used on restarts, which load
    nothing by themselves."""
    monkeypatch.setenv("COLUMNS", "1000")  # one option's help on one line
    (load,) = [sub for path, sub in commands(build_parser()) if path == ("load",)]
    text = " ".join(load.format_help().split())
    assert "RESOURCE_EXHAUSTED over tessera's Predict" in text
    assert "UNAVAILABLE over its gRPC and 503 with Retry-After: 1 over its HTTP" in text
    assert "whenever the version is loaded again" in text
    assert "a restart loads nothing by itself" in text
    assert "restarts," not in text
