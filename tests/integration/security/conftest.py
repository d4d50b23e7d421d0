"""Fixtures for security tests: a throwaway PKI made with the openssl command line, certificates
with chosen validity dates, and tokens."""

from __future__ import annotations

import ipaddress
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tesserad.security import Role, hash_token, new_token
from tesserad.security.tokens import format_entry
from tests.conftest import InProcessDaemon, daemon_settings


@dataclass(frozen=True)
class Pki:
    """A server CA with a server certificate for localhost/127.0.0.1 (and a second one, `next_*`,
    to rotate to), and a separate client CA."""

    ca: Path
    server_cert: Path
    server_key: Path
    client_ca: Path
    client_cert: Path
    client_key: Path
    rogue_cert: Path
    rogue_key: Path
    next_cert: Path
    next_key: Path

    def channel_credentials(self, client: str | None = None) -> grpc.ChannelCredentials:
        """Credentials trusting the server CA; `client` is "client", "rogue" or None (no certificate)."""
        pair = {"client": (self.client_cert, self.client_key), "rogue": (self.rogue_cert, self.rogue_key)}
        cert, key = pair[client] if client else (None, None)
        return grpc.ssl_channel_credentials(
            root_certificates=self.ca.read_bytes(),
            private_key=key.read_bytes() if key else None,
            certificate_chain=cert.read_bytes() if cert else None,
        )


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def encrypt_key(source: Path, target: Path) -> None:
    """`source`'s private key encrypted with a passphrase, as some CAs hand keys out."""
    _openssl(
        "pkey",
        "-in",
        str(source),
        "-out",
        str(target),
        "-aes256",
        "-passout",
        "pass:secret",
        cwd=target.parent,
    )


def dated_certificate(
    directory: Path, name: str, not_before: datetime, not_after: datetime
) -> tuple[Path, Path]:
    """A self-signed certificate for localhost/127.0.0.1 valid from `not_before` to `not_after`
    (openssl's command line cannot date one in the past), and its key: (cert, key) under
    `directory`."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    certificate = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / f"{name}.pem", directory / f"{name}.key"
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    key_path.chmod(0o600)  # as openssl writes keys; the daemon refuses one others may read
    return cert_path, key_path


def _make_ca(directory: Path, name: str) -> None:
    _openssl(
        "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
        "-keyout", f"{name}.key", "-out", f"{name}.pem", "-days", "30", "-subj", f"/CN={name}",
        cwd=directory,
    )  # fmt: skip


def _make_leaf(directory: Path, name: str, ca: str, extensions: str) -> None:
    (directory / f"{name}.ext").write_text(extensions)
    _openssl(
        "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
        "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={name}",
        cwd=directory,
    )  # fmt: skip
    _openssl(
        "x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.pem", "-CAkey", f"{ca}.key",
        "-CAcreateserial", "-out", f"{name}.pem", "-days", "30", "-extfile", f"{name}.ext",
        cwd=directory,
    )  # fmt: skip


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    if shutil.which("openssl") is None:
        pytest.skip("the openssl command line is needed to make test certificates")
    directory = tmp_path_factory.mktemp("pki")
    for ca in ("server-ca", "client-ca", "rogue-ca"):
        _make_ca(directory, ca)
    for leaf in ("localhost", "localhost-next"):
        _make_leaf(
            directory,
            leaf,
            "server-ca",
            "subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n",
        )
    for client, ca in (("alice-client", "client-ca"), ("mallory-client", "rogue-ca")):
        _make_leaf(directory, client, ca, "extendedKeyUsage=clientAuth\n")
    return Pki(
        ca=directory / "server-ca.pem",
        server_cert=directory / "localhost.pem",
        server_key=directory / "localhost.key",
        client_ca=directory / "client-ca.pem",
        client_cert=directory / "alice-client.pem",
        client_key=directory / "alice-client.key",
        rogue_cert=directory / "mallory-client.pem",
        rogue_key=directory / "mallory-client.key",
        next_cert=directory / "localhost-next.pem",
        next_key=directory / "localhost-next.key",
    )


@dataclass(frozen=True)
class Tokens:
    """A tokens file holding one token per role; `token[role]` is the clear token."""

    file: Path
    token: dict[Role, str]


@pytest.fixture
def tokens(tmp_path: Path) -> Tokens:
    clear = {role: new_token() for role in Role}
    path = tmp_path / "tokens.toml"
    path.write_text(
        "".join(format_entry(f"{role.label}-holder", role, hash_token(t)) for role, t in clear.items())
    )
    return Tokens(path, clear)


@pytest.fixture
def start_daemon(data_dir: Path) -> Iterator[Any]:
    """start_daemon(**setting overrides) -> a running InProcessDaemon, stopped after the test."""
    started: list[InProcessDaemon] = []

    def start(**overrides: Any) -> InProcessDaemon:
        daemon = InProcessDaemon(daemon_settings(data_dir, **overrides)).start()
        started.append(daemon)
        return daemon

    yield start
    for daemon in started:
        daemon.stop()


@pytest.fixture
def token_daemon(start_daemon: Any, tokens: Tokens) -> InProcessDaemon:
    return start_daemon(**{"security.tokens_file": str(tokens.file)})


def bearer(token: str) -> list[tuple[str, str]]:
    return [("authorization", f"Bearer {token}")]
