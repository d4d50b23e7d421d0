"""Tracking from a user's own training loop, as an MLflow user writes it: a run as a context
manager, reopened runs, points logged again at a step, batches and background logging, and
versions registered from a run."""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
import re
import subprocess
import sys
import textwrap
import warnings
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
import yaml

import tessera
import tessera.aio
from tessera.v1 import registry_pb2, registry_pb2_grpc, training_pb2
from tests.conftest import InProcessDaemon, daemon_settings
from tests.integration.sdk.affine import affine_onnx
from tests.readme_blocks import code_blocks

CLIENT_README = Path(__file__).resolve().parents[3] / "clients" / "python" / "README.md"


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[InProcessDaemon]:
    running = InProcessDaemon(daemon_settings(tmp_path_factory.mktemp("run-logging") / "data")).start()
    yield running
    running.stop()


def _status(client: tessera.Client, run_id: str) -> str:
    return str(tessera.RunStatus.from_proto(client.training.run(run_id).status))


def test_a_run_as_a_context_manager_ends_as_its_block_does(client):
    with client.training.start_run(
        "ctx", name="ok", params={"lr": 0.1}, tags={"team": "a"}, create_experiment=True
    ) as run:
        assert isinstance(run, tessera.Run) and run.status == tessera.RunStatus.RUNNING
        run.log_params({"seed": 1})
        run.log_param("epochs", 3)  # one at a time, as MLflow's log_param and set_tag
        assert run.log_metrics({"loss": 1.0}, 0) == 1
        assert run.log_metric("loss", 0.5, 1) is None  # not a count shown as `Out: 1`
        run.set_tags({"stage": "train"})
        run.set_tag("owner", "nb")
    assert run.status == tessera.RunStatus.SUCCEEDED and run.end_time.seconds > 0
    stored = client.training.run(run.id)
    assert dict(stored.params) == {"lr": "0.1", "seed": "1", "epochs": "3"}
    assert stored.tags["stage"] == "train" and stored.tags["owner"] == "nb"
    assert stored.metrics["loss"] == 0.5

    with (
        pytest.raises(ZeroDivisionError),
        client.training.start_run("ctx", name="broken", create_experiment=True) as broken,
    ):
        _ = 1 / 0
    assert _status(client, broken.id) == "failed"

    with (
        pytest.raises(KeyboardInterrupt),
        client.training.start_run("ctx", name="stopped", create_experiment=True) as stopped,
    ):
        raise KeyboardInterrupt
    assert _status(client, stopped.id) == "cancelled"


def test_an_ended_run_is_reopened_running_and_ended_again(client):
    run = client.training.create_run("reopen", create_experiment=True)
    client.training.update_run(run.id, "finished")  # MLflow's word for succeeded
    ended = client.training.run(run.id)
    assert ended.status == tessera.RunStatus.SUCCEEDED and ended.end_time.seconds > 0
    with client.training.start_run(run_id=run.id) as again:
        assert again.status == tessera.RunStatus.RUNNING
        assert not again.info.HasField("end_time")
        again.log_metrics({"test_acc": 0.9}, 10)
    assert _status(client, run.id) == "succeeded"
    # Once reopened, a run can end otherwise than it first did.
    client.training.update_run(run.id, "running")
    assert client.training.update_run(run.id, "killed").status == tessera.RunStatus.CANCELLED
    assert [r.id for r in client.training.runs("reopen", statuses=["killed"])] == [run.id]
    with pytest.raises(tessera.FailedPrecondition, match=r"already ended \(cancelled\); reopen it"):
        client.training.update_run(run.id, "failed")
    with pytest.raises(tessera.InvalidArgument, match="or reopened as RUNNING, not INTERRUPTED"):
        client.training.update_run(run.id, "interrupted")
    with pytest.raises(tessera.NotFound):
        client.training.start_run(run_id="run-nope")
    with pytest.raises(ValueError, match="reopens a run as it is"):
        client.training.start_run("reopen", run_id=run.id)


def test_a_run_name_taken_says_how_to_reopen_that_run(client):
    """A notebook cell with start_run("exp", name="loop") run again got AlreadyExists with no way
    on but another name; names stay unique, and the message names the run to reopen."""
    with client.training.start_run("again", name="loop", create_experiment=True) as first:
        first.log_metrics({"loss": 1.0}, 1)
    with pytest.raises(tessera.AlreadyExists) as taken:
        client.training.start_run("again", name="loop")
    assert str(taken.value.daemon_message) == (
        f"experiment 'again' already has a run named 'loop' ({first.id}); to log to it again, reopen "
        f"it: start_run(run_id={first.id!r}) in the Python SDK (UpdateRun to RUNNING); or pick "
        "another name or leave it empty to generate one"
    )
    with client.training.start_run(run_id=first.id) as again:
        again.log_metrics({"loss": 0.5}, 2)
    assert [r.id for r in client.training.runs("again")] == [first.id]


def test_a_value_logged_again_at_a_step_replaces_the_first_and_warns_once(client):
    run = client.training.create_run("replace", create_experiment=True)
    client.training.log_metrics(run.id, {"loss": 1.0, "acc": 0.5}, 5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert client.training.log_metrics(run.id, {"loss": 1.0, "acc": 0.5}, 5) == 2  # the same: nothing
    with pytest.warns(tessera.MetricPointsReplaced, match="2 of the 2 point") as caught:
        assert client.training.log_metrics(run.id, {"loss": 123.0, "acc": 0.7}, 5) == 2
    assert len(caught) == 1 and caught[0].filename == __file__
    history = client.training.metric_history(run.id, "loss")
    assert list(history.steps) == [5] and list(history.values) == [123.0]
    with pytest.warns(tessera.MetricPointsReplaced, match="1 of the 2 point"):
        client.training.log_batch(run.id, [("loss", 1.0, 6), ("loss", 2.0, 6)])
    # The same value with another time (a resend taking the daemon's clock) keeps the first time:
    # it rewrote the time, counting nothing replaced.
    first = 1_700_000_000_000
    client.training.log_batch(run.id, [("acc", 0.7, 9, first), ("acc", 0.7, 9, first + 5000)])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        client.training.log_batch(run.id, [("acc", 0.7, 9, first + 9000), ("acc", 0.7, 9)])
    stored = client.training.metric_history(run.id, "acc").info.points[-1]
    assert (stored.step, stored.time.seconds) == (9, first // 1000)
    with pytest.warns(tessera.MetricPointsReplaced, match="1 of the 3 point"):
        client.training.log_metrics_stream(
            run.id, [(5, {"loss": 7.0}), (6, {"loss": 2.0}), (7, {"loss": 1.0})]
        )


def test_log_batch_stores_points_of_many_keys_and_steps_in_one_call(client):
    run = client.training.create_run("batch", create_experiment=True)
    points = [tessera.MetricPoint("loss", 1.0 / (s + 1), s) for s in range(50)]
    points += [("acc", 0.5, 49, 1_700_000_000_000)]
    assert client.training.log_batch(run.id, points) == 51
    assert len(client.training.metric_history(run.id, "loss")) == 50
    acc = client.training.metric_history(run.id, "acc").info.points[0]
    assert (acc.step, acc.time.seconds) == (49, 1_700_000_000)
    with pytest.raises(tessera.InvalidArgument, match=r"step must be >= 0"):
        client.training.log_batch(run.id, [("loss", 0.0, 99), ("loss", 1.0, -1)])
    assert client.training.metric_history(run.id, "loss").steps[-1] == 49  # all or none
    with pytest.raises(ValueError, match="at most 10000 points"):
        client.training.log_batch(run.id, [("x", 1.0, s) for s in range(10_001)])


def test_a_metric_without_a_step_goes_after_its_keys_last_and_nan_and_inf_are_kept(client):
    """As an MLflow notebook logs: log_metric without a step keeps every value (MLflow's step 0
    would make each replace the last here), in the foreground or the background; a loss that
    diverged is stored as it came."""
    with client.training.start_run("no-steps", create_experiment=True) as run:
        run.log_metric("loss", 0.5)
        run.log_metric("loss", float("nan"))
        run.log_metrics({"loss": float("inf"), "acc": 0.25})
        run.log_metric("loss", 9.0, 10)
        assert client.training.log_metrics(run.id, {"loss": -float("inf")}) == 1
        run.log_metric("loss", 0.125, synchronous=False)
        run.log_metric("acc", 0.75, synchronous=False)
        run.flush()
    loss = client.training.metric_history(run.id, "loss")
    assert list(loss.steps) == [0, 1, 2, 10, 11, 12]
    values = list(loss.values)
    assert values[0] == 0.5 and math.isnan(values[1]) and values[2:] == [math.inf, 9.0, -math.inf, 0.125]
    assert list(client.training.metric_history(run.id, "acc").steps) == [0, 1]
    summary = client.training.run(run.id).metrics.summary("loss")
    assert (summary.min, summary.max, summary.last) == (-math.inf, math.inf, 0.125)
    with pytest.raises(tessera.InvalidArgument, match=r"points\[0\]: step is 3 and next_step is set"):
        client.training.log_batch(run.id, [training_pb2.MetricPoint(key="x", step=3, next_step=True)])


def test_background_logging_stores_every_point_by_flush_and_run_end(client):
    with client.training.start_run("background", create_experiment=True) as run:
        for step in range(2500):
            run.log_metrics({"loss": 1.0 / (step + 1)}, step, synchronous=False)
        run.flush()
        assert client.training.run(run.id).metrics.summary("loss").count == 2500
        for step in range(2500, 2600):
            run.log_metric("loss", 0.0, step, synchronous=False)
    assert client.training.run(run.id).metrics.summary("loss").count == 2600
    assert run.status == tessera.RunStatus.SUCCEEDED


def test_a_background_batch_that_fails_is_raised_on_the_next_call_and_kept(client):
    run = client.training.create_run("background-errors", create_experiment=True)
    logger = client.training.metric_logger(run.id, flush_points=10, flush_ms=60_000)
    with pytest.raises(ValueError, match="value must be a number"):
        logger.log({"loss": "high"}, 0)
    client.training.delete_run(run.id)
    logger.log({"loss": 1.0}, 0)
    with pytest.raises(tessera.FailedPrecondition, match="is deleted"):
        logger.flush()
    client.training.restore_run(run.id)
    logger.flush()  # the failed batch, kept, is sent again
    assert client.training.run(run.id).metrics["loss"] == 1.0
    client.training.delete_run(run.id)
    logger.log({"loss": 2.0}, 1)
    with pytest.raises(tessera.FailedPrecondition) as info:
        logger.close()
    assert f"1 metric point(s) of run {run.id} are not stored (loss at step 1)" in info.value.__notes__
    with pytest.raises(RuntimeError, match="closed"):
        logger.log({"loss": 3.0}, 2)


def _failed_unseen(logger: tessera.MetricLogger) -> None:
    """Wait until the logger's thread has failed to send a batch that no call has raised yet."""
    with logger._changed:
        assert logger._changed.wait_for(lambda: logger._error is not None, timeout=60)


def test_close_sends_again_a_batch_that_failed_before_any_call_raised_it(client):
    # As after a daemon briefly unavailable past the client's retries: close raised the stale
    # error without sending again, and the points were left unstored (a run ended FAILED).
    run = client.training.create_run("background-stale", create_experiment=True)
    client.training.delete_run(run.id)
    logger = client.training.metric_logger(run.id, flush_points=1)
    logger.log({"loss": 1.0}, 0)
    _failed_unseen(logger)
    client.training.restore_run(run.id)
    logger.close()
    assert client.training.run(run.id).metrics["loss"] == 1.0
    # Where the second try fails too, the note says which points are lost, and the first failure.
    client.training.delete_run(run.id)
    failing = client.training.metric_logger(run.id, flush_points=2)
    failing.log_batch([("loss", 2.0, 3), ("acc", 0.5, 3), ("loss", 3.0, 4), ("loss", 4.0, 7)])
    _failed_unseen(failing)
    with pytest.raises(tessera.FailedPrecondition, match="is deleted") as info:
        failing.close()
    lost, earlier = info.value.__notes__
    assert (
        lost
        == f"4 metric point(s) of run {run.id} are not stored (loss at 3 steps from 3 to 7, acc at step 3)"
    )
    assert earlier.startswith("before, a batch had failed: FailedPrecondition: ")


def test_points_queued_when_a_script_exits_without_closing_are_stored(daemon, client, tmp_path: Path):
    # The sending thread is a daemon thread: at exit the points still queued were dropped unsaid.
    run = client.training.create_run("background-exit", create_experiment=True)
    gone = client.training.create_run("background-exit", create_experiment=True)
    client.training.delete_run(gone.id)
    script = tmp_path / "train.py"
    script.write_text(
        textwrap.dedent(f"""
            import tessera
            client = tessera.Client({daemon.target!r})
            run = client.training.start_run(run_id={run.id!r})
            for step in range(5):
                run.log_metrics({{"loss": 1.0 / (step + 1)}}, step, synchronous=False)
            client.training.metric_logger({gone.id!r}).log({{"loss": 1.0}}, 0)
        """),
        encoding="utf-8",
    )
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert client.training.run(run.id).metrics.summary("loss").count == 5
    assert (
        f"tessera: at exit, 1 metric point(s) of run {gone.id} are not stored (loss at step 0) ("
        in done.stderr
    )
    assert "is deleted" in done.stderr


def _script(path: Path, target: str, body: str) -> Path:
    path.write_text(
        f"import tessera\nclient = tessera.Client({target!r})\n" + textwrap.dedent(body), encoding="utf-8"
    )
    return path


def test_runs_a_script_left_open_end_at_exit_as_the_script_did(daemon, client, tmp_path: Path):
    # They stayed RUNNING for ever; MLflow ends its active run at exit.
    # How a KeyboardInterrupt or an interactive session ends them: tests/unit/sdk/test_sdk_pieces.py.
    endings = {"ok": "", "raised": "raise ValueError('boom')"}
    scripts = {
        ending: _script(
            tmp_path / f"{ending}.py",
            daemon.target,
            f"""
            run = client.training.start_run("exit-end", name="{ending}", create_experiment=True)
            run.log_metrics({{"loss": 0.5}}, 0, synchronous=False)
            client.training.start_run("exit-end", name="{ending}-dropped")
            by_id = client.training.start_run("exit-end", name="{ending}-by-id")
            client.training.update_run(by_id.id, "failed")
            with client.training.start_run("exit-end", name="{ending}-block"):
                pass
            with tessera.Client(client.target) as closing:
                closing.training.start_run("exit-end", name="{ending}-closed")
            {statement}
            """,
        )
        for ending, statement in endings.items()
    }
    running = {
        ending: subprocess.Popen([sys.executable, str(path)], stderr=subprocess.PIPE, text=True)
        for ending, path in scripts.items()
    }
    errors = {ending: process.communicate(timeout=120)[1] for ending, process in running.items()}
    assert running["ok"].returncode == 0 and running["raised"].returncode == 1
    for ending, status in (("ok", "succeeded"), ("raised", "failed")):
        assert "tessera: at exit" not in errors[ending], errors[ending]
        runs = {
            r.name: r
            for r in client.training.runs("exit-end", filter=f"attributes.run_name LIKE '{ending}%'")
        }
        assert {name: str(tessera.RunStatus.from_proto(r.status)) for name, r in runs.items()} == {
            ending: status,
            f"{ending}-dropped": status,
            f"{ending}-by-id": "failed",
            f"{ending}-block": "succeeded",
            f"{ending}-closed": "succeeded",  # ended as its client closed, before the exit
        }
        assert runs[ending].metrics["loss"] == 0.5


def test_a_forked_child_leaves_the_parents_runs_running(daemon, client, tmp_path: Path):
    # The child's exit hook ended the runs it had copied from the parent, which went on logging.
    script = _script(
        tmp_path / "fork.py",
        daemon.target,
        """
        import os
        run = client.training.start_run("fork", create_experiment=True)
        child = os.fork()
        if child == 0:
            raise SystemExit
        os.waitpid(child, 0)
        print(run.id, client.training.run(run.id).status, flush=True)
        run.log_metrics({"loss": 0.5}, 0)
        """,
    )
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    run_id, status_after_child = done.stdout.split()
    assert str(tessera.RunStatus.from_proto(int(status_after_child))) == "running"
    assert _status(client, run_id) == "succeeded"


def test_closing_a_client_ends_its_runs_as_the_code_around_it_did(daemon, client):
    # close() in a `finally` ended a crashing run SUCCEEDED; sys.exit(0) in a block ended it FAILED.
    closing = tessera.Client(daemon.target)
    with pytest.raises(RuntimeError):
        try:
            crashing = closing.training.start_run("closing", create_experiment=True)
            raise RuntimeError("crash")
        finally:
            closing.close()
    assert _status(client, crashing.id) == "failed"

    for code, status in ((None, "succeeded"), (0, "succeeded"), (1, "failed"), ("bad", "failed")):
        with pytest.raises(SystemExit), client.training.start_run("closing") as exiting:
            sys.exit(code)
        assert _status(client, exiting.id) == status, code
        with pytest.raises(SystemExit), tessera.Client(daemon.target) as closed:
            left = closed.training.start_run("closing")
            sys.exit(code)
        assert _status(client, left.id) == status, code


def test_closing_a_client_stores_its_loggers_points_and_forgets_runs_ended_by_id(daemon, client):
    run = client.training.create_run("closing-loggers", create_experiment=True)
    closing = tessera.Client(daemon.target)
    closing.training.metric_logger(run.id).log({"loss": 1.0}, 0)
    closing.close()
    assert client.training.run(run.id).metrics.summary("loss").count == 1

    # A run ended by id was ended again at exit, and kept till then.
    by_id = client.training.start_run("closing-loggers")
    client.training.update_run(by_id.id, "failed")
    assert by_id.id not in tessera.run_logging._open_runs


def test_a_run_left_open_does_not_hold_the_exit_when_the_daemon_is_gone(tmp_path: Path):
    gone = InProcessDaemon(daemon_settings(tmp_path / "data")).start()
    script = _script(
        tmp_path / "train.py",
        gone.target,
        """
        run = client.training.start_run("exit-gone", create_experiment=True)
        once = tessera.RetryPolicy(attempts=1)
        asked = tessera.Client(client.target, retry=once).training.start_run("exit-gone")
        closing = tessera.Client(client.target, retry=once)
        closed = closing.training.start_run("exit-gone")
        print(run.id, asked.id, closed.id, flush=True)
        input()
        try:
            asked.end("failed")
        except tessera.Unavailable:
            pass
        closing.close()
        """,
    )
    process = subprocess.Popen(
        [sys.executable, str(script)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        run_id, asked_id, closed_id = process.stdout.readline().split()
    finally:
        gone.stop()
    _, err = process.communicate("\n", timeout=60)
    assert process.returncode == 0, err
    assert (
        f"tessera: at exit, run {run_id} could not be ended SUCCEEDED and stays RUNNING (Unavailable: " in err
    )
    # A run whose end() failed is ended as it asked; one its client's close could not end is said once.
    assert f"tessera: at exit, run {asked_id} could not be ended FAILED and stays RUNNING" in err
    assert err.count(f"run {closed_id} could not be ended") == 1
    assert f"tessera: as its client closed, run {closed_id} could not be ended SUCCEEDED" in err
    assert err.rstrip().endswith("end it with client.training.update_run")


class _Figure:
    """Any object with savefig is a figure to log_figure, as MLflow's takes matplotlib's and plotly's."""

    def savefig(self, path: Path, **kwargs: object) -> None:
        Path(path).write_bytes(b"IMG " + json.dumps(kwargs).encode())


def test_dicts_texts_and_figures_are_stored_as_run_artifacts(daemon, client, tmp_path: Path, monkeypatch):
    config = {"lr": 0.01, "layers": [64, 32], "name": "réseau"}
    with client.training.start_run("documents", create_experiment=True) as run:
        stored = run.log_dict(config, "config/train.json")
        run.log_dict(config, "config/train.YAML")
        run.log_text("accuracy 0.9\n", "notes/summary.md")
        run.log_figure(_Figure(), "plots/loss.png", save_kwargs={"dpi": 72})

    async def from_asyncio() -> None:
        async with tessera.aio.Client(daemon.target, timeout=30) as aio:
            await aio.training.log_text(run.id, "", "notes/empty.txt")
            await aio.training.log_figure(run.id, _Figure(), "plots/aio.svg")

    asyncio.run(from_asyncio())

    def read(path: str) -> bytes:
        client.training.download_artifact(run.id, path, tmp_path / path)
        return (tmp_path / path).read_bytes()

    assert read("config/train.json").decode() == json.dumps(config, indent=2, ensure_ascii=False)
    assert stored.path == "config/train.json" and stored.size_bytes == len(read("config/train.json"))
    assert yaml.safe_load(read("config/train.YAML")) == config
    assert read("notes/summary.md") == b"accuracy 0.9\n" and read("notes/empty.txt") == b""
    assert read("plots/loss.png") == b'IMG {"dpi": 72}' and read("plots/aio.svg") == b"IMG {}"

    # Refused before anything is sent, or by the daemon, storing nothing.
    with pytest.raises(TypeError, match=r"log_figure takes a figure with a savefig method .*, not dict"):
        client.training.log_figure(run.id, {}, "plots/bad.png")
    with pytest.raises(TypeError, match="not JSON serializable"):
        client.training.log_dict(run.id, {"x": object()}, "bad.json")
    with pytest.raises(TypeError, match="log_text takes a str, not bytes"):
        client.training.log_text(run.id, b"bytes", "bad.txt")
    with pytest.raises(tessera.InvalidArgument, match="path"):
        client.training.log_text(run.id, "x", "../bad.txt")
    with monkeypatch.context() as without_yaml:
        without_yaml.setitem(sys.modules, "yaml", None)
        with pytest.raises(
            ImportError, match=r"writing 'bad\.yml' as YAML needs PyYAML .* or give the file a \.json name"
        ):
            client.training.log_dict(run.id, config, "bad.yml")
    assert sorted(a.path for a in client.training.list_artifacts(run.id)) == [
        "config/train.YAML",
        "config/train.json",
        "notes/empty.txt",
        "notes/summary.md",
        "plots/aio.svg",
        "plots/loss.png",
    ]


def test_a_matplotlib_figure_is_stored_as_the_image_its_name_says(client, tmp_path: Path):
    figure_module = pytest.importorskip("matplotlib.figure")
    figure = figure_module.Figure()
    figure.add_subplot().plot([0, 1, 2], [1.0, 0.5, 0.25])
    run = client.training.create_run("figures", create_experiment=True)
    client.training.log_figure(run.id, figure, "loss.png")
    # Without an extension matplotlib wrote loss.png, and log_figure found no file "loss".
    with pytest.raises(ValueError, match=r"'plots/loss' has no extension.* such as \.png, \.svg or \.pdf"):
        client.training.log_figure(run.id, figure, "plots/loss")
    client.training.download_artifact(run.id, "loss.png", tmp_path)
    assert (tmp_path / "loss.png").read_bytes().startswith(b"\x89PNG\r\n")


def test_a_version_pushed_from_a_run_keeps_it_in_its_lineage(daemon, client, tmp_path: Path):
    onnx = affine_onnx(tmp_path / "mlp1.onnx")
    with client.training.start_run("pushed", name="mlp-run", create_experiment=True) as run:
        run.log_artifact(onnx)
    version = client.models.push("pushed", onnx, run_id=run.id)
    assert (version.lineage.run_id, version.lineage.experiment) == (run.id, "pushed")
    # MLflow's runs:/ form: the run's artifact, registered with the run in its lineage.
    from_run = client.models.push("pushed", f"runs:/{run.id}/mlp1.onnx")
    assert (from_run.lineage.run_id, from_run.sha256) == (run.id, version.sha256)
    with pytest.raises(ValueError, match="runs:/RUN_ID/PATH"):
        client.models.push("pushed", f"runs:/{run.id}")
    # The last segment names the file downloaded: ".." named the temporary directory's parent.
    for odd, segment in (("a/..", ".."), ("./mlp1.onnx", "."), ("a//mlp1.onnx", "")):
        with pytest.raises(ValueError, match=f"has a '{re.escape(segment)}' segment"):
            client.models.push("pushed", f"runs:/{run.id}/{odd}")
    with pytest.raises(tessera.NotFound, match=r"absent\.onnx"):
        client.models.push("pushed", f"runs:/{run.id}/absent.onnx")
    with pytest.raises(
        tessera.NotFound, match=r"run 'run-nope' does not exist; `client.training.runs\(\)` lists them"
    ):
        client.models.push("pushed", onnx, run_id="run-nope")
    # A label's 250 characters may be 1,000 bytes, past the 511 an LMDB key holds.
    with pytest.raises(tessera.NotFound, match="does not exist"):
        client.models.push("pushed", onnx, run_id="界" * 250)
    client.training.delete_run(run.id)
    with pytest.raises(tessera.FailedPrecondition, match="is deleted; restore it"):
        client.models.push("pushed", onnx, run_id=run.id)
    assert [v.version for v in client.models.versions("pushed")] == [from_run.version, version.version]
    # Another tracker's run id goes in lineage.run_id, unchecked, as before; not with run_id too.
    data = onnx.read_bytes()
    header = registry_pb2.UploadVersionHeader(
        model="pushed",
        format=registry_pb2.ARTIFACT_FORMAT_ONNX,
        lineage=registry_pb2.Lineage(run_id="mlflow-abc"),
        sha256=hashlib.sha256(data).hexdigest(),
        size_bytes=len(data),
    )
    registry = registry_pb2_grpc.RegistryStub(daemon.channel())
    other = registry.UploadVersionInline(
        registry_pb2.UploadVersionInlineRequest(header=header, artifact=data)
    )
    assert (other.lineage.run_id, other.lineage.experiment) == ("mlflow-abc", "")
    header.run_id = "run-x"
    with pytest.raises(grpc.RpcError) as info:
        registry.UploadVersionInline(registry_pb2.UploadVersionInlineRequest(header=header, artifact=data))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "lineage.run_id is 'mlflow-abc' and run_id 'run-x'" in info.value.details()


def test_download_takes_an_alias_as_predict_does(client, tmp_path: Path):
    client.models.push("dl", affine_onnx(tmp_path / "a.onnx"), set_alias="prod")
    client.models.push("dl", affine_onnx(tmp_path / "b.onnx", scale=3.0))
    got = client.models.download("dl", tmp_path / "out.onnx", alias="prod")
    assert got.version == 1
    with pytest.raises(ValueError, match="not both"):
        client.models.download("dl", tmp_path / "x.onnx", version=2, alias="prod")


def test_the_readme_example_runs_as_written(client, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    (block,) = [
        b
        for b in code_blocks(CLIENT_README.read_text(encoding="utf-8"), "The SDK", {"python"})
        if "start_run" in b
    ]
    monkeypatch.chdir(tmp_path)
    affine_onnx(tmp_path / "mlp1.onnx")
    scope = {"client": client, "tessera": tessera, "train_step": lambda: 0.5}
    exec(block, scope)
    run = client.training.run(scope["run"].id)
    assert run.status == tessera.RunStatus.SUCCEEDED and run.metrics.summary("loss").count == 2000
    assert dict(run.metrics) == {"loss": 0.5, "test_acc": 0.91, "val_acc": 0.9, "val_loss": 0.4}
    assert client.models.version("mlp").lineage.run_id == run.id
