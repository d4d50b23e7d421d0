"""What the tests of a store as an older tesserad left it share: a daemon on a data directory
stopped at the end, the store written while none runs, and an ended sweep as a daemon stores it."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from tesserad.server import STORE_TABLES
from tesserad.store import Store, WriteTxn
from tesserad.training.search_space import SweepParameter
from tesserad.training.sweeps import AshaSettings, Sweep, Trial
from tests.conftest import InProcessDaemon, daemon_settings


@contextlib.contextmanager
def daemon_on(data_dir: Path, **overrides: Any) -> Iterator[InProcessDaemon]:
    """A daemon on `data_dir` (daemon_settings with `overrides`), stopped at the end."""
    running = InProcessDaemon(daemon_settings(data_dir, **overrides)).start()
    try:
        yield running
    finally:
        running.stop()


def written_while_stopped(data_dir: Path, write: Callable[[WriteTxn], None]) -> None:
    """`write` run in one transaction on the store in `data_dir`, which no daemon has open."""
    store = Store.open(data_dir / "store", map_size=1 << 30, tables=STORE_TABLES)
    try:
        with store.write() as txn:
            write(txn)
    finally:
        store.close()


def old_sweep(
    base: dict,
    sweep_id: str,
    trials: list[Trial] | None = None,
    parameters: list[SweepParameter] | None = None,
) -> Sweep:
    """An ended (failed) grid sweep as a daemon stores it."""
    return Sweep(
        sweep_id=sweep_id,
        strategy="grid",
        metric="val_loss",
        mode="min",
        max_concurrent=1,
        asha=AshaSettings(0, 0),
        document={},
        state="failed",
        created_at=1.0,
        created_by="anonymous",
        best_job_id="",
        rungs={},
        trials=trials or [],
        base=base,
        parameters=parameters or [],
    )
