"""`tessera`: the command line for tesserad. Tables for people, `--json` for scripts; every
failure exits non-zero with the daemon's message, never a traceback.

This module keeps to the standard library: `python -m tessera.cli` imports it before its
__main__ sets the entry's handlers for Ctrl-C and SIGTERM, so the CLI's own imports (grpc,
numpy, rich: a good part of a second) wait for `main`. The package's modules: runner (one
command run, its failures as exit statuses), parser (every command and its --help), arguments
and output (what the commands read and print), and one module per group of commands."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from tessera.entry import EXIT_INTERRUPTED, EXIT_TERMINATED

if TYPE_CHECKING:
    from rich.console import Console

__all__ = [
    "EXIT_DAEMON",
    "EXIT_FAILED",
    "EXIT_INTERRUPTED",
    "EXIT_OUTPUT_CLOSED",
    "EXIT_STATUS_HELP",
    "EXIT_TERMINATED",
    "EXIT_USAGE",
    "main",
]

EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_DAEMON = 3
# What a shell reports for a tool killed by SIGPIPE (128 + 13), as `yes | head` leaves for yes.
EXIT_OUTPUT_CLOSED = 141
EXIT_STATUS_HELP = f"""\
exit status:
  0    done
  {EXIT_FAILED}    failed here: a file could not be read or written (stdout closed
       with `>&-` too), a spec file is wrong, a followed job or sweep ended
       without succeeding, `load --keep-config` found the version not
       loaded (no config to keep), or `admin verify` found damage
  {EXIT_USAGE}    the command line is wrong: the message says what, under the
       command's usage
  {EXIT_DAEMON}    the daemon refused or failed the request, or could not be reached:
       the message starts with the gRPC status (NOT_FOUND, INVALID_ARGUMENT,
       UNAVAILABLE, ...); NOT_FOUND too for `runs leaderboard` of a metric
       the experiment's runs have not logged (another they have, it names)
       and no run is still running or waiting to resume
  {EXIT_INTERRUPTED}  interrupted (Ctrl-C); a file being written is removed (a download
       with --resume keeps its bytes for the next --resume)
  {EXIT_TERMINATED}  terminated (SIGTERM); a file being written is removed, as after Ctrl-C
  {EXIT_OUTPUT_CLOSED}  the output was closed early (`tessera ... | head`); nothing more
       is printed

--json prints enum values as the tables show them, lowercase without their
type's prefix ("succeeded", not "JOB_STATE_SUCCEEDED"); 64-bit integers are
numbers; a field at 0, "" or false is printed, not left out. With --json too,
a failure is text on stderr, never JSON (stdout holds only what was done, as
with gh or kubectl): test the status, and for 3 the gRPC status after
"tessera: " ("tessera: NOT_FOUND: ...")."""


def main(argv: Sequence[str] | None = None, console: Console | None = None) -> int:
    """Run one command; returns the exit status (tessera.cli.runner.main)."""
    from tessera.cli.runner import main as run_main

    return run_main(argv, console)
