"""Checkpoints are content-addressed: two jobs with the same spec and seed write identical
checkpoints, so a job dropping its old checkpoint must not remove a blob another job keeps."""

from __future__ import annotations

import hashlib
from pathlib import Path

from tessera.v1 import job_spec_pb2
from tests.integration.training.conftest import follow, job_spec, submit


def test_dropping_a_checkpoint_keeps_the_identical_one_another_job_holds(training_daemon, training):
    every_epoch = job_spec_pb2.CheckpointPolicy(every_n_epochs=1, keep_last=1)
    short = submit(training, job_spec("mlp", epochs=2, checkpoints=every_epoch))
    follow(training, short.job_id)
    # The same run one epoch longer: its epoch-2 checkpoint is byte for byte the short job's
    # final one, and it drops that checkpoint when it writes its epoch-3 one.
    longer = submit(training, job_spec("mlp", epochs=3, checkpoints=every_epoch))
    follow(training, longer.job_id)

    jobs = training_daemon.daemon.training
    kept = jobs.get(short.job_id).checkpoints
    assert [c.epoch for c in kept] == [2]
    sha256 = kept[0].sha256
    blob = Path(training_daemon.settings.data_dir) / "blobs" / "sha256" / sha256[:2] / sha256[2:]
    assert blob.is_file(), "the short job's checkpoint blob was deleted"
    assert hashlib.sha256(blob.read_bytes()).hexdigest() == sha256
    assert [c.epoch for c in jobs.get(longer.job_id).checkpoints] == [3]
