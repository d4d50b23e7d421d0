"""The argparse parser both command lines (`tessera`, `tesserad`) use; standard library only, so
the daemon's command line imports it without the SDK."""

from __future__ import annotations

import argparse
from typing import NoReturn


class CommandParser(argparse.ArgumentParser):
    """argparse's parser, saying which commands there are when one is missing (argparse says
    only "the following arguments are required: COMMAND")."""

    def error(self, message: str) -> NoReturn:
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
