"""Pooling over (N, C, T, D, H, W), or one unbatched (C, T, D, H, W) sample: separable into a
3-D pool over D, H, W and one over T.

Max and average over a box are separable (the box is a product of intervals), so each
pool runs torch's 3-D kernel on frames folded into the batch and then combines strided
time slices; no ``as_strided``, so the graph exports with a dynamic batch.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tesserad.nn.conv import IntOrQuad, quad


def _check(x: Tensor, name: str) -> None:
    if x.dim() != 6:
        raise ValueError(
            f"{name} expects input (N, C, T, D, H, W) or unbatched (C, T, D, H, W), got shape {tuple(x.shape)}"
        )


def _fold(x: Tensor) -> Tensor:
    """(N, C, T, D, H, W) -> (N*T, C, D, H, W)."""
    return x.transpose(1, 2).reshape(-1, x.shape[1], *x.shape[3:])


def _unfold(y: Tensor, t: int) -> Tensor:
    """(N*T, C, D, H, W) -> (N, C, T, D, H, W)."""
    return y.reshape(-1, t, *y.shape[1:]).transpose(1, 2)


def _time_windows(x: Tensor, k: int, s: int) -> list[Tensor]:
    """For each of the k window offsets, the frames it reads for every output time."""
    t_out = (x.shape[2] - k) // s + 1
    return [x[:, :, i : i + s * (t_out - 1) + 1 : s] for i in range(k)]


Pool3d = Callable[[Tensor, tuple[int, ...], tuple[int, ...], tuple[int, ...]], Tensor]


def max_pool4d(
    x: Tensor, kernel_size: IntOrQuad, stride: IntOrQuad | None = None, padding: IntOrQuad = 0
) -> Tensor:
    """Max over each window; padding counts as -inf. NaN in a window gives NaN, as torch's pools do."""
    return max_pool4d_with(F.max_pool3d, x, kernel_size, stride, padding)


def max_pool4d_with(
    pool3d: Pool3d,
    x: Tensor,
    kernel_size: IntOrQuad,
    stride: IntOrQuad | None = None,
    padding: IntOrQuad = 0,
) -> Tensor:
    """``max_pool4d`` with ``pool3d(x, kernel, stride, padding)`` as its 3-D max pool (the ONNX
    export swaps in one that keeps NaN in onnxruntime)."""
    if x.dim() == 5:  # one unbatched sample, as max_pool3d takes (C, D, H, W)
        return max_pool4d_with(pool3d, x.unsqueeze(0), kernel_size, stride, padding).squeeze(0)
    _check(x, "max_pool4d")
    k = quad(kernel_size, "kernel_size")
    s = k if stride is None else quad(stride, "stride")
    p = quad(padding, "padding")
    if any(pp > kk // 2 for pp, kk in zip(p, k, strict=True)):
        raise ValueError(f"padding {p} must be at most half the kernel size {k}")
    y = _unfold(pool3d(_fold(x), k[1:], s[1:], p[1:]), x.shape[2])
    if p[0]:
        y = F.pad(y, (0, 0, 0, 0, 0, 0, p[0], p[0]), value=float("-inf"))
    out = None
    for part in _time_windows(y, k[0], s[0]):
        out = part if out is None else torch.maximum(out, part)
    assert out is not None
    return out


def avg_pool4d(
    x: Tensor,
    kernel_size: IntOrQuad,
    stride: IntOrQuad | None = None,
    padding: IntOrQuad = 0,
    count_include_pad: bool = True,
) -> Tensor:
    """Mean over each window; padding counts as zeros, and in the divisor if ``count_include_pad``."""
    if x.dim() == 5:  # one unbatched sample, as avg_pool3d takes (C, D, H, W)
        return avg_pool4d(x.unsqueeze(0), kernel_size, stride, padding, count_include_pad).squeeze(0)
    _check(x, "avg_pool4d")
    k = quad(kernel_size, "kernel_size")
    s = k if stride is None else quad(stride, "stride")
    p = quad(padding, "padding")
    if any(pp > kk // 2 for pp, kk in zip(p, k, strict=True)):
        raise ValueError(f"padding {p} must be at most half the kernel size {k}")
    y = _unfold(F.avg_pool3d(_fold(x), k[1:], s[1:], p[1:], count_include_pad=count_include_pad), x.shape[2])
    t = x.shape[2]
    if p[0]:
        y = F.pad(y, (0, 0, 0, 0, 0, 0, p[0], p[0]))
    total = None
    for part in _time_windows(y, k[0], s[0]):
        total = part if total is None else total + part
    assert total is not None
    if count_include_pad or p[0] == 0:
        return total / k[0]
    # Divide each output time by how many of its frames are real, not padding.
    t_out = total.shape[2]
    counts = [min(i * s[0] - p[0] + k[0], t) - max(i * s[0] - p[0], 0) for i in range(t_out)]
    return total / torch.tensor(counts, dtype=total.dtype, device=total.device).reshape(1, 1, -1, 1, 1, 1)


def adaptive_avg_pool4d(x: Tensor, output_size: IntOrQuad) -> Tensor:
    """Mean over torch's adaptive bins: bin i of L covers [floor(i*L/out), ceil((i+1)*L/out))."""
    if x.dim() == 5:  # one unbatched sample, as adaptive_avg_pool3d takes (C, D, H, W)
        return adaptive_avg_pool4d(x.unsqueeze(0), output_size).squeeze(0)
    _check(x, "adaptive_avg_pool4d")
    o = quad(output_size, "output_size")
    t = x.shape[2]
    if o[0] == 1 and all(v == 1 for v in o[1:]):
        return x.mean(dim=(2, 3, 4, 5), keepdim=True)
    y = _unfold(F.adaptive_avg_pool3d(_fold(x), o[1:]), t)
    bins = [y[:, :, (i * t) // o[0] : -((-(i + 1) * t) // o[0])].mean(dim=2) for i in range(o[0])]
    return torch.stack(bins, dim=2)


class MaxPool4d(nn.Module):
    """4-D max pooling; ``stride`` defaults to ``kernel_size``."""

    def __init__(
        self, kernel_size: IntOrQuad, stride: IntOrQuad | None = None, padding: IntOrQuad = 0
    ) -> None:
        super().__init__()
        self.kernel_size = quad(kernel_size, "kernel_size")
        self.stride = self.kernel_size if stride is None else quad(stride, "stride")
        self.padding = quad(padding, "padding")

    def forward(self, x: Tensor) -> Tensor:
        return max_pool4d(x, self.kernel_size, self.stride, self.padding)

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}"


class AvgPool4d(nn.Module):
    """4-D average pooling; ``stride`` defaults to ``kernel_size``."""

    def __init__(
        self,
        kernel_size: IntOrQuad,
        stride: IntOrQuad | None = None,
        padding: IntOrQuad = 0,
        count_include_pad: bool = True,
    ) -> None:
        super().__init__()
        self.kernel_size = quad(kernel_size, "kernel_size")
        self.stride = self.kernel_size if stride is None else quad(stride, "stride")
        self.padding = quad(padding, "padding")
        self.count_include_pad = count_include_pad

    def forward(self, x: Tensor) -> Tensor:
        return avg_pool4d(x, self.kernel_size, self.stride, self.padding, self.count_include_pad)

    def extra_repr(self) -> str:
        return (
            f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}, "
            f"count_include_pad={self.count_include_pad}"
        )


class AdaptiveAvgPool4d(nn.Module):
    """4-D adaptive average pooling to a fixed (T, D, H, W) output size."""

    def __init__(self, output_size: IntOrQuad) -> None:
        super().__init__()
        self.output_size = quad(output_size, "output_size")

    def forward(self, x: Tensor) -> Tensor:
        return adaptive_avg_pool4d(x, self.output_size)

    def extra_repr(self) -> str:
        return f"output_size={self.output_size}"
