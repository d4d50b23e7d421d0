"""A worker interpreter the daemon cannot run: the job's failure says so, naming the
interpreter and the reason, not the fork server's refused connection."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import grpc
import pytest

from tessera.v1 import training_pb2
from tessera.v1 import training_pb2_grpc as training_grpc
from tests.integration.training.conftest import follow, job_spec, submit, upload_standard_datasets


def _venv_beside(directory: Path) -> Path:
    """A virtual environment's interpreter at a path of its own, a link to this one's, which the
    test can take away while the daemon it started runs (as a change of the daemon's user or of
    the interpreter's mode would take away the daemon's right to run it)."""
    venv = Path(sys.prefix)
    (directory / "bin").mkdir(parents=True)
    (directory / "pyvenv.cfg").write_text((venv / "pyvenv.cfg").read_text())
    (directory / "lib").symlink_to(venv / "lib")
    python = directory / "bin" / "python"
    python.symlink_to(Path(sys.executable).resolve())
    return python


@pytest.mark.parametrize("worker_start", ["forkserver", "spawn"])
def test_a_worker_interpreter_that_cannot_be_run_is_named_in_the_jobs_failure(
    spawn_daemon, tmp_path, worker_start
):
    if sys.prefix == sys.base_prefix:
        pytest.skip("the tests run outside a virtual environment")
    python = _venv_beside(tmp_path / "venv")
    daemon = spawn_daemon(
        "--listen",
        "127.0.0.1:0",
        "--metrics-listen",
        "off",
        "--data-dir",
        str(tmp_path / "data"),
        env={"TESSERA_TRAINING_WORKER_START": worker_start, "TESSERA_TRAINING_CPU_SLOTS": "1"},
        # The daemon runs as the linked interpreter: sys.executable, which workers run, is it.
        launcher=["sh", "-c", f'exec {python} "$@"'],
    )
    address = daemon.wait_serving()
    python.unlink()
    with grpc.insecure_channel(address) as channel:
        upload_standard_datasets(channel)
        training = training_grpc.TrainingStub(channel)
        job = submit(training, job_spec("mlp", epochs=1))
        follow(training, job.job_id)
        ended = training.GetJob(training_pb2.GetJobRequest(job_id=job.job_id))
    assert ended.state == training_pb2.JOB_STATE_FAILED
    assert ended.error.startswith("the job could not start: "), ended.error
    assert str(python) in ended.error and os.strerror(2) in ended.error, ended.error
    assert "Connection refused" not in ended.error
