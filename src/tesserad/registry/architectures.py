"""What a safetensors version's architecture says about it: the signature of the model it
builds, and whether the uploaded weights are that model's tensors (their shapes as read from
the file's header); the model is built on torch's meta device (no memory), once per architecture."""

from __future__ import annotations

import json
from functools import lru_cache
from typing import Any

from tesserad.errors import InvalidArgument
from tesserad.registry.records import Signature, TensorSpec

_MAX_NAMED = 5


def architecture_signature(architecture: dict[str, Any]) -> Signature:
    """The signature of the model `architecture` builds (InvalidArgument for a bad architecture)."""
    from tesserad.nn import model_signature, spec_from_dict

    inputs, outputs = model_signature(spec_from_dict(architecture))
    return Signature(
        tuple(TensorSpec(t.name, t.dtype, tuple(t.shape)) for t in inputs),
        tuple(TensorSpec(t.name, t.dtype, tuple(t.shape)) for t in outputs),
    )


def with_module_sha256(architecture: dict[str, Any]) -> dict[str, Any]:
    """A python family's architecture with the sha256 of its module's file as it is now under
    the process's module directories (NotFound or FailedPrecondition when it is in none): what a
    client sends for it is not evidence of anything. Other families' as they are."""
    if architecture.get("family") != "python":
        return architecture
    from tesserad.nn.user_modules import allowed_file_sha256

    return {**architecture, "module_sha256": allowed_file_sha256(architecture["entry"])}


def _fits(built: tuple[int, ...], graph: tuple[int, ...]) -> bool:
    return len(built) == len(graph) and all(-1 in (b, g) or b == g for b, g in zip(built, graph, strict=True))


def _flow(signature: Signature) -> str:
    """Its tensors' names and shapes: "x [-1, 8] -> logits [-1, 3]"."""

    def tensors(specs: tuple[TensorSpec, ...]) -> str:
        return ", ".join(f"{t.name} {list(t.shape)}" for t in specs)

    return f"{tensors(signature.inputs)} -> {tensors(signature.outputs)}"


def check_graph_fits(architecture: dict[str, Any], graph: Signature) -> None:
    """InvalidArgument naming both unless the model `architecture` builds has the ONNX graph's
    inputs and outputs, in order, of its shapes (a dimension either leaves dynamic fits any).
    Names may differ: an exporter names a graph's tensors as it likes."""
    built = architecture_signature(architecture)
    pairs = [(built.inputs, graph.inputs), (built.outputs, graph.outputs)]
    if all(
        len(b) == len(g) and all(_fits(x.shape, y.shape) for x, y in zip(b, g, strict=True)) for b, g in pairs
    ):
        return
    raise InvalidArgument(
        f"the architecture builds {_flow(built)}, but the ONNX graph is {_flow(graph)}; send the "
        "architecture that built this graph, or none (an ONNX version serves without one)"
    )


def check_weights_fit(stored: dict[str, tuple[int, ...]], architecture: dict[str, Any]) -> None:
    """InvalidArgument naming the tensor unless the `stored` tensors (name: shape, as
    `artifacts.safetensors_shapes` reads them) are exactly those of the model `architecture`
    builds, with their shapes. A python family's module is the user's code, which the daemon's
    process runs only to load the model (to serve, explain or export it) and to read its tensors'
    layout (for a job resuming from its checkpoint), a SystemExit it raises contained there: its
    weights are checked on loading, not here."""
    if architecture.get("family") == "python":
        return
    expected = _tensor_shapes(json.dumps(architecture, sort_keys=True))
    missing = sorted(set(expected) - set(stored))
    unexpected = sorted(set(stored) - set(expected))
    if missing or unexpected:
        parts = [f"missing tensor {name!r}" for name in missing[:_MAX_NAMED]]
        parts += [f"unexpected tensor {name!r}" for name in unexpected[:_MAX_NAMED]]
        raise InvalidArgument("the weights do not fit the architecture: " + ", ".join(parts))
    for name, shape in expected.items():
        if stored[name] != shape:
            raise InvalidArgument(
                f"the weights do not fit the architecture: tensor {name!r} has shape "
                f"{list(stored[name])}, the architecture needs {list(shape)}"
            )


@lru_cache(maxsize=256)
def _tensor_shapes(architecture_json: str) -> dict[str, tuple[int, ...]]:
    """The name and shape of each tensor of the model an architecture (as sorted JSON) builds.

    Cached: building even on the meta device took longer than the rest of a small
    registration, and uploads in a row usually share their architecture. Callers must not
    change the dict."""
    import torch

    from tesserad.nn import build_model, spec_from_dict

    spec = spec_from_dict(json.loads(architecture_json))
    with torch.device("meta"):
        return {name: tuple(t.shape) for name, t in build_model(spec).state_dict().items()}
