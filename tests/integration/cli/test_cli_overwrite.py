"""The commands that write a file the user names refuse one already there unless --force, as
`tessera admin backup` does (exit 2, "... exists; pass --force to replace it"), and a failed
download leaves nothing under the name: `models download` wrote over an existing file."""

from __future__ import annotations

import re

import numpy as np
import pytest

from tessera.cli import EXIT_DAEMON, EXIT_FAILED, EXIT_USAGE
from tests.fsyncs import recorded_fsyncs
from tests.integration.registry.conftest import onnx_identity
from tests.integration.sdk.affine import affine_onnx
from tests.tmpfs import tmpfs

KEPT = b"the user's own file\n"


@pytest.fixture
def kept(tmp_path):
    """A file of the user's at the name a command is told to write, and the directory it is in."""
    directory = tmp_path / "out"
    directory.mkdir()
    return directory


def assert_refused_and_kept(result, path) -> None:
    assert result.code == EXIT_USAGE, result.err
    assert f"{path} exists; pass --force to replace it" in result.err, result.err
    assert path.read_bytes() == KEPT
    # No temp file left beside it either.
    assert [p.name for p in path.parent.iterdir()] == [path.name]


def test_models_download_refuses_an_existing_file_unless_forced(tessera_cli, client, tmp_path, kept):
    onnx = tmp_path / "identity.onnx"
    onnx.write_bytes(onnx_identity())
    client.models.push("identity", onnx)
    out = kept / "copy.onnx"
    out.write_bytes(KEPT)
    assert_refused_and_kept(tessera_cli("models", "download", "identity", str(out)), out)
    # A directory given: the file in it under the default name is refused the same way.
    default = kept / "identity-v1.onnx"
    default.write_bytes(KEPT)
    out.unlink()
    assert_refused_and_kept(tessera_cli("models", "download", "identity", str(kept)), default)
    forced = tessera_cli("models", "download", "identity", str(default), "--force")
    assert forced.code == 0, forced.err
    assert default.read_bytes() == onnx.read_bytes()


def test_a_failed_download_leaves_no_file_and_the_old_one_whole(tessera_cli, client, tmp_path, kept):
    onnx = tmp_path / "identity.onnx"
    onnx.write_bytes(onnx_identity())
    client.models.push("identity", onnx)
    missing = tessera_cli("models", "download", "identity", str(kept / "v9.onnx"), "--version", "9")
    assert missing.code == EXIT_DAEMON and "NOT_FOUND" in missing.err
    assert list(kept.iterdir()) == []
    out = kept / "copy.onnx"
    out.write_bytes(KEPT)
    forced = tessera_cli("models", "download", "identity", str(out), "--version", "9", "--force")
    assert forced.code == EXIT_DAEMON and "NOT_FOUND" in forced.err
    assert out.read_bytes() == KEPT and list(kept.iterdir()) == [out]


def test_datasets_download_refuses_an_existing_file_unless_forced(tessera_cli, client, kept):
    client.datasets.push("frames", x=np.ones((2, 3), np.float32))
    out = kept / "frames.npz"
    out.write_bytes(KEPT)
    assert_refused_and_kept(tessera_cli("datasets", "download", "frames", "-o", str(out)), out)
    forced = tessera_cli("datasets", "download", "frames", "-o", str(out), "--force")
    assert forced.code == 0, forced.err
    np.testing.assert_array_equal(np.load(out)["x"], np.ones((2, 3)))


def test_runs_artifacts_get_refuses_an_existing_file_unless_forced(tessera_cli, client, tmp_path, kept):
    run = client.training.create_run("cli-overwrite", create_experiment=True).run_id
    notes = tmp_path / "notes.md"
    notes.write_text("loss went down\n")
    client.training.log_artifact(run, notes, "plots")
    out = kept / "copy.md"
    out.write_bytes(KEPT)
    assert_refused_and_kept(
        tessera_cli("runs", "artifacts", "get", run, "plots/notes.md", "-o", str(out)), out
    )
    forced = tessera_cli("runs", "artifacts", "get", run, "plots/notes.md", "-o", str(out), "--force")
    assert forced.code == 0, forced.err
    assert out.read_text() == "loss went down\n"
    # A directory of artifacts: one of its files already there is refused too.
    out.unlink()
    (kept / "plots").mkdir()
    tree_file = kept / "plots" / "notes.md"
    tree_file.write_bytes(KEPT)
    tree = tessera_cli("runs", "artifacts", "get", run, "plots", "-o", str(kept))
    assert tree.code == EXIT_USAGE and f"{tree_file} exists; pass --force to replace it" in tree.err
    assert tree_file.read_bytes() == KEPT
    forced = tessera_cli("runs", "artifacts", "get", run, "plots", "-o", str(kept), "--force")
    assert forced.code == 0, forced.err
    assert tree_file.read_text() == "loss went down\n"


def test_predict_output_refuses_an_existing_file_unless_forced(tessera_cli, client, tmp_path, kept):
    client.models.push("affine", affine_onnx(tmp_path / "affine.onnx"))
    inputs = tmp_path / "inputs.npz"
    np.savez(inputs, input=np.ones((2, 4), np.float32))
    out = kept / "outputs.npz"
    out.write_bytes(KEPT)
    predict = ("predict", "affine", "--input", str(inputs), "--output")
    assert_refused_and_kept(tessera_cli(*predict, str(out)), out)
    # numpy's naming kept: ".npz" is added where it is missing, and that file is the one refused.
    assert_refused_and_kept(tessera_cli(*predict, str(kept / "outputs")), out)
    forced = tessera_cli(*predict, str(kept / "outputs"), "--force")
    assert forced.code == 0 and f"wrote {out}" in forced.out, forced.err
    with np.load(out) as written:
        np.testing.assert_allclose(written["output"], 3.0)
    assert [p.name for p in kept.iterdir()] == [out.name]


def test_predict_output_filling_its_disk_leaves_the_old_file_and_names_it(tessera_cli, client, tmp_path):
    """The outputs went through a temp file of their own, which was removed, but the full disk's
    error named no file ("tessera: [Errno 28] No space left on device")."""
    client.models.push("affine", affine_onnx(tmp_path / "affine.onnx"))
    inputs = tmp_path / "inputs.npz"
    np.savez(inputs, input=np.ones((2048, 4), np.float32))  # 32 KiB of outputs
    with tmpfs(tmp_path / "disk", "size=16k") as disk:
        out = disk / "outputs.npz"
        out.write_bytes(KEPT)
        result = tessera_cli("predict", "affine", "--input", str(inputs), "--output", str(out), "--force")
        assert result.code == EXIT_FAILED, result.err
        assert f"tessera: {out}: No space left on device" in result.err, result.err
        assert out.read_bytes() == KEPT
        assert [p.name for p in disk.iterdir()] == [out.name]


def test_predict_output_is_on_the_disk_before_it_takes_its_name(
    tessera_cli, client, tmp_path, kept, monkeypatch
):
    """Its bytes are fsynced before it takes its name, and its directory after, as a download's
    are: a power cut after "wrote FILE" never leaves an empty or short file there."""
    client.models.push("affine", affine_onnx(tmp_path / "affine.onnx"))
    inputs = tmp_path / "inputs.npz"
    np.savez(inputs, input=np.ones((2, 4), np.float32))
    synced = recorded_fsyncs(monkeypatch)
    out = kept.resolve()  # as /proc names the files
    result = tessera_cli("predict", "affine", "--input", str(inputs), "--output", str(out / "outputs.npz"))
    assert result.code == 0, result.err
    ours = [path for path in synced if path == str(out) or path.startswith(f"{out}/")]
    assert len(ours) == 2, synced
    assert re.fullmatch(rf"{re.escape(str(out))}/\.outputs\.npz\.[0-9a-f]{{8}}\.partial", ours[0]), ours
    assert ours[1] == str(out)
