"""The `tessera` command's entry point, kept to the standard library: it answers Ctrl-C and
SIGTERM from its first instant, then imports the CLI (grpc, numpy, rich and the stubs take a
good part of a second), where a signal would otherwise end in Python's traceback and a death
by SIGINT instead of the CLI's one line and its status."""

from __future__ import annotations

import contextlib
import os
import signal
from typing import NoReturn

EXIT_INTERRUPTED = 130
# What a shell reports for a tool killed by SIGTERM (128 + 15).
EXIT_TERMINATED = 143
STOPPED_BY = {
    signal.SIGINT: (EXIT_INTERRUPTED, "tessera: interrupted"),
    signal.SIGTERM: (EXIT_TERMINATED, "tessera: terminated"),
}


def _stop(signum: int, frame: object) -> NoReturn:
    """Outside a command (whose own handlers remove the file it writes) nothing is held: say so
    in one line and end at once (an exception raised inside an import can be caught and turned
    into another error on its way up)."""
    status, message = STOPPED_BY[signal.Signals(signum)]
    # With stderr closed (`2>&-`) or its reader gone, the status alone says it.
    with contextlib.suppress(OSError):
        os.write(2, f"{message}\n".encode())
    os._exit(status)


def main() -> int:
    """Run the CLI on sys.argv; its exit status. The CLI sets its own handlers while a command
    runs and puts these back after it."""
    for signum in STOPPED_BY:
        # A signal ignored stays ignored (a shell's background job ignores Ctrl-C).
        if signal.getsignal(signum) is not signal.SIG_IGN:
            signal.signal(signum, _stop)
    from tessera.cli import main as cli_main

    return cli_main()
