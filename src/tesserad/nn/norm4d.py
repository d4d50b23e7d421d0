"""Batch normalisation over (N, C, T, D, H, W)."""

from __future__ import annotations

from torch import Tensor
from torch.nn.modules.batchnorm import _BatchNorm


class BatchNorm4d(_BatchNorm):
    """torch.nn.BatchNorm3d for 6-D input: per-channel statistics over N, T, D, H, W."""

    def forward(self, input: Tensor) -> Tensor:
        if input.dim() != 6:
            raise ValueError(f"BatchNorm4d expects input (N, C, T, D, H, W), got shape {tuple(input.shape)}")
        # cuDNN's batch norm takes at most 5 dimensions. The statistics are per channel, so
        # normalising (N, C, T, D, H*W) is the same computation on every device.
        return super().forward(input.flatten(4)).reshape(input.shape)

    def _check_input_dim(self, input: Tensor) -> None:
        if input.dim() != 5:  # forward hands _BatchNorm the folded (N, C, T, D, H*W) view
            raise ValueError(f"BatchNorm4d expects input (N, C, T, D, H, W), got shape {tuple(input.shape)}")
