"""`python -m tesserad.tools.healthcheck`: exit 0 when tesserad reports SERVING over gRPC health.

For container HEALTHCHECKs and exec probes, where no grpc_health_probe binary is installed.
Without --address it reads the daemon's own settings (TESSERA_* and --config, as `tesserad serve`
does) and checks the gRPC listener they describe, over TLS when they turn it on, so the image's
HEALTHCHECK keeps working when its operator moves the port or turns on security.tls_*.
"""

from __future__ import annotations

import argparse
import os
import socket
import ssl
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc
from cryptography import x509
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tesserad.api.health import LIVENESS_SERVICE
from tesserad.config import Address, SettingsError, load_settings

# A listener on every address is reached on loopback from inside its own container or pod.
_WILDCARD_TO_LOOPBACK = {"0.0.0.0": "127.0.0.1", "::": "::1"}


class ProbeSetupError(Exception):
    """What the probe needs cannot be worked out or read; the message says what and how to fix it."""


@dataclass(frozen=True)
class Target:
    address: str
    root_certificates: bytes | None  # None: plaintext
    server_name: str | None
    client_certificate: bytes | None
    client_key: bytes | None


def main(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tesserad.tools.healthcheck",
        description="Without --address: the gRPC listener the daemon's settings describe "
        "(TESSERA_* variables and --config, as `tesserad serve` reads them; a wildcard host is "
        "asked on loopback), over TLS when security.tls_cert_file is set, trusting that "
        "certificate unless --tls-ca is given; --tls-ca turns TLS on where they do not.",
    )
    parser.add_argument("--address", help="host:port of tesserad (default: the daemon's listen setting)")
    parser.add_argument("--config", type=Path, help="the daemon's TOML settings file, without --address")
    parser.add_argument(
        "--service",
        default="",
        help=f"service to check ('' is the whole server, readiness; {LIVENESS_SERVICE}: liveness, "
        "SERVING while the process answers)",
    )
    parser.add_argument("--timeout", type=float, default=3.0, help="seconds before giving up")
    parser.add_argument("--tls-ca", type=Path, help="CA that signed the server certificate (turns TLS on)")
    parser.add_argument("--tls-server-name", help="name to check the server certificate against")
    parser.add_argument("--tls-cert", type=Path, help="client certificate, when mutual TLS is on")
    parser.add_argument("--tls-key", type=Path, help="key of --tls-cert")
    parser.add_argument(
        "--token-file",
        type=Path,
        help="file holding a token (any role), for a daemon with security.health_open = false",
    )
    args = parser.parse_args(argv)
    if args.address is not None and args.config is not None:
        parser.error("--config describes the daemon to check when --address is not given: give one of them")
    try:
        metadata = _metadata(args.token_file)
        target = (
            _given_target(args, args.address)
            if args.address is not None
            else _target_of_settings(args, environ)
        )
    except ProbeSetupError as exc:
        print(f"unhealthy: {exc}", file=sys.stderr)
        return 1

    if target.root_certificates is None:
        channel = grpc.insecure_channel(target.address)
    else:
        credentials = grpc.ssl_channel_credentials(
            root_certificates=target.root_certificates,
            private_key=target.client_key,
            certificate_chain=target.client_certificate,
        )
        options = [("grpc.ssl_target_name_override", target.server_name)] if target.server_name else []
        channel = grpc.secure_channel(target.address, credentials, options)
    with channel:
        try:
            # types-grpcio-health-checking declares HealthStub without its Check method.
            response = health_pb2_grpc.HealthStub(channel).Check(  # type: ignore[attr-defined]
                health_pb2.HealthCheckRequest(service=args.service), timeout=args.timeout, metadata=metadata
            )
        except grpc.RpcError as exc:
            if (
                target.root_certificates is None
                and exc.code() == grpc.StatusCode.UNAVAILABLE
                and _speaks_tls(target.address, args.timeout)
            ):
                # gRPC's words for it are only "Socket closed".
                print(
                    f"unhealthy: {target.address} speaks TLS, and this probe sent plaintext: give --tls-ca "
                    "FILE, the CA that signed the daemon's certificate (or leave out --address: the "
                    f"daemon's settings say its TLS); gRPC said: {exc.details()}",
                    file=sys.stderr,
                )
            else:
                print(f"unhealthy: {target.address}: {exc.code().name}: {exc.details()}", file=sys.stderr)
            return 1
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)
    print(status)
    return 0 if response.status == health_pb2.HealthCheckResponse.SERVING else 1


def _speaks_tls(address: str, timeout_s: float) -> bool:
    """Whether what listens at `address` (HOST:PORT) answers a TLS handshake, its certificate not
    checked: only asked once a plaintext probe failed."""
    host, _, port = address.rpartition(":")
    if not port.isdigit():
        return False
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    try:
        with (
            socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s) as connection,
            context.wrap_socket(connection),
        ):
            return True
    except (OSError, ValueError):
        # ssl.SSLError is an OSError: something there that answers, but not TLS.
        return False


def _metadata(token_file: Path | None) -> list[tuple[str, str]] | None:
    if token_file is None:
        return None
    try:
        token = _read(token_file, "--token-file").decode()
    except UnicodeDecodeError as exc:
        raise ProbeSetupError(f"cannot read --token-file {token_file}: {exc}") from None
    # Mounted secrets often end in a newline, which no gRPC header may carry.
    return [("authorization", f"Bearer {token.strip()}")]


def _given_target(args: argparse.Namespace, address: str) -> Target:
    # TLS is on with --tls-ca only: the other --tls-* flags alone would probe in plaintext.
    if args.tls_ca is None and (args.tls_server_name or args.tls_cert or args.tls_key):
        raise ProbeSetupError(
            f"--tls-* flags ask for TLS to {address} without --tls-ca: give --tls-ca, the CA that "
            "signed the server certificate"
        )
    return Target(
        address=address,
        root_certificates=None if args.tls_ca is None else _read(args.tls_ca, "--tls-ca"),
        server_name=args.tls_server_name,
        client_certificate=_read(args.tls_cert, "--tls-cert") if args.tls_cert else None,
        client_key=_read(args.tls_key, "--tls-key") if args.tls_key else None,
    )


def _target_of_settings(args: argparse.Namespace, environ: Mapping[str, str] | None) -> Target:
    try:
        settings = load_settings(args.config, env=os.environ if environ is None else environ)
    except SettingsError as exc:
        raise ProbeSetupError(f"the daemon's settings: {exc}") from None
    listen = settings.listen
    address = str(Address(_WILDCARD_TO_LOOPBACK.get(listen.host, listen.host), listen.port))
    security = settings.security
    if security.tls_cert_file is None:
        # TLS may be set where the tool cannot see it (a config file it was not given): its own
        # flags turn TLS on then, as with --address.
        if args.tls_ca is None and (args.tls_server_name or args.tls_cert or args.tls_key):
            raise ProbeSetupError(
                f"the daemon's settings turn TLS off for {address}, and --tls-* flags ask for it: "
                "give --tls-ca, the CA that signed the server certificate (or --config, the "
                "daemon's settings file that turns TLS on)"
            )
        return _given_target(args, address)
    if security.tls_client_ca_file is not None and args.tls_cert is None:
        raise ProbeSetupError(
            f"the daemon at {address} asks for a client certificate (security.tls_client_ca_file): "
            "give --tls-cert and --tls-key, signed by that CA"
        )
    served = _read(security.tls_cert_file, "security.tls_cert_file")
    # Without --tls-ca, the certificate the daemon serves is the one to expect (as its Ray workers do).
    roots = served if args.tls_ca is None else _read(args.tls_ca, "--tls-ca")
    return Target(
        address=address,
        root_certificates=roots,
        server_name=args.tls_server_name or _name_in(served, security.tls_cert_file),
        client_certificate=_read(args.tls_cert, "--tls-cert") if args.tls_cert else None,
        client_key=_read(args.tls_key, "--tls-key") if args.tls_key else None,
    )


def _name_in(pem: bytes, path: Path) -> str | None:
    """A name the leaf certificate is for, to check it against in place of the loopback address
    asked; None when it names none (the address itself is checked then)."""
    try:
        leaf = x509.load_pem_x509_certificates(pem)[0]
    except ValueError as exc:
        raise ProbeSetupError(
            f"security.tls_cert_file {path} holds no readable certificate ({exc})"
        ) from None
    try:
        names = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return None
    dns_names = names.get_values_for_type(x509.DNSName)
    if dns_names:
        # A wildcard name is matched by any one label in its place.
        return dns_names[0].replace("*", "healthcheck", 1)
    addresses = names.get_values_for_type(x509.IPAddress)
    return str(addresses[0]) if addresses else None


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ProbeSetupError(f"cannot read {what} {path}: {exc}") from None


if __name__ == "__main__":
    sys.exit(main())
