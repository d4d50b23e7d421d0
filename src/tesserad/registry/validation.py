"""Checks of what a caller sends the registry (signatures, tags, metrics), each failure an
InvalidArgument that names the field and says what is allowed."""

from __future__ import annotations

import math

from tesserad.config import format_size
from tesserad.dtypes import TENSOR_DTYPES
from tesserad.errors import InvalidArgument
from tesserad.registry.records import Lineage, Signature
from tesserad.text import (
    ENTRY_WIRE_BYTES,
    MAX_PARAM_VALUE,
    MAX_RECORD_TEXT,
    MAX_TAG_KEY,
    MAX_TAG_VALUE,
    check_entries,
    check_label,
    check_record_text,
    entries_bytes,
    entries_wire_bytes,
    entry_problems,
    record_text_problem,
)

_MAX_TENSOR_NAME = 256
# A signature's tensors (inputs and outputs together) and the dims of each: at the bounds, with
# names of _MAX_TENSOR_NAME characters and every dim -1 (10 bytes on the wire), a signature takes
# 0.9 MB of a GetVersion answer, which with MAX_VERSION_PARAMS, MAX_VERSION_METRICS,
# MAX_JOB_SPEC_BYTES, MAX_LINEAGE_DATASETS, the text and the aliases on the version stays within
# gRPC's default 4 MiB (tests/unit/registry/test_version_answer_budget.py builds that answer).
# Unbounded, a signature went as far as a request (max_message_size) or an ONNX graph allowed.
# numpy makes no array of more than 64 dims, so no served tensor has more.
MAX_SIGNATURE_TENSORS = 1024
MAX_TENSOR_DIMS = 64
# A version's lineage.job_spec, and so the spec of a job that registers a version (SubmitJob, a
# sweep's base, with register_as), serialized: a job's spec takes a few KiB; beside a version's
# other fields it must leave a GetVersion answer within 4 MiB. (A job that registers nothing keeps
# its spec in its own record, and its tags may take 2 MiB as a run's.)
MAX_JOB_SPEC_BYTES = 256 * 2**10
# The dataset versions a version's lineage names: a model is trained on a few; at the bound, with
# names of 128 characters and their sha256, they take 54 KB of a GetVersion answer.
MAX_LINEAGE_DATASETS = 256
# A version's params together, keys and values in UTF-8 and what each entry adds on the wire, as a
# run's params and tags are bounded: a version travels whole in a GetVersion answer (4 MiB by
# gRPC's default limit), beside its signature, lineage and aliases.
MAX_VERSION_PARAMS = 2 * 2**20
# A version's metrics together, counted as its params are with a value's 8 bytes for its text:
# with its params, its text and the aliases on it, a GetVersion answer stays within 4 MiB.
MAX_VERSION_METRICS = 512 * 2**10
_METRIC_VALUE_BYTES = 8
# Where a trained (or exported) version's params say which of its job's params, which of its
# metrics, and which of its tags did not fit; room is kept for each.
LEFT_OUT_KEY = "tessera.params_left_out"
METRICS_LEFT_OUT_KEY = "tessera.metrics_left_out"
TAGS_LEFT_OUT_KEY = "tessera.tags_left_out"
_LEFT_OUT_ROOM = 8 * 2**10
_LEFT_OUT_NAMED = 10


def validate_signature(signature: Signature, *, required: bool) -> None:
    """Names present and unique, known dtypes, dims -1 (dynamic) or >= 1."""
    if required and (not signature.inputs or not signature.outputs):
        raise InvalidArgument(
            "signature needs at least one input and one output (name, dtype, shape with -1 for dynamic dims)"
        )
    tensors = len(signature.inputs) + len(signature.outputs)
    if tensors > MAX_SIGNATURE_TENSORS:
        raise InvalidArgument(
            f"a signature holds at most {MAX_SIGNATURE_TENSORS:,} tensors (inputs and outputs together), "
            f"this one {tensors:,} ({len(signature.inputs):,} inputs, {len(signature.outputs):,} outputs), "
            "so that a version's answer stays within 4 MiB"
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
            if len(spec.shape) > MAX_TENSOR_DIMS:
                raise InvalidArgument(
                    f"{where} ({spec.name!r}).shape has {len(spec.shape):,} dims; a tensor has at most "
                    f"{MAX_TENSOR_DIMS}"
                )
            bad = [d for d in spec.shape if d != -1 and d < 1]
            if bad:
                raise InvalidArgument(
                    f"{where} ({spec.name!r}).shape {list(spec.shape)}: dims must be -1 (dynamic) or >= 1"
                )


def check_job_spec_size(field: str, size: int) -> None:
    """InvalidArgument unless a job spec of `size` bytes (serialized) fits MAX_JOB_SPEC_BYTES."""
    if size > MAX_JOB_SPEC_BYTES:
        raise InvalidArgument(
            f"{field} takes {format_size(size)} ({size:,} bytes) serialized; the job spec a model version "
            f"keeps (its lineage.job_spec) takes at most {format_size(MAX_JOB_SPEC_BYTES)}, as it travels "
            "whole in every answer with the version; keep large values in a file and name it"
        )


def check_lineage_datasets(count: int) -> None:
    """InvalidArgument unless a lineage naming `count` dataset versions fits MAX_LINEAGE_DATASETS."""
    if count > MAX_LINEAGE_DATASETS:
        raise InvalidArgument(
            f"lineage.datasets names {count:,} dataset versions; a model version's lineage names at "
            f"most {MAX_LINEAGE_DATASETS}, as it travels whole in every answer with the version; put "
            "data trained on together in one dataset (a dataset version holds many named arrays)"
        )


def check_uploaded_lineage(lineage: Lineage) -> None:
    """InvalidArgument for what an uploaded lineage names badly: its run_id, job_id and experiment
    (tessera's or another tracker's) keep to a tag key's rule, and each dataset version is named
    once. Exports and trained versions copy a lineage already stored, which stays as it was."""
    check_label("lineage.run_id", lineage.run_id)
    check_label("lineage.job_id", lineage.job_id)
    check_label("lineage.experiment", lineage.experiment)
    first_of: dict[tuple[str, int], int] = {}
    for i, ds in enumerate(lineage.datasets):
        earlier = first_of.setdefault((ds.name, ds.version), i)
        if earlier != i:
            raise InvalidArgument(
                f"lineage.datasets[{i}] names dataset {ds.name!r} v{ds.version} again "
                f"(lineage.datasets[{earlier}] does); name each dataset version once"
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


def fit_params(params: dict[str, str], notes: dict[str, str] | None = None) -> dict[str, str]:
    """Params within MAX_VERSION_PARAMS for a version whose registration must not fail on them
    (a job's, flattened from its spec, registered after the training): as many as fit, smallest
    first, in their order, and under LEFT_OUT_KEY the names of those left out. A trained
    version's lineage keeps its whole job spec, so nothing is lost. `notes` (`fit_metrics`')
    are kept beside them, each cut to the room kept for it."""
    kept_notes = {key: _within_room(key, note) for key, note in (notes or {}).items()}
    room = MAX_VERSION_PARAMS - entries_wire_bytes(kept_notes)
    if entries_wire_bytes(params) <= room:
        return {**params, **kept_notes}
    sizes = {key: entries_wire_bytes({key: value}) for key, value in params.items()}
    kept = _smallest_that_fit(sizes, room - _LEFT_OUT_ROOM)
    left_out = [k for k in params if k not in kept]
    note = f"{len(left_out)} params left out to keep a version's params within {format_size(MAX_VERSION_PARAMS)}: "
    fitted = {k: v for k, v in params.items() if k in kept}
    fitted[LEFT_OUT_KEY] = _within_room(LEFT_OUT_KEY, note + _named(left_out))
    return {**fitted, **kept_notes}


def _smallest_that_fit(sizes: dict[str, int], room: int) -> set[str]:
    """The keys kept when as many as fit `room` are kept, smallest first (ties in their order)."""
    kept: set[str] = set()
    for key in sorted(sizes, key=sizes.__getitem__):
        if sizes[key] > room:
            break
        room -= sizes[key]
        kept.add(key)
    return kept


def _named(keys: list[str]) -> str:
    more = f" and {len(keys) - _LEFT_OUT_NAMED} more" if len(keys) > _LEFT_OUT_NAMED else ""
    return ", ".join(keys[:_LEFT_OUT_NAMED]) + more


def _within_room(key: str, note: str) -> str:
    """`note` within the rule a caller's values follow (characters) and the room kept for it (bytes)."""
    cut = note[:MAX_PARAM_VALUE].encode()[: _LEFT_OUT_ROOM - len(key) - ENTRY_WIRE_BYTES]
    return cut.decode(errors="ignore")


def metrics_wire_bytes(metrics: dict[str, float]) -> int:
    """What `metrics` take in an answer at most, as `entries_wire_bytes` counts params."""
    return entries_wire_bytes({key: "" for key in metrics}) + _METRIC_VALUE_BYTES * len(metrics)


def _metric_problem(key: str, value: float) -> str:
    problems = entry_problems("metrics", {key: ""})
    if problems:
        return problems[0]
    if not math.isfinite(value):
        return f"metrics[{key!r}] is {value}; metrics must be finite numbers"
    return ""


def validate_metrics(metrics: dict[str, float]) -> None:
    for key, value in metrics.items():
        if problem := _metric_problem(key, value):
            raise InvalidArgument(problem)
    size = metrics_wire_bytes(metrics)
    if size > MAX_VERSION_METRICS:
        raise InvalidArgument(
            f"a model version's metrics take at most {format_size(MAX_VERSION_METRICS)} together, these "
            f"{len(metrics):,} take {format_size(size)} ({size} bytes, counting "
            f"{ENTRY_WIRE_BYTES + _METRIC_VALUE_BYTES} bytes a metric beside its key's UTF-8); keep "
            "the version's summary metrics here and the rest as its run's metrics"
        )


def fit_metrics(metrics: dict[str, float]) -> tuple[dict[str, float], str]:
    """Metrics `validate_metrics` takes, for a version whose registration must not fail on them
    (a job's, registered after the training; an export's, copied from a version stored before
    the bound): those with a valid key and a finite value, as many as fit, smallest first, and
    a note naming those left out ("" when none was), for METRICS_LEFT_OUT_KEY."""
    sizes = {
        key: metrics_wire_bytes({key: value})
        for key, value in metrics.items()
        if not _metric_problem(key, value)
    }
    kept = _smallest_that_fit(sizes, MAX_VERSION_METRICS)
    left_out = [k for k in metrics if k not in kept]
    if not left_out:
        return metrics, ""
    note = (
        f"{len(left_out)} metrics left out (a version's metrics are finite, keyed by 1 to {MAX_TAG_KEY} "
        f"characters, and take at most {format_size(MAX_VERSION_METRICS)} together): "
    )
    return {k: v for k, v in metrics.items() if k in kept}, note + _named(left_out)


def _rule_abiding(tags: dict[str, str]) -> dict[str, str]:
    """The tags whose key and value follow the tag rule (`check_entries`)."""
    return {key: value for key, value in tags.items() if not entry_problems("tags", {key: value})}


def fit_tags(tags: dict[str, str], description: str) -> tuple[dict[str, str], str]:
    """Tags `validate_tags` and `validate_version_text` take beside `description`, for a version
    whose registration must not fail on them (an export's, copied from a version stored before
    the rules, which no call can change; a job's, checked when it was submitted): those that follow
    the tag rule, as many as fit beside the description, smallest first, and a note naming those
    left out ("" when none was), for TAGS_LEFT_OUT_KEY."""
    sizes = {key: entries_bytes({key: value}) for key, value in _rule_abiding(tags).items()}
    kept = _smallest_that_fit(sizes, MAX_RECORD_TEXT - len(description.encode()))
    left_out = [key for key in tags if key not in kept]
    if not left_out:
        return tags, ""
    note = (
        f"{len(left_out)} tags left out (a version's tag keys are 1 to {MAX_TAG_KEY} characters without "
        f"NUL or newlines, values at most {MAX_TAG_VALUE} characters, and its description and tags "
        f"take at most {format_size(MAX_RECORD_TEXT)} together): "
    )
    # Shown as written in Python: a key left out may be empty or hold a newline.
    named = _named([repr(key) for key in left_out])
    return {key: value for key, value in tags.items() if key in kept}, note + named


def check_description_room(description: str, tags: dict[str, str]) -> None:
    """InvalidArgument when `description` takes the room of tags a derived version carries
    (`fit_tags`): the caller can shorten it. Tags stored before the 16 KiB bound that take more
    alone are fitted, not refused: no call can change them."""
    kept = _rule_abiding(tags)
    if not record_text_problem("a model version", "", kept):
        validate_version_text(description, kept)


def validate_model_text(description: str, tags: dict[str, str]) -> None:
    """A model's record is rewritten by every registration of one of its versions."""
    check_record_text("a model", description, tags)


def validate_version_text(description: str, tags: dict[str, str]) -> None:
    """A version reaches ListVersions pages and every follower of its model with each change."""
    check_record_text("a model version", description, tags)
