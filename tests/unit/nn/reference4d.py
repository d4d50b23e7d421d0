"""Brute-force numpy references for the 4-D layers: direct sums, no torch."""

from __future__ import annotations

import itertools
from typing import Literal

import numpy as np

_NP_MODES: dict[str, Literal["constant", "reflect", "edge", "wrap"]] = {
    "zeros": "constant",
    "reflect": "reflect",
    "replicate": "edge",
    "circular": "wrap",
}
# An index of numpy's basic kind: ints and slices, one per dimension.
Index = tuple[int | slice, ...]


def pad(x: np.ndarray, pads: list[tuple[int, int]], mode: str) -> np.ndarray:
    """Pad the last len(pads) dims of x."""
    width = [(0, 0)] * (x.ndim - len(pads)) + list(pads)
    return np.pad(x, width, mode=_NP_MODES[mode])


def same_pads(kernel: tuple[int, ...], dilation: tuple[int, ...]) -> list[tuple[int, int]]:
    """torch's 'same' padding: the odd extra element on the high side."""
    return [
        ((d * (k - 1)) // 2, d * (k - 1) - (d * (k - 1)) // 2) for k, d in zip(kernel, dilation, strict=True)
    ]


def conv4d(
    x: np.ndarray,
    w: np.ndarray,
    b: np.ndarray | None,
    stride: tuple[int, ...],
    pads: list[tuple[int, int]],
    dilation: tuple[int, ...],
    groups: int,
    mode: str = "zeros",
) -> np.ndarray:
    """out[n, o, t, d, h, w] = b[o] + sum over group channels and taps of w * x (direct 4-D sum)."""
    xp = pad(x, pads, mode)
    n = x.shape[0]
    c_out, cg = w.shape[:2]
    k = w.shape[2:]
    out_sizes = [(xp.shape[2 + i] - dilation[i] * (k[i] - 1) - 1) // stride[i] + 1 for i in range(4)]
    out = np.zeros((n, c_out, *out_sizes), dtype=np.float64)
    og = c_out // groups
    for o in range(c_out):
        grp = o // og
        for pos in itertools.product(*(range(s) for s in out_sizes)):
            for tap in itertools.product(*(range(kk) for kk in k)):
                idx = tuple(pos[i] * stride[i] + tap[i] * dilation[i] for i in range(4))
                x_at: Index = (slice(None), slice(grp * cg, (grp + 1) * cg), *idx)
                out_at: Index = (slice(None), o, *pos)
                w_at: Index = (o, slice(None), *tap)
                out[out_at] += xp[x_at] @ w[w_at]  # xp[x_at]: (N, Cg)
        if b is not None:
            out[:, o] += b[o]
    return out


def conv_transpose4d(
    x: np.ndarray,
    w: np.ndarray,
    b: np.ndarray | None,
    stride: tuple[int, ...],
    padding: tuple[int, ...],
    output_padding: tuple[int, ...],
    dilation: tuple[int, ...],
    groups: int,
) -> np.ndarray:
    """Scatter every input element times the kernel into the output (the definition)."""
    n, c_in = x.shape[:2]
    cig, og = c_in // groups, w.shape[1]
    k = w.shape[2:]
    sizes = [
        (x.shape[2 + i] - 1) * stride[i] - 2 * padding[i] + dilation[i] * (k[i] - 1) + output_padding[i] + 1
        for i in range(4)
    ]
    full = [sizes[i] + 2 * padding[i] + dilation[i] * (k[i] - 1) for i in range(4)]
    out = np.zeros((n, groups * og, *full), dtype=np.float64)
    for ci in range(c_in):
        grp = ci // cig
        for pos in itertools.product(*(range(s) for s in x.shape[2:])):
            for tap in itertools.product(*(range(kk) for kk in k)):
                idx = tuple(pos[i] * stride[i] + tap[i] * dilation[i] for i in range(4))
                out_at: Index = (slice(None), slice(grp * og, (grp + 1) * og), *idx)
                x_at: Index = (slice(None), ci, *pos)
                w_at: Index = (ci, slice(None), *tap)
                out[out_at] += x[x_at][:, None] * w[w_at][None, :]
    out = out[(slice(None), slice(None), *(slice(padding[i], padding[i] + sizes[i]) for i in range(4)))]
    if b is not None:
        out += b.reshape(1, -1, 1, 1, 1, 1)
    return out


def pool4d(
    x: np.ndarray,
    kernel: tuple[int, ...],
    stride: tuple[int, ...],
    padding: tuple[int, ...],
    kind: str,
    count_include_pad: bool = True,
) -> np.ndarray:
    """Max or average over every window (padding is -inf for max, zeros for avg)."""
    fill = -np.inf if kind == "max" else 0.0
    xp = np.pad(x, [(0, 0), (0, 0)] + [(p, p) for p in padding], constant_values=fill)
    valid = np.pad(np.ones(x.shape[2:]), [(p, p) for p in padding])
    sizes = [(xp.shape[2 + i] - kernel[i]) // stride[i] + 1 for i in range(4)]
    out = np.zeros((*x.shape[:2], *sizes))
    for pos in itertools.product(*(range(s) for s in sizes)):
        window = tuple(slice(pos[i] * stride[i], pos[i] * stride[i] + kernel[i]) for i in range(4))
        x_at: Index = (slice(None), slice(None), *window)
        out_at: Index = (slice(None), slice(None), *pos)
        block = xp[x_at].reshape(*x.shape[:2], -1)
        if kind == "max":
            out[out_at] = block.max(-1)
        else:
            count = np.prod(kernel) if count_include_pad else valid[window].sum()
            out[out_at] = block.sum(-1) / count
    return out


def adaptive_avg_pool4d(x: np.ndarray, output_size: tuple[int, ...]) -> np.ndarray:
    """torch's adaptive bins: start floor(i*L/out), end ceil((i+1)*L/out)."""
    bins = [[(i * x.shape[2 + d]) // output_size[d] for i in range(output_size[d])] for d in range(4)]
    ends = [
        [-((-(i + 1) * x.shape[2 + d]) // output_size[d]) for i in range(output_size[d])] for d in range(4)
    ]
    out = np.zeros((*x.shape[:2], *output_size))
    for pos in itertools.product(*(range(s) for s in output_size)):
        window = tuple(slice(bins[d][pos[d]], ends[d][pos[d]]) for d in range(4))
        out_at: Index = (slice(None), slice(None), *pos)
        x_at: Index = (slice(None), slice(None), *window)
        out[out_at] = x[x_at].mean(axis=(2, 3, 4, 5))
    return out


def batch_norm4d(x: np.ndarray, weight: np.ndarray, bias: np.ndarray, eps: float) -> np.ndarray:
    """Training-mode batch norm: per-channel biased statistics over N, T, D, H, W."""
    mean = x.mean(axis=(0, 2, 3, 4, 5), keepdims=True)
    var = x.var(axis=(0, 2, 3, 4, 5), keepdims=True)
    shape = (1, -1, 1, 1, 1, 1)
    normed: np.ndarray = (x - mean) / np.sqrt(var + eps) * weight.reshape(shape) + bias.reshape(shape)
    return normed
