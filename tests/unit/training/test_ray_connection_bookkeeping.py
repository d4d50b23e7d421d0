"""Which connection to the Ray cluster a failure belongs to, and which attempt of a job: a failure
of a lost or replaced connection drops nothing of the current one, and an attempt whose end is
stored is not handled again for what fails in its clean-up."""

from __future__ import annotations

import threading
from types import SimpleNamespace
from typing import Any

import pytest

from tesserad.errors import Unavailable
from tesserad.training.jobs import _Running
from tesserad.training.ray_cluster import ConnectionGone, RayCluster
from tesserad.training.ray_jobs import RayJobs

ADDRESS = "ray://127.0.0.1:1"


def _cluster(generation: int, connected: bool = True) -> RayCluster:
    """A cluster whose `generation`th connection is made (and lost, unless `connected`)."""
    cluster = RayCluster(ADDRESS)
    cluster._generation = generation
    if connected:
        cluster._connected.set()
    else:
        cluster._lost = "Ray Client's server on the head answered UNAVAILABLE"
    return cluster


def _jobs(cluster: RayCluster, monkeypatch: pytest.MonkeyPatch) -> tuple[RayJobs, list[str]]:
    """A RayJobs running 'job-1' on `cluster`; the list gets what ended its attempt."""
    jobs = RayJobs.__new__(RayJobs)
    jobs._lock = threading.Lock()
    jobs._wake = threading.Condition(jobs._lock)
    jobs._cluster = cluster
    record = SimpleNamespace(
        job_id="job-1", cancel_requested_at=None, state="running", config={"devices": {"count": 1}}
    )
    jobs._active = {"job-1": record}
    jobs._running = {}
    jobs._closing = False
    jobs._cancel_pending = set()
    jobs._cancel_requested = {}
    ends: list[str] = []
    monkeypatch.setattr(jobs, "get", lambda job_id: record)
    monkeypatch.setattr(jobs, "_fail", lambda job, kind, message: ends.append(f"failed: {message}"))
    monkeypatch.setattr(jobs, "_attempt_lost", lambda job, message: ends.append(f"lost: {message}"))
    return jobs, ends


def test_calls_are_made_only_while_connected() -> None:
    with pytest.raises(ConnectionGone):
        RayCluster(ADDRESS).calls().__enter__()
    cluster = _cluster(2)
    with cluster.calls() as generation:
        assert generation == 2
    with pytest.raises(ConnectionGone, match="answered UNAVAILABLE"):
        _cluster(2, connected=False).calls().__enter__()


def test_a_connection_error_of_a_replaced_connection_keeps_the_current_one() -> None:
    cluster = _cluster(2)
    message = cluster.lost(ConnectionError("<_InactiveRpcError status = StatusCode.UNAVAILABLE>"), 1)
    assert message.startswith(f"the daemon lost its connection to the Ray cluster at {ADDRESS}")
    assert cluster.connected and cluster.generation == 2
    cluster.require()


def test_a_lost_connection_is_said_with_the_status_of_ray_clients_server_once_a_call_has_it() -> None:
    """Ray Client fails the calls under way "Client is shutting down" as it closes a session its
    server lost, maybe before the call whose error says why."""
    cluster = _cluster(2, connected=False)
    cluster._lost = "Client is shutting down.; the head's Ray logs say why"
    failed = ConnectionError("<_InactiveRpcError of RPC that terminated with: status = StatusCode.NOT_FOUND>")
    why = "(training.ray_address): Ray Client's server on the head answered NOT_FOUND; the head's Ray logs"
    assert why in cluster.lost(failed, 2)
    assert why in cluster.lost(ConnectionError("Client is shutting down."), 2)
    assert why in cluster.lost_message()
    with pytest.raises(Unavailable, match="answered NOT_FOUND"):
        cluster.require()
    # Another connection's loss changes nothing of this one's words.
    assert "answered UNAVAILABLE" in cluster.lost(ConnectionError("status = StatusCode.UNAVAILABLE"), 1)
    assert why in cluster.lost_message()


def test_what_fails_after_an_attempt_was_settled_does_not_end_the_job_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Its worker died and it was queued again; killing the dead actor then failed."""
    jobs, ends = _jobs(_cluster(1), monkeypatch)

    def run_on_ray(job: Any, running: _Running) -> None:
        running.settled = True
        raise RuntimeError("Ray Client is not connected")

    monkeypatch.setattr(jobs, "_run_on_ray", run_on_ray)
    jobs._supervise("job-1", [])
    assert ends == []
    running = _Running([], [])
    running.settled = True
    jobs._lost_cluster(jobs.get("job-1"), running, "the daemon lost its connection")
    assert ends == []


def test_only_rays_errors_on_a_lost_connection_are_the_connections(monkeypatch: pytest.MonkeyPatch) -> None:
    worker = pytest.importorskip("ray._private.worker")
    jobs, ends = _jobs(_cluster(1, connected=False), monkeypatch)

    def daemon_error(job: Any, running: _Running) -> None:
        raise LookupError("the daemon's own")

    monkeypatch.setattr(jobs, "_run_actor", daemon_error)
    with pytest.raises(LookupError, match="the daemon's own"):
        jobs._run_on(jobs.get("job-1"), _Running([], []), 1)
    assert ends == []

    def ray_error(job: Any, running: _Running) -> None:
        worker.global_worker.check_connected()

    monkeypatch.setattr(jobs, "_run_actor", ray_error)
    jobs._run_on(jobs.get("job-1"), _Running([], []), 1)
    assert ends == [
        f"lost: the daemon lost its connection to the Ray cluster at {ADDRESS} (training.ray_address): "
        "Ray Client's server on the head answered UNAVAILABLE"
    ]


def test_a_connect_attempt_stops_ray_from_calling_ray_init_on_its_own() -> None:
    """Ray's ray.get, ray.wait, ray.kill... would otherwise ray.init() themselves when made while
    the daemon is not connected (a reconnect's shutdown done, its init not yet): joining any
    cluster on the daemon's host, or starting one there. Read, not called: with it on, a call
    here would start a Ray cluster."""
    hook = pytest.importorskip("ray._private.auto_init_hook")
    with pytest.raises(RuntimeError, match=r"cannot connect to 127\.0\.0\.1:1"):
        RayCluster(ADDRESS)._connect()
    assert hook.enable_auto_connect is False
