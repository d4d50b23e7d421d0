"""A version at every bound the registry sets on what a caller sends (signature, params, metrics,
text, lineage's job spec and datasets, aliases) still fits one GetVersion answer within gRPC's
default 4 MiB: each bound's comment counts on the others'."""

from __future__ import annotations

from tessera.v1 import architecture_pb2, job_spec_pb2
from tesserad.api.convert_registry import architecture_to_dict, job_spec_to_dict, version_to_proto
from tesserad.registry.aliases import MAX_MODEL_ALIASES
from tesserad.registry.records import DatasetLineage, Lineage, Signature, TensorSpec, VersionRecord
from tesserad.registry.validation import (
    MAX_JOB_SPEC_BYTES,
    MAX_LINEAGE_DATASETS,
    MAX_SIGNATURE_TENSORS,
    MAX_TENSOR_DIMS,
    MAX_VERSION_METRICS,
    MAX_VERSION_PARAMS,
    check_job_spec_size,
    check_lineage_datasets,
    metrics_wire_bytes,
    validate_metrics,
    validate_params,
    validate_signature,
    validate_version_text,
)
from tesserad.text import ENTRY_WIRE_BYTES, MAX_PARAM_VALUE, MAX_RECORD_TEXT, entries_wire_bytes

ANSWER_LIMIT = 4 * 2**20
NAME = "n" * 128  # the longest name a model, alias, dataset or experiment may have


def test_a_version_at_every_bound_fits_one_answer() -> None:
    tensors = tuple(
        TensorSpec(f"{i:04d}" + "t" * 252, "float32", (-1,) * MAX_TENSOR_DIMS) for i in range(512)
    )
    signature = Signature(tensors, tuple(TensorSpec("o" + t.name[1:], t.dtype, t.shape) for t in tensors))
    validate_signature(signature, required=True)
    assert len(signature.inputs) + len(signature.outputs) == MAX_SIGNATURE_TENSORS

    value = "v" * MAX_PARAM_VALUE
    params = {
        f"p{i:05d}": value for i in range(MAX_VERSION_PARAMS // (6 + MAX_PARAM_VALUE + ENTRY_WIRE_BYTES))
    }
    validate_params(params)
    assert MAX_VERSION_PARAMS - entries_wire_bytes(params) < MAX_PARAM_VALUE + 100

    metrics = {f"m{i:06d}": 0.5 for i in range(MAX_VERSION_METRICS // metrics_wire_bytes({"m000000": 0.5}))}
    validate_metrics(metrics)

    description = "d" * MAX_RECORD_TEXT
    validate_version_text(description, {})

    spec = job_spec_pb2.JobSpec(freeze=["x" * 1000] * 261)
    check_job_spec_size("lineage.job_spec", spec.ByteSize())
    assert MAX_JOB_SPEC_BYTES - spec.ByteSize() < 2000

    datasets = tuple(DatasetLineage(NAME, 2**62, "a" * 64, True) for _ in range(MAX_LINEAGE_DATASETS))
    check_lineage_datasets(len(datasets))

    record = VersionRecord(
        model=NAME,
        version=2**62,
        format="safetensors",
        description=description,
        signature=signature,
        architecture=architecture_to_dict(
            architecture_pb2.Architecture(
                input_shape=[4], output_size=2, mlp=architecture_pb2.MlpSpec(hidden_sizes=[8])
            )
        ),
        params=params,
        metrics=metrics,
        tags={},
        lineage=Lineage(NAME, NAME, NAME, datasets, 2**62, NAME, job_spec_to_dict(spec)),
        sha256="b" * 64,
        size_bytes=2**40,
        created_at=1.5,
        created_by=NAME,
        parameter_count=2**40,
        aliases=(*(f"{i:04d}" + NAME[4:] for i in range(MAX_MODEL_ALIASES)), "latest"),
    )
    assert version_to_proto(record).ByteSize() < ANSWER_LIMIT
