"""Triton's logging extension as tesserad honours it: the log settings a client reads and changes
while the daemon runs (LogSettings over gRPC, /v2/logging over HTTP). The transports turn their
messages into a plain {name: value} mapping (None for a setting sent without a value) and back.

- log_info, log_warning, log_error: whether INFO, WARNING and ERROR lines (CRITICAL with ERROR)
  are written.
- log_verbose_level: as Triton's, 0 writes no verbose lines and each level up writes more
  (Triton's docs: level N writes its verbose messages of levels 1 to N). Verbose is DEBUG here, in
  two steps: 1 writes tesserad's own DEBUG lines (its loggers, tesserad.*), 2 and above those of
  every library that logs through Python's logging too (grpc, aiohttp, asyncio, the ONNX
  exporter's onnxscript), which are many and seldom what an operator is after. onnxruntime logs
  through its own C++ logger, not Python's, so no level changes it. The number is kept as sent
  (3 and 5 write what 2 does).
- log_format: every line tesserad writes starts with an ISO 8601 UTC timestamp, in its console
  and its json layout alike, so this is "ISO8601"; Triton's "default" (glog's layout) is refused.
- log_file: tesserad writes to stderr only, so this is ""; a file name is refused.

A change lasts until the daemon stops: it is never written to the settings, and a restart logs
at the configured log_level again. Each change is logged once, at WARNING, with who made it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace

from tesserad.errors import InvalidArgument
from tesserad.logs import BandFilter, levels_now, set_level

log = logging.getLogger(__name__)

LOG_FILE = "log_file"
LOG_INFO = "log_info"
LOG_WARNING = "log_warning"
LOG_ERROR = "log_error"
LOG_VERBOSE_LEVEL = "log_verbose_level"
LOG_FORMAT = "log_format"
ISO8601 = "ISO8601"
UINT32_MAX = 2**32 - 1
# The log_verbose_level from which tesserad's own DEBUG lines are written, and every library's.
VERBOSE_OWN = 1
VERBOSE_ALL = 2

SettingValue = bool | int | str

_TOGGLES = {LOG_INFO: "info", LOG_WARNING: "warning", LOG_ERROR: "error"}
_NAMES = (LOG_FILE, LOG_INFO, LOG_WARNING, LOG_ERROR, LOG_VERBOSE_LEVEL, LOG_FORMAT)


@dataclass(frozen=True)
class LogLevels:
    """Which lines are written: a toggle per band, and the verbose level (see VERBOSE_OWN and
    VERBOSE_ALL)."""

    info: bool = True
    warning: bool = True
    error: bool = True
    verbose_level: int = 0

    @classmethod
    def configured(cls, log_level: str) -> LogLevels:
        """The levels of the log_level setting: it writes its level and every more severe one
        (debug: every library's debug lines too, VERBOSE_ALL)."""
        level = logging.getLevelNamesMapping()[log_level.upper()]
        return cls(
            info=level <= logging.INFO,
            warning=level <= logging.WARNING,
            error=True,
            verbose_level=VERBOSE_ALL if level <= logging.DEBUG else 0,
        )

    @property
    def muted(self) -> frozenset[int]:
        """The bands (see tesserad.logs.band) whose lines are dropped."""
        bands = ((logging.INFO, self.info), (logging.WARNING, self.warning), (logging.ERROR, self.error))
        return frozenset(floor for floor, written in bands if not written)

    @property
    def threshold(self) -> int:
        """The least severe level written by every logger; above CRITICAL when nothing is."""
        if self.verbose_level >= VERBOSE_ALL:
            return logging.DEBUG
        written = [
            floor for floor in (logging.INFO, logging.WARNING, logging.ERROR) if floor not in self.muted
        ]
        return written[0] if written else logging.CRITICAL + 1

    @property
    def own_threshold(self) -> int:
        """The least severe level tesserad's own loggers write: DEBUG from VERBOSE_OWN, else
        NOTSET (`threshold`)."""
        return logging.DEBUG if self.verbose_level >= VERBOSE_OWN else logging.NOTSET

    def settings(self) -> dict[str, SettingValue]:
        """As the protocol names them, every setting."""
        return {
            LOG_FILE: "",
            LOG_INFO: self.info,
            LOG_WARNING: self.warning,
            LOG_ERROR: self.error,
            LOG_VERBOSE_LEVEL: self.verbose_level,
            LOG_FORMAT: ISO8601,
        }


def json_kind(value: object) -> str:
    """How a refusal names what a setting was sent as (the logging and trace extensions')."""
    if value is None:
        return "no value"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    return "a list" if isinstance(value, list) else "an object"


def changed_levels(current: LogLevels, changes: Mapping[str, object]) -> LogLevels:
    """`current` with `changes` applied; InvalidArgument naming the first setting that is unknown,
    of the wrong type or one tesserad cannot honour (nothing is applied then)."""
    levels = current
    for name, value in changes.items():
        if name in _TOGGLES:
            if not isinstance(value, bool):
                raise InvalidArgument(
                    f"log setting {name!r} must be a boolean (true or false), got {json_kind(value)}"
                )
            levels = replace(levels, **{_TOGGLES[name]: value})
        elif name == LOG_VERBOSE_LEVEL:
            if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= UINT32_MAX:
                got = (
                    repr(value)
                    if isinstance(value, int | float) and not isinstance(value, bool)
                    else json_kind(value)
                )
                raise InvalidArgument(
                    f"log setting {name!r} must be a whole number from 0 to {UINT32_MAX} (0: no debug "
                    f"lines, 1: tesserad's, 2 and above: every library's too), got {got}"
                )
            levels = replace(levels, verbose_level=value)
        elif name == LOG_FORMAT:
            _check_format(value)
        elif name == LOG_FILE:
            _check_file(value)
        else:
            raise InvalidArgument(
                f"unknown log setting {name[:80]!r}; the log settings are {', '.join(_NAMES)}"
            )
    return levels


def _check_format(value: object) -> None:
    if not isinstance(value, str):
        raise InvalidArgument(f"log setting {LOG_FORMAT!r} must be a string, got {json_kind(value)}")
    if value != ISO8601:
        raise InvalidArgument(
            f"log setting {LOG_FORMAT!r} cannot be {value[:80]!r} on tesserad: each line it writes "
            f"starts with an ISO 8601 UTC timestamp, its only one ({ISO8601!r}); the line's layout is "
            "its log_format setting, console or json (--log-format, TESSERA_LOG_FORMAT), read at start"
        )


def _check_file(value: object) -> None:
    if not isinstance(value, str):
        raise InvalidArgument(f"log setting {LOG_FILE!r} must be a string, got {json_kind(value)}")
    if value:
        raise InvalidArgument(
            f"log setting {LOG_FILE!r} cannot name a file on tesserad: it writes its log to stderr "
            "only; to keep it in a file, redirect stderr where tesserad starts (`tesserad serve 2>> "
            "tesserad.log`), or read it from journald or `docker logs`, which keep it already"
        )


class LogControl:
    """The daemon's log settings while it runs: read, changed (applied to the process's logging at
    once) and, when the daemon stops, put back as they were before the first change."""

    def __init__(self, log_level: str) -> None:
        self._levels = LogLevels.configured(log_level)
        self._filter = BandFilter()
        # Set by the first change: puts the levels and handlers back as they were.
        self._restore: Callable[[], None] | None = None

    def settings(self) -> dict[str, SettingValue]:
        return self._levels.settings()

    def update(self, changes: Mapping[str, object], who: str) -> dict[str, SettingValue]:
        """Apply `changes` (all or none; see changed_levels) for the caller `who`; the settings
        after them."""
        before = self._levels
        after = changed_levels(before, changes)
        if after == before:
            return after.settings()
        old, new = before.settings(), after.settings()
        message = "log settings changed at runtime, until tesserad stops (its settings are unchanged)"
        fields = {
            "by": who,
            "changes": {name: {"from": old[name], "to": new[name]} for name in old if old[name] != new[name]},
        }
        # Logged under whichever settings write warnings, so muting them still leaves this line.
        if not after.warning:
            log.warning(message, extra=fields)
        self._apply(after)
        if after.warning:
            log.warning(message, extra=fields)
        return new

    def _apply(self, levels: LogLevels) -> None:
        if self._restore is None:
            self._restore = self._saved()
        self._levels = levels
        set_level(levels.threshold, levels.own_threshold)
        self._filter.muted = levels.muted

    def _saved(self) -> Callable[[], None]:
        """Hook the band filter onto the root logger's handlers; what undoes that and the levels."""
        restore_levels = levels_now()
        handlers = [h for h in logging.getLogger().handlers if self._filter not in h.filters]
        for handler in handlers:
            handler.addFilter(self._filter)

        def restore() -> None:
            restore_levels()
            for handler in handlers:
                handler.removeFilter(self._filter)

        return restore

    def close(self) -> None:
        """Put the process's logging back as it was before the first change."""
        if self._restore is not None:
            self._restore()
            self._restore = None
