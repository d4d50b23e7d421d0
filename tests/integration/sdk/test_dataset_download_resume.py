"""client.datasets.download across a broken stream: it goes on from the bytes it has written,
after a daemon restart within one call or, with resume=True, after an earlier call gave up; a
partial file of another dataset version is never resumed into."""

from __future__ import annotations

import asyncio
import hashlib
import time
from pathlib import Path

import numpy as np
import pytest

import tessera
import tessera.aio
from tests.conftest import InProcessDaemon, daemon_settings

CHUNK = 4096


@pytest.fixture
def clips_file(tmp_path: Path) -> Path:
    path = tmp_path / "clips.npz"
    np.savez(path, x=np.random.default_rng(0).normal(size=(4096, 1024)).astype(np.float32))
    return path


def partials(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.startswith("."))


def test_a_download_broken_by_a_daemon_restart_goes_on_from_the_bytes_written(tmp_path, clips_file):
    data = clips_file.read_bytes()
    data_dir = tmp_path / "data"
    first = InProcessDaemon(daemon_settings(data_dir)).start()
    port = first.daemon.port
    restarted: list[InProcessDaemon] = []
    progress: list[int] = []
    retry = tessera.RetryPolicy(attempts=100, initial_backoff_s=0.05, max_backoff_s=0.5)
    out = tmp_path / "out"
    out.mkdir()

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


def test_a_download_that_gave_up_keeps_its_bytes_for_resume(daemon, proxy_to, tmp_path, clips_file):
    data = clips_file.read_bytes()
    proxy = proxy_to(daemon.daemon.port)
    out = tmp_path / "out"
    out.mkdir()

    def cut_midway(done: int, total: int) -> None:
        if done >= total // 2 and not proxy.cuts:
            proxy.cut()

    with tessera.Client(proxy.target, timeout=30, retry=tessera.RetryPolicy(attempts=1)) as client:
        client.datasets.push("clips", clips_file)
        with pytest.raises(tessera.Unavailable) as gave_up:
            client.datasets.download("clips:1", out / "copy.npz", progress=cut_midway, chunk_size=CHUNK)
    assert "resume=True" in gave_up.value.message, gave_up.value.message
    assert not (out / "copy.npz").exists()
    assert partials(out)
    resumed_from: list[int] = []
    with tessera.Client(daemon.target, timeout=30) as client:
        client.datasets.download(
            "clips:1", out / "copy.npz", resume=True, progress=lambda done, _: resumed_from.append(done)
        )
    assert (out / "copy.npz").read_bytes() == data
    assert resumed_from[0] > len(data) // 2
    assert partials(out) == []


def test_resume_into_the_partial_file_of_another_version_is_refused_and_keeps_it(
    daemon, proxy_to, tmp_path, clips_file
):
    proxy = proxy_to(daemon.daemon.port)
    out = tmp_path / "out"
    out.mkdir()

    def cut_midway(done: int, total: int) -> None:
        if done >= total // 2 and not proxy.cuts:
            proxy.cut()

    with tessera.Client(proxy.target, timeout=30, retry=tessera.RetryPolicy(attempts=1)) as client:
        client.datasets.push("clips", clips_file)
        second = tmp_path / "second.npz"
        np.savez(second, x=np.ones((3, 2), np.float32))
        client.datasets.push("clips", second)
        with pytest.raises(tessera.Unavailable):
            client.datasets.download("clips:1", out / "copy.npz", progress=cut_midway, chunk_size=CHUNK)
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


def test_the_asyncio_client_reconnects_and_resumes_too(daemon, proxy_to, tmp_path, clips_file):
    data = clips_file.read_bytes()
    proxy = proxy_to(daemon.daemon.port)
    out = tmp_path / "out"
    out.mkdir()

    def cut_once_past_half(done: int, total: int) -> None:
        if done >= total // 2 and proxy.cuts < cuts_wanted[-1]:
            proxy.cut()

    async def download() -> None:
        retry = tessera.RetryPolicy(attempts=5, initial_backoff_s=0.05, max_backoff_s=0.2)
        async with tessera.aio.Client(proxy.target, timeout=30, retry=retry) as client:
            await client.datasets.push("clips", clips_file)
            await client.datasets.download(
                "clips", out / "reconnected.npz", progress=cut_once_past_half, chunk_size=CHUNK
            )
        cuts_wanted.append(2)
        async with tessera.aio.Client(
            proxy.target, timeout=30, retry=tessera.RetryPolicy(attempts=1)
        ) as client:
            with pytest.raises(tessera.Unavailable, match="resume=True"):
                await client.datasets.download(
                    "clips", out / "resumed.npz", progress=cut_once_past_half, chunk_size=CHUNK
                )
            await client.datasets.download("clips", out / "resumed.npz", resume=True)

    cuts_wanted = [1]
    asyncio.run(download())
    assert proxy.cuts == 2
    assert (out / "reconnected.npz").read_bytes() == data == (out / "resumed.npz").read_bytes()
    assert partials(out) == []


def test_a_resume_from_bytes_damaged_on_the_disk_is_data_loss_and_leaves_no_file(
    daemon, proxy_to, tmp_path, clips_file
):
    proxy = proxy_to(daemon.daemon.port)
    out = tmp_path / "out"
    out.mkdir()

    def cut_midway(done: int, total: int) -> None:
        if done >= total // 2 and not proxy.cuts:
            proxy.cut()

    with tessera.Client(proxy.target, timeout=30, retry=tessera.RetryPolicy(attempts=1)) as client:
        client.datasets.push("clips", clips_file)
        with pytest.raises(tessera.Unavailable):
            client.datasets.download("clips", out / "copy.npz", progress=cut_midway, chunk_size=CHUNK)
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


def test_a_download_past_its_timeout_keeps_its_bytes_and_says_how_to_go_on(client, tmp_path, clips_file):
    client.datasets.push("clips", clips_file)
    out = tmp_path / "out"
    out.mkdir()
    stalled: list[int] = []

    def stall_past_the_timeout(done: int, total: int) -> None:
        if done >= total // 2 and not stalled:
            stalled.append(done)
            time.sleep(3)

    with pytest.raises(tessera.DeadlineExceeded) as ran_out:
        client.datasets.download(
            "clips", out / "copy.npz", progress=stall_past_the_timeout, chunk_size=CHUNK, timeout=2
        )
    assert "bytes are kept in " in ran_out.value.message and "resume=True" in ran_out.value.message
    client.datasets.download("clips", out / "copy.npz", resume=True)
    assert (out / "copy.npz").read_bytes() == clips_file.read_bytes()


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
