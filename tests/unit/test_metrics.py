from __future__ import annotations

from prometheus_client import generate_latest

from tesserad.metrics import DaemonMetrics


def test_rpc_metrics_export_cumulative_buckets_count_sum_and_codes() -> None:
    metrics = DaemonMetrics()
    recorder = metrics.rpc_recorder("tessera.v1.System", "GetServerInfo")
    assert metrics.rpc_recorder("tessera.v1.System", "GetServerInfo") is recorder
    for code, seconds in (("OK", 0.0004), ("OK", 0.0005), ("OK", 0.2), ("INVALID_ARGUMENT", 400.0)):
        recorder.record(code, seconds)
    lines = generate_latest(metrics.registry).decode().splitlines()
    labels = 'method="GetServerInfo",service="tessera.v1.System"'

    def value(name: str, le: str = "") -> str:
        bucket = f'le="{le}",' if le else ""
        start = name + "{" + bucket + labels + "} "
        (line,) = [line for line in lines if line.startswith(start)]
        return line[len(start) :]

    # Buckets are inclusive (le) and cumulative; 400 s is past the last bound, in +Inf only.
    assert value("tessera_rpc_duration_seconds_bucket", "0.00025") == "0.0"
    assert value("tessera_rpc_duration_seconds_bucket", "0.0005") == "2.0"
    assert value("tessera_rpc_duration_seconds_bucket", "0.25") == "3.0"
    assert value("tessera_rpc_duration_seconds_bucket", "300.0") == "3.0"
    assert value("tessera_rpc_duration_seconds_bucket", "+Inf") == "4.0"
    assert value("tessera_rpc_duration_seconds_count") == "4.0"
    assert float(value("tessera_rpc_duration_seconds_sum")) == 0.0004 + 0.0005 + 0.2 + 400.0
    assert not [line for line in lines if "_created" in line]
    assert f'tessera_rpc_total{{code="OK",{labels}}} 3.0' in lines
    assert f'tessera_rpc_total{{code="INVALID_ARGUMENT",{labels}}} 1.0' in lines
