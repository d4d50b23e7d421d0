"""Order-preserving key encoding: tuples of ints, strings and bytes to bytes.

LMDB compares keys as raw bytes, so a tuple's encoding must sort exactly like the tuple:
`pack((a, 1)) < pack((a, 2)) < pack((b,))` whenever `"a" < "b"`. Range scans over a
prefix (`pack(("run-1",))`) then give, for example, a run's metrics in step order.

Each element starts with a type tag. Integers are 8 bytes big-endian with the sign bit
flipped (so negatives sort first); strings (UTF-8) and bytes escape 0x00 as 0x00 0xFF and
end with 0x00 0x00, so a shorter string sorts before any longer one it prefixes.
"""

from __future__ import annotations

import struct

KeyPart = int | str | bytes
Key = tuple[KeyPart, ...]

_INT = 0x02
_STR = 0x03
_BYTES = 0x04
_SIGN = 1 << 63
_INT_MIN = -(1 << 63)
_INT_MAX = (1 << 63) - 1
_END = b"\x00\x00"
_INT_BYTE = bytes([_INT])


def _escape(raw: bytes) -> bytes:
    return raw.replace(b"\x00", b"\x00\xff") + _END


def pack(key: Key) -> bytes:
    """Encode a tuple so that byte order equals tuple order."""
    out = bytearray()
    for part in key:
        # bool is an int subclass; a key holding True is almost certainly a bug.
        if isinstance(part, bool):
            raise TypeError("keys cannot hold booleans")
        if isinstance(part, int):
            if not _INT_MIN <= part <= _INT_MAX:
                raise OverflowError(f"key integer {part} does not fit in 64 bits")
            out.append(_INT)
            out += struct.pack(">Q", part + _SIGN)
        elif isinstance(part, str):
            out.append(_STR)
            out += _escape(part.encode("utf-8"))
        elif isinstance(part, bytes):
            out.append(_BYTES)
            out += _escape(part)
        else:
            raise TypeError(f"keys hold int, str or bytes, not {type(part).__name__}")
    return bytes(out)


def pack_int(value: int) -> bytes:
    """`pack((value,))` for one integer, quicker: hot paths append it to a packed prefix
    (`pack(a + b) == pack(a) + pack(b)`)."""
    if not _INT_MIN <= value <= _INT_MAX:
        raise OverflowError(f"key integer {value} does not fit in 64 bits")
    return _INT_BYTE + (value + _SIGN).to_bytes(8, "big")


def _unescape(raw: bytes, start: int) -> tuple[bytes, int]:
    out = bytearray()
    i = start
    while True:
        j = raw.index(b"\x00", i)
        out += raw[i:j]
        marker = raw[j + 1]
        if marker == 0x00:
            return bytes(out), j + 2
        if marker != 0xFF:
            raise ValueError("malformed key: bad escape")
        out.append(0)
        i = j + 2


def unpack(raw: bytes) -> Key:
    """Decode what `pack` made."""
    parts: list[KeyPart] = []
    i = 0
    while i < len(raw):
        tag = raw[i]
        i += 1
        if tag == _INT:
            (value,) = struct.unpack_from(">Q", raw, i)
            parts.append(value - _SIGN)
            i += 8
        elif tag in (_STR, _BYTES):
            value_bytes, i = _unescape(raw, i)
            parts.append(value_bytes.decode("utf-8") if tag == _STR else value_bytes)
        else:
            raise ValueError(f"malformed key: unknown tag {tag:#x}")
    return tuple(parts)


def trailing_int(raw: bytes) -> int:
    """The last element of a packed key that ends with an integer, read without decoding the rest
    (hot scans that need only, say, the step of `run | key | step`)."""
    return int.from_bytes(raw[-8:], "big") - _SIGN


def prefix_range(prefix: Key) -> tuple[bytes, bytes]:
    """[start, end) of every key that begins with the elements of `prefix`."""
    start = pack(prefix)
    # Every tag is below 0xFF, so start + 0xFF bounds all extensions of the prefix.
    return start, start + b"\xff"
