"""Architecture specs: typed, frozen configs whose fields mirror protos/tessera/v1/architecture.proto.

Each spec carries ``input_shape`` (one sample, without the batch dim) and ``output_size``
(the proto's ``Architecture`` fields) plus its family's hyperparameters under the proto's
names. Field defaults are the proto's documented defaults; the API layer maps a proto zero
value to them, so here every value is explicit and a zero is an error.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from dataclasses import dataclass, field
from typing import Any

from tesserad.errors import InvalidArgument
from tesserad.names import not_one_of
from tesserad.nn.user_modules import entry_problem

ACTIVATIONS = ("relu", "gelu", "tanh", "silu")
# Keeps a spec from a client from asking a worker for an absurd model before anything is built.
MAX_WIDTH = 1 << 16
MAX_DEPTH = 64
# A sample's dims: with the batch dim, 64, the most numpy makes an array of (and a version's
# signature holds).
MAX_SAMPLE_DIMS = 63
# The Architecture message's fields every family has, set beside the family rather than in it.
SHARED_FIELDS = ("input_shape", "output_size")


@dataclass(frozen=True)
class MlpSpec:
    """Fully connected network over the flattened sample. Input (N, *input_shape)."""

    input_shape: tuple[int, ...]
    output_size: int
    hidden_sizes: tuple[int, ...] = (128, 128)
    activation: str = "relu"
    dropout: float = 0.0
    norm: str = "none"  # none, layer, batch


@dataclass(frozen=True)
class Cnn2dSpec:
    """2-D conv blocks (conv, norm, activation, pool), global average pool, linear head. Input (N, C, H, W)."""

    input_shape: tuple[int, ...]
    output_size: int
    channels: tuple[int, ...] = (16, 32)
    kernel_size: int = 3
    norm: str = "batch"  # batch, none
    activation: str = "relu"
    pool: str = "max"  # max, avg, none
    dropout: float = 0.0


@dataclass(frozen=True)
class Cnn4dSpec:
    """Conv4d blocks (conv, norm, activation, pool), global average pool, linear head. Input (N, C, T, D, H, W)."""

    input_shape: tuple[int, ...]
    output_size: int
    channels: tuple[int, ...] = (8, 16)
    kernel_size: int = 3
    norm: str = "batch"
    activation: str = "relu"
    pool: str = "max"
    dropout: float = 0.0


@dataclass(frozen=True)
class LstmSpec:
    """LSTM over a sequence; the head reads the last step. Input (N, T, F)."""

    input_shape: tuple[int, ...]
    output_size: int
    hidden_size: int = 64
    num_layers: int = 1
    bidirectional: bool = False
    dropout: float = 0.0


@dataclass(frozen=True)
class TransformerSpec:
    """Transformer encoder: embedding, learned positions, self-attention layers, pooling, head. Input (N, T, F)."""

    input_shape: tuple[int, ...]
    output_size: int
    d_model: int = 64
    num_heads: int = 4
    num_layers: int = 2
    dim_feedforward: int = 128
    dropout: float = 0.0
    pooling: str = "mean"  # mean, last, cls


@dataclass(frozen=True)
class PythonSpec:
    """The user's own nn.Module class, "module:Class", imported from training.module_paths
    (tesserad.nn.user_modules) and built with `kwargs`. Input (N, *input_shape)."""

    input_shape: tuple[int, ...]
    output_size: int
    entry: str = ""
    kwargs: dict[str, Any] = field(default_factory=dict)
    module_sha256: str = ""  # set by the daemon at submit: the module file's hash


ArchitectureSpec = MlpSpec | Cnn2dSpec | Cnn4dSpec | LstmSpec | TransformerSpec | PythonSpec

FAMILIES: dict[str, type] = {
    "mlp": MlpSpec,
    "cnn2d": Cnn2dSpec,
    "cnn4d": Cnn4dSpec,
    "lstm": LstmSpec,
    "transformer": TransformerSpec,
    "python": PythonSpec,
}
# A python family's kwargs as JSON at most: they are a constructor's arguments, not data.
MAX_KWARGS_BYTES = 64 * 1024
_SHA256 = re.compile(r"[0-9a-f]{64}")
_FAMILY_OF: dict[type, str] = {cls: name for name, cls in FAMILIES.items()}


@dataclass(frozen=True)
class TensorSpec:
    """One named tensor of a model's signature; -1 marks a dynamic dimension."""

    name: str
    dtype: str
    shape: tuple[int, ...]


def family_of(spec: ArchitectureSpec) -> str:
    """The family name ("mlp", "cnn2d", ...) of a spec."""
    try:
        return _FAMILY_OF[type(spec)]
    except KeyError:
        raise InvalidArgument(
            f"architecture: expected one of {', '.join(FAMILIES)} specs, got {type(spec).__name__}"
        ) from None


def sample_layout(spec: ArchitectureSpec) -> tuple[int | None, str]:
    """The dims of one sample the family takes (None: any number) and their layout, "(C, H, W)"."""
    if isinstance(spec, MlpSpec | PythonSpec):
        return None, "of any rank"
    if isinstance(spec, Cnn2dSpec):
        return 3, "(C, H, W)"
    if isinstance(spec, Cnn4dSpec):
        return 5, "(C, T, D, H, W)"
    return 2, "(T, F)"


def channel_axis_advice(rank: int | None, layout: str, shape: tuple[int, ...]) -> str:
    """How to give samples shaped `shape` the channel axis a conv family's `layout` leads with
    when that axis is all they lack (a single-channel clip kept as (T, D, H, W)); "" otherwise."""
    if rank is None or len(shape) != rank - 1 or not layout.startswith("(C, "):
        return ""
    return f"x[:, None] (shape N, 1, {layout.removeprefix('(C, ')}"


# --------------------------------------------------------------------------------------
# Validation


def field_path(family: str, field: str) -> str:
    """Where `field` (e.g. "channels[1]") sits in an Architecture message, as a spec's TOML writes
    it too: input_shape and output_size beside the family ("architecture.input_shape"), the
    family's hyperparameters in it ("architecture.cnn4d.channels[1]")."""
    if field.partition("[")[0] in SHARED_FIELDS:
        return f"architecture.{field}"
    return f"architecture.{family}.{field}"


class _Checker:
    """Collects "architecture[.<family>].<field>: ..." problems of one spec (see field_path); each
    check says whether the value passed, so checks that build on it can be skipped."""

    def __init__(self, family: str) -> None:
        self.family = family
        self.problems: list[str] = []

    def fail(self, field: str, what: str) -> bool:
        self.problems.append(f"{field_path(self.family, field)}: {what}")
        return False

    def int_range(self, field: str, value: object, low: int, high: int) -> bool:
        if not isinstance(value, int) or isinstance(value, bool):
            return self.fail(field, f"must be an integer, got {value!r}")
        if value < low:
            return self.fail(field, f"must be >= {low}, got {value}")
        if value > high:
            return self.fail(field, f"must be <= {high}, got {value}")
        return True

    def int_list(self, field: str, value: object, high: int) -> bool:
        if not isinstance(value, tuple) or not value:
            shown = list(value) if isinstance(value, tuple) else value
            return self.fail(field, f"must be a non-empty list of integers, got {shown!r}")
        if len(value) > MAX_DEPTH:
            return self.fail(field, f"must have at most {MAX_DEPTH} entries, got {len(value)}")
        return all([self.int_range(f"{field}[{i}]", v, 1, high) for i, v in enumerate(value)])

    def choice(self, field: str, value: object, allowed: tuple[str, ...]) -> bool:
        if value not in allowed:
            return self.fail(field, not_one_of(value, allowed))
        return True

    def probability(self, field: str, value: object) -> bool:
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            return self.fail(field, f"must be a number in [0, 1), got {value!r}")
        if not 0.0 <= value < 1.0:
            return self.fail(field, f"must be in [0, 1), got {value}")
        return True

    def shape(self, value: object, rank: int | None, layout: str) -> bool:
        # Shown as the list a spec's TOML or JSON writes, not as the tuple it became here.
        shown = list(value) if isinstance(value, tuple) else value
        if not isinstance(value, tuple) or not value:
            return self.fail(
                "input_shape", f"must be a non-empty list {layout} (no batch dim), got {shown!r}"
            )
        if len(value) > MAX_SAMPLE_DIMS:
            return self.fail(
                "input_shape", f"must have at most {MAX_SAMPLE_DIMS} dims (no batch dim), got {len(value):,}"
            )
        if rank is not None and len(value) != rank:
            advice = channel_axis_advice(rank, layout, value)
            if advice:
                advice = (
                    f"; samples of one channel take {[1, *value]}, their array given a channel axis: {advice}"
                )
            return self.fail(
                "input_shape",
                f"must have {rank} dims {layout} (no batch dim), got {len(value)}: {shown}{advice}",
            )
        return all([self.int_range(f"input_shape[{i}]", v, 1, MAX_WIDTH * 16) for i, v in enumerate(value)])


def spec_problems(spec: ArchitectureSpec) -> list[str]:
    """Every bad field of `spec`, each as "architecture.<family>.<field>: ..."; empty if it is valid."""
    family = family_of(spec)
    c = _Checker(family)
    c.int_range("output_size", spec.output_size, 1, MAX_WIDTH)
    c.shape(spec.input_shape, *sample_layout(spec))
    if isinstance(spec, MlpSpec):
        c.int_list("hidden_sizes", spec.hidden_sizes, MAX_WIDTH)
        c.choice("activation", spec.activation, ACTIVATIONS)
        c.probability("dropout", spec.dropout)
        c.choice("norm", spec.norm, ("none", "layer", "batch"))
    elif isinstance(spec, Cnn2dSpec | Cnn4dSpec):
        c.int_list("channels", spec.channels, MAX_WIDTH)
        c.int_range("kernel_size", spec.kernel_size, 1, 15)
        c.choice("norm", spec.norm, ("batch", "none"))
        c.choice("activation", spec.activation, ACTIVATIONS)
        c.choice("pool", spec.pool, ("max", "avg", "none"))
        c.probability("dropout", spec.dropout)
    elif isinstance(spec, LstmSpec):
        c.int_range("hidden_size", spec.hidden_size, 1, MAX_WIDTH)
        layers_ok = c.int_range("num_layers", spec.num_layers, 1, MAX_DEPTH)
        if not isinstance(spec.bidirectional, bool):
            c.fail("bidirectional", f"must be true or false, got {spec.bidirectional!r}")
        if c.probability("dropout", spec.dropout) and layers_ok and spec.dropout > 0 and spec.num_layers == 1:
            c.fail("dropout", "applies between stacked layers, so it needs num_layers >= 2 (or dropout 0)")
    elif isinstance(spec, PythonSpec):
        _check_python(c, spec)
    else:
        width_ok = c.int_range("d_model", spec.d_model, 1, MAX_WIDTH)
        heads_ok = c.int_range("num_heads", spec.num_heads, 1, 1024)
        if width_ok and heads_ok and spec.d_model % spec.num_heads:
            c.fail("d_model", f"must be divisible by num_heads={spec.num_heads}, got {spec.d_model}")
        c.int_range("num_layers", spec.num_layers, 1, MAX_DEPTH)
        c.int_range("dim_feedforward", spec.dim_feedforward, 1, MAX_WIDTH * 4)
        c.probability("dropout", spec.dropout)
        c.choice("pooling", spec.pooling, ("mean", "last", "cls"))
    return c.problems


def _check_python(c: _Checker, spec: PythonSpec) -> None:
    if problem := entry_problem(spec.entry):
        c.fail("entry", problem)
    if not isinstance(spec.kwargs, dict):
        c.fail("kwargs", f"must be a table of keyword arguments, got {spec.kwargs!r}")
        return
    for key in spec.kwargs:
        if not isinstance(key, str) or not key.isidentifier():
            c.fail("kwargs", f"{key!r} is not a keyword argument's name")
        elif key in SHARED_FIELDS:
            c.fail(f"kwargs.{key}", f"set architecture.{key} instead: the class gets it from there")
    try:
        size = len(json.dumps(spec.kwargs, allow_nan=False))
    except (TypeError, ValueError) as exc:
        c.fail("kwargs", f"must hold JSON values (numbers, strings, booleans, lists, tables): {exc}")
        return
    if size > MAX_KWARGS_BYTES:
        c.fail("kwargs", f"must be at most {MAX_KWARGS_BYTES // 1024} KiB as JSON, got {size:,} bytes")
    if spec.module_sha256 and not (
        isinstance(spec.module_sha256, str) and _SHA256.fullmatch(spec.module_sha256)
    ):
        c.fail("module_sha256", f"must be a sha256 in hex (the daemon sets it), got {spec.module_sha256!r}")


def validate_spec(spec: ArchitectureSpec) -> None:
    """Raise InvalidArgument naming the first bad field ("architecture.<family>.<field>: ...")."""
    problems = spec_problems(spec)
    if problems:
        raise InvalidArgument(problems[0])


# --------------------------------------------------------------------------------------
# Signature and dict form


def model_signature(spec: ArchitectureSpec) -> tuple[list[TensorSpec], list[TensorSpec]]:
    """(inputs, outputs): "input" float32 (-1, *input_shape) and "output" float32 (-1, output_size)."""
    validate_spec(spec)
    return (
        [TensorSpec("input", "float32", (-1, *spec.input_shape))],
        [TensorSpec("output", "float32", (-1, spec.output_size))],
    )


def batch_norm_values_per_sample(spec: ArchitectureSpec) -> int | None:
    """The fewest values one sample gives a batch norm layer per channel, None without batch norm:
    torch refuses to train a layer on one value per channel, so at 1 a batch of one sample fails.
    An mlp's norm sees one value per feature; a conv net's the spatial size at its last block
    (blocks keep the size and pool 2 on dims >= 2 after their norm, as architectures._ConvNet)."""
    if isinstance(spec, MlpSpec):
        return 1 if spec.norm == "batch" else None
    if isinstance(spec, Cnn2dSpec | Cnn4dSpec) and spec.norm == "batch" and spec.channels:
        size = list(spec.input_shape[1:])
        if spec.pool != "none":
            for _ in spec.channels[:-1]:
                size = [s // 2 if s >= 2 else s for s in size]
        return math.prod(size)
    return None


def spec_to_dict(spec: ArchitectureSpec) -> dict[str, Any]:
    """A JSON-able dict with "family" and every field (tuples as lists)."""
    out: dict[str, Any] = {"family": family_of(spec)}
    for f in dataclasses.fields(spec):
        value = getattr(spec, f.name)
        out[f.name] = list(value) if isinstance(value, tuple) else value
    if isinstance(spec, PythonSpec) and not spec.module_sha256:
        del out["module_sha256"]  # only set once a daemon found the file
    return out


def spec_from_dict(d: dict[str, Any]) -> ArchitectureSpec:
    """The spec a ``spec_to_dict`` dict describes; missing hyperparameters take their defaults."""
    spec = unchecked_spec_from_dict(d)
    validate_spec(spec)
    return spec


def unchecked_spec_from_dict(d: dict[str, Any]) -> ArchitectureSpec:
    """Like ``spec_from_dict``, checking only the dict's structure (family, field names); the
    values are left to ``spec_problems``."""
    if not isinstance(d, dict):
        raise InvalidArgument(f"architecture: expected a mapping, got {type(d).__name__}")
    family = d.get("family")
    if family not in FAMILIES:
        raise InvalidArgument(f"architecture.family: {not_one_of(family, tuple(FAMILIES))}")
    cls = FAMILIES[family]
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs: dict[str, Any] = {}
    for key, value in d.items():
        if key == "family":
            continue
        if key not in fields:
            raise InvalidArgument(
                f"architecture.{family}.{key}: unknown field; {family} takes {', '.join(fields)}"
            )
        kwargs[key] = tuple(value) if isinstance(value, list) and key != "kwargs" else value
    for required in SHARED_FIELDS:
        if required not in kwargs:
            raise InvalidArgument(f"{field_path(family, required)}: is required")
    if isinstance(kwargs.get("dropout"), int) and not isinstance(kwargs["dropout"], bool):
        kwargs["dropout"] = float(kwargs["dropout"])  # JSON writes 0.0 as 0
    spec: ArchitectureSpec = cls(**kwargs)
    return spec
