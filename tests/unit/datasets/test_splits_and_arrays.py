"""Split computation and array statistics, without a server."""

from __future__ import annotations

import tracemalloc
import warnings
import zipfile
from typing import Any

import numpy as np
import pytest

from tesserad.datasets.arrays import all_whole, array_stats, inspect_file, open_arrays
from tesserad.datasets.splits import FractionSplit, IndexSplit, compute_splits
from tesserad.errors import FailedPrecondition, InvalidArgument


def test_fraction_splits_partition_every_sample_reproducibly():
    spec = FractionSplit((("train", 0.7), ("val", 0.2), ("test", 0.1)), seed=3)
    first, again = compute_splits(spec, 1001), compute_splits(spec, 1001)
    assert {k: v.size for k, v in first.items()} == {"train": 701, "val": 200, "test": 100}
    assert sorted(np.concatenate(list(first.values())).tolist()) == list(range(1001))
    assert all(np.array_equal(first[k], again[k]) for k in first)
    other_seed = compute_splits(FractionSplit(spec.fractions, seed=4), 1001)
    assert not np.array_equal(first["val"], other_seed["val"])


def test_a_seed_gives_the_same_split_on_every_daemon():
    # Pinned: the documented shuffle (numpy's PCG64 seeded with the seed, cut at the rounded
    # cumulative fractions, halves to even). A numpy whose permutation differed would split a
    # re-upload of the same file and seed otherwise than the versions stored before it.
    cut = compute_splits(FractionSplit((("train", 0.6), ("val", 0.4)), seed=7), 10)
    assert {name: indices.tolist() for name, indices in cut.items()} == {
        "train": [0, 1, 3, 6, 7, 8],
        "val": [2, 4, 5, 9],
    }
    halves = FractionSplit((("train", 0.25), ("val", 0.75)), seed=0)
    assert compute_splits(halves, 10)["train"].tolist() == [4, 6]
    assert compute_splits(halves, 14)["train"].tolist() == [0, 2, 3, 5]


def test_default_split_and_index_rules():
    assert compute_splits(None, 5)["train"].tolist() == [0, 1, 2, 3, 4]
    assert compute_splits(IndexSplit((("a", (4, 0)),)), 5)["a"].tolist() == [0, 4]
    with pytest.raises(InvalidArgument, match="index -1 is negative"):
        compute_splits(IndexSplit((("a", (-1,)),)), 5)
    with pytest.raises(InvalidArgument, match=r"index 5 is outside \[0, 5\)"):
        compute_splits(IndexSplit((("a", (5,)),)), 5)
    with pytest.raises(InvalidArgument, match="repeated: a"):
        compute_splits(IndexSplit((("a", (1,)), ("a", (2,)))), 5)


def test_chunked_stats_match_numpy():
    rng = np.random.default_rng(0)
    values = rng.normal(3.0, 2.0, size=(3000, 700)).astype(np.float32)  # several stats chunks
    stats = array_stats("x", values, allow_nonfinite=False)
    assert stats.mean == pytest.approx(float(values.mean(dtype=np.float64)), rel=1e-9)
    assert stats.std == pytest.approx(float(values.std(dtype=np.float64)), rel=1e-9)
    assert (stats.min, stats.max) == (float(values.min()), float(values.max()))


def test_statistics_of_large_samples_read_a_bounded_part_at_a_time(tmp_path):
    """A sample of 8M float32 values (32 MB, 64 MB as float64) is read in parts too, not whole: a
    spacetime sample can be larger than the memory the daemon can spare for it."""
    path = tmp_path / "big.npy"
    values = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(2, 8 * 2**20))
    values[0, -1] = 5.0
    values.flush()
    mapped = np.load(path, mmap_mode="r")
    tracemalloc.start()
    try:
        stats = array_stats("x", mapped, allow_nonfinite=False)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert (stats.min, stats.max) == (0.0, 5.0)
    assert peak < 40 * 2**20, f"{peak / 2**20:.0f} MiB at the peak"


@pytest.mark.parametrize("order", ["C", "F"])
def test_the_first_nonfinite_value_is_named_by_its_index_in_any_memory_order(order):
    values = np.zeros((4, 3, 2), dtype=np.float64, order=order)
    values[2, 1, 0] = np.inf
    values[3, 0, 1] = np.nan
    with pytest.raises(InvalidArgument, match=r"the first at index \[2, 1, 0\]"):
        array_stats("x", values, allow_nonfinite=False)


@pytest.mark.parametrize(
    "array",
    [
        np.array([1e308, -1e308, 1e308] * 2000),
        np.array([1.7e308, 1.7e308] * 2000),
        np.array([3e200, -3e200, 0.0] * 2000),
        # Two stats chunks: the second's values far larger than the first's.
        np.concatenate([np.linspace(0.0, 1.0, 2**20), np.full(2**20, -1.5e308)]),
        np.concatenate([np.full(2**20, 1.7e308), np.full(2**20, -1.7e308)]),
    ],
    ids=[
        "both signs",
        "one side",
        "squares past the largest float",
        "a later chunk far larger",
        "chunks at both ends of the floats",
    ],
)
def test_statistics_of_finite_values_near_the_largest_float_are_finite(array):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # numpy's overflow warnings: each an inf or a NaN behind it
        stats = array_stats("x", array, allow_nonfinite=False)
    scaled = array / 2**1000
    assert stats.mean == pytest.approx(float(scaled.mean()) * 2**1000, rel=1e-12)
    assert stats.std == pytest.approx(float(scaled.std()) * 2**1000, rel=1e-12)


def test_class_counts_stop_past_the_limit():
    assert array_stats("y", np.array([1, 1, 2]), False).class_counts == {1: 2, 2: 1}
    assert array_stats("y", np.arange(5000), False).class_counts == {}


@pytest.mark.parametrize("format", ["npz", "npy"])
def test_a_dataset_file_gone_from_disk_says_so_without_its_path(format, tmp_path):
    # A worker opening a version deleted with force: not "truncated", and no server path.
    gone = tmp_path / "blobs" / "ab" / "cdef"
    with pytest.raises(FailedPrecondition, match="deleted") as info:
        open_arrays(gone, format)
    assert str(tmp_path) not in info.value.message


class CountingZipFile(zipfile.ZipFile):
    """The real ZipFile, counting how often an archive's directory is read."""

    opened = 0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        type(self).opened += 1
        super().__init__(*args, **kwargs)


def test_an_npz_directory_is_read_once_to_check_its_arrays_and_once_to_open_them(tmp_path, monkeypatch):
    # Read anew for each compressed array, 4,000 arrays of one value took 70 s to upload; read
    # once for the headers and again for the data, a directory of thousands cost twice its parse.
    path = tmp_path / "many.npz"
    np.savez_compressed(path, **{f"a{i}": np.full(2, i, np.int16) for i in range(50)})
    monkeypatch.setattr(zipfile, "ZipFile", CountingZipFile)
    infos, samples = inspect_file(path, "npz", "x", allow_nonfinite=False)
    assert CountingZipFile.opened == 1
    assert (len(infos), samples, infos[49].stats.class_counts) == (50, 2, {49: 2})
    arrays = open_arrays(path, "npz")
    assert CountingZipFile.opened == 2
    assert arrays["a7"].tolist() == [7, 7]


def test_all_whole_reads_only_the_named_member_in_chunks_and_skips_one_over_the_cap(tmp_path):
    path = tmp_path / "d.npz"
    # x would not fit the cap: only y is read.
    np.savez_compressed(path, x=np.zeros((64, 64)), y=np.array([0.0, 1.0, np.nan, 2.0]))
    assert all_whole(path, "npz", "x", "y", max_bytes=64)
    assert not all_whole(path, "npz", "x", "y", max_bytes=16)
    np.savez_compressed(path, y=np.array([0.0, 0.5]), nans=np.full(3, np.nan))
    assert not all_whole(path, "npz", "x", "y", max_bytes=64)
    assert not all_whole(path, "npz", "x", "nans", max_bytes=64)
