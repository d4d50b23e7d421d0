"""Triton's log settings mapped onto the daemon's logging: each toggle mutes its band, verbose
level 1 writes tesserad's debug lines and 2 every library's too, log_file and log_format hold what
tesserad does, and a bad setting is refused by name with nothing applied."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest

from tesserad.errors import InvalidArgument
from tesserad.log_settings import LogControl, LogLevels, changed_levels
from tesserad.logs import NOISY_LIBRARIES, OWN_LOGGER, configure_logging

DEFAULTS = {
    "log_file": "",
    "log_info": True,
    "log_warning": True,
    "log_error": True,
    "log_verbose_level": 0,
    "log_format": "ISO8601",
}


class Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def handler() -> Iterator[Collect]:
    """The daemon's logging as configure_logging leaves it at info, with a handler that keeps
    what would be written; put back afterwards."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    levels = {name: logging.getLogger(name).level for name in (OWN_LOGGER, *NOISY_LIBRARIES)}
    configure_logging("console", "info")
    collect = Collect()
    root.handlers[:] = [collect]
    yield collect
    root.handlers[:] = handlers
    root.setLevel(level)
    for name, saved in levels.items():
        logging.getLogger(name).setLevel(saved)


def written(handler: Collect, *levels: int) -> list[int]:
    """Which of `levels` a tesserad logger's line at that level gets written at."""
    handler.records.clear()
    logger = logging.getLogger("tesserad.serving.pool")
    for level in levels:
        logger.log(level, "line")
    return [r.levelno for r in handler.records if r.name == "tesserad.serving.pool"]


ALL = (logging.DEBUG, logging.INFO, logging.WARNING, logging.ERROR, logging.CRITICAL)


@pytest.mark.parametrize(
    ("log_level", "expected"),
    [
        ("debug", {"log_verbose_level": 2}),
        ("info", {}),
        ("warning", {"log_info": False}),
        ("error", {"log_info": False, "log_warning": False}),
    ],
)
def test_the_configured_log_level_reads_as_triton_settings(log_level, expected):
    assert LogControl(log_level).settings() == {**DEFAULTS, **expected}


def test_each_toggle_mutes_its_band_and_the_verbose_level_adds_debug(handler):
    control = LogControl("info")
    try:
        assert written(handler, *ALL) == list(ALL[1:])
        control.update({"log_info": False}, "alice")
        assert written(handler, *ALL) == [logging.WARNING, logging.ERROR, logging.CRITICAL]
        # A band between two written ones: a level alone could not say it.
        control.update({"log_info": True, "log_warning": False}, "alice")
        assert written(handler, *ALL) == [logging.INFO, logging.ERROR, logging.CRITICAL]
        control.update({"log_info": False, "log_error": False, "log_verbose_level": 2}, "alice")
        assert written(handler, *ALL) == [logging.DEBUG]
        assert control.settings() == {
            **DEFAULTS,
            "log_info": False,
            "log_warning": False,
            "log_error": False,
            "log_verbose_level": 2,
        }
        control.update({"log_verbose_level": 0}, "alice")
        assert written(handler, *ALL) == []
    finally:
        control.close()
    assert written(handler, *ALL) == list(ALL[1:])


@pytest.mark.parametrize(
    ("verbose_level", "threshold", "own_threshold"),
    [
        (0, logging.INFO, logging.NOTSET),
        (1, logging.INFO, logging.DEBUG),
        (2, logging.DEBUG, logging.DEBUG),
        (7, logging.DEBUG, logging.DEBUG),
    ],
)
def test_each_verbose_level_up_writes_more_debug_lines(verbose_level, threshold, own_threshold):
    levels = LogLevels(verbose_level=verbose_level)
    assert (levels.threshold, levels.own_threshold) == (threshold, own_threshold)
    # Whatever bands are muted, verbose level 1 writes tesserad's debug lines alone.
    muted = LogLevels(info=False, warning=False, error=False, verbose_level=verbose_level)
    assert muted.own_threshold == own_threshold
    assert muted.threshold == (logging.DEBUG if verbose_level >= 2 else logging.CRITICAL + 1)


def test_verbose_level_1_writes_tesserads_debug_lines_and_2_every_librarys(handler):
    control = LogControl("info")
    library = logging.getLogger("aiohttp.server")
    rewriter = logging.getLogger("onnxscript.rewriter")
    assert not rewriter.isEnabledFor(logging.INFO)
    try:
        control.update({"log_verbose_level": 1}, "alice")
        assert written(handler, *ALL) == list(ALL)
        assert not library.isEnabledFor(logging.DEBUG) and library.isEnabledFor(logging.INFO)
        # The exporter's libraries stay at WARNING: their INFO lines bury the daemon's own.
        assert not rewriter.isEnabledFor(logging.INFO)
        assert control.settings()["log_verbose_level"] == 1
        control.update({"log_verbose_level": 2}, "alice")
        assert written(handler, *ALL) == list(ALL)
        assert library.isEnabledFor(logging.DEBUG) and rewriter.isEnabledFor(logging.DEBUG)
        assert control.settings()["log_verbose_level"] == 2
        control.update({"log_verbose_level": 0}, "alice")
        assert written(handler, *ALL) == list(ALL[1:])
    finally:
        control.close()


def test_debug_lets_the_exporter_libraries_speak_and_closing_puts_their_levels_back(handler):
    control = LogControl("info")
    rewriter = logging.getLogger("onnxscript.rewriter")
    assert not rewriter.isEnabledFor(logging.INFO)
    control.update({"log_verbose_level": 2}, "alice")
    assert rewriter.isEnabledFor(logging.DEBUG)
    control.close()
    assert not rewriter.isEnabledFor(logging.INFO)
    assert logging.getLogger().level == logging.INFO
    assert logging.getLogger(OWN_LOGGER).level == logging.NOTSET
    assert not [f for h in logging.getLogger().handlers for f in h.filters]


def test_what_it_reads_it_takes_back_unchanged_and_logs_nothing(handler):
    control = LogControl("info")
    assert control.update(control.settings(), "alice") == DEFAULTS
    assert handler.records == []
    assert control.update({}, "alice") == DEFAULTS


def test_a_change_is_logged_once_at_warning_with_who_made_it(handler):
    control = LogControl("info")
    try:
        control.update({"log_info": False, "log_error": True}, "alice")
        (record,) = handler.records
        assert record.levelno == logging.WARNING and "until tesserad stops" in record.getMessage()
        assert record.by == "alice"  # type: ignore[attr-defined]
        assert record.changes == {"log_info": {"from": True, "to": False}}  # type: ignore[attr-defined]
        # Muting warnings still writes the line that says so.
        handler.records.clear()
        control.update({"log_warning": False}, "bob")
        (record,) = handler.records
        assert record.by == "bob"  # type: ignore[attr-defined]
        handler.records.clear()
        control.update({"log_warning": True}, "bob")
        assert len(handler.records) == 1
    finally:
        control.close()


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"log_warnings": True}, "unknown log setting 'log_warnings'; the log settings are log_file,"),
        ({"log_info": "yes"}, "log setting 'log_info' must be a boolean (true or false), got a string"),
        ({"log_error": 1}, "log setting 'log_error' must be a boolean (true or false), got a number"),
        ({"log_warning": None}, "log setting 'log_warning' must be a boolean (true or false), got no value"),
        ({"log_verbose_level": True}, "'log_verbose_level' must be a whole number from 0 to 4294967295"),
        ({"log_verbose_level": -1}, "'log_verbose_level' must be a whole number from 0 to 4294967295"),
        ({"log_verbose_level": 2**32}, "got 4294967296"),
        ({"log_verbose_level": 1.5}, "got 1.5"),
        ({"log_verbose_level": [1]}, "got a list"),
        ({"log_format": "default"}, "log setting 'log_format' cannot be 'default' on tesserad"),
        ({"log_format": {}}, "log setting 'log_format' must be a string, got an object"),
        ({"log_file": "/tmp/t.log"}, "log setting 'log_file' cannot name a file on tesserad"),
        ({"log_file": False}, "log setting 'log_file' must be a string, got a boolean"),
    ],
)
def test_a_bad_setting_is_refused_by_name(changes, message):
    with pytest.raises(InvalidArgument) as refused:
        changed_levels(LogLevels(), changes)
    assert message in refused.value.message


def test_the_refusals_say_what_tesserad_does_instead():
    with pytest.raises(InvalidArgument) as refused:
        changed_levels(LogLevels(), {"log_file": "x.log"})
    assert "stderr" in refused.value.message and "2>>" in refused.value.message
    with pytest.raises(InvalidArgument) as refused:
        changed_levels(LogLevels(), {"log_format": "default"})
    assert "ISO 8601" in refused.value.message and "TESSERA_LOG_FORMAT" in refused.value.message


def test_a_request_with_one_bad_setting_changes_nothing(handler):
    control = LogControl("info")
    with pytest.raises(InvalidArgument):
        control.update({"log_info": False, "log_file": "x.log"}, "alice")
    assert control.settings() == DEFAULTS
    assert written(handler, logging.INFO) == [logging.INFO]
    control.close()
