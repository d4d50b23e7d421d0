"""The manifest's store schema: written when known, read back, absent from an archive made
before schema versions, and refused when it is no count."""

from __future__ import annotations

import json

import pytest

from tessera.backup import ArchiveError, Entry, Manifest


def test_the_store_schema_goes_through_the_manifest_and_may_be_absent() -> None:
    manifest = Manifest("1.0.0", "now", {"meta": 1}, Entry("a" * 64, 1), {}, store_schema=3)
    assert Manifest.from_json(manifest.to_json()) == manifest
    document = json.loads(manifest.to_json())
    del document["store_schema"]
    assert Manifest.from_json(json.dumps(document).encode()).store_schema is None


def test_a_store_schema_that_is_no_count_is_refused() -> None:
    document = json.loads(Manifest("1.0.0", "now", {}, Entry("a" * 64, 1), {}, store_schema=1).to_json())
    with pytest.raises(ArchiveError, match="is malformed"):
        Manifest.from_json(json.dumps({**document, "store_schema": "2"}).encode())
