"""Checkpoints as one safetensors file: tensors (weights, optimiser moments, RNG) + JSON metadata.

Nothing is pickled: tensors go in as safetensors, everything else (epoch, step, optimiser
hyperparameters, early-stopping state, fp16's loss scale) as JSON in the header's metadata, so a checkpoint
from anywhere can be loaded without running code.
"""

from __future__ import annotations

import json
from typing import Any

import torch
from safetensors.torch import load as load_tensors
from safetensors.torch import save as save_tensors

_META_KEY = "tessera.checkpoint"


def _cpu(t: torch.Tensor) -> torch.Tensor:
    return t.detach().to("cpu").contiguous().clone()


def weights_bytes(model: torch.nn.Module) -> bytes:
    """The model's weights alone, as a safetensors file (what gets registered)."""
    return save_tensors({name: _cpu(t) for name, t in model.state_dict().items()})


def checkpoint_bytes(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    state: dict[str, Any],
    scaler: torch.amp.GradScaler | None = None,
) -> bytes:
    """Model, optimiser, RNG, `state` (epoch, step, loop state) and an enabled loss scaler's
    scale and growth tracker in one safetensors file."""
    tensors = {f"model.{name}": _cpu(t) for name, t in model.state_dict().items()}
    optim = optimizer.state_dict()
    scalars: dict[str, dict[str, Any]] = {}
    for index, values in optim["state"].items():
        for key, value in values.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optim.{index}.{key}"] = _cpu(value)
            else:
                scalars.setdefault(str(index), {})[key] = value
    tensors["rng.torch"] = torch.get_rng_state()
    meta = {"state": state, "param_groups": optim["param_groups"], "optim_scalars": scalars}
    if scaler is not None and scaler.is_enabled():
        # Without it a resumed fp16 run starts again from the initial scale (2**16) and skips
        # steps on overflow until the scale has come back down.
        meta["grad_scaler"] = scaler.state_dict()
    return save_tensors(tensors, metadata={_META_KEY: json.dumps(meta)})


def restore(
    data: bytes,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler | None = None,
) -> dict[str, Any]:
    """Load a checkpoint into `model`, `optimizer` (its state; the groups keep their settings)
    and an enabled `scaler` (when the checkpoint holds a loss scale), reset the RNG; returns the
    saved `state`."""
    tensors = load_tensors(data)
    meta = json.loads(_metadata(data)[_META_KEY])
    device = next(model.parameters()).device
    model.load_state_dict({k[len("model.") :]: v for k, v in tensors.items() if k.startswith("model.")})
    optim_state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        if key.startswith("optim."):
            _, index, name = key.split(".", 2)
            # Adam keeps its step count on the CPU; moments live beside the parameters.
            optim_state.setdefault(int(index), {})[name] = value if name == "step" else value.to(device)
    for index, values in meta["optim_scalars"].items():
        optim_state.setdefault(int(index), {}).update(values)
    # The state (moments, step counts) is the checkpoint's; the groups' settings (lr, betas,
    # weight decay, lr_scale) stay the optimiser's, built from the spec now training: a job
    # resumed from another's checkpoint (spec.resume_from) may set them otherwise.
    settings = [{k: v for k, v in group.items() if k != "params"} for group in optimizer.param_groups]
    optimizer.load_state_dict({"state": optim_state, "param_groups": meta["param_groups"]})
    for group, own in zip(optimizer.param_groups, settings, strict=True):
        group.update(own)
    torch.set_rng_state(tensors["rng.torch"])
    if scaler is not None and scaler.is_enabled() and "grad_scaler" in meta:
        scaler.load_state_dict(meta["grad_scaler"])
    state: dict[str, Any] = meta["state"]
    return state


def restore_weights(data: bytes, model: torch.nn.Module) -> None:
    """Load only a checkpoint's model weights into `model`."""
    tensors = load_tensors(data)
    model.load_state_dict({k[len("model.") :]: v for k, v in tensors.items() if k.startswith("model.")})


def _metadata(data: bytes) -> dict[str, str]:
    header_len = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + header_len])
    metadata: dict[str, str] = header.get("__metadata__", {})
    return metadata


def checkpoint_weights(data: bytes) -> bytes:
    """A checkpoint's model weights alone, as `weights_bytes` saves them from the model."""
    tensors = load_tensors(data)
    return save_tensors({k[len("model.") :]: v for k, v in tensors.items() if k.startswith("model.")})
