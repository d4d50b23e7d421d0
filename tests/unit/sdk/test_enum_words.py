"""Every `tessera.v1` enum value as the CLI and the SDK say it (tables, --json, TOML, state words,
spec problems): one function, `enum_word`, its name less its type's prefix, lowercase."""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Iterator

import pytest
from google.protobuf.descriptor import Descriptor, EnumDescriptor
from google.protobuf.internal.enum_type_wrapper import EnumTypeWrapper

import tessera.v1
from tessera.json_output import message_to_plain
from tessera.messages import from_dict
from tessera.state_words import enum_word, number_word
from tessera.toml_text import message_toml
from tessera.v1 import job_spec_pb2


def _nested(message: Descriptor) -> Iterator[EnumDescriptor]:
    yield from message.enum_types
    for nested in message.nested_types:
        yield from _nested(nested)


def _enums() -> list[EnumDescriptor]:
    enums: list[EnumDescriptor] = []
    for module in pkgutil.iter_modules(tessera.v1.__path__):
        if module.name.endswith("_pb2"):
            file = importlib.import_module(f"tessera.v1.{module.name}").DESCRIPTOR
            enums += file.enum_types_by_name.values()
            for message in file.message_types_by_name.values():
                enums += _nested(message)
    return enums


ENUMS = _enums()


def test_the_enums_are_all_found():
    assert {"tessera.v1.JobState", "tessera.v1.SweepPruner", "tessera.v1.Runtime"} <= {
        enum.full_name for enum in ENUMS
    }


@pytest.mark.parametrize("enum", ENUMS, ids=lambda enum: enum.name)
def test_each_value_is_its_name_less_the_prefix_its_unspecified_value_has(enum):
    prefix = enum.values_by_number[0].name.removesuffix("UNSPECIFIED")
    for value in enum.values:
        assert value.name.startswith(prefix)
        assert enum_word(enum, value.name) == value.name.removeprefix(prefix).lower()
        assert number_word(EnumTypeWrapper(enum), value.number) == enum_word(enum, value.name)


def test_json_toml_and_specs_say_and_take_the_same_words():
    spec = job_spec_pb2.JobSpec(task=job_spec_pb2.TASK_REGRESSION)
    assert message_to_plain(spec)["task"] == "regression"
    assert 'task = "regression"' in message_toml(spec)
    assert from_dict(job_spec_pb2.JobSpec, {"task": "regression"}).task == job_spec_pb2.TASK_REGRESSION
