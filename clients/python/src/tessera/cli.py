"""`tessera`: the command line for tesserad."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence

import grpc
from google.protobuf.json_format import MessageToDict

from tessera.v1 import system_pb2, system_pb2_grpc

DEFAULT_TARGET = "127.0.0.1:50051"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tessera", description="Talk to a running tesserad.")
    parser.add_argument(
        "--target",
        default=os.environ.get("TESSERA_TARGET", DEFAULT_TARGET),
        help=f"daemon address host:port (env TESSERA_TARGET; default {DEFAULT_TARGET})",
    )
    parser.add_argument("--json", action="store_true", help="print JSON for scripts instead of text")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    commands.add_parser("info", help="the daemon's version, devices and data directory")
    return parser


def _info(stub: system_pb2_grpc.SystemStub, as_json: bool) -> None:
    info = stub.GetServerInfo(system_pb2.GetServerInfoRequest(), timeout=10)
    if as_json:
        print(json.dumps(MessageToDict(info, preserving_proto_field_name=True), indent=2))
        return
    print(f"tesserad {info.version} on {info.hostname} (pid {info.pid}), up {info.uptime_s:.0f} s")
    for device in info.devices:
        memory = device.memory_total_bytes / 2**30
        cores = f", {device.cores} cores" if device.cores else ""
        print(f"  {device.id:<8} {device.name}{cores}, {memory:.1f} GiB")
    usage = info.data_dir
    print(
        f"  data     {usage.path}: store {usage.store_bytes / 2**20:.1f} MiB, blobs {usage.blob_bytes / 2**20:.1f} MiB"
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    with grpc.insecure_channel(args.target) as channel:
        try:
            _info(system_pb2_grpc.SystemStub(channel), args.json)
        except grpc.RpcError as err:
            print(f"tessera: {err.code().name}: {err.details()}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
