"""4-D convolution on (N, C, T, D, H, W) tensors, built from torch's 3-D convolution.

PyTorch has no 4-D convolution, so each formulation here reduces the time axis to
conv3d calls and differs only in how it batches them:

- ``loop``: one conv3d per output frame and time tap (the usual public Conv4d).
- ``tap_loop``: one conv3d per time tap, output frames folded into the batch.
- ``time_fold``: the time taps stacked into input channels (channels-last-3d), one
  conv3d over batch ``T_out * N``.
- ``out_stack``: the time taps stacked into output channels, one conv3d over every
  input frame, then a shifted sum over taps.

All of them are plain differentiable torch ops (no ``as_strided``), so autograd gives the
gradients and the ONNX exporter sees slices, concats and reshapes with a dynamic batch.
Outside export, torch.compile and torch.jit.trace, ``time_fold`` runs as an autograd Function
instead: the same conv3d, with the taps folded in one copy and a hand-written backward (see
_TimeFoldFunction) that differentiates once (double backward needs another formulation).
``algorithm='auto'`` picks one per call with a heuristic measured on 2 CPU
cores (bench/conv4d_bench.py, bench/results/conv4d_cpu.json); ``set_benchmark(True)`` instead
times every formulation once per shape and caches the winner, like cudnn.benchmark. Either
way ``set_max_workspace`` bounds the scratch memory auto may choose (``workspace_bytes``),
and what the pool of large CPU scratch buffers keeps between calls (_BufferPool).
Every formulation runs under autocast (bfloat16 on CPU, float16 or bfloat16 on CUDA).
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Literal, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

Quad = tuple[int, int, int, int]
IntOrQuad = int | tuple[int, int, int, int]
PaddingArg = IntOrQuad | Literal["same", "valid"]
PaddingMode = Literal["zeros", "reflect", "replicate", "circular"]
Algorithm = Literal["auto", "loop", "tap_loop", "time_fold", "out_stack"]

log = logging.getLogger(__name__)

ALGORITHMS: tuple[Algorithm, ...] = ("loop", "tap_loop", "time_fold", "out_stack")
PADDING_MODES: tuple[str, ...] = ("zeros", "reflect", "replicate", "circular")


def quad(value: IntOrQuad, name: str) -> Quad:
    """An int or a 4-tuple as a 4-tuple of ints (T, D, H, W)."""
    if isinstance(value, int) and not isinstance(value, bool):
        return (value, value, value, value)
    if isinstance(value, tuple | list) and len(value) == 4 and all(isinstance(v, int) for v in value):
        return (int(value[0]), int(value[1]), int(value[2]), int(value[3]))
    raise ValueError(f"{name} must be an int or a 4-tuple of ints, got {value!r}")


def conv_output_size(size: int, kernel: int, stride: int, dilation: int, pad_total: int) -> int:
    """Output length of one convolved dimension."""
    return (size + pad_total - dilation * (kernel - 1) - 1) // stride + 1


# --------------------------------------------------------------------------------------
# Padding


def _edge_index(size: int, lo: int, hi: int, mode: str) -> list[int]:
    """Source index of every padded position along one dim for a non-zero padding mode."""
    index = []
    for i in range(-lo, size + hi):
        if mode == "circular":
            index.append(i % size)
        elif mode == "replicate":
            index.append(min(max(i, 0), size - 1))
        else:  # reflect, without repeating the edge (numpy's "reflect")
            period = 2 * (size - 1)
            j = i % period if period else 0
            index.append(j if j < size else period - j)
    return index


def pad4d(x: Tensor, pads: tuple[tuple[int, int], ...], mode: str) -> Tensor:
    """Pad the last four dims of ``x`` by ``(lo, hi)`` each with one of PADDING_MODES."""
    if mode == "zeros":
        flat = [p for lo_hi in reversed(pads) for p in lo_hi]
        return F.pad(x, flat) if any(flat) else x
    # Gather with constant indices: exact for every mode, any dim count, and it exports as
    # ONNX Gather (F.pad's reflect/replicate stop at three spatial dims).
    for axis, (lo, hi) in enumerate(pads):
        if lo == 0 and hi == 0:
            continue
        dim = x.dim() - 4 + axis
        size = x.shape[dim]
        limit = size - 1 if mode == "reflect" else size
        if lo > limit or hi > limit:
            raise ValueError(f"{mode} padding of {max(lo, hi)} is too large for a dimension of size {size}")
        index = torch.tensor(_edge_index(size, lo, hi, mode), device=x.device)
        x = x.index_select(dim, index)
    return x


def resolve_padding(
    padding: PaddingArg, kernel: Quad, stride: Quad, dilation: Quad
) -> tuple[tuple[int, int], ...]:
    """``(lo, hi)`` per dim; 'same' pads like torch (the odd extra element on the high side)."""
    if padding == "valid":
        return ((0, 0),) * 4
    if padding == "same":
        if any(s != 1 for s in stride):
            raise ValueError("padding='same' needs stride 1 in every dimension")
        pads = []
        for k, d in zip(kernel, dilation, strict=True):
            total = d * (k - 1)
            pads.append((total // 2, total - total // 2))
        return tuple(pads)
    if isinstance(padding, str):
        raise ValueError(f"padding must be 'same', 'valid', an int or a 4-tuple, got {padding!r}")
    p = quad(padding, "padding")
    if any(v < 0 for v in p):
        raise ValueError(f"padding must be >= 0, got {padding!r}")
    return tuple((v, v) for v in p)


# --------------------------------------------------------------------------------------
# Formulations. Each takes ``x`` padded wherever DHW padding is asymmetric (and in time for
# the non-zero padding modes), the zero time padding ``tp`` still to apply, the symmetric DHW
# padding for conv3d, and the bias, added exactly once (in a conv3d call where it can be: no
# extra pass over the output); returns (N, C_out, T_out, ...).


class _Geometry(NamedTuple):
    """How the time axis and conv3d's three axes are convolved, for a formulation."""

    tp: tuple[int, int]  # zero frames to add before and after in time
    st: int  # time stride
    dt: int  # time dilation
    t_out: int
    s3: tuple[int, int, int]  # conv3d stride, padding, dilation, groups
    p3: tuple[int, int, int]
    d3: tuple[int, int, int]
    g: int


def _pad_time(x: Tensor, tp: tuple[int, int]) -> Tensor:
    """``x`` with ``tp`` = (before, after) zero frames in time."""
    return F.pad(x, (0, 0, 0, 0, 0, 0, *tp)) if any(tp) else x


def _time_taps(x: Tensor, kt: int, st: int, dt: int, t_out: int, dim: int) -> list[Tensor]:
    """The input frames each time tap reads, for all output frames: kt strided slices."""
    span = st * (t_out - 1) + 1
    return [x.narrow(dim, i * dt, span)[(slice(None),) * dim + (slice(None, None, st),)] for i in range(kt)]


def _loop(x: Tensor, w: Tensor, b: Tensor | None, geo: _Geometry) -> Tensor:
    """One conv3d per (output frame, time tap): the public Conv4d's formulation, kept as the baseline.

    Time zero-padding is never materialised: a tap that reads a padding frame adds nothing,
    so it is skipped (a frame that only reads padding is the bias alone).
    """
    tp, st, dt, t_out, s3, p3, d3, g = geo
    frames: list[Tensor | None] = []
    t_in = x.shape[2]
    for t in range(t_out):
        acc: Tensor | None = None
        for i in range(w.shape[2]):
            j = t * st + i * dt - tp[0]
            if not 0 <= j < t_in:
                continue
            # The bias rides on each frame's first conv3d: added once, with no extra pass.
            y = F.conv3d(x[:, :, j], w[:, :, i], b if acc is None else None, s3, p3, d3, g)
            acc = y if acc is None else acc + y
        frames.append(acc)
    if any(f is None for f in frames):
        padding_only = F.conv3d(torch.zeros_like(x[:, :, 0]), w[:, :, 0], b, s3, p3, d3, g)
        frames = [padding_only if f is None else f for f in frames]
    return torch.stack(frames, dim=2)  # type: ignore[arg-type]


def _tap_loop(x: Tensor, w: Tensor, b: Tensor | None, geo: _Geometry) -> Tensor:
    """One conv3d per time tap over batch N*T_out, summed."""
    tp, st, dt, t_out, s3, p3, d3, g = geo
    x = _pad_time(x, tp)
    c, d, h, wd = x.shape[1], x.shape[3], x.shape[4], x.shape[5]
    xl = x.permute(0, 2, 1, 3, 4, 5)  # (N, T, C, D, H, W)
    acc: Tensor | None = None
    for i, xi in enumerate(_time_taps(xl, w.shape[2], st, dt, t_out, 1)):
        y = F.conv3d(xi.reshape(-1, c, d, h, wd), w[:, :, i], b if i == 0 else None, s3, p3, d3, g)
        acc = y if acc is None else acc + y
    assert acc is not None
    y = acc.reshape(-1, t_out, *acc.shape[1:])  # (N, T_out, C_out, D', H', W')
    return y.permute(0, 2, 1, 3, 4, 5)


def _tap_frames(geo: _Geometry, kt: int, t_in: int) -> list[tuple[int, int, int]]:
    """Per time tap, ``(first output frame, first input frame, frame count)`` that reads real
    input; the output frames outside that range read time padding (zeros)."""
    ranges = []
    for i in range(kt):
        # output frame t reads input frame t*st + i*dt - tp[0]; keep 0 <= that < t_in
        offset = i * geo.dt - geo.tp[0]
        first = max(0, -(offset // geo.st))  # ceil(-offset / st), at least 0
        last = min(geo.t_out - 1, (t_in - 1 - offset) // geo.st)
        ranges.append((first, first * geo.st + offset, max(0, last - first + 1)))
    return ranges


def _fold_taps(x: Tensor, kt: int, geo: _Geometry) -> Tensor:
    """The time taps of ``x`` (N, C, T, D, H, W) stacked into channels in one copy, padding
    frames written as zeros (no padded copy of ``x``): (N*T_out, g*kt*C/g, D, H, W) with
    channels last, input channels ordered (group, tap, channel) so conv3d's groups hold."""
    n, c, t_in, d, h, wd = x.shape
    g, cg = geo.g, c // geo.g
    xs = _POOL.empty((n, geo.t_out, d, h, wd, g, kt, cg), x.dtype, x.device)
    src = x.reshape(n, g, cg, t_in, d, h, wd).permute(0, 3, 4, 5, 6, 1, 2)  # (N, T, D, H, W, g, C/g)
    for i, (first, start, count) in enumerate(_tap_frames(geo, kt, t_in)):
        dst = xs[:, :, :, :, :, :, i]
        if count:
            dst[:, first : first + count].copy_(src[:, start : start + geo.st * (count - 1) + 1 : geo.st])
        dst[:, :first].zero_()
        dst[:, first + count :].zero_()
    return xs.reshape(n * geo.t_out, d, h, wd, g * kt * cg).permute(0, 4, 1, 2, 3)


# The input's gradient is computed in blocks of output frames of about this many bytes of
# folded gradient, each block's taps added onto the input before the next: on 1 thread, in
# process CPU time, conv3d's input gradient took 73 ms instead of 97 on shape A of
# bench/conv4d_bench.py, 180 instead of 238 on B and 24 instead of 44 on E against one call
# over every frame (C and D, under 16 MiB, are one block), and the block, not kT input-sized
# frames, is what it adds to backward's peak memory.
GRAD_BLOCK_BYTES = 16 << 20
# Fewer frames than this per conv3d call leave oneDNN's fast path (shape D in blocks of one
# frame ran 7x slower).
GRAD_BLOCK_MIN_FRAMES = 8


# Frames of the input's gradient transposed to a contiguous layout per copy: well inside a
# core's L2 cache.
TRANSPOSE_BYTES = 256 << 10


def _grad_blocks(n: int, t_out: int, frame_bytes: int) -> list[tuple[int, int, int, int]]:
    """``(n0, n1, t0, t1)`` blocks of the (N, T_out) output frames, about GRAD_BLOCK_BYTES each:
    whole samples when a sample fits, else runs of frames within one sample, so each block is a
    contiguous run of conv3d's batch (row ``n * T_out + t``)."""
    frames = max(GRAD_BLOCK_MIN_FRAMES, GRAD_BLOCK_BYTES // max(frame_bytes, 1))
    if frames >= t_out:
        per = frames // t_out
        return [(n0, min(n0 + per, n), 0, t_out) for n0 in range(0, n, per)]
    return [(i, i + 1, t0, min(t0 + frames, t_out)) for i in range(n) for t0 in range(0, t_out, frames)]


def _add_taps_grad(
    gx: Tensor,
    gxs: Tensor,
    block: tuple[int, int, int, int],
    kt: int,
    t_in: int,
    geo: _Geometry,
    written: list[bool],
) -> None:
    """The adjoint of _fold_taps for one block of output frames: each tap's channel block of
    ``gxs`` (frames of the block, kt*C, D, H, W) added onto the input frames it read in ``gx``
    (N, T_in, D, H, W, g, C/g).

    ``gx`` starts uninitialised: ``written`` says, per input frame, whether the block's samples
    already hold a value there; the first tap to reach a frame copies onto it, later ones add
    (an input-sized zero fill and one tap's read of ``gx`` saved). Every sample of a block has
    the same history (_grad_blocks: whole samples once, or runs within one sample)."""
    n0, n1, t0, t1 = block
    d, h, wd, g, cg = gx.shape[2:]
    gxs = gxs.permute(0, 2, 3, 4, 1).reshape(n1 - n0, t1 - t0, d, h, wd, g, kt, cg)
    for i, (first, start, count) in enumerate(_tap_frames(geo, kt, t_in)):
        lo, hi = max(first, t0), min(first + count, t1)
        run = lo
        while run < hi:
            # the longest run of output frames whose input frames share one state
            state = written[start + (run - first) * geo.st]
            end = run + 1
            while end < hi and written[start + (end - first) * geo.st] == state:
                end += 1
            src = start + (run - first) * geo.st
            dst = gx[n0:n1, src : src + geo.st * (end - run - 1) + 1 : geo.st]
            part = gxs[:, run - t0 : end - t0, ..., i, :]
            if state:
                dst += part
            else:
                dst.copy_(part)
                for j in range(src, src + geo.st * (end - run - 1) + 1, geo.st):
                    written[j] = True
            run = end


def _unfold_taps_grad(
    gx: Tensor, grads: Iterable[tuple[tuple[int, int, int, int], Tensor]], kt: int, t_in: int, geo: _Geometry
) -> None:
    """Fill the uninitialised ``gx`` (N, T_in, D, H, W, g, C/g) with the adjoint of _fold_taps:
    ``grads`` yields each _grad_blocks block with its folded gradient, in order (from a generator,
    each block's gradient is computed only when it is needed); input frames that no tap read
    are zeroed."""
    written: list[bool] = []
    for block, gxs in grads:
        n0, n1, t0, t1 = block
        if t0 == 0:  # the block starts new samples
            written = [False] * t_in
        _add_taps_grad(gx, gxs, block, kt, t_in, geo, written)
        if t1 == geo.t_out:  # the block ends its samples: zero what no tap read
            t = 0
            while t < t_in:
                end = t + 1
                while end < t_in and written[end] == written[t]:
                    end += 1
                if not written[t]:
                    gx[n0:n1, t:end].zero_()
                t = end


def _folded_weight(w: Tensor) -> Tensor:
    """(C_out, C/g, kT, kD, kH, kW) as conv3d weights over the folded channels (tap, C/g)."""
    wf = w.transpose(1, 2).reshape(w.shape[0], w.shape[2] * w.shape[1], *w.shape[3:])
    return wf.contiguous(memory_format=torch.channels_last_3d)


def _compute_dtype(x: Tensor) -> torch.dtype:
    """The dtype conv3d would run in here: autocast's where it is on for this device."""
    if torch.is_autocast_enabled(x.device.type):
        return torch.get_autocast_dtype(x.device.type)
    return x.dtype


class _TimeFoldFunction(torch.autograd.Function):
    """time_fold with a hand-written backward over the one folded input it saves.

    Autograd through the plain-op version pays, per tap, a zero-filled input-sized buffer and
    a copy for each slice's backward, another for the time padding's, and the stack's copy
    (bench/results/conv4d_cpu.json, "bounds": about 40% of shape A's forward+backward went to
    those copies). Here the taps are folded in one copy with the padding written as zeros,
    conv3d's own backward gives the weight's gradient in one call over every frame and the
    folded input's in blocks of output frames (GRAD_BLOCK_BYTES), each block's taps added back
    onto the frames they read before the next is computed.
    Autocast is applied by hand (both passes run in the autocast dtype, gradients return in
    the parameters' dtypes), so backward sees the dtype forward used.
    """

    @staticmethod
    def forward(
        ctx: torch.autograd.function.FunctionCtx, x: Tensor, w: Tensor, b: Tensor | None, geo: _Geometry
    ) -> Tensor:
        dtype = _compute_dtype(x)
        with torch.autocast(x.device.type, enabled=False):
            xs = _fold_taps(x.to(dtype), w.shape[2], geo)
            wf = _folded_weight(w.to(dtype))
            y = F.conv3d(xs, wf, None if b is None else b.to(dtype), geo.s3, geo.p3, geo.d3, geo.g)
        ctx.save_for_backward(xs, wf)
        ctx.geo = geo  # type: ignore[attr-defined]
        # A contiguous input gets a contiguous gradient, as from conv3d; any other layout the
        # channels-last one the taps are added in.
        x_contiguous = x.is_contiguous()
        ctx.meta = (x.shape, x.dtype, x_contiguous, w.shape, w.dtype, None if b is None else b.dtype)  # type: ignore[attr-defined]
        y = y.reshape(-1, geo.t_out, *y.shape[1:])  # (N, T_out, C_out, D', H', W')
        return y.permute(0, 2, 1, 3, 4, 5)

    @staticmethod
    def backward(
        ctx: torch.autograd.function.FunctionCtx, grad: Tensor
    ) -> tuple[Tensor | None, Tensor | None, Tensor | None, None]:
        if torch.is_grad_enabled():
            # backward(create_graph=True): this backward's steps are not differentiable (pooled
            # buffers, in-place adds) and the folded input it saved has no path back to the input,
            # so a second derivative would silently miss terms.
            raise RuntimeError(
                "conv4d's time_fold formulation cannot be differentiated twice (create_graph=True); "
                "for double backward pass algorithm='tap_loop' (or 'loop', 'out_stack') to Conv4d or conv4d"
            )
        xs, wf = ctx.saved_tensors  # type: ignore[attr-defined]
        geo: _Geometry = ctx.geo  # type: ignore[attr-defined]
        x_shape, x_dtype, x_contiguous, w_shape, w_dtype, b_dtype = ctx.meta  # type: ignore[attr-defined]
        need_x, need_w, need_b, _ = ctx.needs_input_grad  # type: ignore[attr-defined]
        # conv3d's output gradient in channels-last order (N, T_out, D', H', W', C_out): one copy,
        # with the cast, or none when it arrives so (an elementwise op after this layer keeps
        # the output's layout).
        g6 = grad.permute(0, 2, 3, 4, 5, 1)
        if g6.dtype != xs.dtype or not g6.is_contiguous():
            g6 = _POOL.empty(tuple(g6.shape), xs.dtype, g6.device).copy_(g6)
        go = g6.reshape(-1, *g6.shape[2:]).permute(0, 4, 1, 2, 3)
        kt = w_shape[2]
        gw = gb = None
        if need_w or (need_b and b_dtype is not None):
            mask = (False, need_w, need_b and b_dtype is not None)
            if xs.dtype == torch.bfloat16 and xs.device.type == "cpu":
                # torch 2.13's bf16 weight gradient on some CPUs (oneDNN) returns NaN from finite
                # input (cnn4d training under bf16 autocast went NaN at its second step).
                _, gwf, gb = _conv3d_backward(go.float(), xs.float(), wf.float(), geo, mask)
            else:
                _, gwf, gb = _conv3d_backward(go, xs, wf, geo, mask)
            if need_w:
                gw = gwf.reshape(w_shape[0], kt, w_shape[1], *w_shape[3:]).transpose(1, 2).to(w_dtype)
        gx = _time_fold_grad_input(go, xs, wf, x_shape, x_dtype, x_contiguous, kt, geo) if need_x else None
        return gx, gw, gb.to(b_dtype) if gb is not None else None, None


def _conv3d_backward(
    go: Tensor, xs: Tensor, wf: Tensor, geo: _Geometry, mask: tuple[bool, bool, bool]
) -> tuple[Tensor, Tensor, Tensor]:
    """conv3d's gradients (input, weight, bias; those ``mask`` asks for) for the folded input."""
    grads: tuple[Tensor, Tensor, Tensor] = torch.ops.aten.convolution_backward(
        go,
        xs,
        wf,
        [wf.shape[0]] if mask[2] else None,
        list(geo.s3),
        list(geo.p3),
        list(geo.d3),
        False,
        [0, 0, 0],
        geo.g,
        list(mask),
    )
    return grads


# At most this many folded channels (g * kT * C/g, the channels conv3d's input gradient writes)
# and the input's gradient is computed as planes (_grad_input_planes): oneDNN vectorises that
# gradient over the channels it writes, so shape C of bench/conv4d_bench.py (3 channels) used
# 19% of its vector lanes.
PLANES_MAX_CHANNELS = 8
# Rows of planes per transposed conv2d: planes of about this many bytes are summed while they
# are still in cache (on shape C, 10.2 ms for the conv and its sums against 13.0 in chunks of
# a third of the rows).
PLANES_CHUNK_BYTES = 1 << 20


def _grad_input_rewrite(device_type: str, dtype: torch.dtype, channels: int, geo: _Geometry) -> str | None:
    """How _folded_grad_input computes the input gradient of ``channels`` folded channels:
    "planes", "phases", or None for conv3d's own backward. The rewrites are taken on the CPU
    only, where they were measured: planes for few channels, phases for a stride. oneDNN's
    bf16 input gradient beat planes (12.6 ms against 17.5 on shape C), not phases (19.1
    against 15.7 on E)."""
    if device_type != "cpu":
        return None
    if channels <= PLANES_MAX_CHANNELS and dtype != torch.bfloat16:
        return "planes"
    if any(s > 1 for s in geo.s3):
        return "phases"
    return None


def _folded_grad_input(go: Tensor, xs: Tensor, wf: Tensor, geo: _Geometry) -> Tensor:
    """conv3d's input gradient (rows, g*kT*C/g, D, H, W), channels last, for the folded input
    ``xs`` from the output's ``go`` (by _grad_input_rewrite's choice)."""
    rewrite = _grad_input_rewrite(go.device.type, go.dtype, xs.shape[1], geo)
    if rewrite == "planes":
        return _grad_input_planes(go, tuple(xs.shape), wf, geo)
    if rewrite == "phases":
        return _grad_input_phases(go, tuple(xs.shape), wf, geo)
    return _conv3d_backward(go, xs, wf, geo, (True, False, False))[0]


def _planes_chunk_rows(row_elements: int, element_size: int) -> int:
    """Rows of planes per transposed conv2d: about PLANES_CHUNK_BYTES of them, at least one."""
    return max(1, PLANES_CHUNK_BYTES // (row_elements * element_size))


def _grad_input_planes(go: Tensor, xs_shape: tuple[int, ...], wf: Tensor, geo: _Geometry) -> Tensor:
    """The folded input's gradient with the D taps stacked into output channels: one transposed
    conv2d over (H, W) per block of rows writes kD planes per folded channel (kD times as many
    channels, so more of the vector lanes), then each D tap's plane is added at its shift.
    Rows go in chunks of about PLANES_CHUNK_BYTES of planes."""
    rows, cf, d, h, wd = xs_shape
    c_out, m, kd, kh, kw = wf.shape
    do, ho, wo = go.shape[2:]
    (sd, sh, sw), (pd, ph, pw), (dd, dh, dw) = geo.s3, geo.p3, geo.d3
    # the output padding that makes the transposed conv return exactly H, W
    oph = h - ((ho - 1) * sh - 2 * ph + dh * (kh - 1) + 1)
    opw = wd - ((wo - 1) * sw - 2 * pw + dw * (kw - 1) + 1)
    w2 = wf.reshape(c_out, m * kd, kh, kw)  # output channels (group, tap, channel, D tap)
    gxs = _POOL.empty((rows, d, h, wd, cf), go.dtype, go.device).zero_()
    chunk = _planes_chunk_rows(do * h * wd * cf * kd, go.element_size())
    for r0 in range(0, rows, chunk):
        r1 = min(r0 + chunk, rows)
        g2 = go[r0:r1].permute(0, 2, 1, 3, 4).reshape(-1, c_out, ho, wo)
        planes = F.conv_transpose2d(g2, w2, None, (sh, sw), (ph, pw), (oph, opw), geo.g, (dh, dw))
        planes = planes.permute(0, 2, 3, 1).reshape(r1 - r0, do, h, wd, cf, kd)
        for j in range(kd):
            # output row o reads input row o*sd + j*dd - pd
            first = max(0, -((j * dd - pd) // sd))
            last = min(do - 1, (d - 1 + pd - j * dd) // sd)
            if last < first:
                continue
            q = first * sd + j * dd - pd
            gxs[r0:r1, q : q + sd * (last - first) + 1 : sd] += planes[:, first : last + 1, ..., j]
    return gxs.permute(0, 4, 1, 2, 3)


class _Phase(NamedTuple):
    """One residue class of a strided dim's input positions in a transposed convolution."""

    first: int  # first input position of the class
    positions: int  # how many
    taps: list[int]  # kernel taps that reach it, last tap first (a correlation's order)
    start: int  # first output position the correlation reads (may be negative: zero padding)
    dilation: int


def _phases(size: int, kernel: int, stride: int, padding: int, dilation: int) -> list[_Phase]:
    """The phases of one dim: input position ``q = o*stride + j*dilation - padding`` for output
    ``o`` and tap ``j``; the positions ``q = a + stride*m`` of phase ``a`` get
    ``sum_j go[m - e_j] * w[j]`` over the taps with ``e_j = (j*dilation - padding - a) / stride``
    whole: a stride-1 correlation, with no zero inserted between the outputs."""
    phases = []
    for a in range(min(stride, size)):
        taps = [j for j in range(kernel) if (j * dilation - padding - a) % stride == 0]
        count = (size - a + stride - 1) // stride
        e_max = (taps[-1] * dilation - padding - a) // stride if taps else 0
        step = (taps[1] - taps[0]) * dilation // stride if len(taps) > 1 else 1
        phases.append(_Phase(a, count, taps[::-1], -e_max, step))
    return phases


def _grad_input_phases(go: Tensor, xs_shape: tuple[int, ...], wf: Tensor, geo: _Geometry) -> Tensor:
    """The folded input's gradient for a strided conv3d as stride_D * stride_H * stride_W dense
    stride-1 convolutions, one per phase of the input positions, each written to its positions:
    conv3d's own strided input gradient ran at 43% of the GEMM rate on shape E of
    bench/conv4d_bench.py."""
    rows, cf, *size = xs_shape
    c_out, m = wf.shape[:2]
    g = geo.g
    # conv3d weights from the output's channels (per group) to the folded ones
    wt = wf.reshape(g, c_out // g, m, *wf.shape[2:]).transpose(1, 2).reshape(g * m, c_out // g, *wf.shape[2:])
    dims = [_phases(size[i], wf.shape[2 + i], geo.s3[i], geo.p3[i], geo.d3[i]) for i in range(3)]
    # go padded once to cover every phase's window
    lo = [max(0, *(-p.start for p in ph)) for ph in dims]
    hi = [
        max(0, *(p.start + p.positions + (len(p.taps) - 1) * p.dilation - o for p in ph))
        for ph, o in zip(dims, go.shape[2:], strict=True)
    ]
    gop = F.pad(go, (lo[2], hi[2], lo[1], hi[1], lo[0], hi[0])).contiguous(
        memory_format=torch.channels_last_3d
    )
    gxs = _POOL.empty((rows, *size, cf), go.dtype, go.device)
    for pd_ in dims[0]:
        for ph_ in dims[1]:
            for pw_ in dims[2]:
                phase = (pd_, ph_, pw_)
                dst = gxs[:, pd_.first :: geo.s3[0], ph_.first :: geo.s3[1], pw_.first :: geo.s3[2]]
                if not all(p.taps for p in phase):
                    dst.zero_()
                    continue
                spans = (
                    slice(p.start + lo[i], p.start + lo[i] + p.positions + (len(p.taps) - 1) * p.dilation)
                    for i, p in enumerate(phase)
                )
                window = gop[(slice(None), slice(None), *spans)]
                k = wt[:, :, pd_.taps][:, :, :, ph_.taps][:, :, :, :, pw_.taps]
                y = F.conv3d(window, k, None, 1, 0, tuple(p.dilation for p in phase), g)
                dst.copy_(y.permute(0, 2, 3, 4, 1))
    return gxs.permute(0, 4, 1, 2, 3)


def _time_fold_grad_input(
    go: Tensor,
    xs: Tensor,
    wf: Tensor,
    x_shape: torch.Size,
    x_dtype: torch.dtype,
    contiguous: bool,
    kt: int,
    geo: _Geometry,
) -> Tensor:
    """The input's gradient of time_fold from the output's ``go`` (N*T_out, C_out, D', H', W'):
    per block of output frames (_grad_blocks), conv3d's input gradient of the folded frames,
    added onto the input frames each tap read; returns (N, C, T, D, H, W) in ``x_dtype``, with
    channels last (the layout the taps are added in, and the one time_fold's output has, so a
    stack of these layers passes its gradients on without copies) or ``contiguous``."""
    n, c, t_in, d, h, wd = x_shape
    g = geo.g
    shape = (n, t_in, d, h, wd, g, c // g)
    # With one channel (or one position per channel) the two layouts are one.
    transpose = contiguous and c > 1 and t_in * d * h * wd > 1
    # From the pool, the gradient it returns too: free again once the caller drops it (the next
    # step, for a layer's input), a fresh one faults in its pages on first touch (on shape E of
    # bench/conv4d_bench.py 10 of the 16 ms its contiguous copy took).
    gx = _POOL.empty(shape, go.dtype, go.device)
    frame_bytes = math.prod(xs.shape[1:]) * xs.element_size()  # xs[0] fails on an empty batch

    def folded_grads() -> Iterator[tuple[tuple[int, int, int, int], Tensor]]:
        for block in _grad_blocks(n, geo.t_out, frame_bytes):
            n0, n1, t0, t1 = block
            rows = slice(n0 * geo.t_out + t0, (n1 - 1) * geo.t_out + t1)
            yield block, _folded_grad_input(go[rows], xs[rows], wf, geo)

    _unfold_taps_grad(gx, folded_grads(), kt, t_in, geo)
    if not transpose:
        return gx.permute(0, 5, 6, 1, 2, 3, 4).reshape(x_shape).to(x_dtype)
    # Channels to the front a run of frames (about TRANSPOSE_BYTES) at a time: the run stays in
    # cache while it is transposed, where one copy over the whole tensor re-reads each cache
    # line once per channel (autograd's copy of a channels-last gradient onto a contiguous leaf
    # took twice as long on shape E of bench/conv4d_bench.py).
    out = _POOL.empty(tuple(x_shape), x_dtype, gx.device)
    frames = gx.reshape(n, t_in, d, h, wd, c)
    run = max(1, TRANSPOSE_BYTES // (d * h * wd * c * gx.element_size()))
    for i in range(n):
        for t in range(0, t_in, run):
            out[i, :, t : t + run].copy_(frames[i, t : t + run].permute(4, 0, 1, 2, 3))
    return out


def _time_fold(x: Tensor, w: Tensor, b: Tensor | None, geo: _Geometry) -> Tensor:
    """Time taps stacked into input channels, channels-last-3d: one conv3d over batch N*T_out."""
    if not _exporting():
        out: Tensor = _TimeFoldFunction.apply(x, w, b, geo)  # type: ignore[no-untyped-call]
        return out
    return _time_fold_ops(x, w, b, geo)


def _time_fold_ops(x: Tensor, w: Tensor, b: Tensor | None, geo: _Geometry) -> Tensor:
    """time_fold in plain differentiable ops: what the ONNX exporter and torch.compile trace."""
    tp, st, dt, t_out, s3, p3, d3, g = geo
    x = _pad_time(x, tp)
    c, d, h, wd = x.shape[1], x.shape[3], x.shape[4], x.shape[5]
    kt = w.shape[2]
    xl = x.permute(0, 2, 3, 4, 5, 1)  # (N, T, D, H, W, C): channels last, one copy below
    xs = torch.stack(_time_taps(xl, kt, st, dt, t_out, 1), dim=-2)  # (N, T_out, D, H, W, kt, C)
    if g > 1:  # input channels ordered (group, tap, channel) so conv3d's groups still hold
        xs = xs.reshape(-1, t_out, d, h, wd, kt, g, c // g).transpose(-3, -2)
    xs = xs.reshape(-1, d, h, wd, kt * c).permute(0, 4, 1, 2, 3)  # (N*T_out, kt*C, D, H, W)
    wf = w.transpose(1, 2).reshape(w.shape[0], kt * w.shape[1], *w.shape[3:])
    y = F.conv3d(xs, wf.contiguous(memory_format=torch.channels_last_3d), b, s3, p3, d3, g)
    y = y.reshape(-1, t_out, *y.shape[1:])  # (N, T_out, C_out, D', H', W')
    return y.permute(0, 2, 1, 3, 4, 5)


def _out_stack(x: Tensor, w: Tensor, b: Tensor | None, geo: _Geometry) -> Tensor:
    """Time taps stacked into output channels: one conv3d over every input frame, then a shifted sum."""
    tp, st, dt, t_out, s3, p3, d3, g = geo
    x = _pad_time(x, tp)
    c, t, d, h, wd = x.shape[1:]
    c_out, cg, kt = w.shape[0], w.shape[1], w.shape[2]
    xl = x.permute(0, 2, 1, 3, 4, 5).reshape(-1, c, d, h, wd)  # (N*T, C, D, H, W)
    # output channels ordered (group, tap, channel) so conv3d's groups still hold
    ws = w.reshape(g, c_out // g, cg, kt, *w.shape[3:]).permute(0, 3, 1, 2, 4, 5, 6)
    ws = ws.reshape(g * kt * (c_out // g), cg, *w.shape[3:])
    y = F.conv3d(xl.contiguous(memory_format=torch.channels_last_3d), ws, None, s3, p3, d3, g)
    y = y.reshape(-1, t, g, kt, c_out // g, *y.shape[2:])  # (N, T, g, kt, C_out/g, D', H', W')
    acc: Tensor | None = None
    for i, yi in enumerate(_time_taps(y, kt, st, dt, t_out, 1)):
        part = yi[:, :, :, i]
        acc = part if acc is None else acc + part
    assert acc is not None
    out = acc.reshape(-1, t_out, c_out, *acc.shape[-3:]).permute(0, 2, 1, 3, 4, 5)
    # The stacked conv3d's outputs are summed across taps, so its bias would count kt times.
    return out if b is None else out + b.to(out.dtype).reshape(1, -1, 1, 1, 1, 1)


_FORMULATIONS: dict[str, Callable[..., Tensor]] = {
    "loop": _loop,
    "tap_loop": _tap_loop,
    "time_fold": _time_fold,
    "out_stack": _out_stack,
}


# --------------------------------------------------------------------------------------
# Choosing a formulation


# A CPU forward takes the per-frame loop rather than time_fold's folded input where that would
# raise the call's peak memory past this multiple of the loop's (issue 20's bound).
FORWARD_PEAK_RATIO = 1.5


def heuristic_algorithm(
    kernel_t: int, stride_t: int, needs_grad: bool, peak_ratio: float = 1.0, device_type: str = "cpu"
) -> str:
    """The formulation measured fastest for this kind of call (bench/results/conv4d_cpu.json,
    conv4d_cuda.json).

    On CUDA the stacked taps win everywhere: the loop's kT x T_out small conv3d launches ran
    4-8x slower forward on every shape of the bench (H200), and the caching allocator spares
    the stacked input the page faults that favour the loop on a CPU.

    ``peak_ratio`` is time_fold's peak memory over the loop's for the call (input, output and
    workspace). Stacking the time taps into input channels won every forward+backward (2-6x
    over the loop): one large conv3d beats kt smaller ones, and batch ``T_out * N`` keeps torch
    on its fast backend even at batch 1 (where the per-frame loop is 7-9x slower). Unstrided
    forward passes too, now that the stacked input comes from the scratch pool (_BufferPool)
    instead of fresh pages: on 1 thread, in process CPU time in turns, 1.08-1.25x the loop on
    shape A (8 channels, batch 8) and 1.02-1.13x on B (32 channels, batch 4), where with a
    fresh buffer each call the loop had matched or beaten it. A forward keeps the loop where
    the folded input would take the peak past FORWARD_PEAK_RATIO times the loop's (B: 1.67x,
    for a few percent), and with a time stride (E: the stacked taps at 0.73-0.90x): there is
    less compute per folded byte and no backward to share the fold with.
    """
    per_frame = device_type == "cpu" and (stride_t > 1 or peak_ratio > FORWARD_PEAK_RATIO)
    return "loop" if kernel_t > 1 and not needs_grad and per_frame else "time_fold"


def workspace_bytes(
    name: str,
    x_shape: tuple[int, ...],
    w_shape: tuple[int, ...],
    geo: _Geometry,
    element_size: int,
    needs_grad: bool,
    *,
    device_type: str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> int:
    """Bytes a formulation allocates beyond its input and output, counted from its buffers,
    for a compute ``dtype`` on a ``device_type`` (time_fold's backward differs by both).

    ``x_shape`` is the input as the formulation gets it (D, H, W padding still to apply by
    conv3d). The largest buffers, per formulation: loop: the frames before they are stacked
    (and in backward, per read frame, a zero-filled input-sized gradient buffer that autograd
    sums); tap_loop: the time-padded input and one gathered input per tap (all kept for
    backward); time_fold: the folded input, kT input-sized blocks per output frame (kept for
    backward, where the input's gradient, the output's gradient in channels-last and the
    folded gradient of one block of output frames, _grad_blocks, join it, with what
    _folded_grad_input's rewrites add: a chunk of planes, or a phase's output and the padded
    output gradient of the block);
    out_stack: the time-padded channels-last input and the conv3d output over every frame
    and tap (kT times the output, twice in backward).
    """
    n, c, t_in, d, h, wd = x_shape
    c_out, kt = w_shape[0], w_shape[2]
    # Lists, not generators, in math.prod: torch.compile cannot trace a generator into a call
    # and would break conv4d's graph here.
    out_dhw = math.prod(
        [
            conv_output_size(size + 2 * p, k, s, dl, 0)
            for size, k, s, dl, p in zip((d, h, wd), w_shape[3:], geo.s3, geo.d3, geo.p3, strict=True)
        ]
    )
    t_pad = t_in + sum(geo.tp)
    frame = n * c * d * h * wd  # one input frame for the whole batch
    inputs = frame * t_in
    out = n * c_out * geo.t_out * out_dhw
    if name == "loop":
        elements = out + (2 * inputs if needs_grad else 0)
    elif name == "tap_loop":
        gathered = frame * geo.t_out
        elements = frame * t_pad + out + (kt * gathered * 2 if needs_grad else gathered)
    elif name == "time_fold":
        folded = kt * frame * geo.t_out
        if needs_grad:
            frame_bytes = kt * c * d * h * wd * element_size
            block = max((n1 - n0) * (t1 - t0) for n0, n1, t0, t1 in _grad_blocks(n, geo.t_out, frame_bytes))
            elements = folded + block * frame_bytes // element_size + inputs + out
            rewrite = _grad_input_rewrite(device_type, dtype, kt * c, geo)
            elements += _grad_input_scratch(rewrite, block, kt * c, (d, h, wd), w_shape, geo, element_size)
        else:
            elements = folded
    elif name == "out_stack":
        stacked = kt * n * t_pad * c_out * out_dhw
        elements = 2 * frame * t_pad + stacked * (2 if needs_grad else 1) + out
    else:
        raise ValueError(f"unknown formulation {name!r}")
    return elements * element_size


def _grad_input_scratch(
    rewrite: str | None,
    block: int,
    channels: int,
    size: tuple[int, int, int],
    w_shape: tuple[int, ...],
    geo: _Geometry,
    element_size: int,
) -> int:
    """Elements _folded_grad_input's ``rewrite`` allocates beyond the folded gradient, at most,
    for ``block`` rows of ``channels`` folded channels over ``size`` (D, H, W): planes: one
    chunk of them; phases: the block's output gradient, padded, and the largest phase's output."""
    out = [
        conv_output_size(sz + 2 * p, k, s, dl, 0)
        for sz, k, s, dl, p in zip(size, w_shape[3:], geo.s3, geo.d3, geo.p3, strict=True)
    ]
    if rewrite == "planes":
        row = out[0] * size[1] * size[2] * channels * w_shape[3]
        return _planes_chunk_rows(row, element_size) * row
    if rewrite == "phases":
        padded = math.prod([o + k for o, k in zip(out, w_shape[3:], strict=True)])
        phase = math.prod([-(-sz // s) for sz, s in zip(size, geo.s3, strict=True)])
        return block * (w_shape[0] * padded + channels * phase)
    return 0


# When the preferred formulation needs more workspace than nn.max_workspace, auto falls back in
# this order (measured speed for training calls, bench/results/conv4d_cpu.json); the loop
# needs the least and is the floor.
FALLBACK_ORDER: tuple[str, ...] = ("time_fold", "tap_loop", "out_stack", "loop")


class _Workspace:
    limit: int | None = None


_WORKSPACE = _Workspace()


# Scratch buffers smaller than this come from malloc's heap, already reused without page faults.
POOL_MIN_BYTES = 1 << 20
# What the pool keeps when nn.max_workspace sets no limit.
POOL_DEFAULT_BYTES = 1 << 30


class _BufferPool:
    """Large CPU buffers (the folded input, backward's channels-last output gradient, and the
    input gradient time_fold returns) kept across conv4d calls instead of freed.

    glibc serves allocations above its mmap threshold (at most 32 MiB) with fresh pages that
    fault on first touch: on shape A of bench/conv4d_bench.py a fresh 48 MiB buffer took 17.7 ms
    to fill against 7.3 ms for a copy into one already resident. A buffer is handed out as a
    view and is free again once nothing shares its storage (autograd's saved tensors included),
    so one still held by a graph, or by a caller as a gradient, is never reused. The pool holds
    at most nn.max_workspace bytes (POOL_DEFAULT_BYTES without a limit), dropping free buffers
    oldest first to make room; beyond that, buffers are plain allocations.
    """

    def __init__(self) -> None:
        self.buffers: list[Tensor] = []  # oldest first
        self.lock = threading.Lock()

    @staticmethod
    def _shared(buffer: Tensor) -> bool:
        # The pool's own reference and the temporary storage object count two.
        return torch._C._storage_Use_Count(buffer.untyped_storage()._cdata) > 2

    def empty(self, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> Tensor:
        """An uninitialised contiguous tensor of ``shape``, from the pool where it can be."""
        numel = math.prod(shape)
        size = numel * dtype.itemsize
        if device.type != "cpu" or size < POOL_MIN_BYTES:
            return torch.empty(shape, dtype=dtype, device=device)
        with self.lock:
            for i, buffer in enumerate(self.buffers):
                if buffer.dtype == dtype and buffer.numel() == numel and not self._shared(buffer):
                    self.buffers.append(self.buffers.pop(i))
                    return buffer.view(shape)
            cap = _WORKSPACE.limit or POOL_DEFAULT_BYTES
            held = sum(b.numel() * b.element_size() for b in self.buffers)
            kept = []
            for buffer in self.buffers:
                if held + size > cap and not self._shared(buffer):
                    held -= buffer.numel() * buffer.element_size()
                else:
                    kept.append(buffer)
            self.buffers = kept
            # Allocated outside inference mode, so a training call may later save it for backward.
            with torch.inference_mode(False):
                buffer = torch.empty(numel, dtype=dtype, device=device)
            if held + size <= cap:
                self.buffers.append(buffer)
            return buffer.view(shape)

    def clear(self) -> None:
        """Forget every buffer (those still in use stay alive with their users)."""
        with self.lock:
            self.buffers.clear()


_POOL = _BufferPool()


def set_max_workspace(limit: int | None) -> None:
    """Most bytes of workspace 'auto' lets one conv4d call allocate (None or 0: no limit)."""
    if limit is not None and limit < 0:
        raise ValueError(f"max_workspace must be >= 0 bytes, got {limit}")
    _WORKSPACE.limit = limit or None
    _POOL.clear()  # a lower limit frees what the pool kept at once


def max_workspace() -> int | None:
    """The current workspace limit in bytes, None when there is none."""
    return _WORKSPACE.limit


def within_workspace(preferred: str, workspace: Callable[[str], int], limit: int | None) -> list[str]:
    """The formulations 'auto' may use under ``limit``, best first: ``preferred``, then
    FALLBACK_ORDER; the loop when none fits (it needs the least)."""
    ranked = [preferred, *(name for name in FALLBACK_ORDER if name != preferred)]
    if limit is None:
        return ranked
    fitting = [name for name in ranked if workspace(name) <= limit]
    if fitting[:1] != [preferred]:
        log.debug(
            "conv4d: %s needs %d bytes of workspace, over nn.max_workspace (%d); using %s",
            preferred,
            workspace(preferred),
            limit,
            fitting[0] if fitting else "loop",
        )
    return fitting or ["loop"]


class _Benchmark:
    """Measured selection per shape, cached for the life of the process (like cudnn.benchmark)."""

    def __init__(self) -> None:
        self.enabled = False
        self.cache: dict[tuple[object, ...], str] = {}
        self.lock = threading.Lock()


_BENCHMARK = _Benchmark()


def set_benchmark(enabled: bool) -> None:
    """Time every formulation the first time a shape is seen and use the fastest from then on."""
    _BENCHMARK.enabled = enabled


def benchmark_enabled() -> bool:
    """Whether measured selection is on."""
    return _BENCHMARK.enabled


@contextmanager
def benchmark(enabled: bool = True) -> Iterator[None]:
    """Turn measured selection on (or off) inside a ``with`` block."""
    previous = _BENCHMARK.enabled
    _BENCHMARK.enabled = enabled
    try:
        yield
    finally:
        _BENCHMARK.enabled = previous


def clear_benchmark_cache() -> None:
    """Forget every measured choice."""
    with _BENCHMARK.lock:
        _BENCHMARK.cache.clear()


def benchmark_cache() -> dict[tuple[object, ...], str]:
    """A copy of the measured choices, keyed by shape and configuration."""
    with _BENCHMARK.lock:
        return dict(_BENCHMARK.cache)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _measure(
    run: Callable[[str, Tensor, Tensor], Tensor],
    needs_grad: bool,
    x: Tensor,
    weight: Tensor,
    candidates: tuple[str, ...] = ALGORITHMS,
) -> str:
    """The formulation with the lowest time: one warm-up call each, then three rounds in
    turns (so a burst of other load hits every formulation alike), minimum per formulation."""

    def once(name: str) -> int:
        _sync(x.device)
        start = time.perf_counter_ns()
        if needs_grad:
            xr = x.detach().requires_grad_(x.requires_grad)
            wr = weight.detach().requires_grad_(True)
            # torch leaves Tensor.backward unannotated.
            run(name, xr, wr).sum().backward()  # type: ignore[no-untyped-call]
        else:
            with torch.no_grad():
                run(name, x, weight)
        _sync(x.device)
        return time.perf_counter_ns() - start

    for name in candidates:
        once(name)
    best_ns = dict.fromkeys(candidates, math.inf)
    for _ in range(3):
        for name in candidates:
            best_ns[name] = min(best_ns[name], once(name))
    return min(candidates, key=lambda name: best_ns[name])


# --------------------------------------------------------------------------------------
# Functional API


def conv4d(
    x: Tensor,
    weight: Tensor,
    bias: Tensor | None = None,
    stride: IntOrQuad = 1,
    padding: PaddingArg = 0,
    dilation: IntOrQuad = 1,
    groups: int = 1,
    padding_mode: PaddingMode = "zeros",
    algorithm: Algorithm = "auto",
) -> Tensor:
    """4-D convolution of ``x`` (N, C_in, T, D, H, W), or one unbatched sample (C_in, T, D, H, W)
    as conv3d takes (C, D, H, W), with ``weight`` (C_out, C_in/groups, kT, kD, kH, kW)."""
    shape = tuple(x.shape)
    if x.dim() not in (5, 6):
        raise ValueError(
            f"conv4d expects input (N, C, T, D, H, W) or unbatched (C, T, D, H, W), got shape {shape}"
        )
    unbatched = x.dim() == 5
    if unbatched:
        x = x.unsqueeze(0)
    if weight.dim() != 6:
        raise ValueError(
            f"conv4d expects weight (C_out, C_in/groups, kT, kD, kH, kW), got shape {tuple(weight.shape)}"
        )
    if padding_mode not in PADDING_MODES:
        raise ValueError(f"padding_mode must be one of {PADDING_MODES}, got {padding_mode!r}")
    if algorithm != "auto" and algorithm not in ALGORITHMS:
        raise ValueError(f"algorithm must be 'auto' or one of {ALGORITHMS}, got {algorithm!r}")
    if groups < 1:
        raise ValueError(f"groups must be >= 1, got {groups}")
    kernel = (weight.shape[2], weight.shape[3], weight.shape[4], weight.shape[5])
    s, dl = quad(stride, "stride"), quad(dilation, "dilation")
    for what, value in (("kernel", kernel), ("stride", s), ("dilation", dl)):
        if min(value) < 1:
            raise ValueError(f"{what} must be >= 1 in every dimension, got {value}")
    if x.shape[1] != weight.shape[1] * groups:
        raise ValueError(
            f"input has {x.shape[1]} channels, weight expects {weight.shape[1] * groups} "
            f"({weight.shape[1]} per group x {groups} groups)"
        )
    if weight.shape[0] % groups:
        raise ValueError(f"weight has {weight.shape[0]} output channels, not divisible by groups={groups}")
    if bias is not None and tuple(bias.shape) != (weight.shape[0],):
        raise ValueError(
            f"conv4d expects bias of shape ({weight.shape[0]},) (one per output channel), got {tuple(bias.shape)}"
        )
    pads = resolve_padding(padding, kernel, s, dl)

    if padding_mode == "zeros":
        # conv3d pads D, H, W itself where the padding is symmetric; pad the rest of D, H, W
        # explicitly. Zero time padding is left to the formulation (the loop skips it).
        p3 = tuple(min(lo, hi) for lo, hi in pads[1:])
        tp = pads[0]
        explicit = ((0, 0), *((lo - m, hi - m) for (lo, hi), m in zip(pads[1:], p3, strict=True)))
    else:
        p3, tp, explicit = (0, 0, 0), (0, 0), pads
    xp = pad4d(x, explicit, padding_mode)
    t_out = conv_output_size(xp.shape[2], kernel[0], s[0], dl[0], sum(tp))
    for dim, (size, k, st, d) in enumerate(zip(xp.shape[2:], kernel, s, dl, strict=True)):
        pad_total = sum(tp) if dim == 0 else 2 * p3[dim - 1]
        if conv_output_size(size, k, st, d, pad_total) < 1:
            raise ValueError(
                f"input of shape {shape} is smaller than the dilated kernel {kernel} (after padding)"
            )
    # Under autocast the input may already be in the reduced dtype (a CUDA batch norm keeps it)
    # while the weight is not; every formulation casts both to autocast's dtype.
    if not torch.is_autocast_enabled(x.device.type):
        if x.dtype != weight.dtype:
            raise ValueError(f"input dtype {x.dtype} does not match weight dtype {weight.dtype}")
        if bias is not None and bias.dtype != weight.dtype:
            raise ValueError(f"bias dtype {bias.dtype} does not match weight dtype {weight.dtype}")

    s3, d3 = s[1:], dl[1:]
    if s3[2] > 1 and conv_output_size(xp.shape[5], kernel[3], s3[2], d3[2], 2 * p3[2]) == 1:
        # oneDNN's reduced-precision CPU conv3d (torch 2.13) returns wrong values when the last
        # dim has stride > 1 and one output; that single output is the same with stride 1 over
        # just the span the kernel reads, so convolve that instead (any dtype: an exact rewrite).
        xp = F.pad(xp, (p3[2], p3[2])) if p3[2] else xp
        xp = xp[..., : d3[2] * (kernel[3] - 1) + 1]
        s3, p3 = (s3[0], s3[1], 1), (p3[0], p3[1], 0)

    geometry = _Geometry(tp, s[0], dl[0], t_out, s3, p3, d3, groups)  # type: ignore[arg-type]

    def run(name: str, xx: Tensor, ww: Tensor, bb: Tensor | None = None) -> Tensor:
        return _FORMULATIONS[name](xx, ww, bb, geometry)

    needs_grad = torch.is_grad_enabled() and (xp.requires_grad or weight.requires_grad)
    name: str = algorithm
    if name == "auto":
        compute_dtype = _compute_dtype(xp)
        element_size = compute_dtype.itemsize

        def workspace(candidate: str) -> int:
            return workspace_bytes(
                candidate,
                tuple(xp.shape),
                tuple(weight.shape),
                geometry,
                element_size,
                needs_grad,
                device_type=xp.device.type,
                dtype=compute_dtype,
            )

        limit = _WORKSPACE.limit
        # A forward's peak memory under time_fold over the loop's: input, output (the loop's
        # forward workspace) and each one's workspace.
        inputs, out = xp.numel() * element_size, workspace("loop")
        peak_ratio = 1.0 if needs_grad else (inputs + out + workspace("time_fold")) / (inputs + 2 * out)
        preferred = heuristic_algorithm(kernel[0], s[0], needs_grad, peak_ratio, xp.device.type)
        if _BENCHMARK.enabled and not _exporting():
            key = (
                xp.device.type,
                xp.dtype,
                tuple(xp.shape),
                tuple(weight.shape),
                s,
                tp,
                p3,
                dl,
                groups,
                needs_grad,
                _compute_dtype(xp),
                limit,
            )
            with _BENCHMARK.lock:
                cached = _BENCHMARK.cache.get(key)
            if cached is None:
                allowed = within_workspace(preferred, workspace, limit)
                cached = _measure(run, needs_grad, xp, weight, tuple(a for a in ALGORITHMS if a in allowed))
                with _BENCHMARK.lock:
                    _BENCHMARK.cache[key] = cached
            name = cached
        else:
            name = within_workspace(preferred, workspace, limit)[0]
    result = run(name, xp, weight, bias)
    return result.squeeze(0) if unbatched else result


def _exporting() -> bool:
    """Whether a tracer records this call: plain ops only (torch.jit.trace cannot record
    time_fold's autograd Function, nor replay its scratch pool)."""
    # torch.jit leaves is_tracing unexported and unannotated.
    tracing: bool = torch.jit.is_tracing()  # type: ignore[attr-defined,no-untyped-call]
    return torch.onnx.is_in_onnx_export() or torch.compiler.is_compiling() or tracing


# --------------------------------------------------------------------------------------
# Module


def _torch_conv_init(weight: Tensor, bias: Tensor | None, kernel_size: tuple[int, ...]) -> None:
    """torch's conv initialisation: kaiming-uniform weights, bias uniform in +-1/sqrt(fan_in),
    with fan_in = weight dim 1 times the kernel volume (for transposed convs too, as torch does)."""
    nn.init.kaiming_uniform_(weight, a=math.sqrt(5))
    if bias is not None:
        fan_in = weight.shape[1] * math.prod(kernel_size)
        bound = 1 / math.sqrt(fan_in) if fan_in > 0 else 0.0
        nn.init.uniform_(bias, -bound, bound)


class Conv4d(nn.Module):
    """4-D convolution layer on (N, C, T, D, H, W) or unbatched (C, T, D, H, W), the API of
    torch.nn.Conv3d with one more dim.

    ``algorithm`` is 'auto' (heuristic, or measured when ``set_benchmark(True)``) or one of
    ALGORITHMS; every formulation computes the same function. Training under 'auto' takes
    time_fold, whose backward differentiates once: for double backward (a gradient penalty)
    pick 'tap_loop', 'loop' or 'out_stack'.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: IntOrQuad,
        stride: IntOrQuad = 1,
        padding: PaddingArg = 0,
        dilation: IntOrQuad = 1,
        groups: int = 1,
        bias: bool = True,
        padding_mode: PaddingMode = "zeros",
        algorithm: Algorithm = "auto",
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        if groups < 1 or in_channels % groups or out_channels % groups:
            raise ValueError(
                f"groups={groups} must be >= 1 and divide in_channels={in_channels} "
                f"and out_channels={out_channels}"
            )
        if padding_mode not in PADDING_MODES:
            raise ValueError(f"padding_mode must be one of {PADDING_MODES}, got {padding_mode!r}")
        if algorithm != "auto" and algorithm not in ALGORITHMS:
            raise ValueError(f"algorithm must be 'auto' or one of {ALGORITHMS}, got {algorithm!r}")
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.kernel_size = quad(kernel_size, "kernel_size")
        self.stride = quad(stride, "stride")
        self.dilation = quad(dilation, "dilation")
        _check_at_least_1(kernel_size=self.kernel_size, stride=self.stride, dilation=self.dilation)
        self.padding: tuple[int, int, int, int] | str = (
            padding if isinstance(padding, str) else quad(padding, "padding")
        )
        resolve_padding(self.padding, self.kernel_size, self.stride, self.dilation)  # validates
        self.groups = groups
        self.padding_mode = padding_mode
        self.algorithm = algorithm
        self.weight = nn.Parameter(
            torch.empty(out_channels, in_channels // groups, *self.kernel_size, device=device, dtype=dtype)
        )
        self.bias = nn.Parameter(torch.empty(out_channels, device=device, dtype=dtype)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """torch's ConvNd initialisation."""
        _torch_conv_init(self.weight, self.bias, self.kernel_size)

    def forward(self, x: Tensor) -> Tensor:
        return conv4d(
            x,
            self.weight,
            self.bias,
            self.stride,
            self.padding,  # type: ignore[arg-type]
            self.dilation,
            self.groups,
            self.padding_mode,
            self.algorithm,
        )

    def extra_repr(self) -> str:
        text = _torch_conv_repr(self, padding=self.padding)
        if self.padding_mode != "zeros":
            text += f", padding_mode={self.padding_mode}"
        if self.algorithm != "auto":
            text += f", algorithm={self.algorithm}"
        return text


def _check_at_least_1(**sizes: Quad) -> None:
    """ValueError naming the first of `sizes` (kernel_size, stride, dilation) below 1 in a dim."""
    for what, value in sizes.items():
        if min(value) < 1:
            raise ValueError(f"{what} must be >= 1 in every dimension, got {value}")


def _torch_conv_repr(
    layer: Conv4d | ConvTranspose4d, padding: Quad | str, output_padding: Quad = (0, 0, 0, 0)
) -> str:
    """What torch's ConvNd.extra_repr shows: sizes and stride, then only the other arguments
    that differ from their defaults."""
    text = (
        f"{layer.in_channels}, {layer.out_channels}, kernel_size={layer.kernel_size}, stride={layer.stride}"
    )
    if padding != (0, 0, 0, 0):
        text += f", padding={padding}"
    if layer.dilation != (1, 1, 1, 1):
        text += f", dilation={layer.dilation}"
    if output_padding != (0, 0, 0, 0):
        text += f", output_padding={output_padding}"
    if layer.groups != 1:
        text += f", groups={layer.groups}"
    if layer.bias is None:
        text += ", bias=False"
    return text


# --------------------------------------------------------------------------------------
# Transposed convolution


def conv_transpose4d(
    x: Tensor,
    weight: Tensor,
    bias: Tensor | None = None,
    stride: IntOrQuad = 1,
    padding: IntOrQuad = 0,
    output_padding: IntOrQuad = 0,
    groups: int = 1,
    dilation: IntOrQuad = 1,
) -> Tensor:
    """Transposed 4-D convolution (the adjoint of conv4d) of ``x`` (N, C_in, T, D, H, W) or unbatched
    (C_in, T, D, H, W); ``weight`` is (C_in, C_out/groups, kT, kD, kH, kW).

    One conv_transpose3d with the time taps stacked into output channels over batch
    ``T_in * N``, then each tap's frames spread to their output times (zeros between them
    for a time stride) and summed; out-of-place ops only, so it differentiates and exports.
    """
    if x.dim() == 5:  # one unbatched sample, as conv_transpose3d takes (C, D, H, W)
        return conv_transpose4d(
            x.unsqueeze(0), weight, bias, stride, padding, output_padding, groups, dilation
        ).squeeze(0)
    if x.dim() != 6:
        raise ValueError(
            "conv_transpose4d expects input (N, C, T, D, H, W) or unbatched (C, T, D, H, W), "
            f"got shape {tuple(x.shape)}"
        )
    if x.shape[1] != weight.shape[0]:
        raise ValueError(f"input has {x.shape[1]} channels, weight expects {weight.shape[0]}")
    s, p, op, dl = (
        quad(v, name)
        for v, name in (
            (stride, "stride"),
            (padding, "padding"),
            (output_padding, "output_padding"),
            (dilation, "dilation"),
        )
    )
    if any(o >= max(st, d) for o, st, d in zip(op, s, dl, strict=True)):
        raise ValueError("output_padding must be smaller than stride or dilation in every dimension")
    c_in, cog, kt = weight.shape[0], weight.shape[1], weight.shape[2]
    n_t, c, d, h, w = x.shape[2], x.shape[1], x.shape[3], x.shape[4], x.shape[5]
    xl = x.permute(0, 2, 1, 3, 4, 5).reshape(-1, c, d, h, w)  # (N*T_in, C_in, D, H, W)
    ws = weight.transpose(1, 2).reshape(c_in, kt * cog, *weight.shape[3:])  # out channels (tap, C_out/g)
    y = F.conv_transpose3d(xl, ws, None, s[1:], p[1:], op[1:], groups, dl[1:])
    y = y.reshape(-1, n_t, groups, kt, cog, *y.shape[2:])  # (N, T_in, g, kt, C_out/g, D', H', W')
    spread = (n_t - 1) * s[0] + 1
    full = spread + dl[0] * (kt - 1) + op[0]
    acc: Tensor | None = None
    for i in range(kt):
        yi = y[:, :, :, i]  # (N, T_in, g, C_out/g, D', H', W')
        if s[0] > 1:  # put s-1 zero frames after each input frame
            yi = torch.stack([yi, *([torch.zeros_like(yi)] * (s[0] - 1))], dim=2).flatten(1, 2)
            yi = yi[:, :spread]
        yi = F.pad(yi, (0, 0) * 5 + (i * dl[0], full - spread - i * dl[0]))
        acc = yi if acc is None else acc + yi
    assert acc is not None
    t_out = full - 2 * p[0]
    out = acc[:, p[0] : p[0] + t_out]  # (N, T_out, g, C_out/g, D', H', W')
    out = out.reshape(-1, t_out, groups * cog, *out.shape[-3:]).permute(0, 2, 1, 3, 4, 5)
    if bias is not None:
        out = out + bias.reshape(1, -1, 1, 1, 1, 1)
    return out


class ConvTranspose4d(nn.Module):
    """Transposed 4-D convolution layer, the API of torch.nn.ConvTranspose3d with one more dim."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: IntOrQuad,
        stride: IntOrQuad = 1,
        padding: IntOrQuad = 0,
        output_padding: IntOrQuad = 0,
        groups: int = 1,
        bias: bool = True,
        dilation: IntOrQuad = 1,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        if groups < 1 or in_channels % groups or out_channels % groups:
            raise ValueError(
                f"groups={groups} must be >= 1 and divide in_channels={in_channels} "
                f"and out_channels={out_channels}"
            )
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.kernel_size = quad(kernel_size, "kernel_size")
        self.stride = quad(stride, "stride")
        self.padding = quad(padding, "padding")
        self.output_padding = quad(output_padding, "output_padding")
        self.dilation = quad(dilation, "dilation")
        _check_at_least_1(kernel_size=self.kernel_size, stride=self.stride, dilation=self.dilation)
        self.groups = groups
        self.weight = nn.Parameter(
            torch.empty(in_channels, out_channels // groups, *self.kernel_size, device=device, dtype=dtype)
        )
        self.bias = nn.Parameter(torch.empty(out_channels, device=device, dtype=dtype)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """torch's ConvTransposeNd initialisation (fan_in from weight dim 1, as torch does)."""
        _torch_conv_init(self.weight, self.bias, self.kernel_size)

    def forward(self, x: Tensor) -> Tensor:
        return conv_transpose4d(
            x,
            self.weight,
            self.bias,
            self.stride,
            self.padding,
            self.output_padding,
            self.groups,
            self.dilation,
        )

    def extra_repr(self) -> str:
        return _torch_conv_repr(self, padding=self.padding, output_padding=self.output_padding)
