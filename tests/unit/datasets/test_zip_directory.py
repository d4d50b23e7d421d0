"""An upload's npz is held to the arrays a dataset may have by its end records, before zipfile
parses its directory (a ZipInfo object per entry)."""

from __future__ import annotations

import io
import tracemalloc
import zipfile
from pathlib import Path

import numpy as np
import pytest

from tesserad.datasets.arrays import MAX_ARRAYS, ZipDirectory, inspect_file, zip_directory
from tesserad.errors import InvalidArgument
from tests.unit.datasets.zips import END, tiny_entries, with_zip64_end, zip64_end

NOT_AN_NPZ = (
    "the file is not a complete npz archive (no zip directory at its end: truncated, or not an npz); "
    "send the whole file again, as np.savez or np.savez_compressed wrote it"
)
TOO_MANY = (
    "the npz archive holds {} members, over the 10000 arrays a dataset may have (so that any answer "
    "holding its version fits gRPC's 4 MiB); stack arrays of one shape into one, or split the data "
    "into several datasets"
)


def npz(**arrays: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def directory_size(data: bytes) -> int:
    """The directory's size by zipfile's own parse: each entry's fixed part, name, extra, comment."""
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        return sum(46 + len(i.orig_filename) + len(i.extra) + len(i.comment) for i in archive.infolist())


def written(tmp_path: Path, data: bytes) -> Path:
    path = tmp_path / "upload.npz"
    path.write_bytes(data)
    return path


def test_the_end_record_of_an_npz_gives_its_entries_and_directory_size():
    data = npz(x=np.zeros((4, 2)), y=np.arange(4))
    assert zip_directory(io.BytesIO(data)) == ZipDirectory(2, directory_size(data))


def test_an_end_record_followed_by_a_comment_is_found():
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.comment = b"PK" * 30_000
        archive.writestr("x.npy", b"")
    assert zip_directory(io.BytesIO(buffer.getvalue())) == ZipDirectory(1, 51)


def test_zipfiles_zip64_end_record_gives_the_count_over_65535():
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for i in range(65_536):
            archive.writestr(f"{i}.npy", b"")
    data = buffer.getvalue()
    assert END.unpack(data[-END.size :])[4] == 0xFFFF
    assert zip_directory(io.BytesIO(data)) == ZipDirectory(65_536, directory_size(data))


def test_a_valid_npz_with_zip64_end_records_is_read(tmp_path):
    data = with_zip64_end(npz(x=np.zeros((4, 2)), y=np.arange(4)))
    assert zip_directory(io.BytesIO(data)) == ZipDirectory(2, 102)
    arrays, samples = inspect_file(written(tmp_path, data), "npz", "x", False)
    assert ([a.name for a in arrays], samples) == (["x", "y"], 4)


def test_a_zip64_end_record_claiming_50_million_entries_is_refused(tmp_path):
    # zipfile would parse the directory's one entry and never look at the count.
    data = with_zip64_end(npz(x=np.zeros(3)), entries=50_000_000)
    assert zip_directory(io.BytesIO(data)).entries == 50_000_000
    with pytest.raises(InvalidArgument) as refused:
        inspect_file(written(tmp_path, data), "npz", "x", False)
    assert str(refused.value) == TOO_MANY.format(50_000_000)


def test_an_end_record_counting_more_than_the_zip64_record_is_refused(tmp_path):
    body = npz(x=np.zeros(3))
    entries, size, offset = END.unpack(body[-END.size :])[4:7]
    data = zip64_end(body[: -END.size], entries, size, offset, classic_entries=MAX_ARRAYS + 1)
    assert zip_directory(io.BytesIO(data)) == ZipDirectory(MAX_ARRAYS + 1, size)
    with pytest.raises(InvalidArgument, match="holds 10001 members, over the 10000 arrays"):
        inspect_file(written(tmp_path, data), "npz", "x", False)


def test_a_directory_larger_than_its_arrays_need_is_refused_whatever_its_count(tmp_path):
    entry_bytes = 51
    directory = tiny_entries(110_000)[: 110_000 * entry_bytes]
    data = zip64_end(directory, 1, len(directory), 0)
    with pytest.raises(InvalidArgument) as refused:
        inspect_file(written(tmp_path, data), "npz", "x", False)
    assert str(refused.value) == (
        "the npz archive's directory takes 5610000 bytes, more than the 5120000 that the 10000 "
        "arrays a dataset may have need (512 bytes each); the archive is damaged or holds far more "
        "members than arrays: save the arrays with np.savez"
    )


@pytest.mark.parametrize(
    "data",
    [b"", b"PK\x05\x06", b"not a zip at all" * 100, npz(x=np.zeros(3))[:-10]],
    ids=["empty", "a bare signature", "garbage", "truncated"],
)
def test_a_file_without_an_end_record_is_not_an_npz(tmp_path, data):
    with pytest.raises(InvalidArgument) as refused:
        zip_directory(io.BytesIO(data))
    assert str(refused.value) == NOT_AN_NPZ
    with pytest.raises(InvalidArgument) as refused:
        inspect_file(written(tmp_path, data), "npz", "x", False)
    assert str(refused.value) == NOT_AN_NPZ


def test_a_directory_of_tiny_entries_is_refused_before_zipfile_parses_it(tmp_path):
    # 70,000 entries of 51 bytes: parsed, they take tens of MiB in ZipInfo objects (a file near
    # the size limit could list tens of millions). Refused from the end records, the check reads
    # the last 64 KiB.
    path = written(tmp_path, tiny_entries(70_000))
    tracemalloc.start()
    try:
        with pytest.raises(InvalidArgument) as refused:
            inspect_file(path, "npz", "x", False)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert str(refused.value) == TOO_MANY.format(70_000)
    assert peak < 1 << 20
