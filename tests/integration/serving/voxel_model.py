"""A model whose answer depends on one known voxel, for the explanation tests: an mlp (flatten,
linear to 1, relu, linear to 2) whose output 1 is 2 * relu(x[VOXEL]) and output 0 is 0."""

from __future__ import annotations

from pathlib import Path

import numpy as np

import tessera
from tessera.v1 import architecture_pb2, common_pb2

SHAPE = (1, 3, 4, 4, 4)  # (C, T, D, H, W)
VOXEL = (0, 2, 1, 3, 0)


def one_voxel_weights(path: Path) -> Path:
    """An mlp (flatten, linear to 1, relu, linear to 2) whose output 1 is 2 * relu(x[VOXEL])."""
    import torch
    from safetensors.torch import save_file

    from tesserad.nn import build_model, spec_from_dict

    model = build_model(
        spec_from_dict({"family": "mlp", "input_shape": list(SHAPE), "output_size": 2, "hidden_sizes": [1]})
    )
    state = {name: torch.zeros_like(value) for name, value in model.state_dict().items()}
    first = torch.zeros(int(np.prod(SHAPE)))
    first[int(np.ravel_multi_index(VOXEL, SHAPE))] = 1.0
    state["1.weight"] = first[None]
    state["3.weight"] = torch.tensor([[0.0], [2.0]])
    save_file(state, str(path))
    return path


def push_one_voxel(client: tessera.Client, tmp_path: Path, name: str = "voxel") -> int:
    version = client.models.push(
        name,
        one_voxel_weights(tmp_path / "voxel.safetensors"),
        architecture=architecture_pb2.Architecture(
            input_shape=SHAPE, output_size=2, mlp=architecture_pb2.MlpSpec(hidden_sizes=[1])
        ),
        signature=common_pb2.Signature(
            inputs=[
                common_pb2.TensorSpec(name="input", dtype=common_pb2.DATA_TYPE_FLOAT32, shape=[-1, *SHAPE])
            ],
            outputs=[common_pb2.TensorSpec(name="output", dtype=common_pb2.DATA_TYPE_FLOAT32, shape=[-1, 2])],
        ),
    )
    return version.version


def clips(rows: int, seed: int = 0) -> np.ndarray:
    """Positive inputs, so the relu passes the voxel through everywhere on the path from 0."""
    return np.random.default_rng(seed).uniform(0.2, 1.0, (rows, *SHAPE)).astype(np.float32)
