"""How `tessera train --follow` shows a job's pace: samples/s and the time left come from the
job's own measurements, never from when its events arrive, which is in bursts (a commit, a
reconnect, a replay from the start), with validation and checkpoints between epochs."""

from __future__ import annotations

import io

from rich.console import Console

from tessera.events import EpochMetrics, JobEvent, Progress, StepMetrics
from tessera.follow import Curves, _live
from tessera.job_progress import Pace

TOTAL = 3900


def _step(seq: int, step: int, samples_per_s: float) -> StepMetrics:
    return StepMetrics(
        seq=seq,
        time=None,
        attempt=1,
        epoch=step // 65 + 1,
        step=step,
        loss=0.5,
        lr=1e-3,
        samples_per_s=samples_per_s,
    )


def _progress(seq: int, step: int, eta_s: float) -> Progress:
    return Progress(
        seq=seq, time=None, attempt=1, fraction=step / TOTAL, eta_s=eta_s, step=step, total_steps=TOTAL
    )


def _recorded(rates: list[float], etas: list[float]) -> list[JobEvent]:
    """A 60-epoch job's events every 10 steps, an epoch's metrics after step 60."""
    events: list[JobEvent] = []
    for i, (rate, eta) in enumerate(zip(rates, etas, strict=True)):
        step = 10 * (i + 1)
        events += [_step(len(events) + 1, step, rate), _progress(len(events) + 2, step, eta)]
        if step == 60:
            events.append(
                EpochMetrics(
                    seq=len(events) + 1, time=None, attempt=1, epoch=1, step=65, metrics={}, duration_s=2.0
                )
            )
    return events


def test_the_bar_shows_the_jobs_estimate_of_the_time_left_however_its_events_arrive():
    # All at once, as a burst or a replay brings them: the bar's own clock sees no time pass.
    events = _recorded([500.0] * 8, [300.0, 298.0, 290.0, 285.0, 280.0, 275.0, 272.0, 270.0])
    out = io.StringIO()
    _live(events, Curves(), Console(file=out, width=160, force_terminal=False))
    last = out.getvalue().splitlines()[-1]
    assert "step 80/3900" in last and "500 samples/s" in last and "0:04:30" in last, last


def test_samples_per_s_is_the_rate_over_the_last_windows_of_steps():
    pace = Pace()
    for seq, rate in enumerate([238.0, 3183.0, 543.0, 520.0, 560.0]):
        pace.add(_step(seq, 10 * (seq + 1), rate))
    # Five windows of 10 steps each: their samples over their seconds, not the last window's.
    assert round(pace.samples_per_s) == round(5 / sum(1 / r for r in (238.0, 3183.0, 543.0, 520.0, 560.0)))
    for seq in range(5, 10):
        pace.add(_step(seq, 10 * (seq + 1), 500.0))
    assert round(pace.samples_per_s) == 500


def test_the_time_left_is_the_last_estimate_and_zero_once_done():
    pace = Pace()
    assert pace.time_left() == ""
    pace.add(_progress(1, 310, 263.0))
    assert pace.time_left() == "0:04:23"
    pace.add(_progress(2, TOTAL, 0.0))
    assert pace.time_left() == "0:00:00"
