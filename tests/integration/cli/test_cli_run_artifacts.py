"""`tessera runs artifacts ls|put|get` against a real daemon, as a newcomer would use them."""

from __future__ import annotations

import hashlib
import subprocess

import numpy as np
import pytest

import tessera
from tessera import transfer
from tessera.cli import EXIT_DAEMON, EXIT_FAILED
from tests.integration.cli.test_cli_datasets import help_text
from tests.integration.sdk.test_sdk_dataset_download_resume import Header
from tests.integration.sdk.test_sdk_model_artifact_download_resume import CutOnce
from tests.tcp_proxy import CuttableProxy
from tests.tmpfs import tmpfs


def test_put_ls_and_get_files_and_directories(tessera_cli, client, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    run = client.training.create_run("cli-artifacts", create_experiment=True).run_id
    (tmp_path / "notes.md").write_text("loss went down\n")
    (tmp_path / "loss.png").write_bytes(bytes(range(256)) * 12)

    empty = tessera_cli("runs", "artifacts", "ls", run)
    assert empty.code == 0 and f"tessera runs artifacts put {run} FILE" in empty.out
    stored = tessera_cli("runs", "artifacts", "put", run, "notes.md")
    assert stored.code == 0 and f"stored notes.md in run {run}" in stored.out
    for directory in ("plots", "plots/old/"):
        put = tessera_cli("--json", "runs", "artifacts", "put", run, "loss.png", "--path", directory)
        assert put.code == 0, put.err
    assert put.json()["path"] == "plots/old/loss.png"

    table = tessera_cli("runs", "artifacts", "ls", run, "plots")
    assert "plots/loss.png" in table.out and "plots/old/loss.png" in table.out and "notes.md" not in table.out
    listed = tessera_cli("--json", "runs", "artifacts", "ls", run).json()
    assert [a["path"] for a in listed] == ["notes.md", "plots/loss.png", "plots/old/loss.png"]

    got = tessera_cli("runs", "artifacts", "get", run, "notes.md", "-o", "copy.md")
    assert got.code == 0 and "sha256 verified" in got.out
    assert (tmp_path / "copy.md").read_text() == "loss went down\n"
    (tmp_path / "loss.png").unlink()
    here = tessera_cli("--json", "runs", "artifacts", "get", run, "plots/old/loss.png")
    assert here.code == 0 and here.json()["path"] == "loss.png" and (tmp_path / "loss.png").is_file()
    tree = tessera_cli("--json", "runs", "artifacts", "get", run, "plots", "-o", "out")
    assert tree.code == 0 and tree.json()["path"] == "out/plots"
    for path in ("out/plots/loss.png", "out/plots/old/loss.png"):
        assert hashlib.sha256((tmp_path / path).read_bytes()).hexdigest() == listed[1]["sha256"]

    missing = tessera_cli("runs", "artifacts", "get", run, "nope.txt")
    assert missing.code == EXIT_DAEMON and "tessera: NOT_FOUND" in missing.err
    assert "`tessera runs artifacts ls RUN_ID`" in missing.err
    escaping = tessera_cli("runs", "artifacts", "put", run, "notes.md", "--path", "../up")
    assert escaping.code == EXIT_DAEMON and "INVALID_ARGUMENT" in escaping.err and "'..'" in escaping.err
    unreadable = tessera_cli("runs", "artifacts", "put", run, "absent.txt")
    assert unreadable.code == EXIT_FAILED and "absent.txt" in unreadable.err


def test_get_everything_of_a_run_without_artifacts_says_so(tessera_cli, client, tmp_path):
    run = client.training.create_run("cli-artifacts", create_experiment=True).run_id

    got = tessera_cli("runs", "artifacts", "get", run, "", "-o", str(tmp_path / "out"))
    assert got.code == 0, got.err
    assert f"run {run} has no artifacts, so nothing was written" in got.out
    as_json = tessera_cli("--json", "runs", "artifacts", "get", run, "")
    assert as_json.code == 0 and as_json.json() == {"path": ".", "artifacts": []}
    assert not (tmp_path / "out").exists()


def test_a_get_of_many_files_that_fails_at_a_later_one_leaves_the_destination_as_it_was(
    tessera_cli, client, tmp_path
):
    """The files written before the one that failed, and the directories made for them, stayed:
    half a tree that read as a whole one."""
    run = client.training.create_run("cli-artifacts", create_experiment=True).run_id
    for name in ("one.txt", "z.txt"):
        (tmp_path / name).write_text(f"{name}\n")
    client.training.log_artifact(run, tmp_path / "one.txt", "plots/a")
    client.training.log_artifact(run, tmp_path / "z.txt", "plots")
    out = tmp_path / "out"
    # A directory where the later file goes: its download fails once the first is in place.
    (out / "plots" / "z.txt" / "one.txt").parent.mkdir(parents=True)
    (out / "plots" / "z.txt" / "one.txt").write_text("mine\n")

    got = tessera_cli("runs", "artifacts", "get", run, "plots", "-o", str(out), "--force")
    assert got.code == EXIT_FAILED and "z.txt" in got.err and "is a directory" in got.err, got.err
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*")) == [
        "plots",
        "plots/z.txt",
        "plots/z.txt/one.txt",
    ]


def test_get_into_a_new_directory_named_with_a_trailing_slash(tessera_cli, client, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    run = client.training.create_run("cli-artifacts", create_experiment=True).run_id
    (tmp_path / "notes.md").write_text("kept\n")
    assert tessera_cli("runs", "artifacts", "put", run, "notes.md").code == 0

    got = tessera_cli("--json", "runs", "artifacts", "get", run, "notes.md", "-o", "fresh/")
    assert got.code == 0, got.err
    assert got.json()["path"] == "fresh/notes.md"
    assert (tmp_path / "fresh" / "notes.md").read_text() == "kept\n"


def test_a_directory_named_with_a_trailing_slash_and_nothing_under_it_is_not_found(
    tessera_cli, client, tmp_path
):
    run = client.training.create_run("cli-artifacts", create_experiment=True).run_id
    (tmp_path / "notes.md").write_text("kept\n")
    assert (
        tessera_cli("runs", "artifacts", "put", run, str(tmp_path / "notes.md"), "--path", "docs").code == 0
    )

    missing = tessera_cli("runs", "artifacts", "get", run, "plots/", "-o", str(tmp_path / "out"))
    assert missing.code == EXIT_DAEMON and "NOT_FOUND" in missing.err and "'plots'" in missing.err, (
        missing.err
    )
    with pytest.raises(tessera.NotFound):
        client.training.download_artifacts(run, "plots/", tmp_path / "out")
    got = tessera_cli("--json", "runs", "artifacts", "get", run, "docs/", "-o", str(tmp_path / "out"))
    assert got.code == 0 and got.json()["path"] == str(tmp_path / "out" / "docs"), got.err


def test_put_a_directory_stores_its_files_as_mlflow_log_artifacts(tessera_cli, client, tmp_path):
    run = client.training.create_run("cli-artifacts", create_experiment=True).run_id
    tree = tmp_path / "out"
    for path in ("notes.md", "plots/loss.png", "plots/old/loss.png"):
        (tree / path).parent.mkdir(parents=True, exist_ok=True)
        (tree / path).write_bytes(path.encode())
    (tmp_path / "empty").mkdir()

    put = tessera_cli("runs", "artifacts", "put", run, str(tree), "--path", "v1")
    assert put.code == 0, put.err
    assert f"stored 3 files (40 B) from {tree} under v1/ in run {run}" in put.out
    as_json = tessera_cli("--json", "runs", "artifacts", "put", run, str(tree / "plots"))
    assert as_json.code == 0 and [a["path"] for a in as_json.json()] == ["loss.png", "old/loss.png"]
    got = tessera_cli("runs", "artifacts", "get", run, "v1", "-o", str(tmp_path / "back"))
    assert got.code == 0 and (tmp_path / "back/v1/plots/old/loss.png").read_bytes() == b"plots/old/loss.png"

    empty = tessera_cli("runs", "artifacts", "put", run, str(tmp_path / "empty"))
    assert empty.code == 0 and "no files under" in empty.out and "nothing was stored" in empty.out
    assert tessera_cli("--json", "runs", "artifacts", "put", run, str(tmp_path / "empty")).json() == []

    # "loss.png" is a file in the run, so "loss.png/x" cannot be stored: the daemon refuses it.
    (tree / "loss.png").mkdir()
    (tree / "loss.png" / "x").write_text("x")
    failed = tessera_cli("runs", "artifacts", "put", run, str(tree))
    assert (
        failed.code == EXIT_DAEMON and "tessera: FAILED_PRECONDITION: storing loss.png/x failed" in failed.err
    )
    assert "none of the 4 files was stored; 3 after it not tried" in failed.err
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "gone").symlink_to(tmp_path / "nowhere")
    refused = tessera_cli("runs", "artifacts", "put", run, str(broken))
    assert refused.code == EXIT_FAILED and "(1: gone); nothing stored" in refused.err


def test_get_resume_goes_on_from_an_interrupted_download(tessera_cli, daemon, client, tmp_path):
    run = client.training.create_run("cli-artifacts", create_experiment=True).run_id
    weights = tmp_path / "weights.bin"
    weights.write_bytes(np.random.default_rng(0).bytes(8 << 20))
    client.training.log_artifact(run, weights)
    out = tmp_path / "out"
    out.mkdir()
    proxy = CuttableProxy(daemon.daemon.port)
    try:
        with (
            tessera.Client(proxy.target, retry=tessera.RetryPolicy(attempts=1)) as cut_client,
            pytest.raises(tessera.Unavailable),
        ):
            cut_client.training.download_artifact(
                run, "weights.bin", out, progress=CutOnce(proxy), chunk_size=4096
            )
    finally:
        proxy.close()
    assert [p.name for p in out.iterdir() if p.name.startswith(".")]
    resumed = tessera_cli("runs", "artifacts", "get", run, "weights.bin", "-o", str(out), "--resume")
    assert resumed.code == 0, resumed.err
    assert (out / "weights.bin").read_bytes() == weights.read_bytes()
    assert [p.name for p in out.iterdir() if p.name.startswith(".")] == []
    assert "--resume" in help_text("runs", "artifacts", "get")


def test_get_resume_of_an_artifact_no_longer_there_names_the_command_that_lists_them(
    tessera_cli, client, tmp_path, monkeypatch
):
    monkeypatch.chdir(tmp_path)
    run = client.training.create_run("cli-artifacts", create_experiment=True).run_id
    kept = transfer.ResumableDownloadSink(
        tmp_path / "gone.bin", None, False, resume=False, describe=lambda _: "artifact gone.bin"
    )
    kept.start(Header(hashlib.sha256(b"0123456789").hexdigest(), 10))
    kept.write(b"01234")
    kept.abort(tessera.Unavailable("cut"))

    missing = tessera_cli("runs", "artifacts", "get", run, "gone.bin", "--resume")
    assert missing.code == EXIT_DAEMON and "tessera: NOT_FOUND" in missing.err, missing.err
    assert f"run {run!r} has no artifact at 'gone.bin'" in missing.err, missing.err
    assert "`tessera runs artifacts ls RUN_ID`" in missing.err and "list_artifacts" not in missing.err


@pytest.mark.parametrize("resume", [False, True])
def test_get_of_a_missing_artifact_quotes_its_path_as_given(
    tessera_cli, client, tmp_path, monkeypatch, resume
):
    """The path is the user's: a word in it that names a flag elsewhere (force) is not made one."""
    monkeypatch.chdir(tmp_path)
    run = client.training.create_run("cli-artifacts", create_experiment=True).run_id
    if resume:
        kept = transfer.ResumableDownloadSink(
            tmp_path / "force.pt", None, False, resume=False, describe=lambda _: "artifact ckpt/force.pt"
        )
        kept.start(Header(hashlib.sha256(b"0123456789").hexdigest(), 10))
        kept.write(b"01234")
        kept.abort(tessera.Unavailable("cut"))

    missing = tessera_cli("runs", "artifacts", "get", run, "ckpt/force.pt", *(["--resume"] if resume else []))
    assert missing.code == EXIT_DAEMON, missing.err
    assert missing.err == (
        f"tessera: NOT_FOUND: run {run!r} has no artifact at 'ckpt/force.pt'; "
        "list them with `tessera runs artifacts ls RUN_ID`\n"
    ), missing.err


def test_get_with_resume_that_fills_the_disk_keeps_the_bytes_and_says_resume_goes_on_from_them(
    tessera_cli, client, tmp_path
):
    run = client.training.create_run("cli-artifacts", create_experiment=True).run_id
    blob = np.random.default_rng(3).bytes(256 * 1024)
    (tmp_path / "weights.bin").write_bytes(blob)
    client.training.log_artifact(run, tmp_path / "weights.bin")
    with tmpfs(tmp_path / "disk", "size=128k") as disk:
        full = tessera_cli("runs", "artifacts", "get", run, "weights.bin", "-o", f"{disk}/", "--resume")
        assert full.code == EXIT_FAILED, full.err
        partial, _ = transfer.partial_names(disk / "weights.bin")
        held = partial.stat().st_size
        assert full.err == (
            f"tessera: {disk / 'weights.bin'}: No space left on device\nthe disk had no room for the rest "
            f"of the file: {held} of {len(blob)} bytes are kept in {partial}; free {len(blob) - held} bytes "
            "and run it again with --resume to go on from them\n"
        )
        subprocess.run(["mount", "-o", "remount,size=512k", str(disk)], check=True)
        resumed = tessera_cli("runs", "artifacts", "get", run, "weights.bin", "-o", f"{disk}/", "--resume")
        assert resumed.code == 0, resumed.err
        assert (disk / "weights.bin").read_bytes() == blob
        assert sorted(p.name for p in disk.iterdir()) == ["weights.bin"]
