"""The store check: `tesserad verify` (offline) and `tessera admin verify` (online) re-hash every
blob and look for every record's blob, naming the owner of each problem; a backup that meets a
damaged blob names its owners and says to run the check."""

from __future__ import annotations

import asyncio
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path

import grpc
import lmdb
import numpy as np
import pytest

import tessera
import tessera.aio
from tessera.cli import EXIT_DAEMON, EXIT_FAILED
from tessera.cli import main as tessera_main
from tessera.progress_line import byte_size
from tessera.v1 import system_pb2, system_pb2_grpc
from tesserad.api.system import REPORTED_PROBLEMS, store_check_to_proto
from tesserad.backup.verify import DAMAGED, MISSING, BlobProblem, StoreCheck, StoreCheckReport
from tesserad.cli import EXIT_CANNOT_START, EXIT_DAMAGED
from tesserad.cli import main as tesserad_main
from tesserad.security import Role, hash_token, new_token
from tesserad.security.tokens import format_entry
from tests.conftest import InProcessDaemon, as_nobody, daemon_settings
from tests.held_threads import HeldInThread
from tests.integration.registry.conftest import onnx_identity


@dataclass(frozen=True)
class Filled:
    """A stopped daemon's data directory holding one of each owner of a blob."""

    data_dir: Path
    model_sha256: str
    dataset_sha256: str
    artifact_sha256: str
    checkpoint_sha256: str
    run_id: str
    job_id: str
    checkpoint_epoch: int


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def filled(tmp_path_factory: pytest.TempPathFactory) -> Filled:
    tmp = tmp_path_factory.mktemp("filled")
    data_dir = tmp / "data"
    daemon = InProcessDaemon(daemon_settings(data_dir)).start()
    try:
        model_file, data_file, artifact = tmp / "m.onnx", tmp / "d.npz", tmp / "notes.txt"
        model_file.write_bytes(onnx_identity())
        x = np.arange(96, dtype=np.float32).reshape(16, 6)
        np.savez(data_file, x=x, y=(x[:, 0] > 40).astype(np.int64))
        artifact.write_text("a run's notes\n")
        with tessera.Client(daemon.target) as client:
            client.models.push("clf", model_file)
            client.datasets.push("flat", data_file, splits={"train": 0.75, "val": 0.25})
            run = client.training.create_run("exp", name="by-hand", create_experiment=True)
            client.training.log_artifact(run.run_id, artifact, "docs")
            job = client.training.submit(
                {
                    "experiment": "exp",
                    "architecture": {"input_shape": [6], "output_size": 2, "mlp": {"hidden_sizes": [4]}},
                    "data": {"dataset": {"name": "flat"}},
                    "optimizer": {"name": "adam", "lr": 0.01},
                    "epochs": 1,
                    "batch_size": 8,
                }
            )
            job.wait(timeout=120)
            checkpoint = client.training.job(job.id).info.checkpoints[-1]
    finally:
        daemon.stop()
    return Filled(
        data_dir,
        _sha256(model_file),
        _sha256(data_file),
        _sha256(artifact),
        checkpoint.sha256,
        run.run_id,
        job.id,
        checkpoint.epoch,
    )


@pytest.fixture
def copy(filled: Filled, tmp_path: Path) -> Path:
    """A data directory of its own for the test, copied from `filled`'s."""
    return Path(shutil.copytree(filled.data_dir, tmp_path / "data"))


def _blob(data_dir: Path, sha256: str) -> Path:
    return data_dir / "blobs" / "sha256" / sha256[:2] / sha256[2:]


def _damage(data_dir: Path, sha256: str) -> None:
    """Flip four bytes of the blob, as the disk might."""
    path = _blob(data_dir, sha256)
    data = bytearray(path.read_bytes())
    for i in range(min(4, len(data))):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))


def _verify_offline(data_dir: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = tesserad_main(["verify", "--data-dir", str(data_dir)])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_a_clean_store_verifies_clean_offline_and_online(
    filled: Filled, copy: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = _verify_offline(copy, capsys)
    assert (code, err) == (0, "")
    assert "no damage" in out
    assert "4 references" in out
    daemon = InProcessDaemon(daemon_settings(copy)).start()
    try:
        code = tessera_main(["--target", daemon.target, "admin", "verify"])
        captured = capsys.readouterr()
        assert (code, captured.err) == (0, "")
        assert "no damage" in captured.out
    finally:
        daemon.stop()


def test_a_damaged_blob_is_found_offline_with_its_owner(
    filled: Filled, copy: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    _damage(copy, filled.model_sha256)
    _damage(copy, filled.checkpoint_sha256)
    code, out, err = _verify_offline(copy, capsys)
    assert code == EXIT_DAMAGED
    assert f"blob {filled.model_sha256} is damaged on disk" in out
    assert "model clf version 1 (onnx file)" in out
    assert f"job {filled.job_id} checkpoint epoch {filled.checkpoint_epoch}" in out
    assert "`tessera models rm MODEL VERSION`" in out
    assert "2 problems" in err
    # The check left the store as it was: the damage is still there to be found. A relative path
    # is quoted, so that "data" reads as a name.
    monkeypatch.chdir(copy.parent)
    code, _, err = _verify_offline(Path(copy.name), capsys)
    assert code == EXIT_DAMAGED
    assert f"tesserad verify: data directory '{copy.name}' is damaged: 2 problems" in err


def test_a_missing_blob_file_is_found_with_its_owner(
    filled: Filled, copy: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _blob(copy, filled.dataset_sha256).unlink()
    code, out, _err = _verify_offline(copy, capsys)
    assert code == EXIT_DAMAGED
    assert f"blob {filled.dataset_sha256} is missing from the blob directory" in out
    assert "dataset flat version 1" in out


def test_the_offline_check_is_refused_while_the_daemon_runs(
    filled: Filled, copy: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    daemon = InProcessDaemon(daemon_settings(copy)).start()
    try:
        code, out, err = _verify_offline(copy, capsys)
    finally:
        daemon.stop()
    assert (code, out) == (1, "")
    assert "in use by another tesserad" in err
    assert "tessera admin verify" in err


def test_the_offline_check_of_a_data_directory_without_its_lock_file_runs_only_when_told(
    copy: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (copy / "tesserad.lock").unlink()
    code, out, err = _verify_offline(copy, capsys)
    assert (code, out) == (1, "")
    assert "pass --unlocked" in " ".join(err.split()), err
    assert not (copy / "tesserad.lock").exists()
    code = tesserad_main(["verify", "--data-dir", str(copy), "--unlocked"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "no damage" in captured.out and "runs unlocked" in captured.err
    assert not (copy / "tesserad.lock").exists()


def test_a_damaged_blob_is_found_online_with_its_owner(
    filled: Filled, copy: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _damage(copy, filled.artifact_sha256)
    daemon = InProcessDaemon(daemon_settings(copy)).start()
    try:
        with tessera.Client(daemon.target) as client:
            report = client.system.verify()
        assert [(p.sha256, p.kind, list(p.owners)) for p in report.problems] == [
            (filled.artifact_sha256, "damaged", [f"run {filled.run_id} artifact docs/notes.txt"])
        ]
        assert report.blobs_checked >= 4
        code = tessera_main(["--target", daemon.target, "admin", "verify"])
        captured = capsys.readouterr()
        assert code == EXIT_FAILED
        # The console wraps long lines: the words are compared, not the breaks.
        said = " ".join(captured.out.split())
        assert f"run {filled.run_id} artifact docs/notes.txt" in said
        assert "`tessera runs artifacts put RUN_ID FILE`" in said
    finally:
        daemon.stop()


def test_the_online_check_tells_its_progress_from_the_blobs_to_check_to_its_report(
    filled: Filled, copy: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _damage(copy, filled.dataset_sha256)
    blob_bytes = sum(p.stat().st_size for p in (copy / "blobs" / "sha256").rglob("*") if p.is_file())
    daemon = InProcessDaemon(daemon_settings(copy)).start()
    try:
        stub = system_pb2_grpc.SystemStub(daemon.channel())
        messages = list(stub.VerifyStoreStream(system_pb2.VerifyStoreRequest(), timeout=120))
        told: list[tuple[int, int]] = []
        with tessera.Client(daemon.target) as client:
            report = client.system.verify(progress=lambda done, total: told.append((done, total)))
        code = tessera_main(["--target", daemon.target, "admin", "verify", "--progress"])
        captured = capsys.readouterr()
    finally:
        daemon.stop()
    first, last = messages[0], messages[-1]
    assert (first.blobs_checked, first.bytes_checked, first.bytes_total) == (0, 0, blob_bytes)
    assert first.blobs_total == last.blobs_total == last.report.blobs_checked >= 4
    assert not first.HasField("report") and all(not m.HasField("report") for m in messages[:-1])
    assert [p.sha256 for p in last.report.problems] == [filled.dataset_sha256]
    assert told[0] == (0, blob_bytes)
    assert [p.sha256 for p in report.problems] == [filled.dataset_sha256]
    assert code == EXIT_FAILED
    assert f"verify: 0 B of {byte_size(blob_bytes)} (0%)" in captured.err
    assert "dataset flat version 1" in " ".join(captured.out.split())


def test_a_daemon_older_than_the_checks_progress_is_asked_for_the_check_alone() -> None:
    """A tesserad with VerifyStore and without VerifyStoreStream (UNIMPLEMENTED): the report
    comes, on the blocking and the asyncio client, and progress is never told."""
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    reply = system_pb2.VerifyStoreReport(blobs_checked=3, bytes_checked=30, references_checked=3)
    server.add_generic_rpc_handlers(
        (
            grpc.method_handlers_generic_handler(
                "tessera.v1.System",
                {
                    "VerifyStore": grpc.unary_unary_rpc_method_handler(
                        lambda _r, _c: reply.SerializeToString()
                    )
                },
            ),
        )
    )
    target = f"127.0.0.1:{server.add_insecure_port('127.0.0.1:0')}"
    server.start()
    told: list[tuple[int, int]] = []

    async def verified_async() -> system_pb2.VerifyStoreReport:
        async with tessera.aio.Client(target) as client:
            return await client.system.verify(progress=lambda done, total: told.append((done, total)))

    try:
        with tessera.Client(target) as client:
            report = client.system.verify(progress=lambda done, total: told.append((done, total)))
        report_async = asyncio.run(verified_async())
    finally:
        server.stop(grace=None)
    assert report == report_async == reply
    assert told == []


def test_a_backup_that_meets_a_damaged_blob_names_its_owner_and_the_check(
    filled: Filled, copy: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _damage(copy, filled.artifact_sha256)
    daemon = InProcessDaemon(daemon_settings(copy)).start()
    try:
        code = tessera_main(["--target", daemon.target, "admin", "backup", "-o", str(tmp_path / "b.tar")])
        err = capsys.readouterr().err
        assert code == EXIT_DAEMON
        assert f"blob {filled.artifact_sha256} is damaged on disk" in err
        assert f"run {filled.run_id} artifact docs/notes.txt" in err
        assert "tessera admin verify" in err
        assert "`tessera runs artifacts put RUN_ID FILE`" in err
        assert not (tmp_path / "b.tar").exists()
    finally:
        daemon.stop()


def test_only_an_admin_may_verify_online(
    filled: Filled, copy: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    token = {role: new_token() for role in Role}
    tokens_file = tmp_path / "tokens.toml"
    tokens_file.write_text("".join(format_entry(r.label, r, hash_token(t)) for r, t in token.items()))
    daemon = InProcessDaemon(daemon_settings(copy, **{"security.tokens_file": str(tokens_file)})).start()
    try:
        args = ["--target", daemon.target, "admin", "verify"]
        assert tessera_main(["--token", token[Role.TRAINER], *args]) == EXIT_DAEMON
        err = capsys.readouterr().err
        assert err.startswith("tessera: PERMISSION_DENIED:") and "admin role" in err
        assert tessera_main(["--token", token[Role.TRAINER], *args, "--progress"]) == EXIT_DAEMON
        err = capsys.readouterr().err
        assert "PERMISSION_DENIED:" in err and "admin role" in err
        assert tessera_main(["--token", token[Role.ADMIN], *args]) == 0
    finally:
        daemon.stop()


def verify_once_free(stub: system_pb2_grpc.SystemStub) -> system_pb2.VerifyStoreReport:
    """VerifyStore, asked again while the check before it still ends in its thread (one check
    runs at a time, and a cancelled one is let go only once its step in flight is done)."""
    deadline = time.monotonic() + 60
    while True:
        try:
            return stub.VerifyStore(system_pb2.VerifyStoreRequest(), timeout=120)
        except grpc.RpcError as error:
            if error.code() != grpc.StatusCode.RESOURCE_EXHAUSTED or time.monotonic() > deadline:
                raise
        time.sleep(0.05)


def test_a_cancelled_online_check_stops_after_the_step_in_flight(filled: Filled, copy: Path) -> None:
    """The client gone mid-check: the daemon finishes the step in flight in its thread and then
    closes the check (its hashing generator is ended where it stood), rather than reading on."""
    with HeldInThread(StoreCheck._hash, "self.bytes_checked += len(chunk)") as held:
        daemon = InProcessDaemon(daemon_settings(copy)).start()
        try:
            stub = system_pb2_grpc.SystemStub(daemon.channel())
            call = stub.VerifyStore.future(system_pb2.VerifyStoreRequest(), timeout=120)
            assert held.reached.wait(60)
            call.cancel()
            held.let_go.set()
            with pytest.raises(grpc.FutureCancelledError):
                call.result()
            report = verify_once_free(stub)
        finally:
            daemon.stop()
    assert [type(error) for error in held.raised] == [GeneratorExit]
    assert list(report.problems) == []


def _tables(store_dir: Path) -> list[bytes]:
    env = lmdb.open(str(store_dir), readonly=True, lock=False, max_dbs=0)
    try:
        with env.begin() as txn:
            return [key for key, _ in txn.cursor()]
    finally:
        env.close()


def test_the_offline_check_changes_nothing_in_an_older_store_it_may_only_read(
    filled: Filled, copy: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A store as an older tesserad left it (its meta table alone), its directory made read-only:
    the check reads it as it is, creating no table (LMDB opened read-only, so that a read-only
    mount, or a store whose map is full, can be checked)."""
    store_dir = copy / "store"
    env = lmdb.open(str(store_dir), max_dbs=64)
    with env.begin(write=True) as txn:
        for name in [key for key, _ in txn.cursor()]:
            if name != b"meta":
                txn.drop(env.open_db(name, txn=txn), delete=True)
    env.close()
    data_file = store_dir / "data.mdb"
    before = (
        _tables(store_dir),
        data_file.read_bytes(),
        data_file.stat().st_mtime_ns,
        sorted(store_dir.iterdir()),
    )
    assert before[0] == [b"meta"]
    data_file.chmod(0o444)
    store_dir.chmod(0o555)
    try:
        code, out, err = _verify_offline(copy, capsys)
    finally:
        store_dir.chmod(0o755)
        data_file.chmod(0o644)
    assert (code, err) == (0, "")
    assert "0 references" in out and "no damage" in out
    after = (
        _tables(store_dir),
        data_file.read_bytes(),
        data_file.stat().st_mtime_ns,
        sorted(store_dir.iterdir()),
    )
    assert after == before


@pytest.fixture
def shared_copy(filled: Filled) -> Iterator[Path]:
    """`copy` where another user may reach it (pytest's own temporary directory is this user's
    alone): for the check run as `as_nobody()`."""
    parent = Path(tempfile.mkdtemp(prefix="tesserad-verify-"))
    try:
        parent.chmod(0o755)
        yield Path(shutil.copytree(filled.data_dir, parent / "data"))
    finally:
        for path in [parent, *parent.rglob("*")]:
            if path.is_dir():
                path.chmod(0o755)
        shutil.rmtree(parent)


def _make_read_only(data_dir: Path) -> None:
    """`chmod -R a-w`, for the user the check runs as: where that is root, whom no mode refuses,
    the check runs as nobody (`as_nobody`), who is given the directory first."""
    for path in [data_dir, *data_dir.rglob("*")]:
        if os.geteuid() == 0:
            os.chown(path, 65534, 65534)
        path.chmod(path.stat().st_mode & ~0o222)


def _verify_as_another_user(data_dir: Path, *more: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*as_nobody(), sys.executable, "-m", "tesserad", "verify", "--data-dir", str(data_dir), *more],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def _listing(data_dir: Path) -> list[tuple[str, int, int]]:
    return sorted(
        (str(p.relative_to(data_dir)), p.stat().st_mtime_ns, p.stat().st_size) for p in data_dir.rglob("*")
    )


@pytest.mark.parametrize("lock_file", [True, False], ids=["its-lock-file-there", "no-lock-file"])
def test_the_offline_check_runs_on_a_data_directory_it_may_not_write(
    filled: Filled, shared_copy: Path, lock_file: bool
) -> None:
    """As on a read-only mount or snapshot: the lock is taken shared on the file as it is, and
    where there is none to take, the check runs without it only when told to, and says so."""
    _damage(shared_copy, filled.model_sha256)
    if not lock_file:
        (shared_copy / "tesserad.lock").unlink()
    _make_read_only(shared_copy)
    before = _listing(shared_copy)
    if not lock_file:
        refused = _verify_as_another_user(shared_copy)
        assert (refused.returncode, refused.stdout) == (1, ""), refused.stderr
        assert "pass --unlocked" in " ".join(refused.stderr.split()), refused.stderr
    done = _verify_as_another_user(shared_copy, *([] if lock_file else ["--unlocked"]))
    assert done.returncode == EXIT_DAMAGED, done.stderr
    assert f"blob {filled.model_sha256} is damaged on disk" in done.stdout
    assert "Traceback" not in done.stderr
    unlocked = (
        f"data directory {str(shared_copy)!r} holds no tesserad.lock to lock, so the check runs unlocked"
    )
    assert (unlocked in " ".join(done.stderr.split())) is not lock_file, done.stderr
    assert _listing(shared_copy) == before


def test_the_offline_check_of_a_data_directory_it_may_not_write_is_refused_while_the_daemon_runs(
    shared_copy: Path,
) -> None:
    daemon = InProcessDaemon(daemon_settings(shared_copy)).start()
    try:
        _make_read_only(shared_copy)
        done = _verify_as_another_user(shared_copy)
    finally:
        for path in [shared_copy, *shared_copy.rglob("*")]:
            path.chmod(path.stat().st_mode | 0o200)
        daemon.stop()
    assert (done.returncode, done.stdout) == (1, ""), done.stderr
    assert "in use by another tesserad" in done.stderr
    assert "tessera admin verify" in done.stderr


def _damage_store(data_dir: Path, how: str) -> Path:
    """`data.mdb` overwritten with other bytes, or cut short (a copy that ran out of room): LMDB
    refuses the one, and the other, read past its end through the map, would be a SIGBUS."""
    data_file = data_dir / "store" / "data.mdb"
    if how == "garbage":
        data_file.write_bytes(b"not an lmdb file\n" * 1000)
    else:
        with data_file.open("r+b") as file:
            file.truncate(data_file.stat().st_size // 3)
    return data_file


def _says_to_restore(said: str, data_file: Path) -> None:
    words = " ".join(said.split())
    assert f"the store file {data_file} is damaged" in words, said
    assert "`tesserad restore BACKUP --data-dir NEW_DIR`" in words, said
    assert "Traceback" not in said, said


@pytest.mark.parametrize("how", ["garbage", "truncated"])
def test_a_damaged_store_file_is_said_in_a_paragraph_by_the_offline_check(
    copy: Path, how: str, capsys: pytest.CaptureFixture[str]
) -> None:
    data_file = _damage_store(copy, how)
    # A process of its own: a read past the end of the map, were it made, kills it.
    done = subprocess.run(
        [sys.executable, "-m", "tesserad", "verify", "--data-dir", str(copy)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert (done.returncode, done.stdout) == (EXIT_DAMAGED, ""), done.stderr
    assert done.stderr.startswith("tesserad verify: ")
    _says_to_restore(done.stderr, data_file)
    if how == "garbage":
        assert "MDB_INVALID" in done.stderr


def test_a_store_file_the_check_may_not_read_is_said_in_a_line(shared_copy: Path) -> None:
    data_file = shared_copy / "store" / "data.mdb"
    if os.geteuid() == 0:
        for path in [shared_copy, *shared_copy.rglob("*")]:
            os.chown(path, 65534, 65534)
        os.chown(data_file, 0, 0)
    data_file.chmod(0o600 if os.geteuid() == 0 else 0o000)
    done = _verify_as_another_user(shared_copy)
    assert (done.returncode, done.stdout) == (1, ""), done.stderr
    assert done.stderr == (
        f"tesserad verify: the store file {data_file} cannot be opened (LMDB says: Permission denied); "
        "give the user tesserad runs as access to it and to its directory\n"
    )


@pytest.mark.parametrize("how", ["garbage", "truncated"])
def test_a_damaged_store_file_stops_the_daemons_start_in_a_paragraph(
    copy: Path, how: str, spawn_daemon
) -> None:
    data_file = _damage_store(copy, how)
    daemon = spawn_daemon("--listen", "127.0.0.1:0", "--metrics-listen", "off", "--data-dir", str(copy))
    assert daemon.process.wait(60) == EXIT_CANNOT_START
    output = daemon.output()
    assert "tesserad cannot start: " in output, output
    _says_to_restore(output, data_file)


def test_a_reply_names_the_first_problems_and_counts_them_all() -> None:
    """However many blobs are lost, the reply stays far under a message's size limit: it names
    the first REPORTED_PROBLEMS and counts every problem by kind."""
    damaged = [
        BlobProblem(f"{i:064x}", DAMAGED, (f"model m version {i} (onnx file)",))
        for i in range(REPORTED_PROBLEMS)
    ]
    missing = [BlobProblem(f"{i:064x}", MISSING, ()) for i in range(REPORTED_PROBLEMS, REPORTED_PROBLEMS + 5)]
    reply = store_check_to_proto(StoreCheckReport(10, 100, 10, (*damaged, *missing), 1.0))
    assert [p.sha256 for p in reply.problems] == [p.sha256 for p in damaged]
    assert (reply.damaged_blobs, reply.missing_blobs) == (REPORTED_PROBLEMS, 5)


def test_the_cli_says_how_many_problems_the_reply_left_out(
    filled: Filled, copy: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("tesserad.api.system.REPORTED_PROBLEMS", 1)
    _damage(copy, filled.model_sha256)
    _damage(copy, filled.artifact_sha256)
    daemon = InProcessDaemon(daemon_settings(copy)).start()
    try:
        code = tessera_main(["--target", daemon.target, "admin", "verify"])
    finally:
        daemon.stop()
    captured = capsys.readouterr()
    said = " ".join(captured.out.split())
    assert code == EXIT_FAILED
    assert said.count("is damaged on disk") == 1
    assert "1 more problem found is not named here" in said
    assert "`tesserad verify --data-dir DIR`" in said
    assert "2 problems" in " ".join(captured.err.split())


def test_one_online_check_runs_at_a_time(filled: Filled, copy: Path) -> None:
    with HeldInThread(StoreCheck._hash, "self.bytes_checked += len(chunk)") as held:
        daemon = InProcessDaemon(daemon_settings(copy)).start()
        try:
            stub = system_pb2_grpc.SystemStub(daemon.channel())
            first = stub.VerifyStore.future(system_pb2.VerifyStoreRequest(), timeout=120)
            assert held.reached.wait(60)
            with pytest.raises(grpc.RpcError) as refused:
                stub.VerifyStore(system_pb2.VerifyStoreRequest(), timeout=120)
            held.let_go.set()
            assert list(first.result().problems) == []
            again = stub.VerifyStore(system_pb2.VerifyStoreRequest(), timeout=120)
        finally:
            daemon.stop()
    assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "a store check is already running" in (refused.value.details() or "")
    assert list(again.problems) == []
