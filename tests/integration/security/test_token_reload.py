"""Changing the tokens file of a running `tesserad serve` process: SIGHUP, the file watch, streams."""

from __future__ import annotations

import logging
import os
import queue
import signal
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_reflection.v1alpha import reflection_pb2

from tessera.v1 import system_pb2
from tesserad import cli
from tesserad.api.training import TrainingServicer
from tesserad.errors import NotFound
from tesserad.security import Role, hash_token
from tesserad.security.tokens import format_entry
from tests.conftest import DaemonProcess, InProcessDaemon, daemon_settings
from tests.integration.security.conftest import Tokens, bearer

INFO = "/tessera.v1.System/GetServerInfo"


@pytest.fixture
def serve(spawn_daemon: Any, tmp_path: Path, tokens: Tokens) -> Iterator[Any]:
    """serve(tokens file or None, reload interval) -> (the process, a channel to it)."""
    channels: list[grpc.Channel] = []

    def start(
        tokens_file: Path | None = tokens.file, interval: str = "0"
    ) -> tuple[DaemonProcess, grpc.Channel]:
        env = {"TESSERA_SECURITY_TOKENS_RELOAD_INTERVAL_S": interval}
        if tokens_file is not None:
            env["TESSERA_SECURITY_TOKENS_FILE"] = str(tokens_file)
        process = spawn_daemon(
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
            str(tmp_path / "data"),
            "--metrics-listen",
            "off",
            env=env,
        )
        channel = grpc.insecure_channel(process.wait_serving())
        channels.append(channel)
        return process, channel

    yield start
    for channel in channels:
        channel.close()


def info(channel: grpc.Channel, token: str) -> grpc.StatusCode:
    try:
        channel.unary_unary(INFO)(b"", metadata=bearer(token), timeout=30)
    except grpc.RpcError as exc:
        return exc.code()
    return grpc.StatusCode.OK


def tokens_cli(*args: str) -> int:
    return cli.main(["tokens", *args])


def test_sighup_applies_a_removed_token_at_once_and_the_daemon_lives_on(serve, tokens, capsys):
    process, channel = serve()
    reader, admin = tokens.token[Role.READER], tokens.token[Role.ADMIN]
    assert info(channel, reader) == grpc.StatusCode.OK

    assert tokens_cli("remove", "reader-holder", "--file", str(tokens.file)) == 0
    process.terminate(signal.SIGHUP)
    entry = process.wait_for_log("tokens reloaded")

    assert entry["trigger"] == "SIGHUP"
    assert entry["removed"] == ["reader-holder"] and entry["added"] == []
    assert info(channel, reader) == grpc.StatusCode.UNAUTHENTICATED
    assert info(channel, admin) == grpc.StatusCode.OK
    assert process.wait_for_log(
        "SIGHUP read security.tokens_file again; every other setting (the --config file, "
        "TESSERA_* variables, flags) is read at start: restart tesserad to change one"
    )["read_again"] == ["security.tokens_file"]
    assert process.process.poll() is None
    process.terminate()
    log = process.output()
    assert process.process.returncode == 0
    # Names only: neither a token nor its hash reaches the log.
    for token in tokens.token.values():
        assert token not in log and hash_token(token) not in log


def test_an_added_token_works_without_a_restart(serve, tokens, capsys):
    process, channel = serve()
    assert tokens_cli("add", "--file", str(tokens.file), "--name", "newcomer", "--role", "reader") == 0
    token = capsys.readouterr().out.strip()
    assert info(channel, token) == grpc.StatusCode.UNAUTHENTICATED

    process.terminate(signal.SIGHUP)
    assert process.wait_for_log("tokens reloaded")["added"] == ["newcomer"]
    assert info(channel, token) == grpc.StatusCode.OK


def test_a_broken_tokens_file_keeps_the_tokens_in_use(serve, tokens):
    process, channel = serve()
    tokens.file.write_text('[[tokens]]\nname = "reader-holder"\nrole = "root"\n')

    process.terminate(signal.SIGHUP)
    entry = process.wait_for_log(
        "tokens file not applied: the tokens in use stay as they were until it is fixed"
    )

    assert "needs exactly the keys name, role and sha256" in entry["error"]
    assert entry["tokens"] == len(Role)
    for token in tokens.token.values():
        assert info(channel, token) == grpc.StatusCode.OK
    assert process.process.poll() is None


def test_a_tokens_file_others_can_write_is_not_applied(serve, tokens):
    """Anyone could have added the newcomer: the tokens in use stay, and the log says why."""
    process, channel = serve()
    with tokens.file.open("a") as file:
        file.write(format_entry("newcomer", Role.ADMIN, hash_token(newcomer := "x" * 40)))
    tokens.file.chmod(0o666)

    process.terminate(signal.SIGHUP)
    entry = process.wait_for_log(
        "tokens file not applied: the tokens in use stay as they were until it is fixed"
    )

    assert "can be written by every user of this host (mode 0666)" in entry["error"]
    assert info(channel, newcomer) == grpc.StatusCode.UNAUTHENTICATED
    assert info(channel, tokens.token[Role.READER]) == grpc.StatusCode.OK


def test_sighup_without_a_tokens_file_is_logged_and_harmless(serve, tmp_path):
    process, channel = serve(tokens_file=None)
    process.terminate(signal.SIGHUP)
    process.wait_for_log(
        "SIGHUP read nothing again (no security.tokens_file, TLS files or replica.token_file is set); "
        "every other setting (the --config file, TESSERA_* variables, flags) is read at start: "
        "restart tesserad to change one"
    )
    channel.unary_unary(INFO)(b"", timeout=30)
    process.terminate()
    process.output()
    assert process.process.returncode == 0


def test_the_file_watch_applies_a_change_without_a_signal(serve, tokens):
    process, channel = serve(interval="0.1")
    assert tokens_cli("remove", "reader-holder", "--file", str(tokens.file)) == 0

    entry = process.wait_for_log("tokens reloaded")

    assert entry["trigger"] == "the file changed" and entry["removed"] == ["reader-holder"]
    assert info(channel, tokens.token[Role.READER]) == grpc.StatusCode.UNAUTHENTICATED


def _watch(channel: grpc.Channel, token: str) -> tuple[grpc.Future, queue.Queue[Any]]:
    """An open WatchSystem stream; its samples (then its final status code) land in the queue."""
    call = channel.unary_stream(
        "/tessera.v1.System/WatchSystem", response_deserializer=system_pb2.SystemSample.FromString
    )(system_pb2.WatchSystemRequest(interval_ms=100).SerializeToString(), metadata=bearer(token), timeout=120)
    received: queue.Queue[Any] = queue.Queue()

    def pump() -> None:
        try:
            for sample in call:
                received.put(sample)
        except grpc.RpcError as exc:
            received.put((exc.code(), exc.details()))

    threading.Thread(target=pump, daemon=True).start()
    return call, received


def _final_status(received: queue.Queue[Any]) -> tuple[grpc.StatusCode, str]:
    while True:
        item = received.get(timeout=60)
        if isinstance(item, tuple):
            return item


def test_open_streams_of_a_revoked_token_end_and_the_others_go_on(serve, tokens):
    process, channel = serve()
    revoked, kept_call = _watch(channel, tokens.token[Role.READER]), _watch(channel, tokens.token[Role.ADMIN])
    for _, received in (revoked, kept_call):
        assert isinstance(received.get(timeout=60), system_pb2.SystemSample)
    # A client stream held open by the trainer, whose role then drops to reader.
    requests: queue.Queue[bytes | None] = queue.Queue()
    upload = channel.stream_unary("/tessera.v1.Training/LogMetricsStream").future(
        iter(requests.get, None), metadata=bearer(tokens.token[Role.TRAINER]), timeout=120
    )
    # A bidirectional stream of the reader, answered once and then waiting for its next request.
    questions: queue.Queue[bytes | None] = queue.Queue()
    reflection = channel.stream_stream(
        "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
        response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
    )(iter(questions.get, None), metadata=bearer(tokens.token[Role.READER]), timeout=120)
    questions.put(reflection_pb2.ServerReflectionRequest(list_services="").SerializeToString())
    assert next(reflection).list_services_response.service

    text = "".join(
        format_entry(f"{role.label}-holder", Role.READER if role == Role.TRAINER else role, hash_token(token))
        for role, token in tokens.token.items()
        if role != Role.READER
    )
    tokens.file.write_text(text)
    process.terminate(signal.SIGHUP)
    entry = process.wait_for_log("tokens reloaded")

    assert entry["removed"] == ["reader-holder"] and entry["role_changed"] == ["trainer-holder"]
    assert entry["streams_ended"] == 3
    code, details = _final_status(revoked[1])
    assert code == grpc.StatusCode.UNAUTHENTICATED
    assert "removed from the tesserad's tokens file" in details
    with pytest.raises(grpc.RpcError) as err:
        upload.result(timeout=60)
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "needs the trainer role" in err.value.details()
    with pytest.raises(grpc.RpcError) as err:
        next(reflection)
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
    # The admin's stream is untouched: it goes on sending samples.
    kept, kept_received = kept_call
    while not kept_received.empty():
        kept_received.get()
    assert isinstance(kept_received.get(timeout=60), system_pb2.SystemSample)
    kept.cancel()
    requests.put(None)
    questions.put(None)


def test_taking_write_permission_from_the_directory_gets_a_refused_file_applied(serve, tmp_path, tokens):
    """The refusal says `chmod o-w DIR`; doing just that, with the file itself untouched, has the
    next check apply the file: a removed token does not stay in use until a SIGHUP."""
    shared = tmp_path / "shared"
    shared.mkdir()
    moved = tokens.file.rename(shared / "tokens.toml")
    process, channel = serve(tokens_file=moved, interval="0.1")
    shared.chmod(0o777)
    assert tokens_cli("remove", "reader-holder", "--file", str(moved)) == 0
    refused = process.wait_for_log(
        "tokens file not applied: the tokens in use stay as they were until it is fixed"
    )
    assert f"its directory {shared} can be written by every user" in refused["error"]
    assert info(channel, tokens.token[Role.READER]) == grpc.StatusCode.OK

    shared.chmod(0o755)

    entry = process.wait_for_log("tokens reloaded")
    assert entry["trigger"] == "the file changed" and entry["removed"] == ["reader-holder"]
    assert info(channel, tokens.token[Role.READER]) == grpc.StatusCode.UNAUTHENTICATED


@pytest.mark.skipif(os.getuid() != 0, reason="only root can give a directory to another user")
def test_giving_the_directory_back_gets_a_refused_file_applied(serve, tmp_path, tokens):
    """The refusal of a directory another user owns says `chown`; doing just that has the next
    check apply the file, as a `chmod` does."""
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    moved = tokens.file.rename(theirs / "tokens.toml")
    process, channel = serve(tokens_file=moved, interval="0.1")
    os.chown(theirs, 54321, -1)
    assert tokens_cli("remove", "reader-holder", "--file", str(moved)) == 0
    refused = process.wait_for_log(
        "tokens file not applied: the tokens in use stay as they were until it is fixed"
    )
    assert f"its directory {theirs} is owned by uid 54321" in refused["error"]
    assert info(channel, tokens.token[Role.READER]) == grpc.StatusCode.OK

    os.chown(theirs, os.getuid(), -1)

    entry = process.wait_for_log("tokens reloaded")
    assert entry["trigger"] == "the file changed" and entry["removed"] == ["reader-holder"]
    assert info(channel, tokens.token[Role.READER]) == grpc.StatusCode.UNAUTHENTICATED


def test_a_link_loop_is_reported_once_and_undoing_it_gets_the_file_applied(serve, tmp_path, tokens):
    """A tokens file made a link loop cannot be read: the check that polls says so once, not
    with a traceback at every poll, and applies the file when the loop is undone."""
    process, channel = serve(interval="0.1")
    kept = tokens.file.rename(tmp_path / "kept.toml")
    other_end = tmp_path / "other-end.toml"
    other_end.symlink_to(tokens.file)
    tokens.file.symlink_to(other_end)

    refused = process.wait_for_log(
        "tokens file not applied: the tokens in use stay as they were until it is fixed"
    )
    assert "Too many levels of symbolic links" in refused["error"]
    assert info(channel, tokens.token[Role.READER]) == grpc.StatusCode.OK

    assert tokens_cli("remove", "reader-holder", "--file", str(kept)) == 0
    kept.replace(tokens.file)

    entry = process.wait_for_log("tokens reloaded")
    assert entry["trigger"] == "the file changed" and entry["removed"] == ["reader-holder"]
    assert not [line for line in process.log if "unexpected error applying" in line]
    assert len([line for line in process.log if "tokens file not applied" in line]) == 1


def test_a_stream_revoked_while_its_error_goes_out_ends_with_that_error_and_no_second_abort(
    data_dir: Path, tokens: Tokens, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # The reload cancels the stream's task as its servicer fails: the cancel lands in the abort
    # that sends the servicer's error, where a second abort was refused (UsageError, logged).
    daemon = InProcessDaemon(daemon_settings(data_dir, **{"security.tokens_file": str(tokens.file)}))
    kept = {role: t for role, t in tokens.token.items() if role != Role.READER}

    async def revoked_then_failing(self: Any, request: Any, context: Any) -> AsyncIterator[Any]:
        tokens.file.write_text(
            "".join(format_entry(f"{role.label}-holder", role, hash_token(t)) for role, t in kept.items())
        )
        await daemon.daemon._auth.reload_tokens("test")
        raise NotFound(f"job {request.job_id!r} does not exist")
        yield

    monkeypatch.setattr(TrainingServicer, "WatchJob", revoked_then_failing)
    daemon.start()
    try:
        watch = daemon.channel().unary_stream("/tessera.v1.Training/WatchJob")
        with pytest.raises(grpc.RpcError) as ended:
            list(watch(b"\n\x05job-x", metadata=bearer(tokens.token[Role.READER]), timeout=30))
        assert ended.value.code() == grpc.StatusCode.NOT_FOUND, ended.value.details()
    finally:
        daemon.stop()  # the handler has ended, and logged whatever it logs
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text
