"""client.training.submit is retried when its answer is lost: the daemon committed the job, the
connection was cut before the answer came back, and the retry gets that job, not a second."""

from __future__ import annotations

import uuid

import numpy as np
import pytest

import tessera


def _spec(dataset: str) -> dict[str, object]:
    return {
        "experiment": "sdk-submit-retry",
        "architecture": {"input_shape": [4], "output_size": 2, "mlp": {"hidden_sizes": [8]}},
        "task": "classification",
        "data": {"dataset": dataset, "train_split": "train", "val_split": "val"},
        "epochs": 1,
        "batch_size": 8,
    }


@pytest.fixture
def table(client: tessera.Client) -> str:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(48, 4)).astype(np.float32)
    version = client.datasets.push(
        "table", x=x, y=(x[:, 0] > 0).astype(np.int64), splits={"train": 0.75, "val": 0.25}
    )
    return f"table:{version.version}"


def test_a_submit_whose_answer_is_cut_off_is_retried_into_exactly_one_job(daemon, proxy_to, table) -> None:
    proxy = proxy_to(daemon.daemon.port)
    retry = tessera.RetryPolicy(attempts=3, initial_backoff_s=0.05, max_backoff_s=0.2)
    with tessera.Client(proxy.target, timeout=30, retry=retry) as client:
        assert list(client.training.jobs(experiment="sdk-submit-retry")) == []
        proxy.cut_at_next_answer()
        job = client.training.submit(_spec(table))
        assert proxy.cuts == 1
        assert [j.id for j in client.training.jobs(experiment="sdk-submit-retry")] == [job.id]


def test_a_caller_chosen_request_id_answers_a_repeat_with_the_same_job(client: tessera.Client, table) -> None:
    request_id = str(uuid.uuid4())
    first = client.training.submit(_spec(table), request_id=request_id)
    again = client.training.submit(_spec(table), request_id=request_id)
    assert again.id == first.id
    with pytest.raises(tessera.AlreadyExists, match=f"job {first.id!r}"):
        client.training.submit({**_spec(table), "epochs": 2}, request_id=request_id)
    assert [j.id for j in client.training.jobs(experiment="sdk-submit-retry")] == [first.id]
