"""Training figures on the daemon's Prometheus registry, read from the jobs when /metrics is scraped.

A collector rather than gauges kept up to date: a job's series exist exactly while it runs,
with nothing to remove when it ends.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry
from prometheus_client.metrics_core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from tesserad.training.jobs import Jobs, TrainingFigures


class TrainingMetrics(Collector):
    def __init__(self, jobs: Jobs, registry: CollectorRegistry) -> None:
        self._jobs = jobs
        registry.register(self)

    def describe(self) -> list[Metric]:
        return _families(None)

    def collect(self) -> Iterator[Metric]:
        return iter(_families(self._jobs.figures()))


def _families(figures: TrainingFigures | None) -> list[Metric]:
    jobs = GaugeMetricFamily("tessera_training_jobs", "Training jobs in each state.", labels=["state"])
    queue = GaugeMetricFamily("tessera_training_queue_length", "Queued training jobs waiting for devices.")
    steps = GaugeMetricFamily(
        "tessera_training_job_steps_per_second",
        "Optimiser steps per second of each running job, over its last second or more.",
        labels=["job_id"],
    )
    samples = GaugeMetricFamily(
        "tessera_training_job_samples_per_second",
        "Training samples per second of each running job, as its worker measured them "
        "(all processes of a distributed job).",
        labels=["job_id"],
    )
    if figures is not None:
        for state, count in figures.jobs_by_state.items():
            jobs.add_metric([state], count)
        queue.add_metric([], figures.queue_length)
        for rate in figures.throughput:
            samples.add_metric([rate.job_id], rate.samples_per_s)
            if rate.steps_per_s is not None:
                steps.add_metric([rate.job_id], rate.steps_per_s)
    return [jobs, queue, steps, samples]
