"""client.datasets.download across a broken stream: it goes on from the bytes it has written,
after a daemon restart within one call or, with resume=True, after an earlier call gave up; a
partial file of another dataset version is never resumed into."""

from __future__ import annotations

import asyncio
import errno
import hashlib
import os
import stat
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import tessera
import tessera.aio
from tessera import transfer
from tessera.v1 import datasets_pb2
from tests.conftest import InProcessDaemon, daemon_settings
from tests.integration.sdk.download_resume import CutOnce, partials

CHUNK = 4096


@pytest.fixture
def clips_file(tmp_path: Path) -> Path:
    path = tmp_path / "clips.npz"
    np.savez(path, x=np.random.default_rng(0).normal(size=(4096, 1024)).astype(np.float32))
    return path


def test_a_download_broken_by_a_daemon_restart_goes_on_from_the_bytes_written(tmp_path, out, clips_file):
    data = clips_file.read_bytes()
    data_dir = tmp_path / "data"
    first = InProcessDaemon(daemon_settings(data_dir)).start()
    port = first.daemon.port
    restarted: list[InProcessDaemon] = []
    progress: list[int] = []
    retry = tessera.RetryPolicy(attempts=100, initial_backoff_s=0.05, max_backoff_s=0.5)

    def restart_midway(done: int, total: int) -> None:
        progress.append(done)
        if done >= total // 2 and not restarted:
            first.stop(grace=0)
            restarted.append(InProcessDaemon(daemon_settings(data_dir, listen=f"127.0.0.1:{port}")).start())

    try:
        with tessera.Client(first.target, timeout=30, retry=retry) as client:
            client.datasets.push("clips", clips_file)
            header = client.datasets.download(
                "clips", out / "copy.npz", progress=restart_midway, chunk_size=CHUNK
            )
    finally:
        for daemon in restarted:
            daemon.stop()
    assert restarted, "the download ended before the daemon was restarted"
    assert (out / "copy.npz").read_bytes() == data
    assert header.sha256 == hashlib.sha256(data).hexdigest()
    # Resumed, not started again: no byte was written twice.
    assert progress == sorted(set(progress)) and progress[-1] == len(data)
    assert partials(out) == []


def test_a_download_that_gave_up_keeps_its_bytes_for_resume(daemon, proxy_to, out, clips_file):
    data = clips_file.read_bytes()
    proxy = proxy_to(daemon.daemon.port)
    with tessera.Client(proxy.target, timeout=30, retry=tessera.RetryPolicy(attempts=1)) as client:
        client.datasets.push("clips", clips_file)
        with pytest.raises(tessera.Unavailable) as gave_up:
            client.datasets.download("clips:1", out / "copy.npz", progress=CutOnce(proxy), chunk_size=CHUNK)
    assert "resume=True" in gave_up.value.message, gave_up.value.message
    assert not (out / "copy.npz").exists()
    assert partials(out)
    resumed_from: list[int] = []
    with tessera.Client(daemon.target, timeout=30) as client:
        client.datasets.download(
            "clips:1", out / "copy.npz", resume=True, progress=lambda done, _: resumed_from.append(done)
        )
    assert (out / "copy.npz").read_bytes() == data
    assert resumed_from[0] >= len(data) // 2
    assert partials(out) == []


def test_resume_into_the_partial_file_of_another_version_is_refused_and_keeps_it(
    daemon, proxy_to, tmp_path, out, clips_file
):
    proxy = proxy_to(daemon.daemon.port)
    with tessera.Client(proxy.target, timeout=30, retry=tessera.RetryPolicy(attempts=1)) as client:
        client.datasets.push("clips", clips_file)
        second = tmp_path / "second.npz"
        np.savez(second, x=np.ones((3, 2), np.float32))
        client.datasets.push("clips", second)
        with pytest.raises(tessera.Unavailable):
            client.datasets.download("clips:1", out / "copy.npz", progress=CutOnce(proxy), chunk_size=CHUNK)
    kept = {name: (out / name).read_bytes() for name in partials(out)}
    with tessera.Client(daemon.target, timeout=30) as client:
        with pytest.raises(ValueError, match="the partial download ") as refused:
            client.datasets.download("clips", out / "copy.npz", resume=True)
        assert str(refused.value).startswith(f"{out / 'copy.npz'}: the partial download ")
        assert "of clips:1" in str(refused.value) and "not of clips:2" in str(refused.value)
        assert {name: (out / name).read_bytes() for name in partials(out)} == kept
        assert not (out / "copy.npz").exists()
        # Without resume, it starts again from the first byte.
        client.datasets.download("clips", out / "copy.npz")
    assert (out / "copy.npz").read_bytes() == second.read_bytes()
    assert partials(out) == []


def test_resume_with_no_partial_file_downloads_it_whole(client, clips_file, tmp_path):
    client.datasets.push("clips", clips_file)
    client.datasets.download("clips", tmp_path / "copy.npz", resume=True)
    assert (tmp_path / "copy.npz").read_bytes() == clips_file.read_bytes()


def test_the_asyncio_client_reconnects_and_resumes_too(daemon, proxy_to, out, clips_file):
    data = clips_file.read_bytes()
    proxy = proxy_to(daemon.daemon.port)
    cut_once_past_half = CutOnce(proxy)

    async def download() -> None:
        retry = tessera.RetryPolicy(attempts=5, initial_backoff_s=0.05, max_backoff_s=0.2)
        async with tessera.aio.Client(proxy.target, timeout=30, retry=retry) as client:
            await client.datasets.push("clips", clips_file)
            await client.datasets.download(
                "clips", out / "reconnected.npz", progress=cut_once_past_half, chunk_size=CHUNK
            )
        cut_once_past_half.wanted = 2
        async with tessera.aio.Client(
            proxy.target, timeout=30, retry=tessera.RetryPolicy(attempts=1)
        ) as client:
            with pytest.raises(tessera.Unavailable, match="resume=True"):
                await client.datasets.download(
                    "clips", out / "resumed.npz", progress=cut_once_past_half, chunk_size=CHUNK
                )
            kept_after_the_cut.extend(partials(out))
            await client.datasets.download(
                "clips", out / "resumed.npz", resume=True, progress=lambda done, _: resumed_from.append(done)
            )

    kept_after_the_cut: list[str] = []
    resumed_from: list[int] = []
    asyncio.run(download())
    assert kept_after_the_cut
    assert resumed_from[0] > 0
    assert proxy.cuts == 2
    assert (out / "reconnected.npz").read_bytes() == data == (out / "resumed.npz").read_bytes()
    assert partials(out) == []


def test_a_resume_from_bytes_damaged_on_the_disk_is_data_loss_and_leaves_no_file(
    daemon, proxy_to, out, clips_file
):
    proxy = proxy_to(daemon.daemon.port)
    with tessera.Client(proxy.target, timeout=30, retry=tessera.RetryPolicy(attempts=1)) as client:
        client.datasets.push("clips", clips_file)
        with pytest.raises(tessera.Unavailable):
            client.datasets.download("clips", out / "copy.npz", progress=CutOnce(proxy), chunk_size=CHUNK)
    (partial,) = out.glob(".*.partial")
    damaged = bytearray(partial.read_bytes())
    damaged[100] ^= 0xFF
    partial.write_bytes(bytes(damaged))
    with tessera.Client(daemon.target, timeout=30) as client:
        with pytest.raises(tessera.DataLoss, match=r"download of copy\.npz is corrupt"):
            client.datasets.download("clips", out / "copy.npz", resume=True)
        assert list(out.iterdir()) == []
        client.datasets.download("clips", out / "copy.npz", resume=True)
    assert (out / "copy.npz").read_bytes() == clips_file.read_bytes()


def test_a_resumed_download_of_a_file_damaged_at_the_daemon_keeps_none_of_its_bytes(
    client, data_dir, out, clips_file
):
    # The daemon sends every chunk but the last before its hash check fails: those bytes were
    # kept, and the user told to resume from the daemon's damaged bytes.
    version = client.datasets.push("clips", clips_file)
    blob = data_dir / "blobs" / "sha256" / version.sha256[:2] / version.sha256[2:]
    damaged = bytearray(blob.read_bytes())
    damaged[100] ^= 0xFF
    blob.chmod(0o644)
    blob.write_bytes(bytes(damaged))
    with pytest.raises(tessera.DataLoss, match="is damaged on disk") as refused:
        client.datasets.download("clips", out / "copy.npz", resume=True, chunk_size=CHUNK)
    assert "kept" not in refused.value.message and "resume" not in refused.value.message, (
        refused.value.message
    )
    assert list(out.iterdir()) == []


def test_a_download_past_its_timeout_keeps_its_bytes_and_says_how_to_go_on(client, out, clips_file):
    client.datasets.push("clips", clips_file)
    stalled: list[int] = []

    def stall_past_the_timeout(done: int, total: int) -> None:
        if done >= total // 2 and not stalled:
            stalled.append(done)
            time.sleep(3)

    with pytest.raises(tessera.DeadlineExceeded) as ran_out:
        client.datasets.download(
            "clips", out / "copy.npz", progress=stall_past_the_timeout, chunk_size=CHUNK, timeout=2
        )
    message = ran_out.value.message
    assert message.count("bytes are kept in ") == 1 and message.count("resume=True") == 1, message
    assert partials(out) and not (out / "copy.npz").exists()
    resumed_from: list[int] = []
    client.datasets.download(
        "clips", out / "copy.npz", resume=True, progress=lambda done, _: resumed_from.append(done)
    )
    assert (out / "copy.npz").read_bytes() == clips_file.read_bytes()
    assert resumed_from[0] > 0
    assert partials(out) == []


def test_a_second_download_to_the_same_file_while_one_runs_is_refused_and_spares_it(
    client, tmp_path, clips_file
):
    data = clips_file.read_bytes()
    client.datasets.push("clips", clips_file)
    out = tmp_path / "copy.npz"
    refusals: list[str] = []

    def try_another_midway(done: int, total: int) -> None:
        if done >= total // 2 and not refusals:
            with pytest.raises(ValueError, match="another download to it is running") as refused:
                client.datasets.download("clips", out, chunk_size=CHUNK)
            refusals.append(str(refused.value))

    client.datasets.download("clips", out, progress=try_another_midway, chunk_size=CHUNK)
    assert refusals
    assert out.read_bytes() == data
    assert partials(tmp_path) == []


@dataclass(frozen=True)
class Header:
    sha256: str
    size_bytes: int


def header_of(data: bytes) -> Header:
    return Header(hashlib.sha256(data).hexdigest(), len(data))


def sink(path: Path, overwrite: bool = False) -> transfer.ResumableDownloadSink[Header]:
    return transfer.ResumableDownloadSink(path, None, overwrite, resume=False, describe=lambda _: "clips:1")


def locking_after(monkeypatch, step: Callable[[], object]) -> None:
    """The next download to lock its partial file does `step` between opening and locking it:
    the interleaving of two downloads where the second opens the first's file before the first
    lets go of it and locks it after."""
    lock = transfer._lock_exclusively
    steps = [step]

    def step_then_lock(fd: int) -> bool:
        while steps:
            steps.pop()()
        return lock(fd)

    monkeypatch.setattr(transfer, "_lock_exclusively", step_then_lock)


def test_a_download_that_locks_the_partial_file_after_it_became_the_file_spares_the_file(
    monkeypatch, tmp_path
):
    data, path = b"first download" * 100, tmp_path / "copy.npz"
    first = sink(path)
    first.start(header_of(data))
    first.write(data)
    locking_after(monkeypatch, first.finish)
    second = sink(path, overwrite=True)
    other = b"second download"
    second.start(header_of(other))
    assert path.read_bytes() == data
    second.write(other)
    second.finish()
    assert path.read_bytes() == other
    assert partials(tmp_path) == []


def test_a_download_that_locks_the_partial_file_after_another_removed_it_writes_its_own(
    monkeypatch, tmp_path
):
    path = tmp_path / "copy.npz"
    first = sink(path)
    first.start(header_of(b"x"))
    first.write(b"y")
    locking_after(monkeypatch, lambda: first.abort(tessera.DataLoss("corrupt")))
    second = sink(path)
    data = b"second download"
    second.start(header_of(data))
    second.write(data)
    second.finish()
    assert path.read_bytes() == data
    assert partials(tmp_path) == []


def test_a_hard_link_planted_at_the_partial_files_name_is_refused_and_not_written_through(
    client, tmp_path, out, clips_file
):
    client.datasets.push("clips", clips_file)
    victim = tmp_path / "victim"
    victim.write_bytes(b"not yours")
    partial, _ = transfer.partial_names(out / "copy.npz")
    os.link(victim, partial)
    with pytest.raises(ValueError, match="has other links") as refused:
        client.datasets.download("clips", out / "copy.npz")
    assert str(partial) in str(refused.value)
    assert victim.read_bytes() == b"not yours"
    assert not (out / "copy.npz").exists()


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs on this system")
@pytest.mark.parametrize("resume", [False, True])
def test_a_fifo_planted_at_the_partial_files_name_is_refused_and_left_as_it_is(
    client, out, clips_file, resume
):
    """A FIFO (or a device) at the name is refused before the download writes, reads or waits on
    it: opened, a FIFO blocks for a reader where O_RDWR does not open it at once, and a device
    may act on being opened."""
    client.datasets.push("clips", clips_file)
    partial, _ = transfer.partial_names(out / "copy.npz")
    os.mkfifo(partial)
    with pytest.raises(ValueError, match="is not a regular file") as refused:
        client.datasets.download("clips", out / "copy.npz", resume=resume)
    assert str(refused.value).startswith(f"{out / 'copy.npz'}: its partial download {partial} ")
    assert stat.S_ISFIFO(os.lstat(partial).st_mode)
    assert partials(out) == [partial.name]


def test_a_lock_that_fails_outright_leaves_no_partial_file(monkeypatch, tmp_path):
    def fail(fd: int) -> bool:
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(transfer, "_lock_exclusively", fail)
    with pytest.raises(OSError, match="No locks available"):
        sink(tmp_path / "copy.npz")
    assert partials(tmp_path) == []


def test_a_partial_file_longer_than_the_file_is_started_again_from_the_first_byte(tmp_path):
    data, path = b"0123456789" * 10, tmp_path / "copy.npz"
    first = sink(path)
    first.start(header_of(data))
    first.write(data[:40])
    first.abort(tessera.Unavailable("cut"))
    (partial,) = tmp_path.glob(".*.partial")
    partial.write_bytes(partial.read_bytes() + b"x" * 100)
    resumed = transfer.ResumableDownloadSink(path, None, False, resume=True, describe=lambda _: "clips:1")
    resumed.start(header_of(data))
    assert resumed.offset() == 0
    resumed.write(data)
    resumed.finish()
    assert path.read_bytes() == data


def test_a_download_whose_client_was_closed_midway_leaves_no_bytes(daemon, out, clips_file):
    client = tessera.Client(daemon.target, timeout=30)
    client.datasets.push("clips", clips_file)

    closed: list[int] = []

    def close_midway(done: int, total: int) -> None:
        if done >= total // 2 and not closed:
            closed.append(done)
            client.close()

    with pytest.raises(tessera.Cancelled, match="was closed"):
        client.datasets.download("clips", out / "copy.npz", progress=close_midway, chunk_size=CHUNK)
    assert list(out.iterdir()) == []


def test_an_asyncio_download_cancelled_while_its_partial_file_is_opened_leaves_none(
    monkeypatch, daemon, out, clips_file
):
    opening, go_on = threading.Event(), threading.Event()
    lock = transfer._lock_exclusively

    def lock_once_cancelled(fd: int) -> bool:
        opening.set()
        go_on.wait()
        return lock(fd)

    async def cancel_while_opening() -> None:
        async with tessera.aio.Client(daemon.target, timeout=30) as client:
            await client.datasets.push("clips", clips_file)
            monkeypatch.setattr(transfer, "_lock_exclusively", lock_once_cancelled)
            download = asyncio.create_task(client.datasets.download("clips", out / "copy.npz"))
            await asyncio.to_thread(opening.wait)
            download.cancel()
            with pytest.raises(asyncio.CancelledError):
                await download
            go_on.set()
            for _ in range(500):
                if not partials(out):
                    break
                await asyncio.sleep(0.01)

    asyncio.run(cancel_while_opening())
    assert partials(out) == []


def test_an_asyncio_download_cancelled_twice_mid_write_aborts_only_once_the_write_ended(
    monkeypatch, daemon, out, clips_file
):
    """A second cancel (a TaskGroup's teardown, asyncio.run's shutdown) while the first waits on
    a write in flight must not abort the partial file under that write."""
    steps: list[str] = []
    writing, go_on = threading.Event(), threading.Event()
    write, abort = transfer.ResumableDownloadSink.write, transfer.ResumableDownloadSink.abort

    def held_write(self, chunk: bytes) -> None:
        if self.size and not writing.is_set():
            steps.append("write start")
            writing.set()
            go_on.wait()
            steps.append("write end")
        write(self, chunk)

    def recorded_abort(self, error: BaseException) -> BaseException:
        steps.append("abort")
        return abort(self, error)

    async def cancel_twice_while_writing() -> None:
        async with tessera.aio.Client(daemon.target, timeout=30) as client:
            await client.datasets.push("clips", clips_file)
            monkeypatch.setattr(transfer.ResumableDownloadSink, "write", held_write)
            monkeypatch.setattr(transfer.ResumableDownloadSink, "abort", recorded_abort)
            download = asyncio.create_task(
                client.datasets.download("clips", out / "copy.npz", chunk_size=CHUNK)
            )
            await asyncio.to_thread(writing.wait)
            download.cancel()
            await asyncio.sleep(0.05)
            download.cancel()
            # Time for an abort started under the write to show itself.
            await asyncio.sleep(0.2)
            go_on.set()
            with pytest.raises(asyncio.CancelledError):
                await download

    asyncio.run(cancel_twice_while_writing())
    assert steps == ["write start", "write end", "abort"]
    assert partials(out) == []


def test_bytes_past_the_headers_size_are_refused_naming_a_daemon_that_ignores_offset(tmp_path):
    """A daemon older than the SDK drops the unknown `offset` and sends the file from its first
    byte: appended after the kept bytes, it would take twice the file's room on the disk."""
    data, path = b"0123456789" * 10, tmp_path / "copy.npz"
    first = sink(path)
    first.start(header_of(data))
    first.write(data[:40])
    first.abort(tessera.Unavailable("cut"))
    kept = {name: (tmp_path / name).read_bytes() for name in partials(tmp_path)}
    resumed = transfer.ResumableDownloadSink(path, None, False, resume=True, describe=lambda _: "clips:1")
    resumed.start(header_of(data))
    assert resumed.offset() == 40
    resumed.write(data[:50])
    with pytest.raises(tessera.DataLoss) as refused:
        resumed.write(data[50:])
    message = str(refused.value)
    assert "more than the 100 bytes of clips:1" in message, message
    assert "ignores the offset" in message and "without resume=True" in message, message
    resumed.abort(refused.value)
    # The bytes this download started from are kept as they were; what it appended is not.
    assert {name: (tmp_path / name).read_bytes() for name in partials(tmp_path)} == kept
    assert not path.exists()


def test_a_fresh_download_sent_more_than_its_headers_size_is_refused_and_leaves_nothing(tmp_path):
    data, path = b"0123456789" * 10, tmp_path / "copy.npz"
    fresh = sink(path)
    fresh.start(header_of(data))
    fresh.write(data)
    with pytest.raises(tessera.DataLoss, match="more than the 100 bytes") as refused:
        fresh.write(b"x")
    # Its stream asked from the first byte: an offset ignored is no reason.
    assert "offset" not in str(refused.value), refused.value
    fresh.abort(refused.value)
    assert partials(tmp_path) == []
    assert not path.exists()


class HeldWhileOpening:
    """Downloads patched to wait, as they open their partial file, until `go_on` is set: `opening`
    is set once one waits there, `aborted` once a partial file's abort ran, on a thread kept in
    `abort_threads`."""

    def __init__(self) -> None:
        self.opening, self.go_on, self.aborted = threading.Event(), threading.Event(), threading.Event()
        self.abort_threads: list[int] = []

    def patch(self, monkeypatch: pytest.MonkeyPatch, wait_s: float | None) -> None:
        """From now on, each opening waits for `go_on` (at most `wait_s`; None: for as long as it takes)."""
        lock, abort = transfer._lock_exclusively, transfer.ResumableDownloadSink.abort

        def lock_once_let_go(fd: int) -> bool:
            self.opening.set()
            self.go_on.wait(wait_s)
            return lock(fd)

        def recorded_abort(sink: transfer.ResumableDownloadSink[Any], error: BaseException) -> None:
            self.abort_threads.append(threading.get_ident())
            abort(sink, error)
            self.aborted.set()

        monkeypatch.setattr(transfer, "_lock_exclusively", lock_once_let_go)
        monkeypatch.setattr(transfer.ResumableDownloadSink, "abort", recorded_abort)


def test_the_partial_file_of_a_download_cancelled_while_opening_is_let_go_of_off_the_loop(
    monkeypatch, daemon, out, clips_file
):
    held = HeldWhileOpening()

    async def cancel_while_opening() -> int:
        async with tessera.aio.Client(daemon.target, timeout=30) as client:
            await client.datasets.push("clips", clips_file)
            held.patch(monkeypatch, wait_s=None)
            download = asyncio.create_task(client.datasets.download("clips", out / "copy.npz"))
            await asyncio.to_thread(held.opening.wait)
            download.cancel()
            with pytest.raises(asyncio.CancelledError):
                await download
            held.go_on.set()
            await asyncio.to_thread(held.aborted.wait, 30)
        return threading.get_ident()

    loop_thread = asyncio.run(cancel_while_opening())
    assert held.abort_threads and loop_thread not in held.abort_threads
    assert partials(out) == []


def test_a_download_still_opening_when_asyncio_run_ends_lets_its_partial_file_go(
    monkeypatch, daemon, out, clips_file
):
    """asyncio.run's shutdown cancels every task left, the thread opening the partial file's
    included where that is a task: its file was then never aborted."""
    held = HeldWhileOpening()

    async def end_while_opening() -> None:
        async with tessera.aio.Client(daemon.target, timeout=30) as client:
            await client.datasets.push("clips", clips_file)
            held.patch(monkeypatch, wait_s=30)
            asyncio.get_running_loop().create_task(client.datasets.download("clips", out / "copy.npz"))
            await asyncio.to_thread(held.opening.wait)
        # The opening thread goes on once asyncio.run has cancelled the download left running
        # (its shutdown then waits for the executor's threads).
        threading.Thread(target=lambda: (time.sleep(0.5), held.go_on.set())).start()

    asyncio.run(end_while_opening())
    assert held.aborted.wait(30)
    assert partials(out) == []


def cut_after_the_first_chunk(monkeypatch, proxy) -> None:
    """The proxy cuts every connection once `load` has the first chunk in memory (it reports no
    progress to cut from)."""
    write = tessera.datasets.ArraysSink.write

    def write_then_cut(self, chunk: bytes) -> None:
        write(self, chunk)
        if not proxy.cuts:
            proxy.cut()

    monkeypatch.setattr(tessera.datasets.ArraysSink, "write", write_then_cut)


def test_a_load_broken_midway_reconnects_and_goes_on_from_the_bytes_received(
    monkeypatch, daemon, proxy_to, clips_file
):
    proxy = proxy_to(daemon.daemon.port)
    retry = tessera.RetryPolicy(attempts=5, initial_backoff_s=0.05, max_backoff_s=0.2)
    with tessera.Client(proxy.target, timeout=30, retry=retry) as client:
        client.datasets.push("clips", clips_file)
        cut_after_the_first_chunk(monkeypatch, proxy)
        arrays = client.datasets.load("clips")
    assert proxy.cuts == 1
    with np.load(clips_file) as archive:
        np.testing.assert_array_equal(arrays["x"], archive["x"])


def test_the_asyncio_client_reconnects_a_broken_load_too(monkeypatch, daemon, proxy_to, clips_file):
    proxy = proxy_to(daemon.daemon.port)

    async def load() -> dict[str, np.ndarray]:
        retry = tessera.RetryPolicy(attempts=5, initial_backoff_s=0.05, max_backoff_s=0.2)
        async with tessera.aio.Client(proxy.target, timeout=30, retry=retry) as client:
            await client.datasets.push("clips", clips_file)
            cut_after_the_first_chunk(monkeypatch, proxy)
            return await client.datasets.load("clips")

    arrays = asyncio.run(load())
    assert proxy.cuts == 1
    with np.load(clips_file) as archive:
        np.testing.assert_array_equal(arrays["x"], archive["x"])


def test_an_asyncio_load_cancelled_while_it_parses_is_cancelled_at_once(monkeypatch, daemon, clips_file):
    """Parsing publishes no file: the cancel is raised while the thread still parses, which ends
    alone."""
    parsing = threading.Event()
    go_on = threading.Event()
    parsed = threading.Event()
    finish = tessera.datasets.ArraysSink.finish

    def finish_once_let(self: tessera.datasets.ArraysSink) -> dict[str, np.ndarray]:
        parsing.set()
        go_on.wait(30)
        try:
            return finish(self)
        finally:
            parsed.set()

    monkeypatch.setattr(tessera.datasets.ArraysSink, "finish", finish_once_let)

    async def cancel_while_parsing() -> None:
        async with tessera.aio.Client(daemon.target, timeout=30) as client:
            await client.datasets.push("clips", clips_file)
            loading = asyncio.ensure_future(client.datasets.load("clips"))
            assert await asyncio.to_thread(parsing.wait, 30)
            loading.cancel()
            try:
                with pytest.raises(asyncio.CancelledError):
                    await loading
                assert not parsed.is_set()
            finally:
                go_on.set()

    asyncio.run(cancel_while_parsing())
    assert parsed.wait(30)


def test_a_load_that_gave_up_says_to_load_again(monkeypatch, daemon, proxy_to, clips_file):
    proxy = proxy_to(daemon.daemon.port)
    with tessera.Client(proxy.target, timeout=30, retry=tessera.RetryPolicy(attempts=1)) as client:
        client.datasets.push("clips", clips_file)
        cut_after_the_first_chunk(monkeypatch, proxy)
        with pytest.raises(tessera.Unavailable) as gave_up:
            client.datasets.load("clips")
    assert "gave up loading clips after 0 reconnects" in gave_up.value.message, gave_up.value.message
    assert "load it again" in gave_up.value.message, gave_up.value.message


def dataset_header(data: bytes) -> datasets_pb2.DatasetVersion:
    return datasets_pb2.DatasetVersion(
        name="clips", version=1, sha256=hashlib.sha256(data).hexdigest(), size_bytes=len(data)
    )


def test_a_load_reconnected_to_another_file_is_refused_as_changed():
    data = b"0123456789" * 10
    arrays = tessera.datasets.ArraysSink()
    arrays.start(dataset_header(data))
    arrays.write(data[:40])
    with pytest.raises(tessera.DataLoss) as refused:
        arrays.start(dataset_header(b"another file"))
    message = refused.value.message
    assert "clips:1 changed while it was loading" in message and "load it again" in message, message


def test_a_load_sent_more_than_its_headers_size_is_refused_before_holding_it():
    data = b"0123456789" * 10
    arrays = tessera.datasets.ArraysSink()
    arrays.start(dataset_header(data))
    arrays.write(data[:60])
    with pytest.raises(tessera.DataLoss, match="more than the 100 bytes of clips:1") as refused:
        arrays.write(data)
    # Its stream asked from the first byte: an offset ignored is no reason.
    assert "offset" not in refused.value.message, refused.value.message
    assert arrays.offset() == 60


def test_a_reconnected_load_sent_more_than_its_headers_size_names_a_daemon_that_ignores_offset():
    data = b"0123456789" * 10
    arrays = tessera.datasets.ArraysSink()
    arrays.start(dataset_header(data))
    arrays.write(data[:60])
    arrays.start(dataset_header(data))
    with pytest.raises(tessera.DataLoss) as refused:
        arrays.write(data)
    message = refused.value.message
    assert "more than the 100 bytes of clips:1 (its stream sent from byte 60)" in message, message
    assert "ignores the offset" in message and message.endswith("load it again"), message


def test_a_download_with_resume_that_the_caller_stops_keeps_its_bytes_and_one_without_removes_them(
    daemon, out, clips_file
):
    """Ctrl-C (KeyboardInterrupt, raised wherever the caller's code is) or a cancelled task of a
    download with resume=True removed its partial file, the bytes an earlier download had kept
    included: resume is there to go on from them. Without resume, nothing is left."""
    data = clips_file.read_bytes()
    partial, record = transfer.partial_names(out / "copy.npz")

    def interrupt_past(fraction: float) -> Callable[[int, int], None]:
        def progress(done: int, total: int) -> None:
            if done >= total * fraction:
                raise KeyboardInterrupt

        return progress

    with tessera.Client(daemon.target, timeout=30) as client:
        client.datasets.push("clips", clips_file)
        with pytest.raises(KeyboardInterrupt):
            client.datasets.download(
                "clips", out / "copy.npz", progress=interrupt_past(0.5), chunk_size=CHUNK
            )
        assert partials(out) == []
        with pytest.raises(KeyboardInterrupt):
            client.datasets.download(
                "clips", out / "copy.npz", resume=True, progress=interrupt_past(0.25), chunk_size=CHUNK
            )
        first = partial.read_bytes()
        assert len(first) >= len(data) // 4 and data.startswith(first) and record.exists()
        # Stopped as it goes on: the bytes kept stay, with those written since.
        with pytest.raises(KeyboardInterrupt):
            client.datasets.download(
                "clips", out / "copy.npz", resume=True, progress=interrupt_past(0.5), chunk_size=CHUNK
            )
        second = partial.read_bytes()
        assert len(second) >= len(data) // 2 and second.startswith(first) and data.startswith(second)

    async def cancel_past_three_quarters() -> None:
        async with tessera.aio.Client(daemon.target, timeout=30) as client:
            task = asyncio.current_task()
            assert task is not None

            def cancel(done: int, total: int) -> None:
                if done >= total * 0.75 and not task.cancelling():
                    task.cancel()

            await client.datasets.download(
                "clips", out / "copy.npz", resume=True, progress=cancel, chunk_size=CHUNK
            )

    with pytest.raises(asyncio.CancelledError):
        asyncio.run(cancel_past_three_quarters())
    third = partial.read_bytes()
    assert len(third) >= len(data) * 3 // 4 and third.startswith(second) and data.startswith(third)
    with tessera.Client(daemon.target, timeout=30) as client:
        client.datasets.download("clips", out / "copy.npz", resume=True)
    assert (out / "copy.npz").read_bytes() == data
    assert partials(out) == []
