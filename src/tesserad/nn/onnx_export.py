"""ONNX export of spec-built models with a dynamic batch axis, checked against onnxruntime.

Conv4d has two lowerings:

- ``decomposed``: one 3-D ``Conv`` per layer over every input frame with the time taps
  stacked into its output channels, then one ``Pad`` per tap (shift in time, zero where the
  tap reads padding) and a sum; a following eval-mode BatchNorm4d is folded into the weights.
  Every runtime runs it with its fast 3-D kernels. torch's own fastest formulation
  (``time_fold``, taps stacked into input channels) was 1.4x slower than torch eager in
  onnxruntime at batch 32, because onnxruntime's Conv is im2col + GEMM per image and that
  layout makes the column buffer kt times larger; see ``_TapStackedConv4d``.
- ``native``: one ``Conv`` node with four spatial dims (ONNX allows N-D Conv), emitted
  through a custom op and a translation-table entry. onnxruntime's CPU provider runs it
  correctly but has no fast kernel for it: on the bench's cnn4d classifier
  (bench/results/conv4d_cpu.json, ``onnx_cnn4d``) it was 2-5x slower than ``decomposed``.
  So ``auto`` exports ``decomposed``, and ``native`` stays an option for runtimes with a
  4-D kernel. Lowering Conv4d as the per-tap or per-frame loop was slower in onnxruntime too.

The exporter is torch's dynamo exporter (``torch.onnx.export(dynamo=True)``, needs
onnxscript): it exported every family with a symbolic batch dim, where the legacy
TorchScript exporter rejects the channels-last copies. Unfold/im2col graphs are never
produced (40x slower in onnxruntime).
"""

from __future__ import annotations

import contextlib
import copy
import logging
import math
import os
import threading
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tesserad.errors import FailedPrecondition
from tesserad.nn.conv import Conv4d, Quad, conv_output_size, pad4d, resolve_padding
from tesserad.nn.conv import conv4d as conv4d_function
from tesserad.nn.norm4d import BatchNorm4d
from tesserad.nn.onnx_opsets import check_conv4d, check_opset, opset_refusal
from tesserad.nn.pool4d import MaxPool4d, max_pool4d_with
from tesserad.nn.specs import ArchitectureSpec, model_signature

PARITY_TOLERANCE = 1e-4
# Plus this share of |torch's output|: float32 rounding grows with the value (one ulp at 3000
# is 2.4e-4), so a model with large outputs (a regression on prices) differs by more than an
# absolute bound alone allows; a graph that computes the wrong thing is off by far more.
PARITY_RELATIVE_TOLERANCE = 1e-4
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
        padded, weight, bias, _quad(stride), 0, _quad(dilation), groups, algorithm="time_fold"
    )


def _quad(values: list[int]) -> Quad:
    t, d, h, w = values
    return t, d, h, w


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
    x: Any,  # onnxscript's symbolic values, typed by its opset, not by torch
    weight: Any,
    bias: Any,
    stride: list[int],
    pads: list[int],
    dilation: list[int],
    groups: int,
) -> Any:
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
        out: Tensor = _conv4d_native(
            x, self.weight, self.bias, self.stride, onnx_pads, self.dilation, self.groups
        )
        return out


# --------------------------------------------------------------------------------------
# 'decomposed': the time taps stacked into output channels, one 3-D Conv over every frame.


class _TapStackedConv4d(nn.Module):
    """Stands in for a Conv4d (and a following eval-mode BatchNorm4d, folded in) while exporting 'decomposed'.

    onnxruntime's CPU Conv expands each image into a column buffer (kernel volume x input
    channels) and runs a GEMM with M = output channels. Stacking the time taps into *input*
    channels (``time_fold``, torch's fastest) makes that buffer kt times larger and keeps M
    small; stacking them into *output* channels expands each frame once and gives the GEMM
    kt times more rows. The taps are then summed with one Pad per tap (negative pads crop the
    tap and shift it in time, positive ones are the time padding), so no input frame is padded
    and convolved for nothing. On the bench's cnn4d classifier at batch 32 (one thread,
    CPU time, so other load on the shared machine cannot skew it) this took onnxruntime from
    91 ms (time_fold; torch eager 64 ms) to 46 ms, and at batch 1 from 2.8 to 1.3 ms.
    """

    weight: Tensor  # a buffer: the taps stacked into input channels

    def __init__(self, conv: Conv4d, norm: BatchNorm4d | None) -> None:
        super().__init__()
        weight = conv.weight.detach()
        bias = conv.bias.detach() if conv.bias is not None else None
        if norm is not None:  # eval-mode batch norm is a per-channel affine map: fold it into the conv
            assert norm.running_mean is not None and norm.running_var is not None
            scale = torch.rsqrt(norm.running_var + norm.eps)
            shift = -norm.running_mean * scale
            if norm.affine:
                scale, shift = scale * norm.weight.detach(), shift * norm.weight.detach() + norm.bias.detach()
            weight = weight * scale.reshape(-1, 1, 1, 1, 1, 1)
            bias = shift if bias is None else bias * scale + shift
        c_out, c_per_group, kt = weight.shape[0], weight.shape[1], weight.shape[2]
        groups = conv.groups
        self.kt, self.groups, self.out_per_group = kt, groups, c_out // groups
        self.stride_t, self.dilation_t = conv.stride[0], conv.dilation[0]
        self.stride3, self.dilation3 = conv.stride[1:], conv.dilation[1:]
        self.padding_mode = conv.padding_mode
        pads = resolve_padding(conv.padding, conv.kernel_size, conv.stride, conv.dilation)  # type: ignore[arg-type]
        if conv.padding_mode == "zeros":
            # Conv pads D, H, W itself where symmetric; time is padded on the output side.
            self.pads3 = tuple(min(lo, hi) for lo, hi in pads[1:])
            self.input_pads = (
                (0, 0),
                *((lo - m, hi - m) for (lo, hi), m in zip(pads[1:], self.pads3, strict=True)),
            )
            self.time_pads = pads[0]
        else:
            self.pads3, self.input_pads, self.time_pads = (0, 0, 0), pads, (0, 0)
        # Output channels ordered (group, tap, channel) so the Conv's groups still hold.
        stacked = weight.reshape(groups, self.out_per_group, c_per_group, kt, *weight.shape[3:])
        stacked = stacked.permute(0, 3, 1, 2, 4, 5, 6).reshape(
            groups * kt * self.out_per_group, c_per_group, *weight.shape[3:]
        )
        self.register_buffer("weight", stacked.contiguous())
        # The bias rides on the channels of a tap that reads a real frame for every output
        # frame (the centre tap of a 'same' kernel), so it is added once; else after the sum.
        lo, hi = self.time_pads
        full_tap = next(
            (
                i
                for i in range(kt)
                if self.stride_t == 1 and i * self.dilation_t >= lo and hi <= self.dilation_t * (kt - 1 - i)
            ),
            None,
        )
        self.register_buffer("conv_bias", None)
        self.register_buffer("out_bias", None)
        if bias is not None and full_tap is not None:
            conv_bias = bias.new_zeros(groups, kt, self.out_per_group)
            conv_bias[:, full_tap] = bias.reshape(groups, self.out_per_group)
            self.conv_bias = conv_bias.reshape(-1)
        elif bias is not None:
            self.out_bias = bias.reshape(1, 1, -1, 1, 1, 1)

    def _tap_windows(self, frames: int, time_pads: tuple[int, int]) -> list[tuple[int, int, int]] | None:
        """Per tap (index, crop-or-pad before, crop-or-pad after) along time; None if a tap reads no real frame."""
        lo, hi = time_pads
        st, dt = self.stride_t, self.dilation_t
        t_out = conv_output_size(frames, self.kt, st, dt, lo + hi)
        span = st * (t_out - 1) + 1  # frames from the first output's source to the last's
        windows = []
        for i in range(self.kt):
            first = i * dt - lo  # source frame of output 0 for this tap
            if not any(0 <= first + t * st < frames for t in range(t_out)):
                return None
            windows.append((i, -first, first + span - frames))
        return windows

    def forward(self, x: Tensor) -> Tensor:
        x = pad4d(x, self.input_pads, self.padding_mode)
        windows = self._tap_windows(x.shape[2], self.time_pads)
        if windows is None:  # padding so wide that a tap sees only zeros: pad the input instead
            x = pad4d(x, (self.time_pads, (0, 0), (0, 0), (0, 0)), "zeros")
            windows = self._tap_windows(x.shape[2], (0, 0))
            assert windows is not None
        c, t = x.shape[1], x.shape[2]
        frames = x.transpose(1, 2).reshape(-1, c, *x.shape[3:])  # (N*T, C, D, H, W)
        y = F.conv3d(
            frames, self.weight, self.conv_bias, self.stride3, self.pads3, self.dilation3, self.groups
        )
        spatial = y.shape[2:]
        tap_size = self.out_per_group * math.prod(spatial)
        # Rank 4 keeps onnxruntime's Pad on its fast path (3x faster than rank 8 here): within a
        # group, each tap's channels and voxels are one contiguous run of the last axis.
        y = y.reshape(-1, t, self.groups, self.kt * tap_size)  # (N, T, g, kt * C/g * D'H'W')
        total: Tensor | None = None
        for i, before, after in windows:
            # One Pad: keep tap i, move its frames to their output times, zero where it reads padding.
            part = F.pad(y, (-i * tap_size, (i + 1 - self.kt) * tap_size, 0, 0, before, after))
            if self.stride_t > 1:
                part = part[:, :: self.stride_t]
            total = part if total is None else total + part
        assert total is not None
        out = total.reshape(-1, total.shape[1], self.groups * self.out_per_group, *spatial)
        if self.out_bias is not None:
            out = out + self.out_bias
        return out.transpose(1, 2)  # (N, C_out, T_out, D', H', W')


# onnxruntime's MaxPool skips NaN (a window of zeros and one NaN gives 0, an all-NaN window
# -3.4e38), so a NaN clip came out of the exported cnn4d as plausible finite scores where torch
# gives NaN. Adding the window's average of clamp(x, 0, 0) (0, or NaN where the window holds a
# NaN; Inf clamps to 0) puts torch's NaN back with two cheap nodes (Clip and AveragePool keep NaN
# in onnxruntime, as its Max, Min and Relu do). The pools stood in for are the ones the built-in
# architectures build (no dilation, no ceil mode).


def _nan_keeping_max_pool3d(
    x: Tensor, kernel: tuple[int, ...], stride: tuple[int, ...], padding: tuple[int, ...]
) -> Tensor:
    return F.max_pool3d(x, kernel, stride, padding) + F.avg_pool3d(x.clamp(0, 0), kernel, stride, padding)


class _NanKeepingMaxPool4d(nn.Module):
    """Stands in for a MaxPool4d while exporting."""

    def __init__(self, pool: MaxPool4d) -> None:
        super().__init__()
        self.kernel_size, self.stride, self.padding = pool.kernel_size, pool.stride, pool.padding

    def forward(self, x: Tensor) -> Tensor:
        return max_pool4d_with(_nan_keeping_max_pool3d, x, self.kernel_size, self.stride, self.padding)


class _NanKeepingMaxPool2d(nn.Module):
    """Stands in for an nn.MaxPool2d while exporting."""

    def __init__(self, pool: nn.MaxPool2d) -> None:
        super().__init__()
        self.pool = pool

    def forward(self, x: Tensor) -> Tensor:
        p = self.pool
        out: Tensor = p(x) + F.avg_pool2d(x.clamp(0, 0), p.kernel_size, p.stride, p.padding)
        return out


class _NanKeepingLstm(nn.Module):
    """Stands in for a batch-first nn.LSTM while exporting: onnxruntime's LSTM op gives finite
    states where torch's gates hold a NaN (from a NaN in the input, or +Inf and -Inf, or Inf and
    a zero weight, meeting in the first layer's input projection), where torch's final states
    (which every direction's last step reaches through all of the sequence) are NaN; so NaN is
    added back to them. A NaN in either direction of the first layer reaches every later layer's
    input, so those take both."""

    def __init__(self, lstm: nn.LSTM) -> None:
        super().__init__()
        self.lstm = lstm

    def forward(self, x: Tensor) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        out, (h_n, c_n) = self.lstm(x)
        # Per first-layer direction, the input projection torch's gates add up: 0 per sample, or
        # NaN where it made one: (1, N, 1).
        first = [
            F.linear(x, self.lstm.get_parameter(f"weight_ih_l0{suffix}"))
            .clamp(0, 0)
            .sum(dim=(1, 2))
            .reshape(1, -1, 1)
            for suffix in (("", "_reverse") if self.lstm.bidirectional else ("",))
        ]
        either = first[0] if len(first) == 1 else first[0] + first[1]
        flags = torch.cat(first + [either] * (len(first) * (self.lstm.num_layers - 1)))  # (L x D, N, 1)
        return out, (h_n + flags, c_n + flags)


def _cpu_float32_copy(model: nn.Module) -> nn.Module:
    """An eval-mode copy in the signature's dtype on the CPU; the caller's model is left as it is."""
    return copy.deepcopy(model).to("cpu", torch.float32).eval()


def _following_norm(parent: nn.Module, child: str) -> tuple[str, BatchNorm4d] | None:
    """The BatchNorm4d right after ``child`` in a Sequential ``parent``, when its running statistics let it fold."""
    if not isinstance(parent, nn.Sequential):
        return None
    names = list(parent._modules)
    position = names.index(child)
    if position + 1 == len(names):
        return None
    norm = parent._modules[names[position + 1]]
    if isinstance(norm, BatchNorm4d) and norm.running_mean is not None:
        return names[position + 1], norm
    return None


def _lowered(model: nn.Module, mode: str) -> nn.Module:
    """A copy of ``model`` whose Conv4d layers use the requested lowering and whose max pools and
    LSTMs keep NaN in onnxruntime."""
    clone = _cpu_float32_copy(model)
    for name, module in list(clone.named_modules()):
        if not isinstance(module, Conv4d | MaxPool4d | nn.MaxPool2d | nn.LSTM):
            continue
        parent_name, _, child = name.rpartition(".")
        parent = clone.get_submodule(parent_name) if parent_name else clone
        if isinstance(module, MaxPool4d):
            setattr(parent, child, _NanKeepingMaxPool4d(module))
        elif isinstance(module, nn.MaxPool2d):
            setattr(parent, child, _NanKeepingMaxPool2d(module))
        elif isinstance(module, nn.LSTM):
            setattr(parent, child, _NanKeepingLstm(module))
        elif mode == "decomposed":
            following = _following_norm(parent, child)
            norm = None
            if following is not None:
                norm_name, norm = following
                setattr(parent, norm_name, nn.Identity())  # folded into the conv's weights
            setattr(parent, child, _TapStackedConv4d(module, norm))
        else:
            setattr(parent, child, _NativeConv4d(module))
    return clone


# --------------------------------------------------------------------------------------


# torch's exporter keeps process-wide state (its dispatch-mode stack, the logger level below):
# two conversions at once in one process both failed ("Trying to pop empty mode stack"), so
# one converts at a time; the checker and the parity run after it may overlap.
_CONVERTING = threading.Lock()


# torchlib's translation tables (torch's private ONNXRegistry) by opset, each built once per
# process by the first export at that opset; written under _CONVERTING. Keyed by opset alone: ops
# registered with torch later in the process (custom ops, torchvision imported later) are missing
# from a table built before them, which is fine here since export_onnx exports only the built-in
# architectures, whose ops torch has from the start; torch offers no public, cheap way to tell that
# its op registry grew.
_TORCHLIB_REGISTRIES: dict[int, Any] = {}


@contextlib.contextmanager
def _torchlib_registry_built_once() -> Iterator[None]:
    """While one export converts, torch.onnx.export gets torchlib's translation table from
    ``_TORCHLIB_REGISTRIES``.

    torch.onnx.export builds that table on every call by re-parsing the source of each of
    torchlib's ~500 functions: 0.4-0.5 s of CPU, about a quarter of a warm export of a small
    model (bench/results/export_bench.json). An export only reads the table, once the caller's
    custom translations are added; each export gets its own copy of the cached one to add them
    to, so what it converts with is what a fresh build would give for the ops torch had when the
    table was built (see ``_TORCHLIB_REGISTRIES``; torch's own factory is back in place when the
    conversion ends).
    """
    try:
        from torch.onnx._internal.exporter import _constants, _registration

        registry_class = _registration.ONNXRegistry
        build = registry_class.__dict__["from_torchlib"]
    except (ImportError, AttributeError, KeyError):
        # A torch other than the pinned one, laid out otherwise: it builds its own table, as
        # every export did before (the unit test of this cache fails there, to say so).
        yield
        return

    def cached_copy(cls: type, opset_version: int = _constants.TORCHLIB_OPSET) -> Any:
        cached = _TORCHLIB_REGISTRIES.get(opset_version)
        if cached is None:
            cached = _TORCHLIB_REGISTRIES[opset_version] = build.__func__(cls, opset_version)
        registry = cls()
        registry._opset_version = cached.opset_version
        registry.functions = {target: list(metas) for target, metas in cached.functions.items()}
        return registry

    registry_class.from_torchlib = classmethod(cached_copy)  # type: ignore[method-assign,assignment]
    try:
        yield
    finally:
        registry_class.from_torchlib = build  # type: ignore[method-assign]


@contextlib.contextmanager
def _quiet_exporter_registry() -> Iterator[None]:
    """The exporter logs a warning per torchvision op it cannot register when torchvision is
    absent (it always is here); in a daemon's log that is noise about ops no model uses."""
    registry_log = logging.getLogger("torch.onnx._internal.exporter._registration")
    level = registry_log.level
    registry_log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        registry_log.setLevel(level)


def export_onnx(
    model: nn.Module,
    spec: ArchitectureSpec,
    path: str | os.PathLike[str],
    *,
    conv4d: str = "auto",
    opset: int | None = None,
    check_parity: bool = True,
) -> OnnxExportReport:
    """Write ``model`` (built from ``spec``) as one self-contained ONNX file with a dynamic batch.

    The file passes ``onnx.checker`` (FailedPrecondition where it does not); with
    ``check_parity`` onnxruntime (CPU) runs it on random inputs at batch 1 and 7 and
    FailedPrecondition is raised if any output differs from torch by more than 1e-4 plus 1e-4
    of the output's magnitude (NaN counting as a difference), or torch's outputs are not
    finite; then a batch holding a NaN, a +Inf and a -Inf input value must give NaN and Inf
    exactly where torch does. ``opset`` is what was asked (InvalidArgument outside what ``check_opset`` allows;
    FailedPrecondition where the exporter cannot write this model at it, as it then writes
    another); the report gives the opset the file imports.
    ``conv4d`` comes from the caller's request: auto, decomposed or native, else InvalidArgument.
    """
    import onnx

    check_conv4d(conv4d)
    check_opset(opset or 0)
    mode = "decomposed" if conv4d == "auto" else conv4d
    inputs, outputs = model_signature(spec)
    path = Path(path)
    lowered = _lowered(model, mode)
    example = torch.randn(2, *spec.input_shape)
    batch = torch.export.Dim("batch", min=1)
    with (
        _CONVERTING,
        warnings.catch_warnings(),
        torch.no_grad(),
        _quiet_exporter_registry(),
        _torchlib_registry_built_once(),
    ):
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
    try:
        onnx.checker.check_model(proto, full_check=True)
    except onnx.checker.ValidationError as exc:
        # The exporter's version conversion can write ops the target opset lacks (attention at 26).
        raise FailedPrecondition(
            f"onnx export: the graph written at opset {opset or 'default'} fails onnx's checker "
            f"({str(exc).strip().splitlines()[0][:200]}); ask for another opset, or opset 0 for the "
            "exporter's default"
        ) from None
    actual_opset = next(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx"))
    if opset and actual_opset != opset:
        # The exporter logs its failed conversion and keeps the graph at the opset it built.
        raise FailedPrecondition(opset_refusal(opset, actual_opset))
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
    faithful = True
    for batch in PARITY_BATCHES:
        x = torch.randn(batch, *spec.input_shape, generator=generator)
        with torch.no_grad():
            expected = reference(x).numpy()
        if not np.isfinite(expected).all():
            raise FailedPrecondition(
                f"onnx export: the model's own outputs hold NaN or Inf (random inputs, batch {batch}), so "
                "no export can be checked against them; export a version whose weights give finite outputs"
            )
        (got,) = session.run(None, {"input": x.numpy()})
        if got.shape != expected.shape:
            raise FailedPrecondition(
                f"onnx export: output shape {got.shape} at batch {batch} does not match torch's {expected.shape}"
            )
        worst = max(worst, max_abs_diff(got, expected))
        faithful = faithful and within_tolerance(got, expected)
    if not faithful:
        raise FailedPrecondition(
            f"onnx export: onnxruntime differs from torch by {worst:.3g} (more than {PARITY_TOLERANCE} + "
            f"{PARITY_RELATIVE_TOLERANCE} x |torch's output|); the exported graph is not faithful"
        )
    # Samples 0-2 hold one NaN, +Inf and -Inf, sample 3 +Inf and -Inf side by side (NaN in torch's
    # LSTM gates): a served model gets such inputs, and an op that treats them otherwise than
    # torch (onnxruntime's MaxPool skipped NaN) turns them into plausible scores. The rest stay
    # finite, so a special value leaking across samples shows too.
    x = torch.randn(PARITY_BATCHES[-1], *spec.input_shape, generator=generator)
    middle = x[0].numel() // 2
    for sample, value in enumerate((math.nan, math.inf, -math.inf)):
        x[sample].view(-1)[middle] = value
    side_by_side = x[3].view(-1)[middle : middle + 2]  # one value where a sample holds one
    side_by_side[0], side_by_side[-1] = math.inf, -math.inf
    with torch.no_grad():
        expected = reference(x).numpy()
    (got,) = session.run(None, {"input": x.numpy()})
    if not special_values_agree(got, expected):
        raise FailedPrecondition(
            "onnx export: with a NaN or an Inf in its input, onnxruntime's outputs are NaN, Inf or "
            "finite where torch's are not (or differ past the tolerance); the exported graph is not faithful"
        )
    return worst


def special_values_agree(got: np.ndarray, expected: np.ndarray) -> bool:
    """Whether ``got`` is NaN exactly where ``expected`` is, the same infinity where it is one,
    and within tolerance elsewhere."""
    if got.shape != expected.shape or not np.array_equal(np.isnan(got), np.isnan(expected)):
        return False
    infinite = np.isinf(expected)
    if not np.array_equal(got[infinite], expected[infinite]):
        return False
    finite = np.isfinite(expected)
    return within_tolerance(got[finite], expected[finite])


def within_tolerance(got: np.ndarray, expected: np.ndarray) -> bool:
    """Whether every output is within PARITY_TOLERANCE + PARITY_RELATIVE_TOLERANCE x |torch's
    output| of torch's (a NaN never is)."""
    diff = np.abs(got.astype(np.float64) - expected)
    return bool((diff <= PARITY_TOLERANCE + PARITY_RELATIVE_TOLERANCE * np.abs(expected)).all())


def max_abs_diff(got: np.ndarray, expected: np.ndarray) -> float:
    """Largest |got - expected|; inf where ``got`` is NaN (a NaN difference would otherwise
    compare as no difference at all)."""
    diff = np.abs(got.astype(np.float64) - expected)
    return float(np.nan_to_num(diff, nan=np.inf).max(initial=0.0))
