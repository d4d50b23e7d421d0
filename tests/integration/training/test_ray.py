"""training.backend = "ray" on a real two-node Ray cluster, started here as separate processes.

Node a (the head) has the custom resource node_a, node b node_b, one CPU each: a job that asks
for node_b must run on the second node, and a second such job can start only once the first
has freed it.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import psutil
import pytest

from tessera.v1 import (
    common_pb2,
    datasets_pb2,
    datasets_pb2_grpc,
    job_spec_pb2,
    registry_pb2,
    registry_pb2_grpc,
    system_pb2,
    system_pb2_grpc,
    training_pb2,
    training_pb2_grpc,
)
from tesserad.security.tokens import Role, format_entry, hash_token, new_token
from tesserad.training.ray_worker_client import CACHE_DIR
from tests.conftest import InProcessDaemon, daemon_settings
from tests.integration.security.conftest import Pki
from tests.integration.security.conftest import pki as pki  # the session's throwaway PKI
from tests.integration.training.conftest import (
    follow,
    job_spec,
    of_kind,
    states,
    sweep_values,
    upload_dataset,
    upload_standard_datasets,
    wait_sweep,
)
from tests.integration.training.test_job_finish import check_finished_once, finishing_spec, kill_hook_env

pytest.importorskip(
    "ray", reason="training.backend = ray needs the tesserad[ray] extra: ray is not installed"
)

S = training_pb2
pytestmark = pytest.mark.slow


@dataclass
class RayNodes:
    address: str
    client_address: str  # ray://: the head's Ray Client server
    # Sessions of the `ray start`s (and of a restarted Ray Client server): every Ray process of
    # the cluster.
    groups: list[int]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# The test cluster listens on 127.0.0.1 only, without Ray's token authentication: Ray 2.60 turns
# it on wherever ~/.ray/auth_token exists (any local ray.init() on the machine writes one), and
# then the second node's `ray start` was refused (InvalidAuthToken), so the whole file errored.
RAY_AUTH_OFF = {"RAY_AUTH_MODE": "disabled"}
# Ray Train's controller learns that its ranks ended, or that one died, at its next poll of them,
# 2 s apart by default: the cluster's processes (a trainer's controller among them) poll five
# times a second, so each DDP job of this file ends sooner.
RAY_TRAIN_POLLS_OFTEN = {"RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.2"}
# Every process of the test cluster, and whatever work it does, is CPU taken from a 2-core machine.
# Each Ray driver's (each daemon's) connection would prestart an idle worker process, which no
# actor of this file can use (each runs with a runtime_env of its own) and which stays for the
# cluster's life; each trainer would start a watcher of its nodes' preemption, which never comes
# here; and the metrics of Ray and Ray Train go to an agent that nothing here reads.
RAY_LESS_WORK = {
    "RAY_prestart_worker_first_driver": "0",
    "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0",
    "RAY_enable_metrics_collection": "0",
    "RAY_TRAIN_METRICS_ENABLED": "0",
}
# No log monitors either: they tail the workers' logs for drivers, and the daemons set
# log_to_driver=False.
RAY_START_FLAGS = [
    "--node-ip-address=127.0.0.1",
    "--num-cpus=1",
    "--disable-usage-stats",
    "--include-log-monitor=false",
]


def _ray_start(args: list[str], temp: Path) -> int:
    ray = str(Path(sys.executable).parent / "ray")
    # Ports of their own: Ray's defaults are fixed (8265 for the head's API server, which even
    # --include-dashboard=false starts, and 52365 for each node's dashboard agent), so the second
    # node's agent retried 52365 for seconds before giving up on it, and another Ray on the
    # machine could hold either.
    ports = [f"--dashboard-agent-listen-port={_free_port()}"]
    if "--head" in args:
        ports.append(f"--dashboard-port={_free_port()}")
    # Its own session: the Ray processes it leaves behind share its process group, the fixture's
    # handle to stop exactly this cluster (`ray stop` would stop every Ray on the machine).
    process = subprocess.Popen(
        [ray, "start", *RAY_START_FLAGS, *ports, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
        env={
            **os.environ,
            "RAY_USAGE_STATS_ENABLED": "0",
            "RAY_TMPDIR": str(temp),
            **RAY_AUTH_OFF,
            **RAY_TRAIN_POLLS_OFTEN,
            **RAY_LESS_WORK,
        },
    )
    output, _ = process.communicate(timeout=120)
    assert process.returncode == 0, output
    return process.pid


@pytest.fixture(scope="module")
def ray_nodes() -> Iterator[RayNodes]:
    # Short: Ray's socket paths under it must fit in 107 bytes.
    temp = Path(tempfile.mkdtemp(prefix="tray"))
    port, client_port = _free_port(), _free_port()
    groups: list[int] = []
    # The daemons of this file, in this process or spawned from it, connect as the nodes expect.
    environment = pytest.MonkeyPatch()
    for name, value in RAY_AUTH_OFF.items():
        environment.setenv(name, value)
    try:
        groups.append(
            _ray_start(
                [
                    "--head",
                    f"--port={port}",
                    "--resources",
                    json.dumps({"node_a": 1}),
                    "--include-dashboard=false",
                    f"--temp-dir={temp}",
                    f"--ray-client-server-port={client_port}",
                ],
                temp,
            )
        )
        address = f"127.0.0.1:{port}"
        groups.append(_ray_start([f"--address={address}", "--resources", json.dumps({"node_b": 1})], temp))
        yield RayNodes(address, f"ray://127.0.0.1:{client_port}", groups)
    finally:
        _stop_sessions(groups)
        shutil.rmtree(temp, ignore_errors=True)
        environment.undo()


def _stop_sessions(sessions: list[int]) -> None:
    """Both nodes at once, every process of their `ray start` sessions: an actor's process
    (TrainDriver, a rank) has a process group of its own there, so signalling the nodes' groups
    left it running past the fixture's rmtree. SIGKILL at once: the cluster and its temp dir are
    thrown away, and SIGTERM's graceful stop outlasted a 5 s grace each time (then SIGKILL)."""
    for process in _session_processes(sessions):
        with contextlib.suppress(psutil.NoSuchProcess):
            process.kill()
    deadline = time.monotonic() + 10
    while _session_processes(sessions) and time.monotonic() < deadline:
        time.sleep(0.1)


def _session_of(process: psutil.Process) -> int | None:
    try:
        return os.getsid(process.pid)
    except ProcessLookupError:
        return None


def _session_processes(sessions: list[int]) -> list[psutil.Process]:
    """The processes of `sessions` still running: a dead one left unreaped (its `ray start` parent
    exited) still takes signals, so waiting on signals alone waited out both grace periods."""
    found = []
    for process in psutil.process_iter(["status"]):
        with contextlib.suppress(ProcessLookupError, psutil.NoSuchProcess):
            if os.getsid(process.pid) in sessions and process.info["status"] != psutil.STATUS_ZOMBIE:
                found.append(process)
    return found


RAY_SETTINGS = {
    "training.backend": "ray",
    "training.threads_per_slot": 1,
    "training.cancel_grace_s": 5,
    "training.resource_interval_s": 0.2,
}


@pytest.fixture(scope="module")
def ray_daemon(ray_nodes: RayNodes, tmp_path_factory: pytest.TempPathFactory) -> Iterator[InProcessDaemon]:
    settings = daemon_settings(
        tmp_path_factory.mktemp("ray") / "data", **RAY_SETTINGS, **{"training.ray_address": ray_nodes.address}
    )
    running = InProcessDaemon(settings).start()
    upload_standard_datasets(running.channel())
    yield running
    running.stop()


@pytest.fixture(scope="module")
def training(ray_daemon: InProcessDaemon) -> training_pb2_grpc.TrainingStub:
    return training_pb2_grpc.TrainingStub(ray_daemon.channel())


def submit(training: training_pb2_grpc.TrainingStub, spec: job_spec_pb2.JobSpec) -> training_pb2.Job:
    """SubmitJob, waiting out the daemon's first connection to the cluster (UNAVAILABLE until then)."""
    deadline = time.monotonic() + 90
    while True:
        try:
            return training.SubmitJob(S.SubmitJobRequest(spec=spec))
        except grpc.RpcError as exc:
            if exc.code() != grpc.StatusCode.UNAVAILABLE or time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def on_node(node: str, **fields: Any) -> job_spec_pb2.JobSpec:
    spec = job_spec("mlp", **fields)
    spec.devices.ray_resources[node] = 1
    return spec


def placed(events: list[training_pb2.JobEvent]) -> list[str]:
    return [e.message for e in of_kind(events, "log") if e.message.startswith("placed on Ray node")]


def placed_ranks(events: list[training_pb2.JobEvent]) -> list[str]:
    return [
        e.message
        for e in of_kind(events, "log")
        if re.match(r"rank \d+ of \d+ placed on Ray node", e.message)
    ]


def pid_of(message: str) -> int:
    match = re.search(r"pid (\d+)", message)
    assert match, message
    return int(match.group(1))


def _ended(event: training_pb2.JobEvent) -> bool:
    return event.WhichOneof("event") == "state" and event.state.state in (
        S.JOB_STATE_SUCCEEDED,
        S.JOB_STATE_FAILED,
        S.JOB_STATE_CANCELLED,
    )


def watch_until(
    training: training_pb2_grpc.TrainingStub, job_id: str, stop: Any
) -> list[training_pb2.JobEvent]:
    """Events of the job until `stop(event)` is true for one."""
    seen = []
    # Generous: on a loaded 2-core machine a Ray Train trainer took over 120 s to start (a CI run at
    # load 30); pytest's own 300 s limit still bounds the test.
    for event in training.WatchJob(S.WatchJobRequest(job_id=job_id), timeout=240):
        seen.append(event)
        if stop(event):
            return seen
    raise AssertionError(f"the job ended first: {seen}")


def test_a_job_asking_for_node_b_runs_there_and_registers_its_weights(
    training: training_pb2_grpc.TrainingStub, ray_daemon: InProcessDaemon
) -> None:
    spec = on_node("node_b", register_as=job_spec_pb2.RegisterAs(model="ray-mlp"))
    job = submit(training, spec)
    events = follow(training, job.job_id)
    assert states(events) == [S.JOB_STATE_QUEUED, S.JOB_STATE_RUNNING, S.JOB_STATE_SUCCEEDED], events
    (where,) = placed(events)
    assert "node_b 1" in where and "node_a" not in where
    # WatchJob replays the same events after the job ended.
    assert follow(training, job.job_id) == events
    final = training.GetJob(S.GetJobRequest(job_id=job.job_id))
    assert final.epoch == 2 and final.registered.model == "ray-mlp"
    assert [e.epoch for e in of_kind(events, "epoch")] == [1, 2]
    history = training.GetMetricHistory(S.GetMetricHistoryRequest(run_id=final.run_id, key="loss"))
    assert [p.step for p in history.points] == [s.step for s in of_kind(events, "step")]
    version = registry_pb2_grpc.RegistryStub(ray_daemon.channel()).GetVersion(
        registry_pb2.GetVersionRequest(
            ref=common_pb2.VersionRef(model="ray-mlp", version=final.registered.version)
        )
    )
    lineage = version.lineage
    assert (lineage.job_id, lineage.run_id) == (job.job_id, final.run_id)
    assert [d.name for d in lineage.datasets] == ["flat"] and lineage.job_spec.devices.ray_resources[
        "node_b"
    ] == 1


def test_unsatisfiable_resources_are_refused_at_submit_naming_the_resource(
    training: training_pb2_grpc.TrainingStub,
) -> None:
    before = [j.job_id for j in training.ListJobs(S.ListJobsRequest()).jobs]
    with pytest.raises(grpc.RpcError) as custom:
        submit(training, on_node("tpu_pod"))
    assert custom.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "spec.devices.ray_resources" in custom.value.details() and "tpu_pod 1" in custom.value.details()
    with pytest.raises(grpc.RpcError) as gpus:
        submit(training, job_spec("mlp", devices=job_spec_pb2.DeviceRequest(gpu_count=1)))
    assert gpus.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "spec.devices.gpu_count" in gpus.value.details() and "GPU 1" in gpus.value.details()
    # Each resource exists, but not on one node.
    both = on_node("node_a")
    both.devices.ray_resources["node_b"] = 1
    with pytest.raises(grpc.RpcError) as apart:
        submit(training, both)
    assert apart.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "no node of the Ray cluster" in apart.value.details()
    # One CPU on each of two nodes: room for two processes, not three.
    with pytest.raises(grpc.RpcError) as ddp:
        submit(training, job_spec("mlp", devices=job_spec_pb2.DeviceRequest(cpu=True, cpu_processes=3)))
    assert ddp.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "3 processes" in ddp.value.details() and "room for 2" in ddp.value.details()
    assert [j.job_id for j in training.ListJobs(S.ListJobsRequest()).jobs] == before


def test_cancel_stops_the_actor_and_frees_its_resources_as_server_info_and_watch_system_report(
    ray_nodes: RayNodes, ray_daemon: InProcessDaemon, training: training_pb2_grpc.TrainingStub
) -> None:
    """(One test: the busy node that GetServerInfo and WatchSystem report is the one the cancel
    frees, and each actor costs seconds to start.)"""
    system = system_pb2_grpc.SystemStub(ray_daemon.channel())
    long = submit(training, on_node("node_b", epochs=100_000))
    watch_until(training, long.job_id, lambda e: e.WhichOneof("event") == "step")
    # Busy node_b: its unit is not free while the job runs.
    cluster = system.GetServerInfo(system_pb2.GetServerInfoRequest()).training_cluster
    assert cluster.address == ray_nodes.address and cluster.connected and not cluster.error
    assert sorted(k for n in cluster.nodes for k in n.total if k.startswith("node_")) == ["node_a", "node_b"]
    assert all(n.alive and n.total["CPU"] == 1 for n in cluster.nodes)
    assert cluster.available["node_a"] == 1 and "node_b" not in cluster.available
    (sample,) = system.WatchSystem(system_pb2.WatchSystemRequest(interval_ms=100, max_samples=1), timeout=30)
    assert len(sample.training_cluster.nodes) == 2 and "node_b" not in sample.training_cluster.available
    # node_b has one unit: this job waits until the first one frees it.
    after = submit(training, on_node("node_b"))
    assert training.GetJob(S.GetJobRequest(job_id=after.job_id)).state == S.JOB_STATE_QUEUED
    # A job Ray has not placed yet ends at once, without ever running.
    waiting = submit(training, on_node("node_b"))
    training.CancelJob(S.CancelJobRequest(job_id=waiting.job_id))
    never_ran = follow(training, waiting.job_id)
    assert states(never_ran) == [S.JOB_STATE_QUEUED, S.JOB_STATE_CANCELLED]
    assert of_kind(never_ran, "state")[-1].reason in (
        "cancelled before it started",
        "cancelled before Ray placed it",
    )
    training.CancelJob(S.CancelJobRequest(job_id=long.job_id))
    cancelled = follow(training, long.job_id)
    assert states(cancelled)[-1] == S.JOB_STATE_CANCELLED
    assert states(follow(training, after.job_id))[-1] == S.JOB_STATE_SUCCEEDED
    # Each actor is killed before its job's end is stored; Ray's count of free resources follows.
    deadline = time.monotonic() + 30
    while (free := system.GetServerInfo(system_pb2.GetServerInfoRequest()).training_cluster.available).get(
        "node_b"
    ) != 1:
        assert time.monotonic() < deadline, free
        time.sleep(0.2)
    assert free["CPU"] == 2


def test_a_killed_worker_restarts_from_its_checkpoint_per_max_restarts(
    training: training_pb2_grpc.TrainingStub,
) -> None:
    spec = on_node(
        "node_b",
        epochs=200,
        max_restarts=1,
        checkpoints=job_spec_pb2.CheckpointPolicy(every_n_epochs=2, keep_last=1),
    )
    _killed_once_and_restarted(training, spec, lambda seen: pid_of(placed(seen)[0]))


def _killed_once_and_restarted(
    training: training_pb2_grpc.TrainingStub,
    spec: job_spec_pb2.JobSpec,
    victim: Callable[[list[training_pb2.JobEvent]], int],
) -> tuple[list[training_pb2.JobEvent], training_pb2.Job]:
    """Run `spec` (max_restarts=1), SIGKILL the process `victim` picks from its events once the
    epoch 4 checkpoint is in, and check that the job restarted once from its last checkpoint
    and ran to its end; its events and the final job."""
    job = submit(training, spec)
    seen = watch_until(
        training, job.job_id, lambda e: e.WhichOneof("event") == "checkpoint" and e.checkpoint.epoch >= 4
    )
    os.kill(victim(seen), signal.SIGKILL)
    events = follow(training, job.job_id)
    assert states(events) == [
        S.JOB_STATE_QUEUED,
        S.JOB_STATE_RUNNING,
        S.JOB_STATE_QUEUED,
        S.JOB_STATE_RUNNING,
        S.JOB_STATE_SUCCEEDED,
    ], [e.state.reason for e in events if e.WhichOneof("event") == "state"]
    requeued, resumed = [s.reason for s in of_kind(events, "state")][2:4]
    checkpoint = max(c.epoch for c in of_kind([e for e in events if e.attempt == 1], "checkpoint"))
    assert requeued.startswith("the Ray worker died") and "restart 1 of spec.max_restarts 1" in requeued
    assert f"resumed from the epoch {checkpoint} checkpoint (attempt 2)" in resumed
    final = training.GetJob(S.GetJobRequest(job_id=job.job_id))
    assert final.attempt == 2 and final.epoch == spec.epochs
    return events, final


def test_a_killed_worker_fails_the_job_without_restarts(training: training_pb2_grpc.TrainingStub) -> None:
    job = submit(training, on_node("node_b", epochs=100_000))
    seen = watch_until(training, job.job_id, lambda e: e.WhichOneof("event") == "step")
    os.kill(pid_of(placed(seen)[0]), signal.SIGKILL)
    events = follow(training, job.job_id)
    assert states(events)[-1] == S.JOB_STATE_FAILED
    (error,) = of_kind(events, "error")
    assert error.kind == "crash" and error.message.startswith("the Ray worker died")
    assert "the actor died" in error.message.lower()


def test_a_worker_that_dies_while_its_cancel_waits_ends_the_job_cancelled_not_restarted(
    training: training_pb2_grpc.TrainingStub,
) -> None:
    job = submit(training, on_node("node_b", epochs=100_000, max_restarts=1))
    seen = watch_until(training, job.job_id, lambda e: e.WhichOneof("event") == "step")
    actor = pid_of(placed(seen)[0])
    # Stopped, the actor cannot act on the cancel; it dies within the cancel's grace period.
    os.kill(actor, signal.SIGSTOP)
    assert training.CancelJob(S.CancelJobRequest(job_id=job.job_id)).state == S.JOB_STATE_RUNNING
    os.kill(actor, signal.SIGKILL)
    ended = watch_until(
        training,
        job.job_id,
        lambda e: (
            e.WhichOneof("event") == "state" and e.state.state != S.JOB_STATE_RUNNING and e.seq > seen[-1].seq
        ),
    )
    if states(ended)[-1] != S.JOB_STATE_CANCELLED:
        training.CancelJob(S.CancelJobRequest(job_id=job.job_id))  # the restarted attempt
    assert states(ended)[-1] == S.JOB_STATE_CANCELLED, of_kind(ended, "state")[-1].reason
    reason = of_kind(ended, "state")[-1].reason
    assert (
        reason.startswith("cancelled, though the Ray worker died before it stopped: ")
        and "actor died" in reason.lower()
    )
    final = training.GetJob(S.GetJobRequest(job_id=job.job_id))
    assert (final.state, final.attempt) == (S.JOB_STATE_CANCELLED, 1)


def test_an_unreachable_cluster_makes_training_unavailable_and_nothing_else(tmp_path: Path) -> None:
    address = f"127.0.0.1:{_free_port()}"
    daemon = InProcessDaemon(
        daemon_settings(tmp_path / "data", **RAY_SETTINGS, **{"training.ray_address": address})
    ).start()
    try:
        channel = daemon.channel()
        training = training_pb2_grpc.TrainingStub(channel)
        with pytest.raises(grpc.RpcError) as refused:
            training.SubmitJob(S.SubmitJobRequest(spec=job_spec("mlp")))
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
        assert address in refused.value.details() and "training.ray_address" in refused.value.details()
        # The cause, once the first attempt to connect has failed.
        deadline = time.monotonic() + 30
        while "still connecting" in refused.value.details() and time.monotonic() < deadline:
            time.sleep(0.2)
            with pytest.raises(grpc.RpcError) as refused:
                training.SubmitJob(S.SubmitJobRequest(spec=job_spec("mlp")))
        assert "refused" in refused.value.details().lower()
        info = system_pb2_grpc.SystemStub(channel).GetServerInfo(system_pb2.GetServerInfoRequest())
        assert info.training_cluster.address == address and not info.training_cluster.connected
        assert "refused" in info.training_cluster.error.lower() and not info.training_cluster.nodes
        upload_standard_datasets(channel)
        names = datasets_pb2_grpc.DatasetsStub(channel).ListDatasets(datasets_pb2.ListDatasetsRequest())
        assert {d.name for d in names.datasets} >= {"flat"}
        assert training.ListJobs(S.ListJobsRequest()).jobs == []
    finally:
        daemon.stop()


def _ray_backed_daemon(
    spawn_daemon: Any, ray_nodes: RayNodes, data_dir: Path, extra_env: dict[str, str] | None = None
) -> tuple[Any, grpc.Channel, training_pb2_grpc.TrainingStub]:
    """A `tesserad serve` process on `data_dir` training on the cluster (again: a restart)."""
    env = {
        "TESSERA_TRAINING_BACKEND": "ray",
        "TESSERA_TRAINING_RAY_ADDRESS": ray_nodes.address,
        "TESSERA_TRAINING_THREADS_PER_SLOT": "1",
        **(extra_env or {}),
    }
    daemon = spawn_daemon(
        "--listen", "127.0.0.1:0", "--metrics-listen", "off", "--data-dir", str(data_dir), env=env
    )
    channel = grpc.insecure_channel(daemon.wait_serving())
    return daemon, channel, training_pb2_grpc.TrainingStub(channel)


def test_a_sigkilled_daemon_resumes_its_ray_jobs_from_the_last_checkpoint_unless_the_dataset_is_gone(
    ray_nodes: RayNodes, spawn_daemon: Any, tmp_path: Path
) -> None:
    """Ray ends a driver's actors with it: the next daemon marks each job INTERRUPTED and resumes
    it, but fails one whose dataset version was force-deleted meanwhile, naming the version (one
    test: each daemon costs seconds to start). (A DDP trainer's resume:
    test_a_killed_ddp_rank_restarts_the_trainer_and_a_sigkilled_daemon_resumes_it.)"""
    daemon, channel, training = _ray_backed_daemon(spawn_daemon, ray_nodes, tmp_path)
    upload_standard_datasets(channel)
    x = np.random.default_rng(3).normal(size=(48, 6)).astype(np.float32)
    upload_dataset(channel, "deleted-while-stopped", {"x": x, "y": (x[:, 0] > 0).astype(np.int64)})
    orphaned_spec = on_node("node_a", epochs=100_000)
    orphaned_spec.data.dataset.name = "deleted-while-stopped"
    orphaned_spec.data.val_split = ""
    orphaned = submit(training, orphaned_spec)
    seen = watch_until(training, orphaned.job_id, lambda e: e.WhichOneof("event") == "checkpoint")
    delete = datasets_pb2.DeleteDatasetRequest(name="deleted-while-stopped", force=True)
    assert datasets_pb2_grpc.DatasetsStub(channel).DeleteDataset(delete).deleted_versions == 1
    # Stopped, it still runs when the daemon dies, and leaves the CPU to the job that follows.
    stopped = pid_of(placed(seen)[0])
    os.kill(stopped, signal.SIGSTOP)
    checkpoints = job_spec_pb2.CheckpointPolicy(every_n_epochs=2, keep_last=1)
    spec = on_node("node_b", epochs=200, checkpoints=checkpoints)
    job = submit(training, spec)
    seen = watch_until(
        training, job.job_id, lambda e: e.WhichOneof("event") == "checkpoint" and e.checkpoint.epoch >= 4
    )
    daemon.kill()
    channel.close()
    # As test_a_ray_job_cancelled_just_before_a_sigkill_ends_cancelled_at_the_next_start does: the
    # stopped actor is not left for Ray to end, so node_a is free for what follows.
    with contextlib.suppress(ProcessLookupError):
        os.kill(stopped, signal.SIGKILL)

    _, channel, training = _ray_backed_daemon(spawn_daemon, ray_nodes, tmp_path)
    events = follow(training, job.job_id)
    assert events[: len(seen)] == seen
    assert states(events) == [
        S.JOB_STATE_QUEUED,
        S.JOB_STATE_RUNNING,
        S.JOB_STATE_INTERRUPTED,
        S.JOB_STATE_QUEUED,
        S.JOB_STATE_RUNNING,
        S.JOB_STATE_SUCCEEDED,
    ]
    checkpoint = max(c.epoch for c in of_kind([e for e in events if e.attempt == 1], "checkpoint"))
    resumed = [s.reason for s in of_kind(events, "state")][4]
    assert f"resumed from the epoch {checkpoint} checkpoint (attempt 2)" in resumed
    assert len(placed(events)) == 2
    final = training.GetJob(S.GetJobRequest(job_id=job.job_id))
    assert final.epoch == spec.epochs and final.attempt == 2
    # The metric history holds each step once: the first attempt's up to the checkpoint, then the second's.
    history = training.GetMetricHistory(S.GetMetricHistoryRequest(run_id=final.run_id, key="loss"))
    assert [p.step for p in history.points] == list(range(1, final.step + 1))

    events = follow(training, orphaned.job_id)
    assert states(events)[-1] == S.JOB_STATE_FAILED
    ended = training.GetJob(S.GetJobRequest(job_id=orphaned.job_id))
    latest = max(ended.checkpoints, key=lambda c: c.step)
    (error,) = of_kind(events, "error")
    assert (error.kind, error.message) == ("dataset_deleted", ended.error)
    assert error.message.startswith(
        f"dataset 'deleted-while-stopped' v1 was deleted before the job could resume from its epoch "
        f"{latest.epoch} checkpoint"
    ), error.message
    channel.close()


@pytest.mark.parametrize("point", ["final_checkpoint", "registered"])
def test_a_ray_job_killed_after_its_training_finished_is_finished_not_trained_again(
    ray_nodes: RayNodes, spawn_daemon: Any, tmp_path: Path, point: str
) -> None:
    """As test_job_finish's local jobs: the daemon SIGKILLs itself once the final checkpoint
    is stored, or once the registry committed the version; the next one only ends the job."""
    model = f"ray-finish-{point.replace('_', '-')}"
    daemon, channel, training = _ray_backed_daemon(spawn_daemon, ray_nodes, tmp_path, kill_hook_env(point))
    upload_standard_datasets(channel)
    spec = finishing_spec(model)
    spec.devices.ray_resources["node_b"] = 1
    job = submit(training, spec)
    assert daemon.process.wait(180) == -signal.SIGKILL
    channel.close()

    _, channel, _ = _ray_backed_daemon(spawn_daemon, ray_nodes, tmp_path)
    events = check_finished_once(channel, job.job_id, model)
    # Nothing was placed on Ray to finish it.
    assert len(placed(events)) == 1
    channel.close()


def test_a_ray_job_cancelled_just_before_a_sigkill_ends_cancelled_at_the_next_start(
    ray_nodes: RayNodes, spawn_daemon: Any, tmp_path: Path
) -> None:
    """The Ray backend starts up as the local one does: an acknowledged cancel holds."""
    # The actor is never killed for missing its step boundary before the daemon's SIGKILL.
    long_grace = {"TESSERA_TRAINING_CANCEL_GRACE_S": "3600"}
    daemon, channel, training = _ray_backed_daemon(spawn_daemon, ray_nodes, tmp_path, long_grace)
    upload_standard_datasets(channel)
    job = submit(training, on_node("node_b", epochs=0, max_steps=1_000_000))
    seen = watch_until(training, job.job_id, lambda e: e.WhichOneof("event") == "step")
    actor = pid_of(placed(seen)[0])
    # Stopped, the actor cannot act on the cancel: the daemon dies with the job still running.
    os.kill(actor, signal.SIGSTOP)
    assert training.CancelJob(S.CancelJobRequest(job_id=job.job_id)).state == S.JOB_STATE_RUNNING
    daemon.kill()
    channel.close()
    with contextlib.suppress(ProcessLookupError):
        os.kill(actor, signal.SIGKILL)

    _, channel, training = _ray_backed_daemon(spawn_daemon, ray_nodes, tmp_path, long_grace)
    final = training.GetJob(S.GetJobRequest(job_id=job.job_id))
    assert (final.state, final.attempt) == (S.JOB_STATE_CANCELLED, 1)
    assert states(follow(training, job.job_id)) == [
        S.JOB_STATE_QUEUED,
        S.JOB_STATE_RUNNING,
        S.JOB_STATE_CANCELLED,
    ]
    channel.close()


def test_a_daemon_reaching_the_cluster_through_a_ray_client_address_runs_both_kinds_of_job(
    ray_nodes: RayNodes, spawn_daemon: Any, tmp_path: Path
) -> None:
    """training.ray_address = ray://head:port (Ray Client, e.g. from outside the cluster's
    network): every call the daemon makes to its actors is a plain actor call. A process holds
    one Ray connection, so this daemon is a process of its own. Its DDP job is also the file's
    check that a DDP job spans both nodes and matches the local backend's (each trainer costs
    seconds to start)."""
    daemon = _ray_client_daemon(spawn_daemon, ray_nodes, tmp_path / "data")
    with grpc.insecure_channel(daemon.wait_serving()) as channel:
        upload_standard_datasets(channel)
        training = training_pb2_grpc.TrainingStub(channel)
        single = submit(training, on_node("node_b"))
        events = follow(training, single.job_id)
        assert states(events)[-1] == S.JOB_STATE_SUCCEEDED, events
        assert "node_b 1" in placed(events)[0]
        assert [e.epoch for e in of_kind(events, "epoch")] == [1, 2]
        _spans_both_nodes_and_matches_local_ddp(training, tmp_path / "local")


def _ray_client_daemon(spawn_daemon: Any, nodes: RayNodes, data_dir: Path) -> Any:
    """A `tesserad serve` process on `data_dir` reaching the cluster through its Ray Client address
    (a process holds one Ray connection), not yet serving."""
    env = {
        "TESSERA_TRAINING_BACKEND": "ray",
        "TESSERA_TRAINING_RAY_ADDRESS": nodes.client_address,
        "TESSERA_TRAINING_THREADS_PER_SLOT": "1",
    }
    return spawn_daemon(
        "--listen", "127.0.0.1:0", "--metrics-listen", "off", "--data-dir", str(data_dir), env=env
    )


def test_a_lost_ray_client_session_restarts_the_job_once_the_daemon_has_connected_again(
    ray_nodes: RayNodes, spawn_daemon: Any, tmp_path: Path
) -> None:
    """The head's Ray Client server restarts while a job runs and another waits for its node: the
    daemon's session there is gone (its actors with it), and Ray's proxy answers the daemon's next
    ray.get FAILED_PRECONDITION "'NoneType' object is not iterable", a TypeError of Ray's own, as
    it did in a CI run under load. The running job restarts in the daemon's words, on the
    connection the daemon makes anew; the waiting one waits again, spending no restart (it has
    none), and no call of either as the daemon reconnects makes Ray start a cluster of its own."""
    daemon = _ray_client_daemon(spawn_daemon, ray_nodes, tmp_path / "data")
    with grpc.insecure_channel(daemon.wait_serving()) as channel:
        upload_standard_datasets(channel)
        _a_lost_ray_client_session_restarts_the_job(training_pb2_grpc.TrainingStub(channel), ray_nodes)


def _a_lost_ray_client_session_restarts_the_job(
    training: training_pb2_grpc.TrainingStub, nodes: RayNodes
) -> None:
    job = submit(training, on_node("node_b", epochs=100, max_restarts=1))
    watch_until(training, job.job_id, lambda e: e.WhichOneof("event") == "step")
    # Node b's one CPU is the first job's: this one waits for Ray to place it.
    waiting = submit(training, on_node("node_b"))
    _restart_ray_client_server(nodes)
    waited = follow(training, waiting.job_id)
    assert states(waited) == [S.JOB_STATE_QUEUED, S.JOB_STATE_RUNNING, S.JOB_STATE_SUCCEEDED], waited
    # Said when its wait had begun on the lost connection (not when the loss came first).
    for again in [e.message for e in of_kind(waited, "log") if "waits for Ray to place it" in e.message]:
        assert again.startswith(
            f"the daemon lost its connection to the Ray cluster at {nodes.client_address}"
        )
    events = follow(training, job.job_id)
    assert states(events) == [
        S.JOB_STATE_QUEUED,
        S.JOB_STATE_RUNNING,
        S.JOB_STATE_QUEUED,
        S.JOB_STATE_RUNNING,
        S.JOB_STATE_SUCCEEDED,
    ], [e.state.reason for e in events if e.WhichOneof("event") == "state"]
    requeued = of_kind(events, "state")[2].reason
    # In the words of the first call to fail, or of the first to have the status of Ray Client's
    # server (tests/unit/training/test_ray_connection_bookkeeping.py): with two jobs' calls under
    # way, Ray Client may fail all the daemon's "Client is shutting down" as it closes the session.
    assert requeued.startswith(
        f"the daemon lost its connection to the Ray cluster at {nodes.client_address} (training.ray_address): "
    ), requeued
    assert "restart 1 of spec.max_restarts 1" in requeued and "NoneType" not in requeued
    assert training.GetJob(S.GetJobRequest(job_id=job.job_id)).epoch == 100


def _restart_ray_client_server(nodes: RayNodes) -> None:
    """SIGKILL the head's Ray Client server (its proxy, which takes the sessions' servers and their
    actors along) and start it again as it was, in a session of its own that joins `nodes`."""
    (proxy,) = [
        process
        for process in psutil.process_iter(["cmdline"])
        if "--mode=proxy" in (process.info["cmdline"] or ()) and _session_of(process) in nodes.groups
    ]
    command, environment = proxy.cmdline(), proxy.environ()
    proxy.kill()
    proxy.wait(10)
    restarted = subprocess.Popen(
        command,
        env=environment,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    nodes.groups.append(restarted.pid)


def test_a_sweep_runs_its_trials_on_both_nodes_at_most_max_concurrent_at_a_time(
    training: training_pb2_grpc.TrainingStub,
) -> None:
    spec = S.SweepSpec(
        base=job_spec("mlp", epochs=2),
        strategy=S.SWEEP_STRATEGY_GRID,
        parameters=[sweep_values("optimizer.lr", "0.001", "0.01", "0.1")],
        max_concurrent=2,
        metric="val_loss",
    )
    submitted = training.SubmitSweep(S.SubmitSweepRequest(spec=spec))
    assert sum(1 for t in submitted.trials if t.job_id) == 2  # the third waits its turn
    sweep = wait_sweep(training, submitted.sweep_id, timeout_s=300)
    assert sweep.state == S.SWEEP_STATE_SUCCEEDED and len(sweep.trials) == 3
    assert all(t.state == S.JOB_STATE_SUCCEEDED and t.has_metric for t in sweep.trials)
    # One CPU a node: two trials at once run on two nodes.
    nodes = {re.findall(r"node_[ab]", placed(follow(training, t.job_id))[0])[0] for t in sweep.trials}
    assert nodes == {"node_a", "node_b"}


class _Bearer(grpc.UnaryUnaryClientInterceptor, grpc.StreamUnaryClientInterceptor):
    def __init__(self, token: str) -> None:
        self._metadata = [("authorization", f"Bearer {token}")]

    def _with_token(self, details: Any) -> Any:
        return details._replace(metadata=[*(details.metadata or []), *self._metadata])

    def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return continuation(self._with_token(details), request)

    def intercept_stream_unary(self, continuation: Any, details: Any, requests: Any) -> Any:
        return continuation(self._with_token(details), requests)


def _token_daemon(
    spawn_daemon: Any, ray_nodes: RayNodes, directory: Path, pki: Pki | None
) -> tuple[Any, dict[Role, str]]:
    """A daemon on the cluster that requires tokens, and gives its workers a reader's
    (training.ray_worker_token_file); over mutual TLS, its workers' client certificate being
    training.ray_tls_cert_file, when `pki` is given. The daemon and the tokens."""
    directory.mkdir()
    clear = {role: new_token() for role in Role}
    tokens = directory / "tokens.toml"
    tokens.write_text("".join(format_entry(f"{r.label}-holder", r, hash_token(t)) for r, t in clear.items()))
    worker_token = directory / "worker-token"
    worker_token.write_text(clear[Role.READER] + "\n")
    env = {
        "TESSERA_TRAINING_BACKEND": "ray",
        "TESSERA_TRAINING_RAY_ADDRESS": ray_nodes.address,
        "TESSERA_TRAINING_THREADS_PER_SLOT": "1",
        "TESSERA_SECURITY_TOKENS_FILE": str(tokens),
        "TESSERA_TRAINING_RAY_WORKER_TOKEN_FILE": str(worker_token),
    }
    flags = []
    if pki is not None:
        flags = ["--http-listen", "off"]
        env |= {
            "TESSERA_SECURITY_TLS_CERT_FILE": str(pki.server_cert),
            "TESSERA_SECURITY_TLS_KEY_FILE": str(pki.server_key),
            "TESSERA_SECURITY_TLS_CLIENT_CA_FILE": str(pki.client_ca),
            "TESSERA_TRAINING_RAY_TLS_CERT_FILE": str(pki.client_cert),
            "TESSERA_TRAINING_RAY_TLS_KEY_FILE": str(pki.client_key),
        }
    daemon = spawn_daemon(
        "--listen", "127.0.0.1:0", "--metrics-listen", "off", *flags, "--data-dir", str(directory / "data"),
        env=env,
    )  # fmt: skip
    return daemon, clear


def _fresh_dataset_job(
    channel: grpc.Channel, node: str
) -> tuple[training_pb2.Job, datasets_pb2.DatasetVersion]:
    """A job on `node` on content no run before has fetched: not on any node's cache, so its
    worker must fetch it from the daemon."""
    x = np.random.default_rng().normal(size=(48, 6)).astype(np.float32)
    fresh = upload_dataset(channel, "fresh", {"x": x, "y": (x[:, 0] > 0).astype(np.int64)})
    assert not (CACHE_DIR / f"{fresh.sha256}.npz").exists()
    spec = on_node(node)
    spec.data.dataset.name = "fresh"
    spec.data.val_split = ""
    return submit(training_pb2_grpc.TrainingStub(channel), spec), fresh


def test_workers_present_training_ray_worker_token_file_in_plaintext_and_over_mutual_tls(
    ray_nodes: RayNodes, spawn_daemon: Any, tmp_path: Path, pki: Pki
) -> None:
    """Workers fetch their datasets with the worker token when tokens are required, from a
    plaintext daemon and, over mutual TLS, from one that serves it (one test: the two daemons
    start, and their jobs run, side by side, each on a node of its own)."""
    plain, plain_tokens = _token_daemon(spawn_daemon, ray_nodes, tmp_path / "plain", None)
    mutual, mutual_tokens = _token_daemon(spawn_daemon, ray_nodes, tmp_path / "mtls", pki)
    channels = {
        "plain": grpc.intercept_channel(
            grpc.insecure_channel(plain.wait_serving()), _Bearer(plain_tokens[Role.TRAINER])
        ),
        "mtls": grpc.intercept_channel(
            grpc.secure_channel(mutual.wait_serving(), pki.channel_credentials("client")),
            _Bearer(mutual_tokens[Role.TRAINER]),
        ),
    }
    submitted = {
        "plain": _fresh_dataset_job(channels["plain"], "node_a"),
        "mtls": _fresh_dataset_job(channels["mtls"], "node_b"),
    }
    for name, (job, fresh) in submitted.items():
        training = training_pb2_grpc.TrainingStub(channels[name])
        deadline = time.monotonic() + 120
        while (state := training.GetJob(S.GetJobRequest(job_id=job.job_id))).state not in (
            S.JOB_STATE_SUCCEEDED,
            S.JOB_STATE_FAILED,
        ):
            assert time.monotonic() < deadline, (name, state)
            time.sleep(0.3)
        assert state.state == S.JOB_STATE_SUCCEEDED, (name, state.error)
        assert (CACHE_DIR / f"{fresh.sha256}.npz").exists(), name
    # Neither the token nor the workers' key went to the daemon's log.
    mutual.terminate()
    output = mutual.output()
    assert (
        mutual_tokens[Role.READER] not in output and pki.client_key.read_text().splitlines()[1] not in output
    )


def _spans_both_nodes_and_matches_local_ddp(
    training: training_pb2_grpc.TrainingStub, local_data: Path
) -> None:
    """A two-process DDP job runs its ranks on both nodes and ends with the metrics the local
    backend's DDP (a daemon on `local_data`) gives the same spec."""
    spec = job_spec("mlp", epochs=3, devices=job_spec_pb2.DeviceRequest(cpu=True, cpu_processes=2))
    job = submit(training, spec)
    # Not `follow`: its 120 s ran out while the trainer started (112 s, at load 14).
    events = watch_until(training, job.job_id, _ended)
    assert states(events)[-1] == S.JOB_STATE_SUCCEEDED, events
    ranks = placed_ranks(events)
    # One CPU a node: the two ranks cannot share one.
    assert sorted(re.findall(r"node_[ab]", " ".join(ranks))) == ["node_a", "node_b"], ranks
    on_ray = training.GetJob(S.GetJobRequest(job_id=job.job_id))

    local = InProcessDaemon(
        daemon_settings(local_data, **{**RAY_SETTINGS, "training.backend": "local", "training.cpu_slots": 2})
    ).start()
    try:
        upload_standard_datasets(local.channel())
        local_training = training_pb2_grpc.TrainingStub(local.channel())
        local_job = local_training.SubmitJob(S.SubmitJobRequest(spec=spec))
        assert states(follow(local_training, local_job.job_id))[-1] == S.JOB_STATE_SUCCEEDED
        on_local = local_training.GetJob(S.GetJobRequest(job_id=local_job.job_id))
        # The local backend does not restart dead workers: it says so rather than ignore the field.
        with pytest.raises(grpc.RpcError) as restarts:
            local_training.SubmitJob(S.SubmitJobRequest(spec=job_spec("mlp", max_restarts=1)))
        assert restarts.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert (
            "spec.max_restarts" in restarts.value.details()
            and "training.backend = ray" in restarts.value.details()
        )
    finally:
        local.stop()
    assert set(on_ray.metrics) == set(on_local.metrics)
    for name, value in on_local.metrics.items():
        assert on_ray.metrics[name] == pytest.approx(value, rel=1e-4, abs=1e-6), name


def ddp_spec(**fields: Any) -> job_spec_pb2.JobSpec:
    return job_spec("mlp", devices=job_spec_pb2.DeviceRequest(cpu=True, cpu_processes=2), **fields)


def test_a_killed_ddp_rank_restarts_the_trainer_and_a_sigkilled_daemon_resumes_it(
    ray_nodes: RayNodes, spawn_daemon: Any, tmp_path: Path
) -> None:
    """A dead rank ends the trainer, which restarts from the job's last checkpoint; then the daemon
    is SIGKILLed, Ray ends the restarted trainer with its driver, and the next daemon marks the job
    INTERRUPTED and resumes it from the last checkpoint again (one test: each trainer costs
    seconds to start)."""
    daemon, channel, training = _ray_backed_daemon(spawn_daemon, ray_nodes, tmp_path)
    upload_standard_datasets(channel)
    spec = ddp_spec(
        epochs=80, max_restarts=1, checkpoints=job_spec_pb2.CheckpointPolicy(every_n_epochs=2, keep_last=1)
    )
    job = submit(training, spec)
    seen = watch_until(
        training, job.job_id, lambda e: e.WhichOneof("event") == "checkpoint" and e.checkpoint.epoch >= 4
    )
    # Rank 1 (not the leader): its peer is left blocked in a collective, and Ray Train ends it.
    os.kill(pid_of(placed_ranks(seen)[1]), signal.SIGKILL)
    seen = watch_until(
        training, job.job_id, lambda e: e.WhichOneof("event") == "checkpoint" and e.attempt == 2
    )
    daemon.kill()
    channel.close()

    _, channel, training = _ray_backed_daemon(spawn_daemon, ray_nodes, tmp_path)
    events = follow(training, job.job_id)
    assert events[: len(seen)] == seen
    assert states(events) == [
        S.JOB_STATE_QUEUED,
        S.JOB_STATE_RUNNING,
        S.JOB_STATE_QUEUED,
        S.JOB_STATE_RUNNING,
        S.JOB_STATE_INTERRUPTED,
        S.JOB_STATE_QUEUED,
        S.JOB_STATE_RUNNING,
        S.JOB_STATE_SUCCEEDED,
    ], [e.state.reason for e in events if e.WhichOneof("event") == "state"]
    reasons = [s.reason for s in of_kind(events, "state")]
    assert reasons[2].startswith("the Ray worker died") and "restart 1 of spec.max_restarts 1" in reasons[2]
    for attempt, resumed in ((1, reasons[3]), (2, reasons[6])):
        checkpoint = max(c.epoch for c in of_kind([e for e in events if e.attempt == attempt], "checkpoint"))
        assert f"resumed from the epoch {checkpoint} checkpoint (attempt {attempt + 1})" in resumed
    # Each new trainer placed both ranks again, across both nodes: the one before freed their CPUs.
    for attempt in (2, 3):
        again = placed_ranks([e for e in events if e.attempt == attempt])
        assert sorted(re.findall(r"node_[ab]", " ".join(again))) == ["node_a", "node_b"], again
    final = training.GetJob(S.GetJobRequest(job_id=job.job_id))
    assert final.attempt == 3 and final.epoch == spec.epochs
    # The metric history holds each step once: each attempt's up to the checkpoint the next resumed from.
    history = training.GetMetricHistory(S.GetMetricHistoryRequest(run_id=final.run_id, key="loss"))
    assert [p.step for p in history.points] == list(range(1, final.step + 1))
    channel.close()


def _free_cpus(system: system_pb2_grpc.SystemStub, want: float) -> dict[str, float]:
    """Ray's free resources once `want` CPUs are free (Ray's count follows a release)."""
    deadline = time.monotonic() + 30
    while (
        free := dict(system.GetServerInfo(system_pb2.GetServerInfoRequest()).training_cluster.available)
    ).get("CPU") != want:
        assert time.monotonic() < deadline, free
        time.sleep(0.2)
    return free


# Ray names each actor's process after its class: the trainer's driver, its controller, its ranks.
TRAINER_PROCESSES = ("ray::TrainDriver", "ray::TrainController", "ray::RayTrainWorker")


def _trainer_processes(nodes: RayNodes) -> dict[int, str]:
    """pid: which of TRAINER_PROCESSES, of every such process of the cluster `nodes`: others may
    run Ray on the machine. An actor's process has a process group of its own, but stays in the
    session its `ray start` began (whose id is that of the group `nodes` names)."""
    found = {}
    for process in psutil.process_iter(["cmdline"]):
        cmdline = " ".join(process.info["cmdline"] or ())
        name = next((n for n in TRAINER_PROCESSES if cmdline.startswith(n)), None)
        with contextlib.suppress(ProcessLookupError):
            if name is not None and os.getsid(process.pid) in nodes.groups:
                found[process.pid] = name
    return found


def test_cancel_stops_a_ddp_trainer_and_frees_its_nodes(
    training: training_pb2_grpc.TrainingStub,
    ray_nodes: RayNodes,
    ray_daemon: InProcessDaemon,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A cancelled DDP trainer stops at a step boundary and frees both nodes. Then, while a job
    holds node_b, two DDP jobs wait for room: one cancelled ends at once, and one whose dataset was
    force-deleted meanwhile fails from QUEUED once Ray placed its ranks, as a local one. That
    failure comes after the trainer's driver was launched: the trainer is ended, its driver,
    controller and ranks gone and their CPUs free (one test: each trainer costs seconds to start,
    and the job that the cancel lets onto node_b is the one both jobs wait behind)."""
    channel = ray_daemon.channel()
    system = system_pb2_grpc.SystemStub(channel)
    x = np.random.default_rng(5).normal(size=(48, 6)).astype(np.float32)
    upload_dataset(channel, "deleted-while-waiting", {"x": x, "y": (x[:, 0] > 0).astype(np.int64)})
    job = submit(training, ddp_spec(epochs=100_000))
    watch_until(training, job.job_id, lambda e: e.WhichOneof("event") == "step")
    assert "CPU" not in system.GetServerInfo(system_pb2.GetServerInfoRequest()).training_cluster.available
    # The cancelled trainer's processes are among these: only a later trainer's are counted.
    before = set(_trainer_processes(ray_nodes))
    launched: list[list[str]] = []
    worker_data = ray_daemon.daemon.training._worker_data

    def worker_data_of_a_placed_trainer(job: Any) -> Any:
        launched.append(sorted(n for pid, n in _trainer_processes(ray_nodes).items() if pid not in before))
        return worker_data(job)

    monkeypatch.setattr(ray_daemon.daemon.training, "_worker_data", worker_data_of_a_placed_trainer)
    # Rank 1 holds node_b's one CPU: this job waits for the trainer to free it.
    busy = submit(training, on_node("node_b", epochs=100_000))
    training.CancelJob(S.CancelJobRequest(job_id=job.job_id))
    cancelled = follow(training, job.job_id)
    assert states(cancelled)[-1] == S.JOB_STATE_CANCELLED
    assert of_kind(cancelled, "state")[-1].reason == "cancelled at a step boundary"
    watch_until(training, busy.job_id, lambda e: e.WhichOneof("event") == "step")
    # Rank 0's CPU, on node_a, is free too.
    assert _free_cpus(system, 1)["node_a"] == 1
    # Each is cancelled, or loses its dataset, once Ray holds it waiting for room; before that a
    # cancelled one ends "before it started".
    waiting = submit(training, ddp_spec())
    orphaned_spec = ddp_spec()
    orphaned_spec.data.dataset.name = "deleted-while-waiting"
    orphaned = submit(training, orphaned_spec)
    for job_id in (waiting.job_id, orphaned.job_id):
        watch_until(
            training, job_id, lambda e: e.log.message.startswith("waiting for room on the Ray cluster")
        )
    delete = datasets_pb2.DeleteDatasetRequest(name="deleted-while-waiting", force=True)
    assert datasets_pb2_grpc.DatasetsStub(channel).DeleteDataset(delete).deleted_versions == 1
    # A DDP job still waiting for room ends at once, and leaves no reservation behind.
    training.CancelJob(S.CancelJobRequest(job_id=waiting.job_id))
    never_ran = follow(training, waiting.job_id)
    assert states(never_ran) == [S.JOB_STATE_QUEUED, S.JOB_STATE_CANCELLED]
    assert of_kind(never_ran, "state")[-1].reason == "cancelled before Ray placed it"
    assert of_kind(never_ran, "log")[0].message.startswith(
        "waiting for room on the Ray cluster: 2 processes of"
    )
    training.CancelJob(S.CancelJobRequest(job_id=busy.job_id))
    assert states(follow(training, busy.job_id))[-1] == S.JOB_STATE_CANCELLED
    events = follow(training, orphaned.job_id)
    monkeypatch.undo()
    assert states(events) == [S.JOB_STATE_QUEUED, S.JOB_STATE_FAILED]
    (error,) = of_kind(events, "error")
    assert (error.kind, error.message) == (
        "dataset_deleted",
        "dataset 'deleted-while-waiting' v1 was deleted before the job could start, and a job trains "
        "only on the version it was submitted with: submit it again on another version of the "
        "dataset (ListDatasetVersions lists them)",
    )
    # The busy job's data was asked for while no trainer but the cancelled one had run; the
    # orphaned job's, while its trainer ran: its driver, its controller and both ranks.
    assert launched == [[], sorted([*TRAINER_PROCESSES, "ray::RayTrainWorker"])]
    free = _free_cpus(system, 2)
    assert free["node_a"] == 1 and free["node_b"] == 1
    deadline = time.monotonic() + 30
    while left := {pid: name for pid, name in _trainer_processes(ray_nodes).items() if pid not in before}:
        assert time.monotonic() < deadline, left
        time.sleep(0.2)


def test_a_ray_job_that_fails_once_placed_fails_saying_why_and_frees_its_node(
    training: training_pb2_grpc.TrainingStub, ray_daemon: InProcessDaemon, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A failure after Ray placed the job (here the attempt's begin) fails the job in the daemon's
    words and frees what it held. (A DDP trainer's: test_cancel_stops_a_ddp_trainer_and_frees_its_nodes.)"""
    system = system_pb2_grpc.SystemStub(ray_daemon.channel())

    def failing_begin(job: Any, devices: list[str]) -> Any:
        raise RuntimeError("the attempt could not begin")

    monkeypatch.setattr(ray_daemon.daemon.training, "_begin_attempt", failing_begin)
    job = submit(training, on_node("node_b"))
    events = follow(training, job.job_id)
    monkeypatch.undo()
    assert states(events) == [S.JOB_STATE_QUEUED, S.JOB_STATE_FAILED]
    (error,) = of_kind(events, "error")
    assert (error.kind, error.message) == (
        "exception",
        "the job could not run on Ray: the attempt could not begin",
    )
    free = _free_cpus(system, 2)
    assert free["node_a"] == 1 and free["node_b"] == 1


def test_a_daemon_restart_keeps_the_restarts_a_job_has_used(
    ray_nodes: RayNodes, spawn_daemon: Any, tmp_path: Path
) -> None:
    daemon, channel, training = _ray_backed_daemon(spawn_daemon, ray_nodes, tmp_path)
    upload_standard_datasets(channel)
    job = submit(training, on_node("node_b", epochs=100_000, max_restarts=1))
    seen = watch_until(training, job.job_id, lambda e: e.WhichOneof("event") == "step")
    os.kill(pid_of(placed(seen)[0]), signal.SIGKILL)
    seen = watch_until(training, job.job_id, lambda e: e.WhichOneof("event") == "step" and e.attempt == 2)
    assert "restart 1 of spec.max_restarts 1" in of_kind(seen, "state")[2].reason
    daemon.kill()
    channel.close()

    _, channel, training = _ray_backed_daemon(spawn_daemon, ray_nodes, tmp_path)
    seen = watch_until(training, job.job_id, lambda e: e.WhichOneof("event") == "step" and e.attempt == 3)
    # The interruption was the daemon's, not the worker's: it used no restart, and the one
    # restart the spec allows is spent, so this death ends the job.
    os.kill(pid_of(placed(seen)[-1]), signal.SIGKILL)
    events = follow(training, job.job_id)
    assert states(events) == [
        S.JOB_STATE_QUEUED,
        S.JOB_STATE_RUNNING,
        S.JOB_STATE_QUEUED,
        S.JOB_STATE_RUNNING,
        S.JOB_STATE_INTERRUPTED,
        S.JOB_STATE_QUEUED,
        S.JOB_STATE_RUNNING,
        S.JOB_STATE_FAILED,
    ]
    (error,) = of_kind(events, "error")
    assert error.kind == "crash" and error.message.endswith("(after 1 restarts)"), error.message
    channel.close()
