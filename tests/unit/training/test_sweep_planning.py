"""Sweep planning on the plain spec (tesserad.training.sweeps.trial_spec) and the spec's field
description it relies on (tesserad.training.spec.SPEC_FIELDS): pure logic."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytest
from google.protobuf.descriptor import Descriptor, FieldDescriptor

from tessera.v1 import job_spec_pb2
from tesserad.errors import InvalidArgument
from tesserad.training.spec import SPEC_FIELDS, Choice, SpecField
from tesserad.training.sweeps import AshaSettings, asha_settings, trial_spec

BASE: dict[str, Any] = {
    "experiment": "tests",
    "run_name": "fixed",
    "architecture": {"family": "mlp", "input_shape": [6], "output_size": 2, "hidden_sizes": [16]},
    "task": "",
    "data": {"dataset": {"name": "flat"}},
    "optimizer": {"name": "adam", "lr": 0.01},
    "lr_schedule": {"cosine": {"min_lr": 0.001}},
    "devices": {"cpu": True},
    "epochs": 2,
}

_SCALARS = {
    FieldDescriptor.TYPE_DOUBLE: float,
    FieldDescriptor.TYPE_FLOAT: float,
    FieldDescriptor.TYPE_BOOL: bool,
    FieldDescriptor.TYPE_STRING: str,
    FieldDescriptor.TYPE_INT32: int,
    FieldDescriptor.TYPE_INT64: int,
}


def _real_oneof(field: FieldDescriptor) -> str:
    """The name of the oneof `field` is in; "" for none, or for the one protoc makes for a proto3
    `optional` field (named after it, holding it alone)."""
    oneof = field.containing_oneof
    if oneof is None or (oneof.name == f"_{field.name}" and len(oneof.fields) == 1):
        return ""
    return str(oneof.name)


def _mirrors(fields: Mapping[str, SpecField], message: Descriptor, where: str) -> None:
    """SPEC_FIELDS describes `message` field for field: kinds, types, oneofs."""
    assert set(fields) == set(message.fields_by_name), where
    for name, proto in message.fields_by_name.items():
        spec_field, at = fields[name], f"{where}.{name}"
        oneof = _real_oneof(proto)
        assert spec_field.oneof == oneof, at
        if proto.is_repeated:  # lists and maps
            assert spec_field.kind == "list", at
        elif proto.message_type is not None:
            assert spec_field.kind == "message", at
            _mirrors(spec_field.fields, proto.message_type, at)
        elif proto.enum_type is not None:
            assert isinstance(spec_field.value_type, Choice), at
            names = {v.name for v in proto.enum_type.values if v.number}
            prefix = spec_field.value_type.proto_prefix
            assert names == {prefix + v.upper() for v in spec_field.value_type.values}, at
        else:
            assert (spec_field.kind, spec_field.value_type) == ("value", _SCALARS[proto.type]), at


def test_spec_fields_mirror_the_job_spec_message() -> None:
    _mirrors(SPEC_FIELDS, job_spec_pb2.JobSpec.DESCRIPTOR, "JobSpec")


def test_values_parse_to_the_fields_type() -> None:
    spec = trial_spec(
        BASE,
        {
            "optimizer.lr": "0.05",
            "batch_size": "1e2",
            "optimizer.nesterov": "TRUE",
            "task": "TASK_REGRESSION",
            "early_stopping.mode": "max",
            "architecture.mlp.activation": "tanh",
            "architecture.output_size": "3",
            "data.dataset.version": "2",
        },
    )
    assert spec["optimizer"] == {"name": "adam", "lr": 0.05, "nesterov": True}
    assert (spec["batch_size"], spec["task"], spec["early_stopping"]) == (100, "regression", {"mode": "max"})
    assert spec["architecture"] == {
        "family": "mlp",
        "input_shape": [6],
        "output_size": 3,
        "hidden_sizes": [16],
        "activation": "tanh",
    }
    assert spec["data"] == {"dataset": {"name": "flat", "version": 2}}
    assert "run_name" not in spec  # each trial gets its own run
    assert BASE["optimizer"] == {"name": "adam", "lr": 0.01}  # the base is left as it was


def test_whole_numbers_are_read_exactly() -> None:
    """Through float(), 2**53 + 1 became 2**53."""
    assert trial_spec(BASE, {"seed": str(2**53 + 1)})["seed"] == 2**53 + 1
    assert trial_spec(BASE, {"seed": "-7"})["seed"] == -7
    assert trial_spec(BASE, {"seed": "1e3"})["seed"] == 1000
    assert trial_spec(BASE, {"optimizer.lr": "99999999999999999999"})["optimizer"]["lr"] == 1e20


def test_a_parameter_can_switch_the_architecture_family() -> None:
    spec = trial_spec(BASE, {"architecture.family": "lstm", "architecture.lstm.hidden_size": "4"})
    assert spec["architecture"] == {"family": "lstm", "input_shape": [6], "output_size": 2, "hidden_size": 4}
    assert trial_spec(BASE, {"architecture.family": "mlp"})["architecture"] == BASE["architecture"]
    with pytest.raises(InvalidArgument, match="'rnn' is not one of mlp, "):
        trial_spec(BASE, {"architecture.family": "rnn"})


def test_setting_a_oneof_member_replaces_the_others() -> None:
    spec = trial_spec(BASE, {"devices.gpu_count": "2", "lr_schedule.cosine.min_lr": "0"})
    assert spec["devices"] == {"gpu_count": 2}
    assert spec["lr_schedule"] == {"cosine": {"min_lr": 0.0}}
    assert trial_spec({}, {"lr_schedule.step.gamma": "0.5"})["lr_schedule"] == {"step": {"gamma": 0.5}}


@pytest.mark.parametrize(
    ("path", "text", "words"),
    [
        ("optimizer.nope", "1", "'optimizer.nope' does not name a single value field of JobSpec (at 'nope')"),
        ("nope.lr", "1", "'nope.lr' does not name a field of JobSpec (at 'nope')"),
        ("epochs.x", "1", "does not name a field of JobSpec (at 'epochs')"),
        ("tags", "a", "does not name a single value field of JobSpec (at 'tags')"),
        ("tags.a", "a", "does not name a field of JobSpec (at 'tags')"),
        ("architecture.hidden_sizes", "4", "(at 'hidden_sizes')"),
        ("architecture.mlp.hidden_sizes", "4", "does not name a single value field"),
        ("batch_size", "big", "'big' is not a valid value for this field; expected a whole number"),
        ("batch_size", "2.5", "'2.5' is not a valid value for this field; expected a whole number"),
        ("optimizer.nesterov", "yes", "'yes' is not a valid value for this field; expected true or false"),
        ("task", "TASK_UNKNOWN", "'TASK_UNKNOWN' is not a valid value for this field; expected one of "),
        ("optimizer.lr", "fast", "'fast' is not a valid value for this field; expected a number"),
        ("task", "regresion", "expected one of classification, regression; did you mean 'regression'?"),
        ("architecture.family", "MLP", "; did you mean 'mlp'?"),
        ("architecture.family", "lstn", "; did you mean 'lstm'?"),
        # float() read these as 3 and 10.
        ("batch_size", "\u0663", "is not a valid value for this field; expected a whole number"),
        ("batch_size", "1_0", "'1_0' is not a valid value for this field; expected a whole number"),
        ("optimizer.lr", "\u0663", "is not a valid value for this field; expected a number"),
        ("architecture.lstm.hidden_size", "4", "the base spec sets family to mlp, not lstm"),
        ("lr_schedule.step.gamma", "0.5", "the base spec sets schedule to cosine, not step"),
    ],
)
def test_bad_parameters_name_the_path_and_the_problem(path: str, text: str, words: str) -> None:
    with pytest.raises(InvalidArgument) as info:
        trial_spec(BASE, {path: text})
    assert info.value.message.startswith(f"spec.parameters: {path!r}")
    assert words in info.value.message


def test_asha_settings_default_and_are_checked() -> None:
    assert asha_settings(AshaSettings(0, 0)) == AshaSettings(1, 3)
    assert asha_settings(AshaSettings(2, 4)) == AshaSettings(2, 4)
    with pytest.raises(InvalidArgument, match="reduction_factor >= 2"):
        asha_settings(AshaSettings(1, 1))


def test_a_parameter_path_of_a_field_name_alone_suggests_its_full_path():
    with pytest.raises(InvalidArgument) as refused:
        trial_spec(BASE, {"lr": "0.1"})
    assert refused.value.message == (
        "spec.parameters: 'lr' does not name a single value field of JobSpec (at 'lr'); "
        "did you mean 'optimizer.lr'?"
    )
