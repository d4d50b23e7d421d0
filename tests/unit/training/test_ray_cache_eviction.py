"""Which fetched datasets a Ray node's cache evicts (training.ray_worker_client.files_to_evict)."""

from __future__ import annotations

from tesserad.training.ray_worker_client import RECENT_USE_S, CachedFile, files_to_evict

NOW = 10_000.0
OLD = NOW - 10 * RECENT_USE_S


def test_nothing_goes_while_everything_fits() -> None:
    files = [CachedFile("a", 40, OLD), CachedFile("b", 60, OLD + 1)]
    assert files_to_evict(files, 100, keep="b", now=NOW) == []


def test_the_least_recently_used_go_first_until_the_rest_fit() -> None:
    files = [CachedFile("new", 50, OLD + 3), CachedFile("oldest", 30, OLD), CachedFile("older", 30, OLD + 1)]
    files.append(CachedFile("fetched", 50, NOW))
    assert files_to_evict(files, 110, keep="fetched", now=NOW) == ["oldest", "older"]


def test_the_file_just_fetched_and_recently_used_ones_stay_even_over_the_limit() -> None:
    files = [
        CachedFile("in-use", 100, NOW - RECENT_USE_S / 2),
        CachedFile("stale", 10, OLD),
        CachedFile("fetched", 100, NOW),
    ]
    assert files_to_evict(files, 50, keep="fetched", now=NOW) == ["stale"]
