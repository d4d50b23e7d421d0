"""The Node CLI (clients/node/cli.js) beside the Python CLI: `models rm` with the same refusals,
output and exit statuses; deployments (deploy, rollback with --expected-revision, their history)
from the CLI and the client."""

from __future__ import annotations

import json

import pytest

from tests.integration.sdk.affine import affine_onnx
from tests.integration.sdk.test_node_client import (
    EXIT_DAEMON,
    EXIT_USAGE,
    node_json,
    node_ready,
    run_node,
    run_nodes,
)

__all__ = ["node_ready"]


@pytest.fixture
def affine(client, tmp_path):
    """Model affine: v1 (alias production), v2 (latest, deployed)."""
    client.models.push("affine", affine_onnx(tmp_path / "a.onnx"), set_alias="production")
    client.models.push("affine", affine_onnx(tmp_path / "b.onnx", scale=3.0))
    client.models.deploy("affine", {2: 100})


def test_node_cli_deletes_a_version_once_nothing_uses_it(node_ready, daemon, client, affine):
    aliased = run_node(daemon.target, "models", "rm", "affine", "1")
    assert aliased.returncode == EXIT_DAEMON and aliased.stdout == ""
    assert aliased.stderr.startswith("tessera-node: FAILED_PRECONDITION: ")
    assert "version 1 of model 'affine' is in use by alias 'production'" in aliased.stderr
    deployed = run_node(daemon.target, "models", "rm", "affine", "2")
    assert deployed.returncode == EXIT_DAEMON and "deployment revision 1" in deployed.stderr

    client.models.delete_alias("affine", "production")
    removed = run_node(daemon.target, "models", "rm", "affine", "1")
    assert removed.returncode == 0, removed.stderr
    # The Python CLI's --json answer.
    assert json.loads(removed.stdout) == {"model": "affine", "version": 1, "deleted_versions": 1}
    assert [v.version for v in client.models.versions("affine")] == [2]
    missing = run_node(daemon.target, "models", "rm", "affine", "1")
    assert missing.returncode == EXIT_DAEMON and missing.stderr.startswith("tessera-node: NOT_FOUND: ")


def test_node_cli_deletes_a_model_in_use_only_with_force(node_ready, daemon, client, affine):
    refused = run_node(daemon.target, "models", "rm", "affine")
    assert refused.returncode == EXIT_DAEMON
    assert "in use by alias 'production' and a deployment; pass --force to delete them" in refused.stderr
    removed = run_node(daemon.target, "models", "rm", "affine", "--force")
    assert removed.returncode == 0, removed.stderr
    assert json.loads(removed.stdout) == {"model": "affine", "deleted_versions": 2}
    assert list(client.models.list()) == []


def test_node_cli_force_is_for_a_model_and_versions_count_from_1(node_ready, daemon, client, affine):
    wrong = (("affine", "2", "--force"), ("affine", "0"), ("affine", "x"), ("affine", "1", "2"))
    for args, refused in zip(
        wrong, run_nodes(daemon.target, [("models", "rm", *args) for args in wrong]), strict=True
    ):
        assert refused.returncode == EXIT_USAGE, (args, refused.stderr)
        assert refused.stderr.endswith("usage: tessera-node models rm MODEL [VERSION] [--force]\n")
    forced = run_node(daemon.target, "models", "rm", "affine", "2", "--force")
    assert "--force deletes a whole model with its aliases and deployment" in forced.stderr
    assert [v.version for v in client.models.versions("affine")] == [2, 1]


def test_node_cli_deploys_and_rolls_back_only_from_the_revision_expected(
    node_ready, daemon, client, affine, tmp_path
):
    client.models.push("affine", affine_onnx(tmp_path / "c.onnx", scale=5.0))  # v3, the shadow
    history = run_node(daemon.target, "models", "deployments", "affine")
    assert history.returncode == 0, history.stderr
    assert [d["revision"] for d in json.loads(history.stdout)] == [1]

    stale = run_node(
        daemon.target, "models", "deploy", "affine", "2=90", "production=10", "--expected-revision", "0"
    )
    assert stale.returncode == EXIT_DAEMON and stale.stderr.startswith("tessera-node: FAILED_PRECONDITION: ")
    assert client.models.deployment("affine").revision == 1
    deployed = run_node(
        daemon.target,
        *("models", "deploy", "affine", "2=90", "production=10", "--shadow", "3", "--shadow-percent", "50"),
        *("--comment", "canary", "--expected-revision", "1"),
    )
    assert deployed.returncode == 0, deployed.stderr
    revision = json.loads(deployed.stdout)
    assert revision["revision"] == 2 and revision["comment"] == "canary"
    assert [(r.version, r.alias, r.weight) for r in client.models.deployment("affine").routes] == [
        (2, "", 90),
        (0, "production", 10),
    ]
    assert client.models.deployment("affine").shadow.percent == 50

    stale = run_node(daemon.target, "models", "rollback", "affine", "--expected-revision", "1")
    assert stale.returncode == EXIT_DAEMON and stale.stderr.startswith("tessera-node: FAILED_PRECONDITION: ")
    rolled = run_node(daemon.target, "models", "rollback", "affine", "--expected-revision", "2")
    assert rolled.returncode == 0, rolled.stderr
    assert json.loads(rolled.stdout)["rolled_back_from"] == 2
    history = run_node(daemon.target, "models", "deployments", "affine")
    assert [d["revision"] for d in json.loads(history.stdout)] == [3, 2, 1]

    for args in (
        ("affine", "1"),
        ("affine", "1=50", "1=50"),
        ("affine", "1=100", "--expected-revision", "-1"),
    ):
        refused = run_node(daemon.target, "models", "deploy", *args)
        assert refused.returncode == EXIT_USAGE, (args, refused.stderr)
    assert client.models.deployment("affine").revision == 3


def test_node_client_sends_an_expected_revision_of_0(node_ready, daemon, client, tmp_path):
    """0 (never deployed) is a revision to expect, not the field left out."""
    client.models.push("fresh", affine_onnx(tmp_path / "a.onnx"))
    client.models.deploy("fresh", {1: 100})
    found = node_json(
        """
        (async () => {
          const client = new Client(TARGET);
          const codes = [];
          for (const call of [
            () => client.deploy('fresh', [{ version: 1, weight: 100 }], { expectedRevision: 0 }),
            () => client.rollback('fresh', { expectedRevision: 0 }),
          ]) {
            try {
              await call();
              codes.push('done');
            } catch (err) {
              codes.push(err.code);
            }
          }
          client.close();
          console.log(JSON.stringify(codes));
        })();
        """,
        daemon.target,
    )
    assert found == ["FAILED_PRECONDITION", "FAILED_PRECONDITION"]
    assert [d.revision for d in client.models.deployments("fresh")] == [1]
