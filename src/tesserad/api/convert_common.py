"""Conversions shared by every service: timestamps and the common.proto types."""

from __future__ import annotations

from typing import Any

from google.protobuf import json_format
from google.protobuf.struct_pb2 import Struct
from google.protobuf.timestamp_pb2 import Timestamp

from tesserad.errors import InvalidArgument
from tesserad.numbers import epoch_nanoseconds

# The range protobuf's Timestamp allows: 0001-01-01 to 9999-12-31.
_MIN_SECONDS = -62_135_596_800
_MAX_SECONDS = 253_402_300_799


def timestamp(seconds: float) -> Timestamp:
    """A protobuf Timestamp from wall-clock seconds since the epoch."""
    ts = Timestamp()
    ts.FromNanoseconds(epoch_nanoseconds(seconds))
    return ts


def seconds(ts: Timestamp, field: str = "time") -> float:
    """Seconds since the epoch from a client's Timestamp, which must be a valid one."""
    if not _MIN_SECONDS <= ts.seconds <= _MAX_SECONDS or not 0 <= ts.nanos < 1_000_000_000:
        raise InvalidArgument(
            f"{field} must be a timestamp between years 1 and 9999 with nanos in [0, 1e9), "
            f"got seconds={ts.seconds} nanos={ts.nanos}"
        )
    return ts.ToNanoseconds() / 1e9


def struct_plain(struct: Struct, field: str) -> dict[str, Any]:
    """A Struct as a dict, whole numbers as ints: a Struct holds every number as a double, and a
    Python callee given 64.0 where it expects 64 (a layer's width) refuses it. InvalidArgument
    naming `field` for NaN or an infinity, which a Struct (JSON) cannot hold."""
    try:
        plain: dict[str, Any] = json_format.MessageToDict(struct)
    except ValueError:
        raise InvalidArgument(
            f"{field}: holds NaN or an infinity, which it cannot carry (it is JSON); send finite numbers"
        ) from None
    return {key: _whole(value) for key, value in plain.items()}


def _whole(value: Any) -> Any:
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
        return int(value)
    if isinstance(value, list):
        return [_whole(v) for v in value]
    if isinstance(value, dict):
        return {k: _whole(v) for k, v in value.items()}
    return value
