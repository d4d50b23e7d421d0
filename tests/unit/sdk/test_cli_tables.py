"""CLI tables on a narrow or piped console: ids, names and version numbers are printed whole;
the other columns wrap, and are left out from the right (and named) when they cannot fit."""

from __future__ import annotations

import io

from rich.console import Console

from tessera.cli.output import Output

JOB_ID = "job-01m8yzx4r0sb3yhrsw"
COLUMNS = ["id", "state", "experiment", "progress", "created"]
ROWS = [(JOB_ID, "succeeded", "spacetime-classifiers", "100%", "2026-12-03 22:20:23")]


def printed(width: int, whole: tuple[str, ...] = ("id",)) -> str:
    screen = io.StringIO()
    out = Output(as_json=False, console=Console(file=screen, width=width, color_system=None))
    out.table("jobs", COLUMNS, ROWS, whole=whole)
    return screen.getvalue()


def test_ids_are_whole_on_a_narrow_console_and_columns_that_cannot_fit_are_named():
    text = printed(60)
    assert JOB_ID in text
    assert all(len(line) <= 60 for line in text.splitlines())
    assert "left out to fit the width: progress, created" in " ".join(text.split())
    assert "succeeded" in text and "spacetime" in text  # wrapped, not cut


def test_a_wide_console_shows_every_column_unwrapped():
    text = printed(160)
    assert JOB_ID in text and "spacetime-classifiers" in text and "2026-12-03 22:20:23" in text
    assert "left out" not in text


def test_whole_columns_too_wide_for_the_console_are_printed_wider_rather_than_cut():
    text = printed(20, whole=("id", "experiment"))
    assert JOB_ID in text and "spacetime-classifiers" in text
    assert "left out to fit the width: state, progress, created" in " ".join(text.split())


def test_without_whole_columns_an_id_would_have_been_cut():
    """The failure the whole columns prevent: rich's default ellipsis on a narrow console."""
    assert JOB_ID not in printed(60, whole=())


def test_cells_are_text_not_markup():
    """A description such as "[beta] model [/]" is the daemon's text: shown as it is."""
    screen = io.StringIO()
    out = Output(as_json=False, console=Console(file=screen, width=80, color_system=None))
    out.table("versions", ["version", "description"], [(1, "[beta] model [/]")], whole=("version",))
    out.pairs("v1", [("description", "[bold]not bold[/bold]")])
    assert "[beta] model [/]" in screen.getvalue() and "[bold]not bold[/bold]" in screen.getvalue()


def test_unbroken_columns_and_headers_keep_their_words_at_every_width():
    """rich narrows the widest wrapping column below its narrowest and widens it back past
    the console: the widths are set so that neither a word nor the table's width breaks."""
    params = "optimizer.lr=0.0123, optimizer.weight_decay=0.00012, batch_size=32"
    for width in range(72, 140, 5):  # from the narrowest that holds id, state and params
        screen = io.StringIO()
        out = Output(as_json=False, console=Console(file=screen, width=width, color_system=None))
        out.table(
            "runs",
            ["id", "state", "params", "description", "created"],
            [(JOB_ID, "succeeded", params, "a long free-text description of the run", "2026-12-03 22:20:23")],
            whole=("id",),
            unbroken=("params",),
        )
        text = screen.getvalue()
        assert all(len(line) <= width for line in text.splitlines()), text
        header = next(line for line in text.splitlines() if line.startswith("┃"))
        assert " state " in header and " params " in header, text
        for word in params.split():
            assert word in text, text
        if " description " in header:
            assert "succeeded" in text, text
