"""Run artifacts over gRPC against a real daemon: upload, list, download, replace, refuse."""

from __future__ import annotations

import asyncio
import hashlib
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

import tessera
import tessera.aio
from tessera.v1 import training_pb2 as pb
from tessera.v1 import training_pb2_grpc
from tests.conftest import InProcessDaemon, daemon_settings

LIMIT = 64 * 1024


@pytest.fixture(scope="module")
def artifacts_daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[InProcessDaemon]:
    data_dir = tmp_path_factory.mktemp("artifacts") / "data"
    running = InProcessDaemon(
        daemon_settings(data_dir, **{"limits.max_run_artifact_size": str(LIMIT)})
    ).start()
    yield running
    running.stop()


@pytest.fixture(scope="module")
def stub(artifacts_daemon: InProcessDaemon) -> training_pb2_grpc.TrainingStub:
    return training_pb2_grpc.TrainingStub(artifacts_daemon.channel())


@pytest.fixture
def run_id(stub: training_pb2_grpc.TrainingStub) -> str:
    return str(stub.CreateRun(pb.CreateRunRequest(experiment="artifacts")).run_id)


def requests(
    run_id: str, path: str, data: bytes, chunk: int = 1000, declare: bool = True
) -> Iterator[pb.UploadRunArtifactRequest]:
    header = pb.UploadRunArtifactHeader(run_id=run_id, path=path)
    if declare:
        header.sha256, header.size_bytes = hashlib.sha256(data).hexdigest(), len(data)
    yield pb.UploadRunArtifactRequest(header=header)
    for start in range(0, len(data), chunk):
        yield pb.UploadRunArtifactRequest(chunk=data[start : start + chunk])


def upload(stub: training_pb2_grpc.TrainingStub, run_id: str, path: str, data: bytes) -> pb.RunArtifact:
    return stub.UploadRunArtifact(requests(run_id, path, data))


def download(stub: training_pb2_grpc.TrainingStub, run_id: str, path: str) -> tuple[pb.RunArtifact, bytes]:
    parts = list(
        stub.DownloadRunArtifact(pb.DownloadRunArtifactRequest(run_id=run_id, path=path, chunk_size=4096))
    )
    return parts[0].header, b"".join(part.chunk for part in parts[1:])


def download_from(
    stub: training_pb2_grpc.TrainingStub, run_id: str, path: str, offset: int
) -> tuple[pb.RunArtifact, list[bytes]]:
    """The header and the chunks sent after it, from byte `offset` on."""
    request = pb.DownloadRunArtifactRequest(run_id=run_id, path=path, chunk_size=4096, offset=offset)
    parts = list(stub.DownloadRunArtifact(request))
    return parts[0].header, [part.chunk for part in parts[1:]]


def listed(
    stub: training_pb2_grpc.TrainingStub, run_id: str, path: str = "", page_size: int = 0
) -> list[str]:
    paths, token = [], ""
    while True:
        page = stub.ListRunArtifacts(
            pb.ListRunArtifactsRequest(run_id=run_id, path=path, page_size=page_size, page_token=token)
        )
        paths += [a.path for a in page.artifacts]
        token = page.next_page_token
        if not token:
            return paths


def blob_file(daemon: InProcessDaemon, data: bytes) -> Path:
    sha256 = hashlib.sha256(data).hexdigest()
    return Path(daemon.settings.data_dir) / "blobs" / "sha256" / sha256[:2] / sha256[2:]


def test_round_trip_checks_the_hash(stub: training_pb2_grpc.TrainingStub, run_id: str) -> None:
    data = bytes(range(256)) * 40
    stored = upload(stub, run_id, "plots/loss.png", data)
    assert (stored.run_id, stored.path, stored.size_bytes) == (run_id, "plots/loss.png", len(data))
    assert stored.sha256 == hashlib.sha256(data).hexdigest()
    header, body = download(stub, run_id, "plots/loss.png")
    assert body == data
    assert header.sha256 == hashlib.sha256(body).hexdigest()
    empty = upload(stub, run_id, "notes/empty.txt", b"")
    assert empty.size_bytes == 0 and download(stub, run_id, "notes/empty.txt")[1] == b""


def test_a_blob_damaged_on_disk_is_data_loss(
    stub: training_pb2_grpc.TrainingStub, artifacts_daemon: InProcessDaemon, run_id: str
) -> None:
    data = b"bytes that rot on disk"
    upload(stub, run_id, "rot.txt", data)
    blob_file(artifacts_daemon, data).write_bytes(b"X" * len(data))
    with pytest.raises(grpc.RpcError) as error:
        download(stub, run_id, "rot.txt")
    assert error.value.code() == grpc.StatusCode.DATA_LOSS and "damaged" in error.value.details()


@pytest.mark.parametrize("offset", [1, 4095, 4096, 10_000, 10_240])
def test_a_download_resumed_at_an_offset_sends_the_rest_of_the_artifact(
    stub: training_pb2_grpc.TrainingStub, run_id: str, offset: int
) -> None:
    data = bytes(range(256)) * 40
    upload(stub, run_id, "plots/loss.png", data)
    header, chunks = download_from(stub, run_id, "plots/loss.png", offset)
    assert b"".join(chunks) == data[offset:] and all(chunks)
    assert (header.sha256, header.size_bytes) == (hashlib.sha256(data).hexdigest(), len(data))


def test_a_download_offset_outside_the_artifact_is_refused_naming_its_size(
    stub: training_pb2_grpc.TrainingStub, run_id: str
) -> None:
    data = bytes(range(256)) * 40
    upload(stub, run_id, "plots/loss.png", data)
    with pytest.raises(grpc.RpcError) as negative:
        download_from(stub, run_id, "plots/loss.png", -1)
    assert negative.value.code() == grpc.StatusCode.INVALID_ARGUMENT, negative.value.details()
    assert negative.value.details() == "offset must be >= 0 (0: from the file's start), got -1"
    with pytest.raises(grpc.RpcError) as past:
        download_from(stub, run_id, "plots/loss.png", len(data) + 1)
    assert past.value.code() == grpc.StatusCode.OUT_OF_RANGE, past.value.details()
    assert past.value.details() == (
        f"offset {len(data) + 1} is past the end of artifact plots/loss.png of run {run_id} "
        f"({len(data)} bytes); resume at most at {len(data)}"
    )


def test_a_resumed_download_of_a_blob_damaged_before_the_offset_is_data_loss(
    stub: training_pb2_grpc.TrainingStub, artifacts_daemon: InProcessDaemon, run_id: str
) -> None:
    data = b"bytes that rot on disk" * 500
    upload(stub, run_id, "rot.txt", data)
    damaged = bytearray(data)
    damaged[0] ^= 0xFF
    blob_file(artifacts_daemon, data).write_bytes(bytes(damaged))
    with pytest.raises(grpc.RpcError) as error:
        download_from(stub, run_id, "rot.txt", len(data) - 1)
    assert error.value.code() == grpc.StatusCode.DATA_LOSS and "damaged" in error.value.details()


def test_overwrite_replaces_and_frees_the_old_blob(
    stub: training_pb2_grpc.TrainingStub, artifacts_daemon: InProcessDaemon, run_id: str
) -> None:
    first, second, shared = b"first version", b"second version", b"same bytes at two paths"
    upload(stub, run_id, "model.txt", first)
    upload(stub, run_id, "model.txt", second)
    assert download(stub, run_id, "model.txt")[1] == second
    assert listed(stub, run_id) == ["model.txt"]
    assert not blob_file(artifacts_daemon, first).exists()
    # A blob two paths hold stays while one of them holds it.
    upload(stub, run_id, "a.txt", shared)
    upload(stub, run_id, "b.txt", shared)
    upload(stub, run_id, "a.txt", b"other")
    assert blob_file(artifacts_daemon, shared).exists()
    assert download(stub, run_id, "b.txt")[1] == shared


def test_listing_by_directory_and_pages(stub: training_pb2_grpc.TrainingStub, run_id: str) -> None:
    for path in ["plots/b.png", "plots/a/c.png", "plots-old/x.png", "plots.txt", "plotsz", "top.txt"]:
        upload(stub, run_id, path, path.encode())
    everything = ["plots-old/x.png", "plots.txt", "plots/a/c.png", "plots/b.png", "plotsz", "top.txt"]
    assert listed(stub, run_id) == everything
    assert listed(stub, run_id, page_size=1) == everything
    assert listed(stub, run_id, "plots") == ["plots/a/c.png", "plots/b.png"]
    assert listed(stub, run_id, "plots/", page_size=1) == ["plots/a/c.png", "plots/b.png"]
    assert listed(stub, run_id, "plots.txt") == ["plots.txt"]
    assert listed(stub, run_id, "nothing") == []


@pytest.mark.parametrize(
    ("path", "why"),
    [
        ("", "is empty"),
        ("/etc/passwd", "is absolute"),
        ("../escape.txt", "'..' segment"),
        ("a/../../b", "'..' segment"),
        ("a//b", "empty segment"),
        ("dir/", "empty segment"),
        ("./a", "'.' segment"),
        ("a\\b", "backslash"),
        ("a\x00b", "NUL or a newline"),
        ("a\nb", "NUL or a newline"),
        ("x" * 401, "over the 400 allowed"),
        ("plots/" + "é" * 128 + ".png", "a segment of 260 bytes"),
    ],
)
def test_bad_paths_are_refused(
    stub: training_pb2_grpc.TrainingStub, run_id: str, path: str, why: str
) -> None:
    with pytest.raises(grpc.RpcError) as error:
        upload(stub, run_id, path, b"data")
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert why in error.value.details() and "header.path" in error.value.details()


def test_refusals_name_what_to_fix(stub: training_pb2_grpc.TrainingStub, run_id: str) -> None:
    def refused(run: str, path: str, data: bytes, declare: bool = True) -> grpc.RpcError:
        with pytest.raises(grpc.RpcError) as error:
            stub.UploadRunArtifact(requests(run, path, data, declare=declare))
        return error.value

    error = refused("run-nosuchrun", "a.txt", b"x")
    assert error.code() == grpc.StatusCode.NOT_FOUND and "run-nosuchrun" in error.details()
    too_big = b"\0" * (LIMIT + 1)
    for declare in (True, False):
        error = refused(run_id, "big.bin", too_big, declare)
        assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "limits.max_run_artifact_size" in error.details() and "(64 KiB)" in error.details()
    upload(stub, run_id, "notes.txt", b"a file")
    error = refused(run_id, "notes.txt/inside.txt", b"x")
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION and "'notes.txt'" in error.details()
    upload(stub, run_id, "dir/file.txt", b"x")
    error = refused(run_id, "dir", b"x")
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION and "'dir/'" in error.details()
    with pytest.raises(grpc.RpcError) as missing:
        download(stub, run_id, "absent.txt")
    assert missing.value.code() == grpc.StatusCode.NOT_FOUND and "absent.txt" in missing.value.details()
    stub.DeleteRun(pb.DeleteRunRequest(run_id=run_id))
    error = refused(run_id, "late.txt", b"x")
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION and "RestoreRun" in error.details()
    # A deleted run keeps its artifacts, readable, until it is restored.
    assert download(stub, run_id, "notes.txt")[1] == b"a file"


def test_a_corrupt_or_interrupted_upload_stores_nothing(
    stub: training_pb2_grpc.TrainingStub, artifacts_daemon: InProcessDaemon, run_id: str
) -> None:
    data = b"partial artifact " * 100
    damaged = list(requests(run_id, "bad.bin", data))
    damaged[-1] = pb.UploadRunArtifactRequest(chunk=b"X" * len(damaged[-1].chunk))
    with pytest.raises(grpc.RpcError) as error:
        stub.UploadRunArtifact(iter(damaged))
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT

    def cut_short() -> Iterator[pb.UploadRunArtifactRequest]:
        sent = requests(run_id, "cut.bin", data)
        yield next(sent)
        yield next(sent)
        raise ConnectionError("the client went away")

    # grpc cancels the call when the request iterator fails.
    with pytest.raises(grpc.RpcError):
        stub.UploadRunArtifact(cut_short())
    tmp = Path(artifacts_daemon.settings.data_dir) / "blobs" / "tmp"
    auth = artifacts_daemon.daemon._auth
    assert auth is not None
    # The daemon sees the cancel a moment after the client, and may make its temp file only after
    # the client's call ended: wait for the daemon's handler to end, then for its temp file to go.
    deadline = time.monotonic() + 30
    while (auth.calls.in_flight or any(tmp.iterdir())) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert auth.calls.in_flight == 0
    assert not any(tmp.iterdir())
    assert listed(stub, run_id) == []
    assert not blob_file(artifacts_daemon, data).exists()


def test_an_upload_the_client_cancels_stores_nothing_even_undeclared(
    stub: training_pb2_grpc.TrainingStub, artifacts_daemon: InProcessDaemon, run_id: str
) -> None:
    # With no size or hash declared, only the stream's end says that the upload is whole; and
    # grpc.aio ends the request stream of a cancelled call as it ends one the client finished.
    tmp = Path(artifacts_daemon.settings.data_dir) / "blobs" / "tmp"

    def cancel_midway(path: str) -> None:
        release = threading.Event()

        def cut_short() -> Iterator[pb.UploadRunArtifactRequest]:
            yield pb.UploadRunArtifactRequest(header=pb.UploadRunArtifactHeader(run_id=run_id, path=path))
            yield pb.UploadRunArtifactRequest(chunk=b"the first part of a file")
            release.wait(30)

        future = stub.UploadRunArtifact.future(cut_short())
        deadline = time.monotonic() + 30
        while not any(tmp.iterdir()) and time.monotonic() < deadline:
            time.sleep(0.005)  # until the daemon has its temp file: it reads the chunks now
        future.cancel()
        release.set()
        with pytest.raises(grpc.FutureCancelledError):
            future.result()

    # Which of the cancel and the stream's end the daemon sees first varies: several tries.
    for attempt in range(5):
        cancel_midway(f"cut-{attempt}.bin")
        deadline = time.monotonic() + 30
        while any(tmp.iterdir()) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert not any(tmp.iterdir())
    assert listed(stub, run_id) == []


def test_artifacts_survive_a_restart_and_blob_collection(tmp_path: Path) -> None:
    data = b"kept across restarts"
    running = InProcessDaemon(daemon_settings(tmp_path / "data")).start()
    try:
        with tessera.Client(running.target) as client:
            run = client.training.create_run("restarts", create_experiment=True)
            (tmp_path / "notes.md").write_bytes(data)
            client.training.log_artifact(run.run_id, tmp_path / "notes.md", "docs")
    finally:
        running.stop()
    running = InProcessDaemon(daemon_settings(tmp_path / "data")).start()
    try:
        with tessera.Client(running.target) as client:
            assert [a.path for a in client.training.list_artifacts(run.run_id)] == ["docs/notes.md"]
            local = client.training.download_artifacts(run.run_id, "docs", tmp_path / "out")
            assert (local / "notes.md").read_bytes() == data
    finally:
        running.stop()


def test_the_aio_client_stores_and_fetches(artifacts_daemon: InProcessDaemon, tmp_path: Path) -> None:
    source = tmp_path / "confusion.csv"
    source.write_bytes(b"1,0\n0,1\n")

    async def scenario() -> tuple[pb.RunArtifact, list[str], pb.RunArtifact]:
        async with tessera.aio.Client(artifacts_daemon.target) as client:
            run = await client.training.create_run("aio", create_experiment=True)
            stored = await client.training.log_artifact(run.run_id, source)
            paths = [a.path async for a in client.training.list_artifacts(run.run_id)]
            header = await client.training.download_artifact(
                run.run_id, "confusion.csv", tmp_path / "copy.csv"
            )
            return stored, paths, header

    stored, paths, header = asyncio.run(scenario())
    assert stored.path == "confusion.csv" and paths == ["confusion.csv"]
    assert header.sha256 == stored.sha256
    assert (tmp_path / "copy.csv").read_bytes() == source.read_bytes()


def test_a_download_goes_through_a_new_temp_file_of_its_own(
    artifacts_daemon: InProcessDaemon, tmp_path: Path
) -> None:
    # A name at the filesystem's 255-byte limit, and a link at the old fixed temp name: the
    # temp file is a new, short-named one, so the first downloads and the link's target is
    # never written through.
    source = tmp_path / ("n" * 251 + ".md")
    source.write_bytes(b"notes")
    victim = tmp_path / "victim.txt"
    victim.write_bytes(b"untouched")
    out = tmp_path / "out"
    out.mkdir()
    (out / "plot.png.partial").symlink_to(victim)
    (tmp_path / "plot.png").write_bytes(b"png bytes")
    with tessera.Client(artifacts_daemon.target) as client:
        run = client.training.create_run("temp-files", create_experiment=True)
        client.training.log_artifact(run.run_id, source, "docs")
        client.training.log_artifact(run.run_id, tmp_path / "plot.png")

        local = client.training.download_artifacts(run.run_id, "docs", out)
        client.training.download_artifact(run.run_id, "plot.png", out)

    assert (local / source.name).read_bytes() == b"notes"
    assert (out / "plot.png").read_bytes() == b"png bytes"
    assert victim.read_bytes() == b"untouched"
    assert sorted(p.name for p in out.iterdir()) == ["docs", "plot.png", "plot.png.partial"]


def a_tree(root: Path) -> dict[str, bytes]:
    """A nested directory, with a link to a file (stored as the file) and a link to a
    directory (not followed, as MLflow's os.walk); the files it should store, by path."""
    files = {"notes.md": b"notes", "plots/loss.png": b"\x89PNG" * 50, "plots/old/a b.csv": b"1,2\n"}
    for path, data in files.items():
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_bytes(data)
    (root / "latest.png").symlink_to(root / "plots" / "loss.png")
    (root / "again").symlink_to(root / "plots", target_is_directory=True)
    return files | {"latest.png": files["plots/loss.png"]}


def test_log_artifacts_stores_a_tree_that_download_artifacts_gives_back(
    artifacts_daemon: InProcessDaemon, run_id: str, tmp_path: Path
) -> None:
    files = a_tree(tmp_path / "out")
    with tessera.Client(artifacts_daemon.target) as client:
        stored = client.training.log_artifacts(run_id, tmp_path / "out", "run1/")
        assert [a.path for a in stored] == sorted(f"run1/{path}" for path in files)
        local = client.training.download_artifacts(run_id, "run1", tmp_path / "back")
        assert client.training.log_artifacts(run_id, str(tmp_path / "out" / "plots")) == [
            a for a in client.training.list_artifacts(run_id) if not a.path.startswith("run1/")
        ]
    assert local == tmp_path / "back" / "run1"
    back = {p.relative_to(local).as_posix(): p.read_bytes() for p in local.rglob("*") if p.is_file()}
    assert back == files


def test_log_artifacts_of_an_empty_directory_stores_nothing(
    artifacts_daemon: InProcessDaemon, run_id: str, tmp_path: Path
) -> None:
    (tmp_path / "empty" / "nested").mkdir(parents=True)
    with tessera.Client(artifacts_daemon.target) as client:
        assert client.training.log_artifacts(run_id, tmp_path / "empty") == []
        assert list(client.training.list_artifacts(run_id)) == []


def test_log_artifacts_refuses_what_is_not_a_directory_of_files(
    artifacts_daemon: InProcessDaemon, run_id: str, tmp_path: Path
) -> None:
    (tmp_path / "one.txt").write_text("x")
    odd = tmp_path / "odd"
    odd.mkdir()
    (odd / "fine.txt").write_text("x")
    (odd / "gone.txt").symlink_to(tmp_path / "nowhere")
    with tessera.Client(artifacts_daemon.target) as client:
        with pytest.raises(NotADirectoryError, match=r"one\.txt is not a directory; log_artifact stores one"):
            client.training.log_artifacts(run_id, tmp_path / "one.txt")
        with pytest.raises(FileNotFoundError, match=r"no directory .*absent"):
            client.training.log_artifacts(run_id, tmp_path / "absent")
        with pytest.raises(ValueError, match=r"\(1: gone.txt\); nothing stored"):
            client.training.log_artifacts(run_id, odd)
        assert list(client.training.list_artifacts(run_id)) == []


def test_a_failed_file_says_which_and_what_was_stored_before_it(
    artifacts_daemon: InProcessDaemon, run_id: str, tmp_path: Path
) -> None:
    tree = tmp_path / "tree"
    for path in ("a.txt", "b/c.txt", "d.txt"):
        (tree / path).parent.mkdir(parents=True, exist_ok=True)
        (tree / path).write_text(path)
    (tmp_path / "b").write_text("a file where the tree has a directory")
    with tessera.Client(artifacts_daemon.target) as client:
        client.training.log_artifact(run_id, tmp_path / "b")
        with pytest.raises(tessera.FailedPrecondition) as error:
            client.training.log_artifacts(run_id, tree)
        paths = [a.path for a in client.training.list_artifacts(run_id)]
    message = error.value.message
    assert message.startswith("storing b/c.txt failed; 1 of 3 files were stored before it (a.txt); 1 after")
    assert "'b'" in message and paths == ["a.txt", "b"]


def test_log_artifacts_on_the_aio_client(
    artifacts_daemon: InProcessDaemon, run_id: str, tmp_path: Path
) -> None:
    files = a_tree(tmp_path / "out")

    async def scenario() -> list[str]:
        async with tessera.aio.Client(artifacts_daemon.target) as client:
            stored = await client.training.log_artifacts(run_id, tmp_path / "out")
            with pytest.raises(tessera.NotFound, match="none of the 4 files was stored"):
                await client.training.log_artifacts("run-nosuchrun", tmp_path / "out")
            return [a.path for a in stored]

    assert asyncio.run(scenario()) == sorted(files)


def test_a_failed_download_leaves_no_directories_made_for_it(
    artifacts_daemon: InProcessDaemon, run_id: str, tmp_path: Path
) -> None:
    source = tmp_path / "f.bin"
    source.write_bytes(b"abc")
    (tmp_path / "tree" / "c").mkdir(parents=True)
    (tmp_path / "tree" / "c" / "f.bin").write_bytes(b"there")
    with tessera.Client(artifacts_daemon.target) as client:
        with pytest.raises(tessera.NotFound):
            client.training.download_artifact("no-such-run", "f.bin", f"{tmp_path}/out/x/y/")
        client.training.log_artifact(run_id, source, "a/b")
        client.training.log_artifact(run_id, source, "c")
        with pytest.raises(FileExistsError):
            client.training.download_artifacts(run_id, "", tmp_path / "tree", overwrite=False)
    assert not (tmp_path / "out").exists()
    assert not (tmp_path / "tree" / "a").exists()
