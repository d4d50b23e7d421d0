"""Models built from specs: forward shapes, parameter counts, signatures, and named validation errors."""

from __future__ import annotations

import json
import re
from dataclasses import fields, replace
from pathlib import Path

import pytest
import torch

from tesserad.errors import InvalidArgument
from tesserad.nn import (
    Cnn2dSpec,
    Cnn4dSpec,
    LstmSpec,
    MlpSpec,
    TensorSpec,
    TransformerSpec,
    build_model,
    model_signature,
    parameter_count,
    spec_from_dict,
    spec_to_dict,
    validate_spec,
)
from tesserad.nn.specs import FAMILIES, batch_norm_values_per_sample

SPECS = {
    "mlp": MlpSpec(input_shape=(3, 4), output_size=5, hidden_sizes=(16, 8), norm="layer", dropout=0.1),
    "mlp_batchnorm": MlpSpec(input_shape=(12,), output_size=2, norm="batch", activation="silu"),
    "cnn2d": Cnn2dSpec(input_shape=(3, 9, 8), output_size=4, kernel_size=2, pool="avg"),
    "cnn4d": Cnn4dSpec(input_shape=(2, 5, 4, 1, 6), output_size=3, activation="gelu"),
    "cnn4d_plain": Cnn4dSpec(
        input_shape=(1, 3, 3, 3, 3), output_size=2, norm="none", pool="none", dropout=0.2
    ),
    "lstm": LstmSpec(
        input_shape=(6, 4), output_size=3, hidden_size=8, num_layers=2, bidirectional=True, dropout=0.1
    ),
    "transformer": TransformerSpec(input_shape=(6, 4), output_size=3, d_model=16, num_heads=2, pooling="cls"),
    "transformer_last": TransformerSpec(
        input_shape=(5, 3), output_size=2, d_model=8, num_heads=4, pooling="last"
    ),
}


@pytest.mark.parametrize("name", SPECS)
def test_each_architecture_builds_runs_and_reports_its_signature(name: str) -> None:
    spec = SPECS[name]
    model = build_model(spec)
    out = model(torch.randn(3, *spec.input_shape))
    assert out.shape == (3, spec.output_size)
    assert torch.isfinite(out).all()
    out.sum().backward()
    assert parameter_count(model) == sum(p.numel() for p in model.parameters()) > 0
    inputs, outputs = model_signature(spec)
    assert inputs == [TensorSpec("input", "float32", (-1, *spec.input_shape))]
    assert outputs == [TensorSpec("output", "float32", (-1, spec.output_size))]


def test_parameter_count_of_a_known_mlp() -> None:
    model = build_model(MlpSpec(input_shape=(4,), output_size=2, hidden_sizes=(3,)))
    assert parameter_count(model) == (4 * 3 + 3) + (3 * 2 + 2)


def test_parameter_count_skips_frozen_parameters() -> None:
    model = build_model(MlpSpec(input_shape=(4,), output_size=2, hidden_sizes=(3,)))
    model[1].weight.requires_grad_(False)
    assert parameter_count(model) == 3 + 3 * 2 + 2


def test_defaults_mirror_the_proto_comments() -> None:
    assert MlpSpec((1,), 1).hidden_sizes == (128, 128)
    assert Cnn4dSpec((1, 2, 2, 2, 2), 1).channels == (8, 16)
    assert Cnn2dSpec((1, 2, 2), 1).channels == (16, 32)
    assert LstmSpec((2, 2), 1).hidden_size == 64
    assert TransformerSpec((2, 2), 1).d_model == 64


BAD = [
    (MlpSpec((3,), 2, hidden_sizes=(4, 0)), "architecture.mlp.hidden_sizes[1]: must be >= 1, got 0"),
    (MlpSpec((3,), 2, hidden_sizes=()), "architecture.mlp.hidden_sizes: must be a non-empty"),
    (
        MlpSpec((3,), 2, activation="sigmoid"),
        "architecture.mlp.activation: must be one of relu, gelu, tanh, silu",
    ),
    (MlpSpec((3,), 2, dropout=1.0), "architecture.mlp.dropout: must be in [0, 1), got 1.0"),
    (MlpSpec((3,), 2, norm="group"), "architecture.mlp.norm"),
    (MlpSpec((), 2), "architecture.input_shape: must be a non-empty list of any rank"),
    (MlpSpec((3,), 0), "architecture.output_size: must be >= 1, got 0"),
    (
        Cnn2dSpec((3, 8), 2),
        "architecture.input_shape: must have 3 dims (C, H, W) (no batch dim), got 2: [3, 8]",
    ),
    (
        Cnn4dSpec((4, 4, 8, 8), 2),
        "architecture.input_shape: must have 5 dims (C, T, D, H, W) (no batch dim), got 4: [4, 4, 8, 8]; "
        "samples of one channel take [1, 4, 4, 8, 8], their array given a channel axis: x[:, None] "
        "(shape N, 1, T, D, H, W)",
    ),
    (
        Cnn2dSpec((8, 8), 2),
        "architecture.input_shape: must have 3 dims (C, H, W) (no batch dim), got 2: [8, 8]; samples of "
        "one channel take [1, 8, 8], their array given a channel axis: x[:, None] (shape N, 1, H, W)",
    ),
    (Cnn2dSpec((3, 8, 8), 2, kernel_size=0), "architecture.cnn2d.kernel_size: must be >= 1, got 0"),
    (Cnn2dSpec((3, 8, 8), 2, pool="min"), "architecture.cnn2d.pool"),
    (Cnn4dSpec((3, 8, 8, 8, 8), 2, kernel_size=0), "architecture.cnn4d.kernel_size: must be >= 1, got 0"),
    (Cnn4dSpec((3, 8, 8, 0, 8), 2), "architecture.input_shape[3]: must be >= 1, got 0"),
    (Cnn4dSpec((3, 8, 8, 8, 8), 2, channels=(8, -1)), "architecture.cnn4d.channels[1]"),
    (Cnn4dSpec((3, 8, 8, 8, 8), 2, norm="layer"), "architecture.cnn4d.norm: must be one of batch, none"),
    (Cnn4dSpec((3, 8, 8, 8, 8), 2, activation="elu"), "architecture.cnn4d.activation"),
    (Cnn4dSpec((3, 8, 8, 8, 8), 2, dropout=-0.1), "architecture.cnn4d.dropout"),
    (LstmSpec((5, 3), 2, hidden_size=0), "architecture.lstm.hidden_size: must be >= 1, got 0"),
    (LstmSpec((5, 3), 2, num_layers=0), "architecture.lstm.num_layers"),
    (LstmSpec((5, 3), 2, dropout=0.5), "architecture.lstm.dropout: applies between stacked layers"),
    (LstmSpec((5, 3, 1), 2), "architecture.input_shape: must have 2 dims"),
    (
        TransformerSpec((5, 3), 2, d_model=10, num_heads=4),
        "architecture.transformer.d_model: must be divisible by num_heads=4",
    ),
    (TransformerSpec((5, 3), 2, num_heads=0), "architecture.transformer.num_heads: must be >= 1"),
    (TransformerSpec((5, 3), 2, num_layers=0), "architecture.transformer.num_layers"),
    (TransformerSpec((5, 3), 2, dim_feedforward=0), "architecture.transformer.dim_feedforward"),
    (
        TransformerSpec((5, 3), 2, pooling="max"),
        "architecture.transformer.pooling: must be one of mean, last, cls",
    ),
    (TransformerSpec((5, 3), 2, dropout=float("nan")), "architecture.transformer.dropout"),
    (TransformerSpec((5, 3), 2, d_model=True), "architecture.transformer.d_model: must be an integer"),
]


@pytest.mark.parametrize(("spec", "message"), BAD, ids=[m.split(":")[0] for _, m in BAD])
def test_each_bad_hyperparameter_names_its_field(spec: object, message: str) -> None:
    with pytest.raises(InvalidArgument) as info:
        validate_spec(spec)  # type: ignore[arg-type]
    assert info.value.message.startswith(message)
    with pytest.raises(InvalidArgument):
        build_model(spec)  # type: ignore[arg-type]
    with pytest.raises(InvalidArgument):
        model_signature(spec)  # type: ignore[arg-type]


def test_a_non_spec_is_rejected() -> None:
    with pytest.raises(InvalidArgument, match="architecture: expected one of"):
        validate_spec({"family": "mlp"})  # type: ignore[arg-type]


@pytest.mark.parametrize("name", SPECS)
def test_dict_round_trip_through_json(name: str) -> None:
    spec = SPECS[name]
    d = json.loads(json.dumps(spec_to_dict(spec)))
    assert d["family"] == type(spec).__name__.removesuffix("Spec").lower()
    assert spec_from_dict(d) == spec


def test_from_dict_fills_defaults_and_rejects_unknowns() -> None:
    assert spec_from_dict({"family": "cnn4d", "input_shape": [1, 2, 2, 2, 2], "output_size": 3}) == Cnn4dSpec(
        (1, 2, 2, 2, 2), 3
    )
    assert (
        spec_from_dict({"family": "mlp", "input_shape": [2], "output_size": 1, "dropout": 0}).dropout == 0.0
    )
    with pytest.raises(InvalidArgument, match=r"architecture.family: must be one of mlp, cnn2d, cnn4d"):
        spec_from_dict({"family": "resnet", "input_shape": [2], "output_size": 1})
    with pytest.raises(InvalidArgument, match=r"architecture.lstm.width: unknown field"):
        spec_from_dict({"family": "lstm", "input_shape": [2, 2], "output_size": 1, "width": 3})
    with pytest.raises(InvalidArgument, match=r"architecture.output_size: is required"):
        spec_from_dict({"family": "mlp", "input_shape": [2]})
    with pytest.raises(InvalidArgument, match=r"architecture.mlp.hidden_sizes\[0\]: must be an integer"):
        spec_from_dict({"family": "mlp", "input_shape": [2], "output_size": 1, "hidden_sizes": ["8"]})
    with pytest.raises(InvalidArgument, match=r"architecture: expected a mapping"):
        spec_from_dict([1, 2])  # type: ignore[arg-type]


def test_specs_are_frozen() -> None:
    spec = SPECS["cnn4d"]
    with pytest.raises(AttributeError):
        spec.kernel_size = 5  # type: ignore[misc]
    assert replace(spec, kernel_size=5).kernel_size == 5


def test_cnn4d_pools_only_dims_of_size_two_or_more() -> None:
    # (T, D, H, W) = (1, 5, 2, 3) -> (1, 2, 1, 1) -> (1, 1, 1, 1) -> nothing left to pool
    model = build_model(Cnn4dSpec(input_shape=(1, 1, 5, 2, 3), output_size=2, channels=(2, 2, 2)))
    pools = [m for m in model.modules() if type(m).__name__ == "MaxPool4d"]
    assert [p.kernel_size for p in pools] == [(1, 2, 2, 2), (1, 2, 1, 1)]
    assert model.features(torch.randn(2, 1, 1, 5, 2, 3)).shape == (2, 2, 1, 1, 1, 1)


def test_spec_fields_mirror_the_proto_messages() -> None:
    proto = (Path(__file__).resolve().parents[3] / "protos/tessera/v1/architecture.proto").read_text()
    for family, cls in FAMILIES.items():
        message = re.search(rf"message {cls.__name__} {{(.*?)\n}}", proto, re.S)
        assert message, cls.__name__
        proto_fields = re.findall(r"^\s+(?:repeated\s+)?[\w.]+\s+(\w+)\s*=\s*\d+;", message.group(1), re.M)
        spec_fields = [f.name for f in fields(cls)][2:]
        assert spec_fields == proto_fields, family
        assert [f.name for f in fields(cls)][:2] == ["input_shape", "output_size"]


@pytest.mark.parametrize(
    "spec",
    [
        MlpSpec(input_shape=(3, 4), output_size=2, hidden_sizes=(8, 8), norm="batch"),
        MlpSpec(input_shape=(6,), output_size=2, norm="layer"),
        Cnn2dSpec(input_shape=(1, 6, 6), output_size=2, channels=(4, 4, 4)),
        Cnn2dSpec(input_shape=(1, 6, 6), output_size=2, channels=(4,)),
        Cnn2dSpec(input_shape=(1, 5, 1), output_size=2, channels=(2, 2), pool="avg"),
        Cnn2dSpec(input_shape=(1, 6, 6), output_size=2, channels=(4, 4), norm="none"),
        Cnn4dSpec(input_shape=(1, 3, 4, 4, 4), output_size=2, channels=(2, 2)),
        Cnn4dSpec(input_shape=(1, 3, 4, 4, 4), output_size=2, channels=(2, 2, 2), pool="none"),
    ],
    ids=lambda spec: repr(spec),
)
def test_batch_norm_values_per_sample_are_those_the_model_normalises(spec) -> None:
    model = build_model(spec).eval()
    seen: list[int] = []
    for module in model.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.register_forward_pre_hook(lambda _module, args: seen.append(args[0][0, 0].numel()))
    model(torch.zeros((1, *spec.input_shape)))
    assert batch_norm_values_per_sample(spec) == (min(seen) if seen else None)
