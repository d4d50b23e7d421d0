"""A before/after bench's result file: `--label`, `--out` (a new file under bench/results/, never
over an existing one) and `--before` (an earlier result to give old / new ratios against)."""

from __future__ import annotations

import argparse
import json
import os
import platform
from collections.abc import Callable
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).parent / "results"

Ratios = Callable[[dict[str, Any], dict[str, Any]], list[dict[str, Any]]]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--label", default="", help="what this run measures, e.g. before or after")
    parser.add_argument("--out", default="", help="write the result to bench/results/OUT (a new file)")
    parser.add_argument("--before", default="", help="an earlier result to give old / new ratios against")


def out_path(parser: argparse.ArgumentParser, args: argparse.Namespace) -> Path | None:
    """Where `--out` writes; a usage error, before anything runs, when that file exists."""
    path = RESULTS / args.out if args.out else None
    if path is not None and path.exists():
        parser.error(f"{path} exists; results files are never overwritten, pick another --out name")
    return path


def finish(
    bench: str,
    args: argparse.Namespace,
    path: Path | None,
    results: list[dict[str, Any]],
    load_before: tuple[float, float, float],
    ratios: Ratios,
) -> None:
    """The run's result (with the ratios against `--before`'s), printed and written to `path`."""
    out: dict[str, Any] = {
        "bench": bench,
        "label": args.label,
        "repeats": args.repeats,
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "load_average": {"start": load_before, "end": os.getloadavg()},
        "results": results,
    }
    if args.before:
        out["before_over_after"] = ratios(json.loads(Path(args.before).read_text()), out)
        print(json.dumps(out["before_over_after"], indent=2))
    if path is not None:
        path.parent.mkdir(exist_ok=True)
        path.write_text(json.dumps(out, indent=2) + "\n")
        print(f"wrote {path}")
