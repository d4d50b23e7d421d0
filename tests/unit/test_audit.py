"""The audit lines' pure parts: the refusal lines' rate limit, peers' hosts, the objects a request names."""

from __future__ import annotations

import logging

import pytest

from tessera.v1 import common_pb2, inference_pb2, registry_pb2
from tesserad.api.audit import RefusalWarnings, host_of, targets


def test_one_refusal_line_per_host_and_reason_per_window_the_next_counting_those_left_out(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="tesserad.audit")
    now = [100.0]
    warnings = RefusalWarnings(window_s=10.0, clock=lambda: now[0])
    said = [warnings.warn("call refused", f"ipv4:10.0.0.1:{port}", "unknown token", {}) for port in (1, 2, 3)]
    assert said == [True, False, False]
    # Another reason, or another host, has a line of its own.
    assert warnings.warn("call refused", "ipv4:10.0.0.1:4", "role", {})
    assert warnings.warn("call refused", "ipv4:10.0.0.2:1", "unknown token", {})
    now[0] += 10.0
    assert warnings.warn("call refused", "ipv4:10.0.0.1:5", "unknown token", {})
    assert [r.__dict__["suppressed"] for r in caplog.records] == [0, 0, 0, 2]


def test_the_hosts_remembered_are_bounded() -> None:
    warnings = RefusalWarnings(limit=2, clock=lambda: 0.0)
    for host in ("a", "b", "c"):
        assert warnings.warn("call refused", host, "no token", {})
    # "a" was forgotten first: its next refusal is logged again.
    assert warnings.warn("call refused", "a", "no token", {})
    assert not warnings.warn("call refused", "c", "no token", {})


@pytest.mark.parametrize(
    ("peer", "host"),
    [
        ("ipv4:127.0.0.1:5000", "127.0.0.1"),
        ("ipv6:[::1]:5000", "::1"),
        ("127.0.0.1", "127.0.0.1"),
        ("::1", "::1"),
        ("unix:/run/t.sock", "unix:/run/t.sock"),
    ],
)
def test_the_host_of_a_peer(peer: str, host: str) -> None:
    assert host_of(peer) == host


def test_the_objects_a_request_names_come_from_its_fields_and_its_nested_target() -> None:
    assert targets(registry_pb2.SetAliasRequest(model="m", alias="production", version=3)) == {
        "model": "m",
        "alias": "production",
        "version": 3,
    }
    load = inference_pb2.LoadModelRequest(target=common_pb2.VersionRef(model="m", version=2))
    assert targets(load) == {"model": "m", "version": 2}
    # Unset fields and other fields are left out; what is known already is kept.
    assert targets(registry_pb2.DeleteModelRequest(name="m", force=True), {"name": "x"}) == {"name": "x"}
    assert targets(None) == {}
