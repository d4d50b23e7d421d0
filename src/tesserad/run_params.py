"""What a training job's run and its registered version record of its spec, read alike by
tracking and the registry."""

from __future__ import annotations

from collections.abc import Mapping

_EARLY_STOPPING = "early_stopping."


def without_early_stopping_off(params: Mapping[str, str]) -> dict[str, str] | None:
    """`params` without their early_stopping.* where they say it was off (patience 0), as a job
    recorded them before it recorded them only for a spec that turns it on; None when they do not
    (nothing to drop)."""
    if params.get(f"{_EARLY_STOPPING}patience") != "0":
        return None
    return {key: value for key, value in params.items() if not key.startswith(_EARLY_STOPPING)}
