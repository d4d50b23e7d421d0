"""Triton's per-model inference metrics (`nv_inference_*`), so that dashboards, alerts and
autoscalers built on Triton's /metrics work against tesserad unchanged.

Names, types, units and labels (`model`, `version`, and `reason` on failures) are Triton's:
counts and cumulative microseconds as counters, the pending requests as a gauge. The figures are the ones the Open
Inference Protocol's ModelStatistics reports for the version (`ServingStats`), read when
/metrics is scraped: nothing more is recorded per request. Unlike ModelStatistics they go on
across GetStats resets (a counter never goes down); each starts at 0 when its version loads and
goes away when it unloads, as Triton's do. A time is the sum of the requests' nanoseconds
in whole microseconds (Triton sums each request's whole microseconds: they differ by under one
microsecond a request). With a response cache, Triton's `nv_cache_*_per_model` counters come
from the same figures, and gauges show the whole cache's use.

Written in Prometheus's text format 0.0.4 by hand, as Triton (prometheus-cpp) writes them:
prometheus_client names every counter `<name>_total`, and OpenMetrics requires that suffix, so
neither can carry Triton's counter names.
"""

from __future__ import annotations

from collections.abc import Callable

from tesserad.serving.pool import ModelPool
from tesserad.serving.stats import Totals

_COUNTERS: tuple[tuple[str, str, Callable[[Totals], int]], ...] = (
    (
        "nv_inference_request_success",
        "Requests answered successfully (a request of several rows counts once)",
        lambda t: t.success,
    ),
    ("nv_inference_count", "Inferences run: rows of the successful requests", lambda t: t.rows),
    ("nv_inference_exec_count", "Batches the model ran", lambda t: t.executions),
    (
        "nv_inference_request_duration_us",
        "Cumulative time of successful requests from arrival to answer, in microseconds",
        lambda t: t.success_ns // 1000,
    ),
    (
        "nv_inference_queue_duration_us",
        "Cumulative time successful requests waited in the queue, in microseconds",
        lambda t: t.queue_ns // 1000,
    ),
    (
        "nv_inference_compute_input_duration_us",
        "Cumulative time decoding and checking requests' inputs, in microseconds",
        lambda t: t.input_ns // 1000,
    ),
    (
        "nv_inference_compute_infer_duration_us",
        "Cumulative time successful requests spent in the model (each request its whole batch's), "
        "in microseconds",
        lambda t: t.compute_ns // 1000,
    ),
    (
        "nv_inference_compute_output_duration_us",
        "Cumulative time encoding requests' answers, in microseconds",
        lambda t: t.output_ns // 1000,
    ),
)
# Triton's per-model response-cache counters, for the versions loaded with response_cache only
# (Triton has them only for models whose config enables the cache).
_CACHE_COUNTERS: tuple[tuple[str, str, Callable[[Totals], int]], ...] = (
    ("nv_cache_num_hits_per_model", "Requests answered from the response cache", lambda t: t.cache_hits),
    (
        "nv_cache_num_misses_per_model",
        "Requests looked up in the response cache and not found there",
        lambda t: t.cache_misses,
    ),
    (
        "nv_cache_hit_duration_per_model",
        "Cumulative time of cache hits (lookup and copy out), in microseconds",
        lambda t: t.cache_hit_ns // 1000,
    ),
    (
        "nv_cache_miss_duration_per_model",
        "Cumulative time of cache misses (lookup and insert), in microseconds",
        lambda t: t.cache_miss_ns // 1000,
    ),
)
# Labelled by reason as well, as newer Triton's: every reason of every version, 0 or not.
_FAILURE = "nv_inference_request_failure"
_FAILURE_HELP = (
    "Requests that failed, by reason: REJECTED (queue full, timed out in the queue, unloaded "
    "first), CANCELED (the caller went away), BACKEND (the model's run failed), OTHER (the "
    "request refused: bad inputs or parameters); a request of several rows counts once"
)
_PENDING = "nv_inference_pending_request_count"
_PENDING_HELP = "Requests queued for the model now, not yet running"


class TritonMetrics:
    """The `nv_inference_*` families of every version loaded in `pool`, as text for /metrics."""

    def __init__(self, pool: ModelPool) -> None:
        self._pool = pool

    def text(self) -> str:
        served = []
        for entry in self._pool.list():
            # Read once: an unload clears it between a check and a use.
            batcher = entry.batcher
            if batcher is not None:
                labels = f'model="{_escape(entry.model)}",version="{entry.version}"'
                served.append((labels, entry.stats.totals(), batcher.queued, entry.cache is not None))
        lines: list[str] = []
        for name, help_text, value in _COUNTERS:
            lines += _family(name, help_text, "counter", [(labels, value(t)) for labels, t, _, _ in served])
        lines += _family(
            _FAILURE,
            _FAILURE_HELP,
            "counter",
            [
                (f'{labels},reason="{reason.name}"', count)
                for labels, t, _, _ in served
                for reason, count in t.failures().items()
            ],
        )
        lines += _family(
            _PENDING, _PENDING_HELP, "gauge", [(labels, pending) for labels, _, pending, _ in served]
        )
        cache = self._pool.response_cache
        if cache is not None:
            cached = [(labels, totals) for labels, totals, _, on in served if on]
            for name, help_text, value in _CACHE_COUNTERS:
                lines += _family(name, help_text, "counter", [(labels, value(t)) for labels, t in cached])
            used, entries = cache.used_bytes, len(cache)
            lines += _family(
                "nv_cache_num_entries", "Answers in the response cache", "gauge", [("", entries)]
            )
            lines += _family(
                "nv_cache_util",
                "Share of the response cache's budget in use [0.0 - 1.0]",
                "gauge",
                [("", used / cache.capacity_bytes)],
            )
            lines += _family(
                "tessera_response_cache_bytes",
                "Bytes of answers in the response cache",
                "gauge",
                [("", used)],
            )
            lines += _family(
                "tessera_response_cache_budget_bytes",
                "The response cache's budget (serving.response_cache_size), in bytes",
                "gauge",
                [("", cache.capacity_bytes)],
            )
        return "\n".join(lines) + "\n"


def _family(name: str, help_text: str, kind: str, values: list[tuple[str, float]]) -> list[str]:
    """One family's lines; a sample with labels "" has none."""
    lines = [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}"]
    return lines + [
        f"{name}{{{labels}}} {value}" if labels else f"{name} {value}" for labels, value in values
    ]


def _escape(value: str) -> str:
    """A label value in the text format (model names are checked at the edge; this keeps any
    name that passed a looser check from breaking the page)."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
