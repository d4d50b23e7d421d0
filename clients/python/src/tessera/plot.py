"""A small line plot drawn with characters, for loss curves at the end of `tessera train --follow`."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

MARKS = "•x+o*#"


def line_plot(
    series: Mapping[str, Sequence[tuple[float, float]]],
    width: int = 60,
    height: int = 12,
    x_label: str = "step",
) -> str:
    """Each series (name -> (x, y) points) drawn with its own mark on one grid, with the y range
    on the left and a legend below. Non-finite points are skipped; empty input gives ""."""
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
        y_max = y_min + 1.0
    grid = [[" "] * width for _ in range(height)]
    for mark, values in zip(MARKS, points.values(), strict=False):
        for x, y in values:
            col = 0 if x_max == x_min else round((x - x_min) / (x_max - x_min) * (width - 1))
            row = round((y_max - y) / (y_max - y_min) * (height - 1))
            grid[row][col] = mark
    labels = [f"{y_max:.4g}", f"{(y_max + y_min) / 2:.4g}", f"{y_min:.4g}"]
    pad = max(len(label) for label in labels)
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
    legend = "   ".join(f"{mark} {name}" for mark, name in zip(MARKS, points, strict=False))
    lines.append(f"{'':>{pad}}  {legend}")
    return "\n".join(lines)
