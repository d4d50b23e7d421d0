"""Structured logging: one JSON object per line for collectors, key=value lines for people.

Code logs with the standard library and passes fields through `extra`:
`log.info("job started", extra={"job_id": job_id, "devices": devices})`. Both formats carry
every extra field; the JSON one is built with `json.dumps`, so quotes and newlines in values
can never break a line.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Callable
from contextvars import ContextVar
from typing import Any

NOISY_LIBRARIES = ("onnxscript", "onnx_ir")
# The daemon's own loggers (tesserad.*), which may log more than the libraries it runs.
OWN_LOGGER = "tesserad"

# Attributes every LogRecord has; anything else on a record came from `extra`.
_STANDARD_ATTRS = set(logging.makeLogRecord({}).__dict__) | {"message", "asctime", "taskName"}


# The X-Request-ID of the HTTP request being answered (tesserad.api.oip_http sets it): every line
# logged meanwhile, in its task or a thread that task hands work to, carries it as request_id.
# Read as the line is written, which is in the logging call's own thread and context.
REQUEST_ID: ContextVar[str | None] = ContextVar("tessera_request_id", default=None)


def record_fields(record: logging.LogRecord) -> dict[str, Any]:
    fields = {k: v for k, v in record.__dict__.items() if k not in _STANDARD_ATTRS}
    request_id = REQUEST_ID.get()
    if request_id is not None:
        fields.setdefault("request_id", request_id)
    return fields


def _timestamp(record: logging.LogRecord) -> str:
    seconds = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
    return f"{seconds}.{int(record.msecs):03d}Z"


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": _timestamp(record),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        entry.update(record_fields(record))
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


class ConsoleFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        fields = " ".join(f"{k}={_console_value(v)}" for k, v in record_fields(record).items())
        line = f"{_timestamp(record)} {record.levelname:<7} {record.name}: {record.getMessage()}"
        if fields:
            line += "  " + fields
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


def _console_value(value: Any) -> str:
    text = str(value)
    # Quoted (escaped) where it could be read as more than one value or line.
    return json.dumps(text) if (" " in text or '"' in text or not text or not text.isprintable()) else text


def configure_logging(log_format: str, level: str) -> None:
    """Route every logger to stderr in the chosen format. Called once, by the composition root."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if log_format == "json" else ConsoleFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    set_level(logging.getLevelNamesMapping()[level.upper()])


def set_level(level: int, own: int = logging.NOTSET) -> None:
    """Make `level` the least severe level logged, the ONNX exporter's libraries included; `own`
    tesserad's own loggers' (below `level`: their debug lines without every library's), NOTSET:
    `level` too."""
    root = logging.getLogger()
    root.setLevel(level)
    logging.getLogger(OWN_LOGGER).setLevel(own)
    # The ONNX exporter's libraries log each graph rewrite at INFO (dozens of lines per export,
    # "The value 'step' is not 1."), which would bury the daemon's own lines; at debug they show.
    for name in NOISY_LIBRARIES:
        logging.getLogger(name).setLevel(
            logging.NOTSET if level < logging.INFO else max(level, logging.WARNING)
        )


def levels_now() -> Callable[[], None]:
    """What puts back the levels `set_level` changes as they are now."""
    loggers = [logging.getLogger(name) for name in ("", OWN_LOGGER, *NOISY_LIBRARIES)]
    saved = [(logger, logger.level) for logger in loggers]

    def restore() -> None:
        for logger, level in saved:
            logger.setLevel(level)

    return restore


def band(level: int) -> int:
    """The band of levels `level` is in: DEBUG (anything below INFO), INFO, WARNING or ERROR
    (CRITICAL included)."""
    for floor in (logging.ERROR, logging.WARNING, logging.INFO):
        if level >= floor:
            return floor
    return logging.DEBUG


class BandFilter(logging.Filter):
    """Drops the records of the bands in `muted`: a level alone can only cut every band below
    one, where a runtime change (Triton's log_info, log_warning, log_error) may mute any."""

    def __init__(self) -> None:
        super().__init__()
        self.muted: frozenset[int] = frozenset()

    def filter(self, record: logging.LogRecord) -> bool:
        return band(record.levelno) not in self.muted
