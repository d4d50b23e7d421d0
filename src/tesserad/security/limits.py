"""Admission limits on calls in flight; a refused call names the setting that raises the limit."""

from __future__ import annotations

from tesserad.errors import ResourceExhausted


class ConcurrencyGate:
    """Counts calls in flight against `limit`.

    Used from one event loop only (the daemon's, where the grpc.aio server and the HTTP
    listeners run), so a plain counter is exact.
    """

    def __init__(self, limit: int, setting: str, what: str) -> None:
        self.limit = limit
        self.in_flight = 0
        self._setting = setting
        self._what = what

    def enter(self) -> None:
        """Count one more call, or raise ResourceExhausted when the limit is reached."""
        if self.in_flight >= self.limit:
            raise ResourceExhausted(
                f"too many {self._what} at once: {self._setting} = {self.limit} is reached; retry "
                f"later, or raise {self._setting} (env TESSERA_{self._setting.replace('.', '_').upper()})"
            )
        self.in_flight += 1

    def leave(self) -> None:
        self.in_flight -= 1
