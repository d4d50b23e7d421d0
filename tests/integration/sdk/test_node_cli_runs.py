"""The Node CLI's `runs compare` and `runs metrics`, as the Python CLI's --json answers, and a
Node client made without a target taking TESSERA_TARGET, as the Python SDK's Client()."""

from __future__ import annotations

import json

from tests.integration.sdk.test_node_client import EXIT_USAGE, node_ready, run_node, run_node_script

__all__ = ["node_ready"]


def test_node_cli_compares_runs_and_lists_a_runs_metrics(node_ready, daemon, client):
    client.training.create_experiment("side")
    ids = []
    for lr, loss in (("0.1", 0.3), ("0.01", 0.1)):
        run_id = client.training.create_run("side", params={"lr": lr}, create_experiment=True).run_id
        client.training.log_metrics(run_id, {"val_loss": loss}, step=0)
        client.training.log_metrics(run_id, {"val_loss": loss / 2}, step=1)
        ids.append(run_id)

    compared = run_node(daemon.target, "runs", "compare", *ids)
    assert compared.returncode == 0, compared.stderr
    found = json.loads(compared.stdout)
    assert [r["run_id"] for r in found["runs"]] == ids
    assert [(p["key"], p["values"]) for p in found["params"]] == [("lr", ["0.1", "0.01"])]
    assert [(m["key"], m["values"]) for m in found["metrics"]] == [("val_loss", [0.15, 0.05])]
    one = run_node(daemon.target, "runs", "compare", ids[0])
    assert one.returncode == EXIT_USAGE
    assert one.stderr.startswith("tessera-node: runs compare takes two or more RUN_IDs\n")

    metrics = run_node(daemon.target, "runs", "metrics", ids[0])
    assert metrics.returncode == 0, metrics.stderr
    (summary,) = json.loads(metrics.stdout)
    assert (summary["key"], summary["last"], summary["min"], summary["max"]) == ("val_loss", 0.15, 0.15, 0.3)
    assert (summary["count"], summary["last_step"]) == (2, 1)


def test_node_client_without_a_target_takes_tessera_target(node_ready, daemon):
    script = """
        (async () => {
          const client = new Client();
          const info = await client.info();
          client.close();
          console.log(JSON.stringify({ target: client.target, version: info.version }));
        })();
        """
    # TARGET (the script's prelude) names another port: the client is made without it.
    done = run_node_script(script, "127.0.0.1:1", env={"TESSERA_TARGET": daemon.target})
    assert done.returncode == 0, done.stderr
    found = json.loads(done.stdout)
    assert found["target"] == daemon.target and found["version"]
