"""Conv4d against a brute-force numpy reference, its gradients, and the public implementations' bugs."""

from __future__ import annotations

import math

import numpy as np
import pytest
import reference4d as ref
import torch
from conv4d_cases import CASES
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from tesserad.nn import ALGORITHMS, Conv4d, benchmark, benchmark_cache, clear_benchmark_cache, conv4d
from tesserad.nn.conv import heuristic_algorithm

MODES = ("zeros", "reflect", "replicate", "circular")


@st.composite
def conv_configs(draw: st.DrawFn) -> dict:
    groups = draw(st.sampled_from((1, 2)))
    kernel = tuple(draw(st.integers(1, 3)) for _ in range(4))
    dilation = tuple(draw(st.integers(1, 2)) for _ in range(4))
    padding_kind = draw(st.sampled_from(("int", "same", "valid")))
    stride = (1, 1, 1, 1) if padding_kind == "same" else tuple(draw(st.integers(1, 2)) for _ in range(4))
    if padding_kind == "same":
        padding: object = "same"
        pads = ref.same_pads(kernel, dilation)
    elif padding_kind == "valid":
        padding, pads = "valid", [(0, 0)] * 4
    else:
        padding = tuple(draw(st.integers(0, 2)) for _ in range(4))
        pads = [(p, p) for p in padding]
    mode = draw(st.sampled_from(MODES))
    size = tuple(draw(st.integers(2, 5)) for _ in range(4))
    for s, (lo, hi), k, d in zip(size, pads, kernel, dilation, strict=True):
        assume(s + lo + hi >= d * (k - 1) + 1)
        assume(mode != "reflect" or max(lo, hi) < s)
        assume(mode != "circular" or max(lo, hi) <= s)
    return {
        "n": draw(st.integers(1, 2)),
        "c_in": groups * draw(st.integers(1, 2)),
        "c_out": groups * draw(st.integers(1, 2)),
        "size": size,
        "kernel": kernel,
        "stride": stride,
        "dilation": dilation,
        "padding": padding,
        "pads": pads,
        "groups": groups,
        "mode": mode,
        "bias": draw(st.booleans()),
    }


def _tensors(cfg: dict, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(cfg["n"], cfg["c_in"], *cfg["size"], generator=g, dtype=torch.float64)
    w = torch.randn(
        cfg["c_out"], cfg["c_in"] // cfg["groups"], *cfg["kernel"], generator=g, dtype=torch.float64
    )
    b = torch.randn(cfg["c_out"], generator=g, dtype=torch.float64) if cfg["bias"] else None
    return x, w, b


def _reference(cfg: dict, x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None) -> np.ndarray:
    return ref.conv4d(
        x.numpy(),
        w.numpy(),
        None if b is None else b.numpy(),
        cfg["stride"],
        cfg["pads"],
        cfg["dilation"],
        cfg["groups"],
        cfg["mode"],
    )


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.filter_too_much])
@given(conv_configs())
def test_every_algorithm_matches_the_direct_sum(cfg: dict) -> None:
    x, w, b = _tensors(cfg)
    expected = _reference(cfg, x, w, b)
    for algorithm in (*ALGORITHMS, "auto"):
        got = conv4d(
            x, w, b, cfg["stride"], cfg["padding"], cfg["dilation"], cfg["groups"], cfg["mode"], algorithm
        )
        assert got.dtype == torch.float64
        np.testing.assert_allclose(got.numpy(), expected, atol=1e-10, err_msg=algorithm)


GRAD_CASES = [
    # (c_in, c_out, size, kernel, stride, padding, dilation, groups, mode)
    (2, 2, (4, 3, 3, 3), (2, 2, 1, 2), (1, 1, 1, 1), "same", (1, 1, 1, 1), 1, "zeros"),
    (2, 4, (5, 3, 4, 3), (3, 2, 2, 1), (2, 1, 2, 1), (1, 0, 1, 0), (1, 1, 1, 1), 2, "reflect"),
    (2, 2, (5, 4, 3, 3), (2, 2, 2, 2), (1, 1, 1, 1), (1, 1, 0, 1), (2, 1, 1, 1), 1, "circular"),
    (1, 2, (3, 3, 3, 3), (3, 1, 3, 1), (1, 2, 1, 1), (2, 0, 1, 0), (1, 1, 1, 1), 1, "replicate"),
]


@pytest.mark.parametrize("algorithm", ALGORITHMS)
@pytest.mark.parametrize("case", GRAD_CASES, ids=lambda c: f"{c[8]}-g{c[7]}")
def test_gradients_match_finite_differences(algorithm: str, case: tuple) -> None:
    c_in, c_out, size, kernel, stride, padding, dilation, groups, mode = case
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, c_in, *size, generator=g, dtype=torch.float64, requires_grad=True)
    w = torch.randn(c_out, c_in // groups, *kernel, generator=g, dtype=torch.float64, requires_grad=True)
    b = torch.randn(c_out, generator=g, dtype=torch.float64, requires_grad=True)

    def f(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return conv4d(x, w, b, stride, padding, dilation, groups, mode, algorithm)

    assert torch.autograd.gradcheck(f, (x, w, b), fast_mode=True)


def test_gradients_full_jacobian_time_fold() -> None:
    g = torch.Generator().manual_seed(2)
    x = torch.randn(1, 2, 3, 3, 2, 2, generator=g, dtype=torch.float64, requires_grad=True)
    w = torch.randn(2, 2, 2, 2, 1, 2, generator=g, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, w: conv4d(x, w, None, 1, "same", algorithm="time_fold"), (x, w))


@pytest.mark.parametrize("kernel_t", [2, 4])
def test_even_time_kernels_align_frames_like_the_reference(kernel_t: int) -> None:
    cfg = {
        "n": 1,
        "c_in": 2,
        "c_out": 3,
        "size": (7, 3, 3, 3),
        "kernel": (kernel_t, 1, 3, 1),
        "stride": (1, 1, 1, 1),
        "dilation": (1, 1, 1, 1),
        "padding": "same",
        "groups": 1,
        "mode": "zeros",
        "bias": True,
        "pads": ref.same_pads((kernel_t, 1, 3, 1), (1, 1, 1, 1)),
    }
    x, w, b = _tensors(cfg)
    layer = Conv4d(2, 3, (kernel_t, 1, 3, 1), padding="same", dtype=torch.float64)
    with torch.no_grad():
        layer.weight.copy_(w)
        layer.bias.copy_(b)
    out = layer(x)
    assert out.shape == (1, 3, 7, 3, 3, 3)
    np.testing.assert_allclose(out.detach().numpy(), _reference(cfg, x, w, b), atol=1e-10)


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_bias_is_added_once_not_per_tap(algorithm: str) -> None:
    layer = Conv4d(2, 3, 3, padding=1, algorithm=algorithm)  # type: ignore[arg-type]
    with torch.no_grad():
        layer.weight.zero_()
    out = layer(torch.randn(2, 2, 4, 4, 4, 4))
    expected = layer.bias.detach().reshape(1, 3, 1, 1, 1, 1).expand_as(out)
    torch.testing.assert_close(out.detach(), expected, rtol=0, atol=0)


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_float64_stays_float64(algorithm: str) -> None:
    layer = Conv4d(2, 2, 3, padding=1, algorithm=algorithm).double()  # type: ignore[arg-type]
    x = torch.randn(1, 2, 3, 3, 3, 3, dtype=torch.float64)
    out = layer(x)
    assert out.dtype == torch.float64
    expected = ref.conv4d(
        x.numpy(),
        layer.weight.detach().numpy(),
        layer.bias.detach().numpy(),
        (1,) * 4,
        [(1, 1)] * 4,
        (1,) * 4,
        1,
    )
    np.testing.assert_allclose(out.detach().numpy(), expected, rtol=0, atol=1e-12)


def test_depthwise_groups() -> None:
    layer = Conv4d(4, 8, 3, padding=1, groups=4, dtype=torch.float64)
    x = torch.randn(2, 4, 3, 3, 3, 3, dtype=torch.float64)
    expected = ref.conv4d(
        x.numpy(),
        layer.weight.detach().numpy(),
        layer.bias.detach().numpy(),
        (1,) * 4,
        [(1, 1)] * 4,
        (1,) * 4,
        4,
    )
    np.testing.assert_allclose(layer(x).detach().numpy(), expected, atol=1e-10)


def test_initialisation_matches_torch_convnd() -> None:
    torch.manual_seed(0)
    for _ in range(20):
        layer = Conv4d(3, 5, (2, 3, 1, 3))
        fan_in = 3 * 2 * 3 * 1 * 3
        bound = 1 / math.sqrt(fan_in)
        assert torch.isfinite(layer.weight).all() and torch.isfinite(layer.bias).all()
        assert layer.weight.abs().max() <= bound and layer.bias.abs().max() <= bound
    big = Conv4d(16, 32, 3)
    bound = 1 / math.sqrt(16 * 81)
    assert big.weight.std().item() == pytest.approx(bound / math.sqrt(3), rel=0.05)
    reference_3d = torch.nn.Conv3d(16, 32, 3)
    assert reference_3d.weight.abs().max() <= 1 / math.sqrt(16 * 27)


def test_output_has_no_nans_without_bias_or_with_it() -> None:
    for bias in (True, False):
        out = Conv4d(2, 2, 3, bias=bias)(torch.randn(1, 2, 3, 3, 3, 3))
        assert torch.isfinite(out).all()


def test_benchmark_mode_measures_once_per_shape_and_caches(monkeypatch: pytest.MonkeyPatch) -> None:
    import tesserad.nn.conv as module

    calls = []
    real = module._measure

    def counting(*args: object) -> str:
        calls.append(1)
        return real(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(module, "_measure", counting)
    clear_benchmark_cache()
    x = torch.randn(1, 2, 4, 4, 4, 4, dtype=torch.float64)
    w = torch.randn(3, 2, 3, 3, 3, 3, dtype=torch.float64)
    with benchmark():
        first = conv4d(x, w, None, 1, 1)
        second = conv4d(x, w, None, 1, 1)
        conv4d(x[:, :, :3], w, None, 1, 1)
    assert len(calls) == 2
    cache = benchmark_cache()
    assert len(cache) == 2 and set(cache.values()) <= set(ALGORITHMS)
    torch.testing.assert_close(first, second)
    expected = ref.conv4d(x.numpy(), w.numpy(), None, (1,) * 4, [(1, 1)] * 4, (1,) * 4, 1)
    np.testing.assert_allclose(first.numpy(), expected, atol=1e-10)
    conv4d(x, w, None, 1, 1)  # outside the block: heuristic, no measurement
    assert len(calls) == 2
    clear_benchmark_cache()


def test_benchmark_mode_with_gradients() -> None:
    clear_benchmark_cache()
    x = torch.randn(1, 2, 3, 3, 3, 3, requires_grad=True)
    layer = Conv4d(2, 2, 3, padding=1)
    with benchmark():
        layer(x).sum().backward()
    assert x.grad is not None and layer.weight.grad is not None
    assert next(iter(benchmark_cache()))[-3] is True  # keyed as a training call
    clear_benchmark_cache()


def test_heuristic_follows_the_measurements() -> None:
    # bench/results/conv4d_cpu.json: stacked taps win every training call and every unstrided
    # forward (their folded input from the scratch pool); the loop wins a strided forward.
    assert heuristic_algorithm(3, 1, needs_grad=True) == "time_fold"
    assert heuristic_algorithm(3, 2, needs_grad=True) == "time_fold"
    assert heuristic_algorithm(3, 2, needs_grad=False) == "loop"
    assert heuristic_algorithm(3, 1, needs_grad=False) == "time_fold"
    # ... unless the folded input takes the forward's peak memory past 1.5x the loop's (B)
    assert heuristic_algorithm(3, 1, needs_grad=False, peak_ratio=1.67) == "loop"
    assert heuristic_algorithm(3, 1, needs_grad=True, peak_ratio=1.67) == "time_fold"
    assert heuristic_algorithm(1, 2, needs_grad=False) == "time_fold"
    for stride in (1, 2):  # on CUDA the stacked taps, always
        assert heuristic_algorithm(3, stride, False, 1.67, device_type="cuda") == "time_fold"


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"groups": 3}, "groups"),
        ({"padding": "same", "stride": 2}, "same"),
        ({"kernel_size": (3, 3, 3)}, "4-tuple"),
        ({"padding_mode": "mirror"}, "padding_mode"),
        ({"algorithm": "fft"}, "algorithm"),
        ({"kernel_size": 0}, ">= 1"),
    ],
)
def test_bad_layer_arguments_are_rejected(kwargs: dict, match: str) -> None:
    args = {"in_channels": 2, "out_channels": 4, "kernel_size": 3} | kwargs
    with pytest.raises(ValueError, match=match):
        Conv4d(**args)


def test_bad_inputs_are_rejected() -> None:
    layer = Conv4d(2, 2, 3)
    with pytest.raises(ValueError, match="N, C, T, D, H, W"):
        layer(torch.randn(2, 4, 4, 4))
    with pytest.raises(ValueError, match="channels"):
        layer(torch.randn(1, 3, 4, 4, 4, 4))
    with pytest.raises(ValueError, match="smaller than the dilated kernel"):
        layer(torch.randn(1, 2, 2, 4, 4, 4))
    with pytest.raises(ValueError, match="too large"):
        Conv4d(2, 2, 3, padding=3, padding_mode="reflect")(torch.randn(1, 2, 3, 3, 3, 3))


def test_functional_and_module_agree() -> None:
    layer = Conv4d(2, 3, (3, 1, 2, 3), stride=(2, 1, 1, 2), padding=(1, 0, 1, 1), padding_mode="circular")
    x = torch.randn(2, 2, 5, 3, 4, 5)
    expected = conv4d(x, layer.weight, layer.bias, (2, 1, 1, 2), (1, 0, 1, 1), 1, 1, "circular", "loop")
    torch.testing.assert_close(layer(x), expected)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_cuda_matches_cpu(algorithm: str) -> None:
    layer = Conv4d(4, 6, 3, stride=(2, 1, 1, 1), padding=1, groups=2, algorithm=algorithm).double()  # type: ignore[arg-type]
    x = torch.randn(2, 4, 5, 4, 4, 4, dtype=torch.float64)
    expected = layer(x)
    got = layer.cuda()(x.cuda()).cpu()
    torch.testing.assert_close(got, expected)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_benchmark_mode_and_backward() -> None:
    clear_benchmark_cache()
    layer = Conv4d(4, 4, 3, padding=1).cuda()
    x = torch.randn(2, 4, 4, 4, 4, 4, device="cuda", requires_grad=True)
    with benchmark():
        layer(x).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    clear_benchmark_cache()


# -- reduced precision: the forty fixed configurations against float64

# Largest error allowed, as a fraction of the float64 reference's largest magnitude, for the
# output and every gradient. bf16 keeps 8 significant bits (rounding 2^-9 = 0.2%); measured
# errors on these configurations stay under 0.7%, so 2% leaves 3x. fp16 keeps 11 bits; measured
# under 0.1%, allowed 0.4%.
REDUCED_TOLERANCE = {torch.bfloat16: 2e-2, torch.float16: 4e-3}


def _float64_run(cfg: dict, algorithm: str = "loop") -> tuple[torch.Tensor, ...]:
    """Output and gradients (x, w, b) in float64 for a fixed upstream gradient."""
    x, w, b = _tensors(cfg)
    leaves = [t.requires_grad_() for t in (x, w, b) if t is not None]
    out = conv4d(
        x, w, b, cfg["stride"], cfg["padding"], cfg["dilation"], cfg["groups"], cfg["mode"], algorithm
    )
    upstream = torch.randn(out.shape, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    out.backward(upstream)
    return (out.detach(), upstream, *(t.grad for t in leaves))


def _reduced_run(cfg: dict, algorithm: str, device: str, dtype: torch.dtype, upstream: torch.Tensor) -> list:
    x, w, b = (None if t is None else t.float().to(device).requires_grad_() for t in _tensors(cfg))
    with torch.autocast(device, dtype=dtype):
        out = conv4d(
            x, w, b, cfg["stride"], cfg["padding"], cfg["dilation"], cfg["groups"], cfg["mode"], algorithm
        )
    assert out.dtype == dtype
    out.backward(upstream.to(device, dtype))
    grads = [t.grad for t in (x, w, b) if t is not None]
    assert all(g.dtype == torch.float32 for g in grads)  # gradients in the parameters' dtype
    return [out.detach(), *grads]


def _assert_close_to_float64(got: list, expected: tuple, dtype: torch.dtype, what: str) -> None:
    names = ("output", "grad x", "grad w", "grad b")
    for name, g, e in zip(names, got, (expected[0], *expected[2:]), strict=False):
        scale = e.abs().max().item() or 1.0
        error = (g.double().cpu() - e).abs().max().item()
        assert error <= REDUCED_TOLERANCE[dtype] * scale, (
            f"{what} {name}: error {error:.3g} vs scale {scale:.3g}"
        )


@pytest.mark.parametrize("index", range(len(CASES)))
def test_bfloat16_autocast_matches_float64_on_cpu(index: int) -> None:
    cfg = CASES[index]
    expected = _float64_run(cfg)
    for algorithm in (*ALGORITHMS, "auto"):
        got = _reduced_run(cfg, algorithm, "cpu", torch.bfloat16, expected[1])
        _assert_close_to_float64(got, expected, torch.bfloat16, f"case {index} {algorithm}")


def test_reduced_precision_input_with_float32_weights_under_autocast() -> None:
    # A CUDA batch norm under autocast hands the next layer its reduced-precision output while
    # the layer's weights stay float32; outside autocast that mismatch is the caller's error.
    cfg = CASES[0]
    expected = _float64_run(cfg)
    x, w, b = (None if t is None else t.float() for t in _tensors(cfg))
    for algorithm in (*ALGORITHMS, "auto"):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = conv4d(
                x.bfloat16(), w, b, cfg["stride"], cfg["padding"], cfg["dilation"], cfg["groups"],
                cfg["mode"], algorithm,
            )  # fmt: skip
        assert out.dtype == torch.bfloat16
        _assert_close_to_float64([out], expected, torch.bfloat16, f"bf16 input, {algorithm}")
    with pytest.raises(
        ValueError, match=r"input dtype torch\.bfloat16 does not match weight dtype torch\.float32"
    ):
        conv4d(x.bfloat16(), w, b, cfg["stride"], cfg["padding"], cfg["dilation"], cfg["groups"], cfg["mode"])


def test_the_forty_cases_match_the_direct_sum_in_float64() -> None:
    for index, cfg in enumerate(CASES[:8]):  # the numpy direct sum is slow; the rest via the loop
        x, w, b = _tensors(cfg)
        expected = _reference(cfg, x, w, b)
        got = _float64_run(cfg)[0]
        np.testing.assert_allclose(got.numpy(), expected, atol=1e-10, err_msg=f"case {index}")
    names = ("output", "upstream", "grad x", "grad w", "grad b")
    for index, cfg in enumerate(CASES):
        loop = _float64_run(cfg)
        for algorithm in ALGORITHMS[1:]:
            for name, got, expected in zip(names, _float64_run(cfg, algorithm), loop, strict=False):
                torch.testing.assert_close(
                    got, expected, rtol=0, atol=1e-10, msg=f"case {index} {algorithm} {name}"
                )


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
def test_cuda_reduced_precision_matches_float64(dtype: torch.dtype) -> None:
    for index, cfg in enumerate(CASES):
        expected = _float64_run(cfg)
        for algorithm in (*ALGORITHMS, "auto"):
            got = _reduced_run(cfg, algorithm, "cuda", dtype, expected[1])
            _assert_close_to_float64(got, expected, dtype, f"case {index} {algorithm}")


# Output frames per block of the input gradient. With the defaults these small inputs are
# one block; 1 and 2 give runs within a sample, 5 one whole sample a block (T_out is 3 or 5).
_BLOCKINGS = {"one block": 0, "single frames": 1, "runs of two": 2, "one sample": 5}


@pytest.mark.parametrize("blocking", list(_BLOCKINGS))
def test_time_fold_backward_matches_autograd_through_plain_ops(
    blocking: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The hand-written backward against autograd of the same formulation in plain ops.
    import tesserad.nn.conv as module
    from tesserad.nn.conv import _Geometry, _time_fold_ops, _TimeFoldFunction

    if _BLOCKINGS[blocking]:
        folded_frame_bytes = 3 * 4 * 3 * 4 * 3 * 8  # kT * C, D, H, W in float64
        monkeypatch.setattr(module, "GRAD_BLOCK_BYTES", _BLOCKINGS[blocking] * folded_frame_bytes)
        monkeypatch.setattr(module, "GRAD_BLOCK_MIN_FRAMES", 1)
    # The contiguous input's gradient transposed in runs of two frames (the last one short).
    monkeypatch.setattr(module, "TRANSPOSE_BYTES", 2 * 4 * 3 * 4 * 3 * 8)
    g = torch.Generator().manual_seed(4)
    # (4, (0, 0), 1): one output frame reading frames 0-2, so frames 3 and 4 get no tap and
    # their gradient must be written as zeros.
    for stride_t, tp, groups in ((1, (1, 1), 1), (2, (2, 0), 2), (1, (0, 2), 2), (4, (0, 0), 1)):
        x = torch.randn(2, 4, 5, 3, 4, 3, generator=g, dtype=torch.float64)
        w = torch.randn(4, 4 // groups, 3, 2, 1, 2, generator=g, dtype=torch.float64, requires_grad=True)
        b = torch.randn(4, generator=g, dtype=torch.float64, requires_grad=True)
        t_out = (5 + sum(tp) - 3) // stride_t + 1
        geo = _Geometry(tp, stride_t, 1, t_out, (1, 1, 1), (1, 0, 0), (1, 1, 1), groups)
        upstream = torch.randn(2, 4, t_out, 4, 4, 2, generator=g, dtype=torch.float64)
        # The input contiguous, and with channels last (as time_fold's own output is laid out):
        # the hand-written backward returns the input's gradient in the input's layout.
        channels_last = x.permute(0, 2, 3, 4, 5, 1).contiguous().permute(0, 5, 1, 2, 3, 4)
        for xi in (x.requires_grad_(), channels_last.detach().requires_grad_()):
            results = []
            for fn in (_TimeFoldFunction.apply, _time_fold_ops):
                out = fn(xi, w, b, geo)
                grads = torch.autograd.grad(out, (xi, w, b), upstream)
                results.append((out, *grads))
            assert results[0][1].stride() == xi.stride()
            for got, expected in zip(*results, strict=True):
                torch.testing.assert_close(got, expected, rtol=0, atol=1e-12)


@pytest.mark.parametrize(
    ("n", "t_out", "frame_bytes", "min_frames", "expected"),
    [
        (2, 3, 1 << 20, 1, [(0, 2, 0, 3)]),  # everything fits one block
        (5, 3, 2 << 20, 1, [(0, 2, 0, 3), (2, 4, 0, 3), (4, 5, 0, 3)]),  # two samples a block
        (
            2,
            5,
            8 << 20,
            1,
            [(0, 1, 0, 2), (0, 1, 2, 4), (0, 1, 4, 5), (1, 2, 0, 2), (1, 2, 2, 4), (1, 2, 4, 5)],
        ),
        (1, 4, 64 << 20, 3, [(0, 1, 0, 3), (0, 1, 3, 4)]),  # the minimum beats the byte budget
    ],
)
def test_grad_blocks_cover_every_frame_once_in_batch_order(
    n: int,
    t_out: int,
    frame_bytes: int,
    min_frames: int,
    expected: list,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import tesserad.nn.conv as module

    monkeypatch.setattr(module, "GRAD_BLOCK_BYTES", 16 << 20)
    monkeypatch.setattr(module, "GRAD_BLOCK_MIN_FRAMES", min_frames)
    blocks = module._grad_blocks(n, t_out, frame_bytes)
    assert blocks == expected
    rows = [r for n0, n1, t0, t1 in blocks for r in range(n0 * t_out + t0, (n1 - 1) * t_out + t1)]
    assert rows == list(range(n * t_out))


# -- nn.max_workspace


def test_time_folds_backward_workspace_counts_the_input_gradient_rewrite_it_takes() -> None:
    from tesserad.nn import workspace_bytes
    from tesserad.nn.conv import _Geometry

    geo = _Geometry((1, 1), 1, 1, 6, (1, 1, 1), (1, 1, 1), (1, 1, 1), 1)
    # 3 input channels times 3 time taps: 9 folded channels, neither planes nor (at stride 1)
    # phases, on any device.
    x_shape, w_shape = (2, 3, 6, 5, 5, 5), (4, 3, 3, 3, 3, 3)
    assert workspace_bytes("time_fold", x_shape, w_shape, geo, 4, True) == workspace_bytes(
        "time_fold", x_shape, w_shape, geo, 4, True, device_type="cuda"
    )
    # 6 folded channels: planes on the CPU, except in bf16; never on CUDA.
    x_shape, w_shape = (1, 2, 6, 5, 5, 5), (4, 2, 3, 3, 3, 3)
    need = {
        where: workspace_bytes("time_fold", x_shape, w_shape, geo, 2, True, device_type=device, dtype=dtype)
        for where, device, dtype in (
            ("cpu fp16", "cpu", torch.float16),
            ("cpu bf16", "cpu", torch.bfloat16),
            ("cuda fp16", "cuda", torch.float16),
        )
    }
    assert need["cpu fp16"] > need["cpu bf16"] == need["cuda fp16"]


def test_workspace_limit_makes_auto_fall_back_and_says_so(caplog: pytest.LogCaptureFixture) -> None:
    import tesserad.nn.conv as module
    from tesserad.nn import max_workspace, set_max_workspace, workspace_bytes
    from tesserad.nn.conv import FALLBACK_ORDER, _Geometry

    x = torch.randn(2, 3, 6, 5, 5, 5, requires_grad=True)
    w = torch.randn(4, 3, 3, 3, 3, 3, requires_grad=True)
    geo = _Geometry((1, 1), 1, 1, 6, (1, 1, 1), (1, 1, 1), (1, 1, 1), 1)
    need = {a: workspace_bytes(a, tuple(x.shape), tuple(w.shape), geo, 4, True) for a in ALGORITHMS}
    assert need["loop"] == min(need.values())
    # Under a limit just below time_fold's need, auto takes the next of FALLBACK_ORDER that
    # fits; under one below every need, the loop.
    below = need["time_fold"] - 1
    next_best = next((a for a in FALLBACK_ORDER[1:] if need[a] <= below), "loop")
    expected = conv4d(x, w, None, 1, 1, algorithm="loop")
    chosen: list[str] = []

    def spy(name: str) -> object:
        real = module._FORMULATIONS[name]

        def run(*args: object) -> torch.Tensor:
            chosen.append(name)
            return real(*args)  # type: ignore[arg-type]

        return run

    try:
        for limit, want in ((None, "time_fold"), (below, next_best), (need["loop"] - 1, "loop")):
            set_max_workspace(limit)
            assert max_workspace() == limit
            chosen.clear()
            with pytest.MonkeyPatch.context() as mp, caplog.at_level("DEBUG", logger="tesserad.nn.conv"):
                caplog.clear()
                mp.setattr(module, "_FORMULATIONS", {a: spy(a) for a in ALGORITHMS})
                out = conv4d(x, w, None, 1, 1)
            assert chosen == [want]
            torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-4)
            assert ("nn.max_workspace" in caplog.text) == (limit is not None)
    finally:
        set_max_workspace(None)
    with pytest.raises(ValueError, match=">= 0"):
        set_max_workspace(-1)


# -- the scratch-buffer pool


def test_pool_reuses_a_buffer_only_once_nothing_shares_it(monkeypatch: pytest.MonkeyPatch) -> None:
    import tesserad.nn.conv as module

    monkeypatch.setattr(module, "POOL_MIN_BYTES", 0)
    pool = module._BufferPool()
    cpu = torch.device("cpu")
    first = pool.empty((4, 6), torch.float32, cpu)
    address = first.data_ptr()
    # Still held (here by a view of it): the next request gets another buffer.
    view = first.t()
    del first
    second = pool.empty((24,), torch.float32, cpu)
    assert second.data_ptr() != address
    del view
    # Released: the same numel and dtype get it back, in the asked shape; another dtype does not.
    again = pool.empty((2, 12), torch.float32, cpu)
    assert again.data_ptr() == address and again.shape == (2, 12) and again.is_contiguous()
    assert pool.empty((24,), torch.float64, cpu).data_ptr() not in (address, second.data_ptr())


def test_pool_keeps_a_saved_tensor_out_of_reach_until_backward(monkeypatch: pytest.MonkeyPatch) -> None:
    import tesserad.nn.conv as module

    monkeypatch.setattr(module, "POOL_MIN_BYTES", 0)
    pool = module._BufferPool()
    cpu = torch.device("cpu")
    buffer = pool.empty((8,), torch.float32, cpu).fill_(2.0)
    address = buffer.data_ptr()
    w = torch.ones(8, requires_grad=True)
    loss = (buffer * w).sum()  # autograd saves the buffer for w's gradient
    del buffer
    assert pool.empty((8,), torch.float32, cpu).data_ptr() != address
    loss.backward()
    del loss
    assert w.grad is not None and torch.equal(w.grad, torch.full((8,), 2.0))
    assert pool.empty((8,), torch.float32, cpu).data_ptr() == address


def test_pool_holds_at_most_the_workspace_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    import tesserad.nn.conv as module
    from tesserad.nn import set_max_workspace

    monkeypatch.setattr(module, "POOL_MIN_BYTES", 0)
    pool = module._BufferPool()
    cpu = torch.device("cpu")
    try:
        set_max_workspace(100)  # bytes: room for one buffer of 64 (16 float32), not two
        a = pool.empty((16,), torch.float32, cpu)
        b = pool.empty((16,), torch.float32, cpu)  # a is in use and the pool full: not kept
        assert len(pool.buffers) == 1 and pool.buffers[0].data_ptr() == a.data_ptr()
        del a, b
        # A free buffer of another size is dropped to make room for the new one.
        c = pool.empty((20,), torch.float32, cpu)
        assert [t.data_ptr() for t in pool.buffers] == [c.data_ptr()]
        assert pool.empty((40,), torch.float32, cpu).numel() == 40  # over the limit: a plain one
        assert [t.data_ptr() for t in pool.buffers] == [c.data_ptr()]
    finally:
        set_max_workspace(None)


def test_time_fold_gradients_hold_with_reused_buffers_and_two_live_graphs(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Two forwards of the same shape before either backward: each graph keeps its own folded
    # input; later calls (one in inference mode first, whose buffer then serves training)
    # reuse the pool's buffers and still match the loop in float64.
    import tesserad.nn.conv as module

    monkeypatch.setattr(module, "POOL_MIN_BYTES", 0)
    monkeypatch.setattr(module, "_POOL", module._BufferPool())
    g = torch.Generator().manual_seed(7)
    w = torch.randn(3, 2, 3, 2, 2, 2, generator=g, dtype=torch.float64, requires_grad=True)
    xs = [
        torch.randn(2, 2, 5, 4, 3, 4, generator=g, dtype=torch.float64, requires_grad=True) for _ in range(2)
    ]
    with torch.inference_mode():
        conv4d(xs[0], w, None, 1, 1, algorithm="time_fold")
    for _ in range(2):
        grads = {}
        for algorithm in ("time_fold", "loop"):
            outs = [conv4d(x, w, None, 1, 1, algorithm=algorithm) for x in xs]
            ups = [
                torch.randn(o.shape, generator=torch.Generator().manual_seed(i), dtype=o.dtype)
                for i, o in enumerate(outs)
            ]
            grads[algorithm] = [
                torch.autograd.grad(o, (x, w), u) for o, x, u in zip(outs, xs, ups, strict=True)
            ]
        for got, expected in zip(grads["time_fold"], grads["loop"], strict=True):
            for a, b in zip(got, expected, strict=True):
                torch.testing.assert_close(a, b, rtol=0, atol=1e-10)
    assert module._POOL.buffers  # the buffers came from (and went back to) the pool


@pytest.mark.parametrize("index", range(len(CASES)))
def test_folded_input_gradient_as_planes_and_by_phases_matches_conv3d(
    index: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Both rewrites of conv3d's input gradient against aten's, in float64, on the conv3d each
    # of the forty cases folds to (any stride, dilation, padding, groups); planes one row at a
    # time, so their chunks are exercised too.
    import tesserad.nn.conv as module
    from tesserad.nn.conv import _Geometry, _grad_input_phases, _grad_input_planes, conv_output_size

    monkeypatch.setattr(module, "PLANES_CHUNK_BYTES", 1)
    cfg = CASES[index]
    g = torch.Generator().manual_seed(index)
    groups, kernel = cfg["groups"], cfg["kernel"]
    m = kernel[0] * cfg["c_in"] // groups
    size = [
        s + lo - min(lo, hi) + hi - min(lo, hi)
        for s, (lo, hi) in zip(cfg["size"][1:], cfg["pads"][1:], strict=True)
    ]
    p3 = tuple(min(lo, hi) for lo, hi in cfg["pads"][1:])
    s3, d3 = tuple(cfg["stride"][1:]), tuple(cfg["dilation"][1:])
    geo = _Geometry((0, 0), 1, 1, 1, s3, p3, d3, groups)  # type: ignore[arg-type]
    out = [conv_output_size(*a, 2 * p) for *a, p in zip(size, kernel[1:], s3, d3, p3, strict=True)]
    xs = torch.empty(3, groups * m, *size, dtype=torch.float64)
    wf = torch.randn(cfg["c_out"], m, *kernel[1:], generator=g, dtype=torch.float64)
    go = torch.randn(3, cfg["c_out"], *out, generator=g, dtype=torch.float64)
    expected = module._conv3d_backward(go, xs, wf, geo, (True, False, False))[0]
    for rewrite in (_grad_input_planes, _grad_input_phases):
        got = rewrite(go, tuple(xs.shape), wf, geo)
        torch.testing.assert_close(got, expected, rtol=0, atol=1e-10, msg=rewrite.__name__)


@pytest.mark.parametrize("planes_max_channels", [0, 1 << 20], ids=["no planes", "planes always"])
def test_time_fold_input_gradient_rewrites_on_the_forty_cases(
    planes_max_channels: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    # time_fold end to end with its input gradient always as planes (bf16 never takes them), or
    # never (by phases where strided): float64 against the loop, bf16 autocast against float64
    # at REDUCED_TOLERANCE.
    import tesserad.nn.conv as module

    monkeypatch.setattr(module, "PLANES_MAX_CHANNELS", planes_max_channels)
    names = ("output", "upstream", "grad x", "grad w", "grad b")
    for index, cfg in enumerate(CASES):
        expected = _float64_run(cfg)
        for name, got, want in zip(names, _float64_run(cfg, "time_fold"), expected, strict=False):
            torch.testing.assert_close(got, want, rtol=0, atol=1e-10, msg=f"case {index} {name}")
        got_bf16 = _reduced_run(cfg, "time_fold", "cpu", torch.bfloat16, expected[1])
        _assert_close_to_float64(got_bf16, expected, torch.bfloat16, f"case {index} time_fold")
