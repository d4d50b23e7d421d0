"""`python -m tesserad.tools.healthcheck`: exit 0 when tesserad reports SERVING over gRPC health.

For container HEALTHCHECKs and exec probes, where no grpc_health_probe binary is installed.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tesserad.tools.healthcheck")
    parser.add_argument("--address", default="127.0.0.1:50051", help="host:port of tesserad")
    parser.add_argument("--service", default="", help="service to check ('' is the whole server)")
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
    metadata = None
    if args.token_file is not None:
        try:
            # Mounted secrets often end in a newline, which no gRPC header may carry.
            metadata = [("authorization", f"Bearer {args.token_file.read_text().strip()}")]
        except (OSError, UnicodeDecodeError) as exc:
            print(f"unhealthy: cannot read --token-file {args.token_file}: {exc}", file=sys.stderr)
            return 1

    if args.tls_ca is None:
        channel = grpc.insecure_channel(args.address)
    else:
        credentials = grpc.ssl_channel_credentials(
            root_certificates=args.tls_ca.read_bytes(),
            private_key=args.tls_key.read_bytes() if args.tls_key else None,
            certificate_chain=args.tls_cert.read_bytes() if args.tls_cert else None,
        )
        options = [("grpc.ssl_target_name_override", args.tls_server_name)] if args.tls_server_name else []
        channel = grpc.secure_channel(args.address, credentials, options)
    with channel:
        try:
            # types-grpcio-health-checking declares HealthStub without its Check method.
            response = health_pb2_grpc.HealthStub(channel).Check(  # type: ignore[attr-defined]
                health_pb2.HealthCheckRequest(service=args.service), timeout=args.timeout, metadata=metadata
            )
        except grpc.RpcError as exc:
            print(f"unhealthy: {exc.code().name}: {exc.details()}", file=sys.stderr)
            return 1
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)
    print(status)
    return 0 if response.status == health_pb2.HealthCheckResponse.SERVING else 1


if __name__ == "__main__":
    sys.exit(main())
