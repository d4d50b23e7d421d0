"""spec.resume_from as a full resume (the default): the job goes on from the other job's newest
kept checkpoint with its optimiser state, step count, epoch count and metric curve, as an
uninterrupted job would have; a spec that could not go on from it is refused at submit, naming
the field, with nothing stored. spec.resume_weights_only keeps the weights-only start."""

from __future__ import annotations

import pytest

from tessera.cli import EXIT_DAEMON
from tessera.errors import InvalidArgument
from tessera.events import EpochMetrics, LogLine
from tessera.messages import load_toml
from tests.integration.cli.test_cli_train_resume import JOB_SPEC, _cancelled_after_its_first_checkpoint


def _epochs(job) -> dict[int, dict[str, float]]:
    return {event.epoch: event.metrics for event in job.watch() if isinstance(event, EpochMetrics)}


def _history(client, run_id: str, key: str) -> list[tuple[int, float]]:
    return [(point.step, point.value) for point in client.training.metric_history(run_id, key).points]


def _newest_kept(client, job_id: str):
    return max(client.training.job(job_id).info.checkpoints, key=lambda checkpoint: checkpoint.step)


def test_a_full_resume_trains_on_as_the_uninterrupted_job_with_one_curve(
    tessera_cli, client, table_dataset, tmp_path
):
    source = _cancelled_after_its_first_checkpoint(client, tmp_path)
    kept = _newest_kept(client, source)
    epochs = kept.epoch + 2
    straight_spec = tmp_path / "straight.toml"
    straight_spec.write_text(JOB_SPEC.replace("epochs = 200", f"epochs = {epochs}"))
    straight = client.training.submit(load_toml(straight_spec)).wait()

    result = tessera_cli(
        "--json", "train", str(straight_spec), "--resume-from", source, "--set", f"epochs={epochs}"
    )
    assert result.code == 0, result.err
    resumed = client.training.job(result.json()["job_id"]).wait()

    # Epochs kept.epoch + 1 to `epochs`, each as the uninterrupted job's: the Adam moments, the
    # step count and the RNG went on from the checkpoint.
    trained = _epochs(resumed)
    assert sorted(trained) == [kept.epoch + 1, epochs]
    expected = _epochs(straight)
    for epoch, metrics in trained.items():
        assert metrics == pytest.approx(expected[epoch], rel=1e-5, abs=1e-7), epoch
    logs = [event.message for event in resumed.watch() if isinstance(event, LogLine)]
    assert any(f"resumed from job {source}'s epoch {kept.epoch} checkpoint" in m for m in logs), logs
    assert resumed.info.epoch == epochs

    # One curve: the source's points up to the checkpoint, then the resumed job's own.
    resumed_run = resumed.info.run_id
    for key in ("train_loss", "loss"):
        curve = _history(client, resumed_run, key)
        before = [point for point in _history(client, client.training.job(source).info.run_id, key)]
        assert [p for p in curve if p[0] <= kept.step] == [p for p in before if p[0] <= kept.step]
        assert [step for step, _ in curve] == [
            step for step, _ in _history(client, straight.info.run_id, key)
        ]
    params = client.training.run(resumed_run).params
    assert params["resume_from.job"] == source and params["resume_from.epoch"] == str(kept.epoch)
    assert params["resume_from.mode"] == "full"


def test_a_spec_that_cannot_go_on_from_the_checkpoint_is_refused_naming_the_field(
    tessera_cli, client, table_dataset, tmp_path
):
    source = _cancelled_after_its_first_checkpoint(client, tmp_path)
    kept = _newest_kept(client, source)
    spec = tmp_path / "job.toml"
    spec.write_text(JOB_SPEC)
    jobs_before = len(list(client.training.jobs()))
    runs_before = len(list(client.training.runs("resume")))
    refusals = {
        f"epochs={kept.epoch}": (
            f"FAILED_PRECONDITION: spec.epochs: job {source}'s checkpoint is at epoch {kept.epoch}"
        ),
        "optimizer.name=sgd": (
            f"FAILED_PRECONDITION: spec.optimizer.name: 'sgd', but job {source} trained with 'adam'"
        ),
        "batch_size=2": (f"FAILED_PRECONDITION: spec.batch_size: 2, but job {source} trained with 1"),
        "lr_schedule.cosine.min_lr=0": (
            f"FAILED_PRECONDITION: spec.lr_schedule: 'cosine', but job {source} trained with 'constant'"
        ),
    }
    for setting, message in refusals.items():
        refused = tessera_cli("train", str(spec), "--resume-from", source, "--set", setting)
        assert refused.code == EXIT_DAEMON, setting
        assert message in refused.err, refused.err
        assert "resume_weights_only = true" in refused.err, refused.err
    assert len(list(client.training.jobs())) == jobs_before
    assert len(list(client.training.runs("resume"))) == runs_before

    # Weights alone: a fine-tuning-like start takes another optimiser and its own epoch count.
    result = tessera_cli(
        "--json",
        "train",
        str(spec),
        "--resume-from",
        source,
        "--resume-weights-only",
        "--set",
        "optimizer.name=sgd",
        "--set",
        "epochs=1",
    )
    assert result.code == 0, result.err
    job = client.training.job(result.json()["job_id"]).wait()
    assert job.info.spec.resume_weights_only and sorted(_epochs(job)) == [1]
    logs = [event.message for event in job.watch() if isinstance(event, LogLine)]
    assert any(
        f"starting from the weights of job {source}'s epoch {kept.epoch} checkpoint" in m for m in logs
    )
    assert all(step > 0 for step, _ in _history(client, job.info.run_id, "loss"))
    assert _history(client, job.info.run_id, "loss")[0][0] <= 10


def test_resume_weights_only_needs_resume_from(tessera_cli, client, table_dataset, tmp_path):
    spec = tmp_path / "job.toml"
    spec.write_text(JOB_SPEC.replace("epochs = 200", "epochs = 1"))
    refused = tessera_cli("train", str(spec), "--resume-weights-only")
    assert refused.code == EXIT_DAEMON
    assert "INVALID_ARGUMENT: spec.resume_weights_only: it needs resume_from" in refused.err, refused.err
    assert list(client.training.jobs()) == []


def test_a_sweep_base_with_resume_from_is_refused(client, table_dataset, tmp_path):
    source = _cancelled_after_its_first_checkpoint(client, tmp_path)
    base = load_toml_text(tmp_path, JOB_SPEC.replace("epochs = 200", "epochs = 300"))
    base["resume_from"] = source
    sweep = {
        "strategy": "grid",
        "metric": "val_loss",
        "base": base,
        "parameters": [{"path": "optimizer.lr", "values": {"values": ["0.01", "0.02"]}}],
    }
    jobs_before = len(list(client.training.jobs()))
    with pytest.raises(InvalidArgument, match=r"spec\.base\.resume_from: a sweep submits its trials"):
        client.training.submit_sweep(sweep)
    assert len(list(client.training.jobs())) == jobs_before
    assert list(client.training.sweeps()) == []


def load_toml_text(tmp_path, text: str) -> dict:
    path = tmp_path / "base.toml"
    path.write_text(text)
    return dict(load_toml(path))


def test_a_full_resume_from_a_job_that_stopped_at_max_steps_mid_epoch_trains_the_rest_of_that_epoch(
    tessera_cli, client, table_dataset, tmp_path
):
    # 30 training rows in batches of 10: 3 steps per epoch; max_steps 4 stops in epoch 2.
    spec = tmp_path / "job.toml"
    spec.write_text(JOB_SPEC.replace("batch_size = 1", "batch_size = 10\nlog_every_n_steps = 1"))
    cut = client.training.submit({**load_toml(spec), "max_steps": 4}).wait()
    kept = _newest_kept(client, cut.id)
    assert (kept.epoch, kept.step) == (2, 4)
    straight = client.training.submit({**load_toml(spec), "max_steps": 10}).wait()

    result = tessera_cli("--json", "train", str(spec), "--resume-from", cut.id, "--set", "max_steps=10")
    assert result.code == 0, result.err
    resumed = client.training.job(result.json()["job_id"]).wait()
    assert resumed.info.step == 10
    curve, expected = (_history(client, job.info.run_id, "loss") for job in (resumed, straight))
    assert [step for step, _ in curve] == [step for step, _ in expected] == list(range(1, 11))
    assert [value for _, value in curve] == pytest.approx([value for _, value in expected], rel=1e-5)
    # Epoch 2's metrics once, at its end, over all its batches: the cut job's look at its first
    # batch (step 4) is no point of the curve, nor did the rest of it alone make epoch 2's.
    for key in ("train_loss", "val_loss"):
        curve, expected = (_history(client, job.info.run_id, key) for job in (resumed, straight))
        assert [step for step, _ in curve] == [step for step, _ in expected] == [3, 6, 9, 10]
        assert [value for _, value in curve] == pytest.approx([value for _, value in expected], rel=1e-5)

    # epochs = 2 finishes the epoch the checkpoint is part way through.
    finish = tessera_cli("--json", "train", str(spec), "--resume-from", cut.id, "--set", "epochs=2")
    assert finish.code == 0, finish.err
    assert client.training.job(finish.json()["job_id"]).wait().info.step == 6

    # The rest of that epoch's order is drawn from the seed: another seed would skip other rows.
    reseeded = tessera_cli("train", str(spec), "--resume-from", cut.id, "--set", "seed=5")
    assert reseeded.code == EXIT_DAEMON
    assert f"FAILED_PRECONDITION: spec.seed: 5, but job {cut.id} trained with 0" in reseeded.err
