"""Settings: layering and validation (pure logic, no server)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tesserad.cli import build_parser
from tesserad.config import (
    CLIENT_ENV_NAMES,
    Address,
    SettingsError,
    describe_settings,
    format_size,
    layer_settings,
    load_settings,
    parse_size,
    unknown_environment,
)


def test_defaults():
    settings = load_settings(env={})
    assert settings.listen == Address("127.0.0.1", 50051)
    assert settings.data_dir == Path("./var")
    assert settings.metrics_listen == Address("127.0.0.1", 9464)
    assert settings.store.durability == "full"
    assert settings.training.compile == "auto"
    assert settings.nn.max_workspace == 0  # no limit
    # A request naming no version gets a model's latest version, as before the setting.
    assert settings.serving.default_alias == "latest"


def test_nn_and_training_sections_from_a_file(tmp_path):
    config = tmp_path / "tesserad.toml"
    config.write_text('[nn]\nmax_workspace = "256MiB"\n[training]\ncompile = "off"\n')
    settings = load_settings(config, env={})
    assert settings.nn.max_workspace == 256 * 2**20
    assert settings.training.compile == "off"


def test_layers_file_then_env_then_flags(tmp_path):
    config = tmp_path / "tesserad.toml"
    config.write_text(
        'listen = "0.0.0.0:6000"\nlog_level = "debug"\n[store]\nmap_size = "2GiB"\ndurability = "relaxed"\n'
    )
    env = {"TESSERA_LISTEN": "127.0.0.1:7000", "TESSERA_STORE_MAP_SIZE": "3GiB", "TESSERA_TOKEN": "ignored"}
    settings = load_settings(config, env=env, overrides={"listen": "127.0.0.1:8000", "log_level": None})
    assert settings.listen == Address("127.0.0.1", 8000)  # flag beats env beats file
    assert settings.store.map_size == 3 * 2**30  # env beats file
    assert settings.store.durability == "relaxed"  # file beats default
    assert settings.log_level == "debug"  # a flag left unset does not override


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (4096, 4096),
        ("4096", 4096),
        ("512MiB", 512 * 2**20),
        ("1.5GiB", 3 * 2**29),
        ("2GB", 2 * 10**9),
        ("1 kib", 1024),
    ],
)
def test_sizes(raw, expected):
    assert parse_size(raw) == expected


@pytest.mark.parametrize(
    ("size", "expected"),
    [
        (0, "0 B"),
        (1023, "1023 B"),
        (1024, "1 KiB"),
        (16385, "16 KiB"),
        (800_000 * 4, "3.05 MiB"),
        (int(123.4 * 2**20), "123 MiB"),
        (16 * 2**30, "16 GiB"),
        # 3 significant digits in `g` notation wrote these "1e+03 GiB" and "1.02e+03 TiB".
        (int(999.6 * 2**30), "1000 GiB"),
        (1000 * 2**30, "1000 GiB"),
        (1023 * 2**30, "1023 GiB"),
        (int(1.27 * 2**40), "1.27 TiB"),
        (2**50, "1024 TiB"),
        (2**63 - 1, "8388608 TiB"),
    ],
)
def test_sizes_print_as_plain_numbers_that_parse_back(size, expected):
    assert format_size(size) == expected
    # What the settings' help prints for a size is read back by the same setting.
    assert abs(parse_size(expected) - size) <= 0.005 * size


@pytest.mark.parametrize(
    ("env", "fragments"),
    [
        ({"TESSERA_STORE_MAP_SIZE": "lots"}, ["store.map_size", "TESSERA_STORE_MAP_SIZE", "expected a size"]),
        ({"TESSERA_LISTEN": "localhost"}, ["listen = 'localhost'", "expected host:port"]),
        ({"TESSERA_LISTEN": "127.0.0.1:70000"}, ["port 70000 is out of range"]),
        # A port alone was answered with gRPC's example address, 127.0.0.1:50051, for /metrics too.
        (
            {"TESSERA_METRICS_LISTEN": "9999"},
            ["metrics_listen = '9999'", "a port alone: write 127.0.0.1:9999"],
        ),
        ({"TESSERA_LOG_FORMAT": "xml"}, ["log_format", "expected one of console, json"]),
        ({"TESSERA_GRACE_PERIOD_S": "-1"}, ["grace_period_s", "0.0..3600.0"]),
        ({"TESSERA_STORE_DURABILITY": "maybe"}, ["store.durability", "full, relaxed"]),
        ({"TESSERA_MAX_MESSAGE_SIZE": "4GiB"}, ["max_message_size", "2GiB - 1 byte"]),
        # Digits 0-9 only: \d and float() also took Arabic-Indic ones, reading "٣GiB" as 3 GiB.
        ({"TESSERA_STORE_MAP_SIZE": "\u0663GiB"}, ["store.map_size", "expected a size"]),
        ({"TESSERA_LISTEN": "127.0.0.1:\u0668\u0660"}, ["expected host:port"]),
        ({"TESSERA_TRAINING_RAY_ADDRESS": "head:\u0663"}, ["expected auto, host:port"]),
        ({"TESSERA_MAX_MESSAGE_SIZE": "10"}, ["max_message_size", "from 256B"]),
        ({"TESSERA_TRAINING_COMPILE": "maybe"}, ["training.compile", "expected one of auto, on, off"]),
        ({"TESSERA_NN_MAX_WORKSPACE": "lots"}, ["nn.max_workspace", "expected a size"]),
        ({"TESSERA_TRAINING_BACKEND": "slurm"}, ["training.backend", "expected one of local, ray"]),
        ({"TESSERA_TRAINING_RAY_ADDRESS": "head"}, ["training.ray_address", "auto, host:port"]),
        ({"TESSERA_SERVING_DEFAULT_ALIAS": "v3"}, ["serving.default_alias", "reads as a version number"]),
        ({"TESSERA_SERVING_DEFAULT_ALIAS": "Prod"}, ["serving.default_alias", "expected latest, or a name"]),
        ({"TESSERA_TRAINING_RAY_ADDRESS": "http://head:6379"}, ["training.ray_address", "ray://host:port"]),
        # gRPC took the URL for a host name: the replica logged "lost primary" for ever.
        (
            {"TESSERA_REPLICA_PRIMARY": "http://primary:50051"},
            ["replica.primary = 'http://primary:50051'", "a gRPC target, not a URL", "e.g. primary:50051"],
        ),
        (
            {"TESSERA_REPLICA_PRIMARY": "HTTPS://primary/"},
            ["not a URL", "e.g. primary:50051 (TLS is a setting of its own: replica.tls"],
        ),
        (
            {"TESSERA_REPLICA_ADVERTISE": "http://10.0.0.7:50051"},
            ["replica.advertise", "e.g. 10.0.0.7:50051"],
        ),
    ],
)
def test_bad_values_name_the_setting_and_source(env, fragments):
    with pytest.raises(SettingsError) as err:
        load_settings(env=env)
    for fragment in fragments:
        assert fragment in str(err.value)


def test_every_bad_value_is_reported_at_once(tmp_path):
    config = tmp_path / "c.toml"
    config.write_text('log_level = "loud"\n[store]\nmap_size = -5\ncolour = "red"\n')
    with pytest.raises(SettingsError) as err:
        load_settings(config, env={})
    message = str(err.value)
    assert "log_level" in message and "store.map_size" in message
    assert "store.colour" in message and "unknown setting" in message


def test_unreadable_config_file(tmp_path):
    with pytest.raises(SettingsError, match="does not exist"):
        load_settings(tmp_path / "missing.toml", env={})
    broken = tmp_path / "broken.toml"
    broken.write_text("listen = \n")
    with pytest.raises(SettingsError, match=r"broken.toml is not valid TOML: .*line 1"):
        load_settings(broken, env={})


def test_a_config_file_that_is_not_utf8_or_is_a_directory_is_refused_naming_it(tmp_path):
    latin1 = tmp_path / "latin1.toml"
    latin1.write_bytes('log_level = "info" # caf\xe9\n'.encode("latin-1"))
    with pytest.raises(SettingsError) as err:
        load_settings(latin1, env={})
    assert str(err.value) == (
        f"config file {latin1} is not UTF-8 text (byte 24 cannot be decoded); TOML files are UTF-8: "
        "save it as such"
    )
    with pytest.raises(SettingsError) as err:
        load_settings(tmp_path, env={})
    assert str(err.value) == f"config file {tmp_path} is a directory; name the TOML file in it"


@pytest.mark.parametrize(
    ("toml", "said"),
    [
        (
            '[store]\nmapsize = "1GiB"\n',
            "store.mapsize (in {}): unknown setting; did you mean store.map_size?",
        ),
        ('lisen = "127.0.0.1:1"\n', "lisen (in {}): unknown setting; did you mean listen?"),
        ('map_size = "1GiB"\n', "map_size (in {}): unknown setting; did you mean store.map_size?"),
        ("store = 1\n", "store (in {}): store is a section, not a setting: write its settings under [store]"),
        (
            "[storage]\nmap_size = 1\n",
            "storage.map_size (in {}): there is no section [storage]; the sections are [limits], ",
        ),
        ("[nn]\ncolour = 1\n", "nn.colour (in {}): unknown setting; [nn] takes max_workspace "),
        (
            '[listen]\nhost = "0.0.0.0"\n',
            "listen.host (in {}): listen is a setting, not a section: give it one value, as `listen = ...`",
        ),
    ],
)
def test_an_unknown_key_is_named_with_the_setting_it_likely_meant(tmp_path, toml, said):
    config = tmp_path / "c.toml"
    config.write_text(toml)
    with pytest.raises(SettingsError) as err:
        load_settings(config, env={})
    line = str(err.value).splitlines()[1].strip()
    assert line.startswith(said.format(config))
    assert line.endswith("(`tesserad settings` lists every setting)") or ", not a s" in line
    # The hint, not all 80-odd settings.
    assert len(line) < 400


def test_metrics_can_be_turned_off():
    assert load_settings(env={"TESSERA_METRICS_LISTEN": "off"}).metrics_listen is None


@pytest.mark.parametrize(
    "target", ["primary", "primary:50051", "dns:///primary:50051", "ipv4:10.0.0.7:50051"]
)
def test_a_primary_is_a_grpc_target_with_or_without_a_port(target):
    # A host alone is dialled at port 443, as gRPC dials it: kept on purpose.
    assert load_settings(env={"TESSERA_REPLICA_PRIMARY": target}).replica.primary == target


def test_ipv6_and_loopback_addresses():
    settings = load_settings(env={"TESSERA_LISTEN": "[::1]:50051"})
    assert settings.listen == Address("::1", 50051)
    assert str(settings.listen) == "[::1]:50051"
    assert settings.listen.is_loopback
    assert not Address("0.0.0.0", 1).is_loopback


def test_every_setting_is_described_with_its_env_name():
    described = {info.name: info for info in describe_settings()}
    assert described["store.map_size"].env == "TESSERA_STORE_MAP_SIZE"
    assert all(info.help for info in described.values())


def test_settings_shows_each_default_as_a_toml_file_or_the_environment_takes_it():
    """`tesserad settings` showed Python's words (None, True, 17179869184, var): a newcomer
    copying `True` into TOML or `None` into TESSERA_* got a refusal."""
    described = {info.name: info for info in describe_settings()}
    assert described["serving.oip_http_listen"].default_text == "off"
    assert described["security.tokens_file"].default_text == "off"
    assert described["serving.autoload"].default_text == "true"
    assert described["replica.tls"].default_text == "false"
    assert described["store.map_size"].default_text == "16 GiB"
    assert described["data_dir"].default_text == "./var"
    assert described["listen"].default_text == "127.0.0.1:50051"
    for name, info in described.items():
        if info.default_text == '""':
            continue  # a free string, empty: no word for it that its parser would not take as text
        taken = load_settings(env={info.env: info.default_text})
        value = taken
        for part in name.split("."):
            value = getattr(value, part)
        assert value == info.default, (name, info.default_text)


@pytest.mark.parametrize("address", ["auto", "head:6379", "10.0.0.5:6379", "ray://head:10001", "[::1]:6379"])
def test_ray_addresses(address):
    assert load_settings(env={"TESSERA_TRAINING_RAY_ADDRESS": address}).training.ray_address == address


def test_settings_piped_into_a_reader_that_stops_early_exits_quietly():
    # A reader that has already gone (`tesserad settings | head -1`): every write hits EPIPE.
    read, write = os.pipe()
    os.close(read)
    try:
        done = subprocess.run(
            [sys.executable, "-m", "tesserad", "settings"], stdout=write, stderr=subprocess.PIPE, text=True
        )
    finally:
        os.close(write)
    assert done.returncode == 0
    assert "Traceback" not in done.stderr and "BrokenPipe" not in done.stderr


def test_http_allowed_hosts_from_a_toml_list_or_a_comma_separated_string(tmp_path):
    config = tmp_path / "tesserad.toml"
    config.write_text('[security]\nhttp_allowed_hosts = ["Tessera.Example.com", ".corp.example"]\n')
    assert load_settings(config, env={}).security.http_allowed_hosts == (
        "tessera.example.com",
        ".corp.example",
    )
    env = {"TESSERA_SECURITY_HTTP_ALLOWED_HOSTS": " gpu-box, *,"}
    assert load_settings(env=env).security.http_allowed_hosts == ("gpu-box", "*")
    assert load_settings(env={}).security.http_allowed_hosts == ()


@pytest.mark.parametrize("bad", ["gpu-box:8080", "http://gpu-box", "[::1]", "a..b", "*.example.com"])
def test_http_allowed_hosts_are_names_without_port_or_scheme(bad):
    with pytest.raises(SettingsError, match=r"security\.http_allowed_hosts.*is not a host name"):
        load_settings(env={"TESSERA_SECURITY_HTTP_ALLOWED_HOSTS": bad})


LISTING = "(`tesserad settings` lists every setting)"


@pytest.mark.parametrize(
    ("name", "said"),
    [
        ("TESSERA_GRACE_PERIOD", "; did you mean grace_period_s (TESSERA_GRACE_PERIOD_S)? " + LISTING),
        (
            "TESSERA_SERVING_MAX_BATCH",
            "; did you mean serving.max_batch_size (TESSERA_SERVING_MAX_BATCH_SIZE)? " + LISTING,
        ),
        ("TESSERA_MAP_SIZE", "; did you mean store.map_size (TESSERA_STORE_MAP_SIZE)? " + LISTING),
        ("TESSERA_COLOUR", " " + LISTING),
    ],
)
def test_an_unknown_environment_variable_is_named_with_the_setting_it_likely_meant(name, said):
    env = {name: "1", "TESSERA_LISTEN": "127.0.0.1:1", "TESSERA_TOKEN": "t", "PATH": "/bin"}
    assert unknown_environment(env) == [
        f"environment variable {name} names no tesserad setting and is ignored{said}"
    ]


def test_the_names_the_clients_read_are_the_ones_tesserad_passes_over_without_a_warning():
    """A client that reads a new TESSERA_* variable must have it listed, or every tesserad that
    shares its environment warns of it."""
    root = Path(__file__).resolve().parents[2] / "clients"
    sources = [*(root / "python" / "src").rglob("*.py"), *(root / "node").glob("*.js")]
    named = {name for source in sources for name in re.findall(r"TESSERA_[A-Z0-9_]+", source.read_text())}
    settings = {info.env for info in describe_settings()}
    assert named - settings == set(CLIENT_ENV_NAMES)
    assert unknown_environment(dict.fromkeys(CLIENT_ENV_NAMES, "1")) == []


def test_cors_origins_read_as_browsers_send_them_and_a_bad_one_stops_the_start():
    env = {"TESSERA_SERVING_OIP_HTTP_CORS_ORIGINS": "https://App.example.com:443, http://localhost:3000,*"}
    assert load_settings(env=env).serving.oip_http_cors_origins == (
        "https://app.example.com",
        "http://localhost:3000",
        "*",
    )
    assert load_settings(env={}).serving.oip_http_cors_origins == ()
    for bad in ("app.example.com", "https://app.example.com/", "ftp://x", "null", "https://x:99999"):
        with pytest.raises(SettingsError) as err:
            load_settings(env={"TESSERA_SERVING_OIP_HTTP_CORS_ORIGINS": bad})
        assert "serving.oip_http_cors_origins" in str(err.value)
        assert f"{bad.lower()!r} is not an origin: expected a page's origin as the browser sends it" in str(
            err.value
        )


def test_module_paths_from_a_toml_list_the_environment_or_repeated_flags(tmp_path):
    config = tmp_path / "tesserad.toml"
    config.write_text('[training]\nmodule_paths = ["/srv/models", "/opt/nets"]\n')
    assert load_settings(config, env={}).training.module_paths == (Path("/srv/models"), Path("/opt/nets"))
    env = {"TESSERA_TRAINING_MODULE_PATHS": f"/srv/models{os.pathsep}{os.pathsep}/opt/nets"}
    assert load_settings(env=env).training.module_paths == (Path("/srv/models"), Path("/opt/nets"))
    assert load_settings(env={}).training.module_paths == ()
    args = build_parser().parse_args(["serve", "--module-path", "a", "--module-path", "b"])
    assert args.training__module_paths == ["a", "b"]
    flags = {"training.module_paths": args.training__module_paths}
    # Relative ones are made absolute here: a Ray worker runs in another working directory.
    assert load_settings(env={}, overrides=flags).training.module_paths == (
        Path.cwd() / "a",
        Path.cwd() / "b",
    )


def test_a_variable_over_the_files_setting_is_warned_of_only_when_its_value_differs(tmp_path):
    """A TESSERA_* that says what the file says (a unit and its file written from one template)
    hides no edit of the file: no warning; one that differs, parsed, is named."""
    config = tmp_path / "tesserad.toml"
    config.write_text('grace_period_s = 10\nlisten = "127.0.0.1:50051"\nstore.map_size = "1 GiB"\n')
    same = {
        "TESSERA_GRACE_PERIOD_S": "10.0",
        "TESSERA_LISTEN": "127.0.0.1:50051",
        "TESSERA_STORE_MAP_SIZE": "1GiB",
    }
    assert layer_settings(config, env=same).shadowed == ()
    (warning,) = layer_settings(config, env=same | {"TESSERA_GRACE_PERIOD_S": "12"}).shadowed
    assert warning.startswith(
        "environment variable TESSERA_GRACE_PERIOD_S = '12' overrides grace_period_s = 10 of "
    )
