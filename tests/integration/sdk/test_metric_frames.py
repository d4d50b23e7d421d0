"""Metrics into numpy and pandas without hand loops, as MLflow's search_runs and metric history
give them: a history's steps, values and times as arrays, `run.metrics["val_loss"]`, and a
runs listing as a DataFrame (one row per run, params.* and metrics.* columns)."""

from __future__ import annotations

import asyncio
import sys

import numpy as np
import pandas as pd
import pytest

import tessera
import tessera.aio


@pytest.fixture
def logged_runs(client) -> tuple[str, str]:
    first = client.training.create_run("frames", name="first", params={"lr": 0.01}, create_experiment=True)
    client.training.log_metrics(first.run_id, {"val_loss": 0.9, "acc": 0.5}, step=0)
    client.training.log_metrics(first.run_id, {"val_loss": 0.4, "acc": 0.8}, step=2)
    client.training.update_run(first.run_id, status="succeeded")
    second = client.training.create_run(
        "frames", name="second", params={"lr": 0.1, "batch": 8}, create_experiment=True
    )
    client.training.log_metrics(second.run_id, {"val_loss": 0.7}, step=0)
    return first.run_id, second.run_id


def test_a_metric_history_gives_its_points_as_arrays_and_a_frame(client, logged_runs):
    first, _ = logged_runs
    history = client.training.metric_history(first, "val_loss")
    assert isinstance(history.steps, np.ndarray) and history.steps.dtype == np.int64
    np.testing.assert_array_equal(history.steps, [0, 2])
    np.testing.assert_array_equal(history.values, [0.9, 0.4])
    assert history.timestamps.dtype.kind == "M" and len(history) == 2
    # What read the message before still reads.
    assert [p.step for p in history.points] == [0, 2] and history.total_points == 2
    assert history.run_id == first and history.key == "val_loss"
    frame = history.to_pandas()
    assert list(frame.columns) == ["step", "value", "timestamp"]
    assert frame["value"].tolist() == [0.9, 0.4] and frame["step"].tolist() == [0, 2]
    assert str(frame["timestamp"].dt.tz) == "UTC"


def test_to_pandas_without_pandas_says_how_to_install_it(client, logged_runs, monkeypatch):
    first, _ = logged_runs
    history = client.training.metric_history(first, "val_loss")
    monkeypatch.setitem(sys.modules, "pandas", None)  # as where pandas is not installed
    with pytest.raises(ImportError, match=r"pip install pandas"):
        history.to_pandas()


def test_a_run_s_metrics_read_by_key_as_their_latest_value(client, logged_runs):
    first, _ = logged_runs
    run = client.training.run(first)
    assert run.metrics["val_loss"] == 0.4 and run.metrics["acc"] == 0.8
    assert dict(run.metrics) == {"acc": 0.8, "val_loss": 0.4}
    assert "val_loss" in run.metrics and "loss" not in run.metrics
    assert run.metrics.get("loss") is None
    with pytest.raises(KeyError, match="val_loss"):
        _ = run.metrics["loss"]
    # Code written for the message's list of summaries still reads them.
    assert [m.key for m in run.metrics] == ["acc", "val_loss"] and run.metrics[1].min == 0.4
    assert len(run.metrics) == 2 and run.metrics == list(run.info.metrics)
    assert run.metrics == {"acc": 0.8, "val_loss": 0.4}
    assert client.training.create_run("frames", create_experiment=True).metrics == []
    assert run.id == run.run_id == first and run.params["lr"] == "0.01"
    assert run.status == tessera.RunStatus.SUCCEEDED and run.info.name == "first"


def test_a_runs_listing_is_a_frame_of_one_row_per_run(client, logged_runs):
    first, second = logged_runs
    frame = client.training.runs(experiment="frames").to_pandas()
    assert isinstance(frame, pd.DataFrame)
    assert frame["run_id"].tolist() == [second, first]  # newest first, as listed
    assert {"run_id", "name", "status", "start_time", "end_time"} <= set(frame.columns)
    assert frame.set_index("run_id").loc[first, "metrics.val_loss"] == 0.4
    assert frame.set_index("run_id").loc[first, "params.lr"] == "0.01"
    assert frame.set_index("run_id").loc[first, "status"] == "succeeded"
    assert pd.isna(frame.set_index("run_id").loc[first, "params.batch"])
    assert pd.isna(frame.set_index("run_id").loc[second, "end_time"])
    assert [r.id for r in client.training.runs(experiment="frames")] == [second, first]


def test_a_runs_listing_asks_again_each_time_it_is_read(client, logged_runs):
    """A listing read once was empty the second time (`list(runs)`, then a frame of 0 rows), and
    a peek with next() took its row from the frame read after it."""
    first, second = logged_runs
    runs = client.training.runs(experiment="frames")
    assert [r.id for r in runs] == [second, first]
    assert runs.to_pandas()["run_id"].tolist() == [second, first]
    assert next(iter(runs)).id == second
    assert [r.id for r in runs] == [second, first]
    with pytest.raises(TypeError, match="not an iterator"):
        next(runs)  # type: ignore[call-overload]
    third = client.training.create_run("frames", name="third")
    assert [r.id for r in runs] == [third.run_id, second, first]  # asked again, not kept
    assert repr(runs) == (
        '<Listing of Runs experiment: "frames" view: LIFECYCLE_VIEW_ACTIVE_ONLY'
        " (not fetched; iterate or .to_pandas())>"
    )


def test_a_leaderboard_and_a_comparison_give_runs_as_runs_do_and_frames(client, logged_runs):
    """They gave the tessera.v1 messages while `runs()` gave `tessera.Run`: one type for a run."""
    first, second = logged_runs
    board = client.training.leaderboard("frames", "val_loss")
    assert isinstance(board, tessera.Leaderboard) and len(board) == 2
    assert isinstance(board[0].run, tessera.Run) and board[0].run.metrics["val_loss"] == 0.4
    # What read the messages before still reads.
    assert [(e.rank, e.run.run_id, e.value) for e in board] == [(1, first, 0.4), (2, second, 0.7)]
    assert board == [e.info for e in board]
    ranked = board.to_pandas()
    assert ranked[["rank", "value", "run_id"]].values.tolist() == [[1, 0.4, first], [2, 0.7, second]]
    assert ranked["params.lr"].tolist() == ["0.01", "0.1"]

    compared = client.training.compare_runs([first, second])
    assert isinstance(compared, tessera.RunComparison)
    assert [run.id for run in compared.runs] == [first, second]
    assert all(isinstance(run, tessera.Run) for run in compared.runs)
    assert compared.runs[0].metrics["acc"] == 0.8 and compared.metrics_left_out == 0
    assert [p.key for p in compared.params if p.differs] == ["batch", "lr"]
    frame = compared.to_pandas().set_index("run_id")
    assert frame.loc[first, "params.lr"] == "0.01" and frame.loc[second, "params.batch"] == "8"
    assert pd.isna(frame.loc[first, "params.batch"]) and pd.isna(frame.loc[second, "metrics.acc"])
    assert frame.loc[first, "metrics.val_loss"] == 0.4 and frame.loc[first, "status"] == "succeeded"


def test_the_asyncio_client_gives_the_same_frames(daemon, logged_runs):
    first, second = logged_runs

    async def scenario() -> tuple[pd.DataFrame, np.ndarray, float, pd.DataFrame, pd.DataFrame]:
        async with tessera.aio.Client(daemon.target) as client:
            runs = client.training.runs(experiment="frames")
            assert [r.id async for r in runs] == [second, first]
            frame = await runs.to_pandas()
            assert [r.id async for r in runs] == [second, first]
            history = await client.training.metric_history(first, "val_loss")
            run = await client.training.run(first)
            board = await client.training.leaderboard("frames", "val_loss")
            compared = await client.training.compare_runs([first, second])
            return frame, history.values, run.metrics["val_loss"], board.to_pandas(), compared.to_pandas()

    frame, values, last, ranked, compared = asyncio.run(scenario())
    assert frame["run_id"].tolist() == [second, first]
    assert ranked["run_id"].tolist() == [first, second] and compared["run_id"].tolist() == [first, second]
    np.testing.assert_array_equal(values, [0.9, 0.4])
    assert last == 0.4
