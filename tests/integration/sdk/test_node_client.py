"""The Node.js client (clients/node) against a real daemon: list models and Predict, each call
within a deadline (the Python SDK's rule: a timeout left out takes the default, and one not
above 0 is refused before anything is sent); training jobs watched; experiment tracking; keepalive
pings that find a dead connection."""

from __future__ import annotations

import base64
import hashlib
import json
import math
import os
import re
import shutil
import signal
import socket
import subprocess
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager, suppress
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tessera.errors import FailedPrecondition
from tessera.run_filter import RunFilterError, is_order_string, parse_filter, parse_order_keys
from tessera.training import Training
from tessera.transport import RetryPolicy
from tessera.v1 import training_pb2 as pb
from tests.tmpfs import tmpfs

NODE_CLIENT = Path(__file__).resolve().parents[3] / "clients" / "node"


def run_node(target: str, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """cli.js with `args`, `env` added to the environment."""
    return subprocess.run(
        ["node", str(NODE_CLIENT / "cli.js"), "--target", target, *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, **(env or {})},
    )


def run_nodes(target: str, commands: Sequence[Sequence[str]]) -> list[subprocess.CompletedProcess[str]]:
    """run_node of each of `commands`, a few at once: a process's start (grpc-js loaded, the protos
    parsed) is most of its time, and the commands are independent of each other."""
    with ThreadPoolExecutor(4) as pool:
        return list(pool.map(lambda args: run_node(target, *args), commands))


@pytest.fixture
def node_ready() -> None:
    if shutil.which("node") is None:
        pytest.skip("node is not installed; install Node.js 18+ to test clients/node")
    if not (NODE_CLIENT / "node_modules" / "@grpc" / "grpc-js").is_dir():
        pytest.skip("clients/node/node_modules is missing; run `npm ci` in clients/node")


def test_node_client_lists_models_and_predicts(node_ready, daemon, client, onnx_file):
    client.models.push("affine", onnx_file, set_alias="production")
    client.inference.load("affine")

    listed = run_node(daemon.target, "models")
    assert listed.returncode == 0, listed.stderr
    (model,) = json.loads(listed.stdout)
    assert model["name"] == "affine" and model["latest_version"] == 1

    inputs = {"input": {"dtype": "DATA_TYPE_FLOAT32", "shape": [2, 4], "values": list(range(8))}}
    predicted = run_node(daemon.target, "predict", "affine", json.dumps(inputs), "--alias", "production")
    assert predicted.returncode == 0, predicted.stderr
    result = json.loads(predicted.stdout)
    output = result["outputs"]["output"]
    assert result["version"] == 1 and output["shape"] == [2, 4]
    np.testing.assert_allclose(output["values"], np.arange(8) * 2 + 1)


# The Python CLI's exit statuses (tessera.cli), which the Node CLI shares.
EXIT_FAILED, EXIT_USAGE, EXIT_DAEMON = 1, 2, 3


def test_node_client_reports_the_daemon_error_and_exits_non_zero(node_ready, daemon):
    inputs = {"input": {"dtype": "DATA_TYPE_FLOAT32", "shape": [1, 4], "values": [0, 0, 0, 0]}}
    failed = run_node(daemon.target, "predict", "absent", json.dumps(inputs))
    assert failed.returncode == EXIT_DAEMON
    assert failed.stderr.startswith("tessera-node: NOT_FOUND: ")
    assert "absent" in failed.stderr


def test_node_client_version_is_digits_0_to_9(node_ready, daemon, client, onnx_file):
    """Number() also reads "0x1", "1e0" and " 1" as 1 and "" as 0 (the latest version)."""
    client.models.push("affine", onnx_file)
    inputs = json.dumps({"input": {"dtype": "DATA_TYPE_FLOAT32", "shape": [1, 4], "values": [0, 0, 0, 0]}})
    texts = ("0x1", "1e0", " 1", "", "\u0663", str(2**64))
    failures = run_nodes(daemon.target, [("predict", "affine", inputs, "--version", text) for text in texts])
    for text, failed in zip(texts, failures, strict=True):
        assert failed.returncode == EXIT_USAGE, (text, failed.stdout)
        assert failed.stderr.startswith("tessera-node: --version must be a whole number"), failed.stderr
    predicted = run_node(daemon.target, "predict", "affine", inputs, "--version", "1")
    assert predicted.returncode == 0, predicted.stderr
    assert json.loads(predicted.stdout)["version"] == 1


def node_script(script: str, target: str) -> list[str]:
    """`node -e` arguments: `script` with `Client` (clients/node/tessera.js) in scope and `target`
    as TARGET."""
    prelude = f"const {{ Client }} = require({json.dumps(str(NODE_CLIENT / 'tessera.js'))});\n"
    prelude += f"const TARGET = {json.dumps(target)};\n"
    return ["node", "-e", prelude + script]


@contextmanager
def node_waiting(args: list[str]) -> Iterator[subprocess.Popen[str]]:
    """Node started with `args` and its standard streams piped: its script waits on stdin where
    the test acts (cuts the connection), until `resume`."""
    with subprocess.Popen(
        args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    ) as node:
        assert node.stdout is not None and node.stdin is not None
        yield node


def resume(node: subprocess.Popen[str]) -> None:
    """Sends the line the script of `node_waiting` waits for."""
    assert node.stdin is not None
    node.stdin.write("\n")
    node.stdin.flush()


def run_node_script(
    script: str, target: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """`script` run as `node_script` makes it, with `env` added to the environment."""
    return subprocess.run(
        node_script(script, target),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={**os.environ, **(env or {})},
    )


def test_node_client_refuses_a_timeout_not_above_0(node_ready, daemon):
    """0 took the default (`timeoutMs || 30000`); NaN and a negative one no deadline to speak of."""
    refused = run_node_script(
        """
        const values = [0, -1, NaN, Infinity, '5', 1e13];
        for (const timeoutMs of values) {
          try {
            new Client(TARGET, { timeoutMs });
            console.log(`constructed with ${timeoutMs}`);
          } catch (err) {
            console.log(err.name);
          }
        }
        const client = new Client(TARGET);
        const calls = [
          client.info({ timeoutMs: 0 }),
          client.listModels('', { timeoutMs: 0 }),
          client.predict('absent', {}, { timeoutMs: -5 }),
        ];
        Promise.allSettled(calls).then((results) => {
          for (const result of results) console.log(result.status, result.reason && result.reason.name);
          client.close();
        });
        """,
        daemon.target,
    )
    assert refused.returncode == 0, refused.stderr
    assert refused.stdout.split("\n") == [*(["RangeError"] * 6), *(["rejected RangeError"] * 3), ""]
    for text in ("0", "-1", "nan", "Infinity", "", "0x10", "1e3"):
        failed = run_node(daemon.target, "--timeout", text, "info")
        assert failed.returncode == EXIT_USAGE, (text, failed.stdout)
        assert failed.stderr.startswith("tessera-node: --timeout must be seconds above 0"), failed.stderr


def test_node_client_calls_end_at_their_deadline(node_ready, daemon, client, onnx_file):
    # A lone request waits 10 s for more rows to batch with: a model for each call, so that
    # neither is batched with the other.
    for model in ("affine", "affine-too"):
        client.models.push(model, onnx_file)
        client.inference.load(model, max_batch_size=8, max_queue_delay_us=10_000_000)
    inputs = json.dumps({"input": {"dtype": "DATA_TYPE_FLOAT32", "shape": [1, 4], "values": [0, 0, 0, 0]}})
    failed = run_node(daemon.target, "--timeout", "0.5", "predict", "affine", inputs)
    assert failed.returncode == EXIT_DAEMON
    assert failed.stderr.startswith("tessera-node: DEADLINE_EXCEEDED: "), failed.stderr
    per_call = run_node_script(
        f"""
        const client = new Client(TARGET);
        const inputs = {inputs};
        client.predict('affine-too', inputs, {{ timeoutMs: 500 }}).then(
          () => console.log('answered'),
          (err) => console.log(err.code),
        ).finally(() => client.close());
        """,
        daemon.target,
    )
    assert (per_call.returncode, per_call.stdout) == (0, "DEADLINE_EXCEEDED\n"), per_call.stderr


def test_node_cli_takes_its_timeout_from_the_environment_as_the_python_cli_does(
    node_ready, daemon, client, onnx_file
):
    """TESSERA_TIMEOUT_S was ignored: every call had 30 s whatever it said."""
    # A lone request waits 10 s for more rows to batch with.
    client.models.push("affine", onnx_file)
    client.inference.load("affine", max_batch_size=8, max_queue_delay_us=10_000_000)
    inputs = json.dumps({"input": {"dtype": "DATA_TYPE_FLOAT32", "shape": [1, 4], "values": [0, 0, 0, 0]}})
    failed = run_node(daemon.target, "predict", "affine", inputs, env={"TESSERA_TIMEOUT_S": "0.5"})
    assert failed.returncode == EXIT_DAEMON
    assert failed.stderr.startswith("tessera-node: DEADLINE_EXCEEDED: "), failed.stderr
    for text in ("0", "-1", "nan", "1e3", "soon"):
        refused = run_node(daemon.target, "info", env={"TESSERA_TIMEOUT_S": text})
        assert refused.returncode == EXIT_USAGE, (text, refused.stdout)
        assert refused.stderr.startswith(
            "tessera-node: env TESSERA_TIMEOUT_S (the default of --timeout) must be seconds above 0"
        ), refused.stderr
    # --timeout given, the environment's default is not read; an empty one is none.
    for env, args in (({"TESSERA_TIMEOUT_S": "soon"}, ("--timeout", "5")), ({"TESSERA_TIMEOUT_S": ""}, ())):
        answered = run_node(daemon.target, *args, "info", env=env)
        assert answered.returncode == 0, answered.stderr


def readme_install_commands() -> list[str]:
    """The `node cli.js` lines of the README's Install example."""
    readme = (NODE_CLIENT / "README.md").read_text()
    block = readme.split("## Install", 1)[1].split("```sh\n", 1)[1].split("```", 1)[0]
    return [line for line in block.splitlines() if line.startswith("node cli.js ")]


def test_node_readme_install_example_runs_on_what_the_top_readme_registers(
    node_ready, daemon, client, tmp_path
):
    """It predicted on a model `affine` alias `production`, which nothing had created."""
    torch = pytest.importorskip("torch")
    from safetensors.torch import save_file

    from tesserad.nn import build_model, spec_from_dict

    # As the top README's walkthrough registers it (spec.toml: cnn4d, register_as staging).
    architecture = {
        "input_shape": [1, 4, 4, 4, 4],
        "output_size": 2,
        "cnn4d": {"channels": [8, 16], "kernel_size": 3},
    }
    torch.manual_seed(0)
    spec = {
        "family": "cnn4d",
        "input_shape": [1, 4, 4, 4, 4],
        "output_size": 2,
        "channels": [8, 16],
        "kernel_size": 3,
    }
    weights = tmp_path / "clips-cnn4d.safetensors"
    save_file({k: v.contiguous() for k, v in build_model(spec_from_dict(spec)).state_dict().items()}, weights)
    client.models.push("clips-cnn4d", weights, architecture=architecture, set_alias="staging")
    commands = readme_install_commands()
    assert len(commands) == 3 and "predict" in commands[-1]
    for command in commands:
        done = subprocess.run(
            ["bash", "-c", command.replace("127.0.0.1:50051", daemon.target)],
            cwd=NODE_CLIENT,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
            env={**os.environ, "TESSERA_TARGET": daemon.target},
        )
        assert done.returncode == 0, (command, done.stderr)
    predicted = json.loads(done.stdout)
    assert predicted["version"] == 1 and predicted["outputs"]["output"]["shape"] == [1, 2]


def node_json(script: str, target: str) -> Any:
    """What `script` prints as JSON (its last line), the script failing the test when it fails."""
    done = run_node_script(script, target)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.splitlines()[-1])


def test_node_client_refuses_params_a_request_map_would_garble_or_collapse(node_ready, daemon, client):
    """An array of pairs (read as keys "0", "1" before) and a Map whose keys read as one text
    are refused before anything is sent, as the Python SDK refuses pairs; a Map is taken."""
    found = node_json(
        """
        (async () => {
          const client = new Client(TARGET);
          const run = await client.createRun('pairs', { createExperiment: true });
          const refused = async (call) => {
            try {
              await call();
              return 'sent';
            } catch (err) {
              return `${err.name}: ${err.message}`;
            }
          };
          const outcomes = [
            await refused(() => client.logParams(run.run_id, [['lr', '0.1'], ['lr', '0.2']])),
            await refused(() => client.logParams(run.run_id, new Map([[1, 'a'], ['1', 'b']]))),
            await refused(() => client.createRun('pairs', { tags: 'team=a' })),
            await refused(() => client.updateRun(run.run_id, { setTags: [['a', '1']] })),
          ];
          await client.logParams(run.run_id, new Map([['layers', 3], ['lr', 0.1]]));
          const got = await client.getRun(run.run_id);
          client.close();
          console.log(JSON.stringify({ outcomes, params: got.params, tags: got.tags }));
        })();
        """,
        daemon.target,
    )
    pairs = ": pairs may give a key twice, and the request keeps one value of each key"
    assert found["outcomes"] == [
        f"TypeError: params: give an object of key: value (or a Map), not an array{pairs}",
        'RangeError: params: key "1" is given twice; give each key once',
        f"TypeError: tags: give an object of key: value (or a Map), not string{pairs}",
        f"TypeError: setTags: give an object of key: value (or a Map), not an array{pairs}",
    ]
    assert found["params"] == {"layers": "3", "lr": "0.1"} and found["tags"] == {}


def test_node_client_creates_runs_as_the_python_sdk_does(node_ready, daemon, client):
    """createRun refuses an experiment that does not exist unless createExperiment says to create
    it, as the Python SDK's create_run, and nests a run under parentRunId; a logMetrics point that
    replaces another value warns MetricPointsReplaced, as the SDK warns, once per call."""
    client.training.create_experiment("nest")
    found = node_json(
        """
        (async () => {
          const client = new Client(TARGET);
          const warnings = [];
          process.on('warning', (w) => warnings.push([w.name, w.message]));
          const outcome = async (call) => {
            try {
              return await call();
            } catch (err) {
              return { error: `${err.name}: ${err.message}` };
            }
          };
          const refused = await outcome(() => client.createRun('nest-typo'));
          const asText = await outcome(() => client.createRun('nest-typo', { createExperiment: 'yes' }));
          const created = await client.createRun('nest-new', { createExperiment: true });
          const parent = await client.createRun('nest', { name: 'parent' });
          const child = await client.createRun('nest', { parentRunId: parent.run_id });
          const orphan = await outcome(() => client.createRun('nest', { parentRunId: 'nope' }));
          const logged = [];
          for (const value of [1, 1, 2]) {
            logged.push(await client.logMetrics(parent.run_id, { loss: value, acc: 0.5 }, 0));
          }
          const streamed = await client.logMetricsStream(parent.run_id, [[0, { loss: 3 }], [1, { loss: 4 }]]);
          // Warnings are emitted on the next tick.
          await new Promise((resolve) => setImmediate(resolve));
          client.close();
          console.log(JSON.stringify({
            refused, asText, created: created.experiment, parent: parent.run_id,
            child: [child.parent_run_id, child.tags['mlflow.parentRunId']], orphan, logged, streamed, warnings,
          }));
        })();
        """,
        daemon.target,
    )
    # The library keeps the API's words, as the Node client's other messages.
    assert found["refused"] == {
        "error": "TesseraError: NOT_FOUND: experiment 'nest-typo' does not exist; did you mean 'nest'? "
        "create it with CreateExperiment, or set create_experiment to create it with the run"
    }
    assert found["asText"] == {"error": "TypeError: createExperiment: give true or false, not string"}
    # The refusal made no experiment; createExperiment made one.
    assert [e.name for e in client.training.experiments("nest")] == ["nest", "nest-new"]
    assert found["created"] == "nest-new"
    assert found["child"] == [found["parent"], found["parent"]]
    assert found["orphan"]["error"].startswith("TesseraError: NOT_FOUND: ")
    assert "parent_run_id: run 'nope' does not exist" in found["orphan"]["error"]
    # The same values again replace nothing and do not warn; the new loss replaces one point of
    # the two, and the stream's first step one of its two.
    assert found["logged"] == [2, 2, 2] and found["streamed"] == 2
    assert [p.value for p in client.training.metric_history(found["parent"], "loss").points] == [3, 4]
    replaced = (
        "MetricPointsReplaced",
        "{} of the {} point(s) replaced another value logged before at the same key and step: a run "
        "keeps one point per key and step, the newest (log each step once, or the next value at a new step)",
    )
    assert found["warnings"] == [
        [replaced[0], replaced[1].format(1, 2)],
        [replaced[0], replaced[1].format(1, 2)],
    ]


def test_node_client_with_run_ends_the_run_as_its_body_ends(node_ready, daemon, client):
    """withRun, as the Python SDK's start_run in a `with` block: SUCCEEDED when the body resolves,
    FAILED when it throws (the body's error goes on), a run reopened with runId; misuse refused
    before anything is sent."""
    found = node_json(
        """
        (async () => {
          const client = new Client(TARGET);
          const ids = {};
          const outcome = async (call) => {
            try {
              return await call();
            } catch (err) {
              return { error: `${err.name}: ${err.message}` };
            }
          };
          const result = await client.withRun('with-run', { params: { lr: 0.1 }, createExperiment: true }, async (run) => {
            ids.ok = run.run_id;
            await client.logMetrics(run.run_id, { loss: 0.5 }, 0);
            return (await client.getRun(run.run_id)).status;
          });
          const thrown = await outcome(() => client.withRun('with-run', async (run) => {
            ids.failed = run.run_id;
            throw new Error('boom');
          }));
          const afterThrow = (await client.getRun(ids.failed)).status;
          const reopened = await client.withRun('', { runId: ids.failed }, async (run) => run.status);
          // A body that deletes its run and throws an error whose message cannot be written (an
          // abort's DOMException): its error goes on, not the TypeError of writing the note.
          const aborted = new DOMException('the body was aborted', 'AbortError');
          const abortedOutcome = await outcome(() => client.withRun('with-run', async (run) => {
            await client.deleteRun(run.run_id);
            throw aborted;
          }));
          const misuse = [
            await outcome(() => client.withRun('', {}, async () => 1)),
            await outcome(() => client.withRun('with-run', { runId: ids.ok }, async () => 1)),
            await outcome(() => client.withRun('with-run', { name: 'x' })),
            await outcome(() => client.withRun('with-run-typo', async () => 1)),
          ];
          client.close();
          console.log(JSON.stringify({ ids, result, thrown, afterThrow, reopened, misuse, abortedOutcome }));
        })();
        """,
        daemon.target,
    )
    assert found["result"] == "RUN_STATUS_RUNNING"
    assert found["thrown"] == {"error": "Error: boom"} and found["afterThrow"] == "RUN_STATUS_FAILED"
    assert found["reopened"] == "RUN_STATUS_RUNNING"
    assert found["abortedOutcome"] == {"error": "AbortError: the body was aborted"}
    ok, failed = (client.training.run(found["ids"][name]) for name in ("ok", "failed"))
    assert (ok.status, ok.params, ok.metrics["loss"]) == (pb.RUN_STATUS_SUCCEEDED, {"lr": "0.1"}, 0.5)
    # Failed by its body, then reopened and ended again by the second withRun.
    assert failed.status == pb.RUN_STATUS_SUCCEEDED
    assert found["misuse"][:3] == [
        {"error": "RangeError: withRun needs an experiment (or runId in options to reopen a run)"},
        {
            "error": "RangeError: withRun with runId reopens a run as it is: leave experiment, name, params, "
            "tags, parentRunId and createExperiment out (logParams and updateRun's setTags add to it)"
        },
        {
            "error": "TypeError: withRun(experiment, options, body): give body as a function, "
            "e.g. async (run) => { ... }"
        },
    ]
    assert found["misuse"][3]["error"].startswith(
        "TesseraError: NOT_FOUND: experiment 'with-run-typo' does not"
    )
    # Each run of the experiment is one of those made above: nothing was created by the misuse.
    assert sorted(r.run_id for r in client.training.runs("with-run")) == sorted(found["ids"].values())


def test_node_client_lists_every_metric_key_of_a_run(node_ready, daemon, client):
    """listRunMetrics pages through the keys getRun leaves out past a run's first 2,000."""
    run = client.training.create_run("many-keys", create_experiment=True)
    keys = [f"class_{c:04d}/f1" for c in range(2050)]
    client.training.log_metrics(run.run_id, dict.fromkeys(keys, 0.5), step=0)
    found = node_json(
        f"""
        (async () => {{
          const client = new Client(TARGET);
          const got = await client.getRun({json.dumps(run.run_id)});
          const listed = await client.listRunMetrics({json.dumps(run.run_id)}, {{ pageSize: 1000 }});
          client.close();
          console.log(JSON.stringify({{
            answered: got.metrics.length, leftOut: got.metrics_left_out,
            keys: listed.map((m) => m.key), lasts: [...new Set(listed.map((m) => m.last))],
          }}));
        }})();
        """,
        daemon.target,
    )
    assert (found["answered"], found["leftOut"]) == (2000, 50)
    assert found["keys"] == keys and found["lasts"] == [0.5]


def test_node_client_tracks_an_experiment_and_its_runs(node_ready, daemon, client):
    """What a service logging online metrics does: a run with params and tags, metric points
    step by step, then reads and searches them back."""
    found = node_json(
        """
        (async () => {
          const client = new Client(TARGET);
          await client.createExperiment('online', { description: 'live traffic', tags: { team: 'ml' } });
          const run = await client.createRun('online', { name: 'canary', params: { lr: 0.01 }, tags: { region: 'eu' } });
          const other = await client.createRun('online', { params: { lr: 0.1 } });
          await client.logParams(run.run_id, { batch: 32 });
          const accepted = [];
          for (const step of [0, 1, 2]) {
            accepted.push(await client.logMetrics(run.run_id, { latency_ms: 40 - step * 5, errors: step }, step));
          }
          await client.logMetrics(other.run_id, { latency_ms: 90 }, 0, { time: new Date(Date.UTC(2026, 0, 2)) });
          const ended = await client.updateRun(run.run_id, { status: 'succeeded', setTags: { verdict: 'ok' }, removeTags: ['region'] });
          const got = await client.getRun(run.run_id);
          const history = await client.metricHistory(run.run_id, 'latency_ms', { pageSize: 2 });
          const middle = await client.metricHistory(run.run_id, 'latency_ms', { startStep: 1, endStep: 1 });
          const otherHistory = await client.metricHistory(other.run_id, 'latency_ms');
          const fast = await client.listRuns('online', { metrics: [{ key: 'latency_ms', op: 'lt', value: 50 }] });
          const byParam = await client.listRuns('online', { params: { lr: 0.1 }, statuses: ['running'] });
          const ranked = await client.listRuns('online', { orderBy: 'latency_ms', descending: true });
          const experiments = await client.listExperiments('onl');
          const experiment = await client.getExperiment('online');
          client.close();
          console.log(JSON.stringify({
            accepted, status: ended.status, tags: got.tags, params: got.params,
            metrics: got.metrics.map(({ key, last, min, max, count }) => ({ key, last, min, max, count })),
            history: history.points.map(({ step, value }) => [step, value]), total: history.total_points,
            middle: middle.points.map(({ step, value }) => [step, value]), pageToken: history.next_page_token,
            otherTime: otherHistory.points[0].time.seconds,
            fast: fast.map((r) => r.run_id), byParam: byParam.map((r) => r.run_id),
            ranked: ranked.map((r) => r.run_id), experiments: experiments.map((e) => e.name),
            runCount: experiment.run_count, description: experiment.description,
            runId: run.run_id, otherId: other.run_id,
          }));
        })();
        """,
        daemon.target,
    )
    run_id, other_id = found["runId"], found["otherId"]
    assert found["accepted"] == [2, 2, 2]
    assert found["status"] == "RUN_STATUS_SUCCEEDED"
    assert found["tags"] == {"verdict": "ok"} and found["params"] == {"lr": "0.01", "batch": "32"}
    assert found["metrics"] == [
        {"key": "errors", "last": 2, "min": 0, "max": 2, "count": 3},
        {"key": "latency_ms", "last": 30, "min": 30, "max": 40, "count": 3},
    ]
    # Two pages of two points and one, joined.
    assert found["history"] == [[0, 40], [1, 35], [2, 30]] and found["total"] == 3
    assert "pageToken" not in found and found["middle"] == [[1, 35]]
    assert found["otherTime"] == 1767312000
    assert found["fast"] == [run_id] and found["byParam"] == [other_id]
    assert found["ranked"] == [other_id, run_id]
    assert found["experiments"] == ["online"] and found["runCount"] == 2
    assert found["description"] == "live traffic"
    # What the Node client logged is what the Python SDK reads.
    assert client.training.run(run_id).params == {"lr": "0.01", "batch": "32"}


def test_node_client_tracking_errors_name_the_code_and_what_to_fix(node_ready, daemon, client):
    client.training.create_experiment("online")
    run_id = client.training.create_run("online", create_experiment=True).run_id
    outcomes = node_json(
        f"""
        const runId = {json.dumps(run_id)};
        (async () => {{
          const client = new Client(TARGET);
          const attempts = {{
            getRun: () => client.getRun('run-absent'),
            logMetricsToAbsent: () => client.logMetrics('run-absent', {{ loss: 1 }}, 0),
            nan: () => client.logMetrics(runId, {{ loss: NaN }}, 0),
            noStep: () => client.logMetrics(runId, {{ loss: Infinity }}),
            emptyKey: () => client.logMetrics(runId, {{ '': 1 }}, 0),
            negativeStep: () => client.logMetrics(runId, {{ loss: 1 }}, -1),
            fractionalStep: () => client.logMetrics(runId, {{ loss: 1 }}, 1.5),
            textValue: () => client.logMetrics(runId, {{ loss: '0.5' }}, 0),
            status: () => client.updateRun(runId, {{ status: 'finished' }}),
            history: () => client.metricHistory(runId, 'loss', {{ maxPoints: 2 }}),
            absentExperiment: () => client.getExperiment('absent'),
          }};
          const outcomes = {{}};
          for (const [name, attempt] of Object.entries(attempts)) {{
            try {{
              await attempt();
              outcomes[name] = 'answered';
            }} catch (err) {{
              outcomes[name] = {{ name: err.name, code: err.code, message: err.message }};
            }}
          }}
          client.close();
          console.log(JSON.stringify(outcomes));
        }})();
        """,
        daemon.target,
    )
    for name in ("getRun", "logMetricsToAbsent"):
        assert outcomes[name]["name"] == "TesseraError" and outcomes[name]["code"] == "NOT_FOUND"
        assert (
            outcomes[name]["message"].startswith("NOT_FOUND: ") and "run-absent" in outcomes[name]["message"]
        )
    assert (
        outcomes["absentExperiment"]["code"] == "NOT_FOUND"
        and "absent" in outcomes["absentExperiment"]["message"]
    )
    # Stored as MLflow stores them; without a step, at the step after the key's last.
    assert (outcomes["nan"], outcomes["noStep"]) == ("answered", "answered")
    history = client.training.metric_history(run_id, "loss")
    assert list(history.steps) == [0, 1] and math.isnan(history.values[0]) and history.values[1] == math.inf
    assert outcomes["emptyKey"]["code"] == "INVALID_ARGUMENT" and "key" in outcomes["emptyKey"]["message"]
    assert (
        outcomes["history"]["code"] == "INVALID_ARGUMENT" and "max_points" in outcomes["history"]["message"]
    )
    # Refused before anything is sent: proto-loader would send 1.5 as step 1, '0.5' as 0.5 and an
    # unknown status as none at all.
    assert outcomes["negativeStep"]["name"] == "RangeError" and "step" in outcomes["negativeStep"]["message"]
    assert (
        outcomes["fractionalStep"]["name"] == "RangeError" and "1.5" in outcomes["fractionalStep"]["message"]
    )
    assert outcomes["textValue"]["name"] == "TypeError" and "loss" in outcomes["textValue"]["message"]
    assert outcomes["status"]["name"] == "RangeError"
    assert outcomes["status"]["message"].startswith(
        'status: "finished" is not one of running, succeeded, failed'
    )
    # Only the two points answered are stored: each refusal stored nothing.
    assert [(m.key, m.count) for m in client.training.run(run_id).metrics] == [("loss", 2)]


def small_spec(dataset: dict[str, Any]) -> dict[str, Any]:
    return {
        "experiment": "node",
        "architecture": {"input_shape": [4], "output_size": 2, "mlp": {"hidden_sizes": [8]}},
        "task": "classification",
        "data": {"dataset": dataset, "train_split": "train", "val_split": "val"},
        "epochs": 2,
        "batch_size": 8,
        "seed": 0,
        "early_stopping": {"metric": "val_loss", "mode": "min", "patience": 5},
    }


@pytest.fixture
def table(client) -> dict[str, Any]:
    """A dataset of 48 rows of 4 features and a class, as a JobSpec's data.dataset."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(48, 4)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int64)
    version = client.datasets.push("table", x=x, y=y, splits={"train": 0.75, "val": 0.25})
    return {"name": "table", "version": version.version}


def test_node_client_submits_and_watches_a_training_job(node_ready, daemon, table):
    watched = node_json(
        f"""
        (async () => {{
          const client = new Client(TARGET);
          const job = await client.submitJob({json.dumps(small_spec(table))});
          const seen = [];
          for await (const event of client.watchJob(job.job_id)) seen.push([event.seq, event.event, event.state && event.state.state]);
          const again = [];
          for await (const event of client.watchJob(job.job_id, {{ fromSeq: 2 }})) {{
            again.push(event.seq);
            break;
          }}
          const ended = await client.getJob(job.job_id);
          let absent;
          try {{
            for await (const event of client.watchJob('job-absent')) absent = event;
          }} catch (err) {{
            absent = err.message;
          }}
          client.close();
          const mode = ended.spec.early_stopping.mode;
          console.log(JSON.stringify({{ seen, again, state: ended.state, lastSeq: ended.last_seq, absent, mode }}));
        }})();
        """,
        daemon.target,
    )
    seen = watched["seen"]
    assert (
        [seq for seq, _, _ in seen] == list(range(1, len(seen) + 1)) == list(range(1, watched["lastSeq"] + 1))
    )
    assert {"state", "step", "epoch"} <= {kind for _, kind, _ in seen}
    assert seen[-1][2] == "JOB_STATE_SUCCEEDED" and watched["state"] == "JOB_STATE_SUCCEEDED"
    assert watched["again"] == [2]
    # Short enum names, as the Python SDK takes them ("min" sent as unspecified would not be).
    assert watched["mode"] == "OPTIMIZE_MODE_MIN"
    assert watched["absent"].startswith("NOT_FOUND: ") and "job-absent" in watched["absent"]


def test_node_client_refuses_a_spec_the_proto_does_not_read(node_ready, daemon, client, table):
    """proto-loader dropped a misspelt field and sent an unknown enum name as unspecified (for
    task: classification) without a word: the job trained something else than asked."""
    spec = small_spec(table)
    outcomes = node_json(
        f"""
        const spec = {json.dumps(spec)};
        const specs = [
          {{ ...spec, task: 'regresion' }},
          {{ ...spec, epoch: 5 }},
          {{ ...spec, architecture: {{ ...spec.architecture, mlp: {{ hidden_sizes: [8], activaton: 'relu' }} }} }},
          {{ ...spec, early_stopping: {{ mode: 'minimum' }} }},
        ];
        (async () => {{
          const client = new Client(TARGET);
          const outcomes = [];
          for (const bad of specs) {{
            try {{
              await client.submitJob(bad);
              outcomes.push('submitted');
            }} catch (err) {{
              outcomes.push(`${{err.name}}: ${{err.message}}`);
            }}
          }}
          client.close();
          console.log(JSON.stringify(outcomes));
        }})();
        """,
        daemon.target,
    )
    assert outcomes == [
        'RangeError: spec.task: "regresion" is not one of classification, regression',
        "RangeError: spec.epoch is not a field of this message; see protos/tessera/v1/",
        "RangeError: spec.architecture.mlp.activaton is not a field of this message; see protos/tessera/v1/",
        'RangeError: spec.early_stopping.mode: "minimum" is not one of min, max',
    ]
    assert list(client.training.jobs()) == []


def test_node_client_watch_resumes_after_the_connection_is_cut(node_ready, daemon, client, table, proxy_to):
    """A cut connection ended the watch with UNAVAILABLE; it is watched again from the event
    after the last one given, as the Python SDK's is: none missed, none repeated."""
    job = client.training.submit({**small_spec(table), "epochs": 200})
    proxy = proxy_to(daemon.daemon.port)
    script = f"""
        (async () => {{
          const client = new Client(TARGET);
          for await (const event of client.watchJob({json.dumps(job.id)})) {{
            console.log(event.seq);
            // The job goes on while the connection is cut; the watch waits for the test.
            if (event.seq === 2) await new Promise((resolve) => process.stdin.once('data', resolve));
          }}
          client.close();
          process.stdin.destroy();
        }})();
        """
    with node_waiting(node_script(script, proxy.target)) as node:
        assert [node.stdout.readline(), node.stdout.readline()] == ["1\n", "2\n"]
        proxy.cut()
        resume(node)
        client.training.cancel(job.id)
        out, err = node.communicate(timeout=120)
    assert node.returncode == 0, err
    seqs = [1, 2, *map(int, out.split())]
    assert proxy.cuts == 1
    assert seqs == list(range(1, client.training.job(job.id).info.last_seq + 1))


def test_node_client_watch_gives_up_after_its_reconnects(node_ready):
    """Nothing listens at the target: the watch tries `reconnects` more times, then says where
    to resume from."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]
    outcomes = node_json(
        """
        (async () => {
          const client = new Client(TARGET);
          const outcomes = [];
          for (const reconnects of [2, 1.5]) {
            try {
              for await (const event of client.watchJob('job-1', { fromSeq: 7, reconnects })) outcomes.push(event.seq);
            } catch (err) {
              outcomes.push(`${err.name}: ${err.message}`, err.details);
            }
          }
          client.close();
          console.log(JSON.stringify(outcomes));
        })();
        """,
        f"127.0.0.1:{port}",
    )
    gave_up, details, refused, _ = outcomes
    # gRPC's code and details, then the last failure named as the Python SDK names it.
    assert gave_up == (
        f"TesseraError: UNAVAILABLE: {details} (gave up watching job job-1 after 2 reconnects, the last "
        "failing UNAVAILABLE; watch again with fromSeq 7)"
    )
    assert refused == "RangeError: reconnects must be a whole number >= 0, got 1.5"


def test_node_client_tries_as_often_as_the_python_sdk_by_default(node_ready):
    """Nothing listens at the target: a watch and a metric stream left at their default
    `reconnects` try as many times in all as the Python SDK's RetryPolicy.attempts (5 reconnects
    made 6 tries)."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]
    found = node_json(
        """
        (async () => {
          const client = new Client(TARGET);
          const calls = { WatchJob: 0, LogMetricsStream: 0 };
          for (const method of Object.keys(calls)) {
            const real = client.training[method];
            client.training[method] = function counted(...args) {
              calls[method] += 1;
              return real.apply(this, args);
            };
          }
          const errors = [];
          try {
            for await (const event of client.watchJob('job-1')) errors.push(event.seq);
          } catch (err) {
            errors.push(err.message);
          }
          await client.logMetricsStream('run-1', [[0, { loss: 1 }]]).catch((err) => errors.push(err.code));
          client.close();
          console.log(JSON.stringify({ calls, errors }));
        })();
        """,
        f"127.0.0.1:{port}",
    )
    tries = RetryPolicy().attempts
    assert found["calls"] == {"WatchJob": tries, "LogMetricsStream": tries}
    watched, streamed = found["errors"]
    assert watched.endswith(
        f"(gave up watching job job-1 after {tries - 1} reconnects, the last failing UNAVAILABLE; "
        "watch again with fromSeq 1)"
    )
    assert streamed == "UNAVAILABLE"


def test_node_client_keepalive_ends_a_watch_on_a_dead_connection(node_ready, daemon, proxy_to):
    """A watch on a connection that went silent (a NAT that forgot it) waited for ever; the
    keepalive pings find it dead and the watch fails UNAVAILABLE. Without pings it waits out its
    deadline. Both run at once, each through a proxy of its own, so the test waits out one deadline."""
    script = """
        const keepalive = JSON.parse(process.argv[1]);
        (async () => {
          const client = new Client(TARGET, { keepalive });
          await client.info();
          console.log('connected');
          await new Promise((resolve) => process.stdin.once('data', resolve));
          try {
            const watch = client.watchJob('job-unheard', { reconnects: 0, timeoutMs: 7000 });
            for await (const event of watch) console.log(event.seq);
          } catch (err) {
            console.log(err.code);
          }
          client.close();
          process.stdin.destroy();
        })();
        """
    with ExitStack() as stack:
        nodes = []
        for keepalive in ({"timeMs": 1000, "timeoutMs": 1000}, False):
            proxy = proxy_to(daemon.daemon.port)
            node = stack.enter_context(
                node_waiting([*node_script(script, proxy.target), json.dumps(keepalive)])
            )
            nodes.append((proxy, node))
        for proxy, node in nodes:
            assert node.stdout.readline() == "connected\n"
            proxy.black_hole()
            resume(node)
        outcomes = [(*node.communicate(timeout=60), node.returncode) for _, node in nodes]
    assert [out for out, _, _ in outcomes] == ["UNAVAILABLE\n", "DEADLINE_EXCEEDED\n"], outcomes
    assert [code for _, _, code in outcomes] == [0, 0], outcomes


def test_node_client_keepalive_pings_are_taken_by_the_daemon(node_ready, daemon, client, onnx_file):
    """Pings every second on a call that sends nothing for 7 s: under gRPC's default server
    policy (a ping in 5 minutes without data) the fifth is answered with GOAWAY (too_many_pings)
    and the call fails RESOURCE_EXHAUSTED; tesserad takes one every 500 ms."""
    client.models.push("affine", onnx_file)
    # A lone request waits this long for more rows to batch with: the call stays open, quiet.
    client.inference.load("affine", max_batch_size=8, max_queue_delay_us=7_000_000)
    inputs = {"input": {"dtype": "DATA_TYPE_FLOAT32", "shape": [1, 4], "values": [0, 0, 0, 0]}}
    answered = run_node_script(
        f"""
        const client = new Client(TARGET, {{ keepalive: {{ timeMs: 1000, timeoutMs: 5000 }} }});
        client.predict('affine', {json.dumps(inputs)}).then(
          (result) => console.log(JSON.stringify(result.outputs.output.values)),
          (err) => console.log(err.message),
        ).finally(() => client.close());
        """,
        daemon.target,
        env={"GRPC_TRACE": "keepalive,transport", "GRPC_VERBOSITY": "DEBUG"},
    )
    assert (answered.returncode, answered.stdout) == (0, "[1,1,1,1]\n"), answered.stderr
    assert answered.stderr.count("Received ping response") >= 2, answered.stderr
    assert "GOAWAY" not in answered.stderr


def test_node_client_refuses_keepalive_pings_the_daemon_refuses(node_ready, daemon):
    refused = run_node_script(
        """
        const values = [
          { timeMs: 500 }, { timeMs: '30000' }, { timeoutMs: 0 }, { timeMs: 3e9 }, { timeoutMs: 3600001 }, 30000, null,
        ];
        for (const keepalive of values) {
          try {
            new Client(TARGET, { keepalive }).close();
            console.log('constructed');
          } catch (err) {
            console.log(err.name, err.message);
          }
        }
        const client = new Client(TARGET, { keepalive: false });
        client.info().then((info) => console.log('answered', info.version.length > 0)).finally(() => client.close());
        """,
        daemon.target,
    )
    assert refused.returncode == 0, refused.stderr
    lines = refused.stdout.splitlines()
    assert [line.split(" ")[0] for line in lines] == [
        "RangeError",
        "RangeError",
        "RangeError",
        "RangeError",
        "RangeError",
        "TypeError",
        "TypeError",
        "answered",
    ]
    assert "500 ms" in lines[0] and "keepalive: false" in lines[0]
    assert lines[-1] == "answered true"


def test_node_client_streams_metrics_and_keeps_artifacts(node_ready, daemon, client, tmp_path):
    work = tmp_path / "node"
    work.mkdir()
    """LogMetricsStream from a generator in batches; an artifact uploaded in chunks with its
    sha256, listed, and downloaded checked against it."""
    client.training.create_experiment("online")
    run_id = client.training.create_run("online", create_experiment=True).run_id
    (work / "loss.csv").write_bytes(b"step,loss\n" + b"0,1.0\n" * 5000)
    found = node_json(
        f"""
        const runId = {json.dumps(run_id)};
        const dir = {json.dumps(str(work))};
        (async () => {{
          const client = new Client(TARGET);
          async function* steps() {{
            for (let step = 0; step < 10; step += 1) yield [step, {{ loss: 1 / (step + 1), lr: 0.1 }}];
          }}
          const accepted = await client.logMetricsStream(runId, steps(), {{ batchPoints: 3 }});
          const uploaded = await client.uploadArtifact(runId, `${{dir}}/loss.csv`, {{ artifactPath: 'plots/', chunkSize: 4096 }});
          await client.uploadArtifact(runId, `${{dir}}/loss.csv`);
          const listed = await client.listArtifacts(runId, {{ path: 'plots' }});
          const everything = await client.listArtifacts(runId);
          const downloaded = await client.downloadArtifact(runId, 'plots/loss.csv', `${{dir}}/out/`);
          let refused;
          try {{
            await client.downloadArtifact(runId, 'plots/loss.csv', `${{dir}}/out`, {{ overwrite: false }});
          }} catch (err) {{
            refused = err.code;
          }}
          let absent;
          try {{
            await client.downloadArtifact(runId, 'plots/absent.csv', `${{dir}}/absent.csv`);
          }} catch (err) {{
            absent = err.message;
          }}
          let nowhere;
          try {{
            await client.downloadArtifact(runId, 'plots/loss.csv', `${{dir}}/nowhere/loss.csv`);
          }} catch (err) {{
            nowhere = err.code;
          }}
          client.close();
          console.log(JSON.stringify({{
            accepted, uploaded, listed: listed.map((a) => a.path), everything: everything.map((a) => a.path),
            downloaded, refused, absent, nowhere,
          }}));
        }})();
        """,
        daemon.target,
    )
    assert found["accepted"] == 20
    history = client.training.metric_history(run_id, "loss")
    assert [(p.step, p.value) for p in history.points] == [(s, 1 / (s + 1)) for s in range(10)]
    content = (work / "loss.csv").read_bytes()
    assert found["uploaded"]["path"] == "plots/loss.csv"
    assert found["uploaded"]["size_bytes"] == len(content)
    assert found["uploaded"]["sha256"] == hashlib.sha256(content).hexdigest()
    assert found["listed"] == ["plots/loss.csv"] and found["everything"] == ["loss.csv", "plots/loss.csv"]
    assert found["downloaded"]["file"] == str(work / "out" / "loss.csv")
    assert (work / "out" / "loss.csv").read_bytes() == content
    assert found["refused"] == "EEXIST"
    assert found["absent"].startswith("NOT_FOUND: ") and "absent.csv" in found["absent"]
    assert found["nowhere"] == "ENOENT"
    assert sorted(p.name for p in work.iterdir()) == ["loss.csv", "out"]
    assert [p.name for p in (work / "out").iterdir()] == ["loss.csv"]


def test_node_client_downloads_to_one_file_at_once_each_land_whole(node_ready, daemon, client, tmp_path):
    """Two downloads to one file in one process each write a partial file of their own: sharing
    one, their chunks interleaved on disk under a checked stream, or the second found its partial
    file renamed away. Without overwrite, a file that appears during the call is kept."""
    work = tmp_path / "node"
    work.mkdir()
    client.training.create_experiment("online")
    run_id = client.training.create_run("online", create_experiment=True).run_id
    contents = {name: bytes([fill]) * (3 * 1024 * 1024) for name, fill in (("a.bin", 97), ("b.bin", 98))}
    for name, content in contents.items():
        (work / name).write_bytes(content)
        client.training.log_artifact(run_id, work / name)
    found = node_json(
        f"""
        const runId = {json.dumps(run_id)};
        const dir = {json.dumps(str(work))};
        (async () => {{
          const client = new Client(TARGET);
          const results = await Promise.allSettled(
            ['a.bin', 'b.bin', 'a.bin', 'b.bin'].map((name) => client.downloadArtifact(runId, name, `${{dir}}/out.bin`)),
          );
          client.close();
          console.log(JSON.stringify(results.map((r) => r.status === 'fulfilled' ? 'ok' : r.reason.message)));
        }})();
        """,
        daemon.target,
    )
    assert found == ["ok"] * 4
    assert (work / "out.bin").read_bytes() in contents.values()
    assert sorted(p.name for p in work.iterdir()) == ["a.bin", "b.bin", "out.bin"]


def test_node_client_download_filling_its_disk_leaves_nothing_and_names_the_file(
    node_ready, daemon, client, tmp_path
):
    """A chunk written where the disk filled midway was written in part, as write() said in
    bytesWritten alone, so the download resolved with a short file in place; one meeting a full
    disk failed with Node's "ENOSPC: no space left on device, write", naming no file."""
    client.training.create_experiment("online")
    run_id = client.training.create_run("online", create_experiment=True).run_id
    artifact = tmp_path / "big.bin"
    artifact.write_bytes(os.urandom(256 * 1024))
    client.training.log_artifact(run_id, artifact)
    with tmpfs(tmp_path / "disk", "size=64k") as disk:
        found = node_json(
            f"""
            const file = {json.dumps(str(disk / "big.bin"))};
            (async () => {{
              const client = new Client(TARGET);
              let failed;
              try {{
                await client.downloadArtifact({json.dumps(run_id)}, 'big.bin', file);
              }} catch (err) {{
                failed = {{ code: err.code, path: err.path, message: err.message }};
              }}
              client.close();
              console.log(JSON.stringify(failed ?? 'resolved'));
            }})();
            """,
            daemon.target,
        )
        assert found == {
            "code": "ENOSPC",
            "path": str(disk / "big.bin"),
            "message": f"ENOSPC: no space left on device, write '{disk / 'big.bin'}'",
        }
        assert list(disk.iterdir()) == []


def test_node_client_download_is_on_the_disk_before_it_takes_its_name(node_ready, daemon, client, tmp_path):
    """Its bytes are fsynced before it takes its name, and its directory after, as the Python
    SDK's downloads are: a power cut after it resolves never leaves an empty or short file."""
    client.training.create_experiment("online")
    run_id = client.training.create_run("online", create_experiment=True).run_id
    (tmp_path / "notes.md").write_text("loss went down\n")
    client.training.log_artifact(run_id, tmp_path / "notes.md")
    out = tmp_path / "out"
    out.mkdir()
    found = node_json(
        f"""
        const fs = require('node:fs');
        const synced = [];
        const fsync = fs.fsyncSync;
        fs.fsyncSync = (fd) => {{
          synced.push(fs.readlinkSync(`/proc/self/fd/${{fd}}`));
          fsync(fd);
        }};
        (async () => {{
          const handle = await fs.promises.open({json.dumps(str(tmp_path / "notes.md"))});
          const sync = Object.getPrototypeOf(handle).sync;
          await handle.close();
          Object.getPrototypeOf(handle).sync = function () {{
            synced.push(fs.readlinkSync(`/proc/self/fd/${{this.fd}}`));
            return sync.call(this);
          }};
          const client = new Client(TARGET);
          await client.downloadArtifact({json.dumps(run_id)}, 'notes.md', {json.dumps(str(out / "notes.md"))});
          client.close();
          console.log(JSON.stringify(synced));
        }})();
        """,
        daemon.target,
    )
    assert len(found) == 2, found
    # Hidden until whole, under the Python SDK's name for it (tessera.transfer.new_partial).
    assert re.fullmatch(
        f"{re.escape(str(out.resolve()))}/\\.notes\\.md\\.[0-9a-f]{{8}}\\.partial", found[0]
    ), found
    assert found[1] == str(out.resolve()), found
    assert (out / "notes.md").read_text() == "loss went down\n"


def test_node_client_downloads_to_a_name_at_the_filesystems_length_limit(
    node_ready, daemon, client, tmp_path
):
    """Its temp file was FILE.partial-PID-HEX, past the limit (255 bytes) for a name near it:
    ENAMETOOLONG, where the Python SDK's, .FILE.<random>.partial with FILE cut short, fits."""
    client.training.create_experiment("online")
    run_id = client.training.create_run("online", create_experiment=True).run_id
    (tmp_path / "notes.md").write_text("loss went down\n")
    client.training.log_artifact(run_id, tmp_path / "notes.md")
    out = tmp_path / "out"
    out.mkdir()
    longest = out / ("n" * 255)
    found = node_json(
        f"""
        (async () => {{
          const client = new Client(TARGET);
          let result;
          try {{
            result = (await client.downloadArtifact({json.dumps(run_id)}, 'notes.md', {json.dumps(str(longest))})).file;
          }} catch (err) {{
            result = err.message;
          }}
          client.close();
          console.log(JSON.stringify(result));
        }})();
        """,
        daemon.target,
    )
    assert found == str(longest)
    assert longest.read_text() == "loss went down\n"
    assert [p.name for p in out.iterdir()] == [longest.name]


def test_node_download_takes_its_name_where_the_filesystem_has_no_hard_links(node_ready, tmp_path):
    """Without overwrite a download takes its name with a hard link, which FAT, SMB and some FUSE
    mounts refuse (EPERM, EXDEV, ENOTSUP, ENOSYS): there it checks, then renames, as the Python
    SDK's put_in_place; a real link to a name taken is refused EEXIST and keeps the file. No
    filesystem here refuses links, so `link` fails as theirs do."""
    found = node_json(
        f"""
        const fs = require('node:fs');
        const {{ putInPlace }} = require({json.dumps(str(NODE_CLIENT / "put_in_place.js"))});
        const dir = {json.dumps(str(tmp_path))};
        function attempt(place) {{
          try {{
            place();
            return 'placed';
          }} catch (err) {{
            return err.code;
          }}
        }}
        const found = {{}};
        for (const code of ['EPERM', 'EXDEV', 'ENOTSUP', 'EOPNOTSUPP', 'ENOSYS', 'EIO', 'EEXIST', 'real']) {{
          const linkFails = () => {{
            throw Object.assign(new Error(`${{code}}: link refused`), {{ code }});
          }};
          const link = code === 'real' ? undefined : linkFails;
          const [free, taken] = [`${{dir}}/${{code}}-free`, `${{dir}}/${{code}}-taken`];
          fs.writeFileSync(`${{dir}}/${{code}}.partial`, 'downloaded');
          fs.writeFileSync(taken, 'kept');
          found[code] = {{
            taken: attempt(() => putInPlace(`${{dir}}/${{code}}.partial`, taken, false, link)),
            free: attempt(() => putInPlace(`${{dir}}/${{code}}.partial`, free, false, link)),
            kept: fs.readFileSync(taken, 'utf8'),
            written: fs.existsSync(free) ? fs.readFileSync(free, 'utf8') : null,
          }};
        }}
        console.log(JSON.stringify(found));
        """,
        "",
    )
    placed = {"taken": "EEXIST", "free": "placed", "kept": "kept", "written": "downloaded"}
    for code in ("EPERM", "EXDEV", "ENOTSUP", "EOPNOTSUPP", "ENOSYS", "real"):
        assert found[code] == placed, code
    # Any other failure of the link is the download's failure, the name left as it was.
    assert found["EIO"] == {"taken": "EIO", "free": "EIO", "kept": "kept", "written": None}
    assert found["EEXIST"] == {"taken": "EEXIST", "free": "EEXIST", "kept": "kept", "written": None}


def test_node_client_metric_stream_failure_says_what_is_stored(node_ready, daemon, client):
    """A batch the daemon refuses ends the stream: the error says which points are stored (the
    batches before it, from the trailing metadata) so that the caller resends from there."""
    client.training.create_experiment("online")
    run_id = client.training.create_run("online", create_experiment=True).run_id
    outcome = node_json(
        f"""
        (async () => {{
          const client = new Client(TARGET);
          const steps = [[0, {{ loss: 1 }}], [1, {{ loss: 2 }}], [2, {{ loss: 3 }}], [3, {{ loss: 4, '': 4 }}], [4, {{ loss: 5 }}]];
          const outcome = {{}};
          try {{
            await client.logMetricsStream({json.dumps(run_id)}, steps, {{ batchPoints: 2 }});
          }} catch (err) {{
            Object.assign(outcome, {{ name: err.name, code: err.code, message: err.message, stored: err.storedPoints, step: err.lastStoredStep }});
          }}
          try {{
            await client.logMetricsStream({json.dumps(run_id)}, [[9, {{ '': 1 }}], [10, {{ loss: 1 }}]]);
          }} catch (err) {{
            outcome.first = [err.code, err.storedPoints, err.lastStoredStep === undefined, err.message];
          }}
          try {{
            await client.logMetricsStream({json.dumps(run_id)}, [[20, {{ loss: 1 }}], [21, {{ '': 1 }}]], {{ batchPoints: 1 }});
          }} catch (err) {{
            outcome.one = err.message;
          }}
          try {{
            await client.logMetricsStream({json.dumps(run_id)}, [[-1, {{ loss: 1 }}]]);
          }} catch (err) {{
            outcome.negative = `${{err.name}}: ${{err.message}}`;
          }}
          client.close();
          console.log(JSON.stringify(outcome));
        }})();
        """,
        daemon.target,
    )
    assert (outcome["name"], outcome["code"]) == ("TesseraError", "INVALID_ARGUMENT")
    # Batches of two points: [loss 0, loss 1], [loss 2, loss 3], then ['' 3, loss 4] refused.
    assert (outcome["stored"], outcome["step"]) == (4, 3)
    assert outcome["message"].endswith("(4 points of this stream are stored, up to step 3)")
    code, stored, no_step, message = outcome["first"]
    assert (code, stored, no_step) == ("INVALID_ARGUMENT", 0, True)
    assert message.endswith("(no point of this stream is stored)")
    # It said "1 points of this stream are stored".
    assert outcome["one"].endswith("(1 point of this stream is stored, up to step 20)"), outcome["one"]
    assert outcome["negative"] == "RangeError: step must be a whole number >= 0, got -1"
    history = client.training.metric_history(run_id, "loss")
    assert [p.step for p in history.points] == [0, 1, 2, 3, 20]


def test_node_client_metric_stream_refuses_batches_the_daemon_would(node_ready, daemon, client):
    """batchPoints outside 1..10000 (the daemon's limit for one batch) is a RangeError before
    anything is sent or `steps` is read, in the Python SDK's words; 10000 is sent."""
    run_id = client.training.create_run("node-streams", create_experiment=True).run_id
    found = node_json(
        f"""
        (async () => {{
          const client = new Client(TARGET);
          const found = {{ read: 0 }};
          function* steps() {{
            found.read += 1;
            yield [0, {{ loss: 1 }}];
          }}
          for (const batchPoints of [0, 10001, 2.5]) {{
            try {{
              await client.logMetricsStream({json.dumps(run_id)}, steps(), {{ batchPoints }});
            }} catch (err) {{
              found[String(batchPoints)] = `${{err.name}}: ${{err.message}}`;
            }}
          }}
          found.refusedRead = found.read;
          found.accepted = await client.logMetricsStream({json.dumps(run_id)}, steps(), {{ batchPoints: 10000 }});
          client.close();
          console.log(JSON.stringify(found));
        }})();
        """,
        daemon.target,
    )
    assert found["0"] == "RangeError: batchPoints must be in 1..10000, got 0"
    assert found["10001"] == "RangeError: batchPoints must be in 1..10000, got 10001"
    assert found["2.5"] == "RangeError: batchPoints must be in 1..10000, got 2.5"
    assert (found["refusedRead"], found["accepted"]) == (0, 1)
    assert [p.step for p in client.training.metric_history(run_id, "loss").points] == [0]


def test_node_client_metric_stream_ended_early_closes_its_steps(node_ready, daemon, client):
    """A stream the daemon refuses mid-way (an empty key), or one whose step is refused
    before sending, leaves its generator early: the generator is closed, so its `finally` runs
    (releasing what it holds), as leaving a `for await` loop does. Steps with no end: only
    closing ends them."""
    run_id = client.training.create_run("node-streams", create_experiment=True).run_id
    found = node_json(
        f"""
        (async () => {{
          const client = new Client(TARGET);
          const closed = {{}};
          function* endless(name, bad) {{
            try {{
              for (let step = 0; ; step += 1) yield step === 3 ? bad : [step, {{ loss: step }}];
            }} finally {{
              closed[name] = true;
            }}
          }}
          async function* endlessAsync(name, bad) {{
            yield* endless(name, bad);
          }}
          const cases = {{
            refused: endless('refused', [3, {{ '': 1 }}]),
            refusedAsync: endlessAsync('refusedAsync', [3, {{ '': 1 }}]),
            negativeStep: endlessAsync('negativeStep', [-1, {{ loss: 0 }}]),
          }};
          const refusals = {{}};
          for (const [name, steps] of Object.entries(cases)) {{
            await client.logMetricsStream({json.dumps(run_id)}, steps, {{ batchPoints: 2 }}).catch((err) => {{
              refusals[name] = `${{err.name}} ${{err.code}}`;
            }});
          }}
          client.close();
          console.log(JSON.stringify({{ closed, refusals }}));
        }})();
        """,
        daemon.target,
    )
    assert found["refusals"] == {
        "refused": "TesseraError INVALID_ARGUMENT",
        "refusedAsync": "TesseraError INVALID_ARGUMENT",
        "negativeStep": "RangeError undefined",
    }
    assert found["closed"] == {"refused": True, "refusedAsync": True, "negativeStep": True}


def test_node_client_metric_stream_is_sent_again_after_a_cut(node_ready, daemon, client, proxy_to):
    """A cut connection ended the stream UNAVAILABLE with its points lost; it is sent again from
    its first batch not known to be stored, as the Python SDK's is: every point stored once."""
    proxy = proxy_to(daemon.daemon.port)
    run_id = client.training.create_run("node-streams", create_experiment=True).run_id
    script = f"""
        (async () => {{
          const client = new Client(TARGET);
          // Connected before the stream, so that the cut ends the stream's call.
          await client.info();
          async function* steps() {{
            for (let step = 0; step < 100; step += 1) {{
              // The test cuts the connection here, with five batches sent.
              if (step === 55) {{
                console.log('cut');
                await new Promise((resolve) => process.stdin.once('data', resolve));
              }}
              yield [step, {{ loss: 1 / (step + 1) }}];
            }}
          }}
          console.log(await client.logMetricsStream({json.dumps(run_id)}, steps(), {{ batchPoints: 10 }}));
          client.close();
          process.stdin.destroy();
        }})();
        """
    with node_waiting(node_script(script, proxy.target)) as node:
        assert node.stdout.readline() == "cut\n"
        proxy.cut()
        resume(node)
        out, err = node.communicate(timeout=120)
    assert node.returncode == 0, err
    assert out == "100\n"
    assert proxy.cuts == 1
    history = client.training.metric_history(run_id, "loss")
    assert [(p.step, p.value) for p in history.points] == [(s, 1 / (s + 1)) for s in range(100)]
    (summary,) = client.training.run(run_id).metrics
    assert summary.count == 100


def test_node_client_metric_stream_sent_again_gets_a_deadline_of_its_own(
    node_ready, daemon, client, proxy_to
):
    """timeoutMs bounds each try, as the Python SDK's transfer_timeout: one deadline for the
    whole stream left none to a stream cut past it, which failed UNAVAILABLE without its resend."""
    proxy = proxy_to(daemon.daemon.port)
    run_id = client.training.create_run("node-streams", create_experiment=True).run_id
    # The first try's deadline is set before its first step is read, so it has passed once
    # Node's clock, which gRPC's deadlines run on, is past that read plus timeoutMs: the script
    # waits for that itself rather than the test sleeping for a guess. timeoutMs is long
    # enough that the cut, made as soon as "cut" is read, comes before that deadline.
    script = f"""
        (async () => {{
          const client = new Client(TARGET);
          await client.info();
          const timeoutMs = 5000;
          let firstRead;
          async function* steps() {{
            for (let step = 0; step < 100; step += 1) {{
              if (step === 0) firstRead = Date.now();
              if (step === 55) {{
                console.log('cut');
                await new Promise((resolve) => process.stdin.once('data', resolve));
                while (Date.now() <= firstRead + timeoutMs) {{
                  await new Promise((resolve) => setTimeout(resolve, firstRead + timeoutMs + 1 - Date.now()));
                }}
              }}
              yield [step, {{ loss: 1 / (step + 1) }}];
            }}
          }}
          const options = {{ batchPoints: 10, timeoutMs }};
          console.log(await client.logMetricsStream({json.dumps(run_id)}, steps(), options));
          client.close();
          process.stdin.destroy();
        }})();
        """
    with node_waiting(node_script(script, proxy.target)) as node:
        assert node.stdout.readline() == "cut\n"
        proxy.cut()
        resume(node)
        out, err = node.communicate(timeout=120)
    assert node.returncode == 0, err
    assert out == "100\n"
    history = client.training.metric_history(run_id, "loss")
    assert [p.step for p in history.points] == list(range(100))


RUN_FILTERS = [
    "",
    "metrics.val_accuracy > 0.9 and params.x = '1'",
    "metric.val_loss.min <= 1e-3 AND tags.team = \"vision\" and attributes.status = 'FINISHED'",
    "run.status IN ('killed', 'failed') and attr.status != 'failed'",
    "attributes.status NOT IN ('running')",
    "params.optimizer.lr = 'it''s' and metrics.`val-loss` >= -.5 and metrics.\"a b\".max = +2.",
    "metrics.\u0430\u0431\u0432 > \u0663.5e1",
    "metrics.a > 1 or metrics.b < 2",
    "metrics.a == 1",
    "metrics.a > '1'",
    "metrics.a > 1e400",
    "metrics.a > 1x",
    "metrics.a.median > 1",
    "params.a > '1'",
    "params.a = 1",
    "params.a = \"it's\" and params.a = 'y'",
    "tags.t = '\U0001f600' and runs.x = '1'",
    "attributes.name = 'x'",
    "attributes.status = 'bogus\"'",
    "attributes.status = 'failed' and attributes.status = 'running'",
    "attributes.status IN 'failed'",
    "attributes.status NOT 'failed'",
    "attributes.status IN ('failed' 'running')",
    "metrics.a > 1 and",
    "metrics.a > 1 metrics.b < 2",
    "metrics.``",
    "metrics.`open",
    "tags.x = 'open",
    "metrics",
    "metrics.",
    "params.a. = 'x'",
    "metrics.a",
    "\u3000metrics.a\u2003>\x1c1",
    "metrics.train/loss < 0.3",
    "params.batch-size = '32' and tags.a:b = 'x'",
    "metrics.val-loss.min<1",
    "metrics.loss.min-1 < 2",
    "metrics.a.b.c > 1",
    "metrics.a.b.min > 1 and metrics.`a.b`.max < 2",
    "metrics.`val.min` < 1 and metrics.`val.min`.max < 2",
    "metrics.val.min.max>1",
    "metrics.`a``b`.c.last > 1",
    "metrics.a.b-c.max\x1c> 1",
    "metrics.a.\U0001f600.min > 1",
    # LIKE, ILIKE, IN, NOT IN and != on params, tags and run attributes; run times.
    "params.model LIKE 'res%' and tags.team ILIKE '_ISION' and params.lr != '0.1'",
    "params.lr IN ('0.1', \"0.01\") and tags.t not in ('a') and params.lr = '0.1'",
    "attributes.run_name = 'canary' and run.run_id != 'r1' and attr.parent_run_id IN ('p')",
    "attributes.start_time >= 1700000000000 and attributes.end_time < 9223372036854775807",
    "attributes.end_time < 9223372036854775808",
    "attributes.start_time > 1.5",
    "attributes.start_time > '1'",
    "attributes.start_time LIKE '1'",
    "params.a LIKE 'x' || 'y'",
    "params.a LIKE '" + "%" * 501 + "'",
    "params.a LIKE '" + "\U0001f600" * 500 + "'",
    "params.a IN 'x'",
    "params.a IN ('x' 'y')",
    "params.a NOT LIKE 'x'",
    "params.a IN ()",
    "tags.t < 'x'",
    "attributes.run_name > 'x'",
    "attributes.user_id = 'me'",
    "tags.mlflow.runName = 'best' and tags.`mlflow.parentRunId` != 'r1' and tags.mlflow.source = 'x'",
]
RUN_ORDERS = [
    "metrics.val_loss ASC",
    "tags.mlflow.runName DESC",
    "tags.mlflow.parentRunId",
    "metrics.val_loss.max desc",
    "metric.`val-loss`",
    "",
    "val_loss",
    "params.x",
    "metrics.a, metrics.b",
    "metrics.a ASC DESC",
    "metrics.a sideways",
    "val_loss DESC",
    " start_time  asc ",
    "val-loss Desc",
    "metrics.train/loss DESC",
    "start_time",
    " End_Time  desc",
    "created",
    "status",
    "attributes.start_time DESC",
    "run_id ASC",
    "DESC",
    " asc ",
    # Spaces Python's str.strip() takes and JavaScript's trim() does not, and the reverse (BOM).
    "\x1cmetrics.val_loss",
    "\x85metrics.val_loss\x1f",
    "\ufeffmetrics.val_loss DESC",
    "\ufeffval_loss",
    "metrics.`val.min` DESC",
    "metrics.a.b.max DESC",
    # Several keys, params and run attributes.
    "metrics.val_loss.min DESC, params.lr, start_time desc",
    "params.`batch-size` ASC, attributes.created DESC, end_time, run_name, status asc",
    "attributes.run_id",
    "tags.team DESC",
    "metrics.a,",
    "metrics.a DESC params.b",
    "status, , start_time",
    "run_name.x",
]


def python_run_filter(text: str) -> Any:
    """What the Python SDK's parser makes of `text`, in the form run_filter.js answers."""
    try:
        found = parse_filter(text)
    except RunFilterError as err:
        return {"error": str(err)}

    def word(enum: Any, number: int, prefix: str) -> str:
        return str(enum.Name(number)).removeprefix(prefix).lower()

    metrics = [
        {
            "key": m.key,
            "field": word(pb.SummaryField, m.field, "SUMMARY_FIELD_"),
            "op": word(pb.Comparison, m.op, "COMPARISON_"),
            "value": m.value,
        }
        for m in found.metrics
    ]
    texts = [
        {
            "entity": word(pb.TextEntity, t.entity, "TEXT_ENTITY_"),
            "key": t.key,
            "match": word(pb.TextMatch, t.match, "TEXT_MATCH_"),
            "values": list(t.values),
        }
        for t in found.texts
    ]
    times = [
        {
            "attribute": t.attribute,
            "op": word(pb.Comparison, t.op, "COMPARISON_"),
            "value_ms": str(t.value_ms),
        }
        for t in found.times
    ]
    return {
        "statuses": found.statuses,
        "params": found.params,
        "tags": found.tags,
        "metrics": metrics,
        "texts": texts,
        "times": times,
    }


def python_run_order(text: str) -> Any:
    try:
        keys = parse_order_keys(text)
    except RunFilterError as err:
        return {"error": str(err)}
    return [
        {
            "entity": key.entity,
            "key": key.key,
            "field": None
            if key.field == pb.SUMMARY_FIELD_UNSPECIFIED
            else pb.SummaryField.Name(key.field).removeprefix("SUMMARY_FIELD_").lower(),
            "descending": key.descending,
        }
        for key in keys
    ]


def python_list_runs_request(options: dict[str, Any]) -> Any:
    """The ListRuns request the Python SDK's runs() sends for `options` (its keyword arguments),
    as bytes, or the text of the error it raises instead."""
    try:
        pages = Training.runs._build(None, "exp", **options)
    except ValueError as err:
        return {"error": str(err)}
    return pages.page("").request


# listRuns' options and runs()' keyword arguments that ask the same: each filter and order string
# alone, orders as lists, and order options beside them.
LIST_RUNS_OPTIONS = [
    *({"filter": text} for text in RUN_FILTERS),
    *({"orderBy": text} for text in RUN_ORDERS),
    {"orderBy": ["metrics.a DESC", "start_time"]},
    {"orderBy": ["val_loss"]},
    {"orderBy": ["", " "]},
    {"orderBy": []},
    {"orderBy": "val_loss", "descending": True, "orderField": "max"},
    {"orderBy": "metrics.a", "descending": True},
    {"orderBy": "metrics.a, metrics.b", "descending": True},
    {"orderBy": "params.a", "orderField": "min"},
    {"descending": False},
    {"filter": "params.a LIKE 'x%'", "params": {"a": "y"}, "orderBy": "params.a DESC, run_name"},
    {"filter": "params.a = 'x'", "params": {"a": "y"}},
]
PYTHON_ARGUMENTS = {"orderBy": "order_by", "orderField": "order_field"}


def test_node_run_filter_reads_each_string_as_the_python_sdk_does(node_ready):
    """run_filter.js is a port of tessera.run_filter: the same strings make the same structured
    request, or the same error with its column and caret; listRuns sends the ListRuns request
    runs() sends for the same options, byte for byte once parsed, or refuses it as runs() does."""
    script = f"""
        const {{ parseRunFilter, parseRunOrderKeys, listRunsRequest }} = require({json.dumps(str(NODE_CLIENT / "tessera.js"))});
        const {{ isOrderString }} = require({json.dumps(str(NODE_CLIENT / "run_filter.js"))});
        const {{ DEFINITION }} = require({json.dumps(str(NODE_CLIENT / "proto.js"))});
        const {{ requestSerialize }} = DEFINITION['tessera.v1.Training'].ListRuns;
        const outcome = (parse, text) => {{
          try {{
            return parse(text);
          }} catch (err) {{
            if (!(err instanceof RangeError)) throw err;
            return {{ error: err.message }};
          }}
        }};
        const filters = {json.dumps(RUN_FILTERS)}.map((text) => outcome(parseRunFilter, text));
        const orders = {json.dumps(RUN_ORDERS)}.map((text) => {{
          const found = outcome(parseRunOrderKeys, text);
          return found.error ? found : found.map((key) => ({{ ...key, field: key.field ?? null, descending: key.descending ?? null }}));
        }});
        const orderStrings = {json.dumps(RUN_ORDERS)}.map(isOrderString);
        const requests = {json.dumps(LIST_RUNS_OPTIONS)}.map((options) => {{
          const found = outcome((given) => listRunsRequest('exp', given), options);
          return found.error ? found : requestSerialize(found).toString('base64');
        }});
        console.log(JSON.stringify({{ filters, orders, orderStrings, requests }}));
        """
    done = subprocess.run(["node", "-e", script], capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    found = json.loads(done.stdout)
    for text, node_filter in zip(RUN_FILTERS, found["filters"], strict=True):
        assert node_filter == python_run_filter(text), text
    for text, node_order in zip(RUN_ORDERS, found["orders"], strict=True):
        assert node_order == python_run_order(text), text
    # Which orders each client reads as MLflow's strings rather than a metric's name alone.
    assert found["orderStrings"] == [is_order_string(text) for text in RUN_ORDERS]
    for options, node_request in zip(LIST_RUNS_OPTIONS, found["requests"], strict=True):
        python_request = python_list_runs_request(
            {PYTHON_ARGUMENTS.get(name, name): value for name, value in options.items()}
        )
        if isinstance(python_request, dict):
            # The same refusal, but for the option names each client spells its own way.
            python_error = re.sub(r"\b(\w+)=", r"\1", python_request["error"])
            for node_name, python_name in PYTHON_ARGUMENTS.items():
                python_error = python_error.replace(python_name, node_name)
            assert node_request == {"error": python_error}, options
        else:
            assert isinstance(node_request, str), (options, node_request)
            assert pb.ListRunsRequest.FromString(base64.b64decode(node_request)) == python_request, options
    # Both refuse OR, saying why and where.
    assert found["filters"][7]["error"].startswith("column 15: OR is not supported (nor in MLflow's search)")


def test_node_client_searches_compares_and_ranks_runs(node_ready, daemon, client):
    """listRuns with MLflow's filter and order strings asks the daemon what the Python SDK's
    runs(filter=, order_by=) does; compareRuns and leaderboard as the SDK's."""
    client.training.create_experiment("search")
    ids = []
    for lr, accuracy, loss in (("0.1", 0.95, 0.3), ("0.01", 0.8, 0.1), ("0.1", 0.7, 0.5)):
        run_id = client.training.create_run("search", params={"lr": lr}, create_experiment=True).run_id
        client.training.log_metrics(run_id, {"val_accuracy": accuracy, "val_loss": loss}, step=0)
        ids.append(run_id)
    client.training.update_run(ids[2], status="failed")
    searches = {
        "accurate": ("metrics.val_accuracy > 0.75", "metrics.val_loss DESC"),
        "by_param": ("params.lr = '0.1'", "metrics.val_accuracy"),
        "not_failed": ("attributes.status != 'failed'", "val_loss"),
        "several_keys": (
            "params.lr LIKE '0.%' and attributes.run_name != 'none' and attributes.start_time > 0",
            "params.lr DESC, metrics.val_loss",
        ),
    }
    found = node_json(
        f"""
        (async () => {{
          const client = new Client(TARGET);
          const searches = {json.dumps(searches)};
          const found = {{}};
          for (const [name, [filter, orderBy]] of Object.entries(searches)) {{
            found[name] = (await client.listRuns('search', {{ filter, orderBy }})).map((r) => r.run_id);
          }}
          const refused = [];
          const tries = [
            {{ filter: 'metrics.a > 1', metrics: [{{ key: 'b', op: 'lt', value: 1 }}] }},
            {{ orderBy: 'metrics.a DESC', descending: false }},
            {{ orderBy: 'metrics.a.max', orderField: 'min' }},
            {{ filter: 'metrics.a >> 1' }},
            {{ orderBy: 'val_loss DESC' }},
          ];
          for (const options of tries) {{
            try {{
              await client.listRuns('search', options);
            }} catch (err) {{
              refused.push(`${{err.name}}: ${{err.message}}`);
            }}
          }}
          const compared = await client.compareRuns({json.dumps(ids[:2])});
          const board = await client.leaderboard('search', 'val_accuracy', {{ limit: 2 }});
          const lowest = await client.leaderboard('search', 'val_accuracy', {{ mode: 'min', field: 'last' }});
          try {{
            await client.compareRuns([{json.dumps(ids[0])}]);
          }} catch (err) {{
            refused.push(err.code);
          }}
          try {{
            await client.leaderboard('search', 'val_accuracy', {{ mode: 'lowest' }});
          }} catch (err) {{
            refused.push(`${{err.name}}: ${{err.message}}`);
          }}
          client.close();
          console.log(JSON.stringify({{
            ...found, refused,
            compared: {{
              runs: compared.runs.map((r) => r.run_id),
              params: compared.params.map(({{ key, values, differs }}) => ({{ key, values, differs }})),
              metrics: compared.metrics.map(({{ key, values }}) => ({{ key, values }})),
            }},
            board: board.map((e) => [e.rank, e.run.run_id, e.value]),
            lowest: lowest.map((e) => e.run.run_id),
          }}));
        }})();
        """,
        daemon.target,
    )
    for name, (text, order) in searches.items():
        expected = [run.run_id for run in client.training.runs("search", filter=text, order_by=order)]
        assert found[name] == expected, name
    assert found["accurate"] == [ids[0], ids[1]]
    assert found["by_param"] == [ids[2], ids[0]]
    assert found["not_failed"] == [ids[1], ids[0]]
    # Params order as text: "0.1" after "0.01", descending first; then the lower loss.
    assert found["several_keys"] == [ids[0], ids[2], ids[1]]
    filtered_twice, direction_twice, field_twice, unread, bare_order, one_run, bad_mode = found["refused"]
    assert filtered_twice == (
        "RangeError: metrics is filtered twice, in filter and in metrics; give the conditions in one of them"
    )
    assert direction_twice == 'RangeError: orderBy "metrics.a DESC" gives its direction: leave out descending'
    assert field_twice == 'RangeError: orderBy "metrics.a.max" names the summary field: leave out orderField'
    assert unread == (
        "RunFilterError: column 12: expected a number after metrics.a's comparison, e.g. 0.9 or 1e-3\n"
        "  metrics.a >> 1\n             ^"
    )
    # Not read as a metric named "val_loss DESC", which no run has.
    assert bare_order.startswith(
        "RunFilterError: column 1: an order names its metric as metrics.KEY: write metrics.val_loss DESC"
    )
    assert one_run == "INVALID_ARGUMENT"
    assert bad_mode == 'RangeError: mode: "lowest" is not one of min, max'
    assert found["compared"] == {
        "runs": ids[:2],
        "params": [{"key": "lr", "values": ["0.1", "0.01"], "differs": True}],
        "metrics": [
            {"key": "val_accuracy", "values": [0.95, 0.8]},
            {"key": "val_loss", "values": [0.3, 0.1]},
        ],
    }
    assert found["board"] == [[1, ids[0], 0.95], [2, ids[1], 0.8]]
    assert found["lowest"] == [ids[2], ids[1], ids[0]]


def test_node_client_lists_jobs_by_state_experiment_and_sweep(node_ready, daemon, client, table):
    sweep = client.training.submit_sweep(
        {
            "base": {**small_spec(table), "epochs": 200},
            "strategy": "SWEEP_STRATEGY_GRID",
            "parameters": [{"path": "seed", "values": {"values": ["1", "2"]}}],
            "metric": "val_loss",
            "max_concurrent": 2,
        }
    )
    client.training.cancel_sweep(sweep.id)
    solo = client.training.submit({**small_spec(table), "experiment": "solo", "epochs": 200})
    client.training.cancel(solo.id)
    trials = [trial.job_id for trial in client.training.sweep(sweep.id).trials()]
    for job_id in [*trials, solo.id]:  # ended, so that their states hold while listed
        list(client.training.watch(job_id))
    found = node_json(
        f"""
        (async () => {{
          const client = new Client(TARGET);
          const ids = (jobs) => jobs.map((job) => job.job_id);
          const found = {{
            all: ids(await client.listJobs()),
            paged: ids(await client.listJobs({{ pageSize: 1 }})),
            sweep: ids(await client.listJobs({{ sweepId: {json.dumps(sweep.id)} }})),
            solo: ids(await client.listJobs({{ experiment: 'solo', states: ['cancelled', 'JOB_STATE_FAILED'] }})),
            running: ids(await client.listJobs({{ states: ['running'] }})),
          }};
          try {{
            await client.listJobs({{ states: ['done'] }});
          }} catch (err) {{
            found.refused = `${{err.name}}: ${{err.message}}`;
          }}
          client.close();
          console.log(JSON.stringify(found));
        }})();
        """,
        daemon.target,
    )
    expected = [job.id for job in client.training.jobs()]
    assert sorted(expected) == sorted([*trials, solo.id])
    assert found["all"] == found["paged"] == expected
    assert sorted(found["sweep"]) == sorted(trials)
    assert found["solo"] == [solo.id]
    assert found["running"] == []
    assert found["refused"].startswith(
        'RangeError: states[0]: "done" is not one of queued, running, succeeded'
    )


def test_node_client_deletes_and_restores_runs_and_experiments(node_ready, daemon, client, onnx_file):
    client.training.create_experiment("online")
    kept = client.training.create_run("online", create_experiment=True).run_id
    dropped = client.training.create_run("online", create_experiment=True).run_id
    client.models.push("affine", onnx_file)
    client.models.push("affine", onnx_file)
    client.models.push("other", onnx_file)
    found = node_json(
        f"""
        (async () => {{
          const client = new Client(TARGET);
          const ids = (runs) => runs.map((r) => r.run_id).sort();
          const deletedRun = await client.deleteRun({json.dumps(dropped)});
          const afterRunDelete = ids(await client.listRuns('online'));
          const deletedOnly = ids(await client.listRuns('online', {{ view: 'deleted_only' }}));
          const deletedExperiment = await client.deleteExperiment('online');
          let restoreRefused;
          try {{
            await client.restoreRun({json.dumps(dropped)});
          }} catch (err) {{
            restoreRefused = err.code;
          }}
          const afterExperimentDelete = (await client.listExperiments()).map((e) => e.name);
          const restoredExperiment = await client.restoreExperiment('online');
          const restoredRun = await client.restoreRun({json.dumps(dropped)});
          const afterRestore = ids(await client.listRuns('online'));
          await client.deleteVersion('affine', 1);
          const deletedVersions = await client.deleteModel('other');
          let badVersion;
          try {{
            await client.deleteVersion('affine', 1.5);
          }} catch (err) {{
            badVersion = err.name;
          }}
          let absent;
          try {{
            await client.deleteModel('absent');
          }} catch (err) {{
            absent = err.message;
          }}
          const models = (await client.listModels()).map((m) => m.name);
          client.close();
          console.log(JSON.stringify({{
            deletedRun: deletedRun.deleted, afterRunDelete, deletedOnly, deletedExperiment: deletedExperiment.deleted,
            restoreRefused, afterExperimentDelete, restoredExperiment: restoredExperiment.deleted,
            restoredRun: restoredRun.deleted, afterRestore, deletedVersions, badVersion, absent, models,
          }}));
        }})();
        """,
        daemon.target,
    )
    assert found["deletedRun"] is True and found["afterRunDelete"] == [kept]
    assert found["deletedOnly"] == [dropped]
    assert found["deletedExperiment"] is True and found["afterExperimentDelete"] == []
    assert found["restoreRefused"] == "FAILED_PRECONDITION"
    assert found["restoredExperiment"] is False and found["restoredRun"] is False
    assert found["afterRestore"] == sorted([kept, dropped])
    assert found["deletedVersions"] == 1 and found["badVersion"] == "RangeError"
    assert found["absent"].startswith("NOT_FOUND: ") and "absent" in found["absent"]
    assert found["models"] == ["affine"]
    assert [v.version for v in client.models.versions("affine")] == [2]


def test_node_client_submits_lists_and_cancels_a_sweep(node_ready, daemon, client, table):
    spec = {
        "base": {**small_spec(table), "epochs": 200},
        "strategy": "grid",
        "parameters": [{"path": "seed", "values": {"values": ["1", "2"]}}],
        "max_concurrent": 1,
        "metric": "val_loss",
        "mode": "min",
    }
    found = node_json(
        f"""
        const spec = {json.dumps(spec)};
        (async () => {{
          const client = new Client(TARGET);
          const refused = [];
          for (const bad of [{{ ...spec, strategy: 'gird' }}, {{ ...spec, max_trial: 2 }}]) {{
            try {{
              await client.submitSweep(bad);
            }} catch (err) {{
              refused.push(`${{err.name}}: ${{err.message}}`);
            }}
          }}
          const sweep = await client.submitSweep(spec);
          const got = await client.getSweep(sweep.sweep_id);
          const listed = (await client.listSweeps()).map((s) => s.sweep_id);
          const cancelled = await client.cancelSweep(sweep.sweep_id);
          let absent;
          try {{
            await client.getSweep('sweep-absent');
          }} catch (err) {{
            absent = err.code;
          }}
          client.close();
          console.log(JSON.stringify({{
            refused, id: sweep.sweep_id, strategy: got.spec.strategy, listed, state: cancelled.state,
            trials: cancelled.trials.map((t) => t.params.seed), absent,
          }}));
        }})();
        """,
        daemon.target,
    )
    assert found["refused"] == [
        'RangeError: spec.strategy: "gird" is not one of grid, random, asha, tpe, cma_es, hyperband, pbt',
        "RangeError: spec.max_trial is not a field of this message; see protos/tessera/v1/",
    ]
    assert found["strategy"] == "SWEEP_STRATEGY_GRID" and found["listed"] == [found["id"]]
    assert found["state"] == "SWEEP_STATE_CANCELLED" and found["trials"] == ["1", "2"]
    assert found["absent"] == "NOT_FOUND"
    assert [sweep.id for sweep in client.training.sweeps()] == [found["id"]]


def test_node_cli_help_for_each_command(node_ready):
    general = run_node("127.0.0.1:1", "--help")
    assert general.returncode == 0 and general.stdout.startswith("usage: tessera-node [options] COMMAND")
    assert general.stdout.endswith(
        "exit status:\n  0    done\n"
        "  1    failed here: a file could not be read, a spec file is wrong, or a followed or\n"
        "       watched job ended without succeeding\n"
        "  2    the command line is wrong: the message says what, with the command's usage\n"
        "  3    the daemon refused or failed the request, or could not be reached: the message\n"
        "       starts with the gRPC status (NOT_FOUND, INVALID_ARGUMENT, UNAVAILABLE, ...)\n"
        "  130  interrupted (Ctrl-C); a followed or watched job goes on\n"
        "  143  terminated (SIGTERM)\n"
        "  141  the output was closed early (`tessera-node ... | head`); nothing more is printed\n"
    )
    usages = {
        ("info",): "info",
        ("models", "ls"): "models ls [--prefix PREFIX]",
        ("models", "alias"): "models alias MODEL ALIAS VERSION",
        ("models", "unalias"): "models unalias MODEL ALIAS",
        ("models", "rm"): "models rm MODEL [VERSION] [--force]",
        ("models", "deploy"): (
            "models deploy MODEL ROUTE... [--shadow VERSION_OR_ALIAS] [--shadow-percent N] [--comment TEXT] "
            "[--expected-revision N]"
        ),
        ("models", "rollback"): "models rollback MODEL [--expected-revision N]",
        ("models", "deployments"): "models deployments MODEL",
        ("datasets", "ls"): "datasets ls [--prefix PREFIX]",
        ("datasets", "show"): "datasets show NAME[:VERSION]",
        ("datasets", "push"): (
            "datasets push NAME FILE [--split NAME=FRACTION]... [--seed N] [--allow-nonfinite] "
            "[--array-name NAME] [--description TEXT] [--tag KEY=VALUE]..."
        ),
        ("load",): (
            "load MODEL [--version VERSION_OR_ALIAS] [--runtime RUNTIME] [--device DEVICE] [--instances N] "
            "[--max-batch-size N] [--max-queue-delay-us N] [--max-queue-size N] [--warmup-runs N] "
            "[--intra-op-threads N] [--response-cache]"
        ),
        ("unload",): "unload MODEL [--version VERSION_OR_ALIAS]",
        ("serve-status",): "serve-status [MODEL]",
        ("jobs", "ls"): "jobs ls [--state STATE]... [--experiment NAME] [--sweep SWEEP_ID]",
        ("jobs", "submit"): "jobs submit SPEC.json [--follow]",
        ("jobs", "watch"): "jobs watch JOB_ID [--from-seq N]",
        ("runs", "ls"): (
            "runs ls [--experiment NAME] [--status STATUS]... [--filter 'FILTER'] [--order-by ORDER]"
        ),
        ("runs", "compare"): "runs compare RUN_ID RUN_ID...",
        ("runs", "metrics"): "runs metrics RUN_ID",
        ("sweeps", "ls"): "sweeps ls",
        ("sweeps", "show"): "sweeps show SWEEP_ID",
    }
    groups = ("models", "datasets", "jobs", "runs", "sweeps")
    helps = run_nodes(
        "127.0.0.1:1", [(*words, "--help") for words in [*usages, *((group,) for group in groups)]]
    )
    for usage, shown in zip(usages.values(), helps[: len(usages)], strict=True):
        assert shown.returncode == 0, shown.stderr
        assert shown.stdout.startswith(f"usage: tessera-node [options] {usage}\n"), shown.stdout
        assert usage in general.stdout
    # A group's help lists its commands, and only those: `models` lists itself too (short for `models ls`).
    for group, shown in zip(groups, helps[len(usages) :], strict=True):
        assert shown.returncode == 0, shown.stderr
        assert shown.stdout.startswith(f"usage: tessera-node [options] {group} COMMAND ...\n"), shown.stdout
        listed = [usage for words, usage in usages.items() if words[0] == group]
        if group == "models":
            listed.insert(0, "models")
        commands = [
            line[2:] for line in shown.stdout.splitlines() if line.split(" ", 3)[:3] == ["", "", group]
        ]
        assert commands == listed
    hint = "(tessera-node --help lists the commands)\n"
    wrong = {
        ("jobs", "submit"): "tessera-node: jobs submit takes 1 argument(s), got 0\n"
        "usage: tessera-node jobs submit SPEC.json [--follow]\n",
        ("runs", "ls", "--follow"): "tessera-node: --follow is not an option of runs ls\n"
        f"usage: tessera-node {usages['runs', 'ls']}\n",
        ("runs", "ls", "online", "--experiment", "online"): "tessera-node: the experiment is given twice: "
        f"give it as --experiment NAME or as NAME alone\nusage: tessera-node {usages['runs', 'ls']}\n",
        (
            "jobs",
            "start",
        ): 'tessera-node: unknown command "jobs start"\n(tessera-node jobs --help lists its commands)\n',
        ("jobs",): "tessera-node: jobs needs a command\n(tessera-node jobs --help lists its commands)\n",
        ("start",): f'tessera-node: unknown command "start"\n{hint}',
        ("info", "--verbose"): f"tessera-node: unknown option --verbose\n{hint}",
        (
            "jobs",
            "ls",
            "--state",
            "done",
        ): 'tessera-node: --state: "done" is not one of queued, running, succeeded, '
        f"failed, cancelled, interrupted\nusage: tessera-node {usages['jobs', 'ls']}\n",
        (
            "runs",
            "ls",
            "--filter",
            "metrics.a >> 1",
        ): "tessera-node: --filter: column 12: expected a number after "
        "metrics.a's comparison, e.g. 0.9 or 1e-3\n  metrics.a >> 1\n             ^\n"
        f"usage: tessera-node {usages['runs', 'ls']}\n",
        (
            "runs",
            "ls",
            "--order-by",
            "metrics.a sideways",
        ): "tessera-node: --order-by: column 11: expected ASC or "
        "DESC, a comma and the next key, or the end of the order\n  metrics.a sideways\n            ^\n"
        f"usage: tessera-node {usages['runs', 'ls']}\n",
        (
            "runs",
            "ls",
            "--status",
            "failed",
            "--filter",
            "attributes.status = 'failed'",
        ): "tessera-node: --filter "
        "compares attributes.status and --status too; give those conditions in one of them\n"
        f"usage: tessera-node {usages['runs', 'ls']}\n",
    }
    *refusals, not_json = run_nodes("127.0.0.1:1", [*wrong, ("predict", "affine", "{")])
    for (words, message), failed in zip(wrong.items(), refusals, strict=True):
        assert (failed.returncode, failed.stderr) == (EXIT_USAGE, message), words
    assert not_json.returncode == EXIT_USAGE
    assert not_json.stderr.startswith("tessera-node: INPUTS_JSON is not JSON: "), not_json.stderr


def test_node_cli_submits_follows_and_watches_a_job(node_ready, daemon, client, table, tmp_path):
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps(small_spec(table)))
    followed = run_node(daemon.target, "jobs", "submit", str(spec), "--follow")
    assert followed.returncode == 0, followed.stderr
    job, *events = map(json.loads, followed.stdout.splitlines())
    assert job["state"] == "JOB_STATE_QUEUED" and job["spec"]["task"] == "TASK_CLASSIFICATION"
    assert [event["seq"] for event in events] == list(range(1, len(events) + 1))
    assert events[-1]["state"]["state"] == "JOB_STATE_SUCCEEDED"
    watched = run_node(daemon.target, "jobs", "watch", job["job_id"], "--from-seq", "2")
    assert watched.returncode == 0, watched.stderr
    assert watched.stdout.splitlines() == followed.stdout.splitlines()[2:]

    # Long enough to be cancelled before it ends.
    long_spec = tmp_path / "long.json"
    long_spec.write_text(json.dumps({**small_spec(table), "epochs": 200}))
    submitted = run_node(daemon.target, "jobs", "submit", str(long_spec))
    assert submitted.returncode == 0, submitted.stderr
    queued = json.loads(submitted.stdout)
    client.training.cancel(queued["job_id"])
    cancelled = run_node(daemon.target, "jobs", "watch", queued["job_id"])
    assert cancelled.returncode == EXIT_FAILED
    assert cancelled.stderr == f"tessera-node: job {queued['job_id']} ended JOB_STATE_CANCELLED\n"
    assert json.loads(cancelled.stdout.splitlines()[-1])["state"]["state"] == "JOB_STATE_CANCELLED"


# What the Python CLI exits with when Ctrl-C or SIGTERM stops it, or its output's reader is gone.
EXIT_INTERRUPTED, EXIT_OUTPUT_CLOSED, EXIT_TERMINATED = 130, 141, 143


@pytest.mark.parametrize(
    ("signum", "status", "said"),
    [
        (
            signal.SIGINT,
            EXIT_INTERRUPTED,
            "tessera-node: stopped following job {job}, which goes on: `tessera-node jobs watch {job}` "
            "follows it again, `tessera jobs cancel {job}` stops it\n",
        ),
        (signal.SIGTERM, EXIT_TERMINATED, "tessera-node: terminated\n"),
    ],
)
def test_node_cli_stopped_by_a_signal_says_so_in_one_line(
    node_ready, daemon, client, table, signum, status, said
):
    """A death by the signal, with no word, as the Python CLI's status and line; the job goes on."""
    job = client.training.submit({**small_spec(table), "epochs": 200})
    with subprocess.Popen(
        ["node", str(NODE_CLIENT / "cli.js"), "--target", daemon.target, "jobs", "watch", job.id],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as watch:
        assert watch.stdout is not None
        assert json.loads(watch.stdout.readline())["seq"] == 1
        watch.send_signal(signum)
        _, err = watch.communicate(timeout=60)
    assert (watch.returncode, err) == (status, said.format(job=job.id))
    assert job.refresh().state in ("queued", "running")
    job.cancel()


def closed_pipe() -> int:
    """The write end of a pipe whose reader is gone, as `| head` leaves it once head has read."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    return write_end


def test_node_cli_output_closed_early_ends_quietly_with_sigpipes_status(node_ready, daemon, client, table):
    """Node threw EPIPE with its stack trace and exited 1."""
    job = client.training.submit({**small_spec(table), "epochs": 200})
    for args in (("runs", "ls"), ("jobs", "watch", job.id)):
        write_end = closed_pipe()
        try:
            done = subprocess.run(
                ["node", str(NODE_CLIENT / "cli.js"), "--target", daemon.target, *args],
                stdout=write_end,
                stderr=subprocess.PIPE,
                text=True,
                timeout=60,
                check=False,
            )
        finally:
            os.close(write_end)
        assert (done.returncode, done.stderr) == (EXIT_OUTPUT_CLOSED, ""), args
    with suppress(FailedPrecondition):  # it may have ended already, under load
        job.cancel()


def test_node_cli_job_errors_exit_non_zero_and_say_what_to_fix(node_ready, daemon, table, tmp_path):
    not_json = tmp_path / "spec.toml"
    not_json.write_text('experiment = "node"\n')
    misspelt = tmp_path / "misspelt.json"
    misspelt.write_text(json.dumps({**small_spec(table), "task": "regresion"}))
    absent_dataset = tmp_path / "absent.json"
    absent_dataset.write_text(json.dumps({**small_spec(table), "data": {"dataset": {"name": "absent"}}}))
    outcomes = {
        name: run_node(daemon.target, *args)
        for name, args in {
            "not_json": ("jobs", "submit", str(not_json)),
            "missing": ("jobs", "submit", str(tmp_path / "missing.json")),
            "misspelt": ("jobs", "submit", str(misspelt)),
            "absent_dataset": ("jobs", "submit", str(absent_dataset)),
            "absent_job": ("jobs", "watch", "job-absent"),
            "bad_seq": ("jobs", "watch", "job-absent", "--from-seq", "1.5"),
        }.items()
    }
    assert {name: done.returncode for name, done in outcomes.items()} == {
        "not_json": EXIT_FAILED,
        "missing": EXIT_FAILED,
        "misspelt": EXIT_FAILED,
        "absent_dataset": EXIT_DAEMON,
        "absent_job": EXIT_DAEMON,
        "bad_seq": EXIT_USAGE,
    }
    assert all(done.stdout == "" for done in outcomes.values())
    stderr = {name: done.stderr for name, done in outcomes.items()}
    assert stderr["not_json"].startswith(f"tessera-node: {not_json} is not JSON: ")
    assert stderr["missing"].startswith(f"tessera-node: cannot read {tmp_path / 'missing.json'}: ENOENT")
    assert stderr["misspelt"] == (
        'tessera-node: spec.task: "regresion" is not one of classification, regression\n'
    )
    assert (
        stderr["absent_dataset"].startswith("tessera-node: NOT_FOUND: ")
        and "absent" in stderr["absent_dataset"]
    )
    assert (
        stderr["absent_job"].startswith("tessera-node: NOT_FOUND: ") and "job-absent" in stderr["absent_job"]
    )
    assert stderr["bad_seq"].startswith("tessera-node: --from-seq must be a whole number")


def test_node_cli_lists_runs_and_sweeps(node_ready, daemon, client, table):
    client.training.create_experiment("online")
    running = client.training.create_run("online", create_experiment=True).run_id
    ended = client.training.create_run("online", create_experiment=True).run_id
    client.training.update_run(ended, status="succeeded")
    client.training.create_experiment("other")
    elsewhere = client.training.create_run("other", create_experiment=True).run_id
    sweep = client.training.submit_sweep(
        {
            "base": {**small_spec(table), "epochs": 200},
            "strategy": "SWEEP_STRATEGY_GRID",
            "parameters": [{"path": "seed", "values": {"values": ["1", "2"]}}],
            "metric": "val_loss",
        }
    )
    client.training.cancel_sweep(sweep.id)

    def listed(*args: str) -> Any:
        done = run_node(daemon.target, *args)
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)

    def tracked(*args: str) -> list[str]:
        """The runs listed, less the sweep's trials' (experiment "node")."""
        return [run["run_id"] for run in listed(*args) if run["experiment"] != "node"]

    assert tracked("runs", "ls") == [elsewhere, ended, running]
    assert tracked("runs", "ls", "--experiment", "online") == [ended, running]
    # The experiment alone is short for --experiment, as it was before that flag.
    assert tracked("runs", "ls", "online") == [ended, running]
    assert tracked("runs", "ls", "--experiment", "online", "--status", "succeeded") == [ended]
    assert tracked("runs", "ls", "--status", "running", "--status", "failed") == [elsewhere, running]
    assert tracked("runs", "ls", "--filter", "attributes.status = 'FINISHED'") == [ended]
    assert tracked("runs", "ls", "online", "--filter", "attributes.status != 'succeeded'") == [running]
    jobs = [job.id for job in client.training.jobs()]
    assert [job["job_id"] for job in listed("jobs", "ls")] == jobs != []
    assert [job["job_id"] for job in listed("jobs", "ls", "--sweep", sweep.id)] == jobs
    assert listed("jobs", "ls", "--experiment", "online") == []
    assert [s["sweep_id"] for s in listed("sweeps", "ls")] == [sweep.id]
    shown = listed("sweeps", "show", sweep.id)
    assert shown["state"] == "SWEEP_STATE_CANCELLED"
    assert [trial["params"]["seed"] for trial in shown["trials"]] == ["1", "2"]
    absent = run_node(daemon.target, "sweeps", "show", "sweep-absent")
    assert absent.returncode == EXIT_DAEMON and absent.stderr.startswith("tessera-node: NOT_FOUND: ")
    bad_status = run_node(daemon.target, "runs", "ls", "--status", "finished")
    assert bad_status.returncode == EXIT_USAGE
    assert bad_status.stderr.startswith('tessera-node: --status: "finished" is not one of running, succeeded')


def test_node_client_artifact_upload_errors(node_ready, daemon, client, tmp_path):
    """A refused upload fails with the daemon's status while its file is still being sent; a file
    that cannot be read, or a chunk size below 1, fails before anything is sent."""
    client.training.create_experiment("online")
    run_id = client.training.create_run("online", create_experiment=True).run_id
    work = tmp_path / "node"
    work.mkdir()
    (work / "big.bin").write_bytes(os.urandom(8 << 20))
    outcomes = node_json(
        f"""
        const runId = {json.dumps(run_id)};
        const dir = {json.dumps(str(work))};
        (async () => {{
          const client = new Client(TARGET);
          const attempts = {{
            absentRun: () => client.uploadArtifact('run-absent', `${{dir}}/big.bin`, {{ chunkSize: 65536 }}),
            badPath: () => client.uploadArtifact(runId, `${{dir}}/big.bin`, {{ artifactPath: '../up' }}),
            missingFile: () => client.uploadArtifact(runId, `${{dir}}/missing.bin`),
            chunkSize: () => client.uploadArtifact(runId, `${{dir}}/big.bin`, {{ chunkSize: 0 }}),
          }};
          const outcomes = {{}};
          for (const [name, attempt] of Object.entries(attempts)) {{
            try {{
              await attempt();
              outcomes[name] = 'stored';
            }} catch (err) {{
              outcomes[name] = `${{err.name}} ${{err.code}}: ${{err.message}}`;
            }}
          }}
          client.close();
          console.log(JSON.stringify(outcomes));
        }})();
        """,
        daemon.target,
    )
    assert (
        outcomes["absentRun"].startswith("TesseraError NOT_FOUND: ") and "run-absent" in outcomes["absentRun"]
    )
    assert (
        outcomes["badPath"].startswith("TesseraError INVALID_ARGUMENT: ") and "../up" in outcomes["badPath"]
    )
    assert outcomes["missingFile"].startswith("Error ENOENT: ")
    assert outcomes["chunkSize"].startswith("RangeError undefined: chunkSize must be a whole number")
    assert list(client.training.list_artifacts(run_id)) == []


def test_node_client_metric_stream_failure_is_kept_when_closing_the_steps_throws(node_ready, daemon, client):
    """The daemon refused a batch, and the generator's `finally` threw as the stream closed it:
    its error replaced the TesseraError, with the points stored and up to which step."""
    run_id = client.training.create_run("node-streams", create_experiment=True).run_id
    found = node_json(
        f"""
        (async () => {{
          const client = new Client(TARGET);
          function* steps() {{
            try {{
              for (let step = 0; ; step += 1) yield [step, step === 3 ? {{ '': 1 }} : {{ loss: step }}];
            }} finally {{
              throw new Error('closing the steps failed');
            }}
          }}
          const err = await client.logMetricsStream({json.dumps(run_id)}, steps(), {{ batchPoints: 2 }}).catch(
            (error) => error,
          );
          client.close();
          console.log(JSON.stringify([err.name, err.code, err.storedPoints, err.lastStoredStep]));
        }})();
        """,
        daemon.target,
    )
    assert found == ["TesseraError", "INVALID_ARGUMENT", 2, 1]
