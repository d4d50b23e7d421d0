"""The state gauges of a real daemon's /metrics: its build, whether its tokens file applied (a
broken one is otherwise only logged), when its TLS certificate ends, and which versions are ready."""

from __future__ import annotations

import urllib.request
from datetime import UTC, datetime, timedelta

import grpc
from prometheus_client.parser import text_string_to_metric_families

from tessera.v1 import common_pb2, inference_pb2, inference_pb2_grpc, registry_pb2_grpc
from tesserad import __version__
from tesserad.security import Role
from tesserad.store.schema import STORE_SCHEMA
from tests.conftest import InProcessDaemon
from tests.integration.registry.conftest import upload_versions
from tests.integration.security.conftest import Tokens, bearer, dated_certificate


def samples(daemon: InProcessDaemon) -> dict[str, list[tuple[dict[str, str], float]]]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{daemon.daemon.metrics_port}/metrics", timeout=10).read()
    found: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text.decode()):
        for sample in family.samples:
            found.setdefault(sample.name, []).append((sample.labels, sample.value))
    return found


def test_build_tokens_reload_certificate_expiry_and_ready_versions_are_exported(
    start_daemon, tokens: Tokens, tmp_path
) -> None:
    not_after = datetime.now(UTC) + timedelta(days=10)
    cert, key = dated_certificate(tmp_path, "server", datetime.now(UTC) - timedelta(days=1), not_after)
    key.chmod(0o600)
    daemon: InProcessDaemon = start_daemon(
        **{
            "security.tokens_file": str(tokens.file),
            "security.tls_cert_file": str(cert),
            "security.tls_key_file": str(key),
        }
    )
    before = samples(daemon)
    assert before["tessera_build_info"] == [
        ({"version": __version__, "store_schema": str(STORE_SCHEMA)}, 1.0)
    ]
    assert before["tessera_tokens_reload_success"] == [({}, 1.0)]
    [(_, reloaded_at)] = before["tessera_tokens_last_reload_timestamp_seconds"]
    assert reloaded_at > 0
    [(_, expiry)] = before["tessera_tls_certificate_expiry_timestamp_seconds"]
    assert abs(expiry - not_after.timestamp()) < 2
    assert before.get("tessera_model_ready", []) == []

    # A broken file: the tokens in use stay, and the gauge says the file is not applied.
    good = tokens.file.read_text()
    tokens.file.write_text("this is not toml [")
    daemon.run(daemon.daemon.reload())
    broken = samples(daemon)
    assert broken["tessera_tokens_reload_success"] == [({}, 0.0)]
    assert broken["tessera_tokens_last_reload_timestamp_seconds"] == [({}, reloaded_at)]
    tokens.file.write_text(good)
    daemon.run(daemon.daemon.reload())
    assert samples(daemon)["tessera_tokens_reload_success"] == [({}, 1.0)]

    channel = grpc.secure_channel(
        daemon.target, grpc.ssl_channel_credentials(root_certificates=cert.read_bytes())
    )
    try:
        admin = bearer(tokens.token[Role.ADMIN])
        registry = registry_pb2_grpc.RegistryStub(channel)
        upload_versions(_Authorised(registry, admin), "ready-model", 1)
        inference_pb2_grpc.InferenceStub(channel).LoadModel(
            inference_pb2.LoadModelRequest(target=common_pb2.VersionRef(model="ready-model", version=1)),
            metadata=admin,
            timeout=60,
        )
    finally:
        channel.close()
    assert samples(daemon)["tessera_model_ready"] == [({"model": "ready-model", "version": "1"}, 1.0)]


class _Authorised:
    """A stub whose calls carry `metadata`."""

    def __init__(self, stub: registry_pb2_grpc.RegistryStub, metadata: list[tuple[str, str]]) -> None:
        self._stub = stub
        self._metadata = metadata

    def __getattr__(self, name: str):
        call = getattr(self._stub, name)
        return lambda *args, **kwargs: call(*args, metadata=self._metadata, **kwargs)
