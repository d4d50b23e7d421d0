"""tessera: the Python SDK for tesserad.

    import numpy as np, tessera

    with tessera.Client("127.0.0.1:50051") as client:
        client.datasets.push("clips", x=x, y=y, splits={"train": 0.8, "val": 0.2})
        job = client.training.submit(spec)
        for event in job.watch():
            ...
        print(client.inference.predict("clf", {"input": x[:4]})["output"])

`tessera.aio.Client` is the asyncio twin. Every failed call raises a `tessera.TesseraError`
subclass named after its status code (`tessera.NotFound`, `tessera.InvalidArgument`, ...);
`Job.wait()` raises `tessera.JobFailed` (`tessera.JobCancelled`) for a job that did not succeed,
`Sweep.wait()` `tessera.SweepFailed` (`tessera.SweepCancelled`) for a sweep, and `tessera.Error`
is the base of them all.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tessera.client import Client
    from tessera.errors import (
        Aborted,
        AlreadyExists,
        Cancelled,
        DataLoss,
        DeadlineExceeded,
        Error,
        FailedPrecondition,
        Internal,
        InvalidArgument,
        JobCancelled,
        JobFailed,
        NotAnswering,
        NotFound,
        OutOfRange,
        PermissionDenied,
        ResourceExhausted,
        StillRunning,
        SweepCancelled,
        SweepFailed,
        TesseraError,
        Unauthenticated,
        Unavailable,
        Unimplemented,
        Unknown,
    )
    from tessera.events import (
        CheckpointSaved,
        EpochMetrics,
        JobError,
        JobEvent,
        JobState,
        LogLine,
        Progress,
        ResourceUsage,
        StateChanged,
        StepMetrics,
        VersionRegistered,
    )
    from tessera.explanations import Explanation, time_slice, top_positions
    from tessera.inference import LoadState, Prediction
    from tessera.listings import AioListing, Listing
    from tessera.run_logging import ActiveRun, MetricLogger, MetricPoint
    from tessera.runs import Leaderboard, LeaderboardEntry, MetricHistory, Run, RunComparison, RunMetrics
    from tessera.sweeps import Sweep, SweepState, SweepTrial
    from tessera.training import Job, MetricPointsReplaced, RunStatus
    from tessera.transport import TLS, RetryPolicy

__version__ = "0.1.0"

# Each public name's module, imported on first use (PEP 562): `import tessera.backup` (as the
# daemon does) then loads the archive format alone, not the whole SDK with grpc and numpy.
_NAMES_BY_MODULE = {
    "tessera.client": ("Client",),
    "tessera.errors": (
        "Aborted",
        "AlreadyExists",
        "Cancelled",
        "DataLoss",
        "DeadlineExceeded",
        "Error",
        "FailedPrecondition",
        "Internal",
        "InvalidArgument",
        "JobCancelled",
        "JobFailed",
        "NotAnswering",
        "NotFound",
        "OutOfRange",
        "PermissionDenied",
        "ResourceExhausted",
        "StillRunning",
        "SweepCancelled",
        "SweepFailed",
        "TesseraError",
        "Unauthenticated",
        "Unavailable",
        "Unimplemented",
        "Unknown",
    ),
    "tessera.events": (
        "CheckpointSaved",
        "EpochMetrics",
        "JobError",
        "JobEvent",
        "JobState",
        "LogLine",
        "Progress",
        "ResourceUsage",
        "StateChanged",
        "StepMetrics",
        "VersionRegistered",
    ),
    "tessera.explanations": ("Explanation", "time_slice", "top_positions"),
    "tessera.inference": ("LoadState", "Prediction"),
    "tessera.listings": ("AioListing", "Listing"),
    "tessera.run_logging": ("ActiveRun", "MetricLogger", "MetricPoint"),
    "tessera.runs": (
        "Leaderboard",
        "LeaderboardEntry",
        "MetricHistory",
        "Run",
        "RunComparison",
        "RunMetrics",
    ),
    "tessera.sweeps": ("Sweep", "SweepState", "SweepTrial"),
    "tessera.training": ("Job", "MetricPointsReplaced", "RunStatus"),
    "tessera.transport": ("TLS", "RetryPolicy"),
}
_MODULE_OF = {name: module for module, names in _NAMES_BY_MODULE.items() for name in names}

__all__ = [
    "TLS",
    "Aborted",
    "ActiveRun",
    "AioListing",
    "AlreadyExists",
    "Cancelled",
    "CheckpointSaved",
    "Client",
    "DataLoss",
    "DeadlineExceeded",
    "EpochMetrics",
    "Error",
    "Explanation",
    "FailedPrecondition",
    "Internal",
    "InvalidArgument",
    "Job",
    "JobCancelled",
    "JobError",
    "JobEvent",
    "JobFailed",
    "JobState",
    "Leaderboard",
    "LeaderboardEntry",
    "Listing",
    "LoadState",
    "LogLine",
    "MetricHistory",
    "MetricLogger",
    "MetricPoint",
    "MetricPointsReplaced",
    "NotAnswering",
    "NotFound",
    "OutOfRange",
    "PermissionDenied",
    "Prediction",
    "Progress",
    "ResourceExhausted",
    "ResourceUsage",
    "RetryPolicy",
    "Run",
    "RunComparison",
    "RunMetrics",
    "RunStatus",
    "StateChanged",
    "StepMetrics",
    "StillRunning",
    "Sweep",
    "SweepCancelled",
    "SweepFailed",
    "SweepState",
    "SweepTrial",
    "TesseraError",
    "Unauthenticated",
    "Unavailable",
    "Unimplemented",
    "Unknown",
    "VersionRegistered",
    "time_slice",
    "top_positions",
]


# The submodules a user reaches as `tessera.aio.Client` after a plain `import tessera`, imported
# on first use as the names are.
_SUBMODULES = (
    "aio",
    "client",
    "datasets",
    "errors",
    "events",
    "explanations",
    "inference",
    "listings",
    "models",
    "run_logging",
    "runs",
    "sweeps",
    "system",
    "training",
    "transport",
)


def __getattr__(name: str) -> Any:
    if name in _SUBMODULES:
        # import_module binds the submodule here itself, so that this runs once per name.
        return importlib.import_module(f"{__name__}.{name}")
    module = _MODULE_OF.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    # Kept, so that this runs once per name.
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    # The public names, not the imports this module makes for itself (Any, importlib).
    return sorted({*__all__, *_SUBMODULES, "__version__"})
