from __future__ import annotations

import dataclasses
import logging
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from serving_fakes import LINEAR_B, LINEAR_W, ArrivalLock, HeldArtifact

from tesserad.errors import (
    DataLoss,
    FailedPrecondition,
    Internal,
    InvalidArgument,
    Lasting,
    NotFound,
    Unavailable,
)
from tesserad.serving.pool import (
    FAILURE_RUN_GAP_S,
    FailureRun,
    LoadState,
    ModelPool,
    Retry,
    ServableVersion,
    ServingConfig,
    ServingDefaults,
    effective_config,
    servable_file,
)
from tesserad.serving.signature import validate_request


def onnx_version(path: Path, version: int = 1) -> ServableVersion:
    return servable_file("m", version, "onnx", path)


@pytest.fixture
def pool() -> ModelPool:
    pool = ModelPool(ServingDefaults(intra_op_threads=1), None)
    yield pool
    pool.close()


def test_load_reads_the_signature_warms_up_and_serves(pool: ModelPool, linear_onnx: Path) -> None:
    entry = pool.load(onnx_version(linear_onnx), ServingConfig())
    assert entry.state is LoadState.READY
    assert (
        entry.config.max_batch_size == 32 and entry.config.runtime == "onnx" and entry.config.device == "cpu"
    )
    assert [(s.name, s.shape) for s in entry.signature.inputs] == [("x", (-1, 4))]
    assert entry.memory_bytes > 0
    assert entry.stats.snapshot().request_count == 0  # warm-up is not traffic
    x = np.ones((2, 4), dtype=np.float32)
    prediction = entry.batcher.submit({"x": x}, ["y"], 2).result(10)
    np.testing.assert_allclose(prediction.outputs["y"], x @ LINEAR_W + LINEAR_B, rtol=1e-6)


def test_loading_again_with_the_same_config_keeps_the_instance(pool: ModelPool, linear_onnx: Path) -> None:
    first = pool.load(onnx_version(linear_onnx), ServingConfig())
    assert pool.load(onnx_version(linear_onnx), ServingConfig(max_batch_size=32)) is first


def test_new_config_swaps_without_failing_requests(pool: ModelPool, linear_onnx: Path) -> None:
    pool.load(onnx_version(linear_onnx), ServingConfig())
    failures: list[BaseException] = []
    served = 0
    stop = threading.Event()

    def load_traffic() -> None:
        nonlocal served
        from tesserad.serving.batcher import BatcherClosed

        while not stop.is_set():
            # Read once, as the service does: the swap sets a drained entry's batcher to None.
            batcher = pool.get("m", 1).batcher
            if batcher is None:
                continue
            try:
                batcher.submit({"x": np.ones((1, 4), np.float32)}, ["y"], 1).result(10)
                served += 1
            except BatcherClosed:
                continue  # the service routes again; the request has not failed
            except BaseException as exc:
                failures.append(exc)

    threads = [threading.Thread(target=load_traffic) for _ in range(3)]
    for thread in threads:
        thread.start()
    swapped = pool.load(onnx_version(linear_onnx), ServingConfig(max_batch_size=4, instances=2))
    stop.set()
    for thread in threads:
        thread.join(10)
    assert failures == []
    assert served > 0
    assert pool.get("m", 1) is swapped and swapped.config.instances == 2
    # The stats carry over the swap.
    assert swapped.stats.snapshot().request_count == served


def test_unload_removes_and_unknown_is_not_found(pool: ModelPool, linear_onnx: Path) -> None:
    pool.load(onnx_version(linear_onnx), ServingConfig())
    assert pool.unload("m", 1).state is LoadState.DRAINING
    assert pool.list() == []
    with pytest.raises(NotFound, match=r"model 'm' version 1 is not loaded \(loaded versions: none\)"):
        pool.unload("m", 1)


def test_bad_config_values_name_the_field(pool: ModelPool, linear_onnx: Path) -> None:
    with pytest.raises(
        InvalidArgument, match=r"config.max_batch_size must be in 1..65536 \(0 for the default\), got -1"
    ):
        pool.load(onnx_version(linear_onnx), ServingConfig(max_batch_size=-1))
    with pytest.raises(FailedPrecondition, match="torch runtime needs a safetensors version"):
        pool.load(onnx_version(linear_onnx), ServingConfig(runtime="torch"))
    with pytest.raises(
        InvalidArgument, match=r"device must be cpu, cuda or cuda:N \(N a GPU index, e.g. cuda:0\), got 'tpu'"
    ):
        pool.load(onnx_version(linear_onnx), ServingConfig(device="tpu"))


@pytest.mark.parametrize(
    ("defaults", "config", "instances"),
    [
        (ServingDefaults(), ServingConfig(), 2),  # a CPU: two, as Triton gives a CPU model
        (ServingDefaults(), ServingConfig(device="cuda:0"), 1),  # one per GPU
        (ServingDefaults(instances=3), ServingConfig(), 3),  # the daemon's setting
        (ServingDefaults(instances=3), ServingConfig(instances=1), 1),  # the load's own
    ],
)
def test_instances_default_to_two_on_a_cpu_and_one_on_a_gpu(
    defaults: ServingDefaults, config: ServingConfig, instances: int
) -> None:
    assert effective_config(config, defaults, "onnx").instances == instances


def test_an_explicit_0_is_kept_where_0_is_a_value_and_unset_takes_the_default() -> None:
    defaults = ServingDefaults(max_queue_delay_us=500, warmup_runs=3, intra_op_threads=4)
    unset = effective_config(ServingConfig(device="cpu", instances=1), defaults, "onnx")
    assert (unset.max_queue_delay_us, unset.warmup_runs, unset.intra_op_threads) == (500, 3, 4)
    zero = effective_config(
        ServingConfig(device="cpu", instances=1, max_queue_delay_us=0, warmup_runs=0, intra_op_threads=0),
        defaults,
        "onnx",
    )
    # intra_op_threads 0: the automatic count, the cores shared among the instances.
    assert (zero.max_queue_delay_us, zero.warmup_runs, zero.intra_op_threads) == (0, 0, os.cpu_count() or 1)


@pytest.mark.parametrize("device", ["cpu", "cuda:0"])
def test_an_effective_config_asked_for_again_is_itself_whatever_the_defaults(device: str) -> None:
    # The zeros an effective config holds where 0 is a value (and intra_op_threads's 0 on a GPU)
    # are kept, not replaced by the other daemon's defaults.
    running = effective_config(
        ServingConfig(device=device, max_queue_delay_us=0, warmup_runs=0, intra_op_threads=0),
        ServingDefaults(),
        "onnx",
    )
    others = ServingDefaults(
        instances=3, max_batch_size=8, max_queue_delay_us=500, warmup_runs=5, intra_op_threads=7
    )
    assert effective_config(running.as_request(), others, "onnx") == running


def test_unloadable_file_is_failed_precondition_and_listed_failed(pool: ModelPool, tmp_path: Path) -> None:
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"not a model")
    with pytest.raises(FailedPrecondition, match="onnxruntime cannot load this model"):
        pool.load(onnx_version(junk, 2), ServingConfig())
    (listed,) = pool.list("m")
    assert listed.state is LoadState.FAILED and "cannot load" in listed.error
    assert pool.get("m", 2) is None


def test_a_load_whose_artifact_cannot_be_reached_is_retryable_and_its_failure_forgotten(
    pool: ModelPool, linear_onnx: Path, tmp_path: Path
) -> None:
    @contextmanager
    def unreachable() -> Iterator[Path]:
        raise Unavailable("cannot download it from the primary: the connection was cut")
        yield linear_onnx

    with pytest.raises(Unavailable):
        pool.load(dataclasses.replace(onnx_version(linear_onnx), open_artifact=unreachable), ServingConfig())
    (listed,) = pool.list("m")
    assert listed.state is LoadState.FAILED and listed.retry is Retry.SOON
    assert pool.forget_failure("m", 1)
    assert pool.list("m") == []
    assert pool.load(onnx_version(linear_onnx), ServingConfig()).state is LoadState.READY
    assert not pool.forget_failure("m", 1)  # a loaded version is not forgotten

    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"not a model")
    with pytest.raises(FailedPrecondition):
        pool.load(onnx_version(junk, 2), ServingConfig())
    assert not pool.get("m", 2) and pool.list("m")[-1].retry is Retry.NEVER
    # A retry that saw a passing failure does not take away one for good listed since.
    assert not pool.forget_failure("m", 2, retry={Retry.SOON})
    assert pool.list("m")[-1].state is LoadState.FAILED


def test_a_versions_failed_loads_in_a_row_are_counted_per_artifact_until_one_succeeds(
    pool: ModelPool, linear_onnx: Path
) -> None:
    """What a retry's wait grows with (InferenceService.retry_failed_loads): a retry forgets the
    failure, not the run it is part of."""

    @contextmanager
    def unreachable() -> Iterator[Path]:
        raise Unavailable("cannot download it from the primary: the connection was cut")
        yield linear_onnx

    def fail(version: ServableVersion) -> int:
        with pytest.raises(Unavailable):
            pool.load(dataclasses.replace(version, open_artifact=unreachable), ServingConfig())
        (listed,) = pool.list("m")
        assert pool.forget_failure("m", 1, listed.artifact_sha256, {Retry.SOON})
        return listed.failures_in_a_row

    version = servable_file("m", 1, "onnx", linear_onnx, artifact_sha256="a" * 64)
    assert [fail(version), fail(version)] == [1, 2]
    # Another artifact under the number (its model deleted and registered again).
    assert fail(dataclasses.replace(version, artifact_sha256="b" * 64)) == 1
    assert fail(version) == 1
    assert pool.list_failure("m", 1, Unavailable("the registry could not be read"), version.artifact_sha256)
    assert pool.list("m")[0].failures_in_a_row == 2
    assert pool.forget_failure("m", 1, deleted=True)  # its version deleted: the run ends
    assert fail(version) == 1
    assert pool.load(version, ServingConfig()).state is LoadState.READY
    pool.unload("m", 1)
    assert fail(version) == 1


def test_a_load_failing_again_with_the_same_unexpected_error_logs_one_counted_line(
    pool: ModelPool, linear_onnx: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Each repeat logged two lines: the counted one, then the load's own warning of the failure
    with the error id, which the counted line names already (as the first's traceback does)."""

    @contextmanager
    def unreadable() -> Iterator[Path]:
        raise OSError("Input/output error")
        yield linear_onnx

    version = dataclasses.replace(onnx_version(linear_onnx), open_artifact=unreadable)
    with caplog.at_level(logging.INFO, logger="tesserad.serving.pool"):
        for _ in range(3):
            with pytest.raises(Internal):
                pool.load(version, ServingConfig())
    logged = [r for r in caplog.records if r.name == "tesserad.serving.pool"]
    assert [r.exc_info is not None for r in logged] == [True, False, False]
    assert ["times in a row" in r.getMessage() for r in logged] == [False, True, True]
    assert "3 times in a row" in logged[2].getMessage()


def test_a_failure_run_counts_the_failures_of_one_artifact_and_the_repeats_of_one_error() -> None:
    error = ("a" * 64, "OSError", "disk I/O error")
    run = FailureRun("", 0, 0.0).counted("a" * 64, 1.0).counted("a" * 64, 2.0)
    assert (run.failures, run.last_at) == (2, 2.0)
    assert run.counted("b" * 64, 3.0).failures == 1  # another artifact under the number
    assert run.unexpected_again(error, 3.0) is None  # none noted yet
    noted = run.unexpected_noted(error, "listed", 3.0)
    again = noted.unexpected_again(error, 4.0)
    assert again is not None and again.unexpected is not None
    assert (again.unexpected.times, again.unexpected.listed, again.last_at) == (2, "listed", 4.0)
    assert again.failures == 2  # the count of failures goes on beside it
    assert noted.unexpected_again(("a" * 64, "OSError", "database disk image is malformed"), 4.0) is None


def test_a_failure_run_is_stale_once_its_last_failure_is_a_gap_old() -> None:
    run = FailureRun("", 0, 0.0).counted("", 10.0)
    assert not run.stale(10.0 + FAILURE_RUN_GAP_S - 1)
    assert run.stale(10.0 + FAILURE_RUN_GAP_S)
    noted = run.unexpected_noted(("", "OSError", "disk I/O error"), "listed", 20.0)
    assert not noted.stale(10.0 + FAILURE_RUN_GAP_S)  # an unexpected error is a failure too


def test_a_retry_forgets_only_the_failed_listing_it_saw(pool: ModelPool, linear_onnx: Path) -> None:
    """Two retry passes at once (a replica's reconnect and its retry loop) each saw the failure:
    the later one took away the failure of the load the earlier one's retry had started since."""

    @contextmanager
    def unreachable() -> Iterator[Path]:
        raise Unavailable("cannot download it from the primary: the connection was cut")
        yield linear_onnx

    version = dataclasses.replace(onnx_version(linear_onnx), open_artifact=unreachable)
    with pytest.raises(Unavailable):
        pool.load(version, ServingConfig())
    (seen,) = pool.list("m")
    assert pool.forget_listed_failure(seen, {Retry.SOON})
    with pytest.raises(Unavailable):
        pool.load(version, ServingConfig())
    assert not pool.forget_listed_failure(seen, {Retry.SOON})
    (listed,) = pool.list("m")
    assert listed is not seen and listed.state is LoadState.FAILED and listed.failures_in_a_row == 2


def test_a_load_its_source_refused_lastingly_is_retried_later(pool: ModelPool, linear_onnx: Path) -> None:
    class Damaged(DataLoss, Lasting):
        pass

    @contextmanager
    def damaged() -> Iterator[Path]:
        raise Damaged("cannot download it from the primary: the primary's copy is damaged")
        yield linear_onnx

    with pytest.raises(DataLoss):
        pool.load(dataclasses.replace(onnx_version(linear_onnx), open_artifact=damaged), ServingConfig())
    (listed,) = pool.list("m")
    assert listed.state is LoadState.FAILED and listed.retry is Retry.LATER
    assert "the primary's copy is damaged" in listed.error


def test_runtime_failure_of_one_request_is_its_own(pool: ModelPool, lookup_onnx: Path) -> None:
    entry = pool.load(onnx_version(lookup_onnx), ServingConfig())
    ok = entry.batcher.submit({"ids": np.array([1, 4])}, ["rows"], 2).result(10)
    np.testing.assert_array_equal(ok.outputs["rows"], [[2, 3], [8, 9]])
    with pytest.raises(InvalidArgument, match="model 'm' version 1 could not run this request"):
        entry.batcher.submit({"ids": np.array([7])}, ["rows"], 1).result(10)


def test_validation_names_the_input_and_what_is_expected(pool: ModelPool, linear_onnx: Path) -> None:
    signature = pool.load(onnx_version(linear_onnx), ServingConfig()).signature
    label = "model 'm' version 1"
    ok = np.zeros((3, 4), np.float32)
    assert validate_request(signature, {"x": ok}, ["y"], label) == 3
    cases = [
        ({"x": ok, "z": ok}, [], "input 'z' is not an input of model 'm' version 1; its inputs are x float32[-1, 4]"),
        ({}, [], "input 'x' is missing; model 'm' version 1 expects x float32[-1, 4]"),
        ({"x": ok.astype(np.float64)}, [], "input 'x' has dtype float64; model 'm' version 1 expects float32"),
        ({"x": np.zeros(4, np.float32)}, [], "input 'x' has shape [4] (rank 1); model 'm' version 1 expects rank 2: [-1, 4]"),
        ({"x": np.zeros((3, 5), np.float32)}, [], "input 'x' has size 5 in dimension 1; model 'm' version 1 expects 4 there (shape [-1, 4], -1 is any size)"),
        ({"x": np.zeros((0, 4), np.float32)}, [], "input 'x' has size 0 in dimension 0; it must be at least 1"),
        ({"x": ok}, ["nope"], "output 'nope' is not an output of model 'm' version 1; its outputs are y"),
        ({"x": ok}, ["y", "y"], "output 'y' is requested twice; request each output once"),
    ]  # fmt: skip
    for inputs, outputs, message in cases:
        with pytest.raises(InvalidArgument) as raised:
            validate_request(signature, inputs, outputs, label)
        assert raised.value.message.startswith(message)
    # One sample without its batch dimension: the message says how to send it.
    with pytest.raises(InvalidArgument) as raised:
        validate_request(signature, {"x": np.zeros(4, np.float32)}, [], label)
    assert raised.value.message.endswith(
        "expects rank 2: [-1, 4]; the first dimension is the batch: send one sample shaped [1, 4]"
    )
    with pytest.raises(InvalidArgument) as raised:
        validate_request(signature, {"x": np.zeros(5, np.float32)}, [], label)
    assert raised.value.message.endswith("expects rank 2: [-1, 4]")  # not a sample of it: no hint


class _CountingLock:
    """A lock that says when a second caller is about to wait for it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._callers = 0
        self.second_waits = threading.Event()

    def __enter__(self) -> None:
        self._callers += 1
        if self._callers == 2:
            self.second_waits.set()
        self._lock.acquire()

    def __exit__(self, *exc: object) -> None:
        self._lock.release()


def test_loads_that_waited_for_a_failing_load_share_its_failure(pool: ModelPool, tmp_path: Path) -> None:
    # Requests that autoload a version while a load of it is under way wait for it; when it
    # fails, running the same load again once per waiting request would only fail again, in
    # turn, each as slowly. A later load tries again.
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"not a model")
    held = HeldArtifact(junk)
    servable = ServableVersion("m", 1, "onnx", held)
    lock = pool._load_locks[("m", 1)] = _CountingLock()
    errors: list[BaseException] = []

    def load(**kwargs: bool) -> None:
        try:
            pool.load(servable, ServingConfig(), **kwargs)
        except FailedPrecondition as exc:
            errors.append(exc)

    first = threading.Thread(target=load)
    first.start()
    assert held.inside.wait(30)
    waiting = threading.Thread(target=load, kwargs={"keep_loaded": True})
    waiting.start()
    assert lock.second_waits.wait(30)
    held.release.set()
    first.join(30)
    waiting.join(30)
    assert held.opened == 1
    assert len(errors) == 2 and all("onnxruntime cannot load this model" in str(e) for e in errors)
    with pytest.raises(FailedPrecondition, match="onnxruntime cannot load this model"):
        pool.load(servable, ServingConfig(), keep_loaded=True)
    assert held.opened == 2


def test_unloads_while_the_version_loads_wait_for_it_and_one_unloads_it(
    pool: ModelPool, linear_onnx: Path
) -> None:
    # An unload that found the load under way answered at once, as if it had unloaded the
    # version, which the load then left serving; two unloads at once both drained one batcher
    # (the second could find it gone under it: an AttributeError, INTERNAL to the caller).
    held = HeldArtifact(linear_onnx)
    arrivals = threading.Semaphore(0)
    pool._load_locks[("m", 1)] = ArrivalLock(arrivals)  # type: ignore[assignment]
    loading = threading.Thread(
        target=pool.load, args=(ServableVersion("m", 1, "onnx", held), ServingConfig())
    )
    loading.start()
    assert held.inside.wait(30)
    outcomes: list[str] = []

    def unload() -> None:
        try:
            pool.unload("m", 1)
            outcomes.append("unloaded")
        except NotFound as exc:
            outcomes.append(exc.message)
        finally:
            arrivals.release()  # it answered without waiting (or, waiting first, it answered now)

    unloads = [threading.Thread(target=unload) for _ in range(2)]
    for thread in unloads:
        thread.start()
    for _ in unloads:  # each waits for the load, or answered without waiting for it
        assert arrivals.acquire(timeout=30)
    held.release.set()
    for thread in (loading, *unloads):
        thread.join(30)
    assert sorted(outcomes) == ["model 'm' version 1 is not loaded (loaded versions: none)", "unloaded"]
    assert pool.get("m", 1) is None and pool.list() == []


class _ClosingFirst:
    """A load lock whose first taker finds the pool closed between taking the lock object and
    holding it: the close found the lock free, so it waited for nothing."""

    def __init__(self, pool: ModelPool) -> None:
        self._pool: ModelPool | None = pool
        self._lock = threading.Lock()

    def __enter__(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.close()  # which takes this lock too, free
        self._lock.acquire()

    def __exit__(self, *exc: object) -> None:
        self._lock.release()


def test_a_load_the_close_overtook_before_it_held_its_lock_is_refused(linear_onnx: Path) -> None:
    pool = ModelPool(ServingDefaults(intra_op_threads=1), None)
    pool._load_locks[("m", 1)] = _ClosingFirst(pool)  # type: ignore[assignment]
    with pytest.raises(Unavailable, match=r"cannot load model 'm' version 1: tesserad is stopping"):
        pool.load(onnx_version(linear_onnx), ServingConfig())
    assert pool.list() == []


def test_a_load_after_the_pool_closed_is_refused_and_leaves_nothing_running(linear_onnx: Path) -> None:
    # A request's autoload runs in a thread the daemon's stop cannot interrupt: one that reached
    # the pool after it closed loaded the version anyway, its batcher's threads outliving the stop.
    pool = ModelPool(ServingDefaults(intra_op_threads=1), None)
    pool.close()
    with pytest.raises(Unavailable, match=r"cannot load model 'm' version 1: tesserad is stopping"):
        pool.load(onnx_version(linear_onnx), ServingConfig())
    assert pool.list() == []


def test_a_version_s_load_lock_is_dropped_once_no_one_holds_or_waits_for_it(
    pool: ModelPool, linear_onnx: Path, tmp_path: Path
) -> None:
    # One lock was kept per version ever loaded or unloaded: a daemon that served many versions
    # over its life held a lock for each, long after they were gone.
    for version in (1, 2, 3):
        pool.load(onnx_version(linear_onnx, version), ServingConfig())
    pool.unload("m", 2)
    with pytest.raises(NotFound):
        pool.unload("m", 9)
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"not a model")
    with pytest.raises(FailedPrecondition):
        pool.load(onnx_version(junk, 4), ServingConfig())
    assert pool._load_locks == {} and pool._load_lock_users == {}
