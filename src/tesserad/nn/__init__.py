"""Conv4d and friends, architectures built from a spec, ONNX export.

Pure torch: no gRPC or generated protobuf here (the API layer maps its messages onto the
specs), so training workers import this package alone. The specs (tesserad.nn.specs) need no
torch and are imported with the package; the torch parts are imported on first use of one of
their names, so that the daemon, which validates specs at every start and request, imports
torch only when it builds, trains or exports a model.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from tesserad.nn.specs import (
    ArchitectureSpec,
    Cnn2dSpec,
    Cnn4dSpec,
    LstmSpec,
    MlpSpec,
    PythonSpec,
    TensorSpec,
    TransformerSpec,
    model_signature,
    spec_from_dict,
    spec_to_dict,
    validate_spec,
)

if TYPE_CHECKING:
    from tesserad.nn.architectures import build_model, parameter_count
    from tesserad.nn.conv import (
        ALGORITHMS,
        Conv4d,
        ConvTranspose4d,
        benchmark,
        benchmark_cache,
        benchmark_enabled,
        clear_benchmark_cache,
        conv4d,
        conv_transpose4d,
        heuristic_algorithm,
        max_workspace,
        set_benchmark,
        set_max_workspace,
        workspace_bytes,
    )
    from tesserad.nn.norm4d import BatchNorm4d
    from tesserad.nn.onnx_export import OnnxExportReport, export_onnx
    from tesserad.nn.pool4d import (
        AdaptiveAvgPool4d,
        AvgPool4d,
        MaxPool4d,
        adaptive_avg_pool4d,
        avg_pool4d,
        max_pool4d,
    )

# Each torch-backed name and the submodule that defines it.
_TORCH_NAMES = {
    "build_model": "architectures",
    "parameter_count": "architectures",
    **dict.fromkeys(
        (
            "ALGORITHMS",
            "Conv4d",
            "ConvTranspose4d",
            "benchmark",
            "benchmark_cache",
            "benchmark_enabled",
            "clear_benchmark_cache",
            "conv4d",
            "conv_transpose4d",
            "heuristic_algorithm",
            "max_workspace",
            "set_benchmark",
            "set_max_workspace",
            "workspace_bytes",
        ),
        "conv",
    ),
    "BatchNorm4d": "norm4d",
    "OnnxExportReport": "onnx_export",
    "export_onnx": "onnx_export",
    **dict.fromkeys(
        ("AdaptiveAvgPool4d", "AvgPool4d", "MaxPool4d", "adaptive_avg_pool4d", "avg_pool4d", "max_pool4d"),
        "pool4d",
    ),
}


def __getattr__(name: str) -> Any:
    submodule = _TORCH_NAMES.get(name)
    if submodule is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{submodule}"), name)
    globals()[name] = value
    return value


__all__ = [
    "ALGORITHMS",
    "AdaptiveAvgPool4d",
    "ArchitectureSpec",
    "AvgPool4d",
    "BatchNorm4d",
    "Cnn2dSpec",
    "Cnn4dSpec",
    "Conv4d",
    "ConvTranspose4d",
    "LstmSpec",
    "MaxPool4d",
    "MlpSpec",
    "OnnxExportReport",
    "PythonSpec",
    "TensorSpec",
    "TransformerSpec",
    "adaptive_avg_pool4d",
    "avg_pool4d",
    "benchmark",
    "benchmark_cache",
    "benchmark_enabled",
    "build_model",
    "clear_benchmark_cache",
    "conv4d",
    "conv_transpose4d",
    "export_onnx",
    "heuristic_algorithm",
    "max_pool4d",
    "max_workspace",
    "model_signature",
    "parameter_count",
    "set_benchmark",
    "set_max_workspace",
    "spec_from_dict",
    "spec_to_dict",
    "validate_spec",
    "workspace_bytes",
]
