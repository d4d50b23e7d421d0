"""A replica whose primary is away says so once at WARNING, in the daemon's words (the setting
that names the primary), then at most once a minute with how long it has been away, and says
when the primary is back; each attempt in between is logged at DEBUG only."""

from __future__ import annotations

import logging
import socket
from pathlib import Path

import pytest
from test_replicas import eventually

from tesserad.api import follow
from tests.conftest import InProcessDaemon, daemon_settings


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _follow_records(caplog: pytest.LogCaptureFixture, level: int) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == follow.__name__ and r.levelno == level]


def _attempts(caplog: pytest.LogCaptureFixture, count: int) -> None:
    assert len(_follow_records(caplog, logging.DEBUG)) >= count


def test_a_primary_away_is_warned_of_once_and_its_return_is_said(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    listen = f"127.0.0.1:{_free_port()}"
    caplog.set_level(logging.DEBUG, logger=follow.__name__)
    replica = InProcessDaemon(daemon_settings(tmp_path / "replica", **{"replica.primary": listen})).start()
    primary = None
    try:
        eventually(lambda: _attempts(caplog, 3), timeout=60)
        warnings = _follow_records(caplog, logging.WARNING)
        assert [r.getMessage() for r in warnings] == [
            "lost the primary; serving what this replica holds until it is back (replica.primary, "
            "--follow, names it)"
        ]
        said = warnings[0].__dict__
        assert said["primary"] == listen
        assert said["cause"] == "nothing listens there (connection refused)"
        text = " ".join(str(value) for value in said.values())
        assert "make run" not in text and "target=" not in text

        primary = InProcessDaemon(daemon_settings(tmp_path / "primary", listen=listen)).start()

        def back() -> None:
            assert [r.getMessage() for r in _follow_records(caplog, logging.INFO)][:1] == [
                "the primary is back"
            ]

        eventually(back, timeout=60)
    finally:
        replica.stop()
        if primary is not None:
            primary.stop()


def test_a_primary_that_stays_away_is_warned_of_again_with_how_long(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(follow, "LOST_REPEAT_S", 0.0)  # each attempt past the first says it again
    caplog.set_level(logging.DEBUG, logger=follow.__name__)
    listen = f"127.0.0.1:{_free_port()}"
    replica = InProcessDaemon(daemon_settings(tmp_path / "replica", **{"replica.primary": listen})).start()
    try:

        def warned_twice() -> None:
            assert len(_follow_records(caplog, logging.WARNING)) >= 2

        eventually(warned_twice, timeout=60)
        warnings = _follow_records(caplog, logging.WARNING)
        assert warnings[1].getMessage() == "the primary is still away; serving what this replica holds"
        assert isinstance(warnings[1].__dict__["away_s"], int)
    finally:
        replica.stop()


def test_a_primary_lost_again_after_it_answered_with_a_refusal_is_warned_of_anew(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A refusal is an answer: the primary was back, so its next loss is a new one, warned of
    as such, not counted from the first loss."""
    monkeypatch.setattr(follow, "LASTING_RETRY_S", 0.2)  # a refused watch is tried again soon
    caplog.set_level(logging.DEBUG, logger=follow.__name__)
    listen = f"127.0.0.1:{_free_port()}"

    def said(level: int) -> list[str]:
        """What the replica said of its primary (the refusing daemon's own follower logs too)."""
        return [r.getMessage() for r in _follow_records(caplog, level) if r.__dict__.get("primary") == listen]

    replica = InProcessDaemon(daemon_settings(tmp_path / "replica", **{"replica.primary": listen})).start()
    refusing = None
    try:
        eventually(lambda: _attempts(caplog, 1), timeout=60)

        # A replica at the primary's address has no registry of changes to follow: it refuses.
        elsewhere = {"replica.primary": f"127.0.0.1:{_free_port()}"}
        refusing = InProcessDaemon(daemon_settings(tmp_path / "refusing", listen=listen, **elsewhere)).start()

        def refused() -> None:
            assert "the primary refused this replica" in said(logging.ERROR)

        eventually(refused, timeout=60)
        refusing.stop()
        refusing = None

        def lost_twice() -> None:
            assert (
                said(logging.WARNING)
                == [
                    "lost the primary; serving what this replica holds until it is back (replica.primary, "
                    "--follow, names it)"
                ]
                * 2
            )

        eventually(lost_twice, timeout=60)
        assert said(logging.INFO) == ["the primary is back"]
    finally:
        replica.stop()
        if refusing is not None:
            refusing.stop()


def test_a_primary_named_without_a_port_is_followed_at_gRPCs_default_port(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A primary behind a TLS ingress is often named by its host alone (gRPC dials 443): the
    replica starts and follows it there, as the SDK's stricter check of a target does not apply."""
    caplog.set_level(logging.DEBUG, logger=follow.__name__)
    replica = InProcessDaemon(
        daemon_settings(tmp_path / "replica", **{"replica.primary": "localhost"})
    ).start()
    try:
        eventually(lambda: _attempts(caplog, 1), timeout=60)
        assert _follow_records(caplog, logging.DEBUG)[0].__dict__["primary"] == "localhost"
    finally:
        replica.stop()
