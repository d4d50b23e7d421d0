"""`tessera runs ls` filters and order, `tessera runs rm|restore` and `tessera experiments
ls|update|rm|restore`, and the SDK calls under them, against a real daemon."""

from __future__ import annotations

import re

import pytest

from tessera.cli import EXIT_DAEMON, EXIT_USAGE
from tessera.errors import FailedPrecondition


def test_runs_ls_filters_by_status_param_and_tag_and_orders_by_a_metric(tessera_cli, client):
    training = client.training
    low = training.create_run("cli-ls", params={"lr": "0.1"}, tags={"team": "a"})
    high = training.create_run("cli-ls", params={"lr": "0.1"}, tags={"team": "b"})
    other = training.create_run("cli-ls", params={"lr": "0.2"}, tags={"team": "a"})
    for run, loss in ((low, 0.1), (high, 0.9), (other, 0.5)):
        training.log_metrics(run.run_id, {"val_loss": loss}, step=0)
    training.update_run(other.run_id, status="succeeded")

    def listed(*flags: str) -> list[str]:
        result = tessera_cli("--json", "runs", "ls", "--experiment", "cli-ls", *flags)
        assert result.code == 0, result.err
        return [r["run_id"] for r in result.json()]

    assert listed("--status", "succeeded") == [other.run_id]
    assert listed("--param", "lr=0.1") == [high.run_id, low.run_id]
    assert listed("--param", "lr=0.1", "--tag", "team=a") == [low.run_id]
    assert listed("--order-by", "val_loss") == [low.run_id, other.run_id, high.run_id]
    assert listed("--order-by", "val_loss", "--desc") == [high.run_id, other.run_id, low.run_id]
    twice = tessera_cli("runs", "ls", "--tag", "team=a", "--tag", "team=b")
    assert twice.code == EXIT_USAGE and "--tag team is given twice" in twice.err

    sdk = [r.run_id for r in training.runs("cli-ls", tags={"team": "a"}, order_by="val_loss", page_size=1)]
    assert sdk == [low.run_id, other.run_id]
    training.log_metrics(low.run_id, {"val_loss": 0.95}, step=1)  # last 0.95, min still 0.1
    by_last = [r.run_id for r in training.runs("cli-ls", order_by="val_loss")]
    assert by_last == [other.run_id, high.run_id, low.run_id]
    by_min = training.runs("cli-ls", order_by="val_loss", order_field="min", page_size=2)
    assert [r.run_id for r in by_min] == [low.run_id, other.run_id, high.run_id]


def test_runs_rm_and_restore(tessera_cli, client):
    run = client.training.create_run("cli-rm")
    removed = tessera_cli("runs", "rm", run.run_id)
    assert removed.code == 0 and f"tessera runs restore {run.run_id}" in removed.out
    assert run.run_id not in tessera_cli("runs", "ls", "--experiment", "cli-rm").out
    deleted = tessera_cli("runs", "ls", "--experiment", "cli-rm", "--view", "deleted")
    assert run.run_id in deleted.out and "(deleted)" in deleted.out
    refused = tessera_cli("runs", "rm", "run-absent")
    assert refused.code == EXIT_DAEMON and "NOT_FOUND" in refused.err
    with pytest.raises(FailedPrecondition, match="is deleted; restore it with RestoreRun"):
        client.training.log_metrics(run.run_id, {"loss": 1.0}, step=0)
    restored = tessera_cli("runs", "restore", run.run_id)
    assert restored.code == 0 and f"restored run {run.run_id}" in restored.out
    assert client.training.log_metrics(run.run_id, {"loss": 1.0}, step=0) == 1


def test_experiments_update_rm_and_restore(tessera_cli, client):
    client.training.create_run("cli-exp")  # the experiment is created on first use
    updated = tessera_cli(
        "--json", "experiments", "update", "cli-exp", "--description", "4-D CNN", "--tag", "team=vision"
    )
    assert updated.code == 0, updated.err
    assert updated.json()["description"] == "4-D CNN" and updated.json()["tags"] == {"team": "vision"}
    dropped = tessera_cli("--json", "experiments", "update", "cli-exp", "--remove-tag", "team").json()
    assert "tags" not in dropped and dropped["description"] == "4-D CNN"

    removed = tessera_cli("experiments", "rm", "cli-exp")
    assert removed.code == 0 and "tessera experiments restore cli-exp" in removed.out
    assert "cli-exp" not in tessera_cli("experiments", "ls").out
    assert "cli-exp (deleted)" in tessera_cli("experiments", "ls", "--view", "all").out
    hidden = tessera_cli("--json", "runs", "ls", "--experiment", "cli-exp")
    assert hidden.code == 0 and hidden.json() == []
    again = tessera_cli("experiments", "update", "cli-exp", "--description", "x")
    assert again.code == EXIT_DAEMON and "FAILED_PRECONDITION" in again.err
    assert "`tessera experiments restore NAME`" in again.err  # the RPC named in CLI words
    restored = tessera_cli("experiments", "restore", "cli-exp")
    assert restored.code == 0 and "restored experiment cli-exp (1 run)" in restored.out
    assert [e.name for e in client.training.experiments(prefix="cli-exp")] == ["cli-exp"]


def test_runs_leaderboard_of_a_metric_no_run_has_says_so(tessera_cli, client):
    run = client.training.create_run("cli-board")
    client.training.log_metrics(run.run_id, {"val_loss": 0.5}, step=0)
    # A misspelt metric used to print an empty table and succeed, leaving the user to guess.
    empty = tessera_cli("runs", "leaderboard", "cli-board", "val_los")
    assert empty.code == 0, empty.err
    assert "no run of experiment cli-board has logged val_los" in empty.out, empty.out
    assert "tessera runs ls --experiment cli-board" in empty.out
    assert tessera_cli("--json", "runs", "leaderboard", "cli-board", "val_los").json() == []
    board = tessera_cli("runs", "leaderboard", "cli-board", "val_loss")
    assert board.code == 0 and run.run_id in board.out


def test_runs_leaderboard_ranks_by_any_summary_field(tessera_cli, client):
    early, steady = client.training.create_run("cli-field"), client.training.create_run("cli-field")
    client.training.log_metrics(early.run_id, {"val_loss": 0.5}, step=0)
    client.training.log_metrics(early.run_id, {"val_loss": 0.9}, step=1)  # best 0.5, last 0.9
    client.training.log_metrics(steady.run_id, {"val_loss": 0.7}, step=0)

    def ranked(*flags: str) -> list[tuple[str, float]]:
        result = tessera_cli("--json", "runs", "leaderboard", "cli-field", "val_loss", *flags)
        assert result.code == 0, result.err
        return [(e["run"]["run_id"], e["value"]) for e in result.json()]

    assert ranked() == [(early.run_id, 0.5), (steady.run_id, 0.7)]
    assert ranked("--field", "last") == [(steady.run_id, 0.7), (early.run_id, 0.9)]
    board = client.training.leaderboard("cli-field", "val_loss", field="last")
    assert [(e.run.run_id, e.value) for e in board] == [(steady.run_id, 0.7), (early.run_id, 0.9)]
    with pytest.raises(ValueError, match="best"):
        client.training.leaderboard("cli-field", "val_loss", field="best")


def test_runs_leaderboard_shows_the_params_that_differ_between_the_runs(tessera_cli, client):
    # A job's run logs every field of its spec (some 50 params): listing them all in each row
    # buried the one or two a search varied.
    runs = [
        client.training.create_run("cli-differ", params={"lr": lr, "seed": "0", "epochs": "5"})
        for lr in ("0.1", "0.01")
    ]
    client.training.log_params(runs[1].run_id, {"momentum": "0.9"})
    for run, loss in zip(runs, (0.2, 0.4), strict=True):
        client.training.log_metrics(run.run_id, {"val_loss": loss}, step=0)
    board = tessera_cli("runs", "leaderboard", "cli-differ", "val_loss")
    assert board.code == 0, board.err
    # One param a line: a wrapped cell then breaks between params, not inside one.
    assert re.search(r"lr=0.01 +│\n.* momentum=0.9 ", board.out), board.out
    assert "lr=0.1 " in board.out, board.out
    assert "seed=0" not in board.out and "epochs=5" not in board.out, board.out
    assert "left out: 2 params with one value in every run above" in board.out, board.out
    entries = tessera_cli("--json", "runs", "leaderboard", "cli-differ", "val_loss").json()
    assert entries[0]["run"]["params"] == {"lr": "0.1", "seed": "0", "epochs": "5"}
