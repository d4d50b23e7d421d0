"""`tessera sweeps show`: why a trial could not start, and why a sweep failed."""

from __future__ import annotations

import io

import numpy as np
import pytest
from rich.console import Console

from tessera.errors import SweepFailed
from tessera.messages import from_dict, load_toml
from tessera.sweep_commands import finish, trials_table
from tessera.sweeps import Sweep
from tessera.v1 import training_pb2 as S


def shown(sweep: S.Sweep) -> str:
    screen = io.StringIO()
    Console(file=screen, width=200, color_system=None).print(trials_table(sweep, 200).table)
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


def test_a_sweep_that_stopped_starting_trials_says_why_in_its_table_and_its_failure():
    sweep = S.Sweep(
        sweep_id="sweep-1",
        state=S.SWEEP_STATE_FAILED,
        spec=S.SweepSpec(metric="val_loss"),
        trials=[S.SweepTrial(number=0, job_id="job-1", state=S.JOB_STATE_SUCCEEDED)],
        error="could not draw trial 1: boom",
    )
    assert "the sweep failed: could not draw trial 1: boom" in shown(sweep)
    # The CLI's failure of a followed sweep is the SDK's, as Sweep.wait raises it.
    with pytest.raises(SweepFailed, match="sweep sweep-1 ended failed: could not draw trial 1: boom"):
        finish(Sweep(None, sweep))


def test_a_sweeps_values_may_be_toml_numbers_and_booleans(tmp_path):
    spec_file = tmp_path / "sweep.toml"
    spec_file.write_text(
        'strategy = "grid"\nmetric = "val_loss"\n'
        "[[parameters]]\n"
        'path = "optimizer.lr"\n'
        "values = { values = [0.001, 1e-3, 0.1] }\n"
        "[[parameters]]\n"
        'path = "batch_size"\n'
        "values = { values = [16, 32] }\n"
        "[[parameters]]\n"
        'path = "architecture.mlp.batch_norm"\n'
        "values = { values = [true, false] }\n"
        'when = { path = "batch_size", values = [16] }\n'
    )
    spec = from_dict(S.SweepSpec, load_toml(spec_file))
    assert [list(p.values.values) for p in spec.parameters] == [
        ["0.001", "0.001", "0.1"],
        ["16", "32"],
        ["true", "false"],
    ]
    assert list(spec.parameters[2].when.values) == ["16"]


def test_a_sweeps_values_may_be_numpy_numbers():
    # np.float64 is a float whose repr under NumPy 2 is "np.float64(0.001)": sent as that, the
    # daemon would refuse it as no number; np.int64 is no int at all.
    spec = from_dict(
        S.SweepSpec,
        {
            "parameters": [
                {"path": "optimizer.lr", "values": {"values": list(np.logspace(-3, -1, 3))}},
                {"path": "batch_size", "values": {"values": [np.int64(16), np.int32(32)]}},
                {
                    "path": "epochs",
                    "values": {"values": [np.float32(0.5)]},
                    "when": {"path": "batch_size", "values": [np.int64(16)]},
                },
            ]
        },
    )
    assert [list(p.values.values) for p in spec.parameters] == [
        ["0.001", "0.01", "0.1"],
        ["16", "32"],
        ["0.5"],
    ]
    assert list(spec.parameters[2].when.values) == ["16"]


def test_a_sweeps_whole_number_values_past_int64_are_sent_for_the_daemon_to_judge_by_field():
    # 1e20 is a float parameter's value (lr) though no int parameter's: the field decides.
    spec = from_dict(
        S.SweepSpec,
        {"parameters": [{"path": "optimizer.lr", "values": {"values": [16, 99999999999999999999]}}]},
        "sweep",
    )
    assert list(spec.parameters[0].values.values) == ["16", "99999999999999999999"]


def test_a_cancelled_sweep_counts_done_only_the_trials_that_ran():
    sweep = S.Sweep(
        sweep_id="sweep-1",
        state=S.SWEEP_STATE_CANCELLED,
        spec=S.SweepSpec(metric="val_loss", strategy=S.SWEEP_STRATEGY_GRID),
        trials=[
            S.SweepTrial(number=0, job_id="job-1", state=S.JOB_STATE_SUCCEEDED),
            S.SweepTrial(number=1, job_id="job-2", state=S.JOB_STATE_CANCELLED),
            S.SweepTrial(number=2, state=S.JOB_STATE_CANCELLED),
        ],
    )
    assert "sweep sweep-1 (grid): cancelled, 2 trials done" in shown(sweep)


def test_the_trials_table_shows_the_seed_that_repeats_a_drawn_sweep():
    sweep = S.Sweep(
        sweep_id="sweep-1",
        state=S.SWEEP_STATE_RUNNING,
        spec=S.SweepSpec(metric="val_loss", strategy=S.SWEEP_STRATEGY_RANDOM, max_trials=3, seed=815),
    )
    assert "sweep sweep-1 (random, seed 815): running" in shown(sweep)
