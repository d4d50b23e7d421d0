"""What a training job's run and its registered version record of its spec, read alike by
tracking and the registry."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

_EARLY_STOPPING = "early_stopping."
# Config keys that are no hyperparameters: where the run goes, what it registers, what it reads.
_NOT_PARAMS = ("tags", "register_as", "experiment", "run_name", "priority", "dataset_sha256", "sha256")


def flatten_params(config: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """The hyperparameters of a config as run params ("optimizer.lr" -> "0.001"). Early stopping's
    only when it is on: the config holds its defaults with patience 0 when the spec leaves it out,
    and runs compared by their params would differ by a section neither set."""
    out: dict[str, str] = {}
    for key, value in config.items():
        if key in _NOT_PARAMS:
            continue
        if not prefix and key == "early_stopping" and not value.get("patience"):
            continue
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten_params(value, name + "."))
        elif isinstance(value, list):
            out[name] = ",".join(param_text(v) for v in value)
        else:
            out[name] = param_text(value)
    return out


def param_text(value: object) -> str:
    """A spec's value as a run param: a bool as the spec's TOML or JSON writes it (true, not
    Python's True), so that a filter on params.optimizer.nesterov = 'false' reads as the spec."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def without_early_stopping_off(params: Mapping[str, str]) -> dict[str, str] | None:
    """`params` without their early_stopping.* where they say it was off (patience 0), as a job
    recorded them before it recorded them only for a spec that turns it on; None when they do not
    (nothing to drop)."""
    if params.get(f"{_EARLY_STOPPING}patience") != "0":
        return None
    return {key: value for key, value in params.items() if not key.startswith(_EARLY_STOPPING)}
