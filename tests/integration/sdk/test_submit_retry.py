"""client.training.submit and submit_sweep are retried when their answer is lost: the daemon
committed the job (the sweep), the connection was cut before the answer came back, and the retry
gets that job (sweep), not a second."""

from __future__ import annotations

import uuid

import numpy as np
import pytest

import tessera
from tesserad.security.roles import Role
from tests.integration.security.conftest import Tokens
from tests.integration.security.conftest import start_daemon as start_daemon  # token_daemon's
from tests.integration.security.conftest import token_daemon as token_daemon  # tokens-file daemon
from tests.integration.security.conftest import tokens as tokens  # a token per role


def _spec(dataset: str) -> dict[str, object]:
    return {
        "experiment": "sdk-submit-retry",
        "architecture": {"input_shape": [4], "output_size": 2, "mlp": {"hidden_sizes": [8]}},
        "task": "classification",
        "data": {"dataset": dataset, "train_split": "train", "val_split": "val"},
        "epochs": 1,
        "batch_size": 8,
    }


def _push_table(client: tessera.Client) -> str:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(48, 4)).astype(np.float32)
    version = client.datasets.push(
        "table", x=x, y=(x[:, 0] > 0).astype(np.int64), splits={"train": 0.75, "val": 0.25}
    )
    return f"table:{version.version}"


@pytest.fixture
def table(client: tessera.Client) -> str:
    return _push_table(client)


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


def _sweep_spec(dataset: str, *lrs: float) -> dict[str, object]:
    return {
        "base": _spec(dataset),
        "strategy": "grid",
        "parameters": [{"path": "optimizer.lr", "values": {"values": [str(lr) for lr in lrs or (0.01,)]}}],
        "metric": "val_loss",
    }


def test_a_sweep_submit_whose_answer_is_cut_off_is_retried_into_exactly_one_sweep(
    daemon, proxy_to, table
) -> None:
    proxy = proxy_to(daemon.daemon.port)
    retry = tessera.RetryPolicy(attempts=3, initial_backoff_s=0.05, max_backoff_s=0.2)
    with tessera.Client(proxy.target, timeout=30, retry=retry) as client:
        before = [s.id for s in client.training.sweeps()]
        proxy.cut_at_next_answer()
        sweep = client.training.submit_sweep(_sweep_spec(table))
        assert proxy.cuts == 1
        assert [s.id for s in client.training.sweeps()] == [sweep.id, *before]


def test_a_caller_chosen_request_id_answers_a_repeated_sweep_submit_with_the_same_sweep(
    client: tessera.Client, table
) -> None:
    request_id = str(uuid.uuid4())
    first = client.training.submit_sweep(_sweep_spec(table), request_id=request_id)
    again = client.training.submit_sweep(_sweep_spec(table), request_id=request_id)
    assert again.id == first.id
    with pytest.raises(tessera.AlreadyExists, match=f"sweep {first.id!r}"):
        client.training.submit_sweep(_sweep_spec(table, 0.01, 0.02), request_id=request_id)
    with pytest.raises(ValueError, match="pass None for a generated one, or 1 to 64 characters"):
        client.training.submit_sweep(_sweep_spec(table), request_id="has space")


@pytest.mark.parametrize("request_id", ["", "x" * 65, "has space", "slash/ed"])
def test_a_request_id_the_daemon_would_not_keep_is_refused_before_sending(
    client: tessera.Client, table, request_id: str
) -> None:
    with pytest.raises(ValueError, match="pass None for a generated one, or 1 to 64 characters"):
        client.training.submit(_spec(table), request_id=request_id)
    assert list(client.training.jobs(experiment="sdk-submit-retry")) == []


def test_request_ids_are_each_callers_own(token_daemon, tokens: Tokens) -> None:
    target = token_daemon.target
    with (
        tessera.Client(target, token=tokens.token[Role.TRAINER], timeout=30) as trainer,
        tessera.Client(target, token=tokens.token[Role.ADMIN], timeout=30) as admin,
    ):
        table = _push_table(admin)
        request_id = "nightly-2026-12-06"
        mine = trainer.training.submit(_spec(table), request_id=request_id)
        theirs = admin.training.submit(_spec(table), request_id=request_id)
        assert theirs.id != mine.id
        assert trainer.training.submit(_spec(table), request_id=request_id).id == mine.id
        with pytest.raises(tessera.AlreadyExists) as refused:
            admin.training.submit({**_spec(table), "epochs": 2}, request_id=request_id)
        assert f"job {theirs.id!r}" in refused.value.message
        assert mine.id not in refused.value.message
        listed = {j.id for j in admin.training.jobs(experiment="sdk-submit-retry")}
        assert listed == {mine.id, theirs.id}
