"""How full the store is, on the daemon's Prometheus registry, read when /metrics is scraped: for
an alert that fires before writes are refused with RESOURCE_EXHAUSTED.

Ordinary writes are refused once `tessera_store_live_bytes` (the pages the tables hold; not
`tessera_store_used_bytes`, the high-water mark, which keeps the pages deletes freed and LMDB
reuses) reaches `tessera_store_map_size_bytes - tessera_store_reserve_bytes`, and any write once
`tessera_store_filesystem_free_bytes` is 0.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

from prometheus_client import CollectorRegistry
from prometheus_client.metrics_core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from tesserad.store.blobs import BlobStore
from tesserad.store.database import Store

_GAUGES = {
    "tessera_store_map_size_bytes": "The most the LMDB database may grow to (store.map_size).",
    "tessera_store_used_bytes": "The LMDB database's high-water mark: pages it has used, freed ones "
    "it reuses included.",
    "tessera_store_live_bytes": "Pages the LMDB tables hold now (freed pages not counted): ordinary "
    "writes are refused once this reaches map_size_bytes minus reserve_bytes; it falls after deletes, "
    "where used_bytes does not.",
    "tessera_store_reserve_bytes": "The map's last part, kept for the writes that end a job or sweep: "
    "ordinary writes are refused with RESOURCE_EXHAUSTED once live_bytes reaches map_size_bytes "
    "minus this.",
    "tessera_store_filesystem_free_bytes": "Bytes the daemon may still write on the data directory's "
    "filesystem.",
    "tessera_store_filesystem_size_bytes": "Size of the data directory's filesystem.",
    "tessera_store_blobs": "Blobs (artifacts, checkpoints, dataset files) in the blob directory, "
    "counted again once blobs came or went (a large directory's count may lag by up to 9 times "
    "its walk).",
    "tessera_store_blob_bytes": "Bytes of the blobs in the blob directory, counted with tessera_store_blobs.",
}


class StoreMetrics(Collector):
    def __init__(self, store: Store, blobs: BlobStore, data_dir: Path, registry: CollectorRegistry) -> None:
        self._store = store
        self._blobs = blobs
        self._data_dir = data_dir
        registry.register(self)

    def describe(self) -> list[Metric]:
        return [GaugeMetricFamily(name, help_text) for name, help_text in _GAUGES.items()]

    def collect(self) -> Iterator[Metric]:
        usage = self._store.usage()
        census = self._blobs.census()
        values = {
            "tessera_store_map_size_bytes": usage.map_size,
            "tessera_store_used_bytes": usage.used_bytes,
            "tessera_store_live_bytes": usage.live_bytes,
            "tessera_store_reserve_bytes": usage.reserve_bytes,
            "tessera_store_blobs": census.count,
            "tessera_store_blob_bytes": census.bytes,
        }
        # A scrape must not fail for a data directory gone away: its gauges are left out instead.
        try:
            disk = os.statvfs(self._data_dir)
        except OSError:
            pass
        else:
            values["tessera_store_filesystem_free_bytes"] = disk.f_bavail * disk.f_frsize
            values["tessera_store_filesystem_size_bytes"] = disk.f_blocks * disk.f_frsize
        for name, help_text in _GAUGES.items():
            if name in values:
                yield GaugeMetricFamily(name, help_text, value=values[name])
