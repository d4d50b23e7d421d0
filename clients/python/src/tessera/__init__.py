"""tessera: the Python SDK for tesserad.

    import numpy as np, tessera

    with tessera.Client("127.0.0.1:50051") as client:
        client.datasets.push("clips", x=x, y=y, splits={"train": 0.8, "val": 0.2})
        job = client.training.submit(spec)
        for event in job.watch():
            ...
        print(client.inference.predict("clf", {"input": x[:4]})["output"])

`tessera.aio.Client` is the asyncio twin. Every failed call raises a `tessera.TesseraError`
subclass named after its status code (`tessera.NotFound`, `tessera.InvalidArgument`, ...).
"""

from tessera.client import Client
from tessera.errors import (
    Aborted,
    AlreadyExists,
    Cancelled,
    DataLoss,
    DeadlineExceeded,
    FailedPrecondition,
    Internal,
    InvalidArgument,
    JobFailed,
    NotFound,
    OutOfRange,
    PermissionDenied,
    ResourceExhausted,
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
from tessera.inference import Prediction
from tessera.training import Job
from tessera.transport import TLS, RetryPolicy

__version__ = "0.1.0"

__all__ = [
    "TLS",
    "Aborted",
    "AlreadyExists",
    "Cancelled",
    "CheckpointSaved",
    "Client",
    "DataLoss",
    "DeadlineExceeded",
    "EpochMetrics",
    "Explanation",
    "FailedPrecondition",
    "Internal",
    "InvalidArgument",
    "Job",
    "JobError",
    "JobEvent",
    "JobFailed",
    "JobState",
    "LogLine",
    "NotFound",
    "OutOfRange",
    "PermissionDenied",
    "Prediction",
    "Progress",
    "ResourceExhausted",
    "ResourceUsage",
    "RetryPolicy",
    "StateChanged",
    "StepMetrics",
    "TesseraError",
    "Unauthenticated",
    "Unavailable",
    "Unimplemented",
    "Unknown",
    "VersionRegistered",
    "time_slice",
    "top_positions",
]
