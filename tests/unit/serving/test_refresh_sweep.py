"""The daemon's periodic retry of failed serving loads and refreshes (server._sweep_failures),
and a replica's retry of failed loads (Follower._retry_failed_loads), go on after a pass that
raised, and end cleanly when cancelled."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from serving_fakes import UnreadableVersions

from tesserad import server
from tesserad.api import follow
from tesserad.api.follow import Follower
from tesserad.config import ReplicaSettings
from tesserad.errors import Unavailable
from tesserad.replica.link import PrimaryLink
from tesserad.serving.pool import (
    LoadState,
    ModelPool,
    ServableVersion,
    ServingConfig,
    ServingDefaults,
    servable_file,
)
from tesserad.serving.service import REFRESH_RETRY_MAX_S, InferenceService, Target


class ClockBrokenOnce:
    """A clock that stands at `now` until the test moves it; its first reading after `break_once`
    raises."""

    def __init__(self) -> None:
        self.now = 0.0
        self.broken = False

    def break_once(self) -> None:
        self.broken = True

    def __call__(self) -> float:
        if self.broken:
            self.broken = False
            raise RuntimeError("the clock could not be read")
        return self.now


def test_a_sweep_that_raised_sweeps_again_and_ends_cleanly_when_cancelled(
    linear_onnx: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A pass that raised ended the sweep silently: later failed refreshes waited for a request
    (a deleted model gets none), and the stop re-raised the error and closed nothing after it."""
    monkeypatch.setattr(server, "SOURCE_RETRY_S", 0)
    source = UnreadableVersions({1: servable_file("m", 1, "onnx", linear_onnx)})
    clock = ClockBrokenOnce()
    service = InferenceService(
        source, ModelPool(ServingDefaults(intra_op_threads=1), None), autoload=True, clock=clock
    )
    refreshed = threading.Event()
    service.add_deletion_listener(lambda model, identity: None, lambda model: refreshed.set())

    async def sweep() -> None:
        sweeping = asyncio.create_task(server._sweep_failures(service, retry_loads=True))
        try:
            # Queued by a pass after the first, which raised.
            assert await asyncio.to_thread(refreshed.wait, 30)
        finally:
            sweeping.cancel()
        with pytest.raises(asyncio.CancelledError):
            await sweeping

    try:
        assert service.route(Target("m")) == (1, None)  # `latest` cached: a refresh reads it again
        source.failing = True
        service.on_registry_change("m")
        assert refreshed.wait(30)  # failed: the registry could not be read
        assert "m" in service._refresh_retry_at
        refreshed.clear()
        clock.now = REFRESH_RETRY_MAX_S  # its wait passed
        clock.break_once()
        source.failing = False
        with caplog.at_level(logging.ERROR, logger=server.log.name):
            asyncio.run(sweep())
        assert service._refresh_retry_at == {}  # the refresh passed
        assert any("the clock could not be read" in str(r.exc_info) for r in caplog.records)
    finally:
        service.close()


def test_a_replicas_retry_of_failed_loads_that_raised_retries_again(
    linear_onnx: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A pass that raised ended the replica's retries silently: every later failed load and
    refresh waited for a registry change that may never come."""
    monkeypatch.setattr(follow, "RETRY_FIRST_S", 0)
    monkeypatch.setattr(follow, "RETRY_MAX_S", 0)
    source = UnreadableVersions({1: servable_file("m", 1, "onnx", linear_onnx)})
    clock = ClockBrokenOnce()
    service = InferenceService(
        source, ModelPool(ServingDefaults(intra_op_threads=1), None), autoload=True, clock=clock
    )
    refreshed = threading.Event()
    service.add_deletion_listener(lambda model, identity: None, lambda model: refreshed.set())

    async def ready(_: bool) -> None:
        pass

    async def retry() -> None:
        # The primary is never called: the retries only run the service's own.
        follower = Follower(
            ReplicaSettings(primary="127.0.0.1:1"),
            None,  # type: ignore[arg-type]
            service,
            "127.0.0.1:2",
            ready,
            False,
            PrimaryLink(),
            lambda _: None,
        )
        follower._connected = True
        retrying = asyncio.create_task(follower._retry_failed_loads())
        try:
            # Queued by a pass after the first, which raised.
            assert await asyncio.to_thread(refreshed.wait, 30)
        finally:
            retrying.cancel()
            await follower.close()
        with pytest.raises(asyncio.CancelledError):
            await retrying

    try:
        assert service.route(Target("m")) == (1, None)  # `latest` cached: a refresh reads it again
        source.failing = True
        service.on_registry_change("m")
        assert refreshed.wait(30)  # failed: the registry could not be read
        refreshed.clear()
        clock.now = REFRESH_RETRY_MAX_S  # its wait passed
        clock.break_once()
        source.failing = False
        with caplog.at_level(logging.ERROR):
            asyncio.run(retry())
        assert service._refresh_retry_at == {}  # the refresh passed
        failure = next(r for r in caplog.records if r.getMessage() == "retrying the failed loads failed")
        assert failure.exc_info is not None and "the clock could not be read" in str(failure.exc_info[1])
    finally:
        service.close()


@pytest.mark.parametrize("retry_loads", [True, False], ids=["primary", "replica"])
def test_the_sweep_retries_failed_loads_on_a_primary_only(
    linear_onnx: Path, monkeypatch: pytest.MonkeyPatch, retry_loads: bool
) -> None:
    """A replica's sweep retried its failed loads too, beside its follower, which does so only
    while the primary is there: against a primary gone, and undoing the follower's backoff."""
    monkeypatch.setattr(server, "SOURCE_RETRY_S", 0)
    source = UnreadableVersions({1: servable_file("m", 1, "onnx", linear_onnx)})
    service = InferenceService(source, ModelPool(ServingDefaults(intra_op_threads=1), None), autoload=True)
    service.pool.list_failure("m", 1, Unavailable("the registry could not be read"), "")

    async def sweep() -> None:
        sweeping = asyncio.create_task(server._sweep_failures(service, retry_loads=retry_loads))
        try:
            for _ in range(20):
                await asyncio.sleep(0)
        finally:
            sweeping.cancel()
        with pytest.raises(asyncio.CancelledError):
            await sweeping

    try:
        asyncio.run(sweep())
        listed = [(e.model, e.version) for e in service.pool.list() if e.state is LoadState.FAILED]
        assert listed == ([] if retry_loads else [("m", 1)])
    finally:
        service.close()


@pytest.mark.parametrize("target", [Target("m", 1), Target("m")], ids=["the version", "the model"])
@pytest.mark.parametrize("listed", [True, False], ids=["failure listed", "failure retried"])
def test_an_unload_that_ends_a_versions_run_of_failures_drops_its_retry_wait(
    linear_onnx: Path, target: Target, listed: bool
) -> None:
    """UnloadModel ended the version's run of failures and left the retry passes' record of its
    failed listing and when it is retried (harmless, being matched by the listing, until the next
    pass): state about a run that had ended."""

    @contextmanager
    def unreachable() -> Iterator[Path]:
        raise Unavailable("cannot download it from the primary: the connection was cut")
        yield linear_onnx

    # Of an artifact: a refresh takes away the failed listing of none (see _swap_targets).
    version = ServableVersion("m", 1, "onnx", unreachable, artifact_sha256="a" * 64)
    clock = ClockBrokenOnce()  # stands: the second failure's wait never passes
    pool = ModelPool(ServingDefaults(intra_op_threads=1), None, clock=clock)
    service = InferenceService(UnreadableVersions({1: version}), pool, autoload=True, clock=clock)
    try:
        with pytest.raises(Unavailable):
            service.load(Target("m", 1), ServingConfig())
        assert service.retry_failed_loads() == 1  # the first failure in a row: at once
        if listed:
            with pytest.raises(Unavailable):
                service.load(Target("m", 1), ServingConfig())
            assert service.retry_failed_loads() == 0  # the second waits its turn
        assert ("m", 1) in service._load_retry_at
        service.unload(target)
        assert service._load_retry_at == {}
    finally:
        service.close()
