"""Batch normalisation over (N, C, T, D, H, W)."""

from __future__ import annotations

from torch import Tensor
from torch.nn.modules.batchnorm import _BatchNorm


class BatchNorm4d(_BatchNorm):
    """torch.nn.BatchNorm3d for 6-D input: per-channel statistics over N, T, D, H, W."""

    def _check_input_dim(self, input: Tensor) -> None:
        if input.dim() != 6:
            raise ValueError(f"BatchNorm4d expects input (N, C, T, D, H, W), got shape {tuple(input.shape)}")
