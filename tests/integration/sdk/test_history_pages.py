"""client.training.metric_history joins the daemon's pages into one answer, sync and asyncio."""

from __future__ import annotations

import asyncio

import tessera.aio
from tessera.v1 import training_pb2, training_pb2_grpc


def test_metric_history_joins_pages_sync_and_aio(daemon, client) -> None:
    run_id = client.training.create_run("sdk-history", create_experiment=True).run_id
    steps = [*range(0, 50_000, 2), 50_001, 70_000]  # three default pages
    requests = [
        training_pb2.LogMetricsRequest(
            run_id=run_id,
            points=[training_pb2.MetricPoint(key="loss", value=s / 7, step=s) for s in steps[i : i + 1000]],
        )
        for i in range(0, len(steps), 1000)
    ]
    training_pb2_grpc.TrainingStub(daemon.channel()).LogMetricsStream(iter(requests))

    history = client.training.metric_history(run_id, "loss")
    assert [(p.step, p.value) for p in history.points] == [(s, s / 7) for s in steps]
    assert history.total_points == len(steps) and not history.next_page_token and not history.downsampled
    ranged = client.training.metric_history(run_id, "loss", start_step=10_001, end_step=49_999)
    assert [p.step for p in ranged.points] == [s for s in steps if 10_001 <= s <= 49_999]
    assert [p.step for p in client.training.metric_history(run_id, "loss", end_step=0).points] == [0]
    downsampled = client.training.metric_history(run_id, "loss", max_points=100)
    assert downsampled.downsampled and len(downsampled.points) <= 100

    async def scenario():
        async with tessera.aio.Client(daemon.target) as aio_client:
            return await aio_client.training.metric_history(run_id, "loss")

    assert asyncio.run(scenario()) == history
