"""ConvTranspose4d, pools and BatchNorm4d against numpy references; the transpose as Conv4d's adjoint."""

from __future__ import annotations

import numpy as np
import pytest
import reference4d as ref
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from tesserad.nn import (
    AdaptiveAvgPool4d,
    AvgPool4d,
    BatchNorm4d,
    Conv4d,
    ConvTranspose4d,
    MaxPool4d,
    conv4d,
    conv_transpose4d,
)


@st.composite
def transpose_configs(draw: st.DrawFn) -> dict:
    groups = draw(st.sampled_from((1, 2)))
    kernel = tuple(draw(st.integers(1, 3)) for _ in range(4))
    stride = tuple(draw(st.integers(1, 2)) for _ in range(4))
    dilation = tuple(draw(st.integers(1, 2)) for _ in range(4))
    padding = tuple(draw(st.integers(0, 1)) for _ in range(4))
    output_padding = tuple(draw(st.integers(0, max(s, d) - 1)) for s, d in zip(stride, dilation, strict=True))
    size = tuple(draw(st.integers(1, 3)) for _ in range(4))
    for i in range(4):
        out = (
            (size[i] - 1) * stride[i] - 2 * padding[i] + dilation[i] * (kernel[i] - 1) + output_padding[i] + 1
        )
        assume(out >= 1)
    return {
        "n": draw(st.integers(1, 2)),
        "c_in": groups * draw(st.integers(1, 2)),
        "c_out_per_group": draw(st.integers(1, 2)),
        "size": size,
        "kernel": kernel,
        "stride": stride,
        "padding": padding,
        "output_padding": output_padding,
        "dilation": dilation,
        "groups": groups,
        "bias": draw(st.booleans()),
    }


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.filter_too_much])
@given(transpose_configs())
def test_conv_transpose_matches_the_scatter_definition(cfg: dict) -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(cfg["n"], cfg["c_in"], *cfg["size"], generator=g, dtype=torch.float64)
    w = torch.randn(cfg["c_in"], cfg["c_out_per_group"], *cfg["kernel"], generator=g, dtype=torch.float64)
    b = (
        torch.randn(cfg["c_out_per_group"] * cfg["groups"], generator=g, dtype=torch.float64)
        if cfg["bias"]
        else None
    )
    got = conv_transpose4d(
        x, w, b, cfg["stride"], cfg["padding"], cfg["output_padding"], cfg["groups"], cfg["dilation"]
    )
    expected = ref.conv_transpose4d(
        x.numpy(),
        w.numpy(),
        None if b is None else b.numpy(),
        cfg["stride"],
        cfg["padding"],
        cfg["output_padding"],
        cfg["dilation"],
        cfg["groups"],
    )
    assert got.dtype == torch.float64
    np.testing.assert_allclose(got.numpy(), expected, atol=1e-10)


@pytest.mark.parametrize(
    ("stride", "padding", "dilation", "groups"),
    [
        ((1, 1, 1, 1), (1, 1, 1, 1), (1, 1, 1, 1), 1),
        ((2, 1, 2, 1), (1, 0, 1, 0), (1, 2, 1, 1), 2),
        ((3, 2, 1, 1), (0, 1, 0, 1), (2, 1, 1, 2), 1),
    ],
)
def test_conv_transpose_is_the_adjoint_of_conv(
    stride: tuple, padding: tuple, dilation: tuple, groups: int
) -> None:
    # <conv(x), y> == <x, conv_transpose(y)> for the same weight; output_padding restores x's size.
    g = torch.Generator().manual_seed(3)
    c_in, c_out, size, kernel = 2 * groups, 2 * groups, (7, 6, 5, 6), (3, 2, 3, 2)
    x = torch.randn(2, c_in, *size, generator=g, dtype=torch.float64)
    w = torch.randn(c_out, c_in // groups, *kernel, generator=g, dtype=torch.float64)
    y_shape = conv4d(x, w, None, stride, padding, dilation, groups).shape
    y = torch.randn(y_shape, generator=g, dtype=torch.float64)
    output_padding = tuple(
        size[i] - ((y_shape[2 + i] - 1) * stride[i] - 2 * padding[i] + dilation[i] * (kernel[i] - 1) + 1)
        for i in range(4)
    )
    xt = conv_transpose4d(y, w, None, stride, padding, output_padding, groups, dilation)
    assert xt.shape == x.shape
    lhs = (conv4d(x, w, None, stride, padding, dilation, groups) * y).sum()
    rhs = (x * xt).sum()
    assert lhs.item() == pytest.approx(rhs.item(), rel=1e-10)


def test_conv_transpose_gradients() -> None:
    g = torch.Generator().manual_seed(4)
    layer = ConvTranspose4d(
        2,
        4,
        (2, 3, 1, 2),
        stride=(2, 1, 1, 2),
        padding=(1, 1, 0, 0),
        output_padding=(1, 0, 0, 1),
        groups=2,
        dtype=torch.float64,
    )
    x = torch.randn(1, 2, 3, 3, 2, 2, generator=g, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda x, w, b: conv_transpose4d(x, w, b, (2, 1, 1, 2), (1, 1, 0, 0), (1, 0, 0, 1), 2),
        (x, layer.weight, layer.bias),
        fast_mode=True,
    )


def test_conv_transpose_rejects_a_large_output_padding() -> None:
    with pytest.raises(ValueError, match="output_padding"):
        conv_transpose4d(torch.randn(1, 2, 3, 3, 3, 3), torch.randn(2, 2, 3, 3, 3, 3), output_padding=1)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.filter_too_much])
@given(
    kernel=st.tuples(*(st.integers(1, 3) for _ in range(4))),
    stride=st.tuples(*(st.integers(1, 2) for _ in range(4))),
    pad=st.tuples(*(st.integers(0, 1) for _ in range(4))),
    extra=st.tuples(*(st.integers(0, 2) for _ in range(4))),
    kind=st.sampled_from(("max", "avg", "avg_exclude_pad")),
)
def test_pools_match_the_reference(kernel: tuple, stride: tuple, pad: tuple, extra: tuple, kind: str) -> None:
    padding = tuple(min(p, k // 2) for p, k in zip(pad, kernel, strict=True))
    # torch's 3-D pools reject a window larger than the unpadded input, so sizes start at the kernel
    size = tuple(k + e for k, e in zip(kernel, extra, strict=True))
    x = torch.randn(2, 3, *size, dtype=torch.float64)
    if kind == "max":
        got = MaxPool4d(kernel, stride, padding)(x)
    else:
        got = AvgPool4d(kernel, stride, padding, count_include_pad=kind == "avg")(x)
    expected = ref.pool4d(x.numpy(), kernel, stride, padding, kind[:3], count_include_pad=kind == "avg")
    np.testing.assert_allclose(got.numpy(), expected, atol=1e-12)


@pytest.mark.parametrize("output_size", [(1, 1, 1, 1), (2, 3, 1, 2), (3, 2, 2, 3)])
def test_adaptive_avg_pool_matches_torch_bins(output_size: tuple) -> None:
    x = torch.randn(2, 3, 5, 4, 3, 5, dtype=torch.float64)
    got = AdaptiveAvgPool4d(output_size)(x)
    np.testing.assert_allclose(got.numpy(), ref.adaptive_avg_pool4d(x.numpy(), output_size), atol=1e-12)


def test_pool_gradients() -> None:
    x = torch.randn(1, 1, 3, 3, 2, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(AvgPool4d(2, 1, 1, count_include_pad=False), (x,), fast_mode=True)
    assert torch.autograd.gradcheck(AdaptiveAvgPool4d((2, 2, 1, 2)), (x,), fast_mode=True)
    # distinct values so the max is unique and differentiable
    xm = (torch.randperm(54).reshape(1, 1, 3, 3, 2, 3).double() / 10).requires_grad_(True)
    assert torch.autograd.gradcheck(MaxPool4d(2, (1, 2, 1, 2), 1), (xm,), fast_mode=True)


def test_pool_padding_larger_than_half_the_kernel_is_rejected() -> None:
    with pytest.raises(ValueError, match="half the kernel"):
        MaxPool4d(2, padding=2)(torch.randn(1, 1, 4, 4, 4, 4))


def test_batch_norm_matches_the_reference_and_tracks_running_stats() -> None:
    bn = BatchNorm4d(3, dtype=torch.float64)
    with torch.no_grad():
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.uniform_(-1, 1)
    x = torch.randn(4, 3, 3, 2, 3, 2, dtype=torch.float64) * 2 + 1
    out = bn(x)
    expected = ref.batch_norm4d(x.numpy(), bn.weight.detach().numpy(), bn.bias.detach().numpy(), bn.eps)
    np.testing.assert_allclose(out.detach().numpy(), expected, atol=1e-10)
    mean = x.mean(dim=(0, 2, 3, 4, 5))
    torch.testing.assert_close(bn.running_mean, 0.1 * mean)
    bn.eval()
    shape = (1, -1, 1, 1, 1, 1)
    expected_eval = (x - bn.running_mean.reshape(shape)) / torch.sqrt(bn.running_var.reshape(shape) + bn.eps)
    expected_eval = expected_eval * bn.weight.reshape(shape) + bn.bias.reshape(shape)
    torch.testing.assert_close(bn(x), expected_eval)
    with pytest.raises(ValueError, match="N, C, T, D, H, W"):
        bn(torch.randn(2, 3, 4, 4, 4))


@pytest.mark.parametrize(
    "layer",
    [
        ConvTranspose4d(2, 4, 3, stride=(2, 1, 1, 2), padding=1, output_padding=(1, 0, 0, 0), groups=2),
        MaxPool4d(2, padding=1),
        AvgPool4d((2, 1, 2, 2), count_include_pad=False, padding=(1, 0, 1, 1)),
        AdaptiveAvgPool4d((2, 3, 1, 2)),
    ],
    ids=lambda layer: type(layer).__name__,
)
def test_unbatched_input_is_one_sample_as_the_3d_layers_take_it(layer: torch.nn.Module) -> None:
    # ConvTranspose3d and the 3-D pools take one unbatched (C, D, H, W) sample.
    x = torch.randn(2, 3, 4, 3, 5, dtype=torch.float64)
    layer = layer.double()
    out = layer(x)
    torch.testing.assert_close(out, layer(x.unsqueeze(0)).squeeze(0), rtol=0, atol=0)
    with pytest.raises(ValueError, match=r"\(N, C, T, D, H, W\) or unbatched \(C, T, D, H, W\), got shape"):
        layer(torch.randn(2, 3, 4, 3, dtype=torch.float64))


@pytest.mark.parametrize("layer", [Conv4d, ConvTranspose4d])
@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"kernel_size": 0}, "kernel_size must be >= 1 in every dimension, got (0, 0, 0, 0)"),
        ({"kernel_size": (3, 0, 2, 2)}, "kernel_size must be >= 1 in every dimension, got (3, 0, 2, 2)"),
        (
            {"kernel_size": 3, "stride": (1, -1, 1, 1)},
            "stride must be >= 1 in every dimension, got (1, -1, 1, 1)",
        ),
        (
            {"kernel_size": 3, "dilation": (1, 1, 0, 1)},
            "dilation must be >= 1 in every dimension, got (1, 1, 0, 1)",
        ),
    ],
)
def test_a_layer_refuses_a_kernel_stride_or_dilation_below_1_showing_the_values(
    layer: type, kwargs: dict, message: str
) -> None:
    with pytest.raises(ValueError, match=r"must be >= 1 in every dimension") as raised:
        layer(2, 4, **kwargs)
    assert str(raised.value) == message


def test_layer_reprs_show_what_torchs_conv3d_shows_only_non_defaults() -> None:
    assert repr(Conv4d(2, 4, 3)) == "Conv4d(2, 4, kernel_size=(3, 3, 3, 3), stride=(1, 1, 1, 1))"
    assert (
        repr(ConvTranspose4d(2, 4, 3))
        == "ConvTranspose4d(2, 4, kernel_size=(3, 3, 3, 3), stride=(1, 1, 1, 1))"
    )
    every = Conv4d(
        2,
        4,
        3,
        padding="same",
        dilation=2,
        groups=2,
        bias=False,
        padding_mode="circular",
        algorithm="tap_loop",
    )
    assert repr(every) == (
        "Conv4d(2, 4, kernel_size=(3, 3, 3, 3), stride=(1, 1, 1, 1), padding=same, dilation=(2, 2, 2, 2), "
        "groups=2, bias=False, padding_mode=circular, algorithm=tap_loop)"
    )
    assert repr(Conv4d(2, 4, 3, padding=1)).endswith("padding=(1, 1, 1, 1))")
    transposed = ConvTranspose4d(
        2, 4, 3, stride=2, padding=1, output_padding=1, groups=2, bias=False, dilation=2
    )
    assert repr(transposed) == (
        "ConvTranspose4d(2, 4, kernel_size=(3, 3, 3, 3), stride=(2, 2, 2, 2), padding=(1, 1, 1, 1), "
        "dilation=(2, 2, 2, 2), output_padding=(1, 1, 1, 1), groups=2, bias=False)"
    )
