"""Checks of uploaded artifacts: a safetensors header that adds up, an ONNX graph that passes
`onnx.checker` and matches the declared signature. Both read from a file (safetensors: only
the header, through safetensors' own parser; or a small artifact's bytes at hand); nothing is
ever unpickled, and no error names the file's path on the server."""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from itertools import chain
from pathlib import Path
from typing import TYPE_CHECKING

from tesserad.dtypes import STRING
from tesserad.errors import InvalidArgument
from tesserad.registry.records import Signature, TensorSpec

if TYPE_CHECKING:
    import onnx

# safetensors' reasons (after "Error while deserializing header: ") said in a user's terms.
_SAFETENSORS_REASONS = {
    "header too small": "it is too short to hold a safetensors header",
    "header too large": "its first 8 bytes do not give a plausible header length",
    "incomplete metadata, file not fully covered": (
        "the tensors' data_offsets do not cover its data section exactly: it is truncated or damaged"
    ),
}


def safetensors_shapes(source: Path | bytes) -> dict[str, tuple[int, ...]]:
    """Validate the header, dtypes and offsets of a safetensors file (or its bytes); each
    tensor's shape."""
    from safetensors import SafetensorError, deserialize, safe_open

    try:
        if isinstance(source, bytes):
            tensors = deserialize(source)  # type: ignore[no-untyped-call]
            return {name: tuple(info["shape"]) for name, info in tensors}
        with safe_open(source, framework="numpy") as file:
            names: list[str] = file.keys()
            return {name: tuple(file.get_slice(name).get_shape()) for name in names}
    except SafetensorError as exc:
        reason = str(exc).removeprefix("Error while deserializing header: ")
        reason = reason.removeprefix("Error while deserializing: ")
        raise InvalidArgument(
            f"the artifact is not a valid safetensors file: {_SAFETENSORS_REASONS.get(reason, reason)}"
        ) from None
    except OSError as exc:  # str(exc) names the server's path; strerror does not
        reason = exc.strerror or type(exc).__name__
        raise InvalidArgument(f"the artifact cannot be read as a safetensors file: {reason}") from None


def total_parameters(shapes: dict[str, tuple[int, ...]]) -> int:
    return sum(math.prod(shape) for shape in shapes.values())


def _onnx_dtype_name(elem_type: int) -> str:
    import onnx
    from onnx import helper

    if elem_type == onnx.TensorProto.BFLOAT16:
        return "bfloat16"
    if elem_type == onnx.TensorProto.STRING:
        return STRING
    try:
        return str(helper.tensor_dtype_to_np_dtype(elem_type))
    except (KeyError, ValueError):
        return f"onnx-type-{elem_type}"


def _spec_of(value_info: object) -> TensorSpec:
    tensor_type = value_info.type.tensor_type  # type: ignore[attr-defined]
    dims = tuple(d.dim_value if d.HasField("dim_value") else -1 for d in tensor_type.shape.dim)
    return TensorSpec(value_info.name, _onnx_dtype_name(tensor_type.elem_type), dims)  # type: ignore[attr-defined]


def _graph_tensors(graph: onnx.GraphProto) -> Iterator[onnx.TensorProto]:
    """Every tensor a graph holds: initializers, sparse ones and node attributes, subgraphs included."""
    yield from graph.initializer
    for sparse in graph.sparse_initializer:
        yield from (sparse.values, sparse.indices)
    yield from _node_tensors(graph.node)


def _node_tensors(nodes: Iterable[onnx.NodeProto]) -> Iterator[onnx.TensorProto]:
    for node in nodes:
        for attribute in node.attribute:
            if attribute.HasField("t"):
                yield attribute.t
            yield from attribute.tensors
            sparse = [attribute.sparse_tensor] if attribute.HasField("sparse_tensor") else []
            for tensor in [*sparse, *attribute.sparse_tensors]:
                yield from (tensor.values, tensor.indices)
            subgraphs = [attribute.g] if attribute.HasField("g") else []
            for subgraph in [*subgraphs, *attribute.graphs]:
                yield from _graph_tensors(subgraph)


def check_onnx(path: Path) -> tuple[Signature, int]:
    """Run onnx.checker; the graph's signature and parameter count (initializer elements).

    The checker gets the file's bytes, not its path, so its messages never name the server's
    path; an artifact is one file, so tensors stored as external data are refused.
    """
    import onnx

    data = path.read_bytes()
    try:
        model = onnx.load_model_from_string(data)
    except Exception as exc:  # protobuf raises DecodeError (and others) for bytes that are not ONNX
        raise InvalidArgument(
            f"the artifact is not a valid ONNX model: it is not an ONNX protobuf ({_one_line(exc)})"
        ) from None
    tensors = chain(_graph_tensors(model.graph), *(_node_tensors(f.node) for f in model.functions))
    external = [t.name for t in tensors if t.data_location == onnx.TensorProto.EXTERNAL]
    if external:
        raise InvalidArgument(
            f"the ONNX model keeps tensor {external[0]!r} in an external data file; upload one "
            "self-contained file (onnx.save with save_as_external_data=False)"
        )
    try:
        onnx.checker.check_model(data)
    except Exception as exc:  # onnx raises ValidationError, ValueError, ... for a bad graph
        raise InvalidArgument(f"the artifact is not a valid ONNX model: {_one_line(exc)}") from None
    initializers = {init.name for init in model.graph.initializer}
    inputs = tuple(_spec_of(v) for v in model.graph.input if v.name not in initializers)
    outputs = tuple(_spec_of(v) for v in model.graph.output)
    parameters = sum(math.prod(init.dims) for init in model.graph.initializer)
    return Signature(inputs, outputs), parameters


def _one_line(exc: Exception) -> str:
    """The exception's text on one line (onnx spreads a node's description over several)."""
    return " ".join(str(exc).split())[:300] or type(exc).__name__


def signature_mismatches(declared: Signature, graph: Signature) -> list[str]:
    """How a declared signature disagrees with the graph's (names, dtypes, ranks, fixed dims)."""
    problems: list[str] = []
    for kind, want, have in (
        ("input", declared.inputs, graph.inputs),
        ("output", declared.outputs, graph.outputs),
    ):
        graph_by_name = {spec.name: spec for spec in have}
        declared_names = {spec.name for spec in want}
        for spec in want:
            actual = graph_by_name.get(spec.name)
            if actual is None:
                problems.append(
                    f"{kind} {spec.name!r} is not in the graph (its {kind}s: "
                    f"{', '.join(sorted(graph_by_name)) or 'none'})"
                )
                continue
            if spec.dtype != actual.dtype:
                problems.append(f"{kind} {spec.name!r}: dtype {spec.dtype} vs the graph's {actual.dtype}")
            if len(spec.shape) != len(actual.shape):
                problems.append(
                    f"{kind} {spec.name!r}: rank {len(spec.shape)} vs the graph's {len(actual.shape)}"
                )
                continue
            for axis, (d, g) in enumerate(zip(spec.shape, actual.shape, strict=True)):
                if g != -1 and d != g:
                    problems.append(f"{kind} {spec.name!r}: dim {axis} is {d} but the graph fixes it at {g}")
        problems += [
            f"the graph's {kind} {name!r} is not in the declared signature"
            for name in sorted(set(graph_by_name) - declared_names)
        ]
    return problems


def signature_words(signature: Signature) -> str:
    """A signature in words: "inputs x float32 [-1, 4]; outputs logits float32 [-1, 2]"."""

    def specs(kind: str, tensors: tuple[TensorSpec, ...]) -> str:
        return f"{kind} " + ", ".join(f"{t.name} {t.dtype} {list(t.shape)}" for t in tensors)

    return f"{specs('inputs', signature.inputs)}; {specs('outputs', signature.outputs)}"


def _same_shape(a: tuple[int, ...], b: tuple[int, ...]) -> bool:
    """Equal, each dimension that either side leaves dynamic (-1) aside: as an upload's check of a
    declared signature against its graph (`signature_mismatches`) accepts any size there, a graph
    exported with batch 1 answers the requests one of batch -1 answers, one row at a time."""
    return len(a) == len(b) and all(x == y or -1 in (x, y) for x, y in zip(a, b, strict=True))


def signature_differences(
    a: Signature, b: Signature, any_dynamic: bool = False, names: tuple[str, str] = ("a", "b")
) -> list[str]:
    """Readable differences between two signatures, e.g. "input 'x': shape [-1, 3] vs [-1, 4]":
    names, dtypes and shapes; with `any_dynamic`, shapes modulo dynamic dimensions
    (`_same_shape`), as versions that answer the same requests alike differ. `names` says which
    signature a tensor found in one only is in ("only in version 2")."""
    out: list[str] = []
    for kind, left, right in (("input", a.inputs, b.inputs), ("output", a.outputs, b.outputs)):
        lmap = {s.name: s for s in left}
        rmap = {s.name: s for s in right}
        for name in sorted(set(lmap) | set(rmap)):
            if name not in rmap:
                out.append(f"{kind} {name!r}: only in {names[0]}")
            elif name not in lmap:
                out.append(f"{kind} {name!r}: only in {names[1]}")
            else:
                sa, sb = lmap[name], rmap[name]
                if sa.dtype != sb.dtype:
                    out.append(f"{kind} {name!r}: dtype {sa.dtype} vs {sb.dtype}")
                if sa.shape != sb.shape and not (any_dynamic and _same_shape(sa.shape, sb.shape)):
                    out.append(f"{kind} {name!r}: shape {list(sa.shape)} vs {list(sb.shape)}")
    return out
