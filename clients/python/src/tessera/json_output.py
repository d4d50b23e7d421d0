"""What `tessera --json` prints: JSON that any reader, jq included, parses, with one type per field.

Messages follow proto3's JSON mapping (field names as in the .proto, timestamps as RFC 3339
text) except in three ways. A field at its zero value (0, "", false, an empty list) is printed,
not left out, so that a script reads trial 0's "number" or a loss of 0 as such, not as null; a
field the .proto marks `optional` (a job spec's `batch_size`) is printed only when set, as its
absence means its default, not 0.
64-bit integers are numbers: the mapping writes them as strings, for
JavaScript's sake, so `jq '.version + 1'` failed while 32-bit fields and the CLI's own
figures were numbers. Enum values are lowercase without their type's prefix ("succeeded",
not "JOB_STATE_SUCCEEDED"), as the tables, the flags (`jobs ls --state`) and the job events
of `jobs watch --json` say them: one name per value in all the CLI prints. Floats that are not finite are written as the mapping writes them
("NaN", "Infinity", "-Infinity"): JSON has no literal for them, and Python's bare `NaN`
stops jq.
"""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.json_format import MessageToDict
from google.protobuf.message import Message

from tessera.state_words import enum_word

_INT64_TYPES = frozenset(
    {
        FieldDescriptor.TYPE_INT64,
        FieldDescriptor.TYPE_UINT64,
        FieldDescriptor.TYPE_SINT64,
        FieldDescriptor.TYPE_FIXED64,
        FieldDescriptor.TYPE_SFIXED64,
    }
)
# Well-known types have JSON forms of their own (a Timestamp is text), not their fields.
_WELL_KNOWN_PACKAGE = "google.protobuf."


def dumps(value: Any, indent: int | None = None) -> str:
    """`value` (messages, dicts, lists, numpy arrays and scalars) as one JSON text."""
    return json.dumps(to_plain(value), indent=indent, allow_nan=False, default=str)


def to_plain(value: Any) -> Any:
    """`value` as JSON-ready Python values, messages and arrays included."""
    if isinstance(value, Message):
        return message_to_plain(value)
    if isinstance(value, dict):
        return {key: to_plain(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [to_plain(item) for item in value]
    if isinstance(value, np.ndarray | np.generic):
        return to_plain(value.tolist())
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    return value


def message_to_plain(message: Message) -> dict[str, Any]:
    """`message` in proto3's JSON mapping, but with its 64-bit integers as numbers and its
    fields at their zero value printed (an unset `optional` field, whose absence means its
    default, is left out)."""
    plain = MessageToDict(
        message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )
    descriptor: Descriptor = message.DESCRIPTOR  # type: ignore[assignment]  # upb's is the same type
    return _with_numbers(descriptor, plain)


def _with_numbers(descriptor: Descriptor, plain: dict[str, Any]) -> dict[str, Any]:
    for field in descriptor.fields:
        if field.name in plain:
            plain[field.name] = _field_with_numbers(field, plain[field.name])
    return plain


def _field_with_numbers(field: FieldDescriptor, value: Any) -> Any:
    entry = field.message_type
    if entry is not None and entry.GetOptions().map_entry:
        # Map keys stay text, as JSON object keys must be.
        value_field = entry.fields_by_name["value"]
        return {key: _single_with_numbers(value_field, item) for key, item in value.items()}
    if isinstance(value, list):
        return [_single_with_numbers(field, item) for item in value]
    return _single_with_numbers(field, value)


def _single_with_numbers(field: FieldDescriptor, value: Any) -> Any:
    if field.type in _INT64_TYPES:
        return int(value)
    if field.enum_type is not None and isinstance(value, str):
        return enum_word(field.enum_type, value)
    message_type = field.message_type
    if (
        message_type is not None
        and isinstance(value, dict)
        and not message_type.full_name.startswith(_WELL_KNOWN_PACKAGE)
    ):
        return _with_numbers(message_type, value)
    return value
