"""deploy/prometheus against a real daemon's /metrics: every metric and label its alert rules
use is one a scrape shows, and Prometheus loads the rules for the job that scrapes tesserad."""

from __future__ import annotations

import logging
import re
import time
import urllib.request
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families

import tessera
from tessera.v1 import inference_pb2_grpc, registry_pb2, registry_pb2_grpc
from tesserad.api.errors import status_for
from tesserad.cli import main as tesserad_main
from tesserad.dashboard.server import HTTP_STATUS_BY_ERROR
from tesserad.security import Role, hash_token, new_token
from tesserad.security.tokens import format_entry
from tests.conftest import InProcessDaemon, daemon_settings
from tests.integration.registry.conftest import mlp_weights, rpc_error, safetensors_header
from tests.integration.security.conftest import dated_certificate
from tests.integration.serving.serving_models import linear_model, predict_request, upload

PROMETHEUS = Path(__file__).resolve().parents[2] / "deploy" / "prometheus"
# Labels Prometheus adds to every series it scrapes.
TARGET_LABELS = {"instance", "job"}
# Labels the scrape configs give every tesserad target (prometheus.yml's static label; the
# ServiceMonitor's and PodMonitor's from the pods' label), which rules on `up` select.
SCRAPE_TARGET_LABELS = {"app_kubernetes_io_name"}
_SELECTOR = re.compile(r"\b([a-z_:][a-z0-9_:]*)\s*(?:\{([^}]*)\})?")
_GROUPING = re.compile(r"\b(?:by|without)\s*\(([^)]*)\)")
PROMQL_WORDS = {
    "sum",
    "by",
    "without",
    "rate",
    "increase",
    "changes",
    "absent",
    "time",
    "histogram_quantile",
    "offset",
    "and",
    "or",
    "unless",
    "on",
    "ignoring",
}
ALERT_FILES = ("alerts.yml", "alerts-replicas.yml")


def load_yaml(path: Path) -> dict:
    yaml = pytest.importorskip("yaml", reason="PyYAML is needed to read deploy/prometheus")
    document: dict = yaml.safe_load(path.read_text())
    return document


def scraped_series(url: str) -> dict[str, set[str]]:
    """Each sample name a scrape shows, with the label names it carries."""
    text = urllib.request.urlopen(url, timeout=10).read().decode()
    series: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            series.setdefault(sample.name, set()).update(sample.labels)
    # As written: the parser names a counter typed without `_total` (Triton's nv_inference_*)
    # with it, and Prometheus stores it as written.
    for name, labels in re.findall(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)\{([^}]*)\}", text, re.MULTILINE):
        series.setdefault(name, set()).update(re.findall(r'(\w+)="', labels))
    return series


def rules() -> list[dict]:
    return [
        rule
        for name in ALERT_FILES
        for group in load_yaml(PROMETHEUS / name)["groups"]
        for rule in group["rules"]
    ]


def test_the_rules_select_tesserad_by_a_target_label_every_scrape_config_gives():
    """No rule names a job (a Kubernetes scrape's job is not compose's): rules on `up` and
    process_start_time_seconds, every target's, select the label prometheus.yml gives its
    target, as the ServiceMonitor and PodMonitor give theirs (test_deploy.py)."""
    config = load_yaml(PROMETHEUS / "prometheus.yml")
    assert config["rule_files"] == ["/etc/prometheus/alerts.yml"]
    (job,) = config["scrape_configs"]
    (target,) = job["static_configs"]
    assert target["labels"] == {"app_kubernetes_io_name": "tesserad"}
    exprs = [rule["expr"] for rule in rules()]
    assert not [expr for expr in exprs if "job=" in expr]
    for expr in exprs:
        for name in ("up", "process_start_time_seconds"):
            for selector in re.findall(rf"\b{name}\{{([^}}]*)\}}|\b{name}\b(?!\{{)", expr):
                assert "app_kubernetes_io_name=" in selector, expr
    # A target gone entirely leaves `up == 0` silent: absent() rules cover the primary and the replicas.
    assert {e for e in exprs if e.startswith("absent(up")} == {
        'absent(up{app_kubernetes_io_name="tesserad"})',
        'absent(up{app_kubernetes_io_name="tesserad-replica"})',
    }


def test_every_rule_has_a_severity_and_a_runbook_section_that_exists():
    runbook = (PROMETHEUS.parents[1] / "docs" / "runbook.md").read_text()
    # GitHub's anchors: a heading lower-cased, spaces to hyphens, other punctuation dropped.
    anchors = {
        re.sub(r"[^a-z0-9 -]", "", heading.lower()).replace(" ", "-")
        for heading in re.findall(r"^#+ (.+)$", runbook, re.MULTILINE)
    }
    for rule in rules():
        assert rule["labels"]["severity"] in {"critical", "warning"}, rule["alert"]
        path, _, anchor = rule["annotations"]["runbook_url"].partition("#")
        assert (path, anchor in anchors) == ("docs/runbook.md", True), rule["alert"]


def code_matcher(alert: str) -> re.Pattern[str]:
    """What the `code` label's matcher of the rule `alert` takes, as a pattern to fullmatch."""
    expr = next(rule["expr"] for rule in rules() if rule["alert"] == alert)
    found = re.search(r'\bcode\s*(=~|=)\s*"([^"]*)"', expr)
    assert found, f"{alert} selects no code"
    operator, value = found.groups()
    return re.compile(value if operator == "=~" else re.escape(value))


def test_the_http_alert_takes_the_failures_the_grpc_alert_takes_and_no_others():
    # A 501 (a feature not offered), 503 (a model loading, a drain) or 504 is the
    # client's or a passing state's doing: as on gRPC, only the daemon's own failures page.
    grpc_codes = code_matcher("TesseradInternalErrors")
    http_codes = code_matcher("TesseradHttpServerErrors")
    for error, status in HTTP_STATUS_BY_ERROR.items():
        alerted = grpc_codes.fullmatch(status_for(error("x")).name) is not None
        assert (http_codes.fullmatch(str(status)) is not None) == alerted, (error.__name__, status)
    # aiohttp's answer to an exception no error middleware answers.
    assert http_codes.fullmatch("500")


def test_every_metric_and_label_the_alerts_use_is_in_a_real_scrape(daemon, channel, tmp_path):
    # A finished call and an answered HTTP request, so that the per-call and per-request series exist.
    health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
    # A model served once, for the inference series (latency, failures by reason).
    upload(channel, "alerted", linear_model(1.0))
    inference_pb2_grpc.InferenceStub(channel).Predict(
        predict_request("alerted", np.ones((1, 4), np.float32)), timeout=60
    )
    urllib.request.urlopen(f"http://127.0.0.1:{daemon.daemon.http_port}/api/v1/jobs", timeout=10).read()
    series = scraped_series(f"http://127.0.0.1:{daemon.daemon.metrics_port}/metrics")
    # The replica alerts' series are a replica's only.
    replica = InProcessDaemon(
        daemon_settings(tmp_path / "replica", **{"replica.primary": daemon.target})
    ).start()
    try:
        for name, labels in scraped_series(f"http://127.0.0.1:{replica.daemon.metrics_port}/metrics").items():
            series.setdefault(name, set()).update(labels)
    finally:
        replica.stop()
    # The tokens file's and the TLS certificate's series are those of a daemon that has them.
    cert, key = dated_certificate(
        tmp_path, "server", datetime.now(UTC), datetime.now(UTC) + timedelta(days=30)
    )
    key.chmod(0o600)
    tokens = tmp_path / "tokens.toml"
    tokens.write_text(format_entry("admin", Role.ADMIN, hash_token(new_token())))
    secured = InProcessDaemon(
        daemon_settings(
            tmp_path / "secured",
            **{
                "security.tokens_file": str(tokens),
                "security.tls_cert_file": str(cert),
                "security.tls_key_file": str(key),
            },
        )
    ).start()
    try:
        for name, labels in scraped_series(f"http://127.0.0.1:{secured.daemon.metrics_port}/metrics").items():
            series.setdefault(name, set()).update(labels)
    finally:
        secured.stop()
    assert rules()
    wrong = []
    for rule in rules():
        # Label values and annotations' templates are not names.
        expr = re.sub(r'"[^"]*"', '""', rule["expr"])
        labels_of_expr: set[str] = set()
        for name, selector in _SELECTOR.findall(_GROUPING.sub("", expr)):
            if name in PROMQL_WORDS or name[0].isdigit():
                continue
            if name == "up":
                labels = TARGET_LABELS | SCRAPE_TARGET_LABELS
            elif name in series:
                labels = series[name] | TARGET_LABELS | SCRAPE_TARGET_LABELS
            else:
                wrong.append(f"{rule['alert']}: no metric {name}")
                continue
            labels_of_expr |= labels
            used = {pair.split("=")[0].rstrip("!~").strip() for pair in selector.split(",") if pair.strip()}
            wrong += [f"{rule['alert']}: {name} has no label {label}" for label in used - labels]
        for grouping in _GROUPING.findall(expr):
            used = {label.strip() for label in grouping.split(",")}
            wrong += [f"{rule['alert']}: no label {label} to group by" for label in used - labels_of_expr]
        templated = set(re.findall(r"\$labels\.(\w+)", str(rule.get("annotations", {}))))
        wrong += [
            f"{rule['alert']}: its annotations name no label {label}" for label in templated - labels_of_expr
        ]
    assert wrong == []


def test_a_scrape_has_no_created_series(daemon, channel):
    # Each counter's and histogram's `_created` is a gauge family of its own in the text format:
    # twice the series, and a timestamp no alert or dashboard here reads.
    health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
    urllib.request.urlopen(f"http://127.0.0.1:{daemon.daemon.http_port}/api/v1/jobs", timeout=10).read()
    text = urllib.request.urlopen(f"http://127.0.0.1:{daemon.daemon.metrics_port}/metrics", timeout=10).read()
    assert b"tessera_rpc_total{" in text and b"tessera_rpc_duration_seconds_count{" in text
    assert b"tessera_http_requests_total{" in text and b"tessera_http_request_duration_seconds_count{" in text
    assert b"_created" not in text


def test_a_rule_on_a_counters_first_increase_fires_at_once_and_pages_no_one():
    # A counter's first sample is where rate() and increase() begin: a series scraped before it
    # moved is needed (the scrape below), and `for` would hold an isolated failure until the
    # window forgot it. increase(...) > 0 over a window of some scrapes fires on one failure, so
    # it is a ticket (warning), never a page: a rule that pages counts a rate, for a while.
    first = [rule for rule in rules() if re.search(r"increase\(.*\)\s*>\s*0\s*$", rule["expr"])]
    assert first
    for rule in first:
        assert re.search(r"increase\([^\[]*\[(1[05]|[2-9][0-9])m\]\)\)?\s*>\s*0\s*$", rule["expr"]), rule
        assert "for" not in rule, rule["alert"]
        assert rule["labels"]["severity"] == "warning", rule["alert"]
    for rule in rules():
        if rule not in first and re.search(r"\b(rate|increase)\(", rule["expr"]):
            assert "for" in rule, rule["alert"]


def test_a_fresh_daemon_shows_the_failure_series_the_alerts_count_at_zero(data_dir: Path):
    # Scraped before any call: each RPC's INTERNAL, DATA_LOSS and UNKNOWN and each HTTP route's
    # 500 are there at 0, so that the first failure is an increase a rule sees.
    daemon = InProcessDaemon(daemon_settings(data_dir)).start()
    try:
        text = urllib.request.urlopen(
            f"http://127.0.0.1:{daemon.daemon.metrics_port}/metrics", timeout=10
        ).read()
    finally:
        daemon.stop()
    samples = [
        sample
        for family in text_string_to_metric_families(text.decode())
        for sample in family.samples
        if sample.name in ("tessera_rpc_total", "tessera_http_requests_total")
    ]
    rpc_codes: dict[tuple[str, str], set[str]] = {}
    http_codes: dict[tuple[str, str, str], set[str]] = {}
    for sample in samples:
        labels = sample.labels
        assert sample.value == 0, sample
        if sample.name == "tessera_rpc_total":
            rpc_codes.setdefault((labels["service"], labels["method"]), set()).add(labels["code"])
        else:
            http_codes.setdefault((labels["listener"], labels["route"], labels["method"]), set()).add(
                labels["code"]
            )
    # One series per code per method served: bounded by the protos, not by callers.
    assert all(codes == {"INTERNAL", "DATA_LOSS", "UNKNOWN"} for codes in rpc_codes.values())
    assert ("tessera.v1.System", "Backup") in rpc_codes
    assert ("grpc.health.v1.Health", "Check") in rpc_codes
    assert all(codes == {"500"} for codes in http_codes.values())
    assert any(route.startswith("/api/") for _, route, _ in http_codes)
    # Latency comes with a method's or route's first call: no buckets of zeros for each.
    assert b"tessera_rpc_duration_seconds_bucket{" not in text
    assert b"tessera_http_request_duration_seconds_bucket{" not in text


def test_a_fresh_replica_shows_the_failure_series_of_every_method_it_serves(daemon, tmp_path: Path):
    # GetServerInfo is the one System method a replica serves, registered after the services.
    replica = InProcessDaemon(
        daemon_settings(tmp_path / "replica", **{"replica.primary": daemon.target})
    ).start()
    try:
        text = urllib.request.urlopen(
            f"http://127.0.0.1:{replica.daemon.metrics_port}/metrics", timeout=10
        ).read()
    finally:
        replica.stop()
    rpc_codes: dict[tuple[str, str], set[str]] = {}
    for family in text_string_to_metric_families(text.decode()):
        for sample in family.samples:
            if sample.name == "tessera_rpc_total":
                key = (sample.labels["service"], sample.labels["method"])
                rpc_codes.setdefault(key, set()).add(sample.labels["code"])
    assert rpc_codes[("tessera.v1.System", "GetServerInfo")] == {"INTERNAL", "DATA_LOSS", "UNKNOWN"}
    assert rpc_codes[("tessera.v1.Inference", "Predict")] == {"INTERNAL", "DATA_LOSS", "UNKNOWN"}


def rpc_counts(daemon: InProcessDaemon, method: str) -> dict[str, float]:
    """`tessera_rpc_total` of the Registry's `method` in a scrape, by code."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{daemon.daemon.metrics_port}/metrics", timeout=10).read()
    return {
        sample.labels["code"]: sample.value
        for family in text_string_to_metric_families(text.decode())
        for sample in family.samples
        if sample.name == "tessera_rpc_total" and sample.labels["method"] == method
    }


def counted_call(daemon: InProcessDaemon, method: str, code: str) -> dict[str, float]:
    """`rpc_counts` once the call answered with `code` is counted: a call is counted as its status
    is sent, so a scrape right after the client read it may come a moment before the count."""
    deadline = time.monotonic() + 30
    while (counts := rpc_counts(daemon, method)).get(code, 0) == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    return counts


@pytest.mark.parametrize("field", ["sha256", "size_bytes"])
def test_an_upload_not_as_its_header_declares_is_the_callers_and_pages_no_one(daemon, channel, caplog, field):
    # What the client sent is not what it declared: its own mistake (or a file that changed as it
    # was read), fixed by sending again; the store lost nothing, so the failure alert stays quiet.
    weights = mlp_weights()
    header = safetensors_header("mlp", weights)
    setattr(header, field, "0" * 64 if field == "sha256" else len(weights) + 1)
    stub = registry_pb2_grpc.RegistryStub(channel)
    with caplog.at_level(logging.INFO):
        error = rpc_error(
            stub.UploadVersionInline, registry_pb2.UploadVersionInlineRequest(header=header, artifact=weights)
        )
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error.details()
    counts = counted_call(daemon, "UploadVersionInline", "INVALID_ARGUMENT")
    assert counts["INVALID_ARGUMENT"] == 1 and counts["DATA_LOSS"] == 0
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []


def backup_gauge(daemon: InProcessDaemon) -> float:
    text = urllib.request.urlopen(f"http://127.0.0.1:{daemon.daemon.metrics_port}/metrics", timeout=10).read()
    (value,) = [
        sample.value
        for family in text_string_to_metric_families(text.decode())
        for sample in family.samples
        if sample.name == "tessera_backup_last_success_timestamp_seconds"
    ]
    return value


def test_the_backup_gauge_is_set_by_a_whole_backup_and_kept_across_a_restart(data_dir: Path, tmp_path: Path):
    daemon = InProcessDaemon(daemon_settings(data_dir)).start()
    try:
        # 0 until the first backup: the age alert fires for a store never backed up.
        assert backup_gauge(daemon) == 0
        before = time.time()
        with tessera.Client(daemon.target) as client:
            client.system.backup(tmp_path / "backup.tar")
        taken = backup_gauge(daemon)
        assert before <= taken <= time.time()
    finally:
        daemon.stop()
    daemon = InProcessDaemon(daemon_settings(data_dir)).start()
    try:
        assert backup_gauge(daemon) == taken
    finally:
        daemon.stop()
    # A store restored from the archive has not been backed up itself: 0 there.
    assert (
        tesserad_main(["restore", str(tmp_path / "backup.tar"), "--data-dir", str(tmp_path / "restored")])
        == 0
    )
    daemon = InProcessDaemon(daemon_settings(tmp_path / "restored")).start()
    try:
        assert backup_gauge(daemon) == 0
    finally:
        daemon.stop()
