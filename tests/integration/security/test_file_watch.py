"""The daemon's periodic check of the tokens file, and SIGHUP, in process: the check sees a
permission-only change, an unexpected error in a reload (from the check or a SIGHUP) is
logged with an id without ending the check, and a check that ended with an error does not keep
the stop from closing the store.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import pytest

from tesserad import cli, server
from tesserad.security import Role
from tesserad.security.tokens import TokenTable
from tests.conftest import InProcessDaemon, daemon_settings
from tests.integration.security.conftest import Tokens, bearer

INFO = "/tessera.v1.System/GetServerInfo"


def info(daemon: Any, token: str) -> grpc.StatusCode:
    try:
        daemon.channel().unary_unary(INFO)(b"", metadata=bearer(token), timeout=30)
    except grpc.RpcError as exc:
        return exc.code()
    return grpc.StatusCode.OK


def watched(start_daemon: Any, tokens: Tokens) -> Any:
    return start_daemon(
        **{"security.tokens_file": str(tokens.file), "security.tokens_reload_interval_s": 0.05}
    )


def wait_for_record(
    caplog: pytest.LogCaptureFixture, matches: Callable[[logging.LogRecord], bool], after: int = 0
) -> logging.LogRecord:
    """The first record past the first `after` that `matches`, waiting for it (30 s at most)."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        for record in caplog.records[after:]:
            if matches(record):
                return record
        time.sleep(0.02)
    pytest.fail("the daemon never logged the record waited for")


def reloaded_on_change(record: logging.LogRecord) -> bool:
    return getattr(record, "trigger", None) == "the file changed"


def test_an_unexpected_error_in_a_reload_is_logged_and_the_next_change_is_applied(
    start_daemon, tokens, monkeypatch, caplog
):
    caplog.set_level(logging.INFO)
    daemon = watched(start_daemon, tokens)
    load = TokenTable.load
    failed = []

    def failing_once(path: Path) -> TokenTable:
        # The daemon reads the file off its event loop; the CLI here, on the test's own thread.
        if not failed and threading.current_thread() is not threading.main_thread():
            failed.append(path)
            raise RuntimeError("injected failure")
        return load(path)

    monkeypatch.setattr(TokenTable, "load", failing_once)
    reader, trainer = tokens.token[Role.READER], tokens.token[Role.TRAINER]

    assert cli.main(["tokens", "remove", "reader-holder", "--file", str(tokens.file)]) == 0
    failure = wait_for_record(caplog, lambda r: r.getMessage().startswith("unexpected error applying"))
    assert failure.getMessage().startswith("unexpected error applying the tokens file again")
    assert len(getattr(failure, "error_id", "")) == 12
    assert failure.exc_info is not None and "injected failure" in str(failure.exc_info[1])
    # The tokens last applied stay in use.
    assert info(daemon, reader) == grpc.StatusCode.OK

    assert cli.main(["tokens", "remove", "trainer-holder", "--file", str(tokens.file)]) == 0
    applied = wait_for_record(caplog, lambda r: r.getMessage() == "tokens reloaded")
    assert applied.removed == ["reader-holder", "trainer-holder"]
    assert info(daemon, reader) == grpc.StatusCode.UNAUTHENTICATED
    assert info(daemon, trainer) == grpc.StatusCode.UNAUTHENTICATED


def test_a_permission_only_change_is_seen(start_daemon, tokens, caplog):
    """A file replaced unreadable (mode 000) and then made readable by chmod alone: the chmod
    changes neither size, mtime nor inode, only the ctime. Without root the first reload fails
    and the chmod applies the file; as root (which reads a mode-000 file) the chmod is still seen."""
    caplog.set_level(logging.INFO)
    daemon = watched(start_daemon, tokens)
    reader = tokens.token[Role.READER]
    replacement = tokens.file.with_name("tokens.new")
    replacement.write_bytes(tokens.file.read_bytes())
    assert cli.main(["tokens", "remove", "reader-holder", "--file", str(replacement)]) == 0
    replacement.chmod(0)
    os.replace(replacement, tokens.file)
    wait_for_record(caplog, reloaded_on_change)
    before = len(caplog.records)

    changed = os.stat(tokens.file).st_ctime_ns
    # Within one clock tick the kernel may give the chmod the write's ctime; chmod again until not.
    while os.stat(tokens.file).st_ctime_ns == changed:
        tokens.file.chmod(0o600)

    record = wait_for_record(caplog, reloaded_on_change, after=before)
    assert record.getMessage() in {"tokens reloaded", "tokens file read again: no change"}
    assert info(daemon, reader) == grpc.StatusCode.UNAUTHENTICATED


def test_sighup_logs_an_unexpected_error_with_an_id_each_time_and_keeps_the_tokens(
    start_daemon, tokens, monkeypatch, caplog
):
    caplog.set_level(logging.INFO)
    daemon = start_daemon(
        **{"security.tokens_file": str(tokens.file), "security.tokens_reload_interval_s": 0}
    )

    def failing(path: Path) -> TokenTable:
        raise RuntimeError("injected failure")

    monkeypatch.setattr(TokenTable, "load", failing)
    # The file does not change between the two: each SIGHUP reads it again, and says so.
    for _ in range(2):
        daemon.run(daemon.daemon.reload())
    failures = [r for r in caplog.records if r.getMessage().startswith("unexpected error applying")]
    assert [r.getMessage().split(":")[0] for r in failures] == [
        "unexpected error applying the tokens file again"
    ] * 2
    assert [r.trigger for r in failures] == ["SIGHUP", "SIGHUP"]
    assert len({r.error_id for r in failures}) == 2
    assert all(r.exc_info is not None and "injected failure" in str(r.exc_info[1]) for r in failures)
    # The rest of the SIGHUP still ran, and the tokens last applied stay in use.
    assert any(r.getMessage().startswith("SIGHUP read security.tokens_file again") for r in caplog.records)
    assert info(daemon, tokens.token[Role.READER]) == grpc.StatusCode.OK


def test_a_check_that_ended_with_an_error_is_logged_and_the_stop_still_closes_the_store(
    data_dir, tokens, monkeypatch, caplog
):
    """The stop re-raised the error the check had ended with, and closed neither training,
    inference nor the store after it."""
    settings = {"security.tokens_file": str(tokens.file), "security.tokens_reload_interval_s": 0.05}
    daemon = InProcessDaemon(daemon_settings(data_dir, **settings)).start()

    async def failing(*args: Any) -> None:
        raise RuntimeError("injected failure")

    # What each pass runs; its own errors it logs, so this stands for a fault in the loop itself.
    monkeypatch.setattr(server, "_apply", failing)
    checking = daemon.daemon._files_watch
    assert checking is not None
    deadline = time.monotonic() + 30
    while not checking.done() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert checking.done()

    daemon.stop()
    record = next(r for r in caplog.records if r.getMessage().endswith("had stopped with an error"))
    assert record.getMessage().startswith("the periodic check of the tokens and TLS files")
    assert record.exc_info is not None and "injected failure" in str(record.exc_info[1])
    # The store is closed and the data directory's lock released: another start takes them.
    InProcessDaemon(daemon_settings(data_dir)).start().stop()
