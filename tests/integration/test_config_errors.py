"""`tesserad serve --config FILE` with a wrong file: it exits non-zero naming the key or file and
what to fix, and leaves no data directory behind (the default, ./var, in its working directory)."""

from __future__ import annotations

import pwd
import shutil
import socket
import tempfile
from pathlib import Path

import pytest

from tesserad.cli import EXIT_BAD_SETTINGS, EXIT_CANNOT_START
from tests.conftest import as_nobody


def serve_refused(spawn_daemon, cwd: Path, config_text: str | bytes, *args: str) -> tuple[int, str]:
    """The exit status and output of tesserad started with config_text as its config file. No
    --listen unless args give one: the config's listen must win (the exposure case)."""
    config = cwd / "tesserad.toml"
    if isinstance(config_text, bytes):
        config.write_bytes(config_text)
    else:
        config.write_text(config_text)
    daemon = spawn_daemon("--config", str(config), "--metrics-listen", "off", *args, cwd=cwd)
    status = daemon.process.wait(60)
    return status, daemon.output()


def serve_with(spawn_daemon, cwd: Path, config_text: str | bytes, *args: str) -> tuple[int, str]:
    return serve_refused(spawn_daemon, cwd, config_text, "--listen", "127.0.0.1:0", *args)


@pytest.mark.parametrize(
    ("config_text", "said"),
    [
        (
            '[store]\nmapsize = "1GiB"\n',
            "store.mapsize (in {}): unknown setting; did you mean store.map_size?",
        ),
        ('grace_period_s = "ten"\n', "grace_period_s = 'ten' (from {}): expected a number in 0.0..3600.0"),
        ("[limits]\nchunk_size = 1\n", "limits.chunk_size = 1 (from {}): expected a value in 4096..4194304"),
        (b'log_level = "info" # caf\xe9\n', "config file {} is not UTF-8 text (byte 24 cannot be decoded)"),
        ("listen = \n", "config file {} is not valid TOML: "),
        # 64 meant as GiB is 64 bytes: refused here (exit 2, no restart), not later as "the store is full".
        (
            "[store]\nmap_size = 64\n",
            "store.map_size = 64 (from {}): expected at least 256 KiB; a number without a unit is bytes",
        ),
    ],
    ids=["unknown-key", "wrong-type", "out-of-range", "not-utf8", "not-toml", "map-size-in-bytes"],
)
def test_a_wrong_config_file_exits_2_naming_the_key_and_leaves_no_data_dir(
    spawn_daemon, tmp_path, config_text, said
):
    status, output = serve_with(spawn_daemon, tmp_path, config_text)
    assert status == 2, output
    assert said.format(tmp_path / "tesserad.toml") in output
    assert "Traceback" not in output
    assert not (tmp_path / "var").exists()


@pytest.mark.parametrize(
    ("config_text", "said"),
    [
        (
            'listen = "127.0.0.1:0"\n[security]\ntokens_file = "tokens.toml"\n',
            "security.tokens_file: tokens file tokens.toml does not exist; create it with",
        ),
        (
            'listen = "127.0.0.1:0"\n[security]\ntls_cert_file = "server.pem"\ntls_key_file = "server.key"\n',
            "security.tls_cert_file server.pem cannot be read",
        ),
    ],
    ids=["tokens-file-missing", "tls-file-missing"],
)
def test_a_config_file_whose_files_are_missing_exits_1_and_leaves_no_data_dir(
    spawn_daemon, tmp_path, config_text, said
):
    """Refused only as the daemon starts (a file it names is missing: a mount or secret not
    there yet, which a restart may find), yet before it makes ./var: no empty store is left for
    the next start to find."""
    status, output = serve_refused(spawn_daemon, tmp_path, config_text)
    assert status == EXIT_CANNOT_START, output
    assert said in output
    assert not (tmp_path / "var").exists()


def test_a_variable_over_the_files_tokens_file_is_warned_of_and_named_where_it_fails(spawn_daemon, tmp_path):
    """The environment ranks above the file: a TESSERA_* left in an image or a unit beats the
    file's value; the daemon says so, and a start that fails on the value names the variable."""
    config = tmp_path / "tesserad.toml"
    config.write_text('listen = "127.0.0.1:0"\n[security]\ntokens_file = "mounted/tokens.toml"\n')
    env = {"TESSERA_SECURITY_TOKENS_FILE": "baked/tokens.toml"}
    daemon = spawn_daemon("--config", str(config), "--metrics-listen", "off", cwd=tmp_path, env=env)
    assert daemon.process.wait(60) == EXIT_CANNOT_START
    output = daemon.output()
    assert (
        "environment variable TESSERA_SECURITY_TOKENS_FILE = 'baked/tokens.toml' overrides "
        f"security.tokens_file = 'mounted/tokens.toml' of {config}"
    ) in output, output
    assert (
        "security.tokens_file: tokens file baked/tokens.toml does not exist; create it with its first "
        "token, `tesserad tokens add --file baked/tokens.toml --name admin --role admin` "
        "(security.tokens_file from TESSERA_SECURITY_TOKENS_FILE)"
    ) in output, output
    assert not (tmp_path / "var").exists()


@pytest.mark.parametrize(
    ("config_text", "said"),
    [
        (
            'listen = "0.0.0.0:0"\n',
            "refusing to listen on 0.0.0.0:0 without authentication: anyone who can reach it could "
            "delete models and submit training jobs. Set security.tokens_file (--tokens-file; make tokens with "
            "`tesserad tokens add`) or security.tls_client_ca_file, set listen to a loopback address",
        ),
        (
            'listen = "127.0.0.1:0"\n[serving]\noip_http_listen = "0.0.0.0:0"\n',
            "or security.tls_client_ca_file, set serving.oip_http_listen to a loopback address",
        ),
        (
            'listen = "127.0.0.1:0"\n[security]\ntls_cert_file = "server.pem"\n',
            "TLS needs both a certificate and its key: set security.tls_key_file too",
        ),
        (
            'listen = "127.0.0.1:0"\n[security]\ntls_client_ca_file = "ca.pem"\n',
            "security.tls_client_ca_file is set but TLS is off",
        ),
        (
            'listen = "127.0.0.1:0"\n[replica]\ntls_cert_file = "client.pem"\n',
            "replica.tls_cert_file and replica.tls_key_file go together",
        ),
    ],
    ids=[
        "exposed-without-tokens",
        "oip-http-exposed-without-tokens",
        "tls-cert-without-key",
        "client-ca-without-tls",
        "replica-cert-without-key",
    ],
)
def test_settings_that_do_not_go_together_exit_2_and_leave_no_data_dir(
    spawn_daemon, tmp_path, config_text, said
):
    """Wrong whatever the files hold: the status systemd's unit does not restart on
    (RestartPreventExitStatus), as a restart every few seconds would not mend it."""
    status, output = serve_refused(spawn_daemon, tmp_path, config_text)
    assert status == EXIT_BAD_SETTINGS, output
    assert said in output and "Traceback" not in output
    assert not (tmp_path / "var").exists()


def test_a_replica_whose_client_certificate_lacks_its_key_exits_2(spawn_daemon, tmp_path):
    # The pair is refused before any connection: the primary need not be there.
    daemon = spawn_daemon(
        "--follow",
        "127.0.0.1:1",
        "--listen",
        "127.0.0.1:0",
        "--metrics-listen",
        "off",
        "--data-dir",
        str(tmp_path / "replica"),
        env={"TESSERA_REPLICA_TLS_KEY_FILE": str(tmp_path / "client.key")},
    )
    assert daemon.process.wait(60) == EXIT_BAD_SETTINGS
    assert "replica.tls_cert_file and replica.tls_key_file go together" in daemon.output()


@pytest.mark.parametrize("trace_file", ["data/trace.json", "data/../trace.json"], ids=["in-it", "beside-it"])
def test_a_trace_file_in_a_data_directory_not_made_yet_is_taken(spawn_daemon, tmp_path, trace_file):
    """The start checks serving.trace_file before it makes the data directory, and a file in that
    directory (or one the start makes above it) is writable once it has."""
    data_dir = tmp_path / "new" / "data"
    daemon = spawn_daemon(
        "--listen",
        "127.0.0.1:0",
        "--metrics-listen",
        "off",
        env={
            "TESSERA_DATA_DIR": str(data_dir),
            "TESSERA_SERVING_TRACE_FILE": str(tmp_path / "new" / trace_file),
        },
    )
    daemon.wait_serving()
    assert data_dir.is_dir()


@pytest.mark.parametrize(
    ("trace_file", "said"),
    [
        ("absent/trace.json", "trace.json: its directory does not exist; create it first"),
        ("var/absent/trace.json", "trace.json: its directory does not exist; create it first"),
        ("var", "var is a directory; name a file in it"),
    ],
    ids=["as_another_user", "below-the-data-dir", "the-data-dir"],
)
def test_a_trace_file_that_cannot_be_written_exits_1_and_leaves_no_data_dir(
    spawn_daemon, tmp_path, trace_file, said
):
    daemon = spawn_daemon(
        "--listen",
        "127.0.0.1:0",
        "--metrics-listen",
        "off",
        env={"TESSERA_SERVING_TRACE_FILE": trace_file},
        cwd=tmp_path,
    )
    assert daemon.process.wait(60) == EXIT_CANNOT_START
    output = daemon.output()
    assert said in output
    assert not (tmp_path / "var").exists()


@pytest.mark.parametrize(
    ("flag", "said"),
    [
        ("--listen", "stop that process or set listen (--listen) to another port"),
        ("--metrics-listen", "set metrics_listen (--metrics-listen) to another address, or off"),
        ("--http-listen", "set http_listen (--http-listen) to another address, or off"),
        ("--oip-http-listen", "set serving.oip_http_listen (--oip-http-listen) to another address, or off"),
    ],
)
def test_a_listener_on_a_taken_port_names_its_setting(spawn_daemon, tmp_path, flag, said):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        address = f"127.0.0.1:{taken.getsockname()[1]}"
        listeners = {"--listen": "127.0.0.1:0", "--metrics-listen": "off", flag: address}
        daemon = spawn_daemon(*(word for pair in listeners.items() for word in pair), cwd=tmp_path)
        assert daemon.process.wait(60) == EXIT_CANNOT_START
    output = daemon.output()
    assert address in output and said in output, output
    # Where the address came from: the flag, as typed.
    assert f" from {flag})" in output, output
    assert not (tmp_path / "var").exists()


def test_a_listener_on_all_addresses_is_refused_where_its_ipv4_port_is_taken(spawn_daemon, tmp_path):
    # [::] is IPv6 and IPv4 to gRPC: bound to IPv6 only, the daemon was half there, unreachable
    # at the IPv4 address its clients were told to use.
    with socket.socket() as taken:
        taken.bind(("0.0.0.0", 0))
        taken.listen()
        address = f"[::]:{taken.getsockname()[1]}"
        daemon = spawn_daemon(
            "--listen", address, "--insecure", "--metrics-listen", "off", "--data-dir", str(tmp_path / "var")
        )
        assert daemon.process.wait(60) == EXIT_CANNOT_START
    output = daemon.output()
    assert f"cannot listen on {address}: the port is already in use" in output, output


def _taken_port_start(spawn_daemon, data_dir: Path, *args: str) -> str:
    """The output of a start refused because its port is taken."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        address = f"127.0.0.1:{taken.getsockname()[1]}"
        daemon = spawn_daemon(
            "--listen", address, "--metrics-listen", "off", "--data-dir", str(data_dir), *args
        )
        assert daemon.process.wait(60) == EXIT_CANNOT_START
    return daemon.output()


@pytest.mark.parametrize("replica", [(), ("--follow", "127.0.0.1:1")], ids=["primary", "replica"])
def test_a_start_refused_its_port_removes_the_parents_it_made(spawn_daemon, tmp_path, replica):
    output = _taken_port_start(spawn_daemon, tmp_path / "made" / "var", *replica)
    assert "already in use" in output
    # gRPC's C-core logged its own line for the port first ("E... add_port.cc:83] Failed to add
    # port to server: ..."), which read as the daemon's failure.
    assert "Failed to add port" not in output, output
    assert list(tmp_path.iterdir()) == []


def test_a_start_refused_its_port_leaves_a_data_directory_that_was_there(spawn_daemon, tmp_path):
    data_dir = tmp_path / "var"
    first = spawn_daemon("--listen", "127.0.0.1:0", "--metrics-listen", "off", "--data-dir", str(data_dir))
    first.wait_serving()
    first.kill()
    kept = sorted(path.relative_to(data_dir) for path in data_dir.rglob("*"))
    assert Path("store") in kept

    assert "already in use" in _taken_port_start(spawn_daemon, data_dir)
    assert sorted(path.relative_to(data_dir) for path in data_dir.rglob("*")) == kept


@pytest.mark.parametrize(
    ("data_dir", "said", "as_another_user"),
    [
        ("afile/var", "data directory afile/var: afile is a file, not a directory", False),
        ("afile", "data directory afile: afile is a file, not a directory", False),
        (
            "/proc/tesserad-var",
            "data directory /proc/tesserad-var cannot be created (No such file or directory)",
            False,
        ),
        ("locked/var", "data directory locked/var cannot be created (Permission denied)", True),
    ],
    ids=["under-a-file", "a-file", "in-proc", "under-a-directory-it-may-not-search"],
)
def test_a_data_directory_that_cannot_be_made_exits_1_in_one_line(
    spawn_daemon, tmp_path, data_dir, said, as_another_user
):
    """`as_another_user`: the daemon runs as a user the mode of the directory `locked` refuses."""
    (tmp_path / "afile").write_text("")
    # Python 3.11's Path.exists() raises PermissionError where a parent may not be searched.
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o000)
    try:
        daemon = spawn_daemon(
            "--listen",
            "127.0.0.1:0",
            "--metrics-listen",
            "off",
            "--data-dir",
            data_dir,
            cwd=tmp_path,
            launcher=as_nobody() if as_another_user else (),
        )
        assert daemon.process.wait(60) == EXIT_CANNOT_START
    finally:
        locked.chmod(0o700)
    output = daemon.output()
    assert f"tesserad cannot start: {said}; set data_dir (--data-dir)" in output, output
    assert "Traceback" not in output, output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile", "locked"]
    assert list(locked.iterdir()) == []


def test_a_misspelt_environment_variable_is_warned_of_at_start_with_the_name_it_likely_meant(
    spawn_daemon, tmp_path
):
    """A typo in the config file is refused; in the environment, which other tools share, it is
    a warning: tesserad still starts, and the names tessera's clients read pass without one."""
    env = {"TESSERA_GRACE_PERIOD": "5", "TESSERA_SERVING_MAX_BATCH": "8", "TESSERA_TARGET": "127.0.0.1:1"}
    daemon = spawn_daemon(
        "--listen", "127.0.0.1:0", "--metrics-listen", "off", "--data-dir", str(tmp_path / "var"), env=env
    )
    for typo, meant in [
        ("TESSERA_GRACE_PERIOD", "grace_period_s"),
        ("TESSERA_SERVING_MAX_BATCH", "serving.max_batch_size"),
    ]:
        entry = daemon.wait_for_log(
            f"environment variable {typo} names no tesserad setting and is ignored; did you mean "
            f"{meant} (TESSERA_{meant.replace('.', '_').upper()})? (`tesserad settings` lists every setting)"
        )
        assert entry["level"] == "warning"
    daemon.wait_serving()
    assert "TESSERA_TARGET" not in "".join(daemon.log)


def test_a_data_directory_of_another_user_names_its_owner_the_daemons_user_and_the_chown(
    spawn_daemon, tmp_path
):
    # What `sudo tesserad restore` leaves: the directory root's, 0700, and the service's user refused.
    launcher = as_nobody()
    if not launcher:
        pytest.skip("needs root, to make a directory another user owns")
    # Under the system's temporary directory: pytest's own is root's alone, so nobody could not
    # reach the data directory at all.
    parent = Path(tempfile.mkdtemp(prefix="tesserad-owner-"))
    try:
        parent.chmod(0o755)
        data_dir = parent / "var"
        data_dir.mkdir(mode=0o700)
        daemon = spawn_daemon(
            "--listen",
            "127.0.0.1:0",
            "--metrics-listen",
            "off",
            "--data-dir",
            str(data_dir),
            launcher=launcher,
        )
        assert daemon.process.wait(60) == EXIT_CANNOT_START
        output = daemon.output()
    finally:
        shutil.rmtree(parent)
    nobody = pwd.getpwuid(65534).pw_name
    assert f"data directory {data_dir} cannot be written (Permission denied)" in output, output
    assert f"it is owned by root and tesserad runs as {nobody}" in output, output
    assert f"chown -R {nobody} {data_dir}" in output, output
    assert f"a restore run as root gives it so with `tesserad restore --owner {nobody}`" in output, output
