"""client.models.download and client.training.download_artifact(s) across a broken stream: they go
on from the bytes written, within one call or, with resume=True, after an earlier call gave up;
a partial file of another version or another artifact is never resumed into."""

from __future__ import annotations

import asyncio
import errno
import json
import subprocess
import threading
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

import tessera
import tessera.aio
from tessera import transfer
from tests.integration.sdk.download_resume import CutOnce, partials
from tests.tmpfs import tmpfs

CHUNK = 4096
FEATURES = 1 << 21


def big_onnx(path: Path, seed: int = 0, features: int = FEATURES) -> Path:
    """An ONNX model of about 4 bytes a feature (8 MiB by default; a scale per feature): long
    enough to cut its download midway."""
    scale = np.random.default_rng(seed).normal(size=features).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Mul", ["input", "scale"], ["output"])],
        "scaled",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", features])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", features])],
        initializer=[onnx.numpy_helper.from_array(scale, "scale")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


@pytest.fixture
def model_file(tmp_path: Path) -> Path:
    return big_onnx(tmp_path / "big.onnx")


@pytest.fixture
def artifact_file(tmp_path: Path) -> Path:
    path = tmp_path / "weights.bin"
    path.write_bytes(np.random.default_rng(1).bytes(8 << 20))
    return path


def artifact_download_that_gave_up(
    daemon, proxy_to, out: Path, artifact_file: Path
) -> tuple[str, tessera.Unavailable]:
    """A run with `artifact_file` logged as weights.bin, and the error of its download to `out`
    cut once past half way with no retry: it gave up, its bytes and their record kept in `out`."""
    proxy = proxy_to(daemon.daemon.port)
    with tessera.Client(proxy.target, timeout=30, retry=tessera.RetryPolicy(attempts=1)) as client:
        run_id = client.training.create_run("resume", create_experiment=True).run_id
        client.training.log_artifact(run_id, artifact_file)
        with pytest.raises(tessera.Unavailable) as gave_up:
            client.training.download_artifact(
                run_id, "weights.bin", out, progress=CutOnce(proxy), chunk_size=CHUNK
            )
    return run_id, gave_up.value


def test_a_model_download_broken_midway_reconnects_and_goes_on_from_the_bytes_written(
    daemon, proxy_to, out, model_file
):
    proxy = proxy_to(daemon.daemon.port)
    cut = CutOnce(proxy)
    progress: list[int] = []

    def record_and_cut(done: int, total: int) -> None:
        progress.append(done)
        cut(done, total)

    retry = tessera.RetryPolicy(attempts=5, initial_backoff_s=0.05, max_backoff_s=0.2)
    with tessera.Client(proxy.target, timeout=30, retry=retry) as client:
        client.models.push("big", model_file)
        version = client.models.download("big", out / "big.onnx", progress=record_and_cut, chunk_size=CHUNK)
    assert proxy.cuts == 1
    assert (out / "big.onnx").read_bytes() == model_file.read_bytes()
    assert (version.model, version.version) == ("big", 1)
    # Resumed, not started again: no byte was written twice.
    assert progress == sorted(set(progress)) and progress[-1] == model_file.stat().st_size
    assert partials(out) == []


def test_a_model_download_that_gave_up_keeps_its_bytes_for_resume(daemon, proxy_to, out, model_file):
    proxy = proxy_to(daemon.daemon.port)
    with tessera.Client(proxy.target, timeout=30, retry=tessera.RetryPolicy(attempts=1)) as client:
        client.models.push("big", model_file)
        with pytest.raises(tessera.Unavailable) as gave_up:
            client.models.download("big", out / "big.onnx", progress=CutOnce(proxy), chunk_size=CHUNK)
    assert "resume=True" in gave_up.value.message, gave_up.value.message
    assert not (out / "big.onnx").exists() and partials(out)
    resumed_from: list[int] = []
    with tessera.Client(daemon.target, timeout=30) as client:
        client.models.download(
            "big", out / "big.onnx", resume=True, progress=lambda done, _: resumed_from.append(done)
        )
    assert (out / "big.onnx").read_bytes() == model_file.read_bytes()
    assert resumed_from[0] >= model_file.stat().st_size // 2
    assert partials(out) == []


def test_resume_into_the_partial_file_of_another_model_version_is_refused_and_keeps_it(
    daemon, proxy_to, out, model_file, tmp_path
):
    proxy = proxy_to(daemon.daemon.port)
    with tessera.Client(proxy.target, timeout=30, retry=tessera.RetryPolicy(attempts=1)) as client:
        client.models.push("big", model_file)
        client.models.push("big", big_onnx(tmp_path / "second.onnx", seed=1))
        with pytest.raises(tessera.Unavailable):
            client.models.download("big", out / "big.onnx", 1, progress=CutOnce(proxy), chunk_size=CHUNK)
    kept = {name: (out / name).read_bytes() for name in partials(out)}
    with tessera.Client(daemon.target, timeout=30) as client:
        with pytest.raises(ValueError, match="the partial download ") as refused:
            client.models.download("big", out / "big.onnx", resume=True)
        assert "of big v1 (sha256 " in str(refused.value) and "not of big v2 (sha256 " in str(refused.value)
        assert {name: (out / name).read_bytes() for name in partials(out)} == kept
        assert not (out / "big.onnx").exists()
        client.models.download("big", out / "big.onnx", 1, resume=True)
    assert (out / "big.onnx").read_bytes() == model_file.read_bytes()
    assert partials(out) == []


def test_an_artifact_download_that_gave_up_keeps_its_bytes_for_resume(daemon, proxy_to, out, artifact_file):
    run_id, gave_up = artifact_download_that_gave_up(daemon, proxy_to, out, artifact_file)
    assert "resume=True" in gave_up.message, gave_up.message
    assert not (out / "weights.bin").exists() and partials(out)
    resumed_from: list[int] = []
    with tessera.Client(daemon.target, timeout=30) as client:
        client.training.download_artifact(
            run_id, "weights.bin", out, resume=True, progress=lambda done, _: resumed_from.append(done)
        )
    assert (out / "weights.bin").read_bytes() == artifact_file.read_bytes()
    assert resumed_from[0] >= artifact_file.stat().st_size // 2
    assert partials(out) == []


def test_resume_after_the_artifact_was_stored_again_is_refused_and_keeps_the_bytes(
    daemon, proxy_to, out, artifact_file
):
    run_id, _ = artifact_download_that_gave_up(daemon, proxy_to, out, artifact_file)
    kept = {name: (out / name).read_bytes() for name in partials(out)}
    artifact_file.write_bytes(b"stored again")
    with tessera.Client(daemon.target, timeout=30) as client:
        client.training.log_artifact(run_id, artifact_file)
        with pytest.raises(ValueError, match="the partial download ") as refused:
            client.training.download_artifact(run_id, "weights.bin", out, resume=True)
        message = str(refused.value)
        assert f"of artifact weights.bin of run {run_id} (sha256 " in message, message
        assert "download it without resume=True to start again" in message, message
        assert {name: (out / name).read_bytes() for name in partials(out)} == kept
        client.training.download_artifact(run_id, "weights.bin", out)
    assert (out / "weights.bin").read_bytes() == b"stored again"
    assert partials(out) == []


def test_download_artifacts_resumes_each_file_it_has_bytes_of(daemon, proxy_to, out, artifact_file):
    proxy = proxy_to(daemon.daemon.port)
    with tessera.Client(proxy.target, timeout=30, retry=tessera.RetryPolicy(attempts=1)) as client:
        run_id = client.training.create_run("resume", create_experiment=True).run_id
        client.training.log_artifact(run_id, artifact_file, "models")
        with pytest.raises(tessera.Unavailable):
            client.training.download_artifact(
                run_id, "models/weights.bin", f"{out / 'models'}/", progress=CutOnce(proxy), chunk_size=CHUNK
            )
    assert partials(out / "models")
    with tessera.Client(daemon.target, timeout=30) as client:
        local = client.training.download_artifacts(run_id, "models", out, resume=True)
    assert local == out / "models"
    assert (out / "models" / "weights.bin").read_bytes() == artifact_file.read_bytes()
    assert partials(out / "models") == []


def test_the_asyncio_client_reconnects_and_resumes_model_and_artifact_downloads(
    daemon, proxy_to, out, model_file, artifact_file
):
    proxy = proxy_to(daemon.daemon.port)

    async def download() -> None:
        retry = tessera.RetryPolicy(attempts=5, initial_backoff_s=0.05, max_backoff_s=0.2)
        async with tessera.aio.Client(proxy.target, timeout=30, retry=retry) as client:
            await client.models.push("big", model_file)
            await client.models.download(
                "big", out / "big.onnx", progress=CutOnce(proxy, 1), chunk_size=CHUNK
            )
            run = await client.training.create_run("resume", create_experiment=True)
            await client.training.log_artifact(run.run_id, artifact_file)
            await client.training.download_artifact(
                run.run_id, "weights.bin", out, progress=CutOnce(proxy, 2), chunk_size=CHUNK
            )

    asyncio.run(download())
    assert proxy.cuts == 2
    assert (out / "big.onnx").read_bytes() == model_file.read_bytes()
    assert (out / "weights.bin").read_bytes() == artifact_file.read_bytes()
    assert partials(out) == []


def test_the_asyncio_client_does_the_partial_files_work_off_its_event_loop(
    daemon, proxy_to, out, model_file, monkeypatch
):
    """Writing and hashing the partial file (and the kept bytes a resume reads back) would stall
    every other task on the loop for as long as the disk takes: they run on worker threads. The
    progress callback is still called on the loop, where an asyncio caller may use it."""
    proxy = proxy_to(daemon.daemon.port)
    threads: dict[str, set[int]] = {"start": set(), "write": set(), "progress": set()}
    for step in ("start", "write"):
        done = getattr(transfer.ResumableDownloadSink, step)

        def recorded(self, *args, _done=done, _step=step):
            threads[_step].add(threading.get_ident())
            return _done(self, *args)

        monkeypatch.setattr(transfer.ResumableDownloadSink, step, recorded)
    cut = CutOnce(proxy)

    def record_and_cut(done: int, total: int) -> None:
        threads["progress"].add(threading.get_ident())
        cut(done, total)

    async def download() -> int:
        retry = tessera.RetryPolicy(attempts=5, initial_backoff_s=0.05, max_backoff_s=0.2)
        async with tessera.aio.Client(proxy.target, timeout=30, retry=retry) as client:
            await client.models.push("big", model_file)
            await client.models.download("big", out / "big.onnx", progress=record_and_cut, chunk_size=CHUNK)
        return threading.get_ident()

    loop_thread = asyncio.run(download())
    assert proxy.cuts == 1
    assert threads["start"] and threads["write"]
    assert loop_thread not in threads["start"] | threads["write"]
    assert threads["progress"] == {loop_thread}
    assert (out / "big.onnx").read_bytes() == model_file.read_bytes()


def test_an_artifact_stored_again_smaller_midway_is_refused_as_changed_and_keeps_the_bytes(
    daemon, proxy_to, out, artifact_file, tmp_path
):
    """The reconnect asks for bytes past the end of the file now stored (OUT_OF_RANGE): the
    artifact changed, as a reconnect to another sha256 would say, and the bytes of the artifact as
    it was stay with their record."""
    proxy = proxy_to(daemon.daemon.port)
    smaller = tmp_path / "smaller" / "weights.bin"
    smaller.parent.mkdir()
    smaller.write_bytes(b"stored again")
    retry = tessera.RetryPolicy(attempts=5, initial_backoff_s=0.05, max_backoff_s=0.2)
    with tessera.Client(daemon.target, timeout=30) as direct:
        run_id = direct.training.create_run("resume", create_experiment=True).run_id
        direct.training.log_artifact(run_id, artifact_file)

        def cut_and_store_again(done: int, total: int) -> None:
            if done >= total // 2 and not proxy.cuts:
                # Cut first: the stream would go on meanwhile, and may end, while the upload runs.
                # This runs on the download's thread, so the reconnect waits for the upload.
                proxy.cut()
                direct.training.log_artifact(run_id, smaller)

        with (
            tessera.Client(proxy.target, timeout=30, retry=retry) as client,
            pytest.raises(tessera.DataLoss) as changed,
        ):
            client.training.download_artifact(
                run_id, "weights.bin", out, progress=cut_and_store_again, chunk_size=CHUNK
            )
    message = changed.value.message
    assert f"artifact weights.bin of run {run_id} changed while it was downloading" in message, message
    assert "without resume=True" in message, message
    assert not (out / "weights.bin").exists()
    (partial,) = (p for p in out.iterdir() if p.name.endswith(".partial"))
    assert artifact_file.read_bytes().startswith(partial.read_bytes()) and partial.stat().st_size
    with tessera.Client(daemon.target, timeout=30) as client:
        with pytest.raises(ValueError, match="the partial download "):
            client.training.download_artifact(run_id, "weights.bin", out, resume=True)
        client.training.download_artifact(run_id, "weights.bin", out)
    assert (out / "weights.bin").read_bytes() == b"stored again"
    assert partials(out) == []


@pytest.mark.parametrize("asyncio_client", [False, True])
def test_a_resume_with_every_byte_kept_reports_the_whole_file_done(
    daemon, proxy_to, out, artifact_file, asyncio_client
):
    """No chunk is left to write: the progress callback hears of the kept bytes all the same, so
    that a progress bar reaches 100%."""
    run_id, _ = artifact_download_that_gave_up(daemon, proxy_to, out, artifact_file)
    (partial,) = (p for p in out.iterdir() if p.name.endswith(".partial"))
    partial.write_bytes(artifact_file.read_bytes())
    size = artifact_file.stat().st_size
    progress: list[tuple[int, int]] = []

    def record(done: int, total: int) -> None:
        progress.append((done, total))

    if asyncio_client:

        async def resume() -> None:
            async with tessera.aio.Client(daemon.target, timeout=30) as client:
                await client.training.download_artifact(
                    run_id, "weights.bin", out, resume=True, progress=record
                )

        asyncio.run(resume())
    else:
        with tessera.Client(daemon.target, timeout=30) as client:
            client.training.download_artifact(run_id, "weights.bin", out, resume=True, progress=record)
    assert progress == [(size, size)]
    assert (out / "weights.bin").read_bytes() == artifact_file.read_bytes()


def test_an_artifact_download_with_resume_that_fills_the_disk_keeps_its_bytes_for_the_next(client, tmp_path):
    """As curl -C - and wget -c keep a partial file: the bytes written are kept with their record,
    the error says how many and how to go on, and the next resume, given room, goes on from them."""
    run_id = client.training.create_run("resume", create_experiment=True).run_id
    blob = np.random.default_rng(2).bytes(256 * 1024)
    (tmp_path / "weights.bin").write_bytes(blob)
    artifact = client.training.log_artifact(run_id, tmp_path / "weights.bin")
    with tmpfs(tmp_path / "disk", "size=128k") as disk:
        with pytest.raises(OSError, match="No space left on device") as full:
            client.training.download_artifact(run_id, "weights.bin", disk, resume=True, chunk_size=CHUNK)
        assert full.value.errno == errno.ENOSPC
        assert full.value.filename == str(disk / "weights.bin")
        partial, record = transfer.partial_names(disk / "weights.bin")
        held = partial.read_bytes()
        assert 0 < len(held) < len(blob) and held == blob[: len(held)]
        assert sorted(p.name for p in disk.iterdir()) == sorted([partial.name, record.name])
        assert json.loads(record.read_text())["sha256"] == artifact.sha256
        assert full.value.strerror == (
            "No space left on device\nthe disk had no room for the rest of the file: "
            f"{len(held)} of {len(blob)} bytes are kept in {partial}; free {len(blob) - len(held)} bytes "
            "and download again with resume=True to go on from them"
        )
        subprocess.run(["mount", "-o", "remount,size=512k", str(disk)], check=True)
        resumed_from: list[int] = []
        client.training.download_artifact(
            run_id, "weights.bin", disk, resume=True, progress=lambda done, _: resumed_from.append(done)
        )
        assert resumed_from[0] == len(held)
        assert (disk / "weights.bin").read_bytes() == blob
        assert partials(disk) == []


def test_an_artifact_download_without_resume_that_fills_the_disk_leaves_nothing(client, tmp_path):
    run_id = client.training.create_run("resume", create_experiment=True).run_id
    (tmp_path / "weights.bin").write_bytes(np.random.default_rng(2).bytes(256 * 1024))
    client.training.log_artifact(run_id, tmp_path / "weights.bin")
    with tmpfs(tmp_path / "disk", "size=128k") as disk:
        with pytest.raises(OSError, match="No space left on device") as full:
            client.training.download_artifact(run_id, "weights.bin", disk, chunk_size=CHUNK)
        assert full.value.errno == errno.ENOSPC
        assert full.value.strerror == "No space left on device"
        assert list(disk.iterdir()) == []


@pytest.mark.parametrize("resume", [True, False])
def test_a_model_download_the_daemon_refuses_midway_keeps_its_bytes_only_with_resume(
    daemon, proxy_to, out, model_file, resume
):
    """The version is deleted as the stream is cut: the reconnect is refused (NOT_FOUND), not a
    break to go on after. With resume the bytes written stay for the next resume."""
    proxy = proxy_to(daemon.daemon.port)
    cut = CutOnce(proxy)

    def delete_and_cut(done: int, total: int) -> None:
        if done >= total // 2 and not proxy.cuts:
            with tessera.Client(daemon.target, timeout=30) as direct:
                direct.models.delete_version("big", 1)
        cut(done, total)

    retry = tessera.RetryPolicy(attempts=5, initial_backoff_s=0.05, max_backoff_s=0.2)
    with tessera.Client(proxy.target, timeout=30, retry=retry) as client:
        client.models.push("big", model_file)
        client.models.push("big", model_file)
        with pytest.raises(tessera.NotFound) as refused:
            client.models.download(
                "big", out / "big.onnx", 1, progress=delete_and_cut, chunk_size=CHUNK, resume=resume
            )
    if not resume:
        assert list(out.iterdir()) == []
        assert "kept" not in refused.value.message
        return
    partial, record = transfer.partial_names(out / "big.onnx")
    assert partials(out) == sorted([partial.name, record.name])
    held = partial.read_bytes()
    assert model_file.stat().st_size // 2 <= len(held) and model_file.read_bytes().startswith(held)
    assert refused.value.message.endswith(
        f"\n{len(held)} of {model_file.stat().st_size} bytes are kept in {partial}; "
        "download again with resume=True to go on from them"
    ), refused.value.message


def test_a_whole_download_with_resume_that_cannot_take_its_name_is_kept_for_the_next(
    client, out, artifact_file
):
    """A file put at the name as the download ends (overwrite=False): the whole file, checked, is
    kept with its record, and the next resume puts it in place without a byte sent again."""
    run_id = client.training.create_run("resume", create_experiment=True).run_id
    client.training.log_artifact(run_id, artifact_file)
    size = artifact_file.stat().st_size

    def taken_at_the_end(done: int, total: int) -> None:
        if done == total:
            (out / "weights.bin").write_bytes(b"another's")

    with pytest.raises(FileExistsError) as taken:
        client.training.download_artifact(
            run_id, "weights.bin", out, overwrite=False, resume=True, progress=taken_at_the_end
        )
    partial, record = transfer.partial_names(out / "weights.bin")
    assert taken.value.strerror.endswith(
        f"\n{size} of {size} bytes are kept in {partial}; download again with resume=True to go on from them"
    ), taken.value.strerror
    assert partial.read_bytes() == artifact_file.read_bytes()
    assert sorted(p.name for p in out.iterdir()) == sorted([partial.name, record.name, "weights.bin"])
    (out / "weights.bin").unlink()
    resumed: list[int] = []
    client.training.download_artifact(
        run_id,
        "weights.bin",
        out,
        overwrite=False,
        resume=True,
        progress=lambda done, _: resumed.append(done),
    )
    assert resumed == [size]
    assert (out / "weights.bin").read_bytes() == artifact_file.read_bytes()
    assert partials(out) == []
