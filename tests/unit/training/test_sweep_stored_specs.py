"""A sweep stored by an older daemon reads as today's specs: what then meant a default or off is
dropped as the record is decoded, so a trial's start submits its spec as the sweep holds it."""

from __future__ import annotations

import copy
from typing import Any

from tesserad.training.search_space import SweepParameter
from tesserad.training.sweeps import AshaSettings, Sweep, Trial, decode_sweep, encode_sweep, encode_trial

# What an older daemon stored: early stopping of patience 0 (then off), and 0s that meant their
# field's default (then not optional), in the plain form and in the stored one (int64 as text).
OLD_RAW: dict[str, Any] = {
    "epochs": 2,
    "batch_size": 0,
    "optimizer": {"name": "adam", "lr": 0.01, "beta1": 0.0},
    "early_stopping": {"metric": "val_loss", "patience": 0},
    "checkpoints": {"keep_last": 0, "every_n_epochs": 1},
}
OLD_DOCUMENT: dict[str, Any] = {
    "epochs": "2",
    "batch_size": "0",
    "optimizer": {"name": "adam", "lr": 0.01, "beta1": 0.0},
    "early_stopping": {"metric": "val_loss"},
    "checkpoints": {"keep_last": "0", "every_n_epochs": "1"},
}
TODAYS_RAW: dict[str, Any] = {
    "epochs": 2,
    "optimizer": {"name": "adam", "lr": 0.01},
    "checkpoints": {"every_n_epochs": 1},
}
TODAYS_DOCUMENT: dict[str, Any] = {
    "epochs": "2",
    "optimizer": {"name": "adam", "lr": 0.01},
    "checkpoints": {"every_n_epochs": "1"},
}


def _sweep(zero_is_a_value: bool, parameters: list[SweepParameter]) -> Sweep:
    return Sweep(
        sweep_id="sweep-01old",
        strategy="grid",
        metric="val_loss",
        mode="min",
        max_concurrent=1,
        asha=AshaSettings(0, 0),
        document={},
        state="running",
        created_at=1.0,
        created_by="anonymous",
        best_job_id="",
        rungs={},
        base=copy.deepcopy(OLD_RAW),
        parameters=parameters,
        zero_is_a_value=zero_is_a_value,
    )


def _stored(sweep: Sweep, trials: int) -> tuple[bytes, list[bytes]]:
    rows = [
        encode_trial(
            Trial({"batch_size": "0"}, copy.deepcopy(OLD_RAW), copy.deepcopy(OLD_DOCUMENT), number=number)
        )
        for number in range(trials)
    ]
    return encode_sweep(sweep), rows


def test_an_old_record_decodes_with_its_base_and_trials_in_todays_form() -> None:
    parameters = [SweepParameter("batch_size", values=["0", "8"])]
    record, rows = _stored(_sweep(False, parameters), trials=3)
    sweep = decode_sweep(record, rows)
    assert sweep.base == TODAYS_RAW
    assert [(t.raw, t.document) for t in sweep.trials] == [(TODAYS_RAW, TODAYS_DOCUMENT)] * 3
    # The values stay as given (a trial's params, the space): there is no value for "unset", and
    # each trial drawn from the space is read so as it is built.
    assert [t.params for t in sweep.trials] == [{"batch_size": "0"}] * 3
    assert (sweep.parameters, sweep.zero_is_a_value) == (parameters, False)
    # Read twice, the same: each read upgrades only what it decoded.
    assert decode_sweep(record, rows) == sweep


def test_an_old_base_keeps_the_early_stopping_a_parameter_sets() -> None:
    # Its patience 0 is the drawn value's to replace: the section's metric stays for a trial that
    # draws patience 2, and one that draws 0 trains with it off.
    record, rows = _stored(_sweep(False, [SweepParameter("early_stopping.patience", values=["0", "2"])]), 0)
    sweep = decode_sweep(record, rows)
    assert sweep.base == {**TODAYS_RAW, "early_stopping": {"metric": "val_loss", "patience": 0}}


def test_a_record_of_today_keeps_a_0_as_a_value() -> None:
    record, rows = _stored(_sweep(True, [SweepParameter("optimizer.beta1", values=["0", "0.5"])]), 1)
    sweep = decode_sweep(record, rows)
    assert (sweep.base, sweep.trials[0].raw, sweep.trials[0].document) == (OLD_RAW, OLD_RAW, OLD_DOCUMENT)
