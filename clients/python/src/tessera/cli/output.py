"""Where a command's results go (tables or JSON on stdout, progress on stderr), and how values read in them."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from typing import Any, TextIO

from rich.cells import cell_len
from rich.console import Console
from rich.table import Table
from rich.text import Text

from tessera.json_output import dumps
from tessera.messages import to_datetime
from tessera.progress_line import byte_size
from tessera.tables import FittedTable, Word, fitted_table, table_width


class _PipeConsole(Console):
    """rich exits with status 1 when its output is closed; the CLI ends quietly instead."""

    def on_broken_pipe(self) -> None:
        self.quiet = True
        raise BrokenPipeError


class _StatusConsole(Console):
    """Progress on stderr: when its reader has gone, the command goes on without it."""

    def on_broken_pipe(self) -> None:
        self.quiet = True


class Output:
    """Where a command's results go: rich tables on the terminal, or JSON on stdout; progress
    goes to stderr (`status`), so that `> file` or `| jq` gets the results alone."""

    def __init__(self, as_json: bool, console: Console | None = None) -> None:
        self.as_json = as_json
        self.console = console or _PipeConsole(highlight=False, soft_wrap=False)
        self.status = _StatusConsole(stderr=True, highlight=False)

    def json(self, value: Any) -> None:
        print(dumps(value, indent=2))

    def table(
        self,
        title: str | None,
        columns: Sequence[str],
        rows: Iterable[Sequence[Any]],
        whole: Collection[str] = (),
        unbroken: Collection[str] = (),
        stacked: Mapping[str, str] | None = None,
        leave_out_first: Sequence[str] = (),
        narrower_rows: Iterable[Sequence[Any]] | None = None,
        cut: Collection[str] = (),
        narrowest_rows: Iterable[Sequence[Any]] | None = None,
    ) -> None:
        """A table that fits the console (see `fitted_table`); one whose whole columns alone are
        too wide is printed wider than the console rather than cut. `narrower_rows`, the same
        rows in shorter words, are shown instead when they leave out fewer columns than `rows`;
        `narrowest_rows`, shorter still, when they leave out fewer than either."""

        def fitted(cells: Iterable[Sequence[Any]]) -> FittedTable:
            return fitted_table(
                self.console.width,
                title,
                columns,
                list(cells),
                whole,
                unbroken,
                stacked,
                leave_out_first,
                cut=cut,
            )

        table = fitted(rows)
        for shorter in (narrower_rows, narrowest_rows):
            if table.left_out and shorter is not None:
                narrower = fitted(shorter)
                if len(narrower.left_out) < len(table.left_out):
                    table = narrower
        self.console.print(table.table, width=table.width, crop=False)

    def pairs(self, title: str, pairs: Iterable[tuple[str, Any]], whole: Collection[str] = ()) -> None:
        """Fields and their values in two columns, a long value folded. The value of a field in
        `whole` (a sha256, copied whole) is never folded: where the table cannot hold it on one
        line within the console's width, it goes on a line of its own below the table."""
        rows = [(key, str(value)) for key, value in pairs]
        key_width = max((cell_len(key) for key, _ in rows), default=0)
        below = [
            (key, value)
            for key, value in rows
            if key in whole and table_width([key_width, cell_len(value)]) > self.console.width
        ]
        table = Table(title=title, show_header=False)
        table.add_column("field", style="bold", no_wrap=True)
        table.add_column("value", overflow="fold")
        for key, value in rows:
            if (key, value) not in below:
                table.add_row(Text(key), Text(value))
        self.console.print(table)
        for key, value in below:
            # soft_wrap: on a console narrower still, the terminal wraps the line; no newline is put in it.
            self.console.print(f"{key}: {value}", markup=False, soft_wrap=True)

    def line(self, text: str) -> None:
        self.console.print(text, markup=False)


def when(timestamp: Any) -> Word:
    """A time as tables show it, kept on one line."""
    moment = to_datetime(timestamp)
    return Word(moment.strftime("%Y-%m-%d %H:%M:%S") if moment else "-")


def when_to_the_minute(timestamp: Any) -> Word:
    """A time as `when` shows it, without its seconds: for a table's narrower rows."""
    moment = to_datetime(timestamp)
    return Word(moment.strftime("%Y-%m-%d %H:%M") if moment else "-")


def size(count: int) -> Word:
    """A byte count in binary units as tables show it, kept on one line ("258.5 KiB")."""
    return Word(byte_size(count))


def shape(dims: Iterable[int]) -> str:
    return "(" + ", ".join("?" if d < 0 else str(d) for d in dims) + ")"


def transfer_progress(out: Output, label: str) -> Callable[[int, int], None] | None:
    """A progress callback printing whole-percent steps of an upload or download on stderr;
    None where no one watches (a script's stderr, as git decides) or with --json."""
    if out.as_json or not out.status.is_terminal:
        return None
    shown = {"percent": -1}

    def report(done: int, total: int) -> None:
        percent = 100 if total == 0 else done * 100 // total
        if percent // 25 > shown["percent"] // 25 or done == total:
            if percent != shown["percent"]:
                out.status.print(f"[dim]{label}: {percent}% of {byte_size(total)}[/dim]")
            shown["percent"] = percent

    return report


def close_output(stream: TextIO | None = None) -> None:
    """Point `stream` (default stdout) at /dev/null: Python flushes it once more at exit, and
    a failure there prints its own complaint and makes the status 120."""
    try:
        fd = (stream or sys.stdout).fileno()
    except (OSError, ValueError, AttributeError):
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, fd)
    os.close(devnull)
