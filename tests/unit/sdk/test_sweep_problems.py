"""`tessera sweeps show`: why a trial could not start."""

from __future__ import annotations

import io

from rich.console import Console

from tessera.sweep_commands import trials_table
from tessera.v1 import training_pb2 as S


def shown(sweep: S.Sweep) -> str:
    screen = io.StringIO()
    Console(file=screen, width=200, color_system=None).print(trials_table(sweep))
    return " ".join(screen.getvalue().split())


def test_the_trials_table_says_why_a_trial_failed_to_start():
    sweep = S.Sweep(
        sweep_id="sweep-1",
        state=S.SWEEP_STATE_FAILED,
        spec=S.SweepSpec(metric="val_loss"),
        trials=[
            S.SweepTrial(number=0, job_id="job-1", state=S.JOB_STATE_SUCCEEDED),
            S.SweepTrial(number=1, state=S.JOB_STATE_FAILED, error="dataset 'gone' v1 does not exist"),
        ],
    )
    assert "trial 1 failed to start: dataset 'gone' v1 does not exist" in shown(sweep)


def test_a_sweep_without_problems_shows_only_its_best():
    sweep = S.Sweep(sweep_id="sweep-1", state=S.SWEEP_STATE_RUNNING, spec=S.SweepSpec(metric="val_loss"))
    assert "failed to start" not in shown(sweep)
