"""Checks of what a caller sends the registry (signatures, tags, metrics), each failure an
InvalidArgument that names the field and says what is allowed."""

from __future__ import annotations

import math

from tesserad.dtypes import TENSOR_DTYPES
from tesserad.errors import InvalidArgument
from tesserad.registry.records import Signature
from tesserad.text import MAX_PARAM_VALUE, check_entries, check_record_text

_MAX_TENSOR_NAME = 256


def validate_signature(signature: Signature, *, required: bool) -> None:
    """Names present and unique, known dtypes, dims -1 (dynamic) or >= 1."""
    if required and (not signature.inputs or not signature.outputs):
        raise InvalidArgument(
            "signature needs at least one input and one output (name, dtype, shape with -1 for dynamic dims)"
        )
    for kind, specs in (("inputs", signature.inputs), ("outputs", signature.outputs)):
        seen: set[str] = set()
        for i, spec in enumerate(specs):
            where = f"signature.{kind}[{i}]"
            if not spec.name or len(spec.name) > _MAX_TENSOR_NAME:
                raise InvalidArgument(f"{where}.name is required (at most {_MAX_TENSOR_NAME} characters)")
            if spec.name in seen:
                raise InvalidArgument(f"{where}.name {spec.name!r} appears twice in signature.{kind}")
            seen.add(spec.name)
            if spec.dtype not in TENSOR_DTYPES:
                raise InvalidArgument(
                    f"{where} ({spec.name!r}).dtype is required; one of {', '.join(TENSOR_DTYPES)}"
                )
            bad = [d for d in spec.shape if d != -1 and d < 1]
            if bad:
                raise InvalidArgument(
                    f"{where} ({spec.name!r}).shape {list(spec.shape)}: dims must be -1 (dynamic) or >= 1"
                )


def validate_tags(field: str, tags: dict[str, str]) -> None:
    check_entries(field, tags)


def validate_params(params: dict[str, str]) -> None:
    check_entries("params", params, MAX_PARAM_VALUE)


def validate_metrics(metrics: dict[str, float]) -> None:
    for key, value in metrics.items():
        if not math.isfinite(value):
            raise InvalidArgument(f"metrics[{key!r}] is {value}; metrics must be finite numbers")


def validate_model_text(description: str, tags: dict[str, str]) -> None:
    """A model's record is rewritten by every registration of one of its versions."""
    check_record_text("a model", description, tags)


def validate_version_text(description: str, tags: dict[str, str]) -> None:
    """A version reaches ListVersions pages and every follower of its model with each change."""
    check_record_text("a model version", description, tags)
