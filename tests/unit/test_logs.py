"""The daemon's log level: the ONNX exporter's libraries say only warnings at info, so an
export does not bury the daemon's own lines, and everything at debug."""

from __future__ import annotations

import logging

import pytest

from tesserad.logs import NOISY_LIBRARIES, ConsoleFormatter, configure_logging


@pytest.fixture(autouse=True)
def restore_logging():
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    levels = {name: logging.getLogger(name).level for name in NOISY_LIBRARIES}
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    for name, saved in levels.items():
        logging.getLogger(name).setLevel(saved)


def test_at_info_the_exporter_libraries_log_warnings_and_the_daemon_everything():
    configure_logging("console", "info")
    rewriter = logging.getLogger("onnxscript.rewriter.rules.common._collapse_slices")
    assert not rewriter.isEnabledFor(logging.INFO)
    assert rewriter.isEnabledFor(logging.WARNING)
    assert not logging.getLogger("onnx_ir.passes.common").isEnabledFor(logging.INFO)
    assert logging.getLogger("tesserad.serving.pool").isEnabledFor(logging.INFO)


def test_at_debug_they_say_everything_and_at_error_only_errors():
    configure_logging("console", "debug")
    assert logging.getLogger("onnxscript.rewriter").isEnabledFor(logging.DEBUG)
    configure_logging("json", "error")
    assert not logging.getLogger("onnx_ir").isEnabledFor(logging.WARNING)
    assert logging.getLogger("onnx_ir").isEnabledFor(logging.ERROR)


def test_a_console_line_quotes_a_value_holding_a_line_break_so_it_stays_one_line():
    # A client certificate's common name, say, carried as the caller of an audit line.
    record = logging.LogRecord("tesserad.audit", logging.INFO, __file__, 1, "write call", None, None)
    record.caller = "cert:x\nforged=line"
    line = ConsoleFormatter().format(record)
    assert "\n" not in line and 'caller="cert:x\\nforged=line"' in line
