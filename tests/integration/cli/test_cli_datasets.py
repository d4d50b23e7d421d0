"""`tessera datasets rm`, `download` and `push --array-name` and `--tag` against a real daemon."""

from __future__ import annotations

import tempfile

import numpy as np
import pytest

import tessera
from tessera.cli import EXIT_DAEMON, EXIT_FAILED, EXIT_USAGE
from tessera.cli.output import when
from tessera.cli.parser import build_parser
from tessera.datasets import Datasets
from tessera.models import upload_header
from tessera.progress_line import byte_size
from tessera.rpc_commands import in_cli_words
from tessera.transfer import partial_names
from tessera.v1 import registry_pb2, registry_pb2_grpc
from tests.integration.cli.test_cli import SPEC as TRAIN_SPEC
from tests.integration.cli.test_cli import assert_failed_cleanly
from tests.integration.sdk.affine import affine_onnx
from tests.tcp_proxy import CuttableProxy
from tests.unit.sdk.test_cli_help import commands


def help_text(*words: str) -> str:
    return dict(commands(build_parser()))[words].format_help()


@pytest.fixture
def npy_file(tmp_path):
    path = tmp_path / "frames.npy"
    np.save(path, np.arange(24, dtype=np.float32).reshape(6, 4))
    return path


def test_push_names_the_array_of_an_npy_file(tessera_cli, client, npy_file, tmp_path):
    pushed = tessera_cli("datasets", "push", "frames", str(npy_file), "--array-name", "frames")
    assert pushed.code == 0, pushed.err
    assert [a.name for a in client.datasets.version("frames").arrays] == ["frames"]
    assert list(client.datasets.load("frames")) == ["frames"]
    npz = tmp_path / "table.npz"
    np.savez(npz, x=np.zeros((3, 2), np.float32))
    refused = tessera_cli("datasets", "push", "table", str(npz), "--array-name", "frames")
    assert refused.code == EXIT_USAGE and "--array-name names the array of a .npy file" in refused.err
    assert "--array-name NAME" in help_text("datasets", "push")


def test_push_stores_tags(tessera_cli, client, npy_file):
    pushed = tessera_cli(
        "datasets", "push", "frames", str(npy_file), "--tag", "source=cam=2", "--tag", "empty="
    )
    assert pushed.code == 0, pushed.err
    assert dict(client.datasets.version("frames").tags) == {"source": "cam=2", "empty": ""}
    twice = tessera_cli("datasets", "push", "frames", str(npy_file), "--tag", "a=1", "--tag", "a=2")
    assert twice.code == EXIT_USAGE and "--tag a is given twice; give each once" in twice.err
    assert client.datasets.get("frames").version_count == 1
    assert "--tag KEY=VALUE" in help_text("datasets", "push")


def test_push_says_whether_it_added_a_version_or_found_one(tessera_cli, npy_file):
    first = tessera_cli("datasets", "push", "frames", str(npy_file))
    assert first.code == 0, first.err
    assert "stored frames:1: 6 samples, " in first.out and "shared" not in first.out
    again = tessera_cli("datasets", "push", "frames", str(npy_file))
    assert again.code == 0, again.err
    assert "already stored as frames:1 (same bytes and splits): 6 samples, " in again.out
    tagged = tessera_cli("datasets", "push", "frames", str(npy_file), "--tag", "camera=2")
    assert tagged.code == 0, tagged.err
    assert "stored frames:2 (bytes shared with frames:1): 6 samples, " in tagged.out
    elsewhere = tessera_cli("datasets", "push", "copy", str(npy_file))
    assert "stored copy:1 (bytes shared with frames:1): 6 samples, " in elsewhere.out


def test_download_writes_the_stored_file_where_asked(tessera_cli, client, npy_file, tmp_path, monkeypatch):
    client.datasets.push("frames", npy_file)
    client.datasets.push("frames", x=np.ones((2, 3), np.float32))
    monkeypatch.chdir(tmp_path)
    newest = tessera_cli("datasets", "download", "frames")
    assert newest.code == 0, newest.err
    assert "wrote frames-v2.npz: frames:2, 2 samples" in newest.out and "sha256 verified" in newest.out
    np.testing.assert_array_equal(np.load(tmp_path / "frames-v2.npz")["x"], np.ones((2, 3)))

    first = tessera_cli("datasets", "download", "frames:1", "-o", str(tmp_path / "copy.npy"))
    assert first.code == 0, first.err
    assert (tmp_path / "copy.npy").read_bytes() == npy_file.read_bytes()
    into = tmp_path / "into"
    into.mkdir()
    as_json = tessera_cli("--json", "datasets", "download", "frames:1", "--output", str(into)).json()
    assert as_json["path"] == str(into / "frames-v1.npy") and as_json["version"]["version"] == 1
    assert (into / "frames-v1.npy").read_bytes() == npy_file.read_bytes()

    missing = tessera_cli("datasets", "download", "frames:9")
    assert_failed_cleanly(missing, "NOT_FOUND", "has no version 9")
    assert not list(tmp_path.glob("*-v9*"))


def test_rm_deletes_a_version_or_the_dataset(tessera_cli, client, npy_file, capsys):
    client.datasets.push("frames", npy_file)
    client.datasets.push("frames", x=np.ones((2, 3), np.float32))
    client.datasets.push("frames", x=np.zeros((2, 3), np.float32))
    one = tessera_cli("datasets", "rm", "frames:2")
    assert one.code == 0 and "deleted frames:2" in one.out
    assert [v.version for v in client.datasets.versions("frames")] == [3, 1]
    rest = tessera_cli("--json", "datasets", "rm", "frames").json()
    assert rest == {"name": "frames", "deleted_versions": 2}  # no version: it was 0, none of them
    assert_failed_cleanly(tessera_cli("datasets", "rm", "frames"), "NOT_FOUND", "frames")
    with pytest.raises(SystemExit) as usage:
        tessera_cli("datasets", "rm", "frames:two")
    assert usage.value.code == EXIT_USAGE and "whole version number" in capsys.readouterr().err


def test_rm_of_a_version_done_says_so_when_the_daemon_goes_before_the_read_after_it(
    tessera_cli, client, daemon, npy_file, monkeypatch
):
    # Whether the dataset went with it is read after the delete: an UNAVAILABLE there failed a
    # delete that was done.
    client.datasets.push("frames", npy_file)
    client.datasets.push("frames", x=np.ones((2, 3), np.float32))
    proxy = CuttableProxy(daemon.daemon.port)
    delete = Datasets.delete

    def delete_then_lose_the_daemon(self: Datasets, *args: object, **kwargs: object) -> int:
        deleted = delete.__get__(self, Datasets)(*args, **kwargs)
        proxy.close()
        return deleted

    monkeypatch.setattr(Datasets, "delete", delete_then_lose_the_daemon)
    try:
        done = tessera_cli("datasets", "rm", "frames:2", target=proxy.target)
    finally:
        proxy.close()
    assert (done.code, done.out.strip(), done.err) == (0, "deleted frames:2", ""), done
    assert [v.version for v in client.datasets.versions("frames")] == [1]


def test_rm_refuses_a_version_0_instead_of_deleting_every_version(tessera_cli, client, npy_file):
    client.datasets.push("frames", npy_file)
    client.datasets.push("frames", x=np.ones((2, 3), np.float32))
    for ref in ("frames:0", "frames:", "frames:00"):
        refused = tessera_cli("datasets", "rm", ref)
        assert refused.code == EXIT_USAGE, ref
        assert f"{ref} names no version (they start at 1)" in refused.err
        assert "frames alone to delete the dataset with every version" in refused.err
    assert [v.version for v in client.datasets.versions("frames")] == [2, 1]


def test_rm_refuses_what_a_lineage_holds_until_forced(tessera_cli, client, daemon, npy_file, tmp_path):
    version = client.datasets.push("frames", npy_file)
    header = upload_header(
        "affine",
        affine_onnx(tmp_path / "affine.onnx"),
        format=None,
        architecture=None,
        signature=None,
        create=True,
        alias=None,
        description="",
        params=None,
        metrics=None,
        tags=None,
    )
    header.lineage.datasets.add(name="frames", version=1, sha256=version.sha256)
    artifact = (tmp_path / "affine.onnx").read_bytes()
    registry_pb2_grpc.RegistryStub(daemon.channel()).UploadVersionInline(
        registry_pb2.UploadVersionInlineRequest(header=header, artifact=artifact)
    )
    refused = tessera_cli("datasets", "rm", "frames:1")
    assert_failed_cleanly(
        refused,
        "FAILED_PRECONDITION",
        "dataset 'frames' is in use by model affine v1's lineage (v1)",
        "delete those model versions first, or pass --force to delete it anyway",
    )
    assert client.datasets.version("frames:1").version == 1
    forced = tessera_cli("datasets", "rm", "frames:1", "--force")
    assert forced.code == 0 and "deleted frames:1" in forced.out
    assert "--force" in help_text("datasets", "rm")


def test_show_prints_the_versions_description_and_tags(tessera_cli, npy_file):
    pushed = tessera_cli(
        "datasets",
        "push",
        "frames",
        str(npy_file),
        "--description",
        "hall camera",
        "--tag",
        "source=cam=2",
        "--tag",
        "empty=",
    )
    assert pushed.code == 0, pushed.err
    assert "description: hall camera\ntags: empty=, source=cam=2\n" in pushed.out
    shown = tessera_cli("datasets", "show", "frames:1")
    assert shown.code == 0, shown.err
    assert "description: hall camera\ntags: empty=, source=cam=2\n" in shown.out
    untagged = tessera_cli("datasets", "push", "plain", str(npy_file))
    assert "description" not in untagged.out and "tags" not in untagged.out
    assert tessera_cli("--json", "datasets", "show", "frames").json()["tags"] == {
        "source": "cam=2",
        "empty": "",
    }


def test_show_prints_the_stored_files_sha256_and_who_pushed_it(tessera_cli, client, npy_file):
    assert tessera_cli("datasets", "push", "frames", str(npy_file)).code == 0
    version = client.datasets.version("frames:1")
    shown = tessera_cli("datasets", "show", "frames:1")
    assert shown.code == 0, shown.err
    assert f"file: npy, {byte_size(version.size_bytes)}\nsha256: {version.sha256}\n" in shown.out
    assert f"created: {when(version.created_at)} by {version.created_by}\n" in shown.out


def test_show_counts_the_nan_and_inf_values_the_statistics_leave_out(tessera_cli, tmp_path):
    path = tmp_path / "gaps.npz"
    np.savez(path, x=np.array([[1.0, np.nan], [np.inf, 2.0], [3.0, 4.0]]), y=np.arange(3))
    pushed = tessera_cli("datasets", "push", "gaps", str(path), "--allow-nonfinite")
    assert pushed.code == 0, pushed.err
    shown = tessera_cli("datasets", "show", "gaps")
    assert "NaN or Inf (left out of the statistics): x 2\n" in shown.out
    clean = tmp_path / "clean.npz"
    np.savez(clean, x=np.ones((3, 2)))
    assert tessera_cli("datasets", "push", "clean", str(clean)).code == 0
    assert "NaN or Inf" not in tessera_cli("datasets", "show", "clean").out


def test_push_refuses_a_seed_without_a_split_to_seed(tessera_cli, client, npy_file):
    refused = tessera_cli("datasets", "push", "frames", str(npy_file), "--seed", "7")
    assert refused.code == EXIT_USAGE
    assert (
        "--seed seeds the random split that --split NAME=FRACTION asks for; without --split every "
        "sample is in one split, train" in refused.err
    )
    seeded = tessera_cli(
        "datasets", "push", "frames", str(npy_file), "--split", "a=0.5", "--split", "b=0.5", "--seed", "0"
    )
    assert seeded.code == 0, seeded.err
    assert client.datasets.get("frames").version_count == 1


def test_download_resume_goes_on_from_an_interrupted_download(tessera_cli, daemon, tmp_path):
    big = tmp_path / "big.npz"
    np.savez(big, x=np.random.default_rng(0).normal(size=(4096, 1024)).astype(np.float32))
    out = tmp_path / "out"
    out.mkdir()
    proxy = CuttableProxy(daemon.daemon.port)

    def cut_midway(done: int, total: int) -> None:
        if done >= total // 2 and not proxy.cuts:
            proxy.cut()

    try:
        with tessera.Client(proxy.target, retry=tessera.RetryPolicy(attempts=1)) as client:
            client.datasets.push("big", big)
            with pytest.raises(tessera.Unavailable) as gave_up:
                client.datasets.download("big:1", out / "big-v1.npz", progress=cut_midway, chunk_size=4096)
    finally:
        proxy.close()
    assert "run it again with --resume" in in_cli_words(gave_up.value.message)
    small = tmp_path / "small.npz"
    np.savez(small, x=np.ones((3, 2), np.float32))
    other = tessera_cli("datasets", "push", "other", str(small))
    assert other.code == 0, other.err
    refused = tessera_cli("datasets", "download", "other", "-o", str(out / "big-v1.npz"), "--resume")
    assert refused.code == EXIT_FAILED and "the partial download " in refused.err, refused.err
    assert "holds " in refused.err and "of big:1" in refused.err and "not of other:1" in refused.err
    assert "without --resume to start again" in refused.err and "big:1 with --resume" in refused.err
    # A newer version pushed meanwhile: `download big --resume` names big-v2.npz, and says what
    # it leaves kept for big-v1.npz.
    newer = tessera_cli("datasets", "push", "big", str(small))
    assert newer.code == 0, newer.err
    latest = tessera_cli("datasets", "download", "big", "-o", str(out), "--resume")
    assert latest.code == 0, latest.err
    assert (out / "big-v2.npz").read_bytes() == small.read_bytes()
    partial, record = partial_names(out / "big-v1.npz")
    assert f"note: {partial} keeps a partial download of big:1; " in latest.err, latest.err
    assert f"`tessera datasets download big:1 -o {out / 'big-v1.npz'} --resume` goes on" in latest.err
    assert f"`rm {partial} {record}` removes it" in latest.err
    resumed = tessera_cli("datasets", "download", "big:1", "-o", str(out), "--resume")
    assert resumed.code == 0, resumed.err
    assert "note:" not in resumed.err
    assert (out / "big-v1.npz").read_bytes() == big.read_bytes()
    assert [p.name for p in out.iterdir() if p.name.startswith(".")] == []
    assert "--resume" in help_text("datasets", "download")


@pytest.mark.parametrize("flag", ["-o", "--output"])
def test_a_missing_directory_named_with_a_trailing_slash_is_made_and_written_into_as_models_download_does(
    tessera_cli, client, npy_file, tmp_path, monkeypatch, flag
):
    """`-o out/x/` lost its "/": it was refused for want of out (and wrote a file x where out
    existed), where `models download` writes out/x/MODEL-vN.onnx; the SDK refused a directory."""
    client.datasets.push("frames", npy_file)
    monkeypatch.chdir(tmp_path)
    wrote = tessera_cli("datasets", "download", "frames", flag, "out/x/")
    assert wrote.code == 0, wrote.err
    assert wrote.out.startswith("wrote out/x/frames-v1.npy: "), wrote.out
    assert (tmp_path / "out" / "x" / "frames-v1.npy").read_bytes() == npy_file.read_bytes()
    assert client.datasets.download("frames", "sdk/x/").version == 1
    assert (tmp_path / "sdk" / "x" / "frames-v1.npy").read_bytes() == npy_file.read_bytes()
    client.datasets.download("frames:1", tmp_path / "sdk")
    assert sorted(p.name for p in (tmp_path / "sdk").iterdir()) == ["frames-v1.npy", "x"]


def test_push_joins_npy_files_into_one_version_each_array_named_by_its_file(tessera_cli, client, tmp_path):
    # A training job takes its inputs and targets from one version: x.npy pushed alone, then
    # y.npy, made two versions of one array each.
    x = np.arange(24, dtype=np.float32).reshape(6, 4)
    y = np.arange(6, dtype=np.int64) % 2
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "y.npy", y)
    pushed = tessera_cli("datasets", "push", "pair", str(tmp_path / "x.npy"), str(tmp_path / "y.npy"))
    assert pushed.code == 0, pushed.err
    assert sorted(a.name for a in client.datasets.version("pair").arrays) == ["x", "y"]
    loaded = client.datasets.load("pair")
    assert np.array_equal(loaded["x"], x) and np.array_equal(loaded["y"], y)

    np.save(tmp_path / "st_x.npy", x)
    np.save(tmp_path / "st_y.npy", y)
    named = tessera_cli(
        "datasets",
        "push",
        "stx",
        "--array",
        f"x={tmp_path / 'st_x.npy'}",
        "--array",
        f"y={tmp_path / 'st_y.npy'}",
    )
    assert named.code == 0, named.err
    assert sorted(a.name for a in client.datasets.version("stx").arrays) == ["x", "y"]

    twice = tessera_cli(
        "datasets",
        "push",
        "pair",
        str(tmp_path / "x.npy"),
        str(tmp_path / "st_x.npy"),
        "--array",
        f"x={tmp_path / 'y.npy'}",
    )
    assert twice.code == EXIT_USAGE and "array 'x' is given twice" in twice.err
    not_npy = tessera_cli("datasets", "push", "pair", str(tmp_path / "x.npy"), str(tmp_path / "x.npz"))
    assert not_npy.code == EXIT_USAGE and "several files join as .npy files" in not_npy.err
    assert [v.version for v in client.datasets.versions("pair")] == [1]
    assert "x.npy y.npy" in help_text("datasets", "push")


def test_push_joins_npy_files_named_as_push_options_through_a_temporary_npz(
    tessera_cli, client, tmp_path, monkeypatch
):
    # The arrays were passed to Datasets.push as keyword arguments: seed.npy and name.npy
    # collided with its own (TypeError). The joined .npz is a temporary file, streamed, then gone.
    temporary = tmp_path / "tmp"
    temporary.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(temporary))
    arrays = {
        "x": np.arange(12, dtype=np.float32).reshape(3, 4),
        "seed": np.arange(3, dtype=np.int64),
        "name": np.ones(3, dtype=">f4"),
        "file": np.zeros((3, 2), dtype=np.uint8),
    }
    for stem, array in arrays.items():
        np.save(tmp_path / f"{stem}.npy", array)
    files = [str(tmp_path / f"{stem}.npy") for stem in arrays]
    pushed = tessera_cli("datasets", "push", "d", *files, "--split", "train=0.5", "--split", "val=0.5")
    assert pushed.code == 0, pushed.err
    loaded = client.datasets.load("d")
    assert sorted(loaded) == sorted(arrays)
    assert all(np.array_equal(loaded[stem], array) for stem, array in arrays.items())
    assert not list(temporary.iterdir())


def test_push_refuses_npy_files_of_different_sample_counts_before_building_anything(
    tessera_cli, client, tmp_path, monkeypatch
):
    temporary = tmp_path / "tmp"
    temporary.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(temporary))
    np.save(tmp_path / "x.npy", np.zeros((6, 4), dtype=np.float32))
    np.save(tmp_path / "y.npy", np.zeros(5, dtype=np.int64))
    refused = tessera_cli("datasets", "push", "d", str(tmp_path / "x.npy"), str(tmp_path / "y.npy"))
    assert refused.code == EXIT_USAGE, refused.err
    said = " ".join(refused.err.split())
    assert f"{tmp_path / 'x.npy'} has 6 samples, {tmp_path / 'y.npy'} has 5" in said, said
    assert "one row per sample" in said, said
    assert not list(temporary.iterdir()) and not list(client.datasets.list())


def test_a_job_on_a_dataset_of_one_array_says_how_to_push_the_other_with_it(tessera_cli, tmp_path):
    np.save(tmp_path / "st_x.npy", np.arange(24, dtype=np.float32).reshape(6, 4))
    assert tessera_cli("datasets", "push", "stx", str(tmp_path / "st_x.npy")).code == 0
    spec = tmp_path / "spec.toml"
    spec.write_text(
        TRAIN_SPEC.format(dataset="stx").replace('train_split = "train"\nval_split = "val"\n', "")
    )
    refused = tessera_cli("train", str(spec))
    assert refused.code == EXIT_DAEMON, refused.err
    assert "dataset 'stx' v1 has no array 'y'; it has x" in refused.err
    assert "np.savez('d.npz', x=..., y=...)" in refused.err


def test_push_refuses_one_npy_file_per_sample_and_says_how_to_stack_them(tessera_cli, client, tmp_path):
    # Joined as they were, clip_000..002 became three arrays of one sample; the job found no x only
    # at train time.
    clips = tmp_path / "clips"
    clips.mkdir()
    files = [str(clips / f"clip_{i:03d}.npy") for i in range(3)]
    for i, file in enumerate(files):
        np.save(file, np.full((1, 4, 8, 8, 8), i, dtype=np.float32))
    refused = tessera_cli("datasets", "push", "myclips", *files)
    assert refused.code == EXIT_USAGE, refused.err
    assert "clip_000, clip_001, clip_002 look like one file per sample" in refused.err, refused.err
    # Each file keeps a leading axis of 1: concatenated, not stacked, they make (N, 4, 8, 8, 8).
    assert 'x = np.concatenate([np.load(r["file"]) for r in rows])' in refused.err, refused.err
    assert 'np.savez("d.npz", x=x, y=y)' in refused.err and "--as-is" in refused.err
    assert not list(client.datasets.list())

    as_is = tessera_cli("datasets", "push", "myclips", *files, "--as-is")
    assert as_is.code == 0, as_is.err
    assert [a.name for a in client.datasets.version("myclips").arrays] == ["clip_000", "clip_001", "clip_002"]

    labels = tmp_path / "labels.csv"
    labels.write_text("file,label\nclips/clip_000.npy,0\n")
    for not_npy in (clips, labels):
        pushed = tessera_cli("datasets", "push", "other", str(not_npy))
        assert pushed.code == EXIT_FAILED, pushed.err
        assert "datasets are .npz or .npy files; stack the samples into one array" in pushed.err, pushed.err
    assert [d.name for d in client.datasets.list()] == ["myclips"]


def test_push_joins_two_arrays_of_many_rows_and_judges_x_y_by_array_names_too(tessera_cli, client, tmp_path):
    for stem in ("inputs", "targets", "feat1", "feat2", "a", "b", "c"):
        np.save(tmp_path / f"{stem}.npy", np.zeros((100, 8), np.float32))
    np.save(tmp_path / "labels.npy", np.zeros(100, np.int64))
    labels = ["--array", f"y={tmp_path / 'labels.npy'}"]
    for name, stems, named in (
        ("pair", ["inputs", "targets"], []),
        ("feats", ["feat1", "feat2"], []),
        ("named", ["a", "b", "c"], labels),
    ):
        files = [str(tmp_path / f"{stem}.npy") for stem in stems]
        pushed = tessera_cli("datasets", "push", name, *files, *named)
        assert pushed.code == 0, pushed.err
    assert [d.name for d in client.datasets.list()] == ["feats", "named", "pair"]
    # Two files of one row each are still samples.
    for i in (1, 2):
        np.save(tmp_path / f"s{i}.npy", np.zeros((1, 8), np.float32))
    refused = tessera_cli("datasets", "push", "s", str(tmp_path / "s1.npy"), str(tmp_path / "s2.npy"))
    assert refused.code == EXIT_USAGE and "look like one file per sample" in refused.err, refused.err


def test_push_names_a_file_numpy_cannot_read_as_numbers(tessera_cli, client, tmp_path):
    np.save(tmp_path / "x.npy", np.zeros((2, 8), np.float32))
    np.save(tmp_path / "objects.npy", np.array([{"a": 1}, None], dtype=object), allow_pickle=True)
    refused = tessera_cli("datasets", "push", "d", str(tmp_path / "x.npy"), str(tmp_path / "objects.npy"))
    said = " ".join(refused.err.split())
    assert refused.code == EXIT_USAGE, said
    assert f"{tmp_path / 'objects.npy'}: cannot be read as a .npy file of numbers" in said, said
    assert not list(client.datasets.list())
