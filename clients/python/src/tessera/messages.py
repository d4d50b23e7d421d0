"""Building request messages from plain Python values: version refs, specs from dicts/TOML."""

from __future__ import annotations

import datetime as dt
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

from google.protobuf import json_format, timestamp_pb2
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message

from tessera.v1 import common_pb2

M = TypeVar("M", bound=Message)


def version_ref(model: str, version: int | None = None, alias: str | None = None) -> common_pb2.VersionRef:
    """A VersionRef by number or alias (neither: the RPC's default, usually "latest")."""
    if version is not None and alias is not None:
        raise ValueError(f"model {model!r}: pass version or alias, not both")
    if version is not None:
        return common_pb2.VersionRef(model=model, version=version)
    if alias is not None:
        return common_pb2.VersionRef(model=model, alias=alias)
    return common_pb2.VersionRef(model=model)


def dataset_ref(ref: str | common_pb2.DatasetRef) -> common_pb2.DatasetRef:
    """ "name" (newest version) or "name:version" as a DatasetRef."""
    if isinstance(ref, common_pb2.DatasetRef):
        return ref
    name, _, version = ref.partition(":")
    if version and not version.isdigit():
        raise ValueError(f"dataset {ref!r}: write name or name:version with a whole version number")
    return common_pb2.DatasetRef(name=name, version=int(version or 0))


def to_datetime(timestamp: timestamp_pb2.Timestamp) -> dt.datetime | None:
    """A protobuf Timestamp as an aware UTC datetime; None when unset."""
    if timestamp.seconds == 0 and timestamp.nanos == 0:
        return None
    return timestamp.ToDatetime(tzinfo=dt.UTC)


def from_dict(message_type: type[M], data: Mapping[str, Any] | M, what: str = "spec") -> M:
    """A message from a dict (e.g. parsed TOML), with friendly spellings: enum values by their
    short lowercase name ("regression" for TASK_REGRESSION) and datasets as "name[:version]".
    ValueError names the field that does not fit."""
    if isinstance(data, message_type):
        return data
    message = message_type()
    try:
        json_format.ParseDict(_friendly(message_type.DESCRIPTOR, dict(data)), message)  # type: ignore[arg-type]
    except json_format.ParseError as err:
        raise ValueError(f"{what}: {err}") from None
    return message


def load_toml(path: str | Path) -> dict[str, Any]:
    """A TOML file as a dict; ValueError saying where the syntax is wrong."""
    try:
        with open(path, "rb") as file:
            return tomllib.load(file)
    except tomllib.TOMLDecodeError as err:
        raise ValueError(f"{path}: not valid TOML: {err}") from None


def _friendly(descriptor: Descriptor, data: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in data.items():
        field = descriptor.fields_by_name.get(key) or descriptor.fields_by_camelcase_name.get(key)
        out[key] = value if field is None else _friendly_value(field, value)
    return out


def _friendly_value(field: FieldDescriptor, value: Any) -> Any:
    if isinstance(value, list) and field.is_repeated:
        return [_friendly_scalar(field, item) for item in value]
    return _friendly_scalar(field, value)


def _friendly_scalar(field: FieldDescriptor, value: Any) -> Any:
    if field.type == FieldDescriptor.TYPE_ENUM and isinstance(value, str):
        names = [v.name for v in field.enum_type.values]
        wanted = value.upper()
        for name in names:
            if name == wanted or name.endswith("_" + wanted):
                return name
        return value
    if field.type == FieldDescriptor.TYPE_MESSAGE:
        if field.message_type.full_name == "tessera.v1.DatasetRef" and isinstance(value, str):
            ref = dataset_ref(value)
            return {"name": ref.name, "version": ref.version}
        if isinstance(value, dict) and not field.message_type.GetOptions().map_entry:
            return _friendly(field.message_type, value)
    return value
