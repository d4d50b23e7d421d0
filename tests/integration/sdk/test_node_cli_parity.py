"""The Node CLI (clients/node/cli.js) where it lagged the Python CLI: daemon messages in the
CLI's words, --target and TESSERA_TARGET checked, a model prefix spelled like a command, and the
datasets, alias and serving commands."""

from __future__ import annotations

import json
import os
import subprocess

import numpy as np
import pytest

from tessera.rpc_commands import COMMAND_BY_RPC
from tessera.transport import check_target
from tesserad.serving.pool import CONFIG_LIMITS
from tests.integration.sdk.affine import affine_onnx
from tests.integration.sdk.test_node_client import (
    EXIT_DAEMON,
    EXIT_USAGE,
    NODE_CLIENT,
    node_ready,
    run_node,
    run_nodes,
)

__all__ = ["node_ready"]


def run_node_bare(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """cli.js with `args` and no --target, `env` added to the environment."""
    return subprocess.run(
        ["node", str(NODE_CLIENT / "cli.js"), *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, **env},
    )


def test_node_cli_names_the_command_where_the_daemon_names_an_rpc(node_ready, daemon):
    """The daemon's "ListJobs lists them" is the API's word; a CLI user types a command."""
    watched = run_node(daemon.target, "jobs", "watch", "job-absent")
    assert (watched.returncode, watched.stderr) == (
        EXIT_DAEMON,
        "tessera-node: NOT_FOUND: job 'job-absent' does not exist; `tessera-node jobs ls` lists them\n",
    )
    # No Node command lists experiments: the Python CLI's is named.
    runs = run_node(daemon.target, "runs", "ls", "--experiment", "absent")
    assert runs.returncode == EXIT_DAEMON
    assert runs.stderr.endswith("experiment 'absent' does not exist; `tessera experiments ls` lists them\n")


def test_node_cli_maps_every_rpc_the_python_cli_maps(node_ready):
    script = f"""
        const {{ COMMAND_BY_RPC, inCliWords }} = require({json.dumps(str(NODE_CLIENT / "rpc_commands.js"))});
        console.log(JSON.stringify({{
          rpcs: Object.keys(COMMAND_BY_RPC),
          words: [
            inCliWords('tessera.v1.Datasets/UploadDataset needs the trainer role'),
            inCliWords('export it with Registry.ExportOnnx, DeployFoo and ExportOnnxes stay'),
            inCliWords('model in use; pass force to delete them'),
            inCliWords('name_prefix is too long'),
          ],
        }}));
        """
    done = subprocess.run(["node", "-e", script], capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    found = json.loads(done.stdout)
    assert sorted(found["rpcs"]) == sorted(COMMAND_BY_RPC)
    assert found["words"] == [
        "`tessera-node datasets push NAME FILE` needs the trainer role",
        "export it with `tessera export onnx MODEL`, DeployFoo and ExportOnnxes stay",
        "model in use; pass --force to delete them",
        "--prefix is too long",
    ]


@pytest.mark.parametrize(
    ("words", "said"),
    [
        (
            ("models", "deployments", "force"),
            "model 'force' does not exist; create it with `tessera models push MODEL FILE`",
        ),
        (
            ("datasets", "show", "allow_nonfinite"),
            "dataset 'allow_nonfinite' does not exist; upload it with `tessera-node datasets push NAME FILE`",
        ),
        (
            ("jobs", "watch", "ListJobs lists them"),
            "job 'ListJobs lists them' does not exist; `tessera-node jobs ls` lists them",
        ),
        (
            ("runs", "ls", "--experiment", "name_prefix"),
            "experiment 'name_prefix' does not exist; `tessera experiments ls` lists them",
        ),
    ],
)
def test_node_cli_keeps_a_name_the_message_quotes_though_it_reads_as_an_rpc_or_a_field(
    node_ready, daemon, words, said
):
    """As the Python CLI: only the daemon's fix is put in the CLI's words, never the user's names
    (a model called force showed as '--force', a job id holding an RPC's name as the command)."""
    missing = run_node(daemon.target, *words)
    assert (missing.returncode, missing.stderr) == (EXIT_DAEMON, f"tessera-node: NOT_FOUND: {said}\n")


def test_node_cli_words_the_fix_of_each_line_as_the_python_cli(node_ready):
    """The messages of tessera.rpc_commands' tests, in the Node CLI's words: the fix that ends each
    line (after its last "; ") is the CLI's, a name quoted anywhere is the user's, and a method path
    is the command wherever it stands."""
    messages = [
        "model 'force' does not exist; did you mean 'forces'? Or create it with CreateModel",
        'run "it\'s ListRuns" does not exist; ListRuns lists them',
        "a model's ListRuns; the model's ListJobs lists them",
        "the spec has 2 problems:\n"
        "  spec.data.dataset: dataset 'clips' does not exist; upload it with UploadDataset\n"
        "  spec.init_from.model: model 'base' does not exist; create it with CreateModel",
        "tessera.v1.Datasets/UploadDataset needs the trainer role; the token 'ListJobs' has the reader role",
        "array 'x' has NaN or Inf values; clean them, or accept them with allow_nonfinite",
    ]
    script = f"""
        const {{ inCliWords }} = require({json.dumps(str(NODE_CLIENT / "rpc_commands.js"))});
        console.log(JSON.stringify({json.dumps(messages)}.map(inCliWords)));
        """
    done = subprocess.run(["node", "-e", script], capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == [
        "model 'force' does not exist; did you mean 'forces'? Or create it with `tessera models push MODEL FILE`",
        'run "it\'s ListRuns" does not exist; `tessera-node runs ls` lists them',
        "a model's ListRuns; the model's `tessera-node jobs ls` lists them",
        "the spec has 2 problems:\n"
        "  spec.data.dataset: dataset 'clips' does not exist; upload it with `tessera-node datasets push NAME FILE`\n"
        "  spec.init_from.model: model 'base' does not exist; create it with `tessera models push MODEL FILE`",
        "`tessera-node datasets push NAME FILE` needs the trainer role; the token 'ListJobs' has the reader role",
        "array 'x' has NaN or Inf values; clean them, or accept them with `tessera-node datasets push --allow-nonfinite`",
    ]


def test_node_cli_words_a_versioned_rpc_as_its_command_with_version(node_ready):
    """As the Python CLI: "LoadModel naming version 3" is the command with `--version 3`, not
    the command naming no version, which loads another one."""
    message = (
        "version 3 of 'm' is not loaded, so it has no statistics yet; load it with LoadModel naming "
        "version 3, or by a Predict naming version 3 (one naming no version loads the one requests "
        "are routed to)"
    )
    script = f"""
        const {{ inCliWords }} = require({json.dumps(str(NODE_CLIENT / "rpc_commands.js"))});
        console.log(JSON.stringify(inCliWords({json.dumps(message)})));
        """
    done = subprocess.run(["node", "-e", script], capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == (
        "version 3 of 'm' is not loaded, so it has no statistics yet; load it with "
        "`tessera-node load MODEL --version 3`, or by a `tessera-node predict MODEL INPUTS_JSON "
        "--version 3` (one naming no version loads the one requests are routed to)"
    )


def test_node_cli_checks_its_target_as_the_python_cli_does(node_ready):
    for args, env in (
        (("--target", "http://127.0.0.1:1", "info"), {}),
        (("info",), {"TESSERA_TARGET": "127.0.0.1"}),
        (("--target", "50052", "info"), {}),
    ):
        refused = run_node_bare(*args, env=env)
        text = args[1] if args[0] == "--target" else env["TESSERA_TARGET"]
        with pytest.raises(ValueError, match="write HOST:PORT") as python:
            check_target(text, "here or in env TESSERA_TARGET", "the Node client's `tls: true`")
        assert (refused.returncode, refused.stderr) == (
            EXIT_USAGE,
            f"tessera-node: --target: {python.value}\n(tessera-node --help lists the commands)\n",
        )


def test_node_cli_lists_models_whose_prefix_is_spelled_like_a_command(node_ready, daemon, client, tmp_path):
    for name in ("rm", "rm-old", "deploy", "affine"):
        client.models.push(name, affine_onnx(tmp_path / f"{name}.onnx"))
    names = lambda done: [m["name"] for m in json.loads(done.stdout)]  # noqa: E731
    for prefix, expected in (("rm", ["rm", "rm-old"]), ("deploy", ["deploy"]), ("rollback", [])):
        listed = run_node(daemon.target, "models", "ls", "--prefix", prefix)
        assert listed.returncode == 0, listed.stderr
        assert names(listed) == expected
    everything = run_node(daemon.target, "models", "ls")
    assert names(everything) == ["affine", "deploy", "rm", "rm-old"]
    assert names(run_node(daemon.target, "models")) == names(everything)
    word = run_node(daemon.target, "models", "aff")
    assert (word.returncode, word.stderr) == (
        EXIT_USAGE,
        'tessera-node: unknown command "models aff"; `tessera-node models ls --prefix aff` lists the models '
        "whose name starts with aff\n(tessera-node models --help lists its commands)\n",
    )
    # A word near a command ("clips" is two letters from "alias") gets both: which it may mean, and the listing.
    near = run_node(daemon.target, "models", "clips")
    assert near.returncode == EXIT_USAGE
    assert "did you mean" in near.stderr, near.stderr
    assert (
        "`tessera-node models ls --prefix clips` lists the models whose name starts with clips" in near.stderr
    )


def test_node_cli_pushes_lists_and_shows_datasets(node_ready, daemon, client, tmp_path):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 4)).astype(np.float32)
    np.savez(tmp_path / "table.npz", x=x, y=(x[:, 0] > 0).astype(np.int64))
    push = ("datasets", "push", "table", str(tmp_path / "table.npz"), "--split", "train=0.75")
    pushed = run_node(
        daemon.target, *push, "--split", "val=0.25", "--tag", "source=test", "--description", "d"
    )
    assert pushed.returncode == 0, pushed.stderr
    version = json.loads(pushed.stdout)
    assert (version["name"], version["version"], version["num_samples"]) == ("table", 1, 40)
    assert {s["name"]: s["count"] for s in version["splits"]} == {"train": 30, "val": 10}
    assert client.datasets.version("table:1").tags == {"source": "test"}
    again = run_node(
        daemon.target, *push, "--split", "val=0.25", "--tag", "source=test", "--description", "d"
    )
    assert json.loads(again.stdout)["existing_version"] == 1, again.stderr

    np.save(tmp_path / "tensor.npy", x)
    npy = run_node(
        daemon.target, "datasets", "push", "tensor", str(tmp_path / "tensor.npy"), "--array-name", "z"
    )
    assert npy.returncode == 0, npy.stderr
    assert [a["name"] for a in json.loads(npy.stdout)["arrays"]] == ["z"]

    listed = run_node(daemon.target, "datasets", "ls", "--prefix", "ta")
    assert listed.returncode == 0, listed.stderr
    assert [d["name"] for d in json.loads(listed.stdout)] == ["table"]
    shown = run_node(daemon.target, "datasets", "show", "table:1")
    assert shown.returncode == 0, shown.stderr
    assert [a["name"] for a in json.loads(shown.stdout)["arrays"]] == ["x", "y"]
    absent = run_node(daemon.target, "datasets", "show", "absent")
    assert absent.returncode == EXIT_DAEMON and absent.stderr.startswith("tessera-node: NOT_FOUND: ")
    assert "`tessera-node datasets push NAME FILE`" in absent.stderr

    wrong = (
        (("--split", "train"), "--split: 'train': write NAME=FRACTION, e.g. train=0.8"),
        (
            ("--split", "train=1.5"),
            "--split: 'train=1.5': the fraction must be above 0 and at most 1, e.g. train=0.8",
        ),
        (("--split", "a=0.5", "--split", "a=0.5"), "--split a is given twice; give each once"),
        (("--tag", "novalue"), "--tag: 'novalue': write KEY=VALUE"),
        (
            ("--array-name", "z"),
            f"--array-name names the array of a .npy file; {tmp_path / 'table.npz'} is not one (an .npz names "
            "its arrays itself)",
        ),
    )
    pushes = run_nodes(
        daemon.target,
        [("datasets", "push", "other", str(tmp_path / "table.npz"), *args) for args, _ in wrong],
    )
    for (args, message), refused in zip(wrong, pushes, strict=True):
        assert refused.returncode == EXIT_USAGE, (args, refused.stderr)
        assert refused.stderr.startswith(f"tessera-node: {message}\n"), refused.stderr
    assert [d.name for d in client.datasets.list()] == ["table", "tensor"]


def test_node_cli_sets_and_deletes_aliases(node_ready, daemon, client, tmp_path):
    for scale in (1.0, 2.0):
        client.models.push("affine", affine_onnx(tmp_path / f"{scale}.onnx", scale=scale))
    moved = run_node(daemon.target, "models", "alias", "affine", "production", "1")
    assert moved.returncode == 0, moved.stderr
    alias = json.loads(moved.stdout)
    assert (alias["model"], alias["alias"], alias["version"]) == ("affine", "production", 1)
    assert client.models.alias("affine", "production").version == 1
    removed = run_node(daemon.target, "models", "unalias", "affine", "production")
    assert removed.returncode == 0, removed.stderr
    assert json.loads(removed.stdout) == {"model": "affine", "alias": "production", "deleted": True}
    again = run_node(daemon.target, "models", "unalias", "affine", "production")
    assert again.returncode == EXIT_DAEMON and again.stderr.startswith("tessera-node: NOT_FOUND: ")
    wrong = run_node(daemon.target, "models", "alias", "affine", "production", "x")
    assert wrong.returncode == EXIT_USAGE
    assert wrong.stderr.endswith("usage: tessera-node models alias MODEL ALIAS VERSION\n")


@pytest.mark.parametrize(("field", "limits"), sorted(CONFIG_LIMITS.items()))
def test_node_cli_serving_ranges_are_the_daemons(node_ready, field, limits):
    """load's flags are refused past the daemon's range of each (its serving pool's
    CONFIG_LIMITS, which cli.js copies): a range copied wrong refused values the daemon takes, or
    sent it values it refuses in its own words. One past the top is refused before any call, in
    words that name the whole range the Node CLI holds."""
    low, high = limits
    flag = f"--{field.replace('_', '-')}"
    refused = run_node("127.0.0.1:1", "load", "m", flag, str(high + 1))
    zero = " (0 for the daemon's default)" if low else ""
    assert refused.returncode == EXIT_USAGE, refused.stderr
    assert refused.stderr.startswith(
        f'tessera-node: {flag} must be in {low}..{high}{zero}, got "{high + 1}"\n'
    )


def test_node_cli_loads_lists_and_unloads_versions(node_ready, daemon, client, onnx_file):
    client.models.push("affine", onnx_file, set_alias="production")
    nothing = run_node(daemon.target, "serve-status")
    assert (nothing.returncode, json.loads(nothing.stdout)) == (0, [])
    loaded = run_node(
        daemon.target,
        *("load", "affine", "--version", "production", "--runtime", "onnx", "--device", "cpu"),
        *("--instances", "1", "--max-batch-size", "4", "--max-queue-delay-us", "0"),
    )
    assert loaded.returncode == 0, loaded.stderr
    model = json.loads(loaded.stdout)
    assert (model["model"], model["version"], model["state"]) == ("affine", 1, "LOAD_STATE_READY")
    assert (model["config"]["instances"], model["config"]["max_batch_size"]) == (1, 4)
    status = run_node(daemon.target, "serve-status", "affine")
    assert [(m["model"], m["version"]) for m in json.loads(status.stdout)] == [("affine", 1)]
    unloaded = run_node(daemon.target, "unload", "affine")
    assert unloaded.returncode == 0, unloaded.stderr
    assert [(m["model"], m["version"]) for m in json.loads(unloaded.stdout)] == [("affine", 1)]
    assert list(client.inference.loaded()) == []
    # The daemon's ranges, as the Python CLI checks them: 0 is the daemon's default.
    over = run_node(daemon.target, "load", "affine", "--max-queue-size", "1000001")
    assert over.returncode == EXIT_USAGE
    assert (
        '--max-queue-size must be in 1..1000000 (0 for the daemon\'s default), got "1000001"' in over.stderr
    )
    default = run_node(daemon.target, "load", "affine", "--instances", "0")
    assert default.returncode == 0, default.stderr
    assert json.loads(default.stdout)["config"]["instances"] >= 1
    wrong = (("--runtime", "tensorrt"), ("--instances", "65"), ("--max-batch-size", "x"))
    for args, refused in zip(
        wrong, run_nodes(daemon.target, [("load", "affine", *args) for args in wrong]), strict=True
    ):
        assert refused.returncode == EXIT_USAGE, (args, refused.stderr)
