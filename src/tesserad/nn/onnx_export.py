"""ONNX export of spec-built models with a dynamic batch axis, checked against onnxruntime.

Conv4d has two lowerings:

- ``decomposed``: the ``time_fold`` formulation, i.e. slices + concat + one 3-D ``Conv`` per
  layer, which every runtime runs with its fast 3-D kernels.
- ``native``: one ``Conv`` node with four spatial dims (ONNX allows N-D Conv), emitted
  through a custom op and a translation-table entry. onnxruntime's CPU provider runs it
  correctly but has no fast kernel for it: on the bench's cnn4d classifier
  (bench/results/conv4d_cpu.json, ``onnx_cnn4d``) it took 4.8 vs 2.3 ms at batch 1 and
  216 vs 80 ms at batch 32. So ``auto`` exports ``decomposed``, and ``native`` stays an
  option for runtimes with a 4-D kernel. Lowering Conv4d as the per-tap or per-frame loop
  instead of ``time_fold`` was slower in onnxruntime too (61 and 70 ms vs 53 ms at batch 32).

The exporter is torch's dynamo exporter (``torch.onnx.export(dynamo=True)``, needs
onnxscript): it exported every family with a symbolic batch dim, where the legacy
TorchScript exporter rejects the channels-last copies. Unfold/im2col graphs are never
produced (40x slower in onnxruntime).
"""

from __future__ import annotations

import copy
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch import Tensor, nn

from tesserad.errors import FailedPrecondition, InvalidArgument
from tesserad.nn.conv import Conv4d, conv_output_size, pad4d, resolve_padding
from tesserad.nn.conv import conv4d as conv4d_function
from tesserad.nn.specs import ArchitectureSpec, model_signature

Conv4dLowering = Literal["auto", "decomposed", "native"]
PARITY_TOLERANCE = 1e-4
PARITY_BATCHES = (1, 7)


@dataclass(frozen=True)
class OnnxExportReport:
    """What was written and how closely onnxruntime matches torch on it."""

    path: Path
    opset: int
    conv4d_mode: str
    max_abs_diff: float | None  # None when the parity check was skipped
    input_names: tuple[str, ...]
    output_names: tuple[str, ...]
    file_size: int


# --------------------------------------------------------------------------------------
# 'native': one 4-D Conv node. A custom op carries the convolution through torch.export;
# the translation table below turns it into ONNX Conv.


@torch.library.custom_op("tesserad::conv4d_native", mutates_args=())
def _conv4d_native(
    x: Tensor,
    weight: Tensor,
    bias: Tensor,
    stride: list[int],
    pads: list[int],
    dilation: list[int],
    groups: int,
) -> Tensor:
    """Zero-padded 4-D convolution; ``pads`` in ONNX order (begins of T, D, H, W, then ends)."""
    padded = pad4d(x, tuple(zip(pads[:4], pads[4:], strict=True)), "zeros")
    return conv4d_function(
        padded, weight, bias, tuple(stride), 0, tuple(dilation), groups, algorithm="time_fold"
    )  # type: ignore[arg-type]


@_conv4d_native.register_fake
def _conv4d_native_fake(
    x: Tensor,
    weight: Tensor,
    bias: Tensor,
    stride: list[int],
    pads: list[int],
    dilation: list[int],
    groups: int,
) -> Tensor:
    spatial = [
        conv_output_size(x.shape[2 + i], weight.shape[2 + i], stride[i], dilation[i], pads[i] + pads[4 + i])
        for i in range(4)
    ]
    return x.new_empty((x.shape[0], weight.shape[0], *spatial))


def _conv4d_native_onnx(
    x: object,
    weight: object,
    bias: object,
    stride: list[int],
    pads: list[int],
    dilation: list[int],
    groups: int,
) -> object:
    from onnxscript import opset18 as op

    return op.Conv(x, weight, bias, strides=stride, pads=pads, dilations=dilation, group=groups)


class _NativeConv4d(nn.Module):
    """Stands in for a Conv4d while exporting 'native'."""

    def __init__(self, conv: Conv4d) -> None:
        super().__init__()
        self.weight = conv.weight
        self.bias = (
            conv.bias if conv.bias is not None else nn.Parameter(conv.weight.new_zeros(conv.out_channels))
        )
        self.stride = list(conv.stride)
        self.dilation = list(conv.dilation)
        self.groups = conv.groups
        self.padding_mode = conv.padding_mode
        self.pads = resolve_padding(conv.padding, conv.kernel_size, conv.stride, conv.dilation)  # type: ignore[arg-type]

    def forward(self, x: Tensor) -> Tensor:
        pads = self.pads
        if self.padding_mode != "zeros":
            x = pad4d(x, pads, self.padding_mode)  # Gather with constant indices, then an unpadded Conv
            pads = ((0, 0),) * 4
        onnx_pads = [lo for lo, _ in pads] + [hi for _, hi in pads]
        return _conv4d_native(x, self.weight, self.bias, self.stride, onnx_pads, self.dilation, self.groups)


def _cpu_float32_copy(model: nn.Module) -> nn.Module:
    """An eval-mode copy in the signature's dtype on the CPU; the caller's model is left as it is."""
    return copy.deepcopy(model).to("cpu", torch.float32).eval()


def _lowered(model: nn.Module, mode: str) -> nn.Module:
    """A copy of ``model`` whose Conv4d layers use the requested lowering."""
    clone = _cpu_float32_copy(model)
    for name, module in list(clone.named_modules()):
        if not isinstance(module, Conv4d):
            continue
        if mode == "decomposed":
            module.algorithm = "time_fold"
        else:
            parent_name, _, child = name.rpartition(".")
            parent = clone.get_submodule(parent_name) if parent_name else clone
            setattr(parent, child, _NativeConv4d(module))
    return clone


# --------------------------------------------------------------------------------------


def export_onnx(
    model: nn.Module,
    spec: ArchitectureSpec,
    path: str | os.PathLike[str],
    *,
    conv4d: Conv4dLowering = "auto",
    opset: int | None = None,
    check_parity: bool = True,
) -> OnnxExportReport:
    """Write ``model`` (built from ``spec``) as one self-contained ONNX file with a dynamic batch.

    The file passes ``onnx.checker``; with ``check_parity`` onnxruntime (CPU) runs it on
    random inputs at batch 1 and 7 and FailedPrecondition is raised if any output differs
    from torch by more than 1e-4. ``opset`` is what was asked; the report gives the opset the
    file actually imports (the exporter raises it when the graph needs a newer one).
    """
    import onnx

    if conv4d not in ("auto", "decomposed", "native"):
        raise InvalidArgument(f"conv4d: must be auto, decomposed or native, got {conv4d!r}")
    mode = "decomposed" if conv4d == "auto" else conv4d
    inputs, outputs = model_signature(spec)
    path = Path(path)
    lowered = _lowered(model, mode)
    example = torch.randn(2, *spec.input_shape)
    batch = torch.export.Dim("batch", min=1)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            lowered,
            (example,),
            str(path),
            input_names=[t.name for t in inputs],
            output_names=[t.name for t in outputs],
            opset_version=opset,
            dynamo=True,
            dynamic_shapes=({0: batch},),
            external_data=False,
            custom_translation_table={torch.ops.tesserad.conv4d_native.default: _conv4d_native_onnx},
            verbose=False,
        )
    proto = onnx.load(str(path))
    onnx.checker.check_model(proto, full_check=True)
    actual_opset = next(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx"))
    diff = _parity(model, path, spec) if check_parity else None
    return OnnxExportReport(
        path=path,
        opset=actual_opset,
        conv4d_mode=mode,
        max_abs_diff=diff,
        input_names=tuple(t.name for t in inputs),
        output_names=tuple(t.name for t in outputs),
        file_size=path.stat().st_size,
    )


def _parity(model: nn.Module, path: Path, spec: ArchitectureSpec) -> float:
    """Max |onnxruntime - torch| over random inputs at batch 1 and 7; raises past the tolerance."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    reference = _cpu_float32_copy(model)
    generator = torch.Generator().manual_seed(0)
    worst = 0.0
    for batch in PARITY_BATCHES:
        x = torch.randn(batch, *spec.input_shape, generator=generator)
        with torch.no_grad():
            expected = reference(x).numpy()
        (got,) = session.run(None, {"input": x.numpy()})
        if got.shape != expected.shape:
            raise FailedPrecondition(
                f"onnx export: output shape {got.shape} at batch {batch} does not match torch's {expected.shape}"
            )
        worst = max(worst, float(np.max(np.abs(got - expected))))
    if not worst <= PARITY_TOLERANCE:
        raise FailedPrecondition(
            f"onnx export: onnxruntime differs from torch by {worst:.3g} (> {PARITY_TOLERANCE}); "
            "the exported graph is not faithful"
        )
    return worst
