"""Datasets messages <-> datasets domain types."""

from __future__ import annotations

from tessera.v1 import common_pb2
from tessera.v1 import datasets_pb2 as pb
from tesserad.api.convert_common import timestamp
from tesserad.api.convert_registry import dtype_value
from tesserad.datasets import (
    DEFAULT_SPLIT,
    DatasetRecord,
    DatasetVersionRecord,
    FractionSplit,
    IndexSplit,
    SplitSpec,
    UploadSpec,
)
from tesserad.errors import InvalidArgument

FORMAT_NAMES = {pb.DATASET_FORMAT_NPZ: "npz", pb.DATASET_FORMAT_NPY: "npy"}
FORMAT_VALUES = {name: value for value, name in FORMAT_NAMES.items()}


def split_spec_from_proto(message: pb.SplitSpec) -> SplitSpec:
    kind = message.WhichOneof("kind")
    if kind == "fractions":
        return FractionSplit(
            tuple((s.name, s.fraction) for s in message.fractions.splits), message.fractions.seed
        )
    if kind == "indices":
        return IndexSplit(tuple((s.name, tuple(s.indices)) for s in message.indices.splits))
    # Also what a kind this daemon does not know arrives as: the default would split otherwise.
    raise InvalidArgument(
        f"splits is set but gives neither fractions nor indices; set one, or leave splits unset for "
        f"one split {DEFAULT_SPLIT!r} of every sample"
    )


def upload_spec_from_proto(header: pb.UploadDatasetHeader) -> UploadSpec:
    return UploadSpec(
        name=header.name,
        format=FORMAT_NAMES.get(header.format, str(header.format) if header.format else ""),
        sha256=header.sha256,
        size_bytes=header.size_bytes,
        splits=split_spec_from_proto(header.splits) if header.HasField("splits") else None,
        allow_nonfinite=header.allow_nonfinite,
        array_name=header.array_name,
        description=header.description,
        tags=dict(header.tags),
    )


def version_to_proto(record: DatasetVersionRecord) -> pb.DatasetVersion:
    return pb.DatasetVersion(
        name=record.name,
        version=record.version,
        format=FORMAT_VALUES[record.format],
        sha256=record.sha256,
        size_bytes=record.size_bytes,
        num_samples=record.num_samples,
        arrays=[
            pb.ArrayInfo(
                name=a.name,
                dtype=dtype_value(a.dtype),
                shape=a.shape,
                stats=pb.ArrayStats(
                    min=a.stats.min,
                    max=a.stats.max,
                    mean=a.stats.mean,
                    std=a.stats.std,
                    nonfinite_count=a.stats.nonfinite_count,
                    class_counts=a.stats.class_counts,
                ),
            )
            for a in record.arrays
        ],
        splits=[pb.SplitInfo(name=s.name, count=s.count) for s in record.splits],
        created_at=timestamp(record.created_at),
        created_by=record.created_by,
        description=record.description,
        tags=record.tags,
        allow_nonfinite=record.allow_nonfinite,
        deduplicated=record.deduplicated,
        existing_version=record.existing_version,
        shared_with=common_pb2.DatasetRef(name=record.shared_with[0], version=record.shared_with[1])
        if record.shared_with
        else None,
    )


def dataset_to_proto(record: DatasetRecord) -> pb.Dataset:
    return pb.Dataset(
        name=record.name,
        latest_version=record.latest_version,
        version_count=record.version_count,
        size_bytes=record.size_bytes,
        created_at=timestamp(record.created_at),
        updated_at=timestamp(record.updated_at),
    )
