"""The loopback rule: no listening beyond loopback without authentication, unless --insecure."""

from __future__ import annotations

import json

from tesserad.cli import EXIT_BAD_SETTINGS

WARNING = (
    "serving without authentication on a non-loopback address (--insecure): every caller that can "
    "reach it has the admin role"
)


def serve_args(tmp_path, listen: str, *extra: str) -> list[str]:
    return ["--listen", listen, "--metrics-listen", "off", "--data-dir", str(tmp_path / "data"), *extra]


def test_a_non_loopback_address_without_authentication_is_refused(spawn_daemon, tmp_path):
    process = spawn_daemon(*serve_args(tmp_path, "0.0.0.0:0"))
    output = process.output()
    # A wrong setting, which no restart mends (systemd's unit does not restart on this status).
    assert process.process.returncode == EXIT_BAD_SETTINGS
    assert "refusing to listen on 0.0.0.0:0 without authentication" in output
    assert "security.tokens_file" in output and "--insecure" in output


def test_insecure_serves_beyond_loopback_with_a_warning(spawn_daemon, tmp_path):
    process = spawn_daemon(*serve_args(tmp_path, "0.0.0.0:0", "--insecure"))
    warning = process.wait_for_log(WARNING)
    assert warning["level"] == "warning"
    assert warning["address"] == "0.0.0.0:0"
    process.wait_serving()


def test_loopback_needs_no_authentication_and_logs_no_warning(spawn_daemon, tmp_path):
    process = spawn_daemon(*serve_args(tmp_path, "127.0.0.1:0"))
    process.wait_serving()
    levels = [json.loads(line).get("level") for line in process.log if line.startswith("{")]
    assert "warning" not in levels


PLAINTEXT_TOKENS = "bearer tokens travel in plaintext"


def test_a_tokens_file_allows_a_non_loopback_address_warning_of_plaintext_naming_the_tls_settings(
    spawn_daemon, tmp_path, tokens
):
    process = spawn_daemon(
        *serve_args(tmp_path, "0.0.0.0:0"), env={"TESSERA_SECURITY_TOKENS_FILE": str(tokens.file)}
    )
    process.wait_serving()
    assert not any(WARNING in line for line in process.log)
    warned = [json.loads(line) for line in process.log if PLAINTEXT_TOKENS in line]
    assert len(warned) == 1, process.log
    assert warned[0]["level"] == "warning" and warned[0]["address"] == "0.0.0.0:0"
    assert "security.tls_cert_file" in warned[0]["msg"] and "security.tls_key_file" in warned[0]["msg"]


def test_tokens_without_tls_on_loopback_or_with_tls_beyond_it_are_not_warned_of(
    spawn_daemon, tmp_path, tokens, pki
):
    # Both start at once: a start is mostly imports, and the two share nothing.
    on_loopback = spawn_daemon(
        *serve_args(tmp_path, "127.0.0.1:0"), env={"TESSERA_SECURITY_TOKENS_FILE": str(tokens.file)}
    )
    with_tls = spawn_daemon(
        *serve_args(tmp_path / "tls", "0.0.0.0:0"),
        env={
            "TESSERA_SECURITY_TOKENS_FILE": str(tokens.file),
            "TESSERA_SECURITY_TLS_CERT_FILE": str(pki.server_cert),
            "TESSERA_SECURITY_TLS_KEY_FILE": str(pki.server_key),
        },
    )
    on_loopback.wait_serving()
    with_tls.wait_serving()
    assert not any(PLAINTEXT_TOKENS in line for line in on_loopback.log + with_tls.log)
