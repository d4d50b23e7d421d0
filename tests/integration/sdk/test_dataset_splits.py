"""client.datasets.load(ref, split=...) and split_indices: the rows of a split are those a
training job naming it reads, taken from the one place both read (Datasets.split_indices)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import grpc
import numpy as np
import pytest

import tessera
import tessera.aio
import tessera.datasets
from tessera.messages import from_dict
from tessera.v1 import datasets_pb2, datasets_pb2_grpc, job_spec_pb2
from tesserad.api.convert_training import job_spec_from_proto
from tesserad.datasets.service import SPLITS
from tesserad.server import STORE_TABLES
from tesserad.store import Store
from tesserad.training.data import DatasetAccess
from tests.conftest import InProcessDaemon, daemon_settings

D = datasets_pb2
SAMPLES = 40


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[InProcessDaemon]:
    running = InProcessDaemon(daemon_settings(tmp_path_factory.mktemp("splits") / "data")).start()
    yield running
    running.stop()


@pytest.fixture(scope="module")
def arrays() -> tuple[np.ndarray, np.ndarray]:
    # Row i holds i in its first column: a row taken says which sample it is.
    x = np.random.default_rng(1).normal(size=(SAMPLES, 4)).astype(np.float32)
    x[:, 0] = np.arange(SAMPLES)
    return x, (np.arange(SAMPLES) % 2).astype(np.int64)


@pytest.fixture(scope="module")
def client(daemon: InProcessDaemon, arrays: tuple[np.ndarray, np.ndarray]) -> Iterator[tessera.Client]:
    x, y = arrays
    with tessera.Client(daemon.target, timeout=30) as sdk:
        splits = {"train": 0.6, "val": 0.25, "test": 0.15}
        sdk.datasets.push("table", x=x, y=y, splits=splits, seed=7)
        # A newer version with other splits: a split read of "table:1" must not read it.
        sdk.datasets.push("table", x=x, y=y, splits={"train": 0.5, "val": 0.5}, seed=8)
        yield sdk


def test_a_split_loads_the_rows_a_job_naming_it_validates_and_trains_on(daemon, client, arrays):
    x, y = arrays
    spec = {
        "architecture": {"input_shape": [4], "output_size": 2, "mlp": {"hidden_sizes": [4]}},
        # val_split left empty: the job validates on "val", the version's split of that name.
        "data": {"dataset": "table:1"},
    }
    # The data section SubmitJob stores for the spec as the SDK sends it (normalize_spec, with the
    # daemon's dataset facts), and what the daemon hands a job's workers for it.
    raw, _ = job_spec_from_proto(from_dict(job_spec_pb2.JobSpec, spec))
    config = daemon.daemon.training.check(raw)
    data = DatasetAccess(daemon.daemon.datasets).worker_data(config["data"])
    assert data.val_indices is not None and len(data.val_indices) == 10
    for split, indices in (("val", data.val_indices), ("train", data.train_indices)):
        assert np.array_equal(client.datasets.split_indices("table:1", split), indices)
        loaded = client.datasets.load("table:1", split=split)
        assert np.array_equal(loaded["x"], x[indices]) and np.array_equal(loaded["y"], y[indices])
    # The fractions shuffle: the job's validation rows are not the dataset's first or last ones.
    assert not np.array_equal(data.val_indices, np.arange(data.val_indices[0], data.val_indices[0] + 10))
    # Without a split, load gives every row, as before.
    assert np.array_equal(client.datasets.load("table:1")["x"], x)


def test_load_with_a_split_has_one_timeout_for_its_two_calls(client, monkeypatch):
    # A clock by which the indices took the whole timeout: the file's download is not begun
    # with a timeout of its own.
    readings = iter([100.0, 120.0])
    monkeypatch.setattr(tessera.datasets, "monotonic", lambda: next(readings), raising=False)
    with pytest.raises(tessera.DeadlineExceeded) as ran_out:
        client.datasets.load("table:1", split="val", timeout=20)
    assert ran_out.value.message == (
        "loading table:1 ran past its timeout (20 s) with the indices of split 'val' received and "
        "none of the file; load it again with a longer timeout"
    )


def test_the_asyncio_client_loads_a_split_and_the_newest_version_is_its_own(daemon, client, arrays):
    x, _ = arrays

    async def scenario() -> tuple[dict[str, np.ndarray], np.ndarray]:
        async with tessera.aio.Client(daemon.target, timeout=30) as aio:
            return await aio.datasets.load("table", split="val"), await aio.datasets.split_indices(
                "table", "val"
            )

    loaded, indices = asyncio.run(scenario())
    # "table" is version 2, split half and half by another seed.
    assert len(indices) == SAMPLES // 2 and np.array_equal(indices, np.sort(indices))
    assert not np.array_equal(indices, client.datasets.split_indices("table:1", "val"))
    assert np.array_equal(loaded["x"], x[indices])


def test_a_split_the_version_lacks_is_refused_naming_its_splits(client):
    with pytest.raises(tessera.InvalidArgument) as refused:
        client.datasets.load("table:1", split="vla")
    assert refused.value.message == (
        "split must be one of train, val, test, got 'vla'; did you mean 'val'? (the splits dataset "
        "'table' v1 was uploaded with)"
    )
    with pytest.raises(tessera.InvalidArgument, match="split must be one of train, val, got ''"):
        client.datasets.split_indices("table:2", "")
    with pytest.raises(tessera.InvalidArgument, match="is not a valid name") as refused:
        client.datasets.split_indices("table:1", "v" * 100_000)
    assert len(refused.value.message) < 400
    with pytest.raises(tessera.NotFound, match="has no version 9"):
        client.datasets.load("table:9", split="val")
    with pytest.raises(tessera.NotFound, match="absent"):
        client.datasets.split_indices("absent", "val")


def test_the_indices_stream_resumes_from_an_offset_and_refuses_one_outside(daemon, client):
    stub = datasets_pb2_grpc.DatasetsStub(daemon.channel())
    ref = D.DownloadSplitIndicesRequest(split="val").ref
    ref.name, ref.version = "table", 1
    whole = client.datasets.split_indices("table:1", "val").astype("<i8").tobytes()
    parts = list(stub.DownloadSplitIndices(D.DownloadSplitIndicesRequest(ref=ref, split="val", offset=13)))
    assert parts[0].header.version == 1 and [s.count for s in parts[0].header.splits] == [24, 10, 6]
    assert b"".join(p.chunk for p in parts[1:]) == whole[13:]
    for offset, code in (
        (-1, grpc.StatusCode.INVALID_ARGUMENT),
        (len(whole) + 1, grpc.StatusCode.OUT_OF_RANGE),
    ):
        with pytest.raises(grpc.RpcError) as refused:
            list(
                stub.DownloadSplitIndices(D.DownloadSplitIndicesRequest(ref=ref, split="val", offset=offset))
            )
        assert refused.value.code() == code, refused.value.details()


def test_an_empty_split_an_older_daemon_stored_is_said_to_hold_no_sample(tmp_path, arrays):
    x, y = arrays
    settings = daemon_settings(tmp_path / "data")
    daemon = InProcessDaemon(settings).start()
    try:
        with tessera.Client(daemon.target, timeout=30) as sdk:
            sdk.datasets.push("old", x=x, y=y, splits={"train": 0.5, "val": 0.5})
    finally:
        daemon.stop()
    # As a store from before uploads refused empty splits holds one.
    store = Store.open(tmp_path / "data" / "store", map_size=1 << 30, tables=STORE_TABLES)
    try:
        with store.write() as txn:
            txn.put(SPLITS, ("old", 1, "val"), b"")
    finally:
        store.close()
    daemon = InProcessDaemon(settings).start()
    try:
        with tessera.Client(daemon.target, timeout=30) as sdk:
            with pytest.raises(
                tessera.FailedPrecondition, match="split 'val' of dataset 'old' v1 holds no sample"
            ):
                sdk.datasets.load("old:1", split="val")
            assert len(sdk.datasets.split_indices("old:1", "train")) == SAMPLES // 2
    finally:
        daemon.stop()
