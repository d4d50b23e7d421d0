"""A dataset's version numbers are never reused, as a model's are not: a number that a lineage or
a job record names keeps naming that content, even after its version, or the whole dataset, is
deleted and the name uploaded again; a store from before the numbers were kept gets them at start."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from tessera.v1 import (
    common_pb2,
    datasets_pb2,
    datasets_pb2_grpc,
    registry_pb2,
    registry_pb2_grpc,
    training_pb2,
)
from tessera.v1 import training_pb2_grpc as training_grpc
from tesserad.datasets.numbering import NUMBERS, NUMBERS_DERIVED
from tesserad.datasets.service import DATASETS
from tesserad.store import WriteTxn, decode_record, encode_record
from tesserad.training.search_space import SweepParameter
from tesserad.training.sweeps import Sweep, encode_sweep
from tests.conftest import InProcessDaemon, daemon_settings
from tests.integration.datasets.conftest import npz_bytes, upload_dataset
from tests.integration.older_store import daemon_on, old_sweep, written_while_stopped
from tests.integration.registry.conftest import onnx_header, onnx_identity, upload
from tests.integration.training.conftest import TRAINING_SETTINGS, follow, job_spec, states, submit

D = datasets_pb2
R = registry_pb2


def test_deleting_the_last_version_does_not_renumber(ds):
    assert [upload_dataset(ds, "clips", npz_bytes(n)).version for n in (10, 11)] == [1, 2]
    ds.DeleteDataset(D.DeleteDatasetRequest(name="clips", version=2))
    ds.DeleteDataset(D.DeleteDatasetRequest(name="clips", version=1))
    assert upload_dataset(ds, "clips", npz_bytes(12)).version == 3


def test_deleting_the_dataset_does_not_renumber(ds):
    upload_dataset(ds, "clips", npz_bytes(10))
    ds.DeleteDataset(D.DeleteDatasetRequest(name="clips"))
    again = upload_dataset(ds, "clips", npz_bytes(11))
    assert again.version == 2
    got = ds.GetDatasetVersion(D.GetDatasetVersionRequest(ref=common_pb2.DatasetRef(name="clips")))
    assert got.version == 2


def as_before_the_numbers(data_dir: Path, next_versions: dict[str, int]) -> None:
    """Leave the store as a daemon from before `dataset_numbers` wrote it: the numbering in each
    dataset's record, none kept for a dataset once deleted."""

    def write(txn: WriteTxn) -> None:
        txn.delete_range(NUMBERS, ())
        assert txn.delete_range("meta", NUMBERS_DERIVED) == 1
        for name, number in next_versions.items():
            schema, data = decode_record(txn.get(DATASETS, (name,)), "dataset", 1)
            data["next_version"] = number
            txn.put(DATASETS, (name,), encode_record("dataset", schema, data))

    written_while_stopped(data_dir, write)


def test_a_store_from_before_the_numbers_gets_them_at_start(data_dir):
    with daemon_on(data_dir) as first:
        channel = first.channel()
        ds, registry = datasets_pb2_grpc.DatasetsStub(channel), registry_pb2_grpc.RegistryStub(channel)
        for n in (10, 11, 12):
            upload_dataset(ds, "kept", npz_bytes(n))
        ds.DeleteDataset(D.DeleteDatasetRequest(name="kept", version=3))
        upload_dataset(ds, "gone", npz_bytes(10))
        upload_dataset(ds, "gone", npz_bytes(11))
        data = onnx_identity()
        lineage = R.Lineage(datasets=[R.DatasetLineage(name="gone", version=2)])
        upload(registry, onnx_header("clf", data, lineage=lineage), data)
        ds.DeleteDataset(D.DeleteDatasetRequest(name="gone", force=True))
    as_before_the_numbers(data_dir, {"kept": 4})

    with daemon_on(data_dir) as second:
        ds = datasets_pb2_grpc.DatasetsStub(second.channel())
        assert upload_dataset(ds, "kept", npz_bytes(13)).version == 4
        assert upload_dataset(ds, "gone", npz_bytes(12)).version == 3
        assert upload_dataset(ds, "new", npz_bytes(12)).version == 1


def test_a_store_from_before_the_numbers_counts_what_its_jobs_name(data_dir):
    with daemon_on(data_dir, **TRAINING_SETTINGS) as first:
        channel = first.channel()
        ds, training = datasets_pb2_grpc.DatasetsStub(channel), training_grpc.TrainingStub(channel)
        x = np.random.default_rng(3).normal(size=(48, 6)).astype(np.float32)
        for n in (47, 48):
            upload_dataset(ds, "used", npz_bytes(x=x[:n], y=(x[:n, 0] > 0).astype(np.int64)))
        spec = job_spec("mlp", epochs=0, max_steps=1_000_000)
        spec.data.dataset.name = "used"
        job = submit(training, spec)
        training.CancelJob(training_pb2.CancelJobRequest(job_id=job.job_id))
        assert states(follow(training, job.job_id))[-1] == training_pb2.JOB_STATE_CANCELLED
        # An ended job holds nothing: the dataset goes without force, its job record stays.
        ds.DeleteDataset(D.DeleteDatasetRequest(name="used"))
    as_before_the_numbers(data_dir, {})

    with daemon_on(data_dir) as second:
        ds = datasets_pb2_grpc.DatasetsStub(second.channel())
        assert upload_dataset(ds, "used", npz_bytes(12)).version == 3


def _passed_by_the_first_numbers_pass_with_sweeps(*sweeps: Sweep) -> Callable[[WriteTxn], None]:
    """The store as the first numbers pass left it (its own marker, sweeps not read), holding
    `sweeps`, which an older tesserad left naming versions of datasets it deleted before it kept
    their numbers: no row keeps them."""

    def write(txn: WriteTxn) -> None:
        txn.delete("meta", NUMBERS_DERIVED)
        txn.put("meta", ("dataset_numbers_derived",), encode_record("dataset_numbers_derived", 1, {}))
        for sweep in sweeps:
            txn.put("sweeps", (sweep.sweep_id,), encode_sweep(sweep))

    return write


def _named(name: object, version: object) -> dict:
    return {"data": {"dataset": {"name": name, "version": version}}}


def test_a_store_passed_without_reading_sweeps_numbers_on_past_what_their_bases_name(data_dir):
    InProcessDaemon(daemon_settings(data_dir)).start().stop()
    swept = old_sweep(_named("swept", 4), "sweep-old")
    # A base whose dataset a parameter sets was never checked as it stands.
    swept_over = old_sweep(
        _named("swept-over", 9),
        "sweep-over",
        parameters=[SweepParameter("data.dataset.version", values=["1", "2"])],
    )
    written_while_stopped(data_dir, _passed_by_the_first_numbers_pass_with_sweeps(swept, swept_over))

    with daemon_on(data_dir) as second:
        ds = datasets_pb2_grpc.DatasetsStub(second.channel())
        assert upload_dataset(ds, "swept", npz_bytes(10)).version == 5
        assert upload_dataset(ds, "swept-over", npz_bytes(10)).version == 1


def test_a_sweep_base_that_names_no_dataset_version_is_passed_over_with_a_warning(data_dir, caplog):
    """Start-up never fails on what a record holds: a sweep's base as an older tesserad may have
    left it, naming versions no dataset can have (past int64, one whose next number would be past
    it, a name no dataset can have, a digit int() refuses), beside one that names "d v5"."""
    InProcessDaemon(daemon_settings(data_dir)).start().stop()
    named = [("d", 2**64), ("d", 2**63 - 1), ("Not A Name", 3), ("d", "\u00b2"), ("d", 5)]
    sweeps = [old_sweep(_named(name, version), f"sweep-{n}") for n, (name, version) in enumerate(named)]
    written_while_stopped(data_dir, _passed_by_the_first_numbers_pass_with_sweeps(*sweeps))
    caplog.set_level("INFO", logger="tesserad.datasets")

    with daemon_on(data_dir) as second:
        ds = datasets_pb2_grpc.DatasetsStub(second.channel())
        assert upload_dataset(ds, "d", npz_bytes(10)).version == 6
    [warning] = [r for r in caplog.records if r.levelname == "WARNING" and "passed over" in r.getMessage()]
    assert warning.references == 4
    assert set(warning.shown) == {("d", 2**64), ("d", 2**63 - 1), ("Not A Name", 3), ("d", "\u00b2")}
