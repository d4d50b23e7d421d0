"""Tables that fit the console without cutting what people copy or read as one word."""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass

from rich.cells import cell_len
from rich.table import Table
from rich.text import Text

# Below this many cells a wrapped column is left out rather than folded letter by letter.
_NARROWEST_WRAPPED = 8


class Word(str):
    """A cell's text read as one word though it holds spaces (a size "258.5 KiB", a time
    "2026-12-07 03:05:29"): never wrapped, so its column is at least as wide; the free text
    beside it wraps instead."""


@dataclass
class FittedTable:
    table: Table
    # What it needs: more than the console's width when its whole columns alone are wider.
    width: int
    left_out: list[str]


def fitted_table(
    width: int,
    title: str | None,
    columns: Sequence[str],
    rows: Sequence[Sequence[object]],
    whole: Collection[str] = (),
    unbroken: Collection[str] = (),
    stacked: Mapping[str, str] | None = None,
    leave_out_first: Sequence[str] = (),
    caption: str | None = None,
    cut: Collection[str] = (),
) -> FittedTable:
    """A table for a console `width` cells wide. The columns named in `whole` (ids, names,
    version numbers) are never cut or wrapped; those in `unbroken` (key=value lists) wrap only
    between words; the others wrap anywhere, but for their cells that are a `Word` (sizes,
    times), kept on one line. When the table is too wide, each column named in `stacked` goes
    under the column it maps to, in one cell on two lines (a run's name under its id); if it is
    still too wide, columns are left out, those in `leave_out_first` first, then from the right
    (the caption says which), but for a column of `Word`s, whose words are put on lines of their
    own rather than it is left out. A column named in `cut` (free text read at a glance, a
    description) is never wrapped: a cell wider than the width it gets is cut with an ellipsis,
    down to its header's width, past which it is left out.
    Cells are plain text, never rich markup."""
    headers = list(columns)
    cells = [[str(cell) for cell in row] for row in rows]
    # Per column: its widest Word cell, and its longest word in a Word cell (0: none).
    word_cells = [[cell for row in rows if isinstance(cell := row[i], Word)] for i in range(len(columns))]
    kept = [max((cell_len(cell) for cell in column), default=0) for column in word_cells]
    kept_words = [
        max((cell_len(w) for cell in column for w in cell.split()), default=0) for column in word_cells
    ]
    widths = [
        cell_len(header)
        if header in cut
        else max(
            kept[i], _column_width(header, [row[i] for row in cells], header in whole, header in unbroken)
        )
        for i, header in enumerate(columns)
    ]
    shown = list(range(len(columns)))
    stacked_now: list[str] = []
    for below, above in (stacked or {}).items():
        if table_width([widths[i] for i in shown]) <= width:
            break
        i, j = columns.index(below), columns.index(above)
        headers[j] = f"{headers[j]}\n{headers[i]}"
        for row in cells:
            row[j] = f"{row[j]}\n{row[i]}"
        widths[j] = max(widths[j], widths[i])
        shown.remove(i)
        stacked_now.append(below)
    relaxed = False  # whether Word cells may go over lines, at their spaces
    while table_width([widths[i] for i in shown]) > width:
        droppable = [i for i in shown if columns[i] not in whole]
        droppable.sort(key=lambda i: columns[i] in leave_out_first)
        if not droppable:
            break
        if kept[droppable[-1]] and not relaxed:
            relaxed = True
            for i in shown:
                if kept[i] and columns[i] not in whole:
                    widths[i] = max(
                        kept_words[i], _column_width(columns[i], [row[i] for row in cells], False, False)
                    )
            continue
        shown.remove(droppable[-1])
    left_out = [columns[i] for i in range(len(columns)) if i not in shown and columns[i] not in stacked_now]
    notes = [caption] if caption else []
    if left_out:
        notes.append(f"left out to fit the width: {', '.join(left_out)} (--json has all)")
    table = Table(title=title, caption="\n".join(notes) or None)
    fixed = _wrapping_widths(
        width,
        [headers[i] for i in shown],
        [[row[i] for i in shown] for row in cells],
        [widths[i] for i in shown],
        [columns[i] not in whole for i in shown],
        [kept[i] for i in shown],
        [columns[i] in cut for i in shown],
    )
    for i, column_width in zip(shown, fixed, strict=True):
        if columns[i] in whole:
            table.add_column(headers[i], no_wrap=True, min_width=widths[i])
        elif columns[i] in cut:
            table.add_column(headers[i], no_wrap=True, overflow="ellipsis", width=column_width)
        elif column_width is not None:
            table.add_column(headers[i], overflow="fold", width=column_width)
        else:
            table.add_column(headers[i], overflow="fold", min_width=widths[i])
    for row in cells:
        table.add_row(*(Text(row[i]) for i in shown))
    return FittedTable(table, max(width, table_width([widths[i] for i in shown])), left_out)


def _wrapping_widths(
    width: int,
    headers: Sequence[str],
    cells: Sequence[Sequence[str]],
    narrowest: Sequence[int],
    wrapping: Sequence[bool],
    kept: Sequence[int],
    cut: Sequence[bool],
) -> list[int | None]:
    """The width of each wrapping column of a table that does not fit `width` unwrapped: its
    longest word (or widest Word cell, `kept`) while that fits (from the left), else its
    narrowest (a `cut` column's, which cuts words anyway: its narrowest alone); then a share of what is left by how much wider it would be unwrapped. None for each column when the table fits: rich
    then sizes them. rich's own narrowing would take the widest wrapping columns below their
    narrowest (breaking a word, or a header's word) and then widen them back past the
    console's width."""
    texts = [[header, *(row[k] for row in cells)] for k, header in enumerate(headers)]
    natural = [max(cell_len(line) for text in column for line in text.split("\n")) for column in texts]
    if table_width(natural) <= width:
        return [None] * len(headers)
    words = [
        max([kept[k], *(cell_len(word) for text in column for word in text.split())])
        for k, column in enumerate(texts)
    ]
    base = list(narrowest)
    for k in range(len(headers)):
        whole_words = (
            max(narrowest[k], min(words[k], natural[k])) if wrapping[k] and not cut[k] else narrowest[k]
        )
        if table_width([*base[:k], whole_words, *base[k + 1 :]]) <= width:
            base[k] = whole_words
    spare = max(0, width - table_width(base))
    wants = [max(0, natural[k] - base[k]) if wrapping[k] else 0 for k in range(len(headers))]
    total = sum(wants)
    return [
        base[k] + (spare * wants[k] // total if total else 0) if wrapping[k] else None
        for k in range(len(headers))
    ]


def _column_width(header: str, cells: Sequence[str], whole: bool, unbroken: bool) -> int:
    """The narrowest a column may be: all of its widest cell when whole, its longest word when
    unbroken, else its header's longest word or its cells' (up to _NARROWEST_WRAPPED),
    whichever is wider."""
    if whole:
        return max(cell_len(text) for text in [header, *cells])
    longest_cell_word = max((cell_len(word) for text in cells for word in text.split()), default=1)
    longest_header_word = max((cell_len(word) for word in header.split()), default=1)
    if unbroken:
        return max(longest_header_word, longest_cell_word)
    return max(longest_header_word, min(longest_cell_word, _NARROWEST_WRAPPED))


def table_width(column_widths: Sequence[int]) -> int:
    """Width of a rich table with these columns: a space each side of each, and the rules."""
    return sum(width + 2 for width in column_widths) + len(column_widths) + 1
