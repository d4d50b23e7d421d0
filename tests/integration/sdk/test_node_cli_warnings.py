"""The Node CLI as the Python CLI: a deployment's warnings on stderr after `models alias` and
`models deployments`; --help answered whatever TESSERA_TARGET says, as the target is checked only
for a command that connects. The Node client's cancelCalls also ends a submit waiting to be sent
again."""

from __future__ import annotations

import json

from tests.integration.sdk.affine import affine_onnx
from tests.integration.sdk.test_node_cli_parity import run_node_bare
from tests.integration.sdk.test_node_client import EXIT_USAGE, node_json, node_ready, run_node

__all__ = ["node_ready"]

PROMOTED = (
    "warning: routes[0] (alias 'prod') and routes[1] (alias 'canary') both resolve to version 2 now, "
    "so it answers their 100% and they split nothing; deploy one route to it (`tessera-node models "
    "deploy MODEL ROUTE...`), or move one of the aliases (`tessera-node models alias MODEL ALIAS VERSION`)\n"
)


def test_node_cli_warns_of_a_deployment_an_alias_moved(node_ready, daemon, client, tmp_path):
    for name in ("a", "b"):
        client.models.push("affine", affine_onnx(tmp_path / f"{name}.onnx"))
    client.models.set_alias("affine", "prod", 1)
    client.models.set_alias("affine", "canary", 2)
    client.models.deploy("affine", {"prod": 90, "canary": 10})

    promoted = run_node(daemon.target, "models", "alias", "affine", "prod", "2")
    assert promoted.returncode == 0, promoted.stderr
    assert json.loads(promoted.stdout)["version"] == 2
    assert promoted.stderr == PROMOTED
    history = run_node(daemon.target, "models", "deployments", "affine")
    assert (history.returncode, history.stderr) == (0, PROMOTED)

    moved_back = run_node(daemon.target, "models", "alias", "affine", "canary", "1")
    assert (moved_back.returncode, moved_back.stderr) == (0, "")
    assert run_node(daemon.target, "models", "deployments", "affine").stderr == ""


def test_node_cli_help_does_not_check_the_target(node_ready):
    for args in (("--help",), ("models", "--help"), ("models", "deploy", "--help")):
        helped = run_node_bare(*args, env={"TESSERA_TARGET": "127.0.0.1"})
        assert (helped.returncode, helped.stderr) == (0, ""), args
        assert "tessera-node" in helped.stdout
    refused = run_node_bare("info", env={"TESSERA_TARGET": "127.0.0.1"})
    assert refused.returncode == EXIT_USAGE
    assert refused.stderr.startswith("tessera-node: --target: ")


def test_node_cancel_calls_ends_a_submit_waiting_to_be_sent_again(node_ready):
    """Nothing listens at the target, so the first try fails UNAVAILABLE; the cancel comes while
    the submit waits to try again, and no try follows it."""
    found = node_json(
        """
        (async () => {
          const client = new Client(TARGET, { timeoutMs: 60000 });
          const call = client.call.bind(client);
          let tries = 0;
          client.call = async (...args) => {
            tries += 1;
            try {
              return await call(...args);
            } finally {
              setImmediate(() => client.cancelCalls());
            }
          };
          let error;
          try {
            await client.submitJob({});
          } catch (err) {
            error = err.code;
          }
          console.log(JSON.stringify({ error, tries }));
          client.close();
        })();
        """,
        "127.0.0.1:1",
    )
    assert found == {"error": "CANCELLED", "tries": 1}
