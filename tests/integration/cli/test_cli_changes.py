"""`tessera models changes` (the registry's change feed) and `tessera stats --cluster` on a daemon
that no replica follows; with replicas, see tests/integration/replica/test_replicas.py."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys

import grpc
import numpy as np
import pytest

from tessera.cli import EXIT_DAEMON
from tessera.v1 import registry_pb2, registry_pb2_grpc
from tests.integration.sdk.affine import affine_onnx


def test_changes_are_printed_in_order_with_the_state_after_each(tessera_cli, client, tmp_path):
    assert tessera_cli("models", "changes").out.strip() == "no changes from seq 1 on"
    # Each command's watch begins once the feed has recorded the commits before it, so the
    # three commits below are three changes, not one.
    client.models.push("affine", affine_onnx(tmp_path / "a1.onnx"))
    assert tessera_cli("models", "changes").out.count("\n") == 1
    client.models.push("affine", affine_onnx(tmp_path / "a2.onnx", scale=2.0), set_alias="production")
    assert tessera_cli("models", "changes").out.count("\n") == 2
    client.models.deploy("affine", {"production": 90, 1: 10})
    result = tessera_cli("models", "changes")
    assert result.code == 0
    lines = result.out.strip().splitlines()
    assert len(lines) == 3
    assert lines[0].startswith("1  ") and lines[0].endswith(
        "affine: model created, version registered; latest v1"
    )
    assert lines[1].endswith("affine: version registered, alias moved; latest v2, production=v2")
    assert lines[2].endswith(
        "affine: deployment changed; latest v2, production=v2, deployed production 90% (v2), v1 10% (v1)"
    )
    later = tessera_cli("--json", "models", "changes", "--from-seq", "2")
    changes = [json.loads(line) for line in later.out.splitlines()]
    assert [(c["seq"], c["kinds"]) for c in changes] == [
        (2, ["version_registered", "alias_moved"]),
        (3, ["deployment_changed"]),
    ]
    assert changes[1]["state"]["aliases"] == {"production": 2}
    assert tessera_cli("models", "changes", "--from-seq", "4").out.strip() == "no changes from seq 4 on"
    # 0 and 1 both start at the first change, as before 1 was the default.
    assert tessera_cli("models", "changes", "--from-seq", "0").out == result.out


def test_a_start_the_registry_never_gave_fails_with_what_to_give(tessera_cli, client, tmp_path, capsys):
    client.models.push("affine", affine_onnx(tmp_path / "a1.onnx"))
    past = tessera_cli("models", "changes", "--from-seq", "7")
    assert past.code == EXIT_DAEMON and past.out == ""
    assert past.err.startswith(
        "tessera: FAILED_PRECONDITION: from_seq 7 is past this registry's newest change (1): give at most 2"
    )
    assert "Traceback" not in past.err
    # A sequence number is digits 0-9: the CLI says so as a usage error, before any call.
    with pytest.raises(SystemExit) as exited:
        tessera_cli("models", "changes", "--from-seq", "-1")
    assert exited.value.code == 2
    assert "argument --from-seq: must be a whole number in 0.." in capsys.readouterr().err


# A child started under a shell's background job (CI's, say) inherits SIGINT ignored, and
# Python then raises no KeyboardInterrupt: run the CLI with Ctrl-C's usual handler, as a
# terminal would.
CLI_WITH_CTRL_C = (
    "import signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); "
    "from tessera.cli import main; sys.exit(main())"
)


def test_follow_prints_new_changes_until_interrupted(daemon, client, tmp_path):
    client.models.push("affine", affine_onnx(tmp_path / "a1.onnx"))
    follower = subprocess.Popen(
        [sys.executable, "-c", CLI_WITH_CTRL_C, "--target", daemon.target, "models", "changes", "--follow"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "COLUMNS": "200"},
    )
    try:
        assert follower.stdout is not None
        assert "affine: model created, version registered" in follower.stdout.readline()
        client.models.push("affine", affine_onnx(tmp_path / "a2.onnx", scale=2.0))
        assert follower.stdout.readline().startswith("2  ")  # came while it followed
        follower.send_signal(signal.SIGINT)
        _, err = follower.communicate(timeout=60)
    finally:
        follower.kill()
    assert follower.returncode == 130
    assert err.strip() == "tessera: interrupted"


def test_cluster_stats_on_a_daemon_no_replica_follows_are_its_own(tessera_cli, client, tmp_path, capsys):
    client.models.push("affine", affine_onnx(tmp_path / "a1.onnx"))
    inputs = tmp_path / "inputs.npz"
    np.savez(inputs, input=np.ones((2, 4), np.float32))
    assert tessera_cli("predict", "affine", "--input", str(inputs)).code == 0
    result = tessera_cli("stats", "affine", "--cluster")
    assert result.code == 0
    assert "affine v1: 1 request (0 failed)" in result.out
    assert "no serving replica follows this daemon: these are its own figures" in result.out
    data = tessera_cli("--json", "stats", "--cluster").json()
    assert data["replicas"] == [] and data["unreachable_replicas"] == [] and data["unreachable"] == []
    assert [(s["model"], s["request_count"]) for s in data["stats"]] == [("affine", 1)]
    absent = tessera_cli("stats", "absent", "--cluster")
    assert absent.code == EXIT_DAEMON and absent.err.startswith(
        "tessera: NOT_FOUND: model 'absent' does not exist"
    )
    with pytest.raises(SystemExit) as usage:  # argparse: a usage error, exit 2
        tessera_cli("stats", "--cluster", "--reset")
    assert usage.value.code == 2
    assert "argument --reset: not allowed with argument --cluster" in capsys.readouterr().err


def test_cluster_stats_say_why_a_replica_was_left_out(tessera_cli, daemon):
    with socket.socket() as unused:  # a port nothing listens on
        unused.bind(("127.0.0.1", 0))
        address = f"127.0.0.1:{unused.getsockname()[1]}"
    with grpc.insecure_channel(daemon.target) as channel:
        announcing = registry_pb2_grpc.RegistryStub(channel).WatchChanges(
            registry_pb2.WatchChangesRequest(
                replica_address=address, replica_transport=registry_pb2.REPLICA_TRANSPORT_PLAINTEXT
            ),
            timeout=60,
        )
        next(announcing)  # caught up: the address is announced
        result = tessera_cli("stats", "--cluster")
        data = tessera_cli("--json", "stats", "--cluster").json()
        announcing.cancel()
    assert result.code == 0
    assert (
        f"left out, did not answer: 1 replica\n  {address}: nothing listens there (connection refused)"
        in (result.out)
    )
    assert data["unreachable_replicas"] == [address]
    assert data["unreachable"] == [
        {"address": address, "reason": "nothing listens there (connection refused)"}
    ]


def test_cluster_stats_list_the_calls_refused_to_a_replica(tessera_cli, daemon):
    # A call that names the replica it comes from (its replica.advertise) and that the primary
    # answers with an error only a fix cures: here a watch from a negative seq.
    address = "replica-7.example:50051"
    with grpc.insecure_channel(daemon.target) as channel, pytest.raises(grpc.RpcError) as refused:
        next(
            registry_pb2_grpc.RegistryStub(channel).WatchChanges(
                registry_pb2.WatchChangesRequest(from_seq=-1, replica_address=address),
                metadata=[("tessera-replica", address)],
                timeout=60,
            )
        )
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    result = tessera_cli("stats", "--cluster")
    data = tessera_cli("--json", "stats", "--cluster").json()
    assert result.code == 0
    lines = result.out.splitlines()
    at = lines.index("refused by this daemon lately: 1 replica")
    assert lines[at + 1].startswith(f"  {address} (from ipv4:127.0.0.1:")
    assert lines[at + 1].endswith(
        ": tessera.v1.Registry/WatchChanges INVALID_ARGUMENT: from_seq must be >= 0, got -1"
    )
    (entry,) = data["refused"]
    assert (entry["address"], entry["rpc"], entry["code"]) == (
        address,
        "tessera.v1.Registry/WatchChanges",
        "INVALID_ARGUMENT",
    )


def test_changes_json_leaves_out_the_version_fields_a_change_does_not_carry(tessera_cli, client, tmp_path):
    # A change's versions carry what serving needs; an empty description or a zeroed lineage
    # printed for the rest read as facts about the version.
    client.models.push("affine", affine_onnx(tmp_path / "a.onnx"), description="told")
    [change] = [json.loads(line) for line in tessera_cli("--json", "models", "changes").out.splitlines()]
    [version] = change["state"]["versions"]
    assert {"params", "metrics", "description", "tags", "lineage"}.isdisjoint(version), version
    assert version["sha256"] == client.models.version("affine", 1).sha256
    assert version["format"] == "onnx" and version["version"] == 1
