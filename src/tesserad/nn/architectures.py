"""torch modules built from architecture specs (tesserad.nn.specs)."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from tesserad.nn.conv import Conv4d
from tesserad.nn.norm4d import BatchNorm4d
from tesserad.nn.pool4d import AvgPool4d, MaxPool4d
from tesserad.nn.specs import (
    ArchitectureSpec,
    Cnn2dSpec,
    Cnn4dSpec,
    LstmSpec,
    MlpSpec,
    PythonSpec,
    TransformerSpec,
    validate_spec,
)
from tesserad.nn.user_modules import build_user_module

_ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "gelu": nn.GELU,
    "tanh": nn.Tanh,
    "silu": nn.SiLU,
}


def parameter_count(model: nn.Module) -> int:
    """Number of trainable scalars."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def build_model(spec: ArchitectureSpec) -> nn.Module:
    """The untrained model a (validated) spec describes; it maps (N, *input_shape) to (N, output_size)."""
    validate_spec(spec)
    if isinstance(spec, PythonSpec):
        model: nn.Module = build_user_module(
            spec.entry, spec.kwargs, spec.input_shape, spec.output_size, spec.module_sha256
        )
        return model
    if isinstance(spec, MlpSpec):
        return _mlp(spec)
    if isinstance(spec, Cnn2dSpec | Cnn4dSpec):
        return _ConvNet(spec)
    if isinstance(spec, LstmSpec):
        return _Lstm(spec)
    return _Transformer(spec)


def _mlp(spec: MlpSpec) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Flatten()]
    width = math.prod(spec.input_shape)
    for hidden in spec.hidden_sizes:
        layers.append(nn.Linear(width, hidden))
        if spec.norm == "layer":
            layers.append(nn.LayerNorm(hidden))
        elif spec.norm == "batch":
            layers.append(nn.BatchNorm1d(hidden))
        layers.append(_ACTIVATIONS[spec.activation]())
        if spec.dropout > 0:
            layers.append(nn.Dropout(spec.dropout))
        width = hidden
    layers.append(nn.Linear(width, spec.output_size))
    return nn.Sequential(*layers)


class _ConvNet(nn.Module):
    """Conv blocks (conv 'same', norm, activation, pool 2 on dims >= 2, dropout), global mean, head."""

    def __init__(self, spec: Cnn2dSpec | Cnn4dSpec) -> None:
        super().__init__()
        four_d = isinstance(spec, Cnn4dSpec)
        size = list(spec.input_shape[1:])
        c_in = spec.input_shape[0]
        blocks: list[nn.Module] = []
        for c_out in spec.channels:
            with_norm = spec.norm == "batch"
            if four_d:
                blocks.append(Conv4d(c_in, c_out, spec.kernel_size, padding="same", bias=not with_norm))
            else:
                blocks.append(nn.Conv2d(c_in, c_out, spec.kernel_size, padding="same", bias=not with_norm))
            if with_norm:
                blocks.append(BatchNorm4d(c_out) if four_d else nn.BatchNorm2d(c_out))
            blocks.append(_ACTIVATIONS[spec.activation]())
            window = tuple(2 if s >= 2 else 1 for s in size)
            if spec.pool != "none" and any(w > 1 for w in window):
                if four_d:
                    pool_4d = MaxPool4d if spec.pool == "max" else AvgPool4d
                    t, d, h, w = window
                    blocks.append(pool_4d((t, d, h, w)))
                else:
                    pool_2d = nn.MaxPool2d if spec.pool == "max" else nn.AvgPool2d
                    h, w = window
                    blocks.append(pool_2d((h, w)))
                size = [s // w for s, w in zip(size, window, strict=True)]
            if spec.dropout > 0:
                blocks.append(nn.Dropout(spec.dropout))
            c_in = c_out
        self.features = nn.Sequential(*blocks)
        self.spatial_dims = tuple(range(2, 2 + len(size)))
        self.head = nn.Linear(c_in, spec.output_size)

    def forward(self, x: Tensor) -> Tensor:
        features = self.features(x)  # (N, C, *spatial)
        out: Tensor = self.head(features.mean(dim=self.spatial_dims))
        return out


class _Lstm(nn.Module):
    """LSTM; the head reads the final hidden state of the last layer (both directions if bidirectional)."""

    def __init__(self, spec: LstmSpec) -> None:
        super().__init__()
        self.lstm = nn.LSTM(
            spec.input_shape[1],
            spec.hidden_size,
            spec.num_layers,
            batch_first=True,
            dropout=spec.dropout,
            bidirectional=spec.bidirectional,
        )
        self.directions = 2 if spec.bidirectional else 1
        self.head = nn.Linear(spec.hidden_size * self.directions, spec.output_size)

    def forward(self, x: Tensor) -> Tensor:
        _, (h_n, _) = self.lstm(x)  # h_n: (layers * directions, N, hidden)
        last = h_n[-self.directions :].transpose(0, 1).flatten(1)  # (N, directions * hidden)
        out: Tensor = self.head(last)
        return out


class _Transformer(nn.Module):
    """Linear embedding, learned positions, pre-norm encoder layers, pooling, linear head."""

    def __init__(self, spec: TransformerSpec) -> None:
        super().__init__()
        steps, features = spec.input_shape
        self.pooling = spec.pooling
        self.embed = nn.Linear(features, spec.d_model)
        self.cls = nn.Parameter(torch.zeros(1, 1, spec.d_model)) if spec.pooling == "cls" else None
        positions = steps + (1 if self.cls is not None else 0)
        self.positions = nn.Parameter(torch.randn(1, positions, spec.d_model) * 0.02)
        layer = nn.TransformerEncoderLayer(
            spec.d_model,
            spec.num_heads,
            spec.dim_feedforward,
            spec.dropout,
            activation="gelu",
            batch_first=True,
            norm_first=True,
        )
        # enable_nested_tensor only matters for padded batches, which never reach this model.
        self.encoder = nn.TransformerEncoder(layer, spec.num_layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(spec.d_model)
        self.head = nn.Linear(spec.d_model, spec.output_size)

    def forward(self, x: Tensor) -> Tensor:
        h = self.embed(x)  # (N, T, d_model)
        if self.cls is not None:
            h = torch.cat([self.cls.expand(h.shape[0], -1, -1), h], dim=1)
        h = self.norm(self.encoder(h + self.positions))
        if self.pooling == "mean":
            pooled = h.mean(dim=1)
        elif self.pooling == "last":
            pooled = h[:, -1]
        else:
            pooled = h[:, 0]
        out: Tensor = self.head(pooled)
        return out
