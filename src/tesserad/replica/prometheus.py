"""A replica's link to its primary on the daemon's Prometheus registry, read when /metrics is
scraped (only a replica registers it). A replica refused by its primary, or without one, stays
ready and serves what it holds: these series are what an alert watches (deploy/prometheus).
No labels: a replica follows one primary."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry
from prometheus_client.metrics_core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from tesserad.replica.followed import FollowedRegistry
from tesserad.replica.link import PrimaryLink

_GAUGES = {
    "tessera_replica_connected": "1 while this replica's change stream from its primary is open, else 0.",
    "tessera_replica_refused": "1 while the primary refuses this replica for a cause only a fix there "
    "cures (its token removed, expired or of too small a role, a primary that takes no watch from it), "
    "else 0.",
    "tessera_replica_applied_change": "The number of the last registry change this replica applied: "
    "it routes requests as the primary's registry stood then.",
    "tessera_replica_primary_change": "The primary's newest registry change number as this replica "
    "last heard it: a change its stream delivered, or the newest its heartbeats told of (every "
    "replica.keepalive_s, also while no change flows); minus tessera_replica_applied_change it is how "
    "far behind the primary the replica routes, growing while its stream is slow or its applying "
    "stalls.",
    "tessera_replica_last_contact_timestamp_seconds": "When this replica's change stream from its "
    "primary was last open (the scrape's time while it is; 0 before it ever was).",
}


class ReplicaMetrics(Collector):
    def __init__(self, link: PrimaryLink, followed: FollowedRegistry, registry: CollectorRegistry) -> None:
        self._link = link
        self._followed = followed
        registry.register(self)

    def describe(self) -> list[Metric]:
        return [GaugeMetricFamily(name, help_text) for name, help_text in _GAUGES.items()]

    def collect(self) -> Iterator[Metric]:
        state = self._link.state()
        values = {
            "tessera_replica_connected": int(state.connected),
            "tessera_replica_refused": int(self._followed.refused is not None),
            "tessera_replica_applied_change": self._followed.seq,
            "tessera_replica_primary_change": state.primary_change,
            "tessera_replica_last_contact_timestamp_seconds": state.last_contact,
        }
        for name, help_text in _GAUGES.items():
            yield GaugeMetricFamily(name, help_text, value=values[name])
