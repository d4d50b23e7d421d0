"""Checks of what a caller sends the registry (signatures, tags, metrics), each failure an
InvalidArgument that names the field and says what is allowed."""

from __future__ import annotations

import math

from tesserad.config import format_size
from tesserad.dtypes import TENSOR_DTYPES
from tesserad.errors import InvalidArgument
from tesserad.registry.records import Signature
from tesserad.text import (
    ENTRY_WIRE_BYTES,
    MAX_PARAM_VALUE,
    check_entries,
    check_record_text,
    entries_wire_bytes,
)

_MAX_TENSOR_NAME = 256
# A version's params together, keys and values in UTF-8 and what each entry adds on the wire, as a
# run's params and tags are bounded: a version travels whole in a GetVersion answer (4 MiB by
# gRPC's default limit), beside its signature, lineage and aliases.
MAX_VERSION_PARAMS = 2 * 2**20
# Where a trained version's params say which of its job's params did not fit; room is kept for it.
LEFT_OUT_KEY = "tessera.params_left_out"
_LEFT_OUT_ROOM = 8 * 2**10
_LEFT_OUT_NAMED = 10


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
    size = entries_wire_bytes(params)
    if size > MAX_VERSION_PARAMS:
        raise InvalidArgument(
            f"a model version's params take at most {format_size(MAX_VERSION_PARAMS)} together, these "
            f"take {format_size(size)} ({size} bytes, counting {ENTRY_WIRE_BYTES} bytes a param beside "
            "its UTF-8); keep large values, or many small ones, in a file (a run artifact, "
            "UploadRunArtifact) and record its path"
        )


def fit_params(params: dict[str, str]) -> dict[str, str]:
    """Params within MAX_VERSION_PARAMS for a version whose registration must not fail on them
    (a job's, flattened from its spec, registered after the training): as many as fit, smallest
    first, in their order, and under LEFT_OUT_KEY the names of those left out. A trained
    version's lineage keeps its whole job spec, so nothing is lost."""
    if entries_wire_bytes(params) <= MAX_VERSION_PARAMS:
        return params
    room = MAX_VERSION_PARAMS - _LEFT_OUT_ROOM
    kept: set[str] = set()
    sizes = {key: entries_wire_bytes({key: value}) for key, value in params.items()}
    for key in sorted(params, key=sizes.__getitem__):
        size = sizes[key]
        if size > room:
            break
        room -= size
        kept.add(key)
    left_out = [k for k in params if k not in kept]
    named = ", ".join(left_out[:_LEFT_OUT_NAMED])
    more = f" and {len(left_out) - _LEFT_OUT_NAMED} more" if len(left_out) > _LEFT_OUT_NAMED else ""
    note = (
        f"{len(left_out)} params left out to keep a version's params within "
        f"{format_size(MAX_VERSION_PARAMS)}: {named}{more}"
    )
    fitted = {k: v for k, v in params.items() if k in kept}
    # Within the rule a caller's values follow (characters) and the room kept for it (bytes).
    cut = note[:MAX_PARAM_VALUE].encode()[: _LEFT_OUT_ROOM - len(LEFT_OUT_KEY) - ENTRY_WIRE_BYTES]
    fitted[LEFT_OUT_KEY] = cut.decode(errors="ignore")
    return fitted


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
