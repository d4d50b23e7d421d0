"""A sweep's last trial ending and the sweep ending are one step to GetSweep: it never shows every
trial ended while the sweep is still RUNNING. The daemon is held between the job's end and its
sweep taking it through tests/integration/training/kill_hook (see there)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import grpc

from tessera.v1 import training_pb2, training_pb2_grpc
from tests.integration.training.conftest import job_spec, sweep_values, upload_standard_datasets, wait_sweep
from tests.integration.training.test_job_finish import kill_hook_env

S = training_pb2


def test_get_sweep_never_shows_every_trial_ended_while_the_sweep_runs(
    spawn_daemon: Any, tmp_path: Path
) -> None:
    release = tmp_path / "release-hold"
    env = {
        "TESSERA_TRAINING_CPU_SLOTS": "1",
        "TESSERA_TRAINING_THREADS_PER_SLOT": "1",
        "TESSERA_TEST_HOLD_RELEASE": str(release),
        **kill_hook_env("hold_sweep_at_trial_end"),
    }
    daemon = spawn_daemon(
        "--listen", "127.0.0.1:0", "--metrics-listen", "off", "--data-dir", str(tmp_path / "data"), env=env
    )
    channel = grpc.insecure_channel(daemon.wait_serving())
    upload_standard_datasets(channel)
    training = training_pb2_grpc.TrainingStub(channel)
    spec = S.SweepSpec(
        base=job_spec("mlp", epochs=1),
        strategy=S.SWEEP_STRATEGY_GRID,
        parameters=[sweep_values("optimizer.lr", "0.01")],
        metric="val_loss",
    )
    sweep_id = training.SubmitSweep(S.SubmitSweepRequest(spec=spec)).sweep_id
    try:
        daemon.wait_for_log("test hold: a trial ended", timeout=120)
        # Read while the hold lasts: the daemon has the request before the hold ends.
        read = training.GetSweep.future(S.GetSweepRequest(sweep_id=sweep_id))
        daemon.wait_for_log("test hold: sweep read")
    finally:
        release.touch()
    sweep = read.result(timeout=120)
    shown = (sweep.state, [t.state for t in sweep.trials])
    assert shown == (S.SWEEP_STATE_SUCCEEDED, [S.JOB_STATE_SUCCEEDED])
    assert sweep.best_job_id == sweep.trials[0].job_id
    assert wait_sweep(training, sweep_id).state == S.SWEEP_STATE_SUCCEEDED
    channel.close()
