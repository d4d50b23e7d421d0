"""A small line plot drawn with characters, for loss curves at the end of `tessera train --follow`."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

MARKS = "•x+o*#"
# Below this the points of a plot run together.
NARROWEST_GRID = 20


def line_plot(
    series: Mapping[str, Sequence[tuple[float, float]]],
    width: int = 60,
    height: int = 12,
    x_label: str = "step",
    max_width: int | None = None,
) -> str:
    """Each series (name -> (x, y) points) drawn with its own mark on one grid `width` cells
    wide, with the y range on the left and a legend below. With `max_width` (a console's), the
    grid narrows, to no fewer than NARROWEST_GRID cells, and the legend goes over more lines,
    so that no line is wider. Non-finite points are skipped; empty input gives ""."""
    points = {
        name: [(x, y) for x, y in values if math.isfinite(x) and math.isfinite(y)]
        for name, values in series.items()
    }
    points = {name: values for name, values in points.items() if values}
    if not points:
        return ""
    xs = [x for values in points.values() for x, _ in values]
    ys = [y for values in points.values() for _, y in values]
    x_min, x_max = min(xs), max(xs)
    y_min, y_max = min(ys), max(ys)
    if y_max == y_min:
        # A flat line, centred: padded by a tenth of its value (1 at 0), so that the labels
        # read near it, not 1 apart from a value of 1e-6.
        spread = abs(y_min) / 10 or 1.0
        y_min, y_max = y_min - spread, y_max + spread
    labels = [f"{y_max:.4g}", f"{(y_max + y_min) / 2:.4g}", f"{y_min:.4g}"]
    pad = max(len(label) for label in labels)
    # Each line starts with the y labels' width and " │" (or two spaces).
    room = None if max_width is None else max_width - pad - 2
    if room is not None:
        width = max(min(width, room), NARROWEST_GRID)
    grid = [[" "] * width for _ in range(height)]
    for mark, values in zip(MARKS, points.values(), strict=False):
        for x, y in values:
            col = 0 if x_max == x_min else round((x - x_min) / (x_max - x_min) * (width - 1))
            row = round((y_max - y) / (y_max - y_min) * (height - 1))
            grid[row][col] = mark
    lines = []
    for row, cells in enumerate(grid):
        label = (
            labels[0]
            if row == 0
            else labels[2]
            if row == height - 1
            else labels[1]
            if row == height // 2
            else ""
        )
        lines.append(f"{label:>{pad}} │{''.join(cells)}")
    lines.append(f"{'':>{pad}} └{'─' * width}")
    lines.append(f"{'':>{pad}}  {x_min:<.4g}{f'{x_label} {x_max:.4g}':>{width - len(f'{x_min:.4g}')}}")
    entries = [f"{mark} {name}" for mark, name in zip(MARKS, points, strict=False)]
    lines += [f"{'':>{pad}}  {legend}" for legend in _legend_lines(entries, room)]
    return "\n".join(lines)


def _legend_lines(entries: Sequence[str], width: int | None) -> list[str]:
    """The legend's entries three spaces apart, on as many lines as `width` (None: any) needs."""
    legend = [entries[0]]
    for entry in entries[1:]:
        if width is None or len(legend[-1]) + 3 + len(entry) <= width:
            legend[-1] += "   " + entry
        else:
            legend.append(entry)
    return legend
