"""A training job registers once: `register_version(once_per_job=True)` for a job that has a
version of the model already returns that version, found through the job_versions index, which
goes with the version and is built at start for a store written before it."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from tesserad.registry import Lineage, Registry
from tesserad.registry.aliases import MAX_MODEL_ALIASES
from tesserad.registry.backfill import EARLY_STOPPING_OFF_DROPPED, JOB_VERSIONS_INDEXED
from tesserad.registry.tables import ALIASES, JOB_VERSIONS
from tesserad.server import STORE_TABLES
from tesserad.store import BlobStore, Store
from tesserad.training.job_records import JobRecord, encode_job
from tesserad.training.registration import JobRegistration
from tests.integration.registry.conftest import mlp_weights

ARCHITECTURE = {"family": "mlp", "input_shape": [4], "output_size": 2, "hidden_sizes": [8]}


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    opened = Store.open(tmp_path / "store", map_size=1 << 30, tables=STORE_TABLES)
    yield opened
    opened.close()


def registry(store: Store, tmp_path: Path) -> Registry:
    return Registry(store, BlobStore(tmp_path / "blobs"), max_artifact_size=1 << 30, deployment_history=100)


def register(registry: Registry, tmp_path: Path, job_id: str, seed: int, once: bool = True) -> int:
    blobs = BlobStore(tmp_path / "blobs")
    record = registry.register_version(
        "m",
        format="safetensors",
        blob=blobs.put_bytes(mlp_weights(seed=seed)),
        architecture=ARCHITECTURE,
        lineage=Lineage(job_id=job_id),
        create_model_if_missing=True,
        alias="staging",
        once_per_job=once,
    )
    return record.version


def index(store: Store) -> list[tuple[object, ...]]:
    with store.read() as txn:
        return [key for key, _ in txn.scan(JOB_VERSIONS)]


def test_a_job_registering_again_gets_its_version_and_nothing_else_changes(
    store: Store, tmp_path: Path
) -> None:
    versions = registry(store, tmp_path)
    assert register(versions, tmp_path, "job-a", seed=1) == 1
    assert register(versions, tmp_path, "job-b", seed=2) == 2
    # Other bytes (a job's weights read back from its final checkpoint): the same version, and
    # the new blob, held by nothing, is gone.
    assert register(versions, tmp_path, "job-a", seed=3) == 1
    assert versions.get_model("m").version_count == 2
    assert versions.get_alias("m", "staging").version == 2
    assert not BlobStore(tmp_path / "blobs").path(hashlib.sha256(mlp_weights(seed=3)).hexdigest()).exists()
    # An upload naming a job in its lineage is not a job's registration: it adds a version.
    assert register(versions, tmp_path, "job-a", seed=4, once=False) == 3
    assert sorted(index(store)) == [("job-a", "m", 1), ("job-a", "m", 3), ("job-b", "m", 2)]


def test_the_index_goes_with_the_version_and_a_job_can_register_again_then(
    store: Store, tmp_path: Path
) -> None:
    versions = registry(store, tmp_path)
    register(versions, tmp_path, "job-a", seed=1)
    register(versions, tmp_path, "job-b", seed=2)
    versions.delete_version("m", 1)
    assert index(store) == [("job-b", "m", 2)]
    assert register(versions, tmp_path, "job-a", seed=1) == 3
    versions.delete_model("m", force=True)
    assert index(store) == []


def test_a_store_from_before_the_index_is_indexed_at_start(store: Store, tmp_path: Path) -> None:
    versions = registry(store, tmp_path)
    register(versions, tmp_path, "job-a", seed=1)
    register(versions, tmp_path, "", seed=2)
    with store.write() as txn:
        txn.delete_range(JOB_VERSIONS, ())
        assert txn.delete_range("meta", JOB_VERSIONS_INDEXED) == 1
    again = registry(store, tmp_path)
    assert index(store) == [("job-a", "m", 1)]
    assert register(again, tmp_path, "job-a", seed=3) == 1


def _job(job_id: str, alias: str) -> JobRecord:
    """A trained job's record as registration reads it (its dataset was deleted while it ran)."""
    config = {
        "architecture": ARCHITECTURE,
        "data": {"dataset": "d", "version": 1},
        "dataset_sha256": "0" * 64,
        "register_as": {"model": "m", "alias": alias, "description": ""},
        "tags": {},
    }
    return JobRecord(
        job_id=job_id,
        spec={},
        config=config,
        state="RUNNING",
        experiment="",
        run_id="",
        attempt=1,
        devices=(),
        created_at=0.0,
        started_at=0.0,
        ended_at=None,
        progress=1.0,
        epoch=1,
        step=1,
        total_steps=1,
        metrics={},
        error=None,
        registered=None,
        last_seq=0,
        created_by="",
        sweep_id="",
        checkpoints=(),
    )


def test_a_job_registering_again_is_told_its_alias_only_where_it_points_at_the_version(
    store: Store, tmp_path: Path
) -> None:
    # The model reached its alias cap while the job ran: the version was registered without the
    # alias, then the daemon stopped before the job's end was stored. Registering again must not
    # say the alias was set.
    versions = registry(store, tmp_path)
    register(versions, tmp_path, "job-0", seed=1)
    with store.write() as txn:
        for i in range(MAX_MODEL_ALIASES - 1):
            txn.put(ALIASES, ("m", f"held-{i:04}"), txn.get(ALIASES, ("m", "staging")))
    registration = JobRegistration(versions)
    blobs = BlobStore(tmp_path / "blobs")
    first = registration.register(_job("job-a", "trained"), blobs.put_bytes(mlp_weights(seed=2)))
    assert (first.version, first.alias) == (2, "")
    assert first.alias_refused.startswith("model 'm' has 1,000 aliases")
    again = registration.register(_job("job-a", "trained"), blobs.put_bytes(mlp_weights(seed=3)))
    assert (again.version, again.alias) == (2, "")
    assert again.alias_refused == (
        "the version was registered before the job was resumed, and the alias does not point at it"
    )
    # One whose alias was set is told it again.
    set_first = registration.register(_job("job-b", "held-0001"), blobs.put_bytes(mlp_weights(seed=4)))
    set_again = registration.register(_job("job-b", "held-0001"), blobs.put_bytes(mlp_weights(seed=5)))
    assert (set_first.version, set_first.alias) == (set_again.version, set_again.alias) == (3, "held-0001")
    assert set_again.alias_refused == ""


def test_versions_jobs_registered_with_early_stopping_off_params_lose_them_at_start(
    store: Store, tmp_path: Path
) -> None:
    versions = registry(store, tmp_path)
    blobs = BlobStore(tmp_path / "blobs")
    off = {
        "early_stopping.metric": "val_loss",
        "early_stopping.mode": "min",
        "early_stopping.patience": "0",
        "early_stopping.min_delta": "0.0",
    }
    # A job's version keeps its spec in lineage, or (from an older tesserad) only its job_id,
    # whose job is then found in the jobs table.
    made = {
        "job-off": ({**off, "optimizer.lr": "0.01"}, {"epochs": 1}),
        "job-on": ({**off, "early_stopping.patience": "2"}, {"epochs": 1}),
        "job-recorded": (off, None),
        "": (off, None),
    }
    for seed, (job_id, (params, spec)) in enumerate(made.items()):
        versions.register_version(
            "m",
            format="safetensors",
            blob=blobs.put_bytes(mlp_weights(seed=seed)),
            architecture=ARCHITECTURE,
            params=params,
            lineage=Lineage(job_id=job_id, job_spec=spec),
            create_model_if_missing=True,
        )
    with store.write() as txn:
        txn.put("jobs", ("job-recorded",), encode_job(_job("job-recorded", "")))
        txn.delete("meta", EARLY_STOPPING_OFF_DROPPED)
    again = registry(store, tmp_path)
    assert [again.get_version("m", number).params for number in (1, 2, 3, 4)] == [
        {"optimizer.lr": "0.01"},
        made["job-on"][0],
        {},
        off,
    ]


def test_a_hand_uploaded_version_naming_another_trackers_job_keeps_its_early_stopping_params(
    store: Store, tmp_path: Path
) -> None:
    versions = registry(store, tmp_path)
    params = {"early_stopping.patience": "0", "early_stopping.metric": "val_loss"}
    versions.register_version(
        "m",
        format="safetensors",
        blob=BlobStore(tmp_path / "blobs").put_bytes(mlp_weights(seed=1)),
        architecture=ARCHITECTURE,
        params=params,
        lineage=Lineage(job_id="slurm 4512"),
        create_model_if_missing=True,
    )
    with store.write() as txn:
        txn.delete("meta", EARLY_STOPPING_OFF_DROPPED)
    assert registry(store, tmp_path).get_version("m", 1).params == params
