"""client.datasets against a real daemon."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

import tessera
import tessera.aio


def test_push_arrays_with_splits_streams_chunks_and_reports_progress(client, clips):
    x, y = clips
    progress: list[tuple[int, int]] = []
    version = client.datasets.push(
        "clips",
        x=x,
        y=y,
        splits={"train": 0.5, "val": 0.5},
        seed=3,
        chunk_size=1024,
        progress=lambda done, total: progress.append((done, total)),
    )
    assert (version.name, version.version, version.num_samples) == ("clips", 1, 20)
    assert {s.name: s.count for s in version.splits} == {"train": 10, "val": 10}
    assert {a.name: list(a.shape) for a in version.arrays} == {"x": [20, 1, 2, 2, 2, 2], "y": [20]}
    assert len(progress) > 1
    assert progress[-1][0] == progress[-1][1] == version.size_bytes


def test_identical_content_is_deduplicated_and_versions_are_listed_newest_first(client, clips):
    x, y = clips
    first = client.datasets.push("clips", x=x, y=y)
    again = client.datasets.push("clips", x=x, y=y)
    assert again.deduplicated and again.sha256 == first.sha256
    second = client.datasets.push("clips", x=x[:10], y=y[:10])
    assert second.version == 2 and not second.deduplicated
    assert [v.version for v in client.datasets.versions("clips")] == [2, 1]
    assert client.datasets.get("clips").latest_version == 2
    assert [d.name for d in client.datasets.list(prefix="cl")] == ["clips"]
    assert list(client.datasets.list(prefix="zz")) == []
    with pytest.raises(tessera.NotFound) as caught:
        client.datasets.get("clip")
    assert caught.value.message == (
        "dataset 'clip' does not exist; did you mean 'clips'? Or upload it with `client.datasets.push(name, path)`"
    )


def test_push_npz_and_npy_files_and_load_them_back(client, clips, tmp_path):
    x, y = clips
    np.savez(tmp_path / "clips.npz", x=x, y=y)
    np.save(tmp_path / "frames.npy", x)
    from_npz = client.datasets.push("from-npz", tmp_path / "clips.npz")
    from_npy = client.datasets.push("from-npy", tmp_path / "frames.npy", array_name="frames")
    assert [a.name for a in from_npy.arrays] == ["frames"]
    loaded = client.datasets.load(f"from-npz:{from_npz.version}")
    assert np.array_equal(loaded["x"], x) and np.array_equal(loaded["y"], y)
    assert np.array_equal(client.datasets.load("from-npy")["frames"], x)


def test_array_name_is_refused_for_an_npz(client, clips, tmp_path):
    x, y = clips
    np.savez(tmp_path / "clips.npz", x=x, y=y)
    for push in (
        lambda: client.datasets.push("named-npz", tmp_path / "clips.npz", array_name="frames"),
        lambda: client.datasets.push("named-npz", x=x, array_name="frames"),
    ):
        with pytest.raises(tessera.InvalidArgument) as refused:
            push()
        assert refused.value.message == (
            "array_name names the array of an npy file; an npz names its arrays itself, so leave "
            "array_name empty (got 'frames')"
        )
    with pytest.raises(tessera.NotFound):
        client.datasets.get("named-npz")
    np.save(tmp_path / "frames.npy", x)
    assert [a.name for a in client.datasets.push("unnamed-npy", tmp_path / "frames.npy").arrays] == ["x"]


def test_download_writes_the_verified_file(client, clips, tmp_path):
    x, y = clips
    client.datasets.push("clips", x=x, y=y)
    header = client.datasets.download("clips", tmp_path / "copy.npz")
    with np.load(tmp_path / "copy.npz") as archive:
        assert np.array_equal(archive["x"], x)
    assert header.size_bytes == (tmp_path / "copy.npz").stat().st_size
    assert not list(tmp_path.glob("*.partial"))


def test_delete_and_not_found(client, clips):
    x, y = clips
    client.datasets.push("clips", x=x, y=y)
    assert client.datasets.delete("clips") == 1
    with pytest.raises(tessera.NotFound, match="clips"):
        client.datasets.get("clips")
    with pytest.raises(tessera.NotFound, match="clips"):
        client.datasets.version("clips:7")


def test_nonfinite_values_are_refused_unless_allowed(client):
    x = np.array([[1.0, np.nan]], dtype=np.float32)
    with pytest.raises(tessera.InvalidArgument, match="x"):
        client.datasets.push("nans", x=x)
    assert client.datasets.push("nans", x=x, allow_nonfinite=True).version == 1


def test_bad_inputs_are_refused_before_anything_is_sent(client, tmp_path):
    with pytest.raises(ValueError, match="object arrays"):
        client.datasets.push("bad", x=np.array([{}, 1], dtype=object))
    (tmp_path / "data.csv").write_text("x,y\n1,0\n")
    with pytest.raises(ValueError, match=r"\.npz or \.npy"):
        client.datasets.push("bad", tmp_path / "data.csv")
    with pytest.raises(FileNotFoundError):
        client.datasets.push("bad", tmp_path / "absent.csv")
    with pytest.raises(ValueError, match="not both"):
        client.datasets.push("bad", tmp_path / "x.npz", x=np.zeros(2))
    with pytest.raises(ValueError, match="name:version"):
        client.datasets.version("clips:latest")
    with pytest.raises(tessera.InvalidArgument, match="name"):
        client.datasets.push("Bad Name", x=np.zeros(2))


def test_a_dataframe_or_array_passed_as_the_path_says_how_to_push_its_columns(client):
    """A notebook's DataFrame went on to fail in pathlib: "expected str, bytes or os.PathLike
    object, not DataFrame"; one of mixed dtypes as an array got no hint how to convert it."""
    import pandas as pd

    frame = pd.DataFrame({"a": [1.0, 2.0], "b": [3, 4], "label": ["x", "y"]})
    with pytest.raises(TypeError, match="not a DataFrame; pass its columns as named arrays") as raised:
        client.datasets.push("t", frame)
    assert "x=df[features].to_numpy(np.float32), y=df[label].to_numpy()" in str(raised.value)
    with pytest.raises(
        TypeError, match=r"not an array \(ndarray\); pass arrays by name, e.g. push\(NAME, x=x, y=y\)"
    ):
        client.datasets.push("t", np.zeros((2, 2)))
    with pytest.raises(ValueError, match=r"object arrays cannot be stored .*df\.to_numpy\(np\.float32\)"):
        client.datasets.push("t", x=frame)
    assert list(client.datasets.list()) == []


@pytest.mark.parametrize(
    ("splits", "message"),
    [
        (
            {"train": [0, 1.5, 2], "val": [3]},
            "splits['train']: sample indices are whole numbers (int or a numpy integer), got 1.5; "
            "pass the indices themselves, e.g. range(80)",
        ),
        (
            {"train": np.arange(10.0), "val": [11]},
            "splits['train']: sample indices are whole numbers (int or a numpy integer), got "
            "np.float64(0.0); pass the indices themselves, e.g. range(80)",
        ),
        (
            {"train": range(10), "val": [True]},
            "splits['val']: sample indices are whole numbers (int or a numpy integer), got True; "
            "pass the indices themselves, e.g. range(80)",
        ),
        ({"train": True}, "splits['train']: give a fraction or a list of sample indices, got True"),
        ({"train": "0-9"}, "splits['train']: give a fraction or a list of sample indices, got '0-9'"),
    ],
    ids=["float", "float-array", "bool", "bool-split", "text"],
)
def test_index_splits_of_anything_but_integers_are_refused_before_anything_is_sent(
    client, clips, splits, message
):
    # int() made 1.5 sample 1 and 0.0 sample 0: a version split otherwise than asked.
    x, y = clips
    with pytest.raises(ValueError, match=r"^splits\[") as refused:
        client.datasets.push("indexed", x=x, y=y, splits=splits)
    assert str(refused.value) == message
    with pytest.raises(tessera.NotFound):
        client.datasets.get("indexed")


def test_index_splits_take_ints_ranges_and_integer_arrays(client, clips):
    x, y = clips
    splits = {"train": range(12), "val": np.arange(12, 18, dtype=np.uint8), "test": [np.int64(18), 19]}
    version = client.datasets.push("indexed", x=x, y=y, splits=splits)
    assert {s.name: s.count for s in version.splits} == {"train": 12, "val": 6, "test": 2}


def test_aio_push_list_and_load(daemon, clips):
    x, y = clips

    async def scenario():
        async with tessera.aio.Client(daemon.target) as client:
            pushed = await client.datasets.push("clips", x=x, y=y, splits={"train": 0.5, "val": 0.5})
            names = [d.name async for d in client.datasets.list()]
            versions = [v.version async for v in client.datasets.versions("clips")]
            arrays = await client.datasets.load("clips")
            return pushed, names, versions, arrays

    pushed, names, versions, arrays = asyncio.run(scenario())
    assert pushed.num_samples == 20 and names == ["clips"] and versions == [1]
    assert np.array_equal(arrays["y"], y)


def test_pushed_big_endian_arrays_are_stored_little_endian(client):
    # Data read from FITS files, say, is big-endian; push writes the file, so it converts.
    x = np.arange(6, dtype=">f4").reshape(3, 2)
    version = client.datasets.push("fits", x=x, y=np.array([0, 1, 0], dtype=">i8"))
    assert {a.name: a.stats.max for a in version.arrays} == {"x": 5.0, "y": 1.0}
    loaded = client.datasets.load("fits")
    np.testing.assert_array_equal(loaded["x"], x)
    assert loaded["x"].dtype == np.dtype("<f4")


@pytest.mark.parametrize("number", [2**63, -(2**63) - 1])
def test_a_delete_past_int64_is_invalid_argument_not_a_bare_value_error(client, clips, number):
    """As for a model version: protobuf's bare "Value out of range" named nothing."""
    x, y = clips
    client.datasets.push("clips", x=x, y=y)
    with pytest.raises(tessera.InvalidArgument, match=r"^INVALID_ARGUMENT: version must be a version"):
        client.datasets.delete("clips", number)
    assert client.datasets.get("clips").version_count == 1


def test_delete_takes_name_colon_version_as_the_other_dataset_calls_do(client, clips):
    x, y = clips
    for count in (20, 10, 5):
        client.datasets.push("clips", x=x[:count], y=y[:count])
    assert client.datasets.delete("clips:2") == 1
    assert [v.version for v in client.datasets.versions("clips")] == [3, 1]
    assert client.datasets.delete("clips", version=3) == 1
    with pytest.raises(ValueError, match=r"clips:1 names version 1 and version=3 another; give one of them"):
        client.datasets.delete("clips:1", version=3)
    with pytest.raises(
        ValueError, match=r"clips:0 names no version \(they start at 1\); write clips:VERSION"
    ):
        client.datasets.delete("clips:0")
    assert [v.version for v in client.datasets.versions("clips")] == [1]
    assert client.datasets.delete("clips:1", version=1) == 1


def test_arrays_named_like_push_parameters_go_in_the_arrays_mapping(client):
    named = {"seed": np.arange(4.0), "name": np.ones(4), "path": np.zeros(4), "tags": np.arange(4)}
    version = client.datasets.push("like-parameters", arrays=named, seed=1)
    assert sorted(a.name for a in version.arrays) == ["name", "path", "seed", "tags"]
    assert client.datasets.push("keywords", x=np.arange(4.0), y=np.arange(4)).num_samples == 4


def test_an_array_given_for_a_push_parameter_is_refused_naming_the_arrays_mapping(client):
    with pytest.raises(
        TypeError, match=r"push: seed= is push's own parameter, not an array; .*arrays=\{'seed': \.\.\.\}"
    ):
        client.datasets.push("clash", x=np.zeros(4), seed=np.arange(4))
    with pytest.raises(TypeError, match=r"allow_nonfinite= is push's own parameter"):
        client.datasets.push("clash", x=np.zeros(4), allow_nonfinite=[1.0, 2.0])
    with pytest.raises(TypeError, match=r"arrays= takes a mapping of names to arrays"):
        client.datasets.push("clash", arrays=np.zeros(4))
    with pytest.raises(TypeError, match=r"arrays=\{\.\.\.\} or as keywords \(x=\.\.\., y=\.\.\.\), not both"):
        client.datasets.push("clash", arrays={"x": np.zeros(4)}, y=np.zeros(4))
    assert [d.name for d in client.datasets.list()] == []
