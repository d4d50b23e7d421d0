"""UploadDataset refuses files no job could train on: arrays without a sample, samples of no value
past the file's bytes, npz arrays under names a job spec cannot give (folders in the
archive, spaces, control characters), and files numpy or zipfile cannot read: stored npz members
whose data runs past the file's end, damaged npy headers, zip features zipfile lacks."""

from __future__ import annotations

import io
import math
import struct
import warnings
import zipfile
import zlib
from collections import Counter

import grpc
import numpy as np
import pytest

from tessera.v1 import datasets_pb2
from tests.integration.datasets.conftest import npy_bytes, npz_bytes, upload_dataset
from tests.integration.registry.conftest import rpc_error, stored_blobs

D = datasets_pb2

NAME_RULE = (
    "a job spec names arrays (data.input_array, data.target_array) by names of 1 to 128 characters "
    "from letters, digits, '.', '_' and '-', starting with a letter or digit, at the archive's top "
    "level (no folders); save the arrays under such names, e.g. np.savez(file, x=x, y=y)"
)


def npy_header_alone(shape: tuple[int, ...]) -> bytes:
    """An npy file of a float32 array of `shape` that holds no value: its header is all of it.
    Written by hand, as numpy makes no array whose shape would take more than 2**63 bytes."""
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(buffer, {"descr": "<f4", "fortran_order": False, "shape": shape})
    return buffer.getvalue()


def assert_nothing_stored(ds, data_dir, name: str) -> None:
    assert stored_blobs(data_dir) == []
    missing = rpc_error(ds.GetDataset, D.GetDatasetRequest(name=name))
    assert missing.code() == grpc.StatusCode.NOT_FOUND


@pytest.mark.parametrize(
    ("data", "fields", "shapes"),
    [
        (npz_bytes(x=np.zeros((0, 3), np.float32), y=np.zeros(0, np.int64)), {}, "x [0, 3], y [0]"),
        (npy_bytes(np.zeros((0, 2, 2), np.float32)), {"format": D.DATASET_FORMAT_NPY}, "x [0, 2, 2]"),
        (
            npy_bytes(np.zeros((0, 4), np.float32)),
            {"format": D.DATASET_FORMAT_NPY, "array_name": "frames"},
            "frames [0, 4]",
        ),
    ],
    ids=["npz", "npy", "named-npy"],
)
def test_a_dataset_without_samples_is_invalid_argument(ds, data_dir, data, fields, shapes):
    error = rpc_error(upload_dataset, ds, "empty", data, **fields)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details() == (
        f"the dataset holds no samples: the first (sample) dimension of its arrays is 0 ({shapes}); "
        "upload arrays with one row per sample, at least one"
    )
    assert_nothing_stored(ds, data_dir, "empty")


def test_samples_of_no_values_are_samples(ds):
    # Rows of width 0: a shape a caller may mean, with a sample count to split; as many as the
    # file has bytes.
    data = npz_bytes(x=np.zeros((5, 0), np.float32))
    assert upload_dataset(ds, "narrow", data).num_samples == 5
    hollow = np.zeros((len(data), 0), np.float32)
    assert upload_dataset(ds, "narrow", npz_bytes(x=hollow)).num_samples == len(data)


@pytest.mark.parametrize(
    ("data", "fields", "shapes"),
    [
        (npz_bytes(x=np.zeros((2**40, 0), np.float32)), {}, "x [1099511627776, 0]"),
        (
            npy_header_alone((2**62, 0)),
            {"format": D.DATASET_FORMAT_NPY},
            "x [4611686018427387904, 0]",
        ),
    ],
    ids=["npz", "npy"],
)
def test_more_samples_of_no_values_than_the_file_has_bytes_is_invalid_argument(
    ds, data_dir, data, fields, shapes
):
    # A header alone claims them: the daemon could neither compute their statistics nor store
    # the split's 8 bytes a sample.
    error = rpc_error(upload_dataset, ds, "hollow", data, **fields)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details() == (
        f"the arrays hold no values ({shapes}), and a dataset whose samples hold none may have at "
        f"most as many samples as its file has bytes ({len(data)}); give each sample a value or "
        "upload fewer samples"
    )
    assert_nothing_stored(ds, data_dir, "hollow")


@pytest.mark.parametrize(
    ("shape", "message"),
    [
        (
            (2, 2**62, 2**62, 0),
            f"array 'x': its header gives shape [2, {2**62}, {2**62}, 0], whose dimensions other than 0 "
            f"multiply to {2**125 * 4} bytes of float32, more than an array can span "
            "(9223372036854775807 bytes), though it holds no values; save the array with the shape its "
            "data has",
        ),
        (
            (3, 2**60, 0),
            f"array 'x': its header gives shape [3, {2**60}, 0], whose dimensions other than 0 multiply to "
            f"{3 * 2**62} bytes of float32, more than an array can span (9223372036854775807 bytes), "
            "though it holds no values; save the array with the shape its data has",
        ),
        (
            (2,) + (1,) * 64,
            "array 'x': its header gives a shape of 65 dimensions; an array has at most 64: save the "
            "array with the shape its data has",
        ),
    ],
    ids=["spans-too-many-bytes", "with-its-samples", "65-dimensions"],
)
@pytest.mark.parametrize("format", [D.DATASET_FORMAT_NPY, D.DATASET_FORMAT_NPZ], ids=["npy", "npz"])
def test_a_header_shape_numpy_makes_no_array_of_is_invalid_argument(ds, data_dir, shape, message, format):
    # Both were INTERNAL: numpy's ValueError, making the array to read its statistics.
    data = npy_header_alone(shape) + bytes(4 * math.prod(shape))
    if format == D.DATASET_FORMAT_NPZ:
        archive = io.BytesIO()
        with zipfile.ZipFile(archive, "w") as npz:
            npz.writestr("x.npy", data)
        data = archive.getvalue()
    error = rpc_error(upload_dataset, ds, "unmakeable", data, format=format)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details() == message
    assert_nothing_stored(ds, data_dir, "unmakeable")


@pytest.mark.parametrize("name", ["data/x", "x y", "-x", ".x", "x\n", "x\t", "é", "x" * 129], ids=repr)
def test_an_npz_array_name_a_job_cannot_give_is_invalid_argument(ds, data_dir, name):
    data = npz_bytes(**{name: np.zeros((3, 2), np.float32), "y": np.zeros(3, np.int64)})
    error = rpc_error(upload_dataset, ds, "badnames", data)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details() == f"npz array {name[:80]!r}: {NAME_RULE}"
    assert_nothing_stored(ds, data_dir, "badnames")


def test_npz_array_names_a_job_can_give_are_stored(ds):
    arrays = {"X_train": np.zeros((3, 2)), "arr_0": np.zeros(3), "y.v2": np.zeros(3), "x" * 128: np.zeros(3)}
    version = upload_dataset(ds, "goodnames", npz_bytes(**arrays))
    assert sorted(a.name for a in version.arrays) == sorted(arrays)


def test_an_npy_array_takes_the_names_an_npz_array_can_have(ds, data_dir):
    data = npy_bytes(np.zeros((3, 2), np.float32))
    version = upload_dataset(ds, "upper", data, format=D.DATASET_FORMAT_NPY, array_name="X_train")
    assert [a.name for a in version.arrays] == ["X_train"]
    error = rpc_error(upload_dataset, ds, "spaced", data, format=D.DATASET_FORMAT_NPY, array_name="x y")
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details() == (
        "array_name 'x y' is not a valid name: a job spec names arrays (data.input_array, "
        "data.target_array) by names of 1 to 128 characters from letters, digits, '.', '_' and '-', "
        "starting with a letter or digit"
    )
    missing = rpc_error(ds.GetDataset, D.GetDatasetRequest(name="spaced"))
    assert missing.code() == grpc.StatusCode.NOT_FOUND


def stored_member_past_the_end() -> bytes:
    """An npz of one stored member, x.npy, whose npy header and both zip records claim 1000
    float64 values where the file holds 10: zipfile opens it, and its data would be memory-mapped
    from beyond the file's end."""
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "<f8", "fortran_order": False, "shape": (1000,)})
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as archive:
        archive.writestr("x.npy", header.getvalue() + np.arange(10, dtype="<f8").tobytes())
    data = bytearray(buffer.getvalue())
    claimed = len(header.getvalue()) + 8000
    # Compressed and uncompressed sizes: at byte 18 of the local header, 20 of the directory entry.
    struct.pack_into("<LL", data, 18, claimed, claimed)
    struct.pack_into("<LL", data, data.find(b"PK\x01\x02") + 20, claimed, claimed)
    return bytes(data)


def test_a_stored_npz_member_whose_data_runs_past_the_end_is_invalid_argument(ds, data_dir):
    error = rpc_error(upload_dataset, ds, "cut", stored_member_past_the_end())
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error.details()
    # After the 80 bytes of data: the directory entry (51 bytes) and the end record (22).
    assert error.details() == (
        "array 'x': its header says shape [1000] float64 (8000 bytes of data) but the file ends 153 "
        "bytes into them, though its zip directory is whole; the archive was written wrong or damaged: "
        "save the arrays again with np.savez or np.savez_compressed"
    )
    assert_nothing_stored(ds, data_dir, "cut")


def npy_with_header(text: str, data: bytes = b"") -> bytes:
    """An npy file (format 1.0) of this header text, as written, then `data`."""
    header = text.encode("latin1")
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header + data


def patched_npz(*patches: tuple[str, int, int]) -> bytes:
    """An npz of one stored float32 array x (4, 2), each (record, field offset, value) written as a
    2-byte field of its local header ("local") or its directory entry ("entry")."""
    buffer = io.BytesIO()
    np.savez(buffer, x=np.zeros((4, 2), np.float32))
    data = bytearray(buffer.getvalue())
    starts = {"local": 0, "entry": data.find(b"PK\x01\x02")}
    for record, offset, value in patches:
        struct.pack_into("<H", data, starts[record] + offset, value)
    return bytes(data)


UNCLOSED = "{'descr': '<f4', 'fortran_order': False, 'shape': (4,\n"
# Compression method (local 8, entry 10) 9 is deflate64; the entry's version needed to extract
# (6) 70 is zip 7.0; the local header's flags (6) 0x800 say its name is UTF-8, which b"\xcc" is not.
DEFLATE64 = patched_npz(("local", 8, 9), ("entry", 10, 9))
ZIP_7 = patched_npz(("entry", 6, 70))
NAME_NOT_UTF8 = bytearray(patched_npz(("local", 6, 0x800)))
NAME_NOT_UTF8[30] = 0xCC
# The same in the directory entry (flags at 8, the name from 46).
LISTED_NAME_NOT_UTF8 = bytearray(patched_npz(("entry", 8, 0x800)))
LISTED_NAME_NOT_UTF8[LISTED_NAME_NOT_UTF8.find(b"PK\x01\x02") + 46] = 0xCC


@pytest.mark.parametrize(
    ("data", "fields", "message"),
    [
        (npy_with_header(UNCLOSED), {"format": D.DATASET_FORMAT_NPY}, "array 'x': not a valid .npy array ("),
        (
            npy_with_header("{b'descr': '<f4', 'fortran_order': False, 'shape': (4,)}\n", bytes(16)),
            {"format": D.DATASET_FORMAT_NPY},
            "array 'x': not a valid .npy array (",
        ),
        (
            npy_with_header("{'descr': '<,4', 'fortran_order': False, 'shape': (4,)}\n", bytes(16)),
            {"format": D.DATASET_FORMAT_NPY},
            "array 'x': not a valid .npy array (",
        ),
        (
            npy_with_header("{'descr': '<f4', 'fortran_order': False, 'shape': (-4, -2)}\n", bytes(32)),
            {"format": D.DATASET_FORMAT_NPY},
            "array 'x': its header gives shape [-4, -2], with a negative dimension",
        ),
        (DEFLATE64, {}, "array 'x': its archive member uses a zip feature that cannot be read ("),
        (ZIP_7, {}, "the npz archive uses a zip feature that cannot be read (zip file version 7.0)"),
        (bytes(NAME_NOT_UTF8), {}, "array 'x': its archive member is damaged ("),
        (bytes(LISTED_NAME_NOT_UTF8), {}, "the npz archive's directory is damaged ("),
    ],
    ids=[
        "unclosed header",
        "header keys of mixed types",
        "descr that does not parse",
        "negative shape",
        "deflate64",
        "zip 7.0",
        "member name",
        "listed name",
    ],
)
def test_a_file_numpy_or_zipfile_cannot_read_is_invalid_argument(ds, data_dir, data, fields, message):
    error = rpc_error(upload_dataset, ds, "unreadable", data, **fields)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error.details()
    assert error.details().startswith(message), error.details()
    assert_nothing_stored(ds, data_dir, "unreadable")


@pytest.mark.parametrize("fields", [{}, {"format": D.DATASET_FORMAT_NPY}], ids=["npz", "npy"])
def test_an_upload_of_no_bytes_says_that_no_file_came(ds, data_dir, fields):
    error = rpc_error(upload_dataset, ds, "nothing", b"", **fields)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error.details()
    assert error.details() == (
        "the upload holds no bytes: no chunk came after the header, or only empty ones; send the "
        "file's bytes in chunk messages after the header"
    )
    assert_nothing_stored(ds, data_dir, "nothing")


def test_an_npz_after_bytes_that_are_not_its_own_is_invalid_argument(ds, data_dir):
    """zipfile finds an archive after other bytes (a chunk sent twice, chunks out of order) and
    reads it whole: stored, the file would not be the one the sender has."""
    data = npz_bytes(10)
    half = len(data) // 2
    error = rpc_error(upload_dataset, ds, "doubled", data[:half] + data, sha256="", size_bytes=0)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error.details()
    assert error.details() == (
        f"the npz archive starts {half} bytes into the file, after bytes that are not its own (a "
        "chunk sent twice or out of order?); send the npz file as it is, in order"
    )
    assert_nothing_stored(ds, data_dir, "doubled")


def test_a_stored_npz_member_whose_data_is_not_what_was_archived_is_invalid_argument(ds, data_dir):
    """An npz's stored arrays are memory-mapped, never read through zipfile, which would check
    their CRC-32: without it, chunks sent out of order within an array (no sha256 declared) were
    stored as other values."""
    data = bytearray(npz_bytes(x=np.arange(64 * 1024, dtype=np.float32)))
    start = 1024
    data[start : start + 4096] = data[start + 2048 : start + 4096] + data[start : start + 2048]
    error = rpc_error(upload_dataset, ds, "swapped", bytes(data), sha256="", size_bytes=0)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error.details()
    assert error.details() == (
        "array 'x': its bytes do not match the CRC-32 the archive gives them (damaged, or chunks "
        "sent twice or out of order); send the npz file as it is, in order"
    )
    assert_nothing_stored(ds, data_dir, "swapped")


def test_an_uploaded_npz_has_each_stored_array_read_through_once(ds, monkeypatch):
    """The CRC-32 check and the statistics read every stored array whole in one pass: run as two
    passes, they read an upload's arrays twice."""
    ends: Counter[str] = Counter()

    class CountingZipExtFile(zipfile.ZipExtFile):
        """The real member stream, counting the reads that found its member's end."""

        def read(self, n: int | None = -1) -> bytes:
            data = super().read(n)
            if n and not data:
                ends[self.name] += 1
            return data

    monkeypatch.setattr(zipfile, "ZipExtFile", CountingZipExtFile)
    upload_dataset(ds, "read-once", npz_bytes(20))
    assert ends == {"x.npy": 1, "y.npy": 1}


# Past the million elements that statistics take at a time, so that x is read in two pieces.
TWO_PIECES = (1 << 20) + (1 << 19)


def with_crc(data: bytes, member: str, crc: int) -> bytes:
    """An npz whose `member` has `crc` for its CRC-32, in its directory entry (byte 16, which
    zipfile checks) and its local header (byte 14, found from the entry's byte 42)."""
    patched = bytearray(data)
    entry = patched.find(b"PK\x01\x02")
    while patched[entry + 46 : entry + 46 + len(member)] != member.encode():
        entry = patched.find(b"PK\x01\x02", entry + 1)
    struct.pack_into("<L", patched, entry + 16, crc)
    struct.pack_into("<L", patched, struct.unpack_from("<L", patched, entry + 42)[0] + 14, crc)
    return bytes(patched)


def damaged_late() -> bytes:
    """x's last 4 KiB, in its second piece, with their halves swapped."""
    data = bytearray(npz_bytes(x=np.arange(TWO_PIECES, dtype=np.float32), y=np.zeros(TWO_PIECES, np.int8)))
    end = data.find(b"PK\x03\x04", 1)
    data[end - 4096 : end] = data[end - 2048 : end] + data[end - 4096 : end - 2048]
    return bytes(data)


def damaged_to_nan() -> bytes:
    """x's values at 1000 to 1009 made NaN (bytes 0xff) after the archive gave x its CRC-32."""
    data = bytearray(npz_bytes(x=np.arange(TWO_PIECES, dtype=np.float32), y=np.zeros(TWO_PIECES, np.int8)))
    start = data.find(b"\n", data.find(b"x.npy")) + 1 + 4 * 1000
    data[start : start + 40] = b"\xff" * 40
    return bytes(data)


@pytest.mark.parametrize(
    ("data", "fields"),
    [
        (damaged_late(), {}),
        (damaged_to_nan(), {}),
        (damaged_to_nan(), {"allow_nonfinite": True}),
    ],
    ids=["in its last piece", "to NaN", "to NaN, allowed"],
)
def test_a_damaged_stored_npz_member_is_refused_for_its_crc_and_leaves_nothing_stored(
    ds, data_dir, data, fields
):
    """The CRC-32 is checked in the pass that takes the statistics, so at the member's end:
    values that damage made NaN are still reported as damage, not as values to clean."""
    error = rpc_error(upload_dataset, ds, "damaged", data, sha256="", size_bytes=0, **fields)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error.details()
    assert error.details() == (
        "array 'x': its bytes do not match the CRC-32 the archive gives them (damaged, or chunks "
        "sent twice or out of order); send the npz file as it is, in order"
    )
    assert_nothing_stored(ds, data_dir, "damaged")


def test_a_compressed_npz_member_that_fails_its_crc_is_refused_and_leaves_nothing_stored(ds, data_dir):
    x = np.arange(TWO_PIECES, dtype=np.float32)
    x[5] = np.nan
    data = with_crc(npz_bytes(compressed=True, x=x), "x.npy", 0)
    error = rpc_error(upload_dataset, ds, "damaged", data, sha256="", size_bytes=0)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error.details()
    assert error.details() == CRC_REFUSED  # as a stored member's: one cause, one message
    assert_nothing_stored(ds, data_dir, "damaged")


def test_an_uploaded_npz_has_its_arrays_read_once_for_crc_and_statistics(ds, monkeypatch):
    """Read through zipfile for the CRC-32 and memory-mapped again for the statistics, an upload's
    stored arrays were read twice; one pass now gives both."""
    read: Counter[str] = Counter()

    class CountingZipExtFile(zipfile.ZipExtFile):
        def read(self, n: int | None = -1) -> bytes:
            data = super().read(n)
            read["zip"] += len(data)
            return data

    class CountingMemmap(np.memmap):
        def __new__(cls, *args, **kwargs):
            mapped = super().__new__(cls, *args, **kwargs)
            read["mapped"] += mapped.nbytes
            return mapped

    monkeypatch.setattr(zipfile, "ZipExtFile", CountingZipExtFile)
    monkeypatch.setattr(np, "memmap", CountingMemmap)
    x = np.arange(TWO_PIECES, dtype=np.float32)
    y = (np.arange(TWO_PIECES) % 3).astype(np.int64)
    version = upload_dataset(ds, "read-once", npz_bytes(x=x, y=y))
    assert [(a.name, a.stats.max) for a in version.arrays] == [("x", TWO_PIECES - 1), ("y", 2)]
    assert read["mapped"] == 0
    assert x.nbytes + y.nbytes <= read["zip"] < 1.01 * (x.nbytes + y.nbytes)


def stored_member_cut_short() -> bytes:
    """An npz whose stored x.npy (10 float64 values) has a compressed size in both zip records of
    its header and 5 values, and the CRC-32 of those: zipfile reads 5 values, all the file holds
    10 (numpy's np.load fails on it)."""
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "<f8", "fortran_order": False, "shape": (10,)})
    member = header.getvalue() + np.arange(10, dtype="<f8").tobytes()
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as archive:
        archive.writestr("x.npy", member)
        archive.writestr("y.npy", npy_bytes(np.arange(10, dtype="<i8")))
    data = bytearray(buffer.getvalue())
    cut = len(member) - 40
    crc = zlib.crc32(member[:cut])
    # CRC-32 and compressed size: at bytes 14 and 18 of the local header, 16 and 20 of the entry.
    struct.pack_into("<LL", data, 14, crc, cut)
    struct.pack_into("<LL", data, data.find(b"PK\x01\x02") + 16, crc, cut)
    return bytes(data)


def test_a_stored_npz_member_zipfile_reads_short_of_its_size_is_invalid_argument(ds, data_dir):
    error = rpc_error(upload_dataset, ds, "short", stored_member_cut_short())
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error.details()
    assert error.details() == (
        "array 'x': its archive member is damaged (it holds fewer bytes than its sizes in the archive say)"
    )
    assert_nothing_stored(ds, data_dir, "short")


def test_an_uploaded_npz_has_each_member_header_read_once(ds, monkeypatch):
    """The check of what compressed arrays unpack to read every member's header and the zip's
    directory apart from the checks of the arrays, which read them again: with 10,000 arrays,
    a third of an upload's time. Each member is opened once for its header, once for its data."""
    opened: Counter[str] = Counter()

    class CountingZipExtFile(zipfile.ZipExtFile):
        def __init__(self, fileobj, mode, zipinfo, *args, **kwargs):
            opened[zipinfo.filename] += 1
            super().__init__(fileobj, mode, zipinfo, *args, **kwargs)

    monkeypatch.setattr(zipfile, "ZipExtFile", CountingZipExtFile)
    upload_dataset(ds, "headers-once", npz_bytes(20))
    upload_dataset(ds, "compressed-headers-once", npz_bytes(20, compressed=True))
    assert opened == {"x.npy": 4, "y.npy": 4}


@pytest.mark.parametrize(
    ("method", "named"), [(zipfile.ZIP_BZIP2, "bzip2"), (zipfile.ZIP_LZMA, "LZMA")], ids=["bzip2", "lzma"]
)
def test_an_npz_member_compressed_as_numpy_never_does_is_invalid_argument(ds, data_dir, method, named):
    # zipfile unpacks such a block whole: 400 bytes of bzip2 took some 370 MB to read.
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=method) as archive:
        archive.writestr("x.npy", npy_bytes(np.zeros((64, 4), np.float32)))
    error = rpc_error(upload_dataset, ds, "packed", buffer.getvalue())
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details() == (
        f"array 'x' is compressed with {named} in the archive; numpy writes npz members stored or "
        "deflated: save it with np.savez or np.savez_compressed"
    )
    assert_nothing_stored(ds, data_dir, "packed")


@pytest.mark.parametrize("compressed", [False, True], ids=["stored", "compressed"])
def test_an_uploaded_npz_has_its_zip_directory_parsed_once(ds, monkeypatch, compressed):
    """The checks of the members' headers and the pass over their data each had zipfile parse
    the directory, a ZipInfo object per member: twice the cost for an npz of thousands of arrays."""
    data = npz_bytes(20, compressed=compressed)
    opened: list[str] = []

    class CountingZipFile(zipfile.ZipFile):
        def __init__(self, file, *args, **kwargs):
            opened.append(str(file))
            super().__init__(file, *args, **kwargs)

    monkeypatch.setattr(zipfile, "ZipFile", CountingZipFile)
    upload_dataset(ds, "parsed-once", data)
    assert len(opened) == 1, opened


def swapped_in_x(**others: np.ndarray) -> bytes:
    """An npz of x (64 Ki float32 values, stored) and `others`, x's bytes at 1024 to 5120 with
    their halves swapped after the archive gave x its CRC-32."""
    data = bytearray(npz_bytes(**others, x=np.arange(64 * 1024, dtype=np.float32)))
    start = data.find(b"\n", data.find(b"x.npy")) + 1 + 1024
    data[start : start + 4096] = data[start + 2048 : start + 4096] + data[start : start + 2048]
    return bytes(data)


CRC_REFUSED = (
    "array 'x': its bytes do not match the CRC-32 the archive gives them (damaged, or chunks "
    "sent twice or out of order); send the npz file as it is, in order"
)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (swapped_in_x(y=np.zeros(10, np.int64)), CRC_REFUSED),
        (swapped_in_x(**{"x y": np.zeros(64 * 1024, np.int64)}), CRC_REFUSED),
        (swapped_in_x(a=np.full(64 * 1024, np.nan, np.float32)), CRC_REFUSED),
        (
            with_crc(
                npz_bytes(compressed=True, x=np.arange(TWO_PIECES, dtype=np.float32), y=np.zeros(10)),
                "x.npy",
                0,
            ),
            CRC_REFUSED,
        ),
    ],
    ids=[
        "and arrays of other sample counts",
        "and an array name a job cannot give",
        "and NaN in another array",
        "compressed, and arrays of other sample counts",
    ],
)
def test_a_damaged_npz_is_refused_as_damaged_before_what_it_holds_is_judged(ds, data_dir, data, message):
    """Damage can be what made a shape, a name or a value wrong, and the file must be sent again
    before any of those can be fixed: so the CRC-32 of every array is checked before them."""
    error = rpc_error(upload_dataset, ds, "twice-wrong", data, sha256="", size_bytes=0)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error.details()
    assert error.details() == message
    assert_nothing_stored(ds, data_dir, "twice-wrong")


def header_damaged(old: bytes, new: bytes, compression: int) -> bytes:
    """An npz of x (64 Ki float32 values) whose npy header has `old` made `new` after the archive
    gave x its CRC-32: one damaged byte that the header, parsed, says something refused by."""
    x = npy_bytes(np.arange(64 * 1024, dtype=np.float32))
    damaged = x.replace(old, new, 1)
    assert damaged != x
    return with_crc(npz_of_members(("x.npy", damaged), compression=compression), "x.npy", zlib.crc32(x))


@pytest.mark.parametrize(
    "compression", [zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED], ids=["stored", "deflated"]
)
@pytest.mark.parametrize(
    ("old", "new"),
    [(b"'<f4'", b"'>f4'"), (b"'<f4'", b"'<U4'"), (b"(65536,)", b"(95536,)")],
    ids=["big-endian", "dtype text", "shape"],
)
def test_an_npz_member_whose_header_was_damaged_is_refused_as_damaged(ds, data_dir, old, new, compression):
    """Damage can be what the header's refusal is of (a dtype, a byte order, a shape): a member's
    CRC-32 is checked before its header is judged, and the file is to be sent again."""
    data = header_damaged(old, new, compression)
    error = rpc_error(upload_dataset, ds, "header-damaged", data, sha256="", size_bytes=0)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error.details()
    assert error.details() == CRC_REFUSED
    assert_nothing_stored(ds, data_dir, "header-damaged")


@pytest.mark.parametrize(
    "compression", [zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED], ids=["stored", "deflated"]
)
def test_an_npz_member_whose_header_is_refused_and_whose_crc_holds_is_refused_for_its_header(
    ds, data_dir, compression
):
    x = npy_bytes(np.arange(64 * 1024, dtype=">f4"))
    error = rpc_error(upload_dataset, ds, "big-endian", npz_of_members(("x.npy", x), compression=compression))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error.details()
    assert error.details() == "array 'x' is big-endian (>f4); save it little-endian, e.g. a.astype('<f4')"
    assert_nothing_stored(ds, data_dir, "big-endian")


def test_an_npz_member_whose_header_is_refused_and_whose_stream_breaks_later_is_refused_as_damaged(
    ds, data_dir
):
    """A deflate stream that fails past the header (not its CRC-32) is damage too: one damage can
    both change the header and break the stream after it."""
    x = npy_bytes(np.arange(64 * 1024, dtype=">f4"))
    data = bytearray(npz_of_members(("x.npy", x), compression=zipfile.ZIP_DEFLATED))
    directory = data.find(b"PK\x01\x02")
    data[directory - 264 : directory - 200] = b"\xff" * 64
    error = rpc_error(upload_dataset, ds, "broken", bytes(data), sha256="", size_bytes=0)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error.details()
    assert error.details() == (
        "array 'x': its archive member is damaged (Error -3 while decompressing data: invalid block type)"
    )
    assert_nothing_stored(ds, data_dir, "broken")


def npz_of_members(*members: tuple[str, bytes], compression: int = zipfile.ZIP_STORED) -> bytes:
    """A zip of these (name, bytes) members, in order, as zipfile writes them (a name twice too)."""
    buffer = io.BytesIO()
    with warnings.catch_warnings(), zipfile.ZipFile(buffer, "w", compression) as archive:
        warnings.simplefilter("ignore", UserWarning)  # zipfile's warning of a duplicate name
        for name, data in members:
            archive.writestr(name, data)
    return buffer.getvalue()


def npy_header_then(shape: tuple[int, ...], data: bytes) -> bytes:
    """An npy file of a float32 array whose header says `shape`, then `data`."""
    return npy_header_alone(shape) + data


TINY = np.zeros(4, np.float32).tobytes()
WHOLE = npz_bytes(10)
NOT_AN_NPZ = (
    "the file is not a complete npz archive (no zip directory at its end: truncated, or not an npz); "
    "send the whole file again, as np.savez or np.savez_compressed wrote it"
)
OBJECTS = (
    "array 'x' holds Python objects (dtype object), e.g. ragged rows or mixed types; objects are "
    "never unpickled: store a dense numeric array (pad ragged rows to one length)"
)
HUGE = (
    "array 'x' is truncated: its header says shape [1099511627776, 1000] float32 (4398046511104000 "
    "bytes of data) but only 16 bytes follow; send the whole file again"
)
# In an npz whose directory and CRC-32s hold, the member was written so: sending it again is no fix.
HUGE_IN_NPZ = (
    "array 'x': its header says shape [1099511627776, 1000] float32 (4398046511104000 bytes of "
    "data) but its archive member holds 16 bytes after the header; the archive was written wrong: "
    "save the arrays again with np.savez or np.savez_compressed"
)


@pytest.mark.parametrize(
    ("data", "fields", "message"),
    [
        (WHOLE[: len(WHOLE) // 2], {}, NOT_AN_NPZ),
        (WHOLE[:-10], {}, NOT_AN_NPZ),
        (
            npz_of_members(("x.npy", npy_bytes(np.zeros(3))), ("x.npy", npy_bytes(np.ones(3)))),
            {},
            "array 'x' appears twice in the npz archive (two members named 'x.npy'); save each array "
            "once, under its own name, e.g. np.savez(file, x=x, y=y)",
        ),
        (
            npz_of_members(("x.npy", npy_bytes(np.zeros(3))), ("notes.txt", b"hello")),
            {},
            "npz member 'notes.txt' is not a .npy array; an npz holds only arrays: save the arrays "
            "alone, e.g. np.savez(file, x=x, y=y)",
        ),
        (npy_bytes(np.array([[1], [2, 3]], dtype=object)), {"format": D.DATASET_FORMAT_NPY}, OBJECTS),
        (npz_bytes(x=np.array([[1], [2, 3]], dtype=object)), {}, OBJECTS),
        (npy_header_then((2**40, 1000), TINY), {"format": D.DATASET_FORMAT_NPY}, HUGE),
        (npz_of_members(("x.npy", npy_header_then((2**40, 1000), TINY))), {}, HUGE_IN_NPZ),
        (
            npz_of_members(("x.npy", npy_header_then((2**40, 1000), TINY)), compression=zipfile.ZIP_DEFLATED),
            {},
            HUGE_IN_NPZ,
        ),
        (
            with_crc(npz_bytes(compressed=True, x=np.zeros(64, np.float32)), "x.npy", 0),
            {},
            CRC_REFUSED,
        ),
    ],
    ids=[
        "zip cut in half",
        "zip cut in its end record",
        "duplicate member",
        "member not npy",
        "npy of objects",
        "npz of objects",
        "npy of a huge shape",
        "npz of a huge shape",
        "compressed npz of a huge shape",
        "small compressed member damaged",
    ],
)
def test_bad_files_get_a_message_saying_what_to_fix_and_leave_nothing_stored(
    ds, data_dir, data, fields, message
):
    error = rpc_error(upload_dataset, ds, "bad", data, **fields)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error.details()
    assert error.details() == message
    assert_nothing_stored(ds, data_dir, "bad")


SERIES = npy_bytes(np.arange(50, dtype=np.float64))


@pytest.mark.parametrize(
    ("data", "fields", "message"),
    [
        (WHOLE[:-10], {}, NOT_AN_NPZ),
        (
            SERIES[:-16],
            {"format": D.DATASET_FORMAT_NPY},
            "array 'x' is truncated: its header says shape [50] float64 (400 bytes of data) but only "
            "384 bytes follow; send the whole file again",
        ),
    ],
    ids=["npz", "npy"],
)
def test_a_file_cut_short_in_upload_says_to_send_the_whole_file_again(ds, data_dir, data, fields, message):
    """No sha256 declared, so the upload's bytes are taken as sent and the file's own structure
    finds it short."""
    error = rpc_error(upload_dataset, ds, "cut", data, sha256="", size_bytes=0, **fields)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error.details()
    assert error.details() == message
    assert_nothing_stored(ds, data_dir, "cut")


FORTRAN = np.asfortranarray(np.arange(24, dtype=np.float32).reshape(6, 4))


@pytest.mark.parametrize(
    ("data", "fields"),
    [
        (npy_bytes(FORTRAN), {"format": D.DATASET_FORMAT_NPY}),
        (npz_bytes(x=FORTRAN), {}),
        (npz_bytes(compressed=True, x=FORTRAN), {}),
    ],
    ids=["npy", "npz", "compressed npz"],
)
def test_a_fortran_ordered_array_is_stored_and_read_as_it_was_saved(ds, daemon, data, fields):
    version = upload_dataset(ds, "columns", data, **fields)
    assert [(a.name, list(a.shape), a.stats.min, a.stats.max) for a in version.arrays] == [
        ("x", [6, 4], 0, 23)
    ]
    arrays = daemon.daemon.datasets.open_arrays(daemon.daemon.datasets.resolve("columns"))
    assert arrays["x"].tolist() == FORTRAN.tolist()


@pytest.mark.parametrize("compressed", [False, True], ids=["stored", "compressed"])
def test_nan_in_a_fortran_ordered_array_is_reported_at_its_index(ds, data_dir, compressed):
    x = FORTRAN.copy(order="F")
    x[4, 1] = np.nan
    error = rpc_error(upload_dataset, ds, "columns", npz_bytes(compressed=compressed, x=x))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error.details()
    assert error.details() == (
        "array 'x' has NaN or Inf values (the first at index [4, 1]); clean them, or accept them "
        "with allow_nonfinite"
    )
    assert_nothing_stored(ds, data_dir, "columns")
