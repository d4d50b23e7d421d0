"""Conv4d beside torch.nn.Conv3d: the input forms, argument checks and torch machinery
(tracing, compiling, double backward, copying) a Conv3d user relies on."""

from __future__ import annotations

import copy
import io
import pickle

import pytest
import torch
import torch.nn.functional as F

from tesserad.nn import ALGORITHMS, Conv4d, conv4d


def _conv3d_sum(
    x: torch.Tensor,
    w: torch.Tensor,
    b: torch.Tensor | None,
    stride: tuple[int, int, int, int],
    padding: tuple[int, int, int, int],
    dilation: tuple[int, int, int, int],
    groups: int,
) -> torch.Tensor:
    """The float64 reference: per output frame, conv3d summed over the time taps."""
    x, w = x.double(), w.double()
    x = F.pad(x, (0, 0, 0, 0, 0, 0, padding[0], padding[0]))
    kt = w.shape[2]
    t_out = (x.shape[2] - dilation[0] * (kt - 1) - 1) // stride[0] + 1
    frames = []
    for t in range(t_out):
        taps = (
            F.conv3d(
                x[:, :, t * stride[0] + i * dilation[0]],
                w[:, :, i],
                None,
                stride[1:],
                padding[1:],
                dilation[1:],
                groups,
            )
            for i in range(kt)
        )
        frames.append(torch.stack(list(taps)).sum(0))
    out = torch.stack(frames, dim=2)
    return out if b is None else out + b.double().reshape(1, -1, 1, 1, 1, 1)


def _odd_layer() -> Conv4d:
    """Every argument away from its default, on odd sizes."""
    torch.manual_seed(0)
    return Conv4d(
        4, 6, (3, 2, 3, 1), stride=(2, 1, 2, 1), padding=(1, 0, 1, 0), dilation=(1, 2, 1, 1), groups=2
    ).double()


def _odd_reference(layer: Conv4d, x: torch.Tensor) -> torch.Tensor:
    return _conv3d_sum(
        x, layer.weight.detach(), layer.bias.detach(), (2, 1, 2, 1), (1, 0, 1, 0), (1, 2, 1, 1), 2
    )


def _layouts(x: torch.Tensor) -> dict[str, torch.Tensor]:
    """``x`` (N, C, T, D, H, W) with the same values in the memory layouts a caller may hand over."""
    strided = torch.zeros(*x.shape[:2], 2 * x.shape[2], *x.shape[3:], dtype=x.dtype)
    strided[:, :, ::2] = x
    return {
        "contiguous": x,
        "channels last": x.permute(0, 2, 3, 4, 5, 1).contiguous().permute(0, 5, 1, 2, 3, 4),
        "H and W swapped": x.transpose(4, 5).contiguous().transpose(4, 5),
        "every second frame": strided[:, :, ::2],
        "broadcast batch": x[:1].expand(x.shape[0], *x.shape[1:]),
    }


@pytest.mark.parametrize("algorithm", [*ALGORITHMS, "auto"])
def test_every_memory_layout_gives_the_same_output_and_gradient(algorithm: str) -> None:
    layer = _odd_layer()
    layer.algorithm = algorithm  # type: ignore[assignment]
    x = torch.randn(2, 4, 6, 5, 7, 5, dtype=torch.float64)
    for name, given in _layouts(x).items():
        leaf = given.detach().requires_grad_(name != "broadcast batch")
        expected_x = x[:1].expand_as(x) if name == "broadcast batch" else x
        out = layer(leaf)
        torch.testing.assert_close(out, _odd_reference(layer, expected_x), rtol=0, atol=1e-10, msg=name)
        if leaf.requires_grad:
            upstream = torch.randn(out.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
            (got,) = torch.autograd.grad(out, leaf, upstream)
            reference_leaf = x.clone().requires_grad_()
            (expected,) = torch.autograd.grad(_odd_reference(layer, reference_leaf), reference_leaf, upstream)
            torch.testing.assert_close(got, expected, rtol=0, atol=1e-10, msg=name)


@pytest.mark.parametrize("algorithm", [*ALGORITHMS, "auto"])
def test_an_empty_batch_runs_forward_and_backward(algorithm: str) -> None:
    # Conv3d takes N = 0 (the last, empty shard of a split batch); auto trains with time_fold.
    layer = Conv4d(4, 6, 3, padding=1, groups=2, algorithm=algorithm)  # type: ignore[arg-type]
    x = torch.randn(0, 4, 5, 4, 4, 4, requires_grad=True)
    out = layer(x)
    assert out.shape == (0, 6, 5, 4, 4, 4)
    out.sum().backward()
    assert x.grad is not None and x.grad.shape == x.shape
    assert layer.weight.grad is not None and not layer.weight.grad.any()
    assert layer.bias is not None and layer.bias.grad is not None and not layer.bias.grad.any()


def test_unbatched_input_is_one_sample_as_conv3d_takes_it() -> None:
    layer = _odd_layer()
    x = torch.randn(4, 6, 5, 7, 5, dtype=torch.float64, requires_grad=True)
    out = layer(x)
    assert out.shape == (6, 3, 3, 4, 5)
    torch.testing.assert_close(out, layer(x.unsqueeze(0)).squeeze(0), rtol=0, atol=0)
    out.sum().backward()
    assert x.grad is not None and x.grad.shape == x.shape
    for shape in ((4, 4, 4, 4), (1, 1, 4, 4, 4, 4, 4)):
        with pytest.raises(
            ValueError, match=r"\(N, C, T, D, H, W\) or unbatched \(C, T, D, H, W\), got shape"
        ):
            layer(torch.randn(shape, dtype=torch.float64))
    with pytest.raises(
        ValueError, match=r"input of shape \(4, 6, 1, 7, 5\) is smaller than the dilated kernel"
    ):
        layer(torch.randn(4, 6, 1, 7, 5, dtype=torch.float64))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"stride": 0}, r"stride must be >= 1 in every dimension, got \(0, 0, 0, 0\)"),
        ({"stride": (1, -1, 1, 1)}, r"stride must be >= 1 in every dimension, got \(1, -1, 1, 1\)"),
        ({"dilation": (1, 1, 0, 1)}, r"dilation must be >= 1 in every dimension, got \(1, 1, 0, 1\)"),
        ({"groups": 0}, "groups must be >= 1, got 0"),
        (
            {"weight": torch.randn(4, 2, 3, 3, 3)},
            r"weight \(C_out, C_in/groups, kT, kD, kH, kW\), got shape \(4, 2, 3, 3, 3\)",
        ),
        (
            {"weight": torch.randn(4, 2, 0, 3, 3, 3)},
            r"kernel must be >= 1 in every dimension, got \(0, 3, 3, 3\)",
        ),
        (
            {"weight": torch.randn(3, 1, 3, 3, 3, 3), "groups": 2},
            "3 output channels, not divisible by groups=2",
        ),
        ({"bias": torch.randn(1)}, r"bias of shape \(4,\) \(one per output channel\), got \(1,\)"),
        (
            {"bias": torch.randn(4, dtype=torch.float64)},
            r"bias dtype torch\.float64 does not match weight dtype",
        ),
    ],
)
def test_functional_conv4d_rejects_bad_arguments_like_conv3d(kwargs: dict, match: str) -> None:
    # Before any formulation runs: out_stack broadcast a one-element bias, time_fold cast a float64
    # one, stride 0 divided by zero.
    args = {"x": torch.randn(1, 2, 5, 5, 5, 5), "weight": torch.randn(4, 2, 3, 3, 3, 3)} | kwargs
    for algorithm in (*ALGORITHMS, "auto"):
        with pytest.raises(ValueError, match=match):
            conv4d(**args, algorithm=algorithm)


def test_double_backward_matches_or_says_which_algorithm_supports_it() -> None:
    # A gradient penalty differentiates the input's gradient again. The formulations in plain
    # ops support that like conv3d does; time_fold's hand-written backward (auto's choice for
    # training) refuses instead of returning second derivatives that miss terms.
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 2, 3, 2, 3, 2, dtype=torch.float64, requires_grad=True, generator=g)
    w = torch.randn(2, 2, 2, 1, 2, 2, dtype=torch.float64, requires_grad=True, generator=g)
    b = torch.randn(2, dtype=torch.float64, requires_grad=True, generator=g)
    for algorithm in ALGORITHMS:
        if algorithm == "time_fold":
            continue
        assert torch.autograd.gradgradcheck(
            lambda x, w, b, a=algorithm: conv4d(x, w, b, 1, 1, algorithm=a), (x, w, b), fast_mode=True
        ), algorithm
    for algorithm in ("time_fold", "auto"):
        out = conv4d(x, w, b, 1, 1, algorithm=algorithm)  # type: ignore[arg-type]
        with pytest.raises(RuntimeError, match=r"cannot be differentiated twice.*algorithm=.tap_loop."):
            torch.autograd.grad(out.square().sum(), x, create_graph=True)
        (first,) = torch.autograd.grad(out.square().sum(), x)  # once is fine
        assert first.shape == x.shape


# Tracing warns that shapes become constants, as it does for conv3d.
@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")
def test_jit_trace_gives_eagers_output_and_gradients() -> None:
    layer = _odd_layer()
    x = torch.randn(2, 4, 6, 5, 7, 5, dtype=torch.float64, requires_grad=True)
    traced = torch.jit.trace(layer, x, check_trace=False)
    y = torch.randn(2, 4, 6, 5, 7, 5, dtype=torch.float64, requires_grad=True)
    out = traced(y)
    torch.testing.assert_close(out, _odd_reference(layer, y.detach()), rtol=0, atol=1e-10)
    out.sum().backward()
    expected = y.detach().clone().requires_grad_()
    layer(expected).sum().backward()
    assert y.grad is not None
    torch.testing.assert_close(y.grad, expected.grad, rtol=0, atol=1e-10)


@pytest.mark.parametrize("padding_mode", ["zeros", "reflect"])
def test_torch_compile_takes_the_layer_as_one_graph(padding_mode: str) -> None:
    # fullgraph: a graph break inside conv4d would split every model built from it.
    torch._dynamo.reset()
    layer = Conv4d(3, 4, 3, padding=1, padding_mode=padding_mode).double()  # type: ignore[arg-type]
    compiled = torch.compile(layer, backend="aot_eager", fullgraph=True)
    x = torch.randn(2, 3, 5, 4, 4, 4, dtype=torch.float64, requires_grad=True)
    out = compiled(x)
    out.sum().backward()
    expected = x.detach().clone().requires_grad_()
    eager = layer(expected)
    eager.sum().backward()
    torch.testing.assert_close(out, eager, rtol=0, atol=1e-10)
    assert x.grad is not None
    torch.testing.assert_close(x.grad, expected.grad, rtol=0, atol=1e-10)


def test_state_dict_deepcopy_and_pickle_keep_the_layer() -> None:
    arguments = {
        "stride": (2, 1, 1, 2),
        "padding": "valid",
        "groups": 2,
        "bias": False,
        "algorithm": "tap_loop",
    }
    layer = Conv4d(4, 6, (3, 1, 2, 3), padding_mode="circular", **arguments)  # type: ignore[arg-type]
    x = torch.randn(1, 4, 5, 3, 4, 5)
    expected = layer(x)
    assert list(layer.state_dict()) == ["weight"]
    fresh = Conv4d(4, 6, (3, 1, 2, 3), **arguments)  # type: ignore[arg-type]
    fresh.load_state_dict(layer.state_dict())
    torch.testing.assert_close(fresh(x), expected, rtol=0, atol=0)
    buffer = io.BytesIO()
    torch.save(layer, buffer)
    buffer.seek(0)
    for twin in (
        copy.deepcopy(layer),
        pickle.loads(pickle.dumps(layer)),
        torch.load(buffer, weights_only=False),
    ):
        assert repr(twin) == repr(layer)
        torch.testing.assert_close(twin(x), expected, rtol=0, atol=0)


def test_no_grad_inference_mode_and_deterministic_mode_agree() -> None:
    layer = _odd_layer()
    x = torch.randn(2, 4, 6, 5, 7, 5, dtype=torch.float64)
    expected = _odd_reference(layer, x)
    with torch.no_grad():
        torch.testing.assert_close(layer(x), expected, rtol=0, atol=1e-10)
    with torch.inference_mode():
        out = layer(x)
    assert out.is_inference()
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-10)
    previous = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        runs = []
        for _ in range(2):
            leaf = x.clone().requires_grad_()
            out = layer(leaf)
            out.square().sum().backward()
            runs.append((out.detach(), leaf.grad))
        torch.testing.assert_close(runs[0], runs[1], rtol=0, atol=0)
    finally:
        torch.use_deterministic_algorithms(previous)
