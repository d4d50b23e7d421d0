"""`--transfer-timeout` bounds the CLI's uploads and downloads, which `--timeout` does not reach:
the hour the SDK gives them could not be lengthened from the command line. A deadline that
passes says which flag to lengthen."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

from tessera.cli import EXIT_DAEMON
from tessera.cli.arguments import TRANSFER_TIMEOUT_ENV
from tesserad.datasets.service import Datasets

# Far below what the daemon is held for (until the test ends), far above gRPC's millisecond
# rounding of a deadline.
SHORT = "0.5"


@pytest.fixture
def table_file(tmp_path):
    path = tmp_path / "table.npz"
    np.savez(path, x=np.zeros((8, 4), np.float32))
    return path


def held(monkeypatch: pytest.MonkeyPatch, method: str) -> Iterator[None]:
    """The daemon's `Datasets.method` waits until the test is over: a transfer through it lasts
    however long the client's deadline allows."""
    opened = threading.Event()
    real = getattr(Datasets, method)

    def waiting(*args: Any, **kwargs: Any) -> Any:
        opened.wait(60)
        return real(*args, **kwargs)

    monkeypatch.setattr(Datasets, method, waiting)
    try:
        yield
    finally:
        opened.set()


@pytest.fixture
def upload_held(monkeypatch):
    yield from held(monkeypatch, "upload_limit")


@pytest.fixture
def download_held(monkeypatch):
    yield from held(monkeypatch, "read_chunks")


def test_an_upload_runs_past_the_transfer_timeout_and_says_which_flag_lengthens_it(
    tessera_cli, table_file, upload_held
):
    result = tessera_cli("--transfer-timeout", SHORT, "datasets", "push", "table", str(table_file))
    assert result.code == EXIT_DAEMON, result.err
    assert result.err.startswith("tessera: DEADLINE_EXCEEDED: "), result.err
    assert result.err.endswith(
        "; the transfer may take --transfer-timeout (0.5 s): give it more seconds\n"
    ), result.err
    assert "--timeout (" not in result.err, result.err
    assert "Traceback" not in result.err


def test_the_transfer_timeout_comes_from_the_environment(tessera_cli, table_file, monkeypatch, upload_held):
    monkeypatch.setenv(TRANSFER_TIMEOUT_ENV, SHORT)
    result = tessera_cli("datasets", "push", "table", str(table_file))
    assert result.code == EXIT_DAEMON and "DEADLINE_EXCEEDED" in result.err, result.err
    assert "--transfer-timeout (0.5 s)" in result.err


def test_a_download_takes_the_transfer_timeout_and_leaves_no_file(tessera_cli, table_file, tmp_path, request):
    assert tessera_cli("datasets", "push", "table", str(table_file)).code == 0
    request.getfixturevalue("download_held")
    target = tmp_path / "out.npz"
    result = tessera_cli("--transfer-timeout", SHORT, "datasets", "download", "table", "-o", str(target))
    assert result.code == EXIT_DAEMON and "DEADLINE_EXCEEDED" in result.err, result.err
    # The download looks its version up first, under --timeout: either could have passed.
    assert "the transfer --transfer-timeout (0.5 s): give the one it ran past more seconds" in result.err
    assert not target.exists()
