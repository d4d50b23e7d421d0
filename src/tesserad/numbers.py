"""Whole numbers written as text by a caller (query parameters, path segments, headers, OIP's
model_version): parsed once, at the edge, with a message that names the field and its range;
and wall-clock times as the whole units answers and filters carry."""

from __future__ import annotations

from tesserad.errors import InvalidArgument

# Versions, sequence numbers and steps are int64 in the protos and in the store's keys.
INT64_MAX = 2**63 - 1


def epoch_nanoseconds(seconds: float) -> int:
    """Wall-clock seconds as the nanoseconds an answer's Timestamp carries."""
    return round(seconds * 1e9)


def epoch_milliseconds(seconds: float) -> int:
    """Wall-clock seconds as the milliseconds a client reads from that Timestamp (whole ones,
    rounded down): a time filter compares with these, so the time a client read matches."""
    return epoch_nanoseconds(seconds) // 1_000_000


def is_digits(text: str) -> bool:
    """Whether `text` is written in digits 0-9 alone: str.isdigit() also passes other scripts'
    digits, which int() reads ("٣" as 3), and "²", which int() refuses."""
    return text.isascii() and text.isdigit()


def whole_number(field: str, text: str, low: int, high: int) -> int:
    """`text` as an int in low..high, else InvalidArgument naming `field`.

    Only digits 0-9 are taken: int() would also read other scripts' digits, a sign, surrounding
    spaces and "1_0"."""
    digits = text.lstrip("0") or "0"
    # The length test first: int() refuses over 4300 digits, and a long text is out of range anyway.
    if not is_digits(text) or len(digits) > len(str(high)) or not low <= int(digits) <= high:
        shown = text if len(text) <= 40 else text[:40] + "..."
        raise InvalidArgument(
            f"{field} must be a whole number in {low}..{high} written in digits 0-9, got {shown!r}"
        )
    return int(digits)
