"""`tessera info`'s data line: what it says of a daemon that does not tell its store schema."""

from __future__ import annotations

from tessera.cli.system import data_line
from tessera.v1 import system_pb2 as pb


def usage(**fields: int) -> pb.DataDirUsage:
    return pb.DataDirUsage(path="/var/lib/tesserad", store_bytes=2**20, store_map_size_bytes=2**30, **fields)


def test_the_store_schema_the_daemon_tells_is_shown():
    assert ", store schema 4," in data_line(usage(store_schema=4), replica=False)


def test_a_daemon_older_than_store_schema_shows_none():
    # Its answer has no such field: 0 is no schema, and nothing to compare an archive's with.
    line = data_line(usage(), replica=False)
    assert "store schema -," in line and "schema 0" not in line


def test_a_replica_holds_a_cache_and_no_store():
    line = data_line(usage(blob_bytes=2048), replica=True)
    assert line.startswith("data /var/lib/tesserad: cache ") and "schema" not in line
