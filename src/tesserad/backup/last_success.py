"""When this daemon last served a whole backup archive: the Unix time in a small file of the data
directory (`LAST_BACKUP_NAME`), so a restart keeps it, exported as
`tessera_backup_last_success_timestamp_seconds` for an alert on backups that stopped (the CronJob
or timer failing, its token revoked).

A file beside the store, not a row in it: a backup must not change what it backs up (two backups
of an idle daemon hold the same records), and an archive restored into a new directory must not
bring an old time with it (none of the restored store has been backed up yet: 0 until the next).
The daemon knows only that it sent the archive's last chunk; whether the client wrote it all to
disk is the client's exit status (the CronJob's, the timer's).
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

from prometheus_client import CollectorRegistry
from prometheus_client.metrics_core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

LAST_BACKUP_NAME = "tesserad.last-backup"
METRIC = "tessera_backup_last_success_timestamp_seconds"
_HELP = (
    "Unix time this daemon last sent a whole backup archive (System.Backup, `tessera admin "
    "backup`), kept across restarts; 0: none since the data directory was made or restored."
)


def record_backup(path: Path) -> None:
    """Write now to `path`, whole or not at all (a temp file renamed over it)."""
    temp = path.with_name(path.name + ".tmp")
    temp.write_text(f"{time.time()!r}\n")
    os.replace(temp, path)


def last_backup(path: Path) -> float:
    """The time `record_backup` last wrote to `path`; 0.0 when it never did (or the file cannot
    be read: the alert then fires, which is what an unknown backup age should do)."""
    try:
        return float(path.read_text())
    except (OSError, ValueError):
        return 0.0


class BackupMetrics(Collector):
    """The gauge, read from the file when /metrics is scraped."""

    def __init__(self, path: Path, registry: CollectorRegistry) -> None:
        self._path = path
        registry.register(self)

    def describe(self) -> list[Metric]:
        return [GaugeMetricFamily(METRIC, _HELP)]

    def collect(self) -> Iterator[Metric]:
        yield GaugeMetricFamily(METRIC, _HELP, value=last_backup(self._path))
