"""Zip archives built byte by byte: end records zipfile writes only for huge archives, and the
records a crafted upload could carry."""

from __future__ import annotations

import struct

END = struct.Struct("<4s4H2LH")
ZIP64_LOCATOR = struct.Struct("<4sLQL")
ZIP64_END = struct.Struct("<4sQ2H2L4Q")
# A central directory entry's 46 fixed bytes: signature, versions, flags, method, time, date,
# crc, sizes, name/extra/comment lengths, disk, attributes, local header offset.
DIRECTORY_ENTRY = struct.Struct("<4s6H3L5H2L")


def end_record(data: bytes) -> tuple[int, int, int]:
    """(entries, directory size, directory offset) of a zip without a comment or zip64 record."""
    entries, size, offset = END.unpack(data[-END.size :])[4:7]
    return entries, size, offset


def zip64_end(body: bytes, entries: int, size: int, offset: int, classic_entries: int = 0xFFFF) -> bytes:
    """`body` (the members and their directory) closed by a zip64 end record and its locator, then
    an end record whose fields point to them, as zip tools write it for large archives."""
    record = ZIP64_END.pack(b"PK\x06\x06", ZIP64_END.size - 12, 45, 45, 0, 0, entries, entries, size, offset)
    locator = ZIP64_LOCATOR.pack(b"PK\x06\x07", 0, len(body), 1)
    end = END.pack(b"PK\x05\x06", 0, 0, classic_entries, classic_entries, 0xFFFFFFFF, 0xFFFFFFFF, 0)
    return body + record + locator + end


def with_zip64_end(data: bytes, entries: int | None = None) -> bytes:
    """A zip (no comment) with its end record replaced by zip64 end records; `entries`: the count
    they claim (default the true one)."""
    true_entries, size, offset = end_record(data)
    return zip64_end(data[: -END.size], true_entries if entries is None else entries, size, offset)


def tiny_entries(count: int) -> bytes:
    """A zip whose directory lists `count` entries of 51 bytes, all named a.npy, and nothing else:
    the most entries a file of its size can make zipfile parse."""
    entry = DIRECTORY_ENTRY.pack(b"PK\x01\x02", 20, 20, 0, 0, 0, 0, 0, 0, 0, 5, 0, 0, 0, 0, 0, 0) + b"a.npy"
    directory = entry * count
    if count <= 0xFFFF:
        return directory + END.pack(b"PK\x05\x06", 0, 0, count, count, len(directory), 0, 0)
    return zip64_end(directory, count, len(directory), 0)
