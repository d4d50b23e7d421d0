"""When this daemon last served a whole backup archive: kept in the store's "meta" table, so a
restart keeps it, and exported as `tessera_backup_last_success_timestamp_seconds` for an alert
on backups that stopped (the CronJob or timer failing, its token revoked).

The daemon knows only that it sent the archive's last chunk; whether the client wrote it all to
disk is the client's exit status (the CronJob's, the timer's). A store restored from an archive
holds the time of the backup before that archive's (the row is written after the archive is
made), so the alert fires there until the next backup, as it should: none of the restored store
has been taken yet.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

from prometheus_client import CollectorRegistry
from prometheus_client.metrics_core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from tesserad.store import Store
from tesserad.store.records import decode_record, encode_record

LAST_BACKUP_KEY = ("last_backup",)
_KIND = "last_backup"
_SCHEMA = 1
METRIC = "tessera_backup_last_success_timestamp_seconds"
_HELP = (
    "Unix time this daemon last sent a whole backup archive (System.Backup, `tessera admin "
    "backup`), kept across restarts; 0: none since the store was made."
)


def record_backup(store: Store) -> None:
    """Record now as the last backup served whole. A reserved write: a store near full is when a
    backup matters most, and this row is a few bytes."""
    with store.write(reserved=True) as txn:
        txn.put("meta", LAST_BACKUP_KEY, encode_record(_KIND, _SCHEMA, {"at": time.time()}))


def last_backup(store: Store) -> float:
    """The Unix time of the last backup served whole; 0.0 when there was none."""
    with store.read() as txn:
        raw = txn.get("meta", LAST_BACKUP_KEY)
    return 0.0 if raw is None else float(decode_record(raw, _KIND, _SCHEMA)[1]["at"])


class BackupMetrics(Collector):
    """The gauge, read from the store when /metrics is scraped."""

    def __init__(self, store: Store, registry: CollectorRegistry) -> None:
        self._store = store
        registry.register(self)

    def describe(self) -> list[Metric]:
        return [GaugeMetricFamily(METRIC, _HELP)]

    def collect(self) -> Iterator[Metric]:
        yield GaugeMetricFamily(METRIC, _HELP, value=last_backup(self._store))
