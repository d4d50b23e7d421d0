"""A Ray worker's dataset fetch from a daemon serving TLS or mutual TLS, with the channel settings
the daemon hands its workers (training.ray_worker_tls), and the start-up checks on those settings.
Ray itself is not needed here: tests/integration/training/test_ray.py runs a job over mutual TLS on
a real cluster."""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

import grpc
import numpy as np
import pytest

from tessera.v1 import datasets_pb2, datasets_pb2_grpc
from tesserad.security import Role
from tesserad.server import SettingsRefusal, StartupError
from tesserad.training import ray_worker_client
from tesserad.training.ray_worker_client import DatasetFetchError, cached_dataset
from tests.conftest import InProcessDaemon, daemon_settings
from tests.integration.security.conftest import Pki, Tokens, bearer
from tests.integration.security.test_tls import tls_settings
from tests.integration.security.test_tls_rotation import install


@pytest.fixture
def cache_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    directory = tmp_path / "node-cache"
    monkeypatch.setattr(ray_worker_client, "CACHE_DIR", directory)
    return directory


def ray_tls(pki: Pki) -> dict[str, str]:
    return {
        "training.ray_tls_cert_file": str(pki.client_cert),
        "training.ray_tls_key_file": str(pki.client_key),
    }


def push(daemon: InProcessDaemon, credentials: grpc.ChannelCredentials, token: str) -> str:
    """A small dataset "d" v1 uploaded through `daemon`; its sha256."""
    buffer = io.BytesIO()
    np.savez(buffer, x=np.arange(12, dtype=np.float32).reshape(4, 3), y=np.arange(4))
    data = buffer.getvalue()
    requests = [
        datasets_pb2.UploadDatasetRequest(
            header=datasets_pb2.UploadDatasetHeader(name="d", format=datasets_pb2.DATASET_FORMAT_NPZ)
        ),
        datasets_pb2.UploadDatasetRequest(chunk=data),
    ]
    with grpc.secure_channel(f"localhost:{daemon.daemon.port}", credentials) as channel:
        datasets_pb2_grpc.DatasetsStub(channel).UploadDataset(
            iter(requests), metadata=bearer(token), timeout=30
        )
    return hashlib.sha256(data).hexdigest()


@pytest.mark.parametrize("mutual", [False, True], ids=["tls", "mutual-tls"])
def test_a_worker_fetches_over_the_tls_the_daemon_serves(data_dir, pki, tokens: Tokens, cache_dir, mutual):
    settings = daemon_settings(
        data_dir, **tls_settings(pki, mutual), **ray_tls(pki), **{"security.tokens_file": str(tokens.file)}
    )
    daemon = InProcessDaemon(settings).start()
    try:
        sha256 = push(
            daemon, pki.channel_credentials("client" if mutual else None), tokens.token[Role.TRAINER]
        )
        tls = daemon.daemon.worker_tls()
        assert tls is not None and tls.root_certificates == pki.server_cert.read_bytes()
        assert bool(tls.certificate_chain) == bool(tls.private_key)
        assert "PRIVATE KEY" not in repr(tls)
        target = f"127.0.0.1:{daemon.daemon.port}"
        path = cached_dataset(target, tokens.token[Role.READER], "d", 1, sha256, "npz", 2**30, tls)
        assert hashlib.sha256(path.read_bytes()).hexdigest() == sha256
    finally:
        daemon.stop()


def test_a_worker_trusts_the_certificate_served_not_the_file_on_disk(
    data_dir, pki, tokens: Tokens, cache_dir, tmp_path
):
    """A new pair not read yet (until the next check or SIGHUP), or a rotation refused, leaves
    the old certificate serving: a job started then must trust that one to fetch its data."""
    cert, key = tmp_path / "server.pem", tmp_path / "server.key"
    install(pki.server_cert, cert)
    install(pki.server_key, key)
    overrides = {
        "security.tls_cert_file": str(cert),
        "security.tls_key_file": str(key),
        "security.tokens_reload_interval_s": "0",
        "security.tokens_file": str(tokens.file),
    }
    daemon = InProcessDaemon(daemon_settings(data_dir, **overrides)).start()
    target, reader = f"127.0.0.1:{daemon.daemon.port}", tokens.token[Role.READER]
    try:
        sha256 = push(daemon, pki.channel_credentials(), tokens.token[Role.TRAINER])

        install(pki.next_cert, cert)  # with the old key: refused at the reload
        daemon.run(daemon.daemon.reload())
        refused = daemon.daemon.worker_tls()
        install(pki.next_key, key)  # a usable pair, not read yet
        not_read = daemon.daemon.worker_tls()
        for tls in (refused, not_read):
            assert tls is not None and tls.root_certificates == pki.server_cert.read_bytes()
            path = cached_dataset(target, reader, "d", 1, sha256, "npz", 2**30, tls)
            assert hashlib.sha256(path.read_bytes()).hexdigest() == sha256
            path.unlink()

        daemon.run(daemon.daemon.reload())
        rotated = daemon.daemon.worker_tls()
        assert rotated is not None and rotated.root_certificates == pki.next_cert.read_bytes()
        path = cached_dataset(target, reader, "d", 1, sha256, "npz", 2**30, rotated)
        assert hashlib.sha256(path.read_bytes()).hexdigest() == sha256
    finally:
        daemon.stop()


def test_without_the_daemons_tls_the_fetch_fails_naming_the_daemon(data_dir, pki, tokens: Tokens, cache_dir):
    settings = daemon_settings(data_dir, **tls_settings(pki), **{"security.tokens_file": str(tokens.file)})
    daemon = InProcessDaemon(settings).start()
    try:
        target = f"127.0.0.1:{daemon.daemon.port}"
        with pytest.raises(DatasetFetchError, match=f"from the daemon at {target} failed: UNAVAILABLE"):
            cached_dataset(target, tokens.token[Role.READER], "d", 1, "0" * 64, "npz", 2**30)
    finally:
        daemon.stop()


def test_ray_under_mutual_tls_without_a_workers_certificate_is_refused_at_start(data_dir, pki):
    with pytest.raises(SettingsRefusal) as err:
        InProcessDaemon(
            daemon_settings(data_dir, **tls_settings(pki, mutual=True), **{"training.backend": "ray"})
        ).start()
    assert "set training.ray_tls_cert_file and training.ray_tls_key_file" in str(err.value)
    assert not data_dir.exists()


def test_a_workers_key_others_can_read_is_refused_at_start(data_dir, pki, tmp_path):
    key = tmp_path / "worker.key"
    key.write_bytes(pki.client_key.read_bytes())
    key.chmod(0o644)
    overrides = {**ray_tls(pki), "training.ray_tls_key_file": str(key), "training.backend": "ray"}
    with pytest.raises(StartupError) as err:
        InProcessDaemon(daemon_settings(data_dir, **tls_settings(pki, mutual=True), **overrides)).start()
    assert f"training.ray_tls_key_file {key}: the private key is open to every user of this host" in str(
        err.value
    )


@pytest.mark.parametrize(
    ("given", "missing"),
    [
        ("training.ray_tls_cert_file", "training.ray_tls_key_file"),
        ("training.ray_tls_key_file", "training.ray_tls_cert_file"),
    ],
)
def test_a_workers_certificate_without_its_key_is_refused_at_start(data_dir, pki, given, missing):
    overrides = {given: ray_tls(pki)[given], "training.backend": "ray"}
    with pytest.raises(SettingsRefusal) as err:
        InProcessDaemon(daemon_settings(data_dir, **tls_settings(pki), **overrides)).start()
    assert f"set {missing} too" in str(err.value)
