"""A training job's pace as `tessera train --follow` shows it: samples/s and the time left.

Both come from the job's own measurements, never from when its events reach the follower:
events arrive in bursts (a store commit, a reconnect, a replay from the start), so a rate over
arrival times swings from a few to thousands of samples/s and the time left with it."""

from __future__ import annotations

from collections import deque

from tessera.events import JobEvent, Progress, StepMetrics

# Step events whose rates make up the rate shown: enough to even out one slow or fast window
# of log_every_n_steps steps, few enough to follow a real change within seconds.
RATE_WINDOWS = 5


class Pace:
    """The samples/s over the job's last RATE_WINDOWS windows of steps, and the time left as the
    job estimates it (its average pace since it started, validation and checkpoints included)."""

    def __init__(self) -> None:
        self._rates: deque[float] = deque(maxlen=RATE_WINDOWS)
        self._eta_s: float | None = None

    def add(self, event: JobEvent) -> None:
        if isinstance(event, StepMetrics) and event.samples_per_s > 0:
            self._rates.append(event.samples_per_s)
        elif isinstance(event, Progress):
            self._eta_s = max(event.eta_s, 0.0)

    @property
    def samples_per_s(self) -> float:
        """0 before the first step event. The windows hold the same number of steps, so their
        samples over their seconds is the harmonic mean of their rates."""
        if not self._rates:
            return 0.0
        return len(self._rates) / sum(1 / rate for rate in self._rates)

    def time_left(self) -> str:
        """ "0:04:30" (as rich shows a time remaining); "" before the job's first estimate."""
        if self._eta_s is None:
            return ""
        whole = round(self._eta_s)
        return f"{whole // 3600}:{whole % 3600 // 60:02d}:{whole % 60:02d}"
