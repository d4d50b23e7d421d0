"""ONNX export of every family: checker, opset, and onnxruntime parity at batch 1 and 7 from one file."""

from __future__ import annotations

import contextlib
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

import tesserad.nn.onnx_export as onnx_export
import tesserad.nn.onnx_opsets as onnx_opsets
from tesserad.errors import FailedPrecondition, InvalidArgument
from tesserad.nn import (
    BatchNorm4d,
    Cnn2dSpec,
    Cnn4dSpec,
    Conv4d,
    LstmSpec,
    MlpSpec,
    TransformerSpec,
    build_model,
    export_onnx,
)

SPECS = {
    "mlp": MlpSpec(input_shape=(3, 4), output_size=5, hidden_sizes=(16,), norm="batch"),
    "cnn2d": Cnn2dSpec(input_shape=(2, 8, 7), output_size=4, channels=(4, 8)),
    "cnn4d": Cnn4dSpec(input_shape=(2, 4, 5, 4, 6), output_size=3, channels=(4, 6)),
    "lstm": LstmSpec(input_shape=(6, 4), output_size=3, hidden_size=8, num_layers=2, bidirectional=True),
    "transformer": TransformerSpec(input_shape=(6, 4), output_size=3, d_model=16, num_heads=2, pooling="cls"),
}


def _run(path: Path, x: torch.Tensor) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(["output"], {"input": x.numpy()})[0]


def _trained_like(spec: object) -> torch.nn.Module:
    """A model with non-trivial batch-norm statistics, as after training."""
    torch.manual_seed(0)
    model = build_model(spec)  # type: ignore[arg-type]
    with torch.no_grad():
        model(torch.randn(8, *spec.input_shape) * 2 + 0.5)  # type: ignore[attr-defined]
    return model.eval()


@pytest.mark.parametrize("name", SPECS)
def test_export_runs_in_onnxruntime_at_batch_1_and_7(name: str, tmp_path: Path) -> None:
    spec = SPECS[name]
    model = _trained_like(spec)
    report = export_onnx(model, spec, tmp_path / "model.onnx")
    assert report.max_abs_diff is not None and report.max_abs_diff <= 1e-4
    assert report.input_names == ("input",) and report.output_names == ("output",)
    assert report.file_size == report.path.stat().st_size > 0
    proto = onnx.load(str(report.path))
    onnx.checker.check_model(proto)
    assert report.opset == next(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx"))
    assert proto.graph.input[0].type.tensor_type.shape.dim[0].dim_param  # the batch dim is symbolic
    assert not list(tmp_path.glob("*.data"))  # one self-contained file
    for batch in (1, 7):
        x = torch.randn(batch, *spec.input_shape)
        with torch.no_grad():
            expected = model(x).numpy()
        np.testing.assert_allclose(_run(report.path, x), expected, atol=1e-4)


@pytest.mark.parametrize("mode", ["decomposed", "native"])
@pytest.mark.parametrize("padding_mode", ["zeros", "circular", "reflect"])
def test_conv4d_lowerings_agree_with_torch(mode: str, padding_mode: str, tmp_path: Path) -> None:
    spec = Cnn4dSpec(input_shape=(2, 4, 3, 5, 4), output_size=3, channels=(4,), kernel_size=2)
    model = _trained_like(spec)
    for module in model.modules():
        if isinstance(module, Conv4d):
            module.padding_mode = padding_mode  # type: ignore[assignment]
    report = export_onnx(model, spec, tmp_path / "m.onnx", conv4d=mode)  # type: ignore[arg-type]
    assert report.conv4d_mode == mode
    graph = onnx.load(str(report.path)).graph
    weights = {init.name: init.dims for init in graph.initializer}
    conv_ranks = {len(weights[n.input[1]]) - 2 for n in graph.node if n.op_type == "Conv"}
    assert conv_ranks == ({4} if mode == "native" else {3})
    assert not {n.op_type for n in graph.node} & {"Col2Im", "Im2Col"}
    for batch in (1, 7):
        x = torch.randn(batch, *spec.input_shape)
        with torch.no_grad():
            np.testing.assert_allclose(_run(report.path, x), model(x).numpy(), atol=1e-4)


def test_auto_exports_the_decomposed_graph(tmp_path: Path) -> None:
    spec = SPECS["cnn4d"]
    report = export_onnx(build_model(spec), spec, tmp_path / "m.onnx", check_parity=False)
    assert report.conv4d_mode == "decomposed"
    assert report.max_abs_diff is None


def test_export_leaves_the_model_untouched(tmp_path: Path) -> None:
    spec = SPECS["cnn4d"]
    model = build_model(spec)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    export_onnx(model, spec, tmp_path / "m.onnx", conv4d="native")
    assert model.training
    assert all(
        isinstance(m.algorithm, str) and m.algorithm == "auto"
        for m in model.modules()
        if isinstance(m, Conv4d)
    )
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v, before[k])


def test_a_requested_opset_is_honoured(tmp_path: Path) -> None:
    spec = SPECS["mlp"]
    report = export_onnx(build_model(spec), spec, tmp_path / "m.onnx", opset=18)
    assert report.opset == 18
    # The lowest any built-in model reaches: a Linear head with tanh converts down to 13.
    tanh = MlpSpec(input_shape=(4,), output_size=2, hidden_sizes=(8,), activation="tanh")
    lowest = export_onnx(build_model(tanh), tanh, tmp_path / "tanh.onnx", opset=onnx_opsets.MIN_OPSET)
    assert lowest.opset == onnx_opsets.MIN_OPSET == 13
    assert onnx.load(str(lowest.path)).opset_import[0].version == 13


def test_an_opset_below_the_lowest_the_exporter_writes_is_refused_naming_the_range() -> None:
    newest = onnx.defs.onnx_opset_version()
    for opset in (7, 12):
        with pytest.raises(InvalidArgument) as raised:
            onnx_opsets.check_opset(opset)
        assert str(raised.value) == (
            f"opset {opset} is below the oldest this daemon's ONNX exporter writes (13); ask for 13 to "
            f"{newest}, or 0 for the exporter's default"
        )
    for opset in (0, 13, newest):
        onnx_opsets.check_opset(opset)


def test_an_opset_the_exporter_cannot_convert_this_model_to_is_refused_not_written_at_another(
    tmp_path: Path,
) -> None:
    # The demo's cnn4d: onnx's converter has no adapter taking its graph below 18, and torch's
    # exporter then writes 18 without saying so.
    spec = SPECS["cnn4d"]
    with pytest.raises(FailedPrecondition) as raised:
        export_onnx(build_model(spec), spec, tmp_path / "m.onnx", opset=15)
    assert str(raised.value) == (
        "onnx export: the exporter cannot write this model at opset 15, the opset asked for: it wrote "
        "opset 18 (onnx's version converter has no way down from 18 to 15 for one of its ops), so "
        "nothing was exported; ask for another opset (18 is the opset this model exports at), or 0 "
        "for the exporter's default"
    )


def test_an_opset_refusal_above_the_written_opset_says_up_not_down() -> None:
    assert onnx_opsets.opset_refusal(23, 18) == (
        "onnx export: the exporter cannot write this model at opset 23, the opset asked for: it wrote "
        "opset 18 (onnx's version converter has no way up from 18 to 23 for one of its ops), so "
        "nothing was exported; ask for another opset (18 is the opset this model exports at), or 0 "
        "for the exporter's default"
    )


def test_exports_build_torchlibs_table_once_per_opset_and_write_what_a_fresh_table_writes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """torch.onnx.export would rebuild its torchlib translation table on every call; exports
    share one per opset, and the files are byte for byte those of a table torch built itself."""
    from torch.onnx._constants import ONNX_DEFAULT_OPSET
    from torch.onnx._internal.exporter import _registration

    spec = SPECS["cnn4d"]
    model = _trained_like(spec)
    registry_class = _registration.ONNXRegistry
    build = registry_class.__dict__["from_torchlib"]
    built: list[int] = []

    def counted_build(cls: type, opset_version: int) -> object:
        built.append(opset_version)
        return build.__func__(cls, opset_version)

    monkeypatch.setattr(registry_class, "from_torchlib", classmethod(counted_build))
    monkeypatch.setattr(onnx_export, "_TORCHLIB_REGISTRIES", {}, raising=False)  # none cached yet
    modes = ("decomposed", "native")
    # The first mode's exports build each opset's table, the second's reuse them (each cnn4d
    # export costs seconds, so no more of them than that takes).
    for mode in modes:
        export_onnx(model, spec, tmp_path / f"{mode}.onnx", conv4d=mode)
        export_onnx(model, spec, tmp_path / f"{mode}-18.onnx", conv4d=mode, opset=18)
    assert sorted(built) == sorted({ONNX_DEFAULT_OPSET, 18})  # once each
    assert registry_class.__dict__["from_torchlib"].__func__ is counted_build  # torch's factory is back

    monkeypatch.setattr(onnx_export, "_torchlib_registry_built_once", contextlib.nullcontext)
    for mode in modes:
        export_onnx(model, spec, tmp_path / f"{mode}-fresh.onnx", conv4d=mode)
        assert (tmp_path / f"{mode}.onnx").read_bytes() == (tmp_path / f"{mode}-fresh.onnx").read_bytes()
    assert len(built) == 4  # the fresh exports built their own tables


def test_an_exporter_laid_out_otherwise_exports_with_the_table_it_builds_itself(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The table cache reaches into torch's exporter; where that is laid out otherwise (here: the
    factory not defined on the class the cache looks up), exports go on without the cache."""
    from torch.onnx._internal.exporter import _registration

    relaid = type("RelaidRegistry", (_registration.ONNXRegistry,), {})
    monkeypatch.setattr(_registration, "ONNXRegistry", relaid)
    spec = SPECS["mlp"]
    export_onnx(build_model(spec), spec, tmp_path / "m.onnx")
    onnx.checker.check_model(str(tmp_path / "m.onnx"))


def test_parity_failure_is_a_failed_precondition(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spec = SPECS["mlp"]
    monkeypatch.setattr(onnx_export, "PARITY_TOLERANCE", -1.0)
    with pytest.raises(FailedPrecondition, match="differs from torch"):
        export_onnx(build_model(spec), spec, tmp_path / "m.onnx")


def test_bad_lowering_and_bad_spec_are_invalid_arguments(tmp_path: Path) -> None:
    spec = SPECS["mlp"]
    with pytest.raises(InvalidArgument, match="conv4d"):
        export_onnx(build_model(spec), spec, tmp_path / "m.onnx", conv4d="fast")  # type: ignore[arg-type]
    with pytest.raises(InvalidArgument, match=r"^architecture\.output_size: must be >= 1, got 0$"):
        export_onnx(build_model(spec), MlpSpec((3, 4), 0), tmp_path / "m.onnx")


class _StridedConvNet(torch.nn.Module):
    """A Conv4d with a time stride and dilation, a folded batch norm, then a linear head."""

    def __init__(self) -> None:
        super().__init__()
        self.features = torch.nn.Sequential(
            Conv4d(
                2, 4, (2, 3, 1, 2), stride=(2, 1, 2, 1), padding=(1, 1, 0, 1), dilation=(2, 1, 1, 1), groups=2
            ),
            BatchNorm4d(4),
            torch.nn.ReLU(),
        )
        self.head = torch.nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).mean(dim=(2, 3, 4, 5)))


@pytest.mark.parametrize(
    ("conv", "with_norm", "size"),
    [
        (Conv4d(2, 6, 3, padding="same"), True, (5, 4, 4, 3)),
        (Conv4d(4, 6, (2, 3, 2, 1), padding="same", groups=2, bias=False), True, (4, 4, 5, 3)),
        (Conv4d(2, 3, 3, stride=(2, 1, 1, 2), padding=1, dilation=(2, 1, 2, 1)), False, (7, 5, 5, 4)),
        (Conv4d(2, 3, 3, padding=1, padding_mode="reflect"), True, (4, 4, 3, 3)),
        (Conv4d(2, 4, 2, padding=(2, 0, 1, 0), padding_mode="circular", groups=2), False, (3, 3, 3, 3)),
        (
            Conv4d(2, 3, (1, 2, 2, 2), stride=(2, 1, 1, 1), padding=1),
            True,
            (1, 3, 3, 3),
        ),  # taps that see only padding
    ],
)
def test_decomposed_lowering_computes_the_same_function(conv: Conv4d, with_norm: bool, size: tuple) -> None:
    torch.manual_seed(0)
    layers: list[torch.nn.Module] = [conv]
    if with_norm:
        norm = BatchNorm4d(conv.out_channels)
        with torch.no_grad():
            norm(torch.randn(4, conv.out_channels, *size) * 3 + 1)
            norm.weight.uniform_(0.5, 2.0)
            norm.bias.uniform_(-1.0, 1.0)
        layers.append(norm)
    model = torch.nn.Sequential(*layers).eval()
    lowered = onnx_export._lowered(model, "decomposed")  # a float32 copy, as exported
    assert not any(isinstance(m, Conv4d | BatchNorm4d) for m in lowered.modules())  # replaced and folded
    x = torch.randn(3, conv.in_channels, *size)
    with torch.no_grad():
        torch.testing.assert_close(lowered(x), model(x), rtol=1e-5, atol=1e-5)


def test_decomposed_export_folds_norms_and_handles_time_strides(tmp_path: Path) -> None:
    spec = Cnn4dSpec(input_shape=(2, 7, 4, 5, 3), output_size=3)
    model = _StridedConvNet()
    with torch.no_grad():
        model(torch.randn(8, *spec.input_shape) * 2 + 0.5)
    report = export_onnx(model.eval(), spec, tmp_path / "m.onnx")
    assert report.max_abs_diff is not None and report.max_abs_diff <= 1e-4
    ops = {n.op_type for n in onnx.load(str(report.path)).graph.node}
    assert "Conv" in ops and "BatchNormalization" not in ops


def test_parity_counts_nan_as_a_mismatch_and_allows_rounding_on_large_outputs() -> None:
    expected = np.zeros((2, 3), np.float32)
    got = expected.copy()
    got[1, 2] = np.nan
    assert onnx_export.max_abs_diff(got, expected) == np.inf
    assert not onnx_export.within_tolerance(got, expected)
    large = np.full((1, 1), 3000.0, np.float32)
    assert onnx_export.within_tolerance(large + np.float32(0.000244), large)  # one float32 ulp
    assert not onnx_export.within_tolerance(large + 1, large)
    assert onnx_export.max_abs_diff(expected + 0.5, expected) == 0.5


def test_a_model_whose_torch_outputs_are_nan_is_a_failed_precondition(tmp_path: Path) -> None:
    spec = SPECS["mlp"]
    model = build_model(spec)
    with torch.no_grad():
        next(model.parameters()).view(-1)[0] = float("nan")
    with pytest.raises(FailedPrecondition, match="NaN or Inf"):
        export_onnx(model, spec, tmp_path / "m.onnx")


@pytest.mark.parametrize("name", ["cnn2d", "cnn4d", "lstm"])
def test_a_nan_in_the_input_gives_nan_out_of_the_exported_graph_as_in_torch(
    name: str, tmp_path: Path
) -> None:
    # onnxruntime's MaxPool and LSTM skip NaN: a zero clip with one NaN scored ~1e37 exported.
    spec = SPECS[name]
    model = _trained_like(spec)
    report = export_onnx(model, spec, tmp_path / "m.onnx", check_parity=False)
    x = torch.zeros(4, *spec.input_shape)
    x[0].view(-1)[1] = float("nan")
    x[1].view(-1)[1] = float("inf")
    x[2] = float("nan")  # every window all NaN: onnxruntime's MaxPool gave -3.4e38 there
    # +Inf and -Inf in one time step: NaN in torch's LSTM gates, finite out of onnxruntime's LSTM.
    x[3].view(-1)[0], x[3].view(-1)[1] = float("inf"), float("-inf")
    with torch.no_grad():
        expected = model(x).numpy()
    got = _run(report.path, x)
    assert np.isnan(expected[[0, 2]]).all()
    assert onnx_export.special_values_agree(got, expected), (got, expected)


def test_the_export_check_refuses_a_graph_that_drops_nan(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = SPECS["cnn4d"]
    monkeypatch.setattr(onnx_export, "_nan_keeping_max_pool3d", torch.nn.functional.max_pool3d)
    with pytest.raises(FailedPrecondition, match="NaN or an Inf in its input"):
        export_onnx(_trained_like(spec), spec, tmp_path / "m.onnx")


def test_special_values_must_sit_where_torch_puts_them() -> None:
    expected = np.array([[np.nan, np.inf, -np.inf, 1.0]], np.float32)
    assert onnx_export.special_values_agree(expected.copy(), expected)
    for position, value in ((0, 0.0), (1, -np.inf), (2, np.nan), (3, np.nan), (3, 1.1)):
        got = expected.copy()
        got[0, position] = value
        assert not onnx_export.special_values_agree(got, expected), (position, value)
