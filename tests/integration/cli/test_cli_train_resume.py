"""`tessera train SPEC --resume-from JOB` (spec.resume_from): a job that goes on from another
job's newest kept checkpoint, a cancelled one's included (with --resume-weights-only, from its
weights alone), and the refusals of a job that is not there, has none kept, or whose
architecture differs."""

from __future__ import annotations

import pytest

from tessera.cli import EXIT_DAEMON
from tessera.errors import Unimplemented
from tessera.events import CheckpointSaved, JobState, LogLine
from tessera.messages import load_toml
from tessera.v1 import job_spec_pb2

JOB_SPEC = """\
experiment = "resume"
task = "classification"
epochs = 200
batch_size = 1
data = { dataset = "table", val_split = "val" }

[architecture]
input_shape = [4]
output_size = 2
mlp = { hidden_sizes = [8] }
"""


def _cancelled_after_its_first_checkpoint(client, tmp_path, text: str = JOB_SPEC) -> str:
    spec = tmp_path / "long.toml"
    spec.write_text(text)
    job = client.training.submit(load_toml(spec))
    for event in job.watch(timeout=120):
        if isinstance(event, CheckpointSaved):
            break
    job.cancel()
    job.wait(check=False)
    assert job.state == JobState.CANCELLED and job.info.checkpoints_kept >= 1
    return job.id


def test_train_resume_weights_only_from_a_cancelled_job_starts_from_its_kept_checkpoints_weights(
    tessera_cli, client, table_dataset, tmp_path
):
    source = _cancelled_after_its_first_checkpoint(client, tmp_path)
    kept = max(client.training.job(source).info.checkpoints, key=lambda checkpoint: checkpoint.step)
    spec = tmp_path / "again.toml"
    spec.write_text(JOB_SPEC.replace("epochs = 200", "epochs = 1"))
    result = tessera_cli("--json", "train", str(spec), "--resume-from", source, "--resume-weights-only")
    assert result.code == 0, result.err
    job = client.training.job(result.json()["job_id"])
    job.wait()
    assert job.info.spec.resume_from == source
    logs = [event.message for event in job.watch() if isinstance(event, LogLine)]
    assert any(
        f"starting from the weights of job {source}'s epoch {kept.epoch} checkpoint" in m for m in logs
    )
    params = client.training.run(job.info.run_id).params
    assert params["resume_from.job"] == source and params["resume_from.epoch"] == str(kept.epoch)
    assert params["resume_from.mode"] == "weights"


def test_train_resume_from_refuses_a_job_not_there_one_without_checkpoints_and_another_architecture(
    tessera_cli, client, table_dataset, tmp_path
):
    spec = tmp_path / "job.toml"
    spec.write_text(JOB_SPEC.replace("epochs = 200", "epochs = 1"))
    absent = tessera_cli("train", str(spec), "--resume-from", "job-absent")
    assert absent.code == EXIT_DAEMON
    assert "tessera: NOT_FOUND: spec.resume_from: job 'job-absent' does not exist" in absent.err

    keeps_none = tessera_cli("--json", "train", str(spec), "--set", "checkpoints.retain_latest=0")
    assert keeps_none.code == 0, keeps_none.err
    ended = client.training.job(keeps_none.json()["job_id"])
    ended.wait()
    none_kept = tessera_cli("train", str(spec), "--resume-from", ended.id)
    assert none_kept.code == EXIT_DAEMON
    assert f"FAILED_PRECONDITION: spec.resume_from: job {ended.id} kept no checkpoint" in none_kept.err

    source = _cancelled_after_its_first_checkpoint(client, tmp_path)
    wider = tessera_cli(
        "train", str(spec), "--resume-from", source, "--set", "architecture.mlp.hidden_sizes=[16]"
    )
    assert (
        wider.code == EXIT_DAEMON
        and "INVALID_ARGUMENT" in wider.err
        and "spec.resume_from: tensor " in wider.err
    )
    assert f"in job {source}'s checkpoint but [16, 4] in this job's architecture" in wider.err


def test_submit_cancels_a_job_whose_daemon_dropped_resume_from_and_says_to_upgrade_it(
    client, table_dataset, tmp_path
):
    # A tesserad older than spec.resume_from answers the job it made without the field: the
    # answer of a submit without it, checked against a spec sent with it, is that answer.
    spec = tmp_path / "job.toml"
    spec.write_text(JOB_SPEC)
    dropped = client.training.submit(load_toml(spec))
    sent = job_spec_pb2.JobSpec()
    sent.CopyFrom(dropped.info.spec)
    sent.resume_from = "job-elsewhere"
    with pytest.raises(
        Unimplemented, match=r"does not know resume_from \(older than the client\); upgrade it"
    ):
        client.training._answered(sent, dropped.info).run(client.training._conn)
    dropped.wait(check=False)
    assert dropped.state == JobState.CANCELLED


def test_a_fine_tuned_jobs_spec_goes_on_from_its_checkpoint_keeping_init_froms_freeze_and_head(
    tessera_cli, client, table_dataset, tmp_path
):
    base = tmp_path / "base.toml"
    base.write_text(JOB_SPEC.replace("epochs = 200", 'epochs = 1\nregister_as = { model = "base" }'))
    client.training.submit(load_toml(base)).wait()
    tuned = tmp_path / "tuned.toml"
    tuned.write_text(
        JOB_SPEC.replace(
            "epochs = 200", 'init_from = { model = "base", version = 1 }\nfreeze = ["1.*"]\nepochs = 200'
        ).replace('experiment = "resume"', 'experiment = "tuned"')
    )
    source = _cancelled_after_its_first_checkpoint(client, tmp_path, tuned.read_text())
    kept = max(client.training.job(source).info.checkpoints, key=lambda checkpoint: checkpoint.step)
    shown = tessera_cli("jobs", "show", source, "--spec")
    assert shown.code == 0, shown.err
    assert "init_from" in shown.out
    more = tmp_path / "more.toml"
    more.write_text(shown.out)
    result = tessera_cli(
        "--json", "train", str(more), "--resume-from", source, "--set", f"epochs={kept.epoch + 1}"
    )
    assert result.code == 0, result.err
    job = client.training.job(result.json()["job_id"]).wait()
    logs = [event.message for event in job.watch() if isinstance(event, LogLine)]
    assert any(f"resumed from job {source}'s epoch {kept.epoch} checkpoint" in m for m in logs)
    assert job.info.epoch == kept.epoch + 1
    assert client.training.run(job.info.run_id).params["resume_from.job"] == source
    assert list(job.info.spec.freeze) == ["1.*"] and job.info.spec.init_from.model == "base"
