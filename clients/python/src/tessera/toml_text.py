"""A message as TOML that `messages.from_dict` reads back to the same message: what `tessera jobs
show JOB --spec` prints for `tessera train` to take again."""

from __future__ import annotations

import json
import re
from typing import Any

from google.protobuf.descriptor import EnumDescriptor, FieldDescriptor
from google.protobuf.message import Message

from tessera.state_words import enum_word

_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")


def message_toml(message: Message) -> str:
    """The fields `message` has set, as TOML: each message a table (one set but empty too, as an
    empty oneof member such as `lr_schedule.constant`), enum values by their short lowercase names
    (`classification`), an `optional` field set to 0 written out."""
    return "\n".join(_table_lines(_plain(message), ())) + "\n"


def _plain(message: Message) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for field, value in message.ListFields():
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            entry = field.message_type.fields_by_name["value"]
            out[field.name] = {key: _single(entry, item) for key, item in value.items()}
        elif field.is_repeated:
            out[field.name] = [_single(field, item) for item in value]
        else:
            out[field.name] = _single(field, value)
    return out


def _single(field: FieldDescriptor, value: Any) -> Any:
    if isinstance(value, Message):
        return _plain(value)
    if field.enum_type is not None:
        return _enum_name(field.enum_type, value)
    return value


def _enum_name(enum_type: EnumDescriptor, number: int) -> str | int:
    """The value's name without its type's prefix, lowercase (OPTIMIZE_MODE_MAX as max), as
    from_dict takes it; an unknown number as the number."""
    value = enum_type.values_by_number.get(number)
    if value is None:
        return number
    return enum_word(enum_type, value.name)


def _table_lines(table: dict[str, Any], path: tuple[str, ...]) -> list[str]:
    """A table's own keys, then each table under it under its `[header]`."""
    lines = [f"{_key(key)} = {_value(value)}" for key, value in table.items() if not isinstance(value, dict)]
    for key, value in table.items():
        if isinstance(value, dict):
            below = (*path, _key(key))
            lines += ["", f"[{'.'.join(below)}]", *_table_lines(value, below)]
    return lines


def _key(key: str) -> str:
    return key if _BARE_KEY.fullmatch(key) else _string(key)


def _value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        # repr is TOML's spelling; of inf and nan too, but from_dict refuses them (no spec the daemon took holds one).
        return repr(value)
    if isinstance(value, str):
        return _string(value)
    if isinstance(value, list):
        return "[" + ", ".join(_value(item) for item in value) + "]"
    return "{ " + ", ".join(f"{_key(key)} = {_value(item)}" for key, item in value.items()) + " }"


def _string(text: str) -> str:
    """A TOML basic string: JSON's escapes are TOML's, but for DEL, which TOML wants escaped."""
    return json.dumps(text, ensure_ascii=False).replace("\x7f", "\\u007f")
