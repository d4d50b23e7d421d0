"""How the daemon sizes gRPC core's per-connection stream cap and pending-call queue from its
limits."""

from __future__ import annotations

import dataclasses

from tesserad.config import LimitsSettings
from tesserad.server import _pending_calls, _streams_per_connection


def test_the_queue_is_core_s_hard_limit_at_least_and_grows_with_the_limits() -> None:
    assert _pending_calls(LimitsSettings()) == 4 * (1000 + 100)
    small = dataclasses.replace(LimitsSettings(), max_concurrent_calls=10, max_concurrent_streams=10)
    assert _pending_calls(small) == 3000


def test_the_queue_stops_at_its_most_whatever_the_limits() -> None:
    huge = dataclasses.replace(
        LimitsSettings(), max_concurrent_calls=1_000_000, max_concurrent_streams=1_000_000
    )
    assert _streams_per_connection(huge) == 2_000_000
    assert _pending_calls(huge) == 100_000
