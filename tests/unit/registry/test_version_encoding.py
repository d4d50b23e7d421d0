"""The stored form of a version: the hand-written encoder writes exactly the record's fields."""

from __future__ import annotations

import json
from dataclasses import asdict, fields, replace

from tesserad.registry.records import (
    AliasEvent,
    DatasetLineage,
    Lineage,
    SameBytes,
    Signature,
    TensorSpec,
    VersionRecord,
    decode_version,
    encode_version,
)

RECORD = VersionRecord(
    model="m",
    version=3,
    format="safetensors",
    description="d",
    signature=Signature((TensorSpec("x", "float32", (-1, 4)),), (TensorSpec("y", "int64", ()),)),
    architecture={"family": "mlp", "input_shape": [4], "output_size": 2, "hidden_sizes": [8]},
    params={"lr": "0.1"},
    metrics={"acc": 0.5},
    tags={"team": "ml"},
    lineage=Lineage("run", "job", "exp", (DatasetLineage("ds", 2, "a" * 64),), 1, "parent", {"epochs": 3}),
    sha256="b" * 64,
    size_bytes=100,
    created_at=1.5,
    created_by="me",
    parameter_count=58,
    aliases=("latest",),
    alias_moved=AliasEvent("m", "prod", 1, 3, 2.0, "me"),
    alias_refused="no room",
    same_bytes=SameBytes((1,), 1),
)


def test_a_version_is_stored_as_every_field_but_the_read_time_ones():
    # A field added to VersionRecord (or a nested record) and not to encode_version fails here.
    expected = asdict(RECORD)
    del (
        expected["aliases"],
        expected["alias_moved"],
        expected["alias_refused"],
        expected["deployment_warnings"],
        expected["same_bytes"],
        expected["registered_before"],
    )
    del expected["lineage"]["parent_deleted"]
    stored = json.loads(encode_version(RECORD))["data"]
    assert stored == json.loads(json.dumps(expected))
    assert {f.name for f in fields(VersionRecord)} - set(stored) == {
        "aliases",
        "alias_moved",
        "alias_refused",
        "deployment_warnings",
        "same_bytes",
        "registered_before",
    }
    assert {f.name for f in fields(Lineage)} - set(stored["lineage"]) == {"parent_deleted"}


def test_a_stored_version_reads_back_as_written():
    assert decode_version(encode_version(RECORD)) == replace(
        RECORD, aliases=(), alias_moved=None, alias_refused="", same_bytes=None
    )
