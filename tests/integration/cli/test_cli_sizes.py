"""Byte sizes of a TiB and more read in TiB, as the progress line and the daemon say them, not
as thousands of GiB."""

from __future__ import annotations

import io

from rich.console import Console

from tessera.cli import main
from tests.conftest import InProcessDaemon, daemon_settings


def test_info_shows_a_store_map_of_tebibytes_in_tib(tmp_path):
    # LMDB reserves the map as address space, not disk: 2 TiB costs nothing here.
    large = InProcessDaemon(daemon_settings(tmp_path, **{"store.map_size": "2TiB"})).start()
    screen = io.StringIO()
    try:
        code = main(["--target", large.target, "info"], console=Console(file=screen, width=160))
    finally:
        large.stop()
    assert code == 0
    assert " of 2.0 TiB, " in screen.getvalue(), screen.getvalue()
