"""Checks of what a caller sends the registry (signatures, tags, metrics), each failure an
InvalidArgument that names the field and says what is allowed."""

from __future__ import annotations

import math

from tesserad.config import format_size
from tesserad.dtypes import TENSOR_DTYPES
from tesserad.errors import InvalidArgument
from tesserad.registry.records import Signature

_MAX_TENSOR_NAME = 256
_MAX_TAG_KEY = 128
# A model's record is rewritten by every registration of one of its versions, and ListModels sends
# up to a thousand in one message: its free text stays small (MLflow keeps a description to 5000
# characters).
MAX_MODEL_TEXT = 16 * 2**10


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
    for key in tags:
        if not key or len(key) > _MAX_TAG_KEY:
            raise InvalidArgument(f"{field} keys must be 1 to {_MAX_TAG_KEY} characters, got {key[:140]!r}")


def validate_metrics(metrics: dict[str, float]) -> None:
    for key, value in metrics.items():
        if not math.isfinite(value):
            raise InvalidArgument(f"metrics[{key!r}] is {value}; metrics must be finite numbers")


def validate_model_text(description: str, tags: dict[str, str]) -> None:
    """A model's description and tags within MAX_MODEL_TEXT bytes (UTF-8, as they are stored)."""
    size = len(description.encode()) + sum(len(k.encode()) + len(v.encode()) for k, v in tags.items())
    if size > MAX_MODEL_TEXT:
        raise InvalidArgument(
            f"a model's description and tags take at most {format_size(MAX_MODEL_TEXT)} together, these "
            f"take {format_size(size)} ({size} bytes); keep longer documentation elsewhere and link to it"
        )
