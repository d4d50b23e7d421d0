"""The store's schema version (tesserad.store.schema): each start records it, a daemon refuses
a store of a newer one, the start-up upgrades run again after an older tesserad wrote the store,
and a backup carries it, so that restore refuses one it cannot open."""

from __future__ import annotations

import io
import json
import re
import tarfile
from pathlib import Path
from typing import Any

import lmdb
import pytest

import tessera
from tessera.backup import MANIFEST_NAME
from tessera.cli import main as tessera_main
from tesserad import __version__
from tesserad.cli import EXIT_STORE_TOO_NEW
from tesserad.cli import main as tesserad_main
from tesserad.registry import Lineage
from tesserad.registry.backfill import JOB_VERSIONS_INDEXED
from tesserad.registry.tables import JOB_VERSIONS
from tesserad.server import STORE_MARKERS, STORE_TABLES
from tesserad.store import BlobStore, Store, encode_record
from tesserad.store.lockfile import LOCK_NAME
from tesserad.store.schema import SCHEMA_KEY, STORE_SCHEMA, SchemaRecord, recorded_schema
from tesserad.training import run_order
from tests.conftest import InProcessDaemon, daemon_settings
from tests.integration.registry.conftest import mlp_weights

ARCHITECTURE = {"family": "mlp", "input_shape": [4], "output_size": 2, "hidden_sizes": [8]}


def _open(data_dir: Path) -> Store:
    return Store.open(data_dir / "store", map_size=1 << 30, tables=STORE_TABLES)


def _recorded(store: Store) -> SchemaRecord | None:
    with store.read() as txn:
        return recorded_schema(txn)


def _record(data_dir: Path) -> SchemaRecord | None:
    store = _open(data_dir)
    try:
        return _recorded(store)
    finally:
        store.close()


def _put_record(store: Store, schema: int, version: str, token: str) -> None:
    data = {"schema": schema, "tesserad_version": version, "token": token, "at": 0.0}
    with store.write() as txn:
        txn.put("meta", SCHEMA_KEY, encode_record("store_schema", 1, data))


def test_a_start_records_the_schema_and_the_tesserad_version(data_dir: Path) -> None:
    InProcessDaemon(daemon_settings(data_dir)).start().stop()
    record = _record(data_dir)
    assert record is not None
    assert (record.schema, record.tesserad_version) == (STORE_SCHEMA, __version__)
    # The token that ties the record to this data directory, beside the holder's pid.
    assert (data_dir / LOCK_NAME).read_text().splitlines()[1] == f"store {record.token}"


def test_a_daemon_refuses_a_store_of_a_newer_schema_and_leaves_it_as_it_was(
    spawn_daemon: Any, tmp_path: Path
) -> None:
    data_dir = tmp_path / "data"
    # A store with fewer tables than this daemon's: it must not gain the missing ones either.
    store = Store.open(data_dir / "store", map_size=1 << 30, tables=["meta"])
    _put_record(store, STORE_SCHEMA + 1, "9.0.0", "newer")
    store.close()
    data_file = data_dir / "store" / "data.mdb"
    before = data_file.read_bytes()
    daemon = spawn_daemon("--listen", "127.0.0.1:0", "--metrics-listen", "off", "--data-dir", str(data_dir))
    # Not 1 (retried by systemd's Restart=on-failure): no restart of this tesserad mends it.
    assert daemon.process.wait(30) == EXIT_STORE_TOO_NEW
    output = daemon.output()
    assert (
        f"tesserad cannot start: the store in {data_dir} has schema {STORE_SCHEMA + 1}, written by "
        f"tesserad 9.0.0; this tesserad writes schema {STORE_SCHEMA} and cannot open a newer one. "
        "Run tesserad 9.0.0 or newer on it, or restore a backup made before the upgrade"
    ) in output
    assert data_file.read_bytes() == before
    assert _table_names(data_dir / "store") == ["meta"]
    assert _record(data_dir) == SchemaRecord(STORE_SCHEMA + 1, "9.0.0", "newer")


def _table_names(store_dir: Path) -> list[str]:
    """The named tables in the store at `store_dir`: the keys of LMDB's main database."""
    env = lmdb.open(str(store_dir), readonly=True, max_dbs=1)
    try:
        with env.begin() as txn:
            return [bytes(key).decode() for key in txn.cursor().iternext(values=False)]
    finally:
        env.close()


def _register(daemon: InProcessDaemon, job_id: str, seed: int) -> int:
    """A version of model m registered by training job `job_id` (once per job); its number."""
    assert daemon.daemon.registry is not None
    blobs = BlobStore(daemon.settings.data_dir / "blobs")
    record = daemon.daemon.registry.register_version(
        "m",
        format="safetensors",
        blob=blobs.put_bytes(mlp_weights(seed=seed)),
        architecture=ARCHITECTURE,
        lineage=Lineage(job_id=job_id),
        create_model_if_missing=True,
        once_per_job=True,
    )
    return record.version


@pytest.mark.parametrize(
    "older",
    ["an older tesserad took the data directory", "the recorded schema stepped back", "no record"],
)
def test_an_index_an_older_tesserad_did_not_keep_is_repaired_at_the_next_start(
    data_dir: Path, older: str
) -> None:
    daemon = InProcessDaemon(daemon_settings(data_dir)).start()
    try:
        assert _register(daemon, "job-a", seed=1) == 1
    finally:
        daemon.stop()
    # What an older tesserad leaves when it writes the store after the index's backfill wrote its
    # marker: a version it registered without its index row, and the row of a version it deleted.
    store = _open(data_dir)
    try:
        with store.write() as txn:
            assert txn.delete(JOB_VERSIONS, ("job-a", "m", 1))
            txn.put(JOB_VERSIONS, ("job-b", "m", 7), b"")
            assert txn.exists("meta", JOB_VERSIONS_INDEXED)
            if older == "no record":
                # A store last opened by a tesserad from before schema versions.
                txn.delete("meta", SCHEMA_KEY)
        record = _recorded(store)
        if older == "the recorded schema stepped back":
            assert record is not None
            # Below the schema from which every daemon keeps the index.
            _put_record(store, STORE_MARKERS[JOB_VERSIONS_INDEXED] - 1, "0.0.1", record.token)
    finally:
        store.close()
    if older != "the recorded schema stepped back":
        # Every tesserad rewrites the lock file with its pid as it takes the data directory.
        (data_dir / LOCK_NAME).write_text("4242\n")
    daemon = InProcessDaemon(daemon_settings(data_dir)).start()
    try:
        # The job's registration, retried, finds its version through the index again, and a job
        # whose version is gone registers a new one.
        assert _register(daemon, "job-a", seed=2) == 1
        assert _register(daemon, "job-b", seed=3) == 2
        assert daemon.daemon.registry is not None
        assert daemon.daemon.registry.get_model("m").version_count == 2
    finally:
        daemon.stop()
    record_after = _record(data_dir)
    assert record_after is not None and record_after.schema == STORE_SCHEMA


def test_order_rows_an_older_tesserad_left_stale_are_gone_after_the_next_start(data_dir: Path) -> None:
    daemon = InProcessDaemon(daemon_settings(data_dir)).start()
    try:
        with tessera.Client(daemon.target) as client:
            run_id = client.training.create_run("exp", create_experiment=True).run_id
            client.training.log_metrics(run_id, {"loss": 1.0}, step=1)
    finally:
        daemon.stop()
    # An older tesserad that logged to the run without moving its order rows: rows of a value
    # the run's summary no longer has.
    store = _open(data_dir)
    try:
        with store.write() as txn:
            run_order.update(txn, "exp", run_id, "loss", None, {"last": 9.0, "min": 9.0, "max": 9.0})
            assert txn.count(run_order.TABLE) == 6
    finally:
        store.close()
    (data_dir / LOCK_NAME).write_text("4242\n")
    InProcessDaemon(daemon_settings(data_dir)).start().stop()
    store = _open(data_dir)
    try:
        with store.read() as txn:
            # last, min and max of the one point logged.
            assert txn.count(run_order.TABLE) == 3
    finally:
        store.close()


def with_manifest(archive: Path, target: Path, change: Any) -> Path:
    """A copy of `archive` whose manifest is change(manifest document)."""
    with tarfile.open(archive) as source, tarfile.open(target, "w") as out:
        for member in source.getmembers():
            file = source.extractfile(member)
            assert file is not None
            data = file.read()
            if member.name == MANIFEST_NAME:
                data = json.dumps(change(json.loads(data))).encode()
            member.size = len(data)
            out.addfile(member, io.BytesIO(data))
    return target


def test_restore_refuses_a_backup_of_a_newer_schema_and_takes_an_older_one(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    daemon = InProcessDaemon(daemon_settings(tmp_path / "source")).start()
    archive = tmp_path / "backup.tar"
    try:
        assert tessera_main(["--target", daemon.target, "admin", "backup", "-o", str(archive)]) == 0
    finally:
        daemon.stop()
    capsys.readouterr()
    with tarfile.open(archive) as tar:
        manifest_file = tar.extractfile(MANIFEST_NAME)
        assert manifest_file is not None
        assert json.loads(manifest_file.read())["store_schema"] == STORE_SCHEMA

    newer = with_manifest(
        archive,
        tmp_path / "newer.tar",
        lambda d: {**d, "store_schema": STORE_SCHEMA + 1, "tesserad_version": "9.0.0"},
    )
    assert tesserad_main(["restore", str(newer), "--data-dir", str(tmp_path / "refused")]) == 1
    err = capsys.readouterr().err
    assert (
        f"it was made by tesserad 9.0.0, whose store has schema {STORE_SCHEMA + 1}, and this tesserad "
        f"({__version__}) opens schema {STORE_SCHEMA} at most; restore it with tesserad 9.0.0 or later"
    ) in err
    assert not (tmp_path / "refused").exists()

    # A backup from a tesserad before schema versions: restored, then upgraded as it opens.
    older = with_manifest(
        archive, tmp_path / "older.tar", lambda d: {k: v for k, v in d.items() if k != "store_schema"}
    )
    restored = tmp_path / "restored"
    assert tesserad_main(["restore", str(older), "--data-dir", str(restored)]) == 0
    InProcessDaemon(daemon_settings(restored)).start().stop()
    record = _record(restored)
    assert record is not None and (record.schema, record.tesserad_version) == (STORE_SCHEMA, __version__)


def test_a_restored_backup_keeps_its_daemons_start_up_markers(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The restored directory's lock file carries the token of the store's schema record, so the
    first start trusts the record (keeps its token) instead of running every start-up upgrade
    again, into a new directory and into an empty one (a new disk's mount point) alike."""
    source = tmp_path / "source"
    daemon = InProcessDaemon(daemon_settings(source)).start()
    archive = tmp_path / "backup.tar"
    try:
        assert tessera_main(["--target", daemon.target, "admin", "backup", "-o", str(archive)]) == 0
    finally:
        daemon.stop()
    capsys.readouterr()
    backed_up = _record(source)
    assert backed_up is not None
    (tmp_path / "mount").mkdir()
    for restored in (tmp_path / "new", tmp_path / "mount"):
        assert tesserad_main(["restore", str(archive), "--data-dir", str(restored)]) == 0
        # Sized as the backup's summary sizes them, not "(969601 bytes)".
        assert re.search(
            r", \d+ blobs? \((\d+ B|\d+\.\d [KMG]iB)\), backed up by tesserad", capsys.readouterr().out
        )
        assert (restored / LOCK_NAME).read_text().splitlines()[1] == f"store {backed_up.token}"
        InProcessDaemon(daemon_settings(restored)).start().stop()
        assert _record(restored) == SchemaRecord(STORE_SCHEMA, __version__, backed_up.token)
