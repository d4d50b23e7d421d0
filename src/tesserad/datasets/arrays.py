"""Safe reading of npy/npz files: headers parsed without pickle, every array checked, data
memory-mapped where the bytes lie uncompressed in the file.

Nothing here touches the store, so training worker processes can open a dataset file from
its path alone (`open_arrays`). Every problem is InvalidArgument naming the array; a file
that is gone is FailedPrecondition.
"""

from __future__ import annotations

import contextlib
import math
import re
import struct
import tokenize
import zipfile
import zlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Literal

import numpy as np

from tesserad.dtypes import MAX_ARRAY_DIMS, STRING, TENSOR_DTYPES
from tesserad.errors import FailedPrecondition, InvalidArgument, ResourceExhausted

# numpy dtype names a dataset array may have (tessera.v1.DataType, without bfloat16, which numpy
# lacks, and strings, which a model's signature may have but no array file of numbers holds).
ARRAY_DTYPES = frozenset(TENSOR_DTYPES) - {"bfloat16", STRING}
MAX_CLASSES = 1000
# The most bytes numpy lets an array's dimensions span (even with a 0 among them): it makes no
# array past it.
_MAX_ARRAY_BYTES = np.iinfo(np.intp).max
# Arrays an upload may hold, checked before any is read: a version is answered whole, and this
# many with names of up to 128 characters take about 3 MiB to describe.
MAX_ARRAYS = 10_000
_INT64_MAX = 2**63 - 1
# Statistics read this many elements at a time, so a large array is never pulled into memory
# whole: an npz member's pieces as zipfile reads them (checking its CRC-32 on the way), an npy's
# from its memory map.
_STATS_CHUNK_ELEMENTS = 1 << 20
_ZIP_LOCAL_HEADER = struct.Struct("<4s22xHH")
# The records at a zip's end that say how large its central directory is: the end record
# (signature, disk numbers, entries on this disk, entries, directory size, directory offset,
# comment length), and for zip64 a locator (signature, disk, offset of the zip64 end record,
# disks) after the zip64 end record (signature, record size, versions, disk numbers, entries on
# this disk, entries, directory size, directory offset).
_ZIP_END = struct.Struct("<4s4H2LH")
_ZIP64_LOCATOR = struct.Struct("<4sLQL")
_ZIP64_END = struct.Struct("<4sQ2H2L4Q")
_ZIP_END_MAGIC, _ZIP64_LOCATOR_MAGIC, _ZIP64_END_MAGIC = b"PK\x05\x06", b"PK\x06\x07", b"PK\x06\x06"
# zipfile looks for an end record followed by a comment (of up to 65535 bytes) this far back.
_ZIP_END_SEARCH = 1 << 16
# An end record's entry count or directory size at its largest means "see the zip64 record".
_ZIP_COUNT_IN_ZIP64, _ZIP_SIZE_IN_ZIP64 = 0xFFFF, 0xFFFFFFFF
# Directory bytes an upload's npz may have per array it may hold: the 46 fixed bytes of an
# entry, a name of up to 132 (128 and ".npy") and room for the extra fields and comments zip
# tools add. Far more bytes would be tiny entries, each a ZipInfo object once parsed.
_ZIP_DIRECTORY_BYTES_PER_ARRAY = 512
# What a file cut short in upload is to be: sent again, from its first byte to its last.
_SEND_AGAIN = "send the whole file again"
# What an npz whose directory is whole but whose records disagree with its bytes is to be.
_SAVE_AGAIN = "save the arrays again with np.savez or np.savez_compressed"
_NOT_AN_NPZ = (
    "the file is not a complete npz archive (no zip directory at its end: truncated, or not an npz); "
    f"{_SEND_AGAIN}, as np.savez or np.savez_compressed wrote it"
)
# An array's name, as a job spec names it (data.input_array, data.target_array) and a table
# shows it: an npz member at the archive's top level (no folder), or an npy's array_name,
# without control characters or spaces. Matched with fullmatch. Upper case is allowed:
# np.savez(file, X=X) is common.
_ARRAY_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_ARRAY_NAME_RULE = (
    "a job spec names arrays (data.input_array, data.target_array) by names of 1 to 128 characters "
    "from letters, digits, '.', '_' and '-', starting with a letter or digit"
)


class NonfiniteValues(InvalidArgument):
    """An array holds NaN or Inf values and its upload does not allow them."""


@dataclass(frozen=True)
class ArrayStats:
    min: float = 0.0
    max: float = 0.0
    mean: float = 0.0
    std: float = 0.0
    nonfinite_count: int = 0
    # Integer arrays with at most MAX_CLASSES distinct values: value -> count.
    class_counts: dict[int, int] = field(default_factory=dict)


@dataclass(frozen=True)
class ArrayInfo:
    name: str
    dtype: str  # numpy name, e.g. "float32"
    shape: tuple[int, ...]
    stats: ArrayStats = field(default_factory=ArrayStats)


@dataclass(frozen=True)
class _Member:
    """Where one array's data lies: file offset if stored uncompressed, else the zip member."""

    name: str
    dtype: np.dtype[Any]
    shape: tuple[int, ...]
    fortran_order: bool
    header_bytes: int  # the npy header's, before the data
    offset: int | None
    zip_member: str | None = None


def _read_header(stream: IO[bytes], array: str) -> tuple[np.dtype[Any], tuple[int, ...], bool, int]:
    """(dtype, shape, fortran_order, header bytes) of an .npy stream; checks dtype safety."""
    try:
        version = np.lib.format.read_magic(stream)
        if version == (1, 0):
            shape, fortran_order, dtype = np.lib.format.read_array_header_1_0(stream)
        elif version == (2, 0):
            shape, fortran_order, dtype = np.lib.format.read_array_header_2_0(stream)
        else:
            raise ValueError(f"npy format version {version} is not supported (1.0 and 2.0 are)")
    # numpy parses the header as a Python literal: a damaged one can also fail to tokenize, hold
    # keys of mixed types, which numpy sorts to name them, or a descr numpy parses as one too. An
    # npz member's damage (a bad CRC-32, which zipfile finds where the header read takes a small
    # member whole) is left to the caller to report as damage.
    except (ValueError, TypeError, SyntaxError, tokenize.TokenError, EOFError, OSError) as exc:
        raise InvalidArgument(f"array {array!r}: not a valid .npy array ({str(exc)[:200]})") from None
    header_bytes = stream.tell()
    if dtype.hasobject:
        raise InvalidArgument(
            f"array {array!r} holds Python objects (dtype {dtype}), e.g. ragged rows or mixed types; "
            "objects are never unpickled: store a dense numeric array (pad ragged rows to one length)"
        )
    if dtype.names is not None or dtype.name not in ARRAY_DTYPES:
        raise InvalidArgument(
            f"array {array!r} has dtype {dtype}, which datasets cannot hold; use bool, "
            "(u)int8/16/32/64 or float16/32/64"
        )
    if dtype.byteorder == ">":
        raise InvalidArgument(
            f"array {array!r} is big-endian ({dtype.str}); save it little-endian, e.g. a.astype('{dtype.newbyteorder('<').str}')"
        )
    if not shape:
        raise InvalidArgument(f"array {array!r} is a scalar; every array needs a first (sample) dimension")
    if any(d < 0 for d in shape):
        raise InvalidArgument(
            f"array {array!r}: its header gives shape {list(shape)}, with a negative dimension"
        )
    if len(shape) > MAX_ARRAY_DIMS:
        raise InvalidArgument(
            f"array {array!r}: its header gives a shape of {len(shape)} dimensions; an array has at most "
            f"{MAX_ARRAY_DIMS}: save the array with the shape its data has"
        )
    # A sample's dimensions here; the first, the samples, once their count is checked (_check_arrays).
    _refuse_unmakeable(array, shape, dtype, samples_too=False)
    return dtype, tuple(int(d) for d in shape), bool(fortran_order), header_bytes


def _refuse_unmakeable(array: str, shape: tuple[int, ...], dtype: np.dtype[Any], samples_too: bool) -> None:
    """InvalidArgument when the dimensions of `shape` (the samples' too when `samples_too`, else
    a sample's alone) span more bytes than numpy makes an array of, even one holding no value:
    its ValueError, reading the array, would be an internal error. Only a shape with a 0 can:
    one holding values is held to the file's size."""
    spanning = shape if samples_too else shape[1:]
    if math.prod(d for d in spanning if d) * dtype.itemsize > _MAX_ARRAY_BYTES:
        spanned = math.prod(d for d in shape if d) * dtype.itemsize
        raise InvalidArgument(
            f"array {array!r}: its header gives shape {list(shape)}, whose dimensions other than 0 "
            f"multiply to {spanned} bytes of {dtype.name}, more than an array can span "
            f"({_MAX_ARRAY_BYTES} bytes), though it holds no values; save the array with the shape "
            "its data has"
        )


def _check_length(
    array: str, dtype: np.dtype[Any], shape: tuple[int, ...], available: int, in_archive: bool = False
) -> None:
    """`in_archive`: the bytes are an npz member's, whose size the zip's directory gives: a member
    shorter than its header says was written so, as the file's end is the directory's."""
    expected = math.prod(shape) * dtype.itemsize
    if available < expected and in_archive:
        raise InvalidArgument(
            f"array {array!r}: its header says shape {list(shape)} {dtype.name} ({expected} bytes of "
            f"data) but its archive member holds {available} bytes after the header; the archive was "
            f"written wrong: {_SAVE_AGAIN}"
        )
    if available < expected:
        raise InvalidArgument(
            f"array {array!r} is truncated: its header says shape {list(shape)} {dtype.name} "
            f"({expected} bytes of data) but only {available} bytes follow; {_SEND_AGAIN}"
        )
    if available > expected:
        raise InvalidArgument(
            f"array {array!r} has {available - expected} bytes after its data; the file is damaged"
        )


def _check_within(
    array: str, dtype: np.dtype[Any], shape: tuple[int, ...], offset: int, file_size: int
) -> None:
    """A stored npz member's data lies within the file: its sizes come from the zip's records,
    which can claim more than the file holds, and a memory map past the end fails."""
    expected = math.prod(shape) * dtype.itemsize
    if offset + expected > file_size:
        # The zip's directory is at the file's end and was read: the records lie, not the upload.
        raise InvalidArgument(
            f"array {array!r}: its header says shape {list(shape)} {dtype.name} ({expected} bytes of "
            f"data) but the file ends {max(0, file_size - offset)} bytes into them, though its zip "
            f"directory is whole; the archive was written wrong or damaged: {_SAVE_AGAIN}"
        )


def _npy_members(path: Path, array_name: str) -> list[_Member]:
    with path.open("rb") as file:
        dtype, shape, fortran, header = _read_header(file, array_name)
    _check_length(array_name, dtype, shape, path.stat().st_size - header)
    return [_Member(array_name, dtype, shape, fortran, header, header)]


@dataclass(frozen=True)
class ZipDirectory:
    """What a zip's end records say of its central directory."""

    entries: int
    size: int  # bytes


def _zip_end_at(tail: bytes) -> int | None:
    """Where the end record lies in a file's last bytes, found as zipfile finds it: last, or
    followed by its comment."""
    last = len(tail) - _ZIP_END.size
    if last >= 0 and tail.startswith(_ZIP_END_MAGIC, last) and tail.endswith(b"\0\0"):
        return last
    at = tail.rfind(_ZIP_END_MAGIC, max(0, last - _ZIP_END_SEARCH))
    if at < 0 or len(tail) - at < _ZIP_END.size:
        return None
    return at


def zip_directory(file: IO[bytes]) -> ZipDirectory:
    """The entry count and size of a zip's central directory, read from its end records alone:
    zipfile parses the whole directory into a ZipInfo per entry before it can be asked how many
    there are. Where records disagree (a zip64 record where zipfile may read one, an end record
    without the zip64 placeholders) the largest is answered, so no zipfile reads a larger
    directory than this says. InvalidArgument when the file has no end record."""
    file_size = file.seek(0, 2)
    start = max(0, file_size - (_ZIP64_END.size + _ZIP64_LOCATOR.size + _ZIP_END.size + _ZIP_END_SEARCH))
    file.seek(start)
    tail = file.read()
    end = _zip_end_at(tail)
    if end is None:
        raise InvalidArgument(_NOT_AN_NPZ)
    entries, size = _ZIP_END.unpack_from(tail, end)[4:6]
    zip64: list[tuple[int, int]] = []
    locator = end - _ZIP64_LOCATOR.size
    if locator >= 0 and tail[locator : locator + 4] == _ZIP64_LOCATOR_MAGIC:
        record_offset = _ZIP64_LOCATOR.unpack_from(tail, locator)[2]
        # zipfile (3.11) reads the zip64 record just before the locator; the zip format puts it
        # where the locator says. Both are read.
        candidates = [tail[max(0, locator - _ZIP64_END.size) : locator]]
        if record_offset + _ZIP64_END.size <= file_size:
            file.seek(record_offset)
            candidates.append(file.read(_ZIP64_END.size))
        for record in candidates:
            if len(record) == _ZIP64_END.size and record[:4] == _ZIP64_END_MAGIC:
                zip64.append(_ZIP64_END.unpack(record)[7:9])
    counts = [n for n, _ in zip64] + ([] if zip64 and entries == _ZIP_COUNT_IN_ZIP64 else [entries])
    sizes = [s for _, s in zip64] + ([] if zip64 and size == _ZIP_SIZE_IN_ZIP64 else [size])
    return ZipDirectory(max(counts), max(sizes))


def _check_zip_directory(directory: ZipDirectory, most: int) -> None:
    if directory.entries > most:
        raise InvalidArgument(_too_many_members(directory.entries, most))
    if directory.size > most * _ZIP_DIRECTORY_BYTES_PER_ARRAY:
        raise InvalidArgument(
            f"the npz archive's directory takes {directory.size} bytes, more than the "
            f"{most * _ZIP_DIRECTORY_BYTES_PER_ARRAY} that the {most} arrays a dataset may have need "
            f"({_ZIP_DIRECTORY_BYTES_PER_ARRAY} bytes each); the archive is damaged or holds far more "
            "members than arrays: save the arrays with np.savez"
        )


def _too_many_members(count: int, most: int) -> str:
    return (
        f"the npz archive holds {count} members, over the {most} arrays a dataset "
        "may have (so that any answer holding its version fits gRPC's 4 MiB); stack arrays of one "
        "shape into one, or split the data into several datasets"
    )


def check_npz_directory(path: Path, format: str) -> None:
    """An npz's end records against the MAX_ARRAYS arrays a dataset may have, before zipfile
    parses its directory (a ZipInfo object per entry, so many that a crafted archive takes more
    memory than the machine has): every upload's file passes it, and a stored file passes it
    again before a job's workers open it, as a store restored from an older tesserad's backup
    may hold one that never did. InvalidArgument if it fails; an npy passes."""
    if format != "npz":
        return
    with path.open("rb") as file:
        _check_zip_directory(zip_directory(file), MAX_ARRAYS)


def _unreadable_zip(what: str, exc: NotImplementedError) -> str:
    """What zipfile cannot read (a compression method such as deflate64, strong encryption, a
    newer zip version), in words."""
    return (
        f"{what} uses a zip feature that cannot be read ({str(exc)[:200]}); save the arrays with "
        "np.savez or np.savez_compressed"
    )


def _check_archive_start(archive: zipfile.ZipFile) -> None:
    """zipfile reads an archive that other bytes precede (it shifts every offset by them), so a
    chunk sent twice or out of order can leave a file that reads as an npz yet is not the file
    sent; numpy writes its first member at the file's first byte."""
    start = min((info.header_offset for info in archive.infolist()), default=0)
    if start:
        raise InvalidArgument(
            f"the npz archive starts {start} bytes into the file, after bytes that are not its own (a "
            "chunk sent twice or out of order?); send the npz file as it is, in order"
        )


# Zip methods zipfile reads but numpy never writes, refused at upload: see _npz_members. Those
# zipfile cannot read (deflate64, ...) are refused as such.
_UNBOUNDED_ZIP_METHODS = {zipfile.ZIP_BZIP2: "bzip2", zipfile.ZIP_LZMA: "LZMA"}


@contextlib.contextmanager
def _opened_npz(path: Path, upload: bool) -> Iterator[zipfile.ZipFile]:
    """The npz archive, its directory parsed once for every check and read that follows: with
    thousands of members, a parse is a ZipInfo object each. `upload`: the archive may have
    MAX_ARRAYS members at most (else as many as a stored one has)."""
    if upload:
        check_npz_directory(path, "npz")
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError):
        raise InvalidArgument(_NOT_AN_NPZ) from None
    except ValueError as exc:  # a member name marked UTF-8 that does not decode
        raise InvalidArgument(f"the npz archive's directory is damaged ({str(exc)[:200]})") from None
    except NotImplementedError as exc:
        raise InvalidArgument(_unreadable_zip("the npz archive", exc)) from None
    with archive:
        count = len(archive.infolist())
        # An end record may understate the entries its directory holds.
        if upload and count > MAX_ARRAYS:
            raise InvalidArgument(_too_many_members(count, MAX_ARRAYS))
        if upload:
            _check_archive_start(archive)
        yield archive


# What a dataset's compressed arrays unpack to (bytes of each), checked against the size limit
# (`inspect_file`).
CheckUnpacked = Callable[[dict[str, int]], None]


def _npz_members(
    archive: zipfile.ZipFile, path: Path, upload: bool, check_unpacked: CheckUnpacked | None
) -> list[_Member]:
    members: list[_Member] = []
    seen: set[str] = set()
    with path.open("rb") as raw:
        file_size = path.stat().st_size
        for info in archive.infolist():
            if not info.filename.endswith(".npy"):
                raise InvalidArgument(
                    f"npz member {info.filename!r} is not a .npy array; an npz holds only arrays: save "
                    "the arrays alone, e.g. np.savez(file, x=x, y=y)"
                )
            name = info.filename[: -len(".npy")]
            if not name:  # a job could never name it (an empty array name means the default)
                raise InvalidArgument(
                    "npz member '.npy' has no array name; save arrays by name, e.g. np.savez(file, x=x, y=y)"
                )
            if name in seen:
                raise InvalidArgument(
                    f"array {name!r} appears twice in the npz archive (two members named "
                    f"{info.filename!r}); save each array once, under its own name, e.g. np.savez(file, x=x, y=y)"
                )
            seen.add(name)
            if info.flag_bits & 0x1:
                raise InvalidArgument(f"array {name!r} is encrypted in the archive; upload it unencrypted")
            if upload and info.compress_type in _UNBOUNDED_ZIP_METHODS:
                # zipfile unpacks a bzip2 or LZMA block whole before it trims it to the size asked
                # for: a few hundred bytes of one take hundreds of MB of memory, header read alone.
                raise InvalidArgument(
                    f"array {name!r} is compressed with {_UNBOUNDED_ZIP_METHODS[info.compress_type]} "
                    "in the archive; numpy writes npz members stored or deflated: save it with "
                    "np.savez or np.savez_compressed"
                )
            try:
                with archive.open(info) as stream:
                    dtype, shape, fortran, header = _read_header(stream, name)
                _check_length(name, dtype, shape, info.file_size - header, in_archive=True)
            # ValueError: a member header whose name does not decode.
            except (zipfile.BadZipFile, zlib.error, EOFError, OSError, ValueError) as exc:
                # A small member is read whole here, so its CRC-32 fails here.
                raise _damaged_member(name, exc) from None
            except NotImplementedError as exc:
                raise InvalidArgument(_unreadable_zip(f"array {name!r}: its archive member", exc)) from None
            except InvalidArgument:
                if upload:
                    _check_member_crc(archive, info, name, check_unpacked)
                raise
            offset = None
            if info.compress_type == zipfile.ZIP_STORED:
                raw.seek(info.header_offset)
                local = raw.read(_ZIP_LOCAL_HEADER.size)
                if len(local) < _ZIP_LOCAL_HEADER.size:
                    raise InvalidArgument(f"array {name!r}: the archive is truncated; {_SEND_AGAIN}")
                magic, name_len, extra_len = _ZIP_LOCAL_HEADER.unpack(local)
                if magic != b"PK\x03\x04":
                    raise InvalidArgument(f"array {name!r}: the archive's member header is damaged")
                offset = info.header_offset + _ZIP_LOCAL_HEADER.size + name_len + extra_len + header
                _check_within(name, dtype, shape, offset, file_size)
            members.append(_Member(name, dtype, shape, fortran, header, offset, info.filename))
    if not members:
        raise InvalidArgument("the npz archive holds no arrays")
    return members


def _check_member_crc(
    archive: zipfile.ZipFile, info: zipfile.ZipInfo, name: str, check_unpacked: CheckUnpacked | None
) -> None:
    """Refuse a member whose header was refused as damaged if its bytes fail their CRC-32: a
    damaged byte can be what the header says wrong (a dtype, a byte order, a shape), and the file
    must be sent again before any of those can be fixed. The member is read through as the
    statistics would read it, so a compressed one only where what it unpacks to is within the
    size limit (a few KiB of zip can unpack to terabytes); past it, its header's refusal stands."""
    if info.compress_type != zipfile.ZIP_STORED:
        if check_unpacked is None:
            return
        try:
            check_unpacked({name: info.file_size})
        except ResourceExhausted:
            return
    try:
        with archive.open(info) as stream:
            while stream.read(_STATS_CHUNK_ELEMENTS):
                pass
    except (zipfile.BadZipFile, zlib.error) as exc:
        # A CRC-32 failure, or a deflate stream broken past the header: damage either way.
        raise _damaged_member(name, exc) from None
    except (EOFError, OSError):
        # The member is cut short or unreadable, which its header's refusal says better.
        pass


@contextlib.contextmanager
def _members(
    path: Path,
    format: str,
    array_name: str,
    upload: bool = False,
    check_unpacked: CheckUnpacked | None = None,
) -> Iterator[tuple[list[_Member], zipfile.ZipFile | None]]:
    """The file's arrays, with its npz archive (None for an npy) open while the block runs.
    `check_unpacked`: an upload's, as `inspect_file` takes it."""
    if not path.is_file():
        # A worker can reach a version deleted with force after its job started. The path is
        # the server's own and stays out of the message.
        raise FailedPrecondition(
            "the dataset file is gone from the blob directory: its version was deleted (with force) "
            "while in use; upload the dataset again"
        )
    if format == "npy":
        yield _npy_members(path, array_name), None
        return
    with _opened_npz(path, upload) as archive:
        yield _npz_members(archive, path, upload, check_unpacked), archive


def _mapped(path: Path, member: _Member, offset: int) -> np.ndarray:
    """An array stored uncompressed at `offset`, memory-mapped from the file."""
    if math.prod(member.shape) == 0:
        return np.empty(member.shape, member.dtype)
    order: Literal["F", "C"] = "F" if member.fortran_order else "C"
    return np.memmap(path, member.dtype, "r", offset, member.shape, order)


def _unpacked(archive: zipfile.ZipFile, member: _Member) -> np.ndarray:
    """An array compressed in an npz, read into memory."""
    with archive.open(member.zip_member or "") as stream:
        try:
            return np.lib.format.read_array(stream, allow_pickle=False)
        except (ValueError, zipfile.BadZipFile, zlib.error, EOFError) as exc:
            raise InvalidArgument(f"array {member.name!r}: cannot be read ({str(exc)[:200]})") from None


def _array(path: Path, member: _Member, archive: zipfile.ZipFile | None) -> np.ndarray:
    """`member`'s array: memory-mapped where it lies uncompressed in the file, else read from
    `archive`, whose directory was read once for every member (read anew for each, an npz of
    thousands of compressed arrays took time quadratic in their number: 4,000 arrays, 70 s)."""
    if member.offset is not None:
        return _mapped(path, member, member.offset)
    assert archive is not None  # only an npz member lies elsewhere than at an offset
    return _unpacked(archive, member)


def open_arrays(path: Path, format: str, array_name: str = "x") -> dict[str, np.ndarray]:
    """Every array of a dataset file, read-only; memory-mapped unless compressed inside an npz."""
    with _members(path, format, array_name) as (members, archive):
        return {member.name: _array(path, member, archive) for member in members}


def all_whole(path: Path, format: str, array_name: str, name: str, max_bytes: int) -> bool:
    """Whether array `name` of a dataset file holds finite values and every one is a whole
    number, read chunk by chunk; False for an array over `max_bytes` (a hint is not worth
    unpacking a large compressed member for) and for one of no finite value."""
    with _members(path, format, array_name) as (members, archive):
        member = next((m for m in members if m.name == name), None)
        if member is None or math.prod(member.shape) * np.dtype(member.dtype).itemsize > max_bytes:
            return False
        array = _array(path, member, archive)
    finite_seen = False
    for _start, chunk in _chunks(array):
        finite = chunk[np.isfinite(chunk)]
        if finite.size and not np.array_equal(finite, np.round(finite)):
            return False
        finite_seen = finite_seen or finite.size > 0
    return finite_seen


def _memory_order(array: np.ndarray) -> Literal["F", "C"]:
    return "F" if array.flags.f_contiguous and not array.flags.c_contiguous else "C"


def _chunks(array: np.ndarray) -> Iterator[tuple[int, np.ndarray]]:
    """(flat index of its first element, chunk) over the elements in memory order, each chunk
    one-dimensional and at most _STATS_CHUNK_ELEMENTS long: cut by rows, one sample of a
    spacetime array could be more than the memory the daemon can spare."""
    flat = array.reshape(-1, order=_memory_order(array))  # a view of a stored, contiguous array
    for start in range(0, flat.size, _STATS_CHUNK_ELEMENTS):
        yield start, np.asarray(flat[start : start + _STATS_CHUNK_ELEMENTS])


def array_stats(name: str, array: np.ndarray, allow_nonfinite: bool) -> ArrayStats:
    """min, max, mean, std over finite values (merged chunk by chunk), NaN/Inf count, class counts."""
    return _stats(name, _chunks(array), array.dtype, array.shape, _memory_order(array), allow_nonfinite)


def _stats(
    name: str,
    chunks: Iterable[tuple[int, np.ndarray]],
    dtype: np.dtype[Any],
    shape: tuple[int, ...],
    order: Literal["F", "C"],
    allow_nonfinite: bool,
) -> ArrayStats:
    """array_stats of the array of `dtype` and `shape` whose elements, in memory `order`, `chunks`
    gives (as _chunks does)."""
    kind = dtype.kind
    # The moments are taken in units of `scale`, a power of two (so dividing by it is exact) near
    # the largest magnitude seen: finite values near the largest float would overflow their sum or
    # their squares, and come out as an infinite mean or a NaN std. m2 is in units of scale**2.
    count, mean, m2, scale = 0, 0.0, 0.0, 1.0
    low, high = math.inf, -math.inf
    nonfinite = 0
    classes: dict[int, int] | None = {} if kind in "iu" else None
    for start, chunk in chunks:
        values = chunk
        if kind == "f":
            finite = np.isfinite(chunk)
            bad = chunk.size - int(np.count_nonzero(finite))
            if bad:
                if not allow_nonfinite:
                    at = start + int(np.flatnonzero(~finite)[0])
                    index = [int(i) for i in np.unravel_index(at, shape, order=order)]
                    raise NonfiniteValues(
                        f"array {name!r} has NaN or Inf values (the first at index {index}); "
                        "clean them, or accept them with allow_nonfinite"
                    )
                nonfinite += bad
                values = chunk[finite]
        if values.size == 0:
            continue
        as_float = values.astype(np.float64, copy=False)
        low = min(low, float(as_float.min()))
        high = max(high, float(as_float.max()))
        new_scale = max(scale, _power_of_two_near(max(abs(low), abs(high))))
        scaled = as_float if new_scale == 1.0 else as_float / new_scale
        chunk_mean = float(scaled.mean())
        chunk_m2 = float(np.square(scaled - chunk_mean).sum())
        m2 *= (scale / new_scale) ** 2
        scale = new_scale
        total = count + scaled.size
        delta = chunk_mean - mean / scale
        # Chan et al.'s pairwise update keeps the variance exact-ish across chunks.
        m2 += chunk_m2 + delta * delta * count * scaled.size / total
        mean = (mean / scale + delta * scaled.size / total) * scale
        count = total
        if classes is not None:
            uniques, counts = np.unique(values, return_counts=True)
            for value, n in zip(uniques.tolist(), counts.tolist(), strict=True):
                classes[int(value)] = classes.get(int(value), 0) + int(n)
            # class_counts keys are int64 (a proto map<int64, int64>): uint64 past it gets none.
            if len(classes) > MAX_CLASSES or (uniques.size and int(uniques[-1]) > _INT64_MAX):
                classes = None
    if count == 0:
        return ArrayStats(nonfinite_count=nonfinite)
    return ArrayStats(low, high, mean, math.sqrt(m2 / count) * scale, nonfinite, classes or {})


def _power_of_two_near(magnitude: float) -> float:
    """The power of two at most `magnitude` and more than half of it (1.0 for 0): dividing by it
    takes the values to [-2, 2], whose squares and sums stay finite."""
    if magnitude == 0:
        return 1.0
    return math.ldexp(1.0, math.frexp(magnitude)[1] - 1)


def _pieces(stream: IO[bytes], member: _Member) -> Iterator[tuple[int, np.ndarray]]:
    """(flat index of its first element, piece) over the data of `stream`, an npz member read past
    its npy header, as _chunks cuts an array: the member holds its elements in memory order."""
    itemsize = member.dtype.itemsize
    start = 0
    while data := stream.read(_STATS_CHUNK_ELEMENTS * itemsize):
        if len(data) % itemsize:
            break
        piece = np.frombuffer(data, member.dtype)
        yield start, piece
        start += piece.size
    # The member's sizes were checked against its header; zipfile stops short only where the zip's
    # records disagree on them.
    if data or start != math.prod(member.shape):
        raise InvalidArgument(
            f"array {member.name!r}: its archive member is damaged (it holds fewer bytes than its "
            "sizes in the archive say)"
        )


def _member_stats(archive: zipfile.ZipFile, member: _Member, allow_nonfinite: bool) -> ArrayStats:
    """array_stats of an npz member, read once through zipfile, which checks its CRC-32 at its end:
    a stored member is memory-mapped from the file when a job reads it, which checks nothing, so
    bytes damaged, or chunks sent out of order without a declared sha256, would be stored as values."""
    order: Literal["F", "C"] = "F" if member.fortran_order else "C"
    try:
        with archive.open(member.zip_member or "") as stream:
            stream.read(member.header_bytes)
            try:
                return _stats(
                    member.name, _pieces(stream, member), member.dtype, member.shape, order, allow_nonfinite
                )
            except InvalidArgument:
                # Values that damage made NaN are reported as damage: the rest of the member is
                # read for its CRC-32 before they are.
                while stream.read(_STATS_CHUNK_ELEMENTS):
                    pass
                raise
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError) as exc:
        raise _unreadable_member(member, exc) from None


def _verified_stats(
    archive: zipfile.ZipFile, members: list[_Member], allow_nonfinite: bool
) -> tuple[list[ArrayStats], NonfiniteValues | None]:
    """Each member's statistics, every member's CRC-32 checked, before what the arrays hold is
    judged: damage can be what made a shape, a name or a value wrong, and the file must be sent
    again before any of those can be fixed. NaN or Inf values found are answered (the first
    array's) for the caller to raise after the checks of names and shapes, as an npy's are."""
    stats: list[ArrayStats] = []
    refused: NonfiniteValues | None = None
    for member in members:
        try:
            # Once values are refused, the rest are read for their CRC-32 alone.
            stats.append(_member_stats(archive, member, allow_nonfinite or refused is not None))
        except NonfiniteValues as exc:
            refused = exc
            stats.append(ArrayStats())
    return stats, refused


def _unreadable_member(member: _Member, exc: Exception) -> InvalidArgument:
    if member.offset is None and "CRC" not in str(exc):
        return InvalidArgument(f"array {member.name!r}: cannot be read ({str(exc)[:200]})")
    return _damaged_member(member.name, exc)


def _damaged_member(name: str, exc: Exception) -> InvalidArgument:
    """A member whose read failed: a CRC-32 failure, stored or compressed and wherever it is
    found, in one message that says what to do."""
    if "CRC" in str(exc):
        return InvalidArgument(
            f"array {name!r}: its bytes do not match the CRC-32 the archive gives them (damaged, "
            "or chunks sent twice or out of order); send the npz file as it is, in order"
        )
    return InvalidArgument(f"array {name!r}: its archive member is damaged ({str(exc)[:200]})")


def check_array_name(field: str, name: str) -> None:
    """An npy's array_name, which a job spec names as it names an npz's arrays."""
    if not _ARRAY_NAME.fullmatch(name):
        raise InvalidArgument(f"{field} {name[:80]!r} is not a valid name: {_ARRAY_NAME_RULE}")


def _check_npz_array_name(name: str) -> None:
    """Checked on upload only: a stored dataset stays readable whatever its names."""
    if not _ARRAY_NAME.fullmatch(name):
        raise InvalidArgument(
            f"npz array {name[:80]!r}: {_ARRAY_NAME_RULE}, at the archive's top level (no folders); "
            "save the arrays under such names, e.g. np.savez(file, x=x, y=y)"
        )


def _check_sample_count(path: Path, members: list[_Member]) -> None:
    """A sample that holds a value takes at least a byte of the file or of what it unpacks to, and
    both are bounded by limits.max_dataset_size. Samples that hold none take no byte: a header
    alone could claim 2**62 of them, whose statistics and split indices (8 bytes a sample) no
    daemon could compute or store. So those are held to the file's size in bytes."""
    if any(math.prod(m.shape[1:]) for m in members):
        return
    size = path.stat().st_size
    if members[0].shape[0] > size:
        shapes = ", ".join(f"{m.name} {list(m.shape)}" for m in members)
        raise InvalidArgument(
            f"the arrays hold no values ({shapes}), and a dataset whose samples hold none may have at "
            f"most as many samples as its file has bytes ({size}); give each sample a value or upload "
            "fewer samples"
        )


def _check_arrays(path: Path, format: str, members: list[_Member]) -> None:
    """What a job needs of the arrays' names and shapes."""
    if format == "npz":
        for member in members:
            _check_npz_array_name(member.name)
    first_dims = {m.name: m.shape[0] for m in members}
    if len(set(first_dims.values())) > 1:
        listed = ", ".join(f"{name} has {n}" for name, n in first_dims.items())
        raise InvalidArgument(
            f"arrays differ in their first (sample) dimension: {listed}; every array needs one row per sample"
        )
    if members[0].shape[0] == 0:
        # No split, and so no job, could take a sample from it.
        shapes = ", ".join(f"{m.name} {list(m.shape)}" for m in members)
        raise InvalidArgument(
            f"the dataset holds no samples: the first (sample) dimension of its arrays is 0 ({shapes}); "
            "upload arrays with one row per sample, at least one"
        )
    _check_sample_count(path, members)
    for member in members:
        _refuse_unmakeable(member.name, member.shape, member.dtype, samples_too=True)


def inspect_file(
    path: Path,
    format: str,
    array_name: str,
    allow_nonfinite: bool,
    check_unpacked: CheckUnpacked | None = None,
) -> tuple[list[ArrayInfo], int]:
    """Check every array of an uploaded dataset file, an npz array against its CRC-32 too, in
    the one pass that takes its statistics; (arrays with statistics, number of samples).

    `check_unpacked` is given the bytes of each array compressed inside an npz once the headers
    are read, before any array's data is: a job reads those into memory whole, where stored
    arrays are memory-mapped.

    A file with several problems is refused for the first a user must fix: what the archive and
    the npy headers say (read first, as they bound the work that follows; an npz member whose
    header is refused is checked against its CRC-32 first, and refused as damaged if it fails),
    the unpacked size, an npz's damage (CRC-32), the arrays' names and shapes, and last NaN or
    Inf values."""
    with _members(path, format, array_name, upload=True, check_unpacked=check_unpacked) as (
        members,
        archive,
    ):
        if check_unpacked is not None:
            check_unpacked(
                {m.name: math.prod(m.shape) * m.dtype.itemsize for m in members if m.offset is None}
            )
        if archive is None:
            _check_arrays(path, format, members)
            stats = [array_stats(m.name, _array(path, m, None), allow_nonfinite) for m in members]
        else:
            stats, refused_values = _verified_stats(archive, members, allow_nonfinite)
            _check_arrays(path, format, members)
            if refused_values is not None:
                raise refused_values
    infos = [ArrayInfo(m.name, m.dtype.name, m.shape, st) for m, st in zip(members, stats, strict=True)]
    return infos, members[0].shape[0]
