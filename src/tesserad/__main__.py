"""`tesserad` and `python -m tesserad`: the daemon's command line, started once gRPC core's own
logging is set."""

import os
import sys

# gRPC core writes to stderr in a format of its own, outside the daemon's (JSON) log, and by
# default (grpcio 1.85, whose core logs through absl) an INFO line for each failed TLS handshake:
# a scanner's plaintext connections would flood the log. At ERROR only its rare errors come; an
# operator's own GRPC_VERBOSITY (DEBUG, to diagnose) is kept. Read once, as grpc is imported.
DEFAULT_GRPC_VERBOSITY = "ERROR"


def main() -> int:
    if not os.environ.get("GRPC_VERBOSITY"):
        os.environ["GRPC_VERBOSITY"] = DEFAULT_GRPC_VERBOSITY
    # Imported only now: it imports grpc.
    from tesserad.cli import main as command_line

    return command_line()


if __name__ == "__main__":
    sys.exit(main())
