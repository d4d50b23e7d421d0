"""Backup of a running daemon (`tessera admin backup`) and restore (`tesserad restore`):
everything comes back on a second daemon, a damaged archive is refused leaving nothing, only an
admin may take one, and a client gone mid-stream leaves nothing on the server."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import hashlib
import io
import itertools
import json
import logging
import os
import pty
import pwd
import re
import signal
import socket
import stat
import subprocess
import sys
import tarfile
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest

import tessera
import tessera.aio
import tessera.system as system_module
import tesserad.backup.restore as restore_module
import tesserad.backup.snapshot as snapshot_module
from tessera.backup import (
    BLOB_PREFIX,
    HEADER_MAX_BYTES,
    MANIFEST_MAX_BYTES,
    MANIFEST_NAME,
    STORE_NAME,
    SavedBackup,
    read_archive,
)
from tessera.cli import EXIT_USAGE
from tessera.cli import main as tessera_main
from tessera.progress_line import ProgressLine, byte_size
from tessera.v1 import registry_pb2, registry_pb2_grpc, system_pb2, system_pb2_grpc
from tesserad.cli import EXIT_RESTORED_BUT_FAILED
from tesserad.cli import main as tesserad_main
from tesserad.security import Role, hash_token, new_token
from tesserad.security.tokens import format_entry
from tesserad.server import StartupError
from tesserad.store import DataDirLock
from tests.conftest import InProcessDaemon, daemon_settings
from tests.fsyncs import recorded_fsyncs
from tests.integration.registry.conftest import onnx_identity
from tests.tmpfs import tmpfs


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@dataclass
class Source:
    """A daemon holding a model version, a dataset, a run with metrics and a cancelled job,
    backed up once while it runs; the hashes and ids of what it holds."""

    daemon: InProcessDaemon
    archive: Path
    model_sha256: str
    dataset_sha256: str
    run_id: str
    job_id: str


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Source]:
    tmp = tmp_path_factory.mktemp("source")
    daemon = InProcessDaemon(daemon_settings(tmp / "data")).start()
    try:
        model_file, data_file = _push_model(daemon, tmp), tmp / "d.npz"
        x = np.arange(96, dtype=np.float32).reshape(16, 6)
        np.savez(data_file, x=x, y=(x[:, 0] > 40).astype(np.int64))
        with tessera.Client(daemon.target) as client:
            client.datasets.push("flat", data_file, splits={"train": 0.75, "val": 0.25})
            run = client.training.create_run(
                "exp", name="by-hand", params={"lr": 0.1}, create_experiment=True
            )
            client.training.log_metrics(run.run_id, {"loss": 0.5}, step=1)
            client.training.log_metrics(run.run_id, {"loss": 0.25}, step=2)
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
            job.cancel()
            job.wait(timeout=60, check=False)
        archive = tmp / "backup.tar"
        code = tessera_main(["--target", daemon.target, "--json", "admin", "backup", "-o", str(archive)])
        assert code == 0
        yield Source(daemon, archive, _sha256(model_file), _sha256(data_file), run.run_id, job.id)
    finally:
        daemon.stop()


def _push_model(daemon: InProcessDaemon, directory: Path) -> Path:
    """Version 1 of model clf, aliased production; its file."""
    path = directory / "m.onnx"
    path.write_bytes(onnx_identity())
    with tessera.Client(daemon.target) as client:
        client.models.push("clf", path, set_alias="production")
    return path


def _restore(archive: Path, data_dir: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = tesserad_main(["restore", str(archive), "--data-dir", str(data_dir)])
    return code, capsys.readouterr().err


def test_a_backup_restores_onto_a_second_daemon_with_everything(
    source: Source, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert not list(source.archive.parent.glob("*.partial"))
    # The daemon keeps nothing of the backup: no temp copy.
    assert list((source.daemon.settings.data_dir / "blobs" / "tmp").iterdir()) == []

    restored = tmp_path / "restored"
    code, err = _restore(source.archive, restored, capsys)
    assert (code, err) == (0, "")
    second = InProcessDaemon(daemon_settings(restored)).start()
    try:
        with tessera.Client(second.target) as client:
            version = client.models.version("clf", "production")
            client.models.download("clf", tmp_path / "back.onnx", version="production")
            assert _sha256(tmp_path / "back.onnx") == source.model_sha256 == version.sha256
            client.datasets.download("flat", tmp_path / "back.npz")
            assert _sha256(tmp_path / "back.npz") == source.dataset_sha256
            assert [s.name for s in client.datasets.version("flat").splits] == ["train", "val"]
            history = client.training.metric_history(source.run_id, "loss")
            assert [(p.step, p.value) for p in history.points] == [(1, 0.5), (2, 0.25)]
            assert client.training.job(source.job_id).state == tessera.JobState.CANCELLED
    finally:
        second.stop()


def _store_incarnation(daemon: InProcessDaemon) -> str:
    """The incarnation of the daemon's store, as its change feed's answers carry it."""
    stream = registry_pb2_grpc.RegistryStub(daemon.channel()).WatchChanges(
        registry_pb2.WatchChangesRequest(from_seq=0), timeout=60
    )
    incarnation = next(iter(stream)).store_incarnation
    stream.cancel()
    return incarnation


def test_a_restored_store_is_another_incarnation_than_the_one_backed_up(
    source: Source, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A restored registry is another history than the one that goes on being changed after the
    backup: replicas tell the two apart by the incarnation, which a restart keeps."""
    backed_up = _store_incarnation(source.daemon)
    restored = tmp_path / "restored"
    assert _restore(source.archive, restored, capsys) == (0, "")
    incarnations = []
    for _start in range(2):
        daemon = InProcessDaemon(daemon_settings(restored)).start()
        try:
            incarnations.append(_store_incarnation(daemon))
        finally:
            daemon.stop()
    assert backed_up and incarnations[0]
    assert incarnations[0] != backed_up
    assert incarnations[1] == incarnations[0]


def _rewritten(archive: Path, target: Path, change) -> Path:
    """A copy of `archive` with each member's bytes passed through change(name, data)."""
    with tarfile.open(archive) as source, tarfile.open(target, "w") as out:
        for member in source.getmembers():
            data = change(member.name, source.extractfile(member).read())
            member.size = len(data)
            out.addfile(member, io.BytesIO(data))
    return target


def _flip_first_blob_byte(name: str, data: bytes) -> bytes:
    return bytes([data[0] ^ 1]) + data[1:] if name.startswith(BLOB_PREFIX) else data


def _manifest_changed(change):
    """A `_rewritten` change that edits the manifest's document with change(document)."""

    def changed(name: str, data: bytes) -> bytes:
        return json.dumps(change(json.loads(data))).encode() if name == MANIFEST_NAME else data

    return changed


def _relinked(archive: Path, target: Path) -> Path:
    """A copy of `archive` whose last blob is a hard link to the store copy, under its name."""
    with tarfile.open(archive) as source, tarfile.open(target, "w") as out:
        members = source.getmembers()
        for member in members[:-1]:
            out.addfile(member, source.extractfile(member))
        link = tarfile.TarInfo(members[-1].name)
        link.type, link.linkname = tarfile.LNKTYPE, STORE_NAME
        out.addfile(link)
    return target


def _with_member(archive: Path, target: Path, member: tarfile.TarInfo) -> Path:
    """A copy of `archive` with `member` (no data) in place of its last blob."""
    with tarfile.open(archive) as source, tarfile.open(target, "w") as out:
        for kept in source.getmembers()[:-1]:
            out.addfile(kept, source.extractfile(kept))
        out.addfile(member)
    return target


def _member(name: str, kind: bytes, linkname: str = "") -> tarfile.TarInfo:
    member = tarfile.TarInfo(name)
    member.type, member.linkname = kind, linkname
    return member


def _claiming(target: Path, header: tarfile.TarInfo, claimed: int) -> Path:
    """An archive that is `header`, claiming `claimed` bytes, then a block of them: a reader
    that believes the claim reads until the archive ends, as a compressed one of gigabytes
    takes kilobytes."""
    header.size = claimed
    target.write_bytes(header.tobuf(tarfile.GNU_FORMAT) + b"{" * tarfile.BLOCKSIZE)
    return target


def _with_global_header(archive: Path, target: Path) -> Path:
    with (
        tarfile.open(archive) as source,
        tarfile.open(target, "w", format=tarfile.PAX_FORMAT, pax_headers={"comment": "x" * 100}) as out,
    ):
        for member in source.getmembers():
            out.addfile(member, source.extractfile(member))
    return target


def _next_format(name: str, data: bytes) -> bytes:
    if name != MANIFEST_NAME:
        return data
    return json.dumps({**json.loads(data), "format_version": 2}).encode()


@pytest.mark.parametrize(
    ("damage", "says"),
    [
        ("truncated", "truncated"),
        ("cut at a member", "truncated"),
        ("tampered blob", "was altered or damaged"),
        ("format version 2", "format version 2"),
        ("not tar", "not a whole tar file"),
        ("blob as a link", "is a link or special file, not a file"),
        ("table of a newer tesserad", "does not know (extra); restore it with tesserad"),
        ("counts as strings", "is malformed"),
        ("size as a boolean", "is malformed"),
        ("manifest over the cap", f"manifest.json is {MANIFEST_MAX_BYTES + 1} bytes, over the 64 MiB"),
        ("pax header over the cap", "extended tar header of 1048577 bytes, over the 1 MiB"),
        ("long name over the cap", "extended tar header of 1048577 bytes, over the 1 MiB"),
        ("global pax header", "it holds a global pax header, which no backup holds"),
        ("sparse member", "it holds a sparse file, which no backup holds"),
        ("blob as a symlink", "is a link or special file, not a file"),
        ("blob as a device", "is a link or special file, not a file"),
        ("a path out of the directory", "it holds '../escape', which its manifest does not name"),
        ("an absolute path", "it holds '/tmp/escape', which its manifest does not name"),
        ("blob longer than its manifest says", "bytes, and its manifest says"),
    ],
)
def test_a_damaged_archive_is_refused_and_nothing_is_written(
    source: Source, tmp_path: Path, capsys: pytest.CaptureFixture[str], damage: str, says: str
) -> None:
    archive, bad = source.archive, tmp_path / "bad.tar"
    data = archive.read_bytes()
    if damage == "truncated":
        bad.write_bytes(data[: len(data) // 2])
    elif damage == "cut at a member":
        with tarfile.open(archive) as tar:
            last = tar.getmembers()[-1]
        bad.write_bytes(data[: last.offset])
    elif damage == "tampered blob":
        _rewritten(archive, bad, _flip_first_blob_byte)
    elif damage == "format version 2":
        _rewritten(archive, bad, _next_format)
    elif damage == "blob as a link":
        _relinked(archive, bad)
    elif damage == "table of a newer tesserad":
        _rewritten(archive, bad, _manifest_changed(lambda d: {**d, "records": {**d["records"], "extra": 0}}))
    elif damage == "counts as strings":
        records = _manifest_changed(lambda d: {**d, "records": {k: str(v) for k, v in d["records"].items()}})
        _rewritten(archive, bad, records)
    elif damage == "size as a boolean":
        _rewritten(
            archive, bad, _manifest_changed(lambda d: {**d, "blobs": [{**d["blobs"][0], "size": True}]})
        )
    elif damage == "manifest over the cap":
        _claiming(bad, tarfile.TarInfo(MANIFEST_NAME), MANIFEST_MAX_BYTES + 1)
    elif damage == "pax header over the cap":
        _claiming(bad, _member("././@PaxHeader", tarfile.XHDTYPE), HEADER_MAX_BYTES + 1)
    elif damage == "long name over the cap":
        _claiming(bad, _member("././@LongLink", tarfile.GNUTYPE_LONGNAME), HEADER_MAX_BYTES + 1)
    elif damage == "global pax header":
        _with_global_header(archive, bad)
    elif damage == "sparse member":
        _with_member(archive, bad, _member(BLOB_PREFIX + "0" * 64, tarfile.GNUTYPE_SPARSE))
    elif damage == "blob as a symlink":
        with tarfile.open(archive) as tar:
            last = tar.getmembers()[-1].name
        _with_member(archive, bad, _member(last, tarfile.SYMTYPE, STORE_NAME))
    elif damage == "blob as a device":
        with tarfile.open(archive) as tar:
            last = tar.getmembers()[-1].name
        _with_member(archive, bad, _member(last, tarfile.CHRTYPE))
    elif damage == "a path out of the directory":
        _with_member(archive, bad, tarfile.TarInfo("../escape"))
    elif damage == "an absolute path":
        _with_member(archive, bad, tarfile.TarInfo("/tmp/escape"))
    elif damage == "blob longer than its manifest says":
        _rewritten(archive, bad, lambda name, data: data + b"!" if name.startswith(BLOB_PREFIX) else data)
    else:
        bad.write_bytes(b"not a tar file at all" * 100)
    target = tmp_path / "target"
    before = sorted(p.name for p in tmp_path.iterdir())
    code, err = _restore(bad, target, capsys)
    assert code == 1
    assert says in err and "nothing was written" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # no target, no staging left


@pytest.mark.parametrize("suffix", ["gz", "bz2", "xz"])
def test_a_compressed_backup_restores(
    source: Source, tmp_path: Path, capsys: pytest.CaptureFixture[str], suffix: str
) -> None:
    # Operators compress archives they keep; `tar` reads them as they are, so restore does too.
    compressed = tmp_path / f"backup.tar.{suffix}"
    with tarfile.open(source.archive) as plain, tarfile.open(compressed, f"w:{suffix}") as out:
        for member in plain.getmembers():
            out.addfile(member, plain.extractfile(member))
    code, err = _restore(compressed, tmp_path / "restored", capsys)
    assert (code, err) == (0, "")
    # The lock file carries the store's token for the first start (test_store_schema.py).
    assert sorted(p.name for p in (tmp_path / "restored").iterdir()) == ["blobs", "store", "tesserad.lock"]


def test_a_backup_restores_from_stdin(source: Source, tmp_path: Path) -> None:
    """`-` reads the archive from stdin, as `admin backup -o -` writes it to stdout: a pipe
    (`ssh host cat b.tar | tesserad restore - ...`), not a file named "-"."""
    restored = tmp_path / "restored"
    with source.archive.open("rb") as stdin:
        result = subprocess.run(
            [sys.executable, "-m", "tesserad", "restore", "-", "--data-dir", str(restored)],
            stdin=stdin,
            capture_output=True,
            text=True,
            cwd=tmp_path,
            timeout=120,
            check=False,
        )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"restored standard input into {restored}: ")
    assert sorted(p.name for p in restored.iterdir()) == ["blobs", "store", "tesserad.lock"]


def test_a_truncated_backup_on_stdin_is_refused_naming_standard_input(
    source: Source, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    truncated = source.archive.read_bytes()[: source.archive.stat().st_size // 2]
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(truncated)))
    code = tesserad_main(["restore", "-", "--data-dir", str(tmp_path / "restored")])
    err = capsys.readouterr().err
    assert code == 1
    assert err.startswith("tesserad restore: standard input cannot be restored: "), err
    assert err.endswith("; nothing was written\n")
    assert list(tmp_path.iterdir()) == []


def test_a_restore_from_stdin_on_a_terminal_is_a_usage_error(tmp_path: Path) -> None:
    terminal, stdin = pty.openpty()
    try:
        result = subprocess.run(
            [sys.executable, "-m", "tesserad", "restore", "-", "--data-dir", str(tmp_path / "restored")],
            stdin=stdin,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
    finally:
        os.close(stdin)
        os.close(terminal)
    assert result.returncode == 2
    assert result.stderr.endswith(
        "error: restore - reads the archive from stdin: redirect it (< FILE, CMD |)\n"
    ), result.stderr
    assert list(tmp_path.iterdir()) == []


def test_a_backup_to_a_missing_directory_names_it(
    source: Source, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    target = tmp_path / "nodir" / "b.tar"
    code = tessera_main(["--target", source.daemon.target, "admin", "backup", "-o", str(target)])
    err = capsys.readouterr().err
    assert code == 1
    assert f"no directory {target.parent} to write it in" in err and ".partial" not in err, err


@pytest.mark.parametrize("output", ["existing", "fresh/"])
def test_a_backup_to_a_directory_is_a_usage_error(
    source: Source, tmp_path: Path, capsys: pytest.CaptureFixture[str], output: str
) -> None:
    (tmp_path / "existing").mkdir()
    target = f"{tmp_path}/{output}"
    code = tessera_main(["--target", source.daemon.target, "admin", "backup", "-o", target])
    assert code == 2 and "is a directory; name the file to write" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["existing"]


def test_restore_refuses_a_data_dir_that_is_not_empty_or_in_use_and_takes_an_empty_one(
    source: Source, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    occupied = tmp_path / "occupied"
    occupied.mkdir()
    (occupied / "notes.txt").write_text("mine")
    code, err = _restore(source.archive, occupied, capsys)
    assert code == 1 and "is not empty" in err
    assert [p.name for p in occupied.iterdir()] == ["notes.txt"]

    code, err = _restore(source.archive, source.daemon.settings.data_dir, capsys)
    assert code == 1 and "in use by another tesserad" in err

    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "tesserad.lock").write_text("")  # left by a daemon that has stopped
    code, _ = _restore(source.archive, empty, capsys)
    assert code == 0
    assert sorted(p.name for p in empty.iterdir()) == ["blobs", "store", "tesserad.lock"]


@pytest.mark.parametrize(("umask", "mode"), [(0o022, 0o700), (0o027, 0o700)])
def test_a_restored_data_dir_has_the_mode_serve_gives_a_new_one(
    source: Source, tmp_path: Path, capsys: pytest.CaptureFixture[str], umask: int, mode: int
) -> None:
    # serve makes its data directory 0700 less the umask; a restored one is the renamed mkdtemp
    # staging directory, 0700 whatever the umask.
    previous = os.umask(umask)
    try:
        code, err = _restore(source.archive, tmp_path / "restored", capsys)
    finally:
        os.umask(previous)
    assert (code, err) == (0, "")
    assert stat.S_IMODE((tmp_path / "restored").stat().st_mode) == mode


def test_restore_takes_a_new_disks_mount_point_holding_only_lost_and_found(
    source: Source, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # mkfs.ext4 leaves lost+found at the root of a new disk, which then read as "not empty".
    mount_point = tmp_path / "mnt"
    (mount_point / "lost+found").mkdir(parents=True)
    (mount_point / "lost+found" / "#12").write_text("recovered")
    code, err = _restore(source.archive, mount_point, capsys)
    assert (code, err) == (0, "")
    assert sorted(p.name for p in mount_point.iterdir()) == ["blobs", "lost+found", "store", "tesserad.lock"]
    assert (mount_point / "lost+found" / "#12").read_text() == "recovered"

    # Anything else beside it is still someone's data.
    occupied = tmp_path / "occupied"
    (occupied / "lost+found").mkdir(parents=True)
    (occupied / "notes.txt").write_text("mine")
    code, err = _restore(source.archive, occupied, capsys)
    assert code == 1 and f"{occupied} is not empty (it holds notes.txt)" in err
    assert sorted(p.name for p in occupied.iterdir()) == ["lost+found", "notes.txt"]


def test_a_restore_as_root_gives_the_data_directory_to_the_owner_named(
    source: Source, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`--owner`: what `tesserad serve` running as that user writes (the directory, its lock file
    and store) is that user's, into a new directory or a new disk's mount point alike."""
    if os.geteuid() != 0:
        pytest.skip("needs root, to give files to another user")
    nobody = pwd.getpwuid(65534)
    mount_point = tmp_path / "mnt"
    mount_point.mkdir()
    for data_dir in (tmp_path / "restored", mount_point):
        code = tesserad_main(
            ["restore", str(source.archive), "--data-dir", str(data_dir), "--owner", nobody.pw_name]
        )
        assert (code, capsys.readouterr().err) == (0, "")
        owners = {(p.stat().st_uid, p.stat().st_gid) for p in [data_dir, *data_dir.rglob("*")]}
        assert owners == {(65534, nobody.pw_gid)}
        assert (data_dir / "tesserad.lock").exists() and (data_dir / "store" / "data.mdb").exists()


def test_a_restore_as_root_takes_a_uid_without_an_entry_here_and_a_group(
    source: Source, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """As a container runs the daemon (runAsUser 43210, in no passwd file): the uid's own number
    as its group, unless one is named."""
    if os.geteuid() != 0:
        pytest.skip("needs root, to give files to another user")
    uid = next(n for n in range(43210, 43310) if not _has_entry(n))
    for owner, expected in ((str(uid), (uid, uid)), (f"{uid}:65534", (uid, 65534))):
        data_dir = tmp_path / owner.replace(":", "-")
        code = tesserad_main(["restore", str(source.archive), "--data-dir", str(data_dir), "--owner", owner])
        assert (code, capsys.readouterr().err) == (0, "")
        assert {(p.stat().st_uid, p.stat().st_gid) for p in [data_dir, *data_dir.rglob("*")]} == {expected}


def _has_entry(uid: int) -> bool:
    try:
        pwd.getpwuid(uid)
    except KeyError:
        return False
    return True


def test_a_restore_to_an_owner_this_system_lacks_is_a_usage_error(
    source: Source, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        tesserad_main(
            ["restore", str(source.archive), "--data-dir", str(tmp_path / "r"), "--owner", "no-such-user"]
        )
    assert exited.value.code == 2
    assert "--owner no-such-user: no such user here" in capsys.readouterr().err
    owner = f"{os.geteuid()}:no-such-group"
    with pytest.raises(SystemExit) as exited:
        tesserad_main(["restore", str(source.archive), "--data-dir", str(tmp_path / "r"), "--owner", owner])
    assert exited.value.code == 2
    assert f"--owner {owner}: no such group here" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_only_an_admin_may_take_a_backup_and_its_chunks_fit_the_send_limit(
    data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    token = {role: new_token() for role in Role}
    tokens_file = tmp_path / "tokens.toml"
    tokens_file.write_text("".join(format_entry(r.label, r, hash_token(t)) for r, t in token.items()))
    # Under the default chunk size (limits.chunk_size, 1 MiB) and the store copy's size.
    settings = daemon_settings(
        data_dir, **{"security.tokens_file": str(tokens_file), "max_message_size": "16KiB"}
    )
    daemon = InProcessDaemon(settings).start()
    try:
        out = tmp_path / "b.tar"
        args = ["--target", daemon.target, "admin", "backup", "-o", str(out)]
        assert tessera_main(["--token", token[Role.TRAINER], *args]) == 3
        err = capsys.readouterr().err
        assert err.startswith("tessera: PERMISSION_DENIED:") and "admin role" in err
        assert list(tmp_path.glob("b.tar*")) == []
        assert tessera_main(["--token", token[Role.ADMIN], *args]) == 0, capsys.readouterr().err
        with tarfile.open(out) as tar:
            assert tar.getnames()[:2] == [MANIFEST_NAME, STORE_NAME]
    finally:
        daemon.stop()


def _blob_file(daemon: InProcessDaemon, sha256: str) -> Path:
    return daemon.settings.data_dir / "blobs" / "sha256" / sha256[:2] / sha256[2:]


def test_a_client_gone_mid_stream_leaves_nothing_on_the_server(
    daemon: InProcessDaemon, tmp_path: Path
) -> None:
    model = _push_model(daemon, tmp_path)
    with tessera.Client(daemon.target) as client:
        np.save(tmp_path / "big.npy", np.zeros((1 << 20,), np.float32))  # 4 MiB
        client.datasets.push("big", tmp_path / "big.npy")
    # Without BDP probing the flow-control window stays at 64 KiB: a client that reads one
    # chunk holds the daemon mid-stream.
    channel = grpc.insecure_channel(daemon.target, options=[("grpc.http2.bdp_probe", 0)])
    tmp = daemon.settings.data_dir / "blobs" / "tmp"
    try:
        call = system_pb2_grpc.SystemStub(channel).Backup(system_pb2.BackupRequest(chunk_size=4096))
        assert len(next(call).data) == 4096
        assert [p.name.startswith("backup-") for p in tmp.iterdir()] == [True]  # the store copy
        call.cancel()
    finally:
        channel.close()
    with tessera.Client(daemon.target) as client:
        client.models.delete_alias("clf", "production")
        client.models.delete_version("clf", 1)
    tmp = daemon.settings.data_dir / "blobs" / "tmp"
    blob = _blob_file(daemon, _sha256(model))
    # The pin ended with the call: the deleted version's blob goes, and the store copy too.
    _wait_for(lambda: not blob.exists() and not list(tmp.iterdir()), daemon)


def test_a_daemon_stopping_mid_backup_ends_it_and_leaves_nothing(data_dir: Path, tmp_path: Path) -> None:
    daemon = InProcessDaemon(daemon_settings(data_dir)).start()
    with tessera.Client(daemon.target) as client:
        np.save(tmp_path / "big.npy", np.zeros((1 << 20,), np.float32))
        client.datasets.push("big", tmp_path / "big.npy")
    channel = grpc.insecure_channel(daemon.target, options=[("grpc.http2.bdp_probe", 0)])
    try:
        call = system_pb2_grpc.SystemStub(channel).Backup(system_pb2.BackupRequest(chunk_size=4096))
        next(call)
        daemon.stop(grace=0)
        with pytest.raises(grpc.RpcError) as ended:
            for _ in call:
                pass
        assert ended.value.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED)
    finally:
        channel.close()
    assert list((data_dir / "blobs" / "tmp").iterdir()) == []


def _wait_for(condition, daemon: InProcessDaemon) -> None:
    for _ in range(500):
        if condition():
            return
        daemon.run(asyncio.sleep(0.01))
    assert condition()


def _push_big_dataset(daemon: InProcessDaemon, tmp_path: Path) -> None:
    with tessera.Client(daemon.target) as client:
        np.save(tmp_path / "big.npy", np.zeros((1 << 20,), np.float32))  # 4 MiB
        client.datasets.push("big", tmp_path / "big.npy")


@dataclass
class HeldBackup:
    """A Backup call, its first chunk read."""

    call: Any
    first: system_pb2.BackupChunk

    def chunks(self) -> Iterator[system_pb2.BackupChunk]:
        return itertools.chain([self.first], self.call)


@contextlib.contextmanager
def _held_backup(daemon: InProcessDaemon) -> Iterator[HeldBackup]:
    """A backup the daemon is making, held mid-stream once its store copy is made (the daemon
    holds a 4 MiB dataset): without BDP probing the flow-control window stays at 64 KiB, so a
    client that has read one chunk of 4 KiB holds the daemon."""
    channel = grpc.insecure_channel(daemon.target, options=[("grpc.http2.bdp_probe", 0)])
    try:
        call = system_pb2_grpc.SystemStub(channel).Backup(system_pb2.BackupRequest(chunk_size=4096))
        first = next(call)
        assert len(first.data) == 4096
        yield HeldBackup(call, first)
    finally:
        channel.close()


def _saved(held: HeldBackup, path: Path) -> Path:
    """The held backup read to its end into `path`, checked as a whole archive."""
    path.write_bytes(b"".join(chunk.data for chunk in held.chunks()))
    read_archive(path)
    return path


@pytest.fixture
def backup_steps(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, int]]:
    """What the daemon's backups do, in order: ("copy", n) as the nth one begins copying the
    store, ("closed", n) once its close has ended (its copy removed, its blobs released)."""
    steps: list[tuple[str, int]] = []
    made: list[snapshot_module.Backup] = []
    prepare, close = snapshot_module.Backup.prepare, snapshot_module.Backup.close

    def number(backup: snapshot_module.Backup) -> int:
        if not any(b is backup for b in made):
            made.append(backup)
        return next(n for n, b in enumerate(made, 1) if b is backup)

    def recorded_prepare(backup: snapshot_module.Backup, chunk_size: int) -> object:
        steps.append(("copy", number(backup)))
        return prepare(backup, chunk_size)

    def recorded_close(backup: snapshot_module.Backup, error: object = None) -> None:
        was_open = not backup.closed
        close(backup, error)
        if was_open:
            steps.append(("closed", number(backup)))

    monkeypatch.setattr(snapshot_module.Backup, "prepare", recorded_prepare)
    monkeypatch.setattr(snapshot_module.Backup, "close", recorded_close)
    return steps


def test_a_second_backup_waits_for_the_first_to_end_saying_so_and_both_are_whole(
    daemon: InProcessDaemon,
    tmp_path: Path,
    backup_steps: list[tuple[str, int]],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Backups are made one at a time: each holds a copy of the store and pins its blobs."""
    _push_big_dataset(daemon, tmp_path)
    tmp = daemon.settings.data_dir / "blobs" / "tmp"
    told_waiting = threading.Event()
    note = ProgressLine.note

    def recorded_note(line: ProgressLine, text: str) -> None:
        note(line, text)
        if "waiting" in text:
            told_waiting.set()

    monkeypatch.setattr(ProgressLine, "note", recorded_note)
    copies_while_waiting: list[list[str]] = []
    with _held_backup(daemon) as first:

        def end_first_once_the_second_waits() -> None:
            assert told_waiting.wait(60)
            copies_while_waiting.append(sorted(p.name[:7] for p in tmp.iterdir()))
            _saved(first, tmp_path / "first.tar")

        ender = threading.Thread(target=end_first_once_the_second_waits)
        ender.start()
        # The CLI on this thread: it sets its signal handlers.
        code = tessera_main(_backup_cli(daemon, "-o", str(tmp_path / "second.tar"), "--progress"))
        ender.join(60)
    err = capsys.readouterr().err
    assert code == 0, err
    # The second made no copy while it waited: the one there was the first's.
    assert copies_while_waiting == [["backup-"]]
    assert backup_steps == [("copy", 1), ("closed", 1), ("copy", 2), ("closed", 2)]
    read_archive(tmp_path / "first.tar")
    read_archive(tmp_path / "second.tar")
    assert _drawn(err)[:3] == [
        "backup: the daemon is copying its store",
        "backup: waiting for another backup to end (the daemon makes one at a time)",
        "backup: the daemon is copying its store",
    ]
    assert list(tmp.iterdir()) == []


def test_the_sdk_tells_a_backup_that_waits_and_when_its_turn_came(
    daemon: InProcessDaemon, tmp_path: Path
) -> None:
    _push_big_dataset(daemon, tmp_path)
    told: list[bool] = []
    told_waiting = threading.Event()

    def waiting(waits: bool) -> None:
        told.append(waits)
        told_waiting.set()

    with _held_backup(daemon) as first:

        def end_first_once_the_second_waits() -> None:
            assert told_waiting.wait(60)
            _saved(first, tmp_path / "first.tar")

        ender = threading.Thread(target=end_first_once_the_second_waits)
        ender.start()
        with tessera.Client(daemon.target) as client:
            saved = client.system.backup(tmp_path / "second.tar", waiting=waiting)
        ender.join(60)
    assert told == [True, False]
    assert saved.archive_size == (tmp_path / "second.tar").stat().st_size
    with tessera.Client(daemon.target) as client:
        client.system.backup(tmp_path / "third.tar", waiting=told.append)
    assert told == [True, False]  # no other backup was being made


def _waiting_backup(channel: grpc.Channel, timeout: float | None = None) -> Iterator[system_pb2.BackupChunk]:
    """A Backup call that has been told it waits for another."""
    call = system_pb2_grpc.SystemStub(channel).Backup(system_pb2.BackupRequest(), timeout=timeout)
    told = next(call)
    assert (told.waiting, told.data, told.archive_size) == (True, b"", 0)
    return call


def _counted_ends(monkeypatch: pytest.MonkeyPatch) -> threading.Semaphore:
    """Released as each Backup call's turn has ended: its backup closed, or its place in line left."""
    ended = threading.Semaphore(0)
    end = snapshot_module.BackupTurn.end

    async def recorded_end(turn: snapshot_module.BackupTurn) -> None:
        try:
            await end(turn)
        finally:
            ended.release()

    monkeypatch.setattr(snapshot_module.BackupTurn, "end", recorded_end)
    return ended


def test_a_waiting_backup_cancelled_or_past_its_deadline_leaves_nothing_behind(
    daemon: InProcessDaemon,
    tmp_path: Path,
    backup_steps: list[tuple[str, int]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _push_big_dataset(daemon, tmp_path)
    ended = _counted_ends(monkeypatch)
    channel = daemon.channel()
    with _held_backup(daemon) as first:
        cancelled = _waiting_backup(channel)
        cancelled.cancel()
        past_deadline = _waiting_backup(channel, timeout=3)
        with pytest.raises(grpc.RpcError) as failed:
            next(past_deadline)
        assert failed.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert ended.acquire(timeout=60) and ended.acquire(timeout=60)
        _saved(first, tmp_path / "first.tar")
    # Neither copied the store: the only backup made was the first.
    assert backup_steps == [("copy", 1), ("closed", 1)]
    assert list((daemon.settings.data_dir / "blobs" / "tmp").iterdir()) == []
    with tessera.Client(daemon.target) as client:
        client.system.backup(tmp_path / "next.tar")


def test_a_backup_right_after_a_cancelled_one_waits_for_its_close_and_succeeds(
    daemon: InProcessDaemon, tmp_path: Path, backup_steps: list[tuple[str, int]]
) -> None:
    """As after Ctrl-C on `tessera admin backup` and running it again at once: the daemon closes
    the cancelled one after the client has gone."""
    _push_big_dataset(daemon, tmp_path)
    with _held_backup(daemon) as first:
        first.call.cancel()
    assert tessera_main(_backup_cli(daemon, "-o", str(tmp_path / "again.tar"))) == 0
    assert backup_steps == [("copy", 1), ("closed", 1), ("copy", 2), ("closed", 2)]
    read_archive(tmp_path / "again.tar")


def test_backups_past_the_few_that_may_wait_are_refused_naming_the_limit(
    daemon: InProcessDaemon,
    tmp_path: Path,
    backup_steps: list[tuple[str, int]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _push_big_dataset(daemon, tmp_path)
    ended = _counted_ends(monkeypatch)
    channel = daemon.channel()
    with _held_backup(daemon) as first:
        waiting = [_waiting_backup(channel) for _ in range(snapshot_module.MAX_WAITING_BACKUPS)]
        with pytest.raises(grpc.RpcError) as refused:
            next(system_pb2_grpc.SystemStub(channel).Backup(system_pb2.BackupRequest()))
        assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert refused.value.details() == (
            f"{snapshot_module.MAX_WAITING_BACKUPS} backups already wait for the one being made, "
            f"the most that may (the daemon makes one at a time); retry once they have ended"
        )
        # A place left is taken again.
        waiting.pop().cancel()
        assert ended.acquire(timeout=60)
        waiting.append(_waiting_backup(channel))
        _saved(first, tmp_path / "first.tar")
        for n, call in enumerate(waiting):
            (tmp_path / f"{n}.tar").write_bytes(b"".join(chunk.data for chunk in call))
            read_archive(tmp_path / f"{n}.tar")
    made = len(waiting) + 1
    assert backup_steps == [step for n in range(1, made + 1) for step in (("copy", n), ("closed", n))]


def test_a_daemon_stopping_ends_the_backups_waiting_too(data_dir: Path, tmp_path: Path) -> None:
    daemon = InProcessDaemon(daemon_settings(data_dir)).start()
    _push_big_dataset(daemon, tmp_path)
    channel = grpc.insecure_channel(daemon.target)
    try:
        with _held_backup(daemon) as first:
            waiting = _waiting_backup(channel)
            daemon.stop(grace=0)
            for call in (first.call, waiting):
                with pytest.raises(grpc.RpcError) as ended:
                    for _ in call:
                        pass
                assert ended.value.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED)
    finally:
        channel.close()
    assert list((data_dir / "blobs" / "tmp").iterdir()) == []


def test_restore_refuses_an_archive_claiming_an_oversized_manifest_before_reading_it(tmp_path: Path) -> None:
    # The command as an operator runs it: its status, its message, and the target untouched.
    bad = _claiming(tmp_path / "bad.tar", tarfile.TarInfo(MANIFEST_NAME), 8 << 30)
    target = tmp_path / "target"
    target.mkdir()
    result = subprocess.run(
        [sys.executable, "-m", "tesserad", "restore", str(bad), "--data-dir", str(target)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 1
    assert f"manifest.json is {8 << 30} bytes, over the 64 MiB a manifest may be" in result.stderr
    assert "nothing was written" in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.tar", "target"]
    assert list(target.iterdir()) == []


def _backup_cli(daemon: InProcessDaemon, *args: str) -> list[str]:
    return ["--target", daemon.target, "admin", "backup", *args]


def test_a_backup_over_an_existing_file_is_refused_unless_forced(
    source: Source, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    existing = tmp_path / "b.tar"
    existing.write_bytes(b"last week's backup")
    code = tessera_main(_backup_cli(source.daemon, "-o", str(existing)))
    err = capsys.readouterr().err
    assert code == EXIT_USAGE
    assert f"--output {existing} exists; pass --force to replace it" in err
    assert existing.read_bytes() == b"last week's backup"
    assert [p.name for p in tmp_path.iterdir()] == ["b.tar"]  # no partial file either

    (tmp_path / "link").symlink_to(tmp_path / "nowhere")
    assert tessera_main(_backup_cli(source.daemon, "-o", str(tmp_path / "link"))) == EXIT_USAGE
    with tessera.Client(source.daemon.target) as client, pytest.raises(FileExistsError):
        client.system.backup(existing)

    assert tessera_main(_backup_cli(source.daemon, "-o", str(existing), "--force")) == 0
    assert read_archive(existing).records == read_archive(source.archive).records
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b.tar", "link"]


def _damage_a_blob(daemon: InProcessDaemon, tmp_path: Path) -> None:
    """A model version whose blob on the daemon's disk no longer matches its sha256."""
    blob = _blob_file(daemon, _sha256(_push_model(daemon, tmp_path)))
    blob.chmod(0o644)
    data = blob.read_bytes()
    blob.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))


def test_a_backup_failing_mid_stream_leaves_no_file(
    daemon: InProcessDaemon, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _damage_a_blob(daemon, tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    code = tessera_main(_backup_cli(daemon, "-o", str(out / "b.tar")))
    err = capsys.readouterr().err
    assert code == 3 and err.startswith("tessera: DATA_LOSS:"), err
    assert list(out.iterdir()) == []


def test_a_backup_of_a_damaged_blob_is_logged_under_the_error_id_its_answer_names(
    daemon: InProcessDaemon, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    _damage_a_blob(daemon, tmp_path)
    with (
        caplog.at_level(logging.ERROR),
        tessera.Client(daemon.target) as client,
        pytest.raises(tessera.DataLoss) as err,
    ):
        client.system.backup(tmp_path / "b.tar")
    found = re.search(r"\(error id ([0-9a-f]{12})\b", str(err.value))
    assert found, str(err.value)
    logged = [r for r in caplog.records if getattr(r, "error_id", None) == found.group(1)]
    assert len(logged) == 1 and logged[0].levelno == logging.ERROR
    assert "System/Backup" in logged[0].getMessage() and "damaged" in logged[0].getMessage()


def test_a_backup_filling_its_disk_leaves_nothing_and_names_the_file(
    source: Source, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with tmpfs(tmp_path / "disk", f"size={source.archive.stat().st_size // 2}") as disk:
        # Chunks under the temp file's write buffer fill the disk as the buffer is flushed, and
        # what is left in the buffer fails again as the file is closed.
        with (
            tessera.Client(source.daemon.target) as client,
            pytest.raises(OSError, match="No space left") as raised,
        ):
            client.system.backup(disk / "b.tar", chunk_size=4096)
        assert raised.value.errno == errno.ENOSPC
        assert raised.value.filename == str(disk / "b.tar")
        assert list(disk.iterdir()) == []

        code = tessera_main(_backup_cli(source.daemon, "-o", str(disk / "b.tar")))
        assert code == 1
        assert capsys.readouterr().err == f"tessera: {disk / 'b.tar'}: No space left on device\n"
        assert list(disk.iterdir()) == []


def test_a_backup_is_on_the_disk_before_it_is_said_to_be_written(
    source: Source, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The archive's bytes are fsynced before it takes its name, and its directory after: a
    power cut after the summary never leaves an empty or short file where the backup was said
    to be (the operator may have deleted the last one by then)."""
    synced = recorded_fsyncs(monkeypatch)
    out = tmp_path / "out"
    out.mkdir()
    out = out.resolve()  # as /proc names the files
    with tessera.Client(source.daemon.target) as client:
        client.system.backup(out / "b.tar")
    ours = [path for path in synced if path == str(out) or path.startswith(f"{out}/")]
    assert len(ours) == 2, synced
    assert re.fullmatch(rf"{re.escape(str(out))}/\.b\.tar\.[0-9a-f]{{8}}\.partial", ours[0]), ours
    assert ours[1] == str(out)


def test_an_asyncio_backup_cancelled_as_it_is_put_in_place_says_so_once_it_is(
    source: Source, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its last step (reading the archive back, then taking the name) ran on a thread that a
    cancel left running: the caller was told the backup was cancelled while it went on, and its
    file could appear after. The cancel is raised once that step has ended (as a download's)."""
    started, cancelled, ended = threading.Event(), threading.Event(), threading.Event()
    finish = system_module.BackupSink.finish

    def held_finish(sink: system_module.BackupSink) -> SavedBackup:
        started.set()
        cancelled.wait(30)
        try:
            return finish(sink)
        finally:
            ended.set()

    monkeypatch.setattr(system_module.BackupSink, "finish", held_finish)
    out = tmp_path / "out"
    out.mkdir()

    async def cancelled_backup() -> bool:
        async with tessera.aio.Client(source.daemon.target) as client:
            backup = asyncio.create_task(client.system.backup(out / "b.tar"))
            await asyncio.to_thread(started.wait, 30)
            backup.cancel()
            cancelled.set()
            with pytest.raises(asyncio.CancelledError):
                await backup
            return ended.is_set()

    assert asyncio.run(cancelled_backup())
    assert [p.name for p in out.iterdir()] == ["b.tar"]


def test_an_asyncio_backups_writes_run_off_the_event_loop(
    source: Source, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each chunk's write (a disk's, a pipe's) blocked the caller's event loop while it lasted."""
    writers: set[int] = set()
    write = system_module.BackupSink.write

    def recorded_write(sink: system_module.BackupSink, chunk: bytes) -> None:
        writers.add(threading.get_ident())
        write(sink, chunk)

    monkeypatch.setattr(system_module.BackupSink, "write", recorded_write)

    async def backup() -> int:
        async with tessera.aio.Client(source.daemon.target) as client:
            await client.system.backup(tmp_path / "b.tar", chunk_size=65536)
        return threading.get_ident()

    loop_thread = asyncio.run(backup())
    assert writers
    assert loop_thread not in writers
    assert [p.name for p in tmp_path.iterdir()] == ["b.tar"]


def test_an_asyncio_backup_cancelled_during_a_write_removes_its_file_once_the_write_ended(
    source: Source, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A cancel is raised once the write in flight has ended, so that the file is never removed
    (or closed) under it; none is left."""
    started, cancelled = threading.Event(), threading.Event()
    order: list[str] = []
    write, abort = system_module.BackupSink.write, system_module.BackupSink.abort

    def held_write(sink: system_module.BackupSink, chunk: bytes) -> None:
        started.set()
        cancelled.wait(30)
        write(sink, chunk)
        order.append("write")

    def recorded_abort(sink: system_module.BackupSink) -> None:
        order.append("abort")
        abort(sink)

    monkeypatch.setattr(system_module.BackupSink, "write", held_write)
    monkeypatch.setattr(system_module.BackupSink, "abort", recorded_abort)
    out = tmp_path / "out"
    out.mkdir()

    async def cancelled_backup() -> None:
        async with tessera.aio.Client(source.daemon.target) as client:
            backup = asyncio.create_task(client.system.backup(out / "b.tar"))
            await asyncio.to_thread(started.wait, 30)
            backup.cancel()
            cancelled.set()
            with pytest.raises(asyncio.CancelledError):
                await backup

    asyncio.run(cancelled_backup())
    assert order == ["write", "abort"]
    assert list(out.iterdir()) == []


@pytest.mark.parametrize(
    ("unbuffered", "chunk_size"), [("1", 2**20), ("", 4096)], ids=["unbuffered", "buffered-small-chunks"]
)
def test_a_backup_to_stdout_filling_its_disk_names_standard_output(
    tmp_path: Path, unbuffered: str, chunk_size: int
) -> None:
    """Python's own words ('[Errno 28] No space left on device') named no file. Unbuffered
    (PYTHONUNBUFFERED, common in containers), stdout's write took what fitted and said so, and
    the rest was dropped: the backup was said to be written, exit 0. Buffered, with chunks under
    stdout's buffer, its flush failed again at exit, in a traceback."""
    settings = daemon_settings(tmp_path / "data", **{"limits.chunk_size": chunk_size})
    daemon = InProcessDaemon(settings).start()
    try:
        with tessera.Client(daemon.target) as client:
            noise = np.random.default_rng(0).normal(size=32 * 1024).astype(np.float32)
            dataset = client.datasets.push("noise", x=noise)
        with (
            tmpfs(tmp_path / "disk", f"size={dataset.size_bytes // 2}") as disk,
            (disk / "b.tar").open("wb") as stdout,
        ):
            result = subprocess.run(
                [sys.executable, "-m", "tessera.cli", *_backup_cli(daemon, "-o", "-")],
                stdout=stdout.fileno(),
                stderr=subprocess.PIPE,
                text=True,
                timeout=120,
                check=False,
                env={**os.environ, "PYTHONUNBUFFERED": unbuffered},
            )
    finally:
        daemon.stop()
    assert result.returncode == 1, result.stderr
    assert result.stderr == "tessera: standard output: No space left on device\n"


def _run_cli(*args: str, stdout: int) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tessera.cli", *args],
        stdout=stdout,
        stderr=subprocess.PIPE,
        text=True,
        timeout=120,
        check=False,
    )


def test_a_backup_streams_to_stdout_checked_with_its_summary_on_stderr(
    source: Source, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    streamed = tmp_path / "streamed.tar"
    with streamed.open("wb") as stdout:
        result = _run_cli(*_backup_cli(source.daemon, "-o", "-"), stdout=stdout.fileno())
    assert result.returncode == 0, result.stderr
    manifest = read_archive(source.archive)
    said = (
        f"sha256 {_sha256(streamed)}, {sum(manifest.records.values())} records, {len(manifest.blobs)} blobs"
    )
    assert result.stderr.startswith("wrote the backup to stdout: ") and said in result.stderr
    assert result.stderr.endswith("every file's sha256 verified\n")
    assert read_archive(streamed).blobs == manifest.blobs
    code, err = _restore(streamed, tmp_path / "restored", capsys)
    assert (code, err) == (0, "")

    with streamed.open("wb") as stdout:
        result = _run_cli("--json", *_backup_cli(source.daemon, "-o", "-"), stdout=stdout.fileno())
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stderr)
    assert summary["path"] == "-" and summary["blobs"] == len(manifest.blobs)
    assert read_archive(streamed).blobs == manifest.blobs
    # What went through the pipe, to check the copy at its far end against.
    assert (summary["sha256"], summary["size_bytes"]) == (_sha256(streamed), streamed.stat().st_size)


def test_a_backup_to_stdout_that_fails_mid_stream_exits_non_zero(
    daemon: InProcessDaemon, tmp_path: Path
) -> None:
    _damage_a_blob(daemon, tmp_path)
    result = _run_cli(*_backup_cli(daemon, "-o", "-"), stdout=subprocess.DEVNULL)
    assert result.returncode == 3
    assert result.stderr.startswith("tessera: DATA_LOSS:") and "damaged" in result.stderr, result.stderr
    assert result.stderr.endswith("what reached stdout is an incomplete archive and must not be used\n")


class _FlippingRelay:
    """A TCP relay to `upstream` that flips a byte of the first `marker` the daemon sends back, as
    a faulty link would where nothing checks the bytes (gRPC has no checksum of its own): the
    daemon, which checks each blob as it reads it, sends the damaged one and goes on."""

    def __init__(self, upstream: str, marker: bytes) -> None:
        self._upstream = upstream.rsplit(":", 1)
        self._marker = marker
        self._flipped = False
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.target = f"127.0.0.1:{self._listener.getsockname()[1]}"
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            client, _ = self._listener.accept()
            daemon = socket.create_connection((self._upstream[0], int(self._upstream[1])))
            threading.Thread(target=self._pump, args=(client, daemon, False), daemon=True).start()
            threading.Thread(target=self._pump, args=(daemon, client, True), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket, from_daemon: bool) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(1 << 16):
                at = data.find(self._marker) if from_daemon and not self._flipped else -1
                if at >= 0:
                    data = data[:at] + bytes([data[at] ^ 1]) + data[at + 1 :]
                    self._flipped = True
                sink.sendall(data)
        with contextlib.suppress(OSError):
            sink.shutdown(socket.SHUT_WR)


def test_a_backup_to_stdout_stops_before_the_bytes_that_show_a_member_damaged_on_the_way(
    spawn_daemon, tmp_path: Path
) -> None:
    """The check ran behind the writes, some ten chunks of 1 MiB: a blob found damaged at its end
    was followed on stdout by the next blobs. Nothing from the chunk that shows it on is written."""
    daemon = spawn_daemon(
        "--listen", "127.0.0.1:0", "--metrics-listen", "off", "--data-dir", str(tmp_path / "d")
    )
    target = daemon.wait_serving()
    marker = np.array([1.5, -2.25, 3.125, 42.0, -0.375, 7.75, 1e-3, 9.5], np.float32)
    rng = np.random.default_rng(0)
    with tessera.Client(target) as client:
        # Four blobs of 3 MiB, each opening with the marker: the first of them in the archive,
        # whichever it is, is damaged, and 9 MiB follow it.
        for name in "abcd":
            x = np.concatenate([np.tile(marker, 1 << 15), rng.normal(size=1 << 19).astype(np.float32)])
            client.datasets.push(name, x=x.reshape(-1, 8))
    relay = _FlippingRelay(target, marker.tobytes())
    streamed = tmp_path / "streamed.tar"
    with streamed.open("wb") as stdout:
        result = _run_cli("--target", relay.target, "admin", "backup", "-o", "-", stdout=stdout.fileno())
    assert result.returncode == 3, result.stderr
    assert result.stderr.startswith("tessera: DATA_LOSS: the backup that arrived is not whole: blobs/")
    assert "it was altered or damaged; take it again" in result.stderr
    assert result.stderr.endswith("what reached stdout is an incomplete archive and must not be used\n")
    data = streamed.read_bytes()
    headers = _tar_headers(data)
    # The manifest, the store, then the damaged blob. A check that runs ahead of the writes can
    # find the fault before the pieces it passed were written; stdout then ends sooner still.
    assert len(headers) <= 3, f"{len(headers) - 3} members past the damaged one"
    if len(headers) == 3:
        damaged = headers[2]
        assert damaged.name.startswith(BLOB_PREFIX)
        past = len(data) - (damaged.offset_data + damaged.size)
        assert past < 0, f"{past} bytes past the damaged member"


def _tar_headers(data: bytes) -> list[tarfile.TarInfo]:
    """The members of a tar stream cut short anywhere whose header is whole in `data`, each with
    `offset_data` set."""
    headers, offset = [], 0
    while offset + tarfile.BLOCKSIZE <= len(data):
        try:
            info = tarfile.TarInfo.frombuf(
                data[offset : offset + tarfile.BLOCKSIZE], "utf-8", "surrogateescape"
            )
        except tarfile.HeaderError:
            break
        info.offset_data = offset + tarfile.BLOCKSIZE
        headers.append(info)
        offset = info.offset_data + -(-info.size // tarfile.BLOCKSIZE) * tarfile.BLOCKSIZE
    return headers


def test_a_backup_to_a_terminal_is_refused(source: Source, tmp_path: Path) -> None:
    terminal, stdout = pty.openpty()
    try:
        result = subprocess.run(
            [sys.executable, "-m", "tessera.cli", *_backup_cli(source.daemon, "-o", "-")],
            stdout=stdout,
            stderr=subprocess.PIPE,
            text=True,
            cwd=tmp_path,
            timeout=120,
            check=False,
        )
    finally:
        os.close(stdout)
        os.close(terminal)
    assert result.returncode == EXIT_USAGE
    assert "refusing to write the backup to a terminal" in result.stderr
    assert list(tmp_path.iterdir()) == []


def test_force_with_a_backup_to_stdout_is_refused(source: Source) -> None:
    # --force replaces a file: given with stdout it was ignored without a word.
    result = _run_cli(*_backup_cli(source.daemon, "-o", "-", "--force"), stdout=subprocess.DEVNULL)
    assert result.returncode == EXIT_USAGE
    assert "--force replaces a file" in result.stderr


def test_the_backup_file_is_readable_by_its_owner_alone_whatever_the_umask(
    source: Source, tmp_path: Path
) -> None:
    # It holds every model, dataset and run; a umask of 022 left it readable by every user.
    replaced = tmp_path / "replaced.tar"
    replaced.write_bytes(b"")
    replaced.chmod(0o644)
    previous = os.umask(0o022)
    try:
        assert tessera_main(_backup_cli(source.daemon, "-o", str(tmp_path / "new.tar"))) == 0
        assert tessera_main(_backup_cli(source.daemon, "-o", str(replaced), "--force")) == 0
    finally:
        os.umask(previous)
    assert {p.name: stat.S_IMODE(p.stat().st_mode) for p in tmp_path.iterdir()} == {
        "new.tar": 0o600,
        "replaced.tar": 0o600,
    }


def test_restore_onto_a_disk_without_room_for_it_is_refused_before_writing(
    source: Source, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    manifest = read_archive(source.archive)
    needed = manifest.store.size + manifest.blob_bytes
    with tmpfs(tmp_path / "disk", f"size={needed // 2}") as disk:
        code, err = _restore(source.archive, disk / "data", capsys)
        assert code == 1
        assert f"the disk of {disk} has no room for the restore: it needs" in err, err
        assert "free space there, or restore onto another disk; nothing was written" in err
        assert list(disk.iterdir()) == []


def test_restore_running_out_of_room_midway_says_so_and_leaves_nothing(
    source: Source, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Bytes to spare but few inodes: the disk fills as the blobs' directories are made.
    with tmpfs(tmp_path / "disk", "size=64m,nr_inodes=6") as disk:
        code, err = _restore(source.archive, disk / "data", capsys)
        assert code == 1
        assert f"the disk of {disk} has no room for the restore: it ran out of room" in err, err
        assert "nothing was written" in err
        assert list(disk.iterdir()) == []


def test_restore_into_an_empty_mount_point_puts_it_on_that_disk(
    source: Source, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # A new disk mounted as the data directory: staged beside it, on the parent's disk, the
    # restore failed at the end moving it across (EXDEV).
    with tmpfs(tmp_path / "mnt", "size=64m") as mount_point:
        code, err = _restore(source.archive, mount_point, capsys)
        assert (code, err) == (0, "")
        assert sorted(p.name for p in mount_point.iterdir()) == ["blobs", "store", "tesserad.lock"]
        assert (mount_point / "store").stat().st_dev == mount_point.stat().st_dev != tmp_path.stat().st_dev
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mnt"]


@contextlib.contextmanager
def _restore_held_mid_store(source: Source, target: Path, fifo: Path) -> Iterator[subprocess.Popen[str]]:
    """A `tesserad restore` into `target` reading the archive through the pipe `fifo`
    (`<(ssh host cat b.tar)`), held once it has staged half the store; killed on the way out."""
    with tarfile.open(source.archive) as tar:
        store = tar.getmember(STORE_NAME)
    os.mkfifo(fifo)
    # Read and write: opening does not wait for the reader, which may never come.
    writer = os.open(fifo, os.O_RDWR)
    restore = subprocess.Popen(
        [sys.executable, "-m", "tesserad", "restore", str(fifo), "--data-dir", str(target)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        os.write(writer, source.archive.read_bytes()[: store.offset_data + store.size // 2])
        # The staging directory is in the target when it exists, else beside it.
        staged = f".{target.name}.restore-*/store/data.mdb"
        while not [*target.parent.glob(staged), *target.glob(staged)] and restore.poll() is None:
            threading.Event().wait(0.05)
        assert restore.poll() is None, restore.communicate()
        yield restore
    finally:
        restore.kill()
        os.close(writer)


def test_a_restore_terminated_midway_removes_what_it_staged(source: Source, tmp_path: Path) -> None:
    # SIGTERM's default action left the staged part behind, beside the target.
    with _restore_held_mid_store(source, tmp_path / "target", tmp_path / "archive.tar") as restore:
        restore.terminate()
        _, err = restore.communicate(timeout=120)
    assert restore.returncode == 143, err
    assert "interrupted; nothing was written" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["archive.tar"]


def _waits_on_its_pipe(staged: Iterator[Path], sent: int) -> bool:
    """The main thread has staged nearly all it was sent (less what the tar reader and the file
    buffer) and sleeps: it is in the read of the pipe that waits for the rest."""
    main = threading.main_thread().native_id
    state = Path(f"/proc/self/task/{main}/stat").read_text().rpartition(")")[2].split()[0]
    return state == "S" and any(path.stat().st_size >= sent - (64 << 10) for path in staged)


def test_a_sigterm_that_misses_the_read_of_a_pipe_still_interrupts_the_restore(
    source: Source, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # A SIGTERM landing between two reads of the archive's pipe (or taken by another thread)
    # left the main thread's next read blocked, its handler waiting for bytes that, with the
    # writer still open, never came: CI saw the restore ignore SIGTERM for 120 s. Here the main
    # thread blocks SIGTERM, so another thread takes it, as the race does.
    with tarfile.open(source.archive) as tar:
        store = tar.getmember(STORE_NAME)
    fifo, target = tmp_path / "archive.tar", tmp_path / "target"
    os.mkfifo(fifo)
    writer = os.open(fifo, os.O_RDWR)
    returned, unblocked = threading.Event(), threading.Event()

    def send_half_then_terminate() -> None:
        os.write(writer, source.archive.read_bytes()[: store.offset_data + store.size // 2])
        while not _waits_on_its_pipe(tmp_path.glob(".target.restore-*/store/data.mdb"), store.size // 2):
            threading.Event().wait(0.01)
        os.kill(os.getpid(), signal.SIGTERM)
        if not returned.wait(60):
            unblocked.set()  # the handler never ran: end the read, and the test
            os.close(writer)

    sender = threading.Thread(target=send_half_then_terminate)
    sender.start()
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
    try:
        code, err = _restore(fifo, target, capsys)
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})
        returned.set()
        sender.join()
        if not unblocked.is_set():
            os.close(writer)
    assert not unblocked.is_set(), "the restore went on reading its pipe after SIGTERM"
    assert (code, err) == (143, f"tesserad restore: interrupted; nothing was written to {target}\n")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["archive.tar"]


@contextlib.contextmanager
def _sigterm_after_renaming_into(
    monkeypatch: pytest.MonkeyPatch, renamed: Callable[[Path], bool]
) -> Iterator[None]:
    """The restore run in process gets SIGTERM right after its first rename whose target
    `renamed` takes: its handler (the CLI's) raises at the next bytecode, as in a real restore."""
    rename = Path.rename
    sent = []

    def rename_then_terminated(self: Path, target: Path) -> Path:
        done = rename(self, target)
        if not sent and renamed(Path(target)):
            sent.append(target)
            os.kill(os.getpid(), signal.SIGTERM)
        return done

    monkeypatch.setattr(Path, "rename", rename_then_terminated)
    yield
    assert sent, "the restore made no such rename"


def test_a_restore_into_an_empty_dir_terminated_between_its_parts_leaves_it_empty(
    source: Source, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # The store was put in place, then the blobs: between them the target held a store without
    # its blobs, and the CLI said nothing was written.
    target = tmp_path / "target"
    target.mkdir()
    with _sigterm_after_renaming_into(monkeypatch, lambda path: path.parent == target):
        code, err = _restore(source.archive, target, capsys)
    assert (code, err) == (143, f"tesserad restore: interrupted; nothing was written to {target}\n")
    assert [p.name for p in target.iterdir()] == ["tesserad.lock"]  # the lock taken to put it in place
    monkeypatch.undo()
    code, err = _restore(source.archive, target, capsys)
    assert (code, err) == (0, "")
    assert sorted(p.name for p in target.iterdir()) == ["blobs", "store", "tesserad.lock"]


@pytest.mark.parametrize("target_made", [True, False], ids=["into-an-empty-dir", "into-a-new-dir"])
def test_a_restore_terminated_once_in_place_says_it_is_complete(
    source: Source,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    target_made: bool,
) -> None:
    # SIGTERM right after the rename that finishes the restore: the CLI said nothing was written.
    target = tmp_path / "target"
    if target_made:
        target.mkdir()
    with _sigterm_after_renaming_into(monkeypatch, lambda path: path in (target, target / "store")):
        code = tesserad_main(["restore", str(source.archive), "--data-dir", str(target)])
    out, err = capsys.readouterr()
    assert code == 143
    assert out.startswith(f"restored {source.archive} into {target}: ")
    assert err == "tesserad restore: interrupted after the restore was in place; it is complete\n"
    assert sorted(p.name for p in target.iterdir()) == ["blobs", "store", "tesserad.lock"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["target"]


@pytest.mark.parametrize("target_made", [True, False], ids=["into-an-empty-dir", "into-a-new-dir"])
def test_an_fsync_failing_once_the_restore_is_in_place_says_it_is_complete_but_not_confirmed_durable(
    source: Source,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    target_made: bool,
) -> None:
    # The disk failing the last fsync, the store renamed in: "tesserad restore: [Errno 28] ...",
    # exit 1, and a retry refused the target as not empty; then "finishing it failed", as if a
    # step of the restore were left undone, where all that is unknown is whether it is durable.
    target = tmp_path / "target"
    if target_made:
        target.mkdir()
    fsync_dir = restore_module.fsync_dir

    def failing_once_in_place(directory: Path) -> None:
        if (target / "store").exists():
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        fsync_dir(directory)

    monkeypatch.setattr(restore_module, "fsync_dir", failing_once_in_place)
    code = tesserad_main(["restore", str(source.archive), "--data-dir", str(target)])
    out, err = capsys.readouterr()
    assert code == EXIT_RESTORED_BUT_FAILED
    assert out.startswith(f"restored {source.archive} into {target}: ")
    synced = target if target_made else tmp_path
    assert err == (
        "tesserad restore: the restore is in place and complete, but the disk did not confirm it is "
        f"durable: the fsync of {synced} failed ([Errno 5] {os.strerror(errno.EIO)}); a crash or power "
        "cut before the disk's next good sync may undo it: check the disk (the kernel's log says more) "
        "before starting the daemon on it\n"
    )
    assert sorted(p.name for p in target.iterdir()) == ["blobs", "store", "tesserad.lock"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["target"]


def test_an_error_once_the_restore_is_in_place_says_it_is_complete(
    source: Source, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # A full disk as the lock file takes the store's token, the store renamed in.
    target = tmp_path / "target"
    target.mkdir()

    def full(_lock: DataDirLock, _token: str) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(DataDirLock, "keep_store_token", full)
    code = tesserad_main(["restore", str(source.archive), "--data-dir", str(target)])
    out, err = capsys.readouterr()
    assert code == EXIT_RESTORED_BUT_FAILED
    assert out.startswith(f"restored {source.archive} into {target}: ")
    assert err == (
        "tesserad restore: the restore is in place and complete, but finishing it failed: [Errno 28] "
        f"{os.strerror(errno.ENOSPC)}; fix that (a full disk?) before starting the daemon on it, rather "
        "than restoring again\n"
    )
    assert sorted(p.name for p in target.iterdir()) == ["blobs", "store", "tesserad.lock"]


def test_a_restore_into_a_new_dir_holds_its_staging_directory_through_the_rename_into_place(
    source: Source, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Its restore.lock went before the rename, the data directory's lock unheld: a second restore
    # took the staging directory for one left by an older tesserad and restored beside it, and
    # a daemon started on it as on any data directory.
    target = tmp_path / "target"
    rename = Path.rename
    seen: list[tuple[subprocess.CompletedProcess[str], str]] = []

    def others_then_rename(self: Path, renamed: Path) -> Path:
        if Path(renamed) == target and not seen:
            second = subprocess.run(
                [sys.executable, "-m", "tesserad", "restore", str(source.archive), "--data-dir", str(target)],
                capture_output=True,
                text=True,
                timeout=120,
            )
            try:
                InProcessDaemon(daemon_settings(self)).start().stop()
                refused = "started"
            except StartupError as exc:
                refused = str(exc)
            seen.append((second, refused))
        return rename(self, renamed)

    monkeypatch.setattr(Path, "rename", others_then_rename)
    code, err = _restore(source.archive, target, capsys)
    ((second, refused),) = seen
    assert second.returncode == 1, second.stderr
    assert re.fullmatch(
        f"tesserad restore: {re.escape(str(tmp_path))}/\\.target\\.restore-\\w+ is the staging directory of "
        f"a restore into {re.escape(str(target))} that is still running \\(pid {os.getpid()}\\); let it "
        "finish, or stop it, before restoring again\n",
        second.stderr,
    ), second.stderr
    assert f"is in use by another tesserad (pid {os.getpid()})" in refused, refused
    assert (code, err) == (0, "")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["target"]
    assert sorted(p.name for p in target.iterdir()) == ["blobs", "store", "tesserad.lock"]


def _restore_killed_before_renaming_to(source: Source, target: Path, renamed: Path) -> int:
    """Run `tesserad restore` of the archive into `target`, SIGKILLed right before its rename
    onto `renamed`; its pid."""
    script = (
        "import os, signal, sys\n"
        "from pathlib import Path\n"
        "from tesserad.cli import main\n"
        "rename = Path.rename\n"
        "def killed_before(self, renamed):\n"
        "    if Path(renamed) == Path(sys.argv[3]):\n"
        "        os.kill(os.getpid(), signal.SIGKILL)\n"
        "    return rename(self, renamed)\n"
        "Path.rename = killed_before\n"
        "main(['restore', sys.argv[1], '--data-dir', sys.argv[2]])\n"
    )
    killed = subprocess.Popen(
        [sys.executable, "-c", script, str(source.archive), str(target), str(renamed)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    _, err = killed.communicate(timeout=120)
    assert killed.returncode == -signal.SIGKILL, err
    return killed.pid


@pytest.mark.parametrize("target_made", [True, False], ids=["into-an-empty-dir", "into-a-new-dir"])
def test_a_daemon_refuses_to_start_beside_a_restore_killed_before_its_last_rename(
    source: Source, tmp_path: Path, capsys: pytest.CaptureFixture[str], target_made: bool
) -> None:
    # Killed between the blobs' rename and the store's, a daemon started there made an empty
    # store beside the blobs; killed before the staging directory's rename into a new directory,
    # it made a new, empty one (and the next restore left the staging directory behind).
    target = tmp_path / "target"
    if target_made:
        target.mkdir()
    pid = _restore_killed_before_renaming_to(source, target, target / "store" if target_made else target)
    (staging,) = (target if target_made else tmp_path).glob(".target.restore-*")
    left = f"{staging} and {target / 'blobs'}" if target_made else f"{staging}"
    with pytest.raises(StartupError) as refused:
        InProcessDaemon(daemon_settings(target)).start()
    assert str(refused.value) == (
        f"a `tesserad restore` into {target} did not finish: it left {left}; run `tesserad restore "
        f"ARCHIVE --data-dir {target}` again to finish it (it removes what the unfinished one left "
        f"first), or remove {left} to start without it"
    )
    assert not (target / "store").exists()
    assert target.exists() == target_made

    code, err = _restore(source.archive, target, capsys)
    assert (code, err) == (
        0,
        f"tesserad restore: removed {staging}, left by a restore into {target} (pid {pid}) that was "
        "killed before it finished\n",
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["target"]
    assert sorted(p.name for p in target.iterdir()) == ["blobs", "store", "tesserad.lock"]
    daemon = InProcessDaemon(daemon_settings(target)).start()
    try:
        with tessera.Client(daemon.target) as client:
            client.models.download("clf", tmp_path / "back.onnx", version="production")
        assert _sha256(tmp_path / "back.onnx") == source.model_sha256
    finally:
        daemon.stop()


def test_blobs_a_killed_restore_put_in_place_without_its_store_are_taken_back_by_the_next(
    source: Source, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # What a restore killed outright (SIGKILL, a power cut) between its blobs and its store
    # leaves: its staging directory, unlocked, with its mark and its store; its blobs in the
    # target. The next restore refused the target as "not empty".
    restored = tmp_path / "restored"
    code, _ = _restore(source.archive, restored, capsys)
    assert code == 0
    target = tmp_path / "target"
    staging = target / ".target.restore-dead"
    staging.mkdir(parents=True)
    (restored / "store").rename(staging / "store")
    (staging / "installing").touch()
    (staging / "restore.lock").write_text("4242\n")
    (restored / "blobs").rename(target / "blobs")

    code, err = _restore(source.archive, target, capsys)
    assert (code, err) == (
        0,
        f"tesserad restore: removed {staging}, left by a restore into {target} (pid 4242) that "
        "was killed before it finished\n",
    )
    assert sorted(p.name for p in target.iterdir()) == ["blobs", "store", "tesserad.lock"]


@pytest.mark.parametrize("target_made", [True, False], ids=["into-an-empty-dir", "into-a-new-dir"])
def test_a_restore_killed_midway_leaves_its_staging_to_the_next_restore_which_removes_it(
    source: Source, tmp_path: Path, capsys: pytest.CaptureFixture[str], target_made: bool
) -> None:
    # SIGKILL leaves the staging directory behind (in an empty target, or beside a new one):
    # the next restore refused the target as "not empty", naming it, or left it there.
    target = tmp_path / "target"
    if target_made:
        target.mkdir()
    with _restore_held_mid_store(source, target, tmp_path / "archive.tar") as first:
        (staging,) = (target if target_made else tmp_path).glob(".target.restore-*")
        code, err = _restore(source.archive, target, capsys)
        assert code == 1
        assert err == (
            f"tesserad restore: {staging} is the staging directory of a restore into {target} that is "
            f"still running (pid {first.pid}); let it finish, or stop it, before restoring again\n"
        )
        first.kill()
        first.communicate(timeout=120)
    assert first.returncode == -signal.SIGKILL
    assert (staging / "store" / "data.mdb").exists()

    code, err = _restore(source.archive, target, capsys)
    assert code == 0, err
    assert err == (
        f"tesserad restore: removed {staging}, left by a restore into {target} (pid {first.pid}) that "
        "was killed before it finished\n"
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["archive.tar", "target"]
    # The lock file carries the store's token for the first start (test_store_schema.py).
    assert sorted(p.name for p in target.iterdir()) == ["blobs", "store", "tesserad.lock"]


@pytest.mark.parametrize("target_made", [True, False], ids=["into-an-empty-dir", "into-a-new-dir"])
def test_a_daemon_refuses_to_start_where_a_restore_is_running(
    source: Source, tmp_path: Path, target_made: bool
) -> None:
    # It started, made an empty store, and the restore then failed at its end: not empty.
    target = tmp_path / "target"
    if target_made:
        target.mkdir()
    with _restore_held_mid_store(source, target, tmp_path / "archive.tar") as restore:
        (staging,) = (target if target_made else tmp_path).glob(".target.restore-*")
        with pytest.raises(StartupError) as refused:
            InProcessDaemon(daemon_settings(target)).start()
        assert str(refused.value) == (
            f"a `tesserad restore` into {target} is running (pid {restore.pid}, staging in {staging}); "
            "let it finish, then start the daemon on the restored directory"
        )
        assert not (target / "store").exists()
        assert target.exists() == target_made


def test_a_staging_directory_without_a_lock_file_is_removed_only_when_empty(
    source: Source, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Empty: a restore killed between making it and its lock file. Not empty: one made by a
    # tesserad before restore.lock, whose restore may be running still.
    target = tmp_path / "target"
    (target / ".target.restore-old").mkdir(parents=True)
    (target / ".target.restore-old" / "store").mkdir()
    (target / ".target.restore-new").mkdir()
    code, err = _restore(source.archive, target, capsys)
    assert code == 1
    assert err == (
        f"tesserad restore: removed {target / '.target.restore-new'}, left by a restore into {target} "
        f"(pid unknown) that was killed before it finished\n"
        f"tesserad restore: {target} is not empty (it holds .target.restore-old); restore into a new or "
        "empty directory, so that no data is overwritten\n"
    )
    assert [p.name for p in target.iterdir()] == [".target.restore-old"]


@pytest.mark.parametrize("target_made", [True, False], ids=["in-an-empty-dir", "beside-a-new-dir"])
def test_a_daemon_beside_an_older_tesserads_staging_directory_says_to_remove_it_by_hand(
    tmp_path: Path, target_made: bool
) -> None:
    # No lock file says whether the older tesserad's restore still runs, so restore leaves such a
    # directory alone: the daemon said the next restore removes it.
    target = tmp_path / "target"
    staging = (target if target_made else tmp_path) / ".target.restore-old"
    (staging / "store").mkdir(parents=True)
    with pytest.raises(StartupError) as refused:
        InProcessDaemon(daemon_settings(target)).start()
    assert str(refused.value) == (
        f"a `tesserad restore` into {target} by an older tesserad left {staging} (it has no lock file "
        "to say whether that restore still runs, so no restore removes it); once no restore into it "
        f"runs, remove {staging} by hand, then start the daemon or restore again"
    )
    assert not (target / "store").exists()
    (staging / "store").rmdir()
    staging.rmdir()
    InProcessDaemon(daemon_settings(target)).start().stop()


def test_a_backup_says_its_archive_sha256_and_size_to_record_beside_it(
    source: Source, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    archive = tmp_path / "b.tar"
    assert tessera_main(["--json", *_backup_cli(source.daemon, "-o", str(archive))]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert (summary["sha256"], summary["size_bytes"]) == (_sha256(archive), archive.stat().st_size)
    assert tessera_main(_backup_cli(source.daemon, "-o", str(archive), "--force")) == 0
    assert f"sha256 {_sha256(archive)}" in " ".join(capsys.readouterr().out.split())


def _drawn(err: str) -> list[str]:
    """What a progress line drew, each drawing without the spaces that cover a longer one."""
    assert err.startswith("\r") and err.endswith("\n"), repr(err)
    return [text.rstrip(" ") for text in err[1:-1].split("\r")]


def _ended(label: str, size: str, drawn: str) -> bool:
    return re.fullmatch(rf"{label}: {re.escape(size)} in \d+s(, [\d.]+ [KMG]?i?B/s)?", drawn) is not None


def test_a_backup_asked_for_progress_draws_it_on_stderr_up_to_the_archives_size(
    source: Source, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    archive = tmp_path / "b.tar"
    assert tessera_main(_backup_cli(source.daemon, "-o", str(archive), "--progress")) == 0
    captured = capsys.readouterr()
    size = byte_size(archive.stat().st_size)
    drawn = _drawn(captured.err)
    assert drawn[0] == "backup: the daemon is copying its store"
    # The daemon says the archive's size up front: the last piece is all of it.
    assert drawn[-3].startswith(f"backup: {size} of {size} (100%)"), drawn
    assert drawn[-2] == f"backup: all {size} came; reading it back to check it"
    assert _ended("backup", size, drawn[-1]), drawn
    assert " ".join(captured.out.split()).startswith(f"wrote {archive}: ")  # as rich wraps it

    # --json: stdout holds the JSON alone.
    assert (
        tessera_main(["--json", *_backup_cli(source.daemon, "-o", str(archive), "--progress", "--force")])
        == 0
    )
    captured = capsys.readouterr()
    assert json.loads(captured.out)["size_bytes"] == archive.stat().st_size
    assert _ended("backup", byte_size(archive.stat().st_size), _drawn(captured.err)[-1])


def test_progress_with_json_and_a_backup_to_stdout_is_refused(
    source: Source, capsys: pytest.CaptureFixture[str]
) -> None:
    # The summary goes to stderr there, as JSON a script parses.
    assert tessera_main(["--json", *_backup_cli(source.daemon, "-o", "-", "--progress")]) == EXIT_USAGE
    assert "--progress with --json and --output - would put both on stderr" in capsys.readouterr().err


def test_the_sdk_tells_a_backups_progress_up_to_the_archives_size(source: Source, tmp_path: Path) -> None:
    told: list[tuple[int, int]] = []
    with tessera.Client(source.daemon.target) as client:
        saved = client.system.backup(tmp_path / "b.tar", chunk_size=4096, progress=lambda *p: told.append(p))
    assert len(told) > 1
    assert [done for done, _ in told] == sorted({done for done, _ in told})
    assert {total for _, total in told} == {saved.archive_size}
    assert told[-1] == (saved.archive_size, saved.archive_size)


def _backup_with_stderr_on_a_terminal(source: Source, tmp_path: Path, *args: str) -> str:
    terminal, stderr = pty.openpty()
    try:
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "tessera.cli",
                *_backup_cli(source.daemon, "-o", str(tmp_path / "b.tar"), *args),
            ],
            stdout=subprocess.DEVNULL,
            stderr=stderr,
            timeout=120,
            check=False,
        )
        assert result.returncode == 0
        os.set_blocking(terminal, False)
        try:
            return os.read(terminal, 1 << 16).decode()
        except BlockingIOError:
            return ""
    finally:
        os.close(stderr)
        os.close(terminal)


def test_a_backup_draws_progress_for_a_terminal_unless_told_not_to(source: Source, tmp_path: Path) -> None:
    drawn = _backup_with_stderr_on_a_terminal(source, tmp_path)
    size = byte_size((tmp_path / "b.tar").stat().st_size)
    # The terminal ends a line with "\r\n".
    assert _ended("backup", size, drawn.removesuffix("\r\n").split("\r")[-1].rstrip(" ")), repr(drawn)
    assert _backup_with_stderr_on_a_terminal(source, tmp_path, "--force", "--no-progress") == ""


def test_a_restore_asked_for_progress_draws_it_up_to_the_size_of_the_archives_files(
    source: Source, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = tesserad_main(["restore", str(source.archive), "--data-dir", str(tmp_path / "r"), "--progress"])
    err = capsys.readouterr().err
    assert code == 0, err
    manifest = read_archive(source.archive)
    size = byte_size(manifest.store.size + manifest.blob_bytes)
    drawn = _drawn(err)
    assert drawn[-3].startswith(f"restore: {size} of {size} (100%)"), drawn
    assert drawn[-2] == f"restore: all {size} staged; checking the store and putting it in place"
    assert _ended("restore", size, drawn[-1]), drawn


def test_a_daemon_removes_what_a_restore_killed_once_in_place_left(
    source: Source, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Killed while removing its staging directory, once its store was in place: the daemon
    # started on the restore, and the staging directory stayed in the data directory for ever.
    target = tmp_path / "target"
    target.mkdir()
    killed_at_removal = (
        "import os, shutil, signal, sys; import tesserad.backup.restore as restore; "
        "restore.shutil = type(shutil)('shutil'); "
        "restore.shutil.rmtree = lambda *a, **k: os.kill(os.getpid(), signal.SIGKILL); "
        "from tesserad.cli import main; sys.exit(main(sys.argv[1:]))"
    )
    killed = subprocess.run(
        [sys.executable, "-c", killed_at_removal, "restore", str(source.archive), "--data-dir", str(target)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    (staging,) = target.glob(".target.restore-*")
    daemon = InProcessDaemon(daemon_settings(target)).start()
    try:
        with tessera.Client(daemon.target) as client:
            assert client.models.version("clf", "production").sha256 == source.model_sha256
    finally:
        daemon.stop()
    assert sorted(p.name for p in target.iterdir()) == ["blobs", "store", "tesserad.lock"]
    assert f"removed {staging}, left by a restore into {target} that was killed once in place" in caplog.text


def test_a_backup_whose_client_stops_taking_chunks_is_ended_and_hands_its_turn_on(
    data_dir: Path, tmp_path: Path, backup_steps: list[tuple[str, int]]
) -> None:
    daemon = InProcessDaemon(daemon_settings(data_dir, **{"limits.backup_stall_timeout_s": "1"})).start()
    try:
        _push_big_dataset(daemon, tmp_path)
        with _held_backup(daemon) as stalled:
            # Its turn is handed on though its client, connected, never reads on.
            with tessera.Client(daemon.target) as client:
                client.system.backup(tmp_path / "next.tar", timeout=60)
            with pytest.raises(grpc.RpcError) as ended:
                for _ in stalled.chunks():
                    pass
        # ABORTED, not DEADLINE_EXCEEDED: the CLI's advice to raise --transfer-timeout is not
        # what helps here. A 4 KiB chunk takes less than the setting at the floor rate.
        assert ended.value.code() == grpc.StatusCode.ABORTED
        assert ended.value.details() == (
            "the client took no chunk of the backup within 1 s of its being sent "
            "(limits.backup_stall_timeout_s, or the chunk's size at 8 KiB/s where longer), so the "
            "daemon ended it and let the next backup begin; read the stream as it comes, or raise "
            "limits.backup_stall_timeout_s (env TESSERA_LIMITS_BACKUP_STALL_TIMEOUT_S)"
        )
    finally:
        daemon.stop()
    assert backup_steps == [("copy", 1), ("closed", 1), ("copy", 2), ("closed", 2)]
    read_archive(tmp_path / "next.tar")
    assert list((data_dir / "blobs" / "tmp").iterdir()) == []


def test_a_stalled_backup_whose_close_fails_still_ends_aborted_and_the_failure_is_logged(
    data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # The close the stall began was awaited as the call ended: its error replaced the ABORTED
    # that says what to do, and under a cancel it was dropped unlogged.
    close = snapshot_module.Backup.close

    def close_then_fail(backup: snapshot_module.Backup, error: object = None) -> None:
        was_open = not backup.closed
        close(backup, error)
        if was_open:
            raise OSError(errno.EIO, "the store copy's directory went away")

    monkeypatch.setattr(snapshot_module.Backup, "close", close_then_fail)
    daemon = InProcessDaemon(daemon_settings(data_dir, **{"limits.backup_stall_timeout_s": "1"})).start()
    try:
        _push_big_dataset(daemon, tmp_path)
        with _held_backup(daemon) as stalled:
            with tessera.Client(daemon.target) as client, pytest.raises(tessera.Internal):
                # Its turn was handed on; its own close fails too, and says so.
                client.system.backup(tmp_path / "next.tar", timeout=60)
            with pytest.raises(grpc.RpcError) as ended:
                for _ in stalled.chunks():
                    pass
        assert ended.value.code() == grpc.StatusCode.ABORTED, ended.value.details()
        assert ended.value.details().startswith("the client took no chunk of the backup within 1 s")
    finally:
        daemon.stop()
    assert "closing a backup failed: [Errno 5] the store copy's directory went away" in caplog.text
