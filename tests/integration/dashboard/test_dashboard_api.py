"""The dashboard's HTTP listener and JSON API (/api/v1) against a real daemon."""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import json
import logging
import re
import socket
import urllib.parse
from typing import Any

import numpy as np
import pytest

import tessera
from tessera.v1 import registry_pb2, registry_pb2_grpc, training_pb2, training_pb2_grpc
from tesserad.dashboard import access
from tesserad.security import Role, hash_token, new_token
from tesserad.security.tokens import format_entry
from tesserad.server import StartupError
from tests.conftest import InProcessDaemon, daemon_settings
from tests.integration.dashboard.conftest import HttpAnswer, http_get, read_events, small_spec, wait_until
from tests.integration.sdk.affine import affine_onnx


def test_port_zero_binds_a_free_port_and_off_serves_nothing(dash, tmp_path):
    assert dash.daemon.http_port and dash.daemon.http_port > 0
    assert http_get(dash.daemon.http_port, "/api/v1/jobs").status == 200
    off = InProcessDaemon(daemon_settings(tmp_path / "off", http_listen="off")).start()
    try:
        assert off.daemon.http_port is None
    finally:
        off.stop()


def test_a_taken_port_stops_the_daemon_with_a_clear_message(dash, tmp_path):
    taken = f"127.0.0.1:{dash.daemon.http_port}"
    with pytest.raises(StartupError, match=f"cannot serve the dashboard on {taken}.*--http-listen"):
        InProcessDaemon(daemon_settings(tmp_path / "taken", http_listen=taken)).start()


def test_unknown_ids_and_paths_answer_404_without_internals(dash, finished_job):
    port = dash.daemon.http_port
    for path in (
        "/api/v1/jobs/no-such-job",
        "/api/v1/sweeps/nope",
        "/api/v1/models/nope",
        "/api/v1/runs/nope",
    ):
        answer = http_get(port, path)
        assert answer.status == 404, path
        assert "does not exist" in answer.json()["error"]
    for path in ("/jobs/no-such-job", "/models/nope", "/sweeps/nope", "/no/such/page"):
        answer = http_get(port, path)
        assert answer.status == 404, path
        assert answer.headers["content-type"].startswith("text/html")
        assert b"Traceback" not in answer.body and b"tesserad/" not in answer.body
    assert http_get(port, "/api/v1/nothing").json() == {"error": "nothing at /api/v1/nothing"}


def test_a_method_a_path_does_not_take_answers_405_naming_those_it_does(dash):
    port = dash.daemon.http_port
    for method, path, allowed, use in (
        ("GET", "/api/v1/runs/r/restore", "POST", "use POST"),
        ("PUT", "/login", "GET,HEAD,POST", "use GET or POST"),
        ("POST", "/jobs", "GET,HEAD", "use GET"),
    ):
        answer = http_get(port, path, method=method)
        assert answer.status == 405, (method, path)
        assert answer.headers["allow"].replace(" ", "") == allowed
        said = answer.json()["error"] if path.startswith("/api/") else answer.body.decode()
        assert f"{method} is not served at {path}; {use}" in said


def test_bad_queries_answer_400_saying_what_to_fix(dash, finished_job):
    port = dash.daemon.http_port
    answer = http_get(port, "/api/v1/jobs?page_size=lots")
    assert answer.status == 400 and "page_size must be a whole number in 0..1000" in answer.json()["error"]
    answer = http_get(port, "/api/v1/runs?metric=val_loss<1")
    assert answer.status == 400 and "KEY:FIELD:OP:VALUE" in answer.json()["error"]
    answer = http_get(port, "/api/v1/models/Bad%3CName%3E")
    assert answer.status == 400 and "is not a valid name" in answer.json()["error"]
    assert http_get(port, f"/api/v1/jobs/{finished_job}", method="POST").status == 405
    # A misspelt state listed no job (200, []), as if none were in it; runs' status is refused so.
    answer = http_get(port, "/api/v1/jobs?state=succeeded&state=SUCCEEDED")
    assert answer.status == 400 and answer.json()["error"] == (
        "state 'SUCCEEDED' is not a job state; use one of queued, running, succeeded, failed, "
        "cancelled, interrupted"
    )


# int() reads other scripts' digits, a sign, spaces and "1_0"; str.isdigit() passes "²", which
# int() refuses (a 500 once), and int() refuses over 4300 digits.
NOT_DIGITS = ("\u00b2", "\u0663", "+3", " 3", "3 ", "1_0", "-1", "1" * 5000)


def test_numbers_are_digits_0_to_9_within_range_or_400(dash, client, finished_job, tmp_path):
    port = dash.daemon.http_port
    run_id = http_get(port, f"/api/v1/jobs/{finished_job}").json()["run_id"]
    for text in (*NOT_DIGITS, str(2**63), str(2**64)):
        quoted = urllib.parse.quote(text)
        for path, takes in (
            (f"/api/v1/jobs?page_size={quoted}", "page_size must be a whole number in 0..1000"),
            (
                f"/api/v1/runs/{run_id}/metrics/loss?start_step={quoted}",
                f"start_step must be a whole number in 0..{2**62}",
            ),
            (
                f"/api/v1/runs/{run_id}/metrics/loss?max_points={quoted}",
                "max_points must be a whole number in 4..20000",
            ),
            (
                f"/api/v1/jobs/{finished_job}/events?from_seq={quoted}",
                f"from_seq must be a whole number in 0..{2**62}",
            ),
            (
                f"/api/v1/models/tiny/versions/{quoted}/lineage",
                f"version must be a whole number in 1..{2**63 - 1}",
            ),
        ):
            answer = http_get(port, path)
            assert answer.status == 400, (path, answer.body[:200])
            assert takes in answer.json()["error"], (path, answer.body[:200])
    # Header values travel as bytes; aiohttp strips the spaces around them, as HTTP says.
    for text in ("\u00b2", "\u0663", "+3", "1_0", "-1", "1" * 5000, str(2**63)):
        answer = http_get(port, f"/api/v1/jobs/{finished_job}/events", {"Last-Event-ID": text.encode()})
        assert answer.status == 400, (text, answer.body[:200])
        assert "Last-Event-ID (an event's sequence number) must be a whole number" in answer.json()["error"]
    assert http_get(port, f"/api/v1/models/tiny/versions/{2**63 - 1}/lineage").status == 404


def test_jobs_and_a_job_with_its_metric_history(dash, finished_job):
    port = dash.daemon.http_port
    jobs = http_get(port, "/api/v1/jobs?state=succeeded").json()["jobs"]
    assert finished_job in [j["job_id"] for j in jobs]
    assert all("spec" not in j for j in jobs)
    job = http_get(port, f"/api/v1/jobs/{finished_job}").json()
    assert job["state"] == "succeeded" and job["progress"] == 1.0 and job["eta_s"] is None
    history = http_get(port, f"/api/v1/runs/{job['run_id']}/metrics/loss").json()
    assert history["total_points"] == len(history["steps"]) == job["step"]
    assert history["steps"] == sorted(history["steps"]) and not history["downsampled"]


def test_a_job_and_the_jobs_list_say_why_early_stopping_ended_it(dash, client, table):
    early = {"metric": "val_loss", "patience": 1, "min_delta": 100.0}
    job = client.training.submit(small_spec(table, experiment="dash-early", epochs=50, early_stopping=early))
    job.wait()
    stopped = job.stopped_early
    assert stopped is not None and stopped.epoch == 2
    expected = {
        "metric": "val_loss",
        "mode": "min",
        "best": stopped.best,
        "best_epoch": 1,
        "epoch": 2,
        "patience": 1,
        "min_delta": 100.0,
    }
    port = dash.daemon.http_port
    assert http_get(port, f"/api/v1/jobs/{job.id}").json()["stopped_early"] == expected
    (listed,) = http_get(port, "/api/v1/jobs?experiment=dash-early").json()["jobs"]
    assert listed["stopped_early"] == expected
    whole = client.training.submit(small_spec(table, experiment="dash-early", epochs=1))
    whole.wait()
    assert http_get(port, f"/api/v1/jobs/{whole.id}").json()["stopped_early"] is None


def test_long_histories_come_downsampled_by_the_store(dash, client):
    run = client.training.create_run("dash-long", name="long", create_experiment=True)
    steps = 5000
    batches = [
        training_pb2.LogMetricsRequest(
            run_id=run.run_id,
            points=[
                training_pb2.MetricPoint(key="loss", value=1.0 / (s + 1), step=s) for s in range(b, b + 500)
            ],
        )
        for b in range(0, steps, 500)
    ]
    training_pb2_grpc.TrainingStub(dash.channel()).LogMetricsStream(iter(batches))
    port = dash.daemon.http_port
    history = http_get(port, f"/api/v1/runs/{run.run_id}/metrics/loss?max_points=100").json()
    assert history["downsampled"] and history["total_points"] == steps
    assert len(history["steps"]) <= 100
    assert history["steps"][0] == 0 and history["steps"][-1] == steps - 1
    assert http_get(port, f"/api/v1/runs/{run.run_id}/metrics/loss?end_step=0").json()["steps"] == [0]
    assert http_get(port, f"/api/v1/runs/{run.run_id}/metrics/loss?max_points=2").status == 400


def test_job_events_replay_end_and_resume_from_last_event_id(dash, finished_job):
    port = dash.daemon.http_port
    events = read_events(port, f"/api/v1/jobs/{finished_job}/events")
    assert events[-1]["event"] == "end"
    ids = [int(e["id"]) for e in events[:-1]]
    assert ids == list(range(1, len(ids) + 1))
    assert {"state", "step", "epoch"} <= {e["event"] for e in events}
    resumed = read_events(port, f"/api/v1/jobs/{finished_job}/events", {"Last-Event-ID": "3"})
    assert [int(e["id"]) for e in resumed[:-1]] == ids[3:]
    caught_up = read_events(port, f"/api/v1/jobs/{finished_job}/events", {"Last-Event-ID": str(ids[-1])})
    assert [e["event"] for e in caught_up] == ["end"]
    past = http_get(port, f"/api/v1/jobs/{finished_job}/events?from_seq={ids[-1] + 2}")
    assert past.status == 400 and f"its last event is {ids[-1]}" in past.json()["error"]
    assert http_get(port, "/api/v1/jobs/nope/events").status == 404
    bad = http_get(port, f"/api/v1/jobs/{finished_job}/events", {"Last-Event-ID": "x"})
    assert bad.status == 400 and "Last-Event-ID" in bad.json()["error"]


def test_runs_filter_by_param_and_metric(dash, client):
    low = client.training.create_run("dash-filter", name="low", params={"lr": "0.1"}, create_experiment=True)
    high = client.training.create_run(
        "dash-filter", name="high", params={"lr": "0.5"}, create_experiment=True
    )
    client.training.log_metrics(low.run_id, {"acc": 0.2}, 1)
    client.training.log_metrics(high.run_id, {"acc": 0.9}, 1)
    port = dash.daemon.http_port

    def names(query: str) -> list[str]:
        return [
            r["name"] for r in http_get(port, f"/api/v1/runs?experiment=dash-filter&{query}").json()["runs"]
        ]

    assert sorted(names("")) == ["high", "low"]
    assert names("param=lr%3D0.5") == ["high"]
    assert names("metric=acc:last:lt:0.5") == ["low"]
    # As ListRuns' COMPARISON_NE (MLflow's !=).
    assert names("metric=acc:last:ne:0.9") == ["low"]
    for value in ("%D9%A3", "1_0"):  # float() read these as 3 and 10
        answer = http_get(port, f"/api/v1/runs?experiment=dash-filter&metric=acc:last:lt:{value}")
        assert answer.status == 400 and "is not a number" in answer.json()["error"]
    board = http_get(port, "/api/v1/leaderboard?experiment=dash-filter&metric=acc").json()["entries"]
    assert [e["run"]["name"] for e in board] == ["high", "low"]
    # "best" is the summary's best value: the highest for acc, whichever mode ranks the board.
    for mode, names_in_order in (("", ["high", "low"]), ("min", ["low", "high"])):
        query = f"/api/v1/leaderboard?experiment=dash-filter&metric=acc&field=best&mode={mode}"
        board = http_get(port, query).json()["entries"]
        assert [(e["run"]["name"], e["value"]) for e in board] == [
            (name, {"high": 0.9, "low": 0.2}[name]) for name in names_in_order
        ]


def test_nan_and_inf_metrics_come_as_null_in_strict_json(dash, client):
    """JSON has no NaN or Infinity: a run's diverged loss is null in a run, a listing ordered by
    it and its history, each an answer a strict parser (a browser's JSON.parse) reads."""
    run = client.training.create_run("dash-nan", name="diverged", create_experiment=True)
    client.training.log_metrics(run.run_id, {"loss": 0.5, "acc": float("inf")}, 0)
    client.training.log_metrics(run.run_id, {"loss": float("nan")}, 1)
    port = dash.daemon.http_port

    def strict(path: str) -> Any:
        answer = http_get(port, path)
        assert answer.status == 200, answer.body

        def refuse(constant: str) -> None:
            raise AssertionError(f"{path} answered {constant}, which JSON lacks")

        return json.loads(answer.body, parse_constant=refuse)

    (listed,) = strict("/api/v1/runs?experiment=dash-nan&order_by=metrics.loss%20DESC")["runs"]
    summaries = {m["key"]: m for m in listed["metrics"]}
    assert (summaries["loss"]["last"], summaries["loss"]["min"]) == (None, 0.5)
    assert summaries["acc"]["last"] is None
    got = strict(f"/api/v1/runs/{run.run_id}")
    assert {m["key"]: m["last"] for m in got["metrics"]} == {"acc": None, "loss": None}
    history = strict(f"/api/v1/runs/{run.run_id}/metrics/loss")
    assert (history["steps"], history["values"]) == ([0, 1], [0.5, None])


def test_runs_take_the_sdks_filter_and_order_strings_and_refuse_unknown_query_parameters(dash, client):
    for name, lr, loss in (("a", "0.1", 0.7), ("b", "0.2", 0.3), ("c", "0.3", 0.5)):
        run = client.training.create_run("dash-search", name=name, params={"lr": lr}, create_experiment=True)
        client.training.log_metrics(run.run_id, {"val_loss": loss}, 1)
    port = dash.daemon.http_port

    def answer(**query: str) -> HttpAnswer:
        return http_get(
            port, "/api/v1/runs?" + urllib.parse.urlencode({"experiment": "dash-search", **query})
        )

    found = answer(filter="metrics.val_loss < 0.6")
    assert found.status == 200 and sorted(r["name"] for r in found.json()["runs"]) == ["b", "c"]
    ordered = answer(filter="metrics.val_loss > 0.4", order_by="metrics.val_loss DESC")
    assert ordered.status == 200 and [r["name"] for r in ordered.json()["runs"]] == ["a", "c"], ordered.body
    ascending = answer(order_by="metrics.val_loss")  # ascending, as MLflow's order strings
    assert [r["name"] for r in ascending.json()["runs"]] == ["b", "c", "a"]
    exact = answer(filter="params.lr = '0.2'")
    assert [r["name"] for r in exact.json()["runs"]] == ["b"]
    listed = answer(
        filter="params.lr IN ('0.1', '0.3') and attributes.run_name LIKE '_'", order_by="start_time DESC"
    )
    assert [r["name"] for r in listed.json()["runs"]] == ["c", "a"], listed.body
    two_keys = answer(order_by="params.lr DESC, metrics.val_loss", page_size="1")
    assert [r["name"] for r in two_keys.json()["runs"]] == ["c"] and two_keys.json()["next_page_token"]
    bad = answer(filter="metrics.val_loss < x")
    assert bad.status == 400 and "filter: column 20" in bad.json()["error"], bad.body
    bad = answer(order_by="val_loss DESC")
    assert bad.status == 400 and "order_by: column 1" in bad.json()["error"], bad.body
    both = answer(filter="metrics.val_loss < 1", metric="val_loss:last:lt:1")
    assert both.status == 400 and "filter=" in both.json()["error"] and "metric=" in both.json()["error"]
    typo = http_get(port, "/api/v1/runs?experimnt=dash-search")
    assert typo.status == 400, typo.body
    assert "experimnt" in typo.json()["error"] and "did you mean 'experiment'?" in typo.json()["error"]
    assert "order_by" in typo.json()["error"]


def test_runs_filter_by_status_and_refuse_an_unknown_one(dash, client):
    run = client.training.create_run("dash-status", name="done", create_experiment=True)
    client.training.update_run(run.run_id, status="succeeded")
    port = dash.daemon.http_port
    answer = http_get(port, "/api/v1/runs?experiment=dash-status&status=succeeded")
    assert [r["name"] for r in answer.json()["runs"]] == ["done"]
    answer = http_get(port, "/api/v1/runs?experiment=dash-status&status=finished")  # MLflow's word
    assert answer.status == 400, answer.body
    assert "status 'finished'" in answer.json()["error"] and "succeeded" in answer.json()["error"]


def test_runs_filter_by_a_key_no_run_has_logged_is_not_found_naming_the_nearest(dash, client):
    run = client.training.create_run("dash-typos", params={"batch_size": "16"}, create_experiment=True)
    client.training.log_metrics(run.run_id, {"val_loss": 0.5}, 1)
    client.training.update_run(run.run_id, status="succeeded")
    port = dash.daemon.http_port
    for query, meant in (("metric=val_los:last:lt:0.1", "val_loss"), ("param=batchsize%3D16", "batch_size")):
        answer = http_get(port, f"/api/v1/runs?experiment=dash-typos&{query}")
        assert answer.status == 404 and f"did you mean {meant!r}?" in answer.json()["error"], answer.body
    unmet = http_get(port, "/api/v1/runs?experiment=dash-typos&metric=val_loss:last:lt:0.1")
    assert unmet.status == 200 and unmet.json()["runs"] == []


def test_a_key_only_runs_outside_the_view_logged_names_the_query_parameter_that_shows_them(dash, client):
    kept = client.training.create_run("dash-view-keys", create_experiment=True)
    client.training.log_metrics(kept.run_id, {"val_loss": 0.5}, 1)
    client.training.update_run(kept.run_id, status="succeeded")
    gone = client.training.create_run("dash-view-keys", create_experiment=True)
    client.training.log_metrics(gone.run_id, {"val_f1": 0.9}, 1)
    client.training.update_run(gone.run_id, status="succeeded")
    client.training.delete_run(gone.run_id)
    port = dash.daemon.http_port
    for query, others in (
        ("metric=val_f1:last:lt:1", "deleted"),
        ("metric=val_loss:last:lt:1&view=deleted", "active"),
    ):
        answer = http_get(port, f"/api/v1/runs?experiment=dash-view-keys&{query}")
        assert answer.status == 404, answer.body
        assert answer.json()["error"].endswith(
            f"ask with view {others} or all (view={others} in the query)"
        ), answer.body


def test_a_model_with_versions_aliases_lineage_and_deployments(dash, client, tmp_path, finished_job):
    path = affine_onnx(tmp_path / "affine.onnx")
    client.models.push("dash-affine", path, set_alias="staging", description="two <b>versions</b>")
    client.models.push("dash-affine", path)
    client.models.deploy("dash-affine", routes={1: 90, 2: 10})
    data = http_get(dash.daemon.http_port, "/api/v1/models/dash-affine").json()
    assert data["model"]["version_count"] == 2
    assert [v["version"] for v in data["versions"]] == [2, 1]  # newest first
    assert {a["alias"]: a["version"] for a in data["aliases"]} == {"staging": 1, "latest": 2}
    assert [(e["alias"], e["to_version"]) for e in data["alias_history"]] == [("staging", 1)]
    [deployment] = data["deployments"]
    assert [(r["target"]["version"], r["weight"]) for r in deployment["routes"]] == [(1, 90), (2, 10)]
    job = http_get(dash.daemon.http_port, f"/api/v1/jobs/{finished_job}").json()
    lineage = http_get(dash.daemon.http_port, "/api/v1/models/tiny/versions/1/lineage").json()
    assert lineage["version"]["lineage"]["job_id"] == finished_job
    assert lineage["version"]["lineage"]["run_id"] == job["run_id"]


def test_a_versions_lineage_says_whether_its_run_is_one_of_this_daemon(dash, client, tmp_path):
    # The lineage graph linked any run id to its run page, another tracker's too: a page of 404.
    run = client.training.create_run("dash-runs", create_experiment=True)
    path = affine_onnx(tmp_path / "affine.onnx")
    client.models.push("dash-runs", path, run_id=run.id)
    data = path.read_bytes()
    header = registry_pb2.UploadVersionHeader(
        model="dash-runs",
        format=registry_pb2.ARTIFACT_FORMAT_ONNX,
        lineage=registry_pb2.Lineage(run_id="mlflow-abc"),
        sha256=hashlib.sha256(data).hexdigest(),
        size_bytes=len(data),
    )
    registry_pb2_grpc.RegistryStub(dash.channel()).UploadVersionInline(
        registry_pb2.UploadVersionInlineRequest(header=header, artifact=data)
    )
    versions = http_get(dash.daemon.http_port, "/api/v1/models/dash-runs").json()["versions"]
    assert [(v["lineage"]["run_id"], v["lineage"]["run_tracked"]) for v in versions] == [
        ("mlflow-abc", False),
        (run.id, True),
    ]
    for version, tracked in ((1, True), (2, False)):
        lineage = http_get(
            dash.daemon.http_port, f"/api/v1/models/dash-runs/versions/{version}/lineage"
        ).json()
        assert lineage["version"]["lineage"]["run_tracked"] is tracked


def test_a_deployment_an_alias_moved_onto_one_version_carries_its_warning(dash, client, tmp_path):
    path = affine_onnx(tmp_path / "affine.onnx")
    client.models.push("dash-promoted", path, set_alias="prod")
    client.models.push("dash-promoted", path, set_alias="canary")
    client.models.deploy("dash-promoted", routes={"prod": 90, "canary": 10})
    client.models.set_alias("dash-promoted", "prod", 2)
    [deployment] = http_get(dash.daemon.http_port, "/api/v1/models/dash-promoted").json()["deployments"]
    assert deployment["warnings"] == [
        "routes[0] (alias 'prod') and routes[1] (alias 'canary') both resolve to version 2 now, so it "
        "answers their 100% and they split nothing; deploy one route to it (Deploy), or move one of "
        "the aliases (SetAlias)"
    ]


def test_serving_shows_percentiles_after_predictions(dash, client, tmp_path):
    client.models.push("dash-serve", affine_onnx(tmp_path / "affine.onnx"))
    for _ in range(20):
        client.inference.predict("dash-serve", {"input": np.ones((1, 4), np.float32)})
    loaded = http_get(dash.daemon.http_port, "/api/v1/serving?model=dash-serve").json()["loaded"]
    [entry] = loaded
    assert entry["state"] == "ready" and entry["stats"]["request_count"] == 20
    for part in ("queue", "compute", "total"):
        summary = entry["stats"][part]
        assert summary["count"] == 20 and summary["p50_us"] <= summary["p95_us"] <= summary["p99_us"]


def test_system_shows_the_server_and_a_sample_without_its_paths(dash):
    data = http_get(dash.daemon.http_port, "/api/v1/system").json()
    assert data["server"]["cpu"]["cores"] >= 1 and data["sample"]["memory_total_bytes"] > 0
    assert "path" not in data["server"]["data_dir"]
    assert str(dash.settings.data_dir) not in str(data)


# -- access


@pytest.fixture
def tokens_file(tmp_path):
    clear = {role: new_token() for role in Role}
    path = tmp_path / "tokens.toml"
    path.write_text("".join(format_entry(f"{r.label}-holder", r, hash_token(t)) for r, t in clear.items()))
    return path, clear


def test_beyond_loopback_without_authentication_is_refused(tmp_path):
    with pytest.raises(StartupError, match=r"refusing to listen on 0\.0\.0\.0:0 without authentication"):
        InProcessDaemon(daemon_settings(tmp_path / "data", http_listen="0.0.0.0:0")).start()


def test_tokens_guard_every_page_and_call_and_a_reader_logs_in(tmp_path, tokens_file):
    path, clear = tokens_file
    daemon = InProcessDaemon(
        daemon_settings(tmp_path / "data", http_listen="0.0.0.0:0", **{"security.tokens_file": str(path)})
    ).start()
    try:
        port = daemon.daemon.http_port
        refused = http_get(port, "/api/v1/jobs")
        assert refused.status == 401 and "needs a token" in refused.json()["error"]
        page = http_get(port, "/jobs")
        assert page.status == 401 and b'name="token"' in page.body
        wrong = http_get(port, "/api/v1/jobs", {"Authorization": "Bearer " + new_token()})
        assert wrong.status == 401 and "not valid" in wrong.json()["error"]
        assert http_get(port, "/api/v1/jobs", {"Authorization": "Basic abc"}).status == 401
        reader = clear[Role.READER]
        assert http_get(port, "/api/v1/jobs", {"Authorization": f"Bearer {reader}"}).status == 200
        assert http_get(port, "/static/dashboard.js").status == 200  # code, no data

        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        form = urllib.parse.urlencode({"token": reader, "then": "//elsewhere.example/"})
        connection.request("POST", "/login", form, {"Content-Type": "application/x-www-form-urlencoded"})
        response = connection.getresponse()
        response.read()
        assert response.status == 303 and response.getheader("Location") == "/"
        cookie = response.getheader("Set-Cookie", "")
        assert "HttpOnly" in cookie and "SameSite=Strict" in cookie
        connection.close()
        session = cookie.split(";")[0]
        assert http_get(port, "/api/v1/jobs", {"Cookie": session}).status == 200
        assert http_get(port, "/jobs", {"Cookie": session}).status == 200
        form = urllib.parse.urlencode({"token": new_token()})
        wrong_login = http_get(
            port, "/login", {"Content-Type": "application/x-www-form-urlencoded"}, "POST", form
        )
        assert wrong_login.status == 401 and b"not valid" in wrong_login.body
    finally:
        daemon.stop()


@pytest.mark.parametrize(
    ("proxy_header", "secure"),
    [
        ({}, False),
        ({"X-Forwarded-Proto": "https"}, True),
        ({"Forwarded": "for=192.0.2.7;proto=https"}, True),
        ({"X-Forwarded-Proto": "http"}, False),
    ],
)
def test_the_login_cookie_is_secure_behind_a_proxy_that_terminates_tls(
    tmp_path, tokens_file, proxy_header, secure
):
    """A plaintext listener behind an ingress that serves HTTPS: the browser must never send the
    session cookie, good for all its token's role may do there, to an http:// address of the same name."""
    path, clear = tokens_file
    daemon = InProcessDaemon(
        daemon_settings(tmp_path / "data", **{"security.tokens_file": str(path)})
    ).start()
    try:
        form = urllib.parse.urlencode({"token": clear[Role.READER]})
        headers = {"Content-Type": "application/x-www-form-urlencoded", **proxy_header}
        answer = http_get(daemon.daemon.http_port, "/login", headers, "POST", form)
        assert answer.status == 303
        attributes = {part.strip().lower() for part in answer.headers["set-cookie"].split(";")}
        assert ("secure" in attributes) is secure
        assert {"httponly", "samesite=strict"} <= attributes
    finally:
        daemon.stop()


def test_the_login_cookie_names_a_session_never_the_token(tmp_path, tokens_file):
    """A browser sends a cookie to every port of its host name: another service there must not
    get a token good on gRPC. The session ends with its token, as the token's calls do."""
    path, clear = tokens_file
    daemon = InProcessDaemon(
        daemon_settings(tmp_path / "data", **{"security.tokens_file": str(path)})
    ).start()
    try:
        port = daemon.daemon.http_port
        admin = clear[Role.ADMIN]
        form = urllib.parse.urlencode({"token": admin})
        login = http_get(port, "/login", {"Content-Type": "application/x-www-form-urlencoded"}, "POST", form)
        assert login.status == 303
        cookie = login.headers["set-cookie"]
        assert admin not in cookie
        session = cookie.split(";")[0]
        assert session.startswith("tessera_session=")
        assert http_get(port, "/api/v1/session", {"Cookie": session}).json()["role"] == "admin"
        # The token itself is no session.
        as_cookie = http_get(port, "/api/v1/jobs", {"Cookie": f"tessera_session={admin}"})
        assert as_cookie.status == 401 and "session has ended" in as_cookie.json()["error"]

        path.write_text(format_entry("reader-holder", Role.READER, hash_token(clear[Role.READER])))
        daemon.run(daemon.daemon.reload())

        ended = http_get(port, "/api/v1/jobs", {"Cookie": session})
        assert ended.status == 401 and "log in again" in ended.json()["error"]
    finally:
        daemon.stop()


def _log_in(port: int, token: str) -> str:
    """A new session of `token`: its Cookie header."""
    form = urllib.parse.urlencode({"token": token})
    login = http_get(port, "/login", {"Content-Type": "application/x-www-form-urlencoded"}, "POST", form)
    assert login.status == 303
    return login.headers["set-cookie"].split(";")[0]


def test_one_tokens_many_logins_end_its_own_oldest_sessions_never_another_tokens(
    tmp_path, tokens_file, monkeypatch
):
    """A reader scripting logins must not push an admin's session out: beyond the cap per token,
    that token's oldest session gives way; the cap on all sessions is for many tokens at once."""
    monkeypatch.setattr(access, "MAX_SESSIONS_PER_TOKEN", 2, raising=False)
    monkeypatch.setattr(access, "MAX_SESSIONS", 4)
    path, clear = tokens_file
    daemon = InProcessDaemon(
        daemon_settings(tmp_path / "data", **{"security.tokens_file": str(path)})
    ).start()
    try:
        port = daemon.daemon.http_port
        admin = _log_in(port, clear[Role.ADMIN])
        readers = [_log_in(port, clear[Role.READER]) for _ in range(5)]

        kept_admin = http_get(port, "/api/v1/session", {"Cookie": admin})
        assert kept_admin.status == 200 and kept_admin.json()["role"] == "admin"
        for kept in readers[-2:]:
            assert http_get(port, "/api/v1/session", {"Cookie": kept}).status == 200
        ended = http_get(port, "/api/v1/jobs", {"Cookie": readers[0]})
        assert ended.status == 401
        assert "when 2 newer logins with its token, or 4 in all, push it out" in ended.json()["error"]

        # Many tokens at once: the oldest session gives way, whoever holds it.
        _log_in(port, clear[Role.TRAINER])
        _log_in(port, clear[Role.TRAINER])
        assert http_get(port, "/api/v1/session", {"Cookie": admin}).status == 401
    finally:
        daemon.stop()


def test_no_other_site_may_show_the_dashboard_in_a_frame(dash):
    """Without tokens on loopback, a page that framed the runs page could have its visitor click
    a restore it laid its own content over (clickjacking)."""
    port = dash.daemon.http_port
    for path in ("/runs", "/login", "/api/v1/runs", "/nothing-here", "/static/dashboard.js"):
        answer = http_get(port, path)
        assert answer.headers["x-frame-options"] == "DENY", path
        assert answer.headers["content-security-policy"] == "frame-ancestors 'none'", path


def test_every_401_names_the_bearer_scheme(tmp_path, tokens_file):
    # RFC 9110: a 401 must carry WWW-Authenticate, which HTTP clients and monitors read.
    path, clear = tokens_file
    daemon = InProcessDaemon(
        daemon_settings(tmp_path / "data", **{"security.tokens_file": str(path)})
    ).start()
    try:
        port = daemon.daemon.http_port
        form = urllib.parse.urlencode({"token": new_token()})
        answers = [
            http_get(port, "/api/v1/jobs"),
            http_get(port, "/api/v1/jobs", {"Authorization": "Bearer " + new_token()}),
            http_get(port, "/jobs"),
            http_get(port, "/login", {"Content-Type": "application/x-www-form-urlencoded"}, "POST", form),
        ]
        for answer in answers:
            assert answer.status == 401
            assert answer.headers["www-authenticate"] == 'Bearer realm="tesserad"'
        reader = {"Authorization": f"Bearer {clear[Role.READER]}"}
        assert "www-authenticate" not in http_get(port, "/api/v1/jobs", reader).headers
    finally:
        daemon.stop()


def _whole_answer(connection: socket.socket) -> bytes:
    """The whole answer: its head, then its Content-Length of body (or all until the close).
    Not the close itself: a refused request's declared body is never sent, and aiohttp lingers
    (10 s) for it before it closes; the answer's `connection: close` says it will."""
    answer = b""
    while b"\r\n\r\n" not in answer and (chunk := connection.recv(65536)):
        answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    lengths = [
        line.split(b":", 1)[1] for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:")
    ]
    while (not lengths or len(body) < int(lengths[0])) and (chunk := connection.recv(65536)):
        body += chunk
    return head + b"\r\n\r\n" + body


def test_expect_100_continue_is_answered_after_the_host_token_and_size_checks(tmp_path, tokens_file):
    path, clear = tokens_file
    daemon = InProcessDaemon(
        daemon_settings(tmp_path / "data", **{"security.tokens_file": str(path)})
    ).start()
    try:
        port = daemon.daemon.http_port
        expect = b"Host: localhost\r\nExpect: 100-continue\r\n"
        restore = b"POST /api/v1/runs/r/restore HTTP/1.1\r\n" + expect
        login = b"POST /login HTTP/1.1\r\n" + expect + b"Content-Type: application/x-www-form-urlencoded\r\n"
        # Refused at once, no 100 Continue first, closing the connection: the body is never sent.
        for head, status, says in (
            (restore + b"Content-Length: 100\r\n\r\n", 401, b"needs a token"),
            (
                login + b"Content-Length: 2000000\r\n\r\n",
                413,
                b"1.91 MiB, over 1 MiB, the most the dashboard reads",
            ),
            (login.replace(b"localhost", b"elsewhere.example") + b"Content-Length: 10\r\n\r\n", 403, b""),
        ):
            with socket.create_connection(("127.0.0.1", port), timeout=30) as connection:
                connection.sendall(head)
                answer = _whole_answer(connection)
            assert answer.startswith(f"HTTP/1.1 {status} ".encode()), answer[:80]
            assert b"\r\nconnection: close\r\n" in answer.partition(b"\r\n\r\n")[0].lower() + b"\r\n"
            assert says in answer
        # Nothing at the path, or not for the method: 404 and 405 (with Allow) in place of 100
        # Continue too, once the caller is known (as without Expect).
        reader = f"Authorization: Bearer {clear[Role.READER]}\r\n".encode()
        for head, status, says in (
            (b"POST /api/v1/nothing HTTP/1.1\r\n", 404, b'{"error":"nothing at /api/v1/nothing"}'),
            (b"PUT /jobs HTTP/1.1\r\n", 405, b"PUT is not served at /jobs; use GET"),
            (b"PUT /nothing HTTP/1.1\r\n", 401, b"needs a token"),
        ):
            with socket.create_connection(("127.0.0.1", port), timeout=30) as connection:
                connection.sendall(
                    head + expect + (b"" if status == 401 else reader) + b"Content-Length: 100\r\n\r\n"
                )
                answer = _whole_answer(connection)
            answer_head = answer.partition(b"\r\n\r\n")[0].lower() + b"\r\n"
            assert answer.startswith(f"HTTP/1.1 {status} ".encode()), answer[:80]
            assert b"\r\nconnection: close\r\n" in answer_head
            assert says in answer
            if status == 405:
                assert b"\r\nallow: get,head\r\n" in answer_head.replace(b", ", b",")
        # Admitted: 100 Continue, then the answer once the body has come.
        form = urllib.parse.urlencode({"token": clear[Role.READER]}).encode()
        with socket.create_connection(("127.0.0.1", port), timeout=30) as connection:
            connection.sendall(login + f"Content-Length: {len(form)}\r\n\r\n".encode())
            continued = b""
            while not continued.endswith(b"\r\n\r\n"):
                continued += connection.recv(1)
            assert continued == b"HTTP/1.1 100 Continue\r\n\r\n"
            connection.sendall(form)
            assert connection.recv(65536).startswith(b"HTTP/1.1 303 ")
    finally:
        daemon.stop()


def test_login_never_sends_the_browser_to_another_site(tmp_path, tokens_file):
    path, clear = tokens_file
    daemon = InProcessDaemon(
        daemon_settings(tmp_path / "data", **{"security.tokens_file": str(path)})
    ).start()
    try:
        port = daemon.daemon.http_port
        # Browsers drop tabs and newlines from a URL and read a backslash as a slash, so each
        # of these is "//elsewhere.example", another site.
        for then in [
            "//elsewhere.example/",
            "/\t/elsewhere.example/",
            "/\n/elsewhere.example/",
            "/\\elsewhere.example/",
            "\t//elsewhere.example/",
            "https://elsewhere.example/",
        ]:
            form = urllib.parse.urlencode({"token": clear[Role.READER], "then": then})
            answer = http_get(
                port, "/login", {"Content-Type": "application/x-www-form-urlencoded"}, "POST", form
            )
            assert answer.status == 303 and answer.headers["location"] == "/", then
        form = urllib.parse.urlencode({"token": clear[Role.READER], "then": "/jobs?page_size=5"})
        answer = http_get(port, "/login", {"Content-Type": "application/x-www-form-urlencoded"}, "POST", form)
        assert answer.headers["location"] == "/jobs?page_size=5"
    finally:
        daemon.stop()


def test_a_compressed_body_is_415_naming_the_coding_taken(dash):
    """Browsers never compress a form: a body in any content coding is refused before it is read,
    in the dashboard's own form (br and zstd were aiohttp's plain-text 400), as the HTTP inference
    listener refuses a coding it does not take."""
    form = urllib.parse.urlencode({"token": new_token()})
    for encoding in ("br", "zstd", "gzip", "deflate"):
        headers = {"Content-Type": "application/x-www-form-urlencoded", "Content-Encoding": encoding}
        answer = http_get(dash.daemon.http_port, "/login", headers, "POST", form)
        assert answer.status == 415, (encoding, answer.body[:200])
        assert answer.headers["content-type"].startswith("text/html")
        assert answer.headers["accept-encoding"] == "identity"
        assert (
            f"the request body is compressed with {encoding} (its Content-Encoding header), which the "
            "dashboard does not take; send it uncompressed, without the header"
        ).encode() in answer.body
        # Its body is left unread: the connection is not kept for another request.
        assert answer.headers["connection"] == "close"
    answer = http_get(dash.daemon.http_port, "/api/v1/jobs", {"Content-Encoding": "br"})
    assert answer.status == 200


def test_a_body_over_the_limit_is_413_before_it_is_read(dash):
    port = dash.daemon.http_port
    head = b"POST /login HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/x-www-form-urlencoded\r\n"
    # Headers only: the answer comes without waiting for the body.
    with socket.create_connection(("127.0.0.1", port), timeout=30) as connection:
        connection.sendall(head + b"Content-Length: 2000000\r\n\r\n")
        answer = _whole_answer(connection)
    assert answer.startswith(b"HTTP/1.1 413 "), answer[:80]
    assert b"1.91 MiB, over 1 MiB, the most the dashboard reads" in answer
    # Without a Content-Length, the body is read up to the limit and refused in the same words.
    chunk = b"x" * 65536
    chunked = head + b"Transfer-Encoding: chunked\r\n\r\n" + (b"10000\r\n" + chunk + b"\r\n") * 17
    with socket.create_connection(("127.0.0.1", port), timeout=30) as connection:
        with contextlib.suppress(ConnectionResetError, BrokenPipeError):
            connection.sendall(chunked)
        answer = _whole_answer(connection)
    assert answer.startswith(b"HTTP/1.1 413 "), answer[:80]
    assert b"over 1 MiB, the most the dashboard reads" in answer
    assert b"text/html" in answer.partition(b"\r\n\r\n")[0]


def test_a_spawned_daemon_logs_where_its_dashboard_listens(spawn_daemon, tmp_path):
    process = spawn_daemon(
        "--listen", "127.0.0.1:0", "--metrics-listen", "off", "--http-listen", "127.0.0.1:0",
        "--data-dir", str(tmp_path / "data"),
    )  # fmt: skip
    serving = process.wait_for_log("tesserad serving")
    scheme, _, port = serving["dashboard"].rpartition(":")
    assert scheme == "http://127.0.0.1" and int(port) > 0
    assert http_get(int(port), "/api/v1/jobs").json() == {"jobs": [], "next_page_token": ""}


def test_event_streams_are_held_to_max_concurrent_streams(tmp_path):
    daemon = InProcessDaemon(
        daemon_settings(tmp_path / "data", **{"limits.max_concurrent_streams": 1})
    ).start()
    port = daemon.daemon.http_port
    try:
        first = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        first.request("GET", "/api/v1/system/events?interval_ms=250")
        response = first.getresponse()
        assert response.status == 200 and response.readline() == b"retry: 1000\n"
        refused = http_get(port, "/api/v1/system/events")
        assert refused.status == 429 and "limits.max_concurrent_streams = 1" in refused.json()["error"]
        # As Triton and most proxies say when to try again: in a second.
        assert refused.headers["retry-after"] == "1"
        first.close()

        def admitted() -> bool:
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            try:
                connection.request("GET", "/api/v1/system/events")
                return connection.getresponse().status == 200
            finally:
                connection.close()

        wait_until(admitted, timeout=30, what="the closed stream to be counted out")
    finally:
        daemon.stop()


def test_a_revoked_token_loses_its_open_event_stream_and_its_next_request(tmp_path, tokens_file):
    path, clear = tokens_file
    daemon = InProcessDaemon(
        daemon_settings(tmp_path / "data", **{"security.tokens_file": str(path)})
    ).start()
    port = daemon.daemon.http_port
    reader = {"Authorization": f"Bearer {clear[Role.READER]}"}
    try:
        stream = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        stream.request("GET", "/api/v1/system/events?interval_ms=250", headers=reader)
        response = stream.getresponse()
        assert response.status == 200 and response.readline() == b"retry: 1000\n"
        path.write_text(format_entry("admin-holder", Role.ADMIN, hash_token(clear[Role.ADMIN])))

        daemon.run(daemon.daemon.reload())

        # The stream's connection closes: reading runs to its end (or breaks off) instead of
        # waiting for the next sample until the socket's timeout (which raises TimeoutError).
        with contextlib.suppress(http.client.IncompleteRead):
            while response.readline():
                pass
        stream.close()
        refused = http_get(port, "/api/v1/jobs", reader)
        assert refused.status == 401 and "not valid" in refused.json()["error"]
        admin = {"Authorization": f"Bearer {clear[Role.ADMIN]}"}
        assert http_get(port, "/api/v1/jobs", admin).status == 200
    finally:
        daemon.stop()


SVG_WITH_SCRIPT = (
    b'<svg xmlns="http://www.w3.org/2000/svg"><script>alert(1)</script><rect width="4" height="4"/></svg>'
)
ARTIFACTS = {
    "notes.txt": b"epoch 1: fine\n",
    "plots/loss.svg": SVG_WITH_SCRIPT,
    "plots/sub/report.html": b"<script>alert(1)</script>",
    "plots-old.txt": b"sorts between plots and plots/",
    "weights.bin": bytes(range(256)),
}


def _run_with_artifacts(client, tmp_path, experiment: str, files: dict[str, bytes]) -> str:
    run_id = client.training.create_run(experiment, create_experiment=True).run_id
    for number, (path, content) in enumerate(files.items()):
        local = tmp_path / str(number) / path.rsplit("/", 1)[-1]
        local.parent.mkdir(parents=True)
        local.write_bytes(content)
        client.training.log_artifact(run_id, local, path.rpartition("/")[0] or None)
    return run_id


def _artifact(port: int, run_id: str, path: str, preview: bool = False) -> HttpAnswer:
    query = urllib.parse.urlencode({"path": path, **({"preview": "1"} if preview else {})})
    return http_get(port, f"/api/v1/runs/{run_id}/artifact?{query}")


def test_run_artifacts_list_a_page_at_a_time_and_by_directory(dash, client, tmp_path):
    port = dash.daemon.http_port
    run_id = _run_with_artifacts(client, tmp_path, "dash-artifacts", ARTIFACTS)
    listed, token, pages = [], "", 0
    while True:
        page = http_get(port, f"/api/v1/runs/{run_id}/artifacts?page_size=2&page_token={token}").json()
        listed += page["artifacts"]
        token, pages = page["next_page_token"], pages + 1
        if not token:
            break
    assert pages == 3 and [a["path"] for a in listed] == sorted(ARTIFACTS)
    notes = next(a for a in listed if a["path"] == "notes.txt")
    assert notes["size_bytes"] == len(ARTIFACTS["notes.txt"])
    assert notes["sha256"] == hashlib.sha256(ARTIFACTS["notes.txt"]).hexdigest()
    assert notes["content_type"] == "text/plain" and notes["preview"] is True
    assert not next(a for a in listed if a["path"] == "weights.bin")["preview"]
    plots = http_get(port, f"/api/v1/runs/{run_id}/artifacts?path=plots").json()["artifacts"]
    assert [a["path"] for a in plots] == ["plots/loss.svg", "plots/sub/report.html"]
    assert http_get(port, "/api/v1/runs/no-such-run/artifacts").status == 404


def test_an_artifact_downloads_sandboxed_and_previews_only_as_text_png_or_svg(dash, client, tmp_path):
    port = dash.daemon.http_port
    run_id = _run_with_artifacts(client, tmp_path, "dash-artifacts", ARTIFACTS)
    for path, content in ARTIFACTS.items():
        answer = _artifact(port, run_id, path)
        assert answer.status == 200 and answer.body == content, path
        name = path.rsplit("/", 1)[-1]
        assert answer.headers["content-disposition"].startswith(f'attachment; filename="{name}"')
        assert answer.headers["x-tessera-sha256"] == hashlib.sha256(content).hexdigest()
        assert answer.headers["content-security-policy"].startswith("sandbox;")
        assert answer.headers["x-content-type-options"] == "nosniff"
    assert _artifact(port, run_id, "weights.bin").headers["content-type"] == "application/octet-stream"
    assert _artifact(port, run_id, "plots/sub/report.html").headers["content-type"].startswith("text/html")

    svg = _artifact(port, run_id, "plots/loss.svg", preview=True)
    assert svg.headers["content-type"] == "image/svg+xml" and svg.body == SVG_WITH_SCRIPT
    assert svg.headers["content-disposition"].startswith("inline;")
    assert "default-src 'none'" in svg.headers["content-security-policy"]
    html_page = _artifact(port, run_id, "plots/sub/report.html", preview=True)
    assert html_page.headers["content-type"] == "text/plain; charset=utf-8"  # its source, never a page
    binary = _artifact(port, run_id, "weights.bin", preview=True)
    assert binary.status == 400 and "download it instead" in binary.json()["error"]
    assert _artifact(port, run_id, "nothing.txt").status == 404
    escaping = _artifact(port, run_id, "../notes.txt")
    assert escaping.status == 400 and "'..' segment" in escaping.json()["error"]


def test_a_damaged_artifact_is_never_served_whole(dash, client, tmp_path, caplog):
    port = dash.daemon.http_port
    rng = np.random.default_rng(7)
    small, large = rng.bytes(1000), rng.bytes(600_000)
    run_id = _run_with_artifacts(client, tmp_path, "dash-artifacts", {"small.bin": small, "large.bin": large})
    for content in (small, large):
        blob = dash.settings.data_dir / "blobs" / "sha256" / hashlib.sha256(content).hexdigest()[:2]
        blob = blob / hashlib.sha256(content).hexdigest()[2:]
        blob.chmod(0o644)
        blob.write_bytes(content[:-1] + bytes([content[-1] ^ 1]))
    with caplog.at_level(logging.ERROR):
        refused = _artifact(port, run_id, "small.bin")  # one chunk: checked before a byte is sent
    assert refused.status == 500 and "damaged" in refused.json()["error"]
    # Logged once, under the error id the answer names.
    error_id = re.search(r"\(error id ([0-9a-f]{12})\b", refused.json()["error"]).group(1)
    logged = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert [getattr(r, "error_id", None) for r in logged] == [error_id], [r.getMessage() for r in logged]
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        connection.request("GET", f"/api/v1/runs/{run_id}/artifact?path=large.bin")
        response = connection.getresponse()
        assert response.status == 200 and int(response.getheader("Content-Length")) == len(large)
        with pytest.raises(http.client.IncompleteRead):
            response.read()
    finally:
        connection.close()


RESTORE = {"X-Tessera-Dashboard": "1"}


def _runs(port: int, query: str, headers: dict[str, str | bytes] | None = None) -> list[str]:
    return [r["run_id"] for r in http_get(port, f"/api/v1/runs?{query}", headers).json()["runs"]]


def test_deleted_runs_and_experiments_show_when_asked_for_and_restore(dash, client):
    port = dash.daemon.http_port
    kept, gone = (client.training.create_run("dash-deleted", create_experiment=True).run_id for _ in range(2))
    client.training.delete_run(gone)
    assert _runs(port, "experiment=dash-deleted") == [kept]
    assert _runs(port, "experiment=dash-deleted&view=deleted") == [gone]
    assert set(_runs(port, "experiment=dash-deleted&view=all")) == {kept, gone}
    assert http_get(port, "/api/v1/runs?view=gone").status == 400

    unsent = http_get(port, f"/api/v1/runs/{gone}/restore", method="POST")
    assert unsent.status == 403 and "X-Tessera-Dashboard" in unsent.json()["error"]
    elsewhere = http_get(
        port, f"/api/v1/runs/{gone}/restore", {**RESTORE, "Origin": "http://elsewhere.example"}, "POST"
    )
    assert elsewhere.status == 403 and "own pages" in elsewhere.json()["error"]
    origin = {**RESTORE, "Origin": f"http://127.0.0.1:{port}"}
    restored = http_get(port, f"/api/v1/runs/{gone}/restore", origin, "POST")
    assert restored.status == 200 and restored.json()["deleted_at"] is None
    assert set(_runs(port, "experiment=dash-deleted")) == {kept, gone}

    client.training.delete_experiment("dash-deleted")
    deleted = http_get(port, "/api/v1/experiments?view=deleted").json()["experiments"]
    assert "dash-deleted" in [e["name"] for e in deleted]
    with_experiment = http_get(port, f"/api/v1/runs/{kept}/restore", RESTORE, "POST")
    assert with_experiment.status == 409 and "RestoreExperiment" in with_experiment.json()["error"]
    assert http_get(port, "/api/v1/experiments/dash-deleted/restore", RESTORE, "POST").status == 200
    assert set(_runs(port, "experiment=dash-deleted")) == {kept, gone}


def test_a_restore_needs_the_role_its_grpc_method_needs(tmp_path, tokens_file):
    path, clear = tokens_file
    daemon = InProcessDaemon(
        daemon_settings(tmp_path / "data", **{"security.tokens_file": str(path)})
    ).start()
    try:
        port = daemon.daemon.http_port
        with tessera.Client(daemon.target, token=clear[Role.ADMIN]) as admin_client:
            run_id = admin_client.training.create_run("guarded", create_experiment=True).run_id
            admin_client.training.delete_run(run_id)
        for role in (Role.READER, Role.TRAINER):
            bearer = {"Authorization": f"Bearer {clear[role]}"}
            session = http_get(port, "/api/v1/session", bearer).json()
            assert session == {
                "role": role.label,
                "can_restore_runs": False,
                "can_restore_experiments": False,
                "restore_role": "admin",
                "can_log_out": False,
            }
            refused = http_get(port, f"/api/v1/runs/{run_id}/restore", {**bearer, **RESTORE}, "POST")
            assert refused.status == 403
            assert (
                f"needs the admin role (as on gRPC); this token has the {role.label} role"
                in (refused.json()["error"])
            )
            assert _runs(port, "view=deleted", bearer) == [run_id]
        admin = {"Authorization": f"Bearer {clear[Role.ADMIN]}", **RESTORE}
        assert http_get(port, "/api/v1/session", admin).json()["can_restore_runs"] is True
        assert http_get(port, f"/api/v1/runs/{run_id}/restore", admin, "POST").status == 200
        assert http_get(port, f"/api/v1/runs/{run_id}/restore", RESTORE, "POST").status == 401
    finally:
        daemon.stop()


def test_a_required_query_parameter_left_out_is_named_with_the_route_that_takes_it(dash):
    port = dash.daemon.http_port
    board = "as in GET /api/v1/leaderboard?experiment=NAME&metric=KEY"
    for path, said in (
        (
            "/api/v1/leaderboard?experiment=clips",
            f"the query parameter metric is required: the metric key to rank the runs by, {board}",
        ),
        (
            "/api/v1/leaderboard?experiment=clips&metric=",
            f"the query parameter metric is required: the metric key to rank the runs by, {board}",
        ),
        (
            "/api/v1/leaderboard?metric=acc",
            f"the query parameter experiment is required: the experiment whose runs to rank, {board}",
        ),
        (
            "/api/v1/runs/r1/artifact",
            "the query parameter path is required: the artifact's path in the run, as in "
            "GET /api/v1/runs/RUN_ID/artifact?path=PATH (GET /api/v1/runs/RUN_ID/artifacts lists them)",
        ),
    ):
        answer = http_get(port, path)
        assert (answer.status, answer.json()) == (400, {"error": said}), path


def test_a_404_names_the_http_route_that_lists_what_was_not_found_and_grpc_keeps_its_words(
    dash, client, finished_job
):
    port = dash.daemon.http_port
    run_id = http_get(port, f"/api/v1/jobs/{finished_job}").json()["run_id"]
    for path, said in (
        ("/api/v1/runs/nope", "run 'nope' does not exist; GET /api/v1/runs lists them"),
        ("/api/v1/runs/nope/artifacts", "run 'nope' does not exist; GET /api/v1/runs lists them"),
        ("/api/v1/runs/nope/metrics/loss", "run 'nope' does not exist; GET /api/v1/runs lists them"),
        ("/api/v1/jobs/nope", "job 'nope' does not exist; GET /api/v1/jobs lists them"),
        ("/api/v1/jobs/nope/events", "job 'nope' does not exist; GET /api/v1/jobs lists them"),
        ("/api/v1/sweeps/nope", "sweep 'nope' does not exist; GET /api/v1/sweeps lists them"),
        (
            "/api/v1/leaderboard?experiment=nope&metric=acc",
            "experiment 'nope' does not exist; GET /api/v1/experiments lists them",
        ),
        ("/api/v1/models/zzzzzzzz", "model 'zzzzzzzz' does not exist; list them with GET /api/v1/models"),
        (
            "/api/v1/models/tiny/versions/99/lineage",
            "model 'tiny' has no version 99 (the newest is 1; GET /api/v1/models/tiny lists them)",
        ),
        (
            f"/api/v1/runs/{run_id}/artifact?path=nothing.txt",
            f"run '{run_id}' has no artifact at 'nothing.txt'; list them with GET /api/v1/runs/{run_id}/artifacts",
        ),
    ):
        answer = http_get(port, path)
        assert (answer.status, answer.json()) == (404, {"error": said}), path
    with pytest.raises(
        tessera.NotFound, match=r"run 'nope' does not exist; `client\.training\.runs\(\)` lists them"
    ):
        client.training.run("nope")


def test_a_404_puts_only_its_fix_in_http_words_not_the_names_it_quotes(dash, finished_job):
    """A run id or artifact path that reads as a gRPC fix is the caller's text: it stays as it is."""
    port = dash.daemon.http_port
    run_id = http_get(port, f"/api/v1/jobs/{finished_job}").json()["run_id"]
    path = "ListRuns lists them.txt"
    for route, said in (
        (
            f"/api/v1/runs/{run_id}/artifact?path={urllib.parse.quote(path)}",
            f"run '{run_id}' has no artifact at '{path}'; list them with GET /api/v1/runs/{run_id}/artifacts",
        ),
        (
            f"/api/v1/runs/{urllib.parse.quote('ListJobs lists them')}",
            "run 'ListJobs lists them' does not exist; GET /api/v1/runs lists them",
        ),
    ):
        answer = http_get(port, route)
        assert (answer.status, answer.json()) == (404, {"error": said}), route


@pytest.mark.parametrize(
    ("page", "route"),
    [("/jobs", "/api/v1/jobs"), ("/system", "/api/v1/system"), ("/models/tiny", "/api/v1/models/tiny")],
)
def test_a_page_read_without_javascript_names_the_json_route_with_its_data(dash, finished_job, page, route):
    body = http_get(dash.daemon.http_port, page).body.decode()
    assert (
        f'<noscript><p class="problem">This page needs JavaScript. The same data is JSON at '
        f'<a href="{route}">GET {route}</a>.</p></noscript>'
    ) in body
