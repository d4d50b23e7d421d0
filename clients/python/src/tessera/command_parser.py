"""The argparse parser both command lines (`tessera`, `tesserad`) use; standard library only, so
the daemon's command line imports it without the SDK."""

from __future__ import annotations

import argparse
import difflib
import sys
from collections.abc import Sequence
from typing import Any, NoReturn


class CommandParser(argparse.ArgumentParser):
    """argparse's parser, saying which commands there are when one is missing (argparse says
    only "the following arguments are required: COMMAND") and which one was meant when a command
    or choice is mistyped. A command's own parser takes its positionals between its options, and
    refuses what is left over under its own usage."""

    _intermixing = False

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # The options of the program's own parser (`tessera --target`), each with its usage,
        # set on its commands' parsers by `name_outer_options`.
        self.outer_options: dict[str, str] = {}
        # What to say of a command word this parser does not have: for one word, in place of a
        # guess at the command meant (`choice_hints`), or for any word close to none of them,
        # formatted with the word as `value`: `other_choice_hint` when it is the last word given,
        # `followed_choice_hint` when others follow it (`export MODEL` and `export FORMAT MODEL`).
        self.choice_hints: dict[str, str] = {}
        self.other_choice_hint = ""
        self.followed_choice_hint = ""
        # What a spec file given in a command word's place is told (`tessera sweeps sw.toml`: the
        # group lists what another command starts from a spec), formatted with it as `value`.
        self.spec_choice_hint = ""
        # What follows argparse's refusal of two options of one mutually exclusive group
        # ("argument --alias: not allowed with argument --version"), where a flag's meaning moved.
        self.exclusive_hint = ""
        self._words: list[str] = []

    def name_outer_options(self) -> None:
        """Let every command below this parser say, of one of this parser's options given after
        the command, that it goes before it (argparse takes it only there, and says
        "unrecognized arguments" alone)."""
        own = {
            option: option if action.nargs == 0 else f"{option} {action.metavar or action.dest.upper()}"
            for action in self._actions
            if not isinstance(action, (argparse._HelpAction, argparse._VersionAction))
            for option in action.option_strings
        }
        pending = [self]
        while pending:
            parser = pending.pop()
            for action in parser._actions:
                if isinstance(action, argparse._SubParsersAction):
                    for sub in action.choices.values():
                        if isinstance(sub, CommandParser):
                            sub.outer_options = {
                                option: usage
                                for option, usage in own.items()
                                if option not in sub._option_string_actions
                            }
                            pending.append(sub)

    def parse_known_args(  # type: ignore[override]  # typeshed's overloads; the same signature
        self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None
    ) -> tuple[argparse.Namespace, list[str]]:
        if not self._intermixing:
            self._words = list(sys.argv[1:] if args is None else args)
            self._refuse_outer_options(self._words)
        if self._intermixing or any(isinstance(a, argparse._SubParsersAction) for a in self._actions):
            return super().parse_known_args(args, namespace)
        # Plain parsing fills an optional positional (`models download MODEL [PATH]`), empty,
        # from the positionals before the first option, so `MODEL --version 2 PATH` left PATH
        # over; and what is left over was refused under the top parser's usage, not this one's.
        self._intermixing = True
        try:
            parsed, extras = self.parse_known_intermixed_args(args, namespace)
        finally:
            self._intermixing = False
        if extras:
            self.error(f"unrecognized arguments: {' '.join(extras)}")
        return parsed, extras

    def _meant_option(self, extras: Sequence[str]) -> str:
        """ "; did you mean --experiment?" for the first mistyped option among `extras` that is
        close to one of this parser's, as a mistyped command is answered; "" for none."""
        # One hidden from the help is no option to point at: it spells another, or refuses.
        options = [
            option
            for option, action in self._option_string_actions.items()
            if option.startswith("--") and action.help != argparse.SUPPRESS
        ]
        for word in extras:
            if word.startswith("--"):
                meant = difflib.get_close_matches(word.split("=", 1)[0], options, n=1)
                if meant:
                    return f"; did you mean {meant[0]}?"
        return ""

    def _get_option_tuples(self, option_string: str) -> list[tuple[Any, ...]]:
        # An option hidden from the help (jobs ls's --status, its --state spelt as runs ls has it)
        # is no second option a prefix could mean: `--stat` is --state, not ambiguous.
        matches: list[tuple[Any, ...]] = super()._get_option_tuples(option_string)
        shown = [match for match in matches if match[0].help != argparse.SUPPRESS]
        return shown if len(matches) > 1 and shown else matches

    def _refuse_outer_options(self, args: Sequence[str]) -> None:
        """Refuse an option of the program's own parser among `args`, before they are parsed:
        parsing would check its value as the positional or command word it took the place of,
        and echo it, and the value may be a token. Words after `--` are positionals, and those
        after a group's command word (`models alias ...`) are its command's to refuse, as are
        those after any other word that takes a command word's place (`export MODEL --json`):
        that word is refused first, as no command of the group."""
        commands = {
            name
            for action in self._actions
            if isinstance(action, argparse._SubParsersAction)
            for name in action.choices
        }
        for word in args:
            if word == "--" or word in commands or (commands and not word.startswith("-")):
                return
            usage = self._outer_option_usage(word.split("=", 1)[0])
            if usage is not None:
                # Named by its usage only, for the same reason.
                program, _, command = self.prog.partition(" ")
                self.error(
                    f"{usage.split(' ', 1)[0]} is an option of {program} itself: give it before "
                    f"the command, `{program} {usage} {command} ...`"
                )

    def _outer_option_usage(self, name: str) -> str | None:
        """The usage of the program's own option that `name` is, or abbreviates unambiguously as
        the program's parser takes it (`--tok`), where it is none of this parser's own options."""
        if name in self.outer_options:
            return self.outer_options[name]
        if not name.startswith("--") or any(
            option.startswith(name) for option in self._option_string_actions
        ):
            return None
        meant = [usage for option, usage in self.outer_options.items() if option.startswith(name)]
        return meant[0] if len(meant) == 1 else None

    def _followed_by_positional(self, value: str, action: argparse.Action) -> bool:
        """Whether a positional follows `value` among the words given: options after it, and
        their values, do not count (`export MODEL --version 2` has nothing after MODEL). An
        option is looked up among this parser's, its commands' (`export onnx --version`) and the
        program's own (`--token TOKEN`)."""
        if value not in self._words:
            return False
        commands = action.choices.values() if isinstance(action, argparse._SubParsersAction) else ()
        takes_value = {option: " " in usage for option, usage in self.outer_options.items()}
        for parser in [self, *commands]:
            takes_value |= {option: a.nargs != 0 for option, a in parser._option_string_actions.items()}
        following = iter(self._words[self._words.index(value) + 1 :])
        for word in following:
            if word == "--":
                return next(following, None) is not None
            if word == "-" or not word.startswith("-"):
                return True
            name, equals, _ = word.partition("=")
            meant = (
                [name]
                if name in takes_value
                else [option for option in takes_value if option.startswith(name)]
            )
            if not equals and meant and all(takes_value[option] for option in meant):
                next(following, None)
        return False

    def _check_value(self, action: argparse.Action, value: Any) -> None:
        try:
            super()._check_value(action, value)
        except argparse.ArgumentError:
            # argparse lists every choice (every command, for a mistyped one) and leaves the
            # reader to find the one meant among them. The message is built here with or without
            # a guess: argparse's own quotes its choices in some Python versions and not others.
            choices = list(action.choices or ())
            meant = difflib.get_close_matches(str(value), [str(choice) for choice in choices], n=1)
            hint = self.choice_hints.get(str(value), "")
            if not hint and self.spec_choice_hint and str(value).lower().endswith(".toml"):
                hint = self.spec_choice_hint.format(value=value)
            if not hint and not meant:
                followed = self._followed_by_positional(str(value), action)
                hint = (self.followed_choice_hint if followed else self.other_choice_hint).format(value=value)
            guess = f"; {hint}" if hint else f"; did you mean {meant[0]!r}?" if meant else ""
            listed = ", ".join(repr(choice) for choice in choices)
            raise argparse.ArgumentError(
                action, f"invalid choice: {value!r}{guess} (choose from {listed})"
            ) from None

    def error(self, message: str) -> NoReturn:
        # Both ways argparse refuses words left over (a command's parser here, the program's in
        # parse_args) say it in these words.
        unrecognized = "unrecognized arguments: "
        if message.startswith(unrecognized):
            message += self._meant_option(message.removeprefix(unrecognized).split())
        if self.exclusive_hint and ": not allowed with argument " in message:
            message += f"; {self.exclusive_hint}"
        for action in self._actions:
            if (
                isinstance(action, argparse._SubParsersAction)
                and isinstance(action.metavar, str)
                and message == f"the following arguments are required: {action.metavar}"
            ):
                # The help entries: one per command, its aliases (`list` for `ls`) left out.
                names = ", ".join(choice.dest for choice in action._get_subactions())
                message = (
                    f"no {action.metavar.lower()} given: {names} (`{self.prog} --help` says what each does)"
                )
        super().error(message)
