"""Run `tessera` in-process against the real daemon, capturing what it prints."""

from __future__ import annotations

import io
import json
from dataclasses import dataclass

import numpy as np
import pytest
from rich.console import Console

import tessera
from tessera.cli import main


@dataclass
class Result:
    code: int
    out: str
    err: str

    def json(self):
        """stdout as JSON, read as strictly as jq reads it (no NaN or Infinity literals)."""
        return json.loads(self.out, parse_constant=_not_json)


def _not_json(literal: str) -> None:
    raise ValueError(f"{literal} is not JSON; jq refuses it")


@pytest.fixture
def tessera_cli(daemon, capsys):
    """tessera_cli("models", "ls", "--json") -> Result(exit code, stdout + table text, stderr)."""

    def run(*args: str, target: str | None = None) -> Result:
        screen = io.StringIO()
        console = Console(file=screen, width=160, force_terminal=False, color_system=None)
        code = main(["--target", target or daemon.target, *args], console=console)
        captured = capsys.readouterr()
        return Result(code, captured.out + screen.getvalue(), captured.err)

    return run


@pytest.fixture
def client(daemon):
    with tessera.Client(daemon.target) as sdk:
        yield sdk


@pytest.fixture
def table_dataset(client, tmp_path):
    """A 40-row table (4 features, 2 classes) pushed as dataset "table" with a val split."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 4)).astype(np.float32)
    path = tmp_path / "table.npz"
    np.savez(path, x=x, y=(x[:, 0] > 0).astype(np.int64))
    client.datasets.push("table", path, splits={"train": 0.75, "val": 0.25})
