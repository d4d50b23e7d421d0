"""Stored values: versioned JSON records, and packed metric points.

A record is `{"kind": ..., "schema": N, "data": {...}}` as compact UTF-8 JSON: readable
with any LMDB tool, safe to decode (nothing is ever unpickled), and versioned so a later
release can read what an earlier one wrote. Metric points are the hot path and are packed
as two float64s (value, wall-clock timestamp).
"""

from __future__ import annotations

import json
import struct
from typing import Any

from tesserad.errors import DataLoss

_POINT = struct.Struct("<dd")


def encode_record(kind: str, schema: int, data: dict[str, Any]) -> bytes:
    return json.dumps({"kind": kind, "schema": schema, "data": data}, separators=(",", ":")).encode()


def decode_record(raw: bytes, kind: str, max_schema: int) -> tuple[int, dict[str, Any]]:
    """The (schema, data) of a record of `kind`; DataLoss if it is not one we can read."""
    try:
        record = json.loads(raw)
    except ValueError:
        raise DataLoss(f"a stored {kind} record is not valid JSON; the store is damaged") from None
    if record.get("kind") != kind:
        raise DataLoss(f"expected a stored {kind} record, found {record.get('kind')!r}")
    schema = record.get("schema")
    if not isinstance(schema, int) or schema > max_schema:
        raise DataLoss(
            f"a stored {kind} record has schema {schema!r}, newer than this tesserad reads "
            f"({max_schema}); upgrade tesserad"
        )
    return schema, record["data"]


def encode_metric_point(value: float, timestamp: float) -> bytes:
    return _POINT.pack(value, timestamp)


def decode_metric_point(raw: bytes) -> tuple[float, float]:
    value, timestamp = _POINT.unpack(raw)
    return value, timestamp
