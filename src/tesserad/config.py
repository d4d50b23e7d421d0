"""Daemon settings: defaults < TOML file < TESSERA_* environment < command-line flags.

Every setting has a dotted name (`store.map_size`), a TOML key in its section (`[store]
map_size = "16GiB"`), an environment variable (`TESSERA_STORE_MAP_SIZE`) and, for the most
used ones, a flag. All sources are parsed and validated at start; every bad value is
reported at once, naming the setting and where the value came from.
"""

from __future__ import annotations

import dataclasses
import difflib
import ipaddress
import math
import os
import re
import tomllib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tesserad.names import NAME_PATTERN, version_like_alias

ENV_PREFIX = "TESSERA_"
# The TESSERA_* variables tessera's clients (Python and Node) read: tesserad shares their
# environment and passes over these without a warning. tests/unit/test_config.py checks the
# clients' sources name no other.
CLIENT_ENV_NAMES = (
    "TESSERA_TARGET",
    "TESSERA_TOKEN",
    "TESSERA_TLS_CA",
    "TESSERA_TIMEOUT_S",
    "TESSERA_KEEPALIVE_S",
    "TESSERA_TRANSFER_TIMEOUT_S",
    "TESSERA_PROTO_DIR",
)


class SettingsError(Exception):
    """One or more settings are invalid; the message lists each with what to fix."""


@dataclass(frozen=True)
class Address:
    """A host and TCP port to listen on; port 0 lets the OS choose."""

    host: str
    port: int

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    @property
    def is_loopback(self) -> bool:
        if self.host == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return False


# -- value parsers: each takes the raw value (TOML value or string) and returns the typed
# -- value or raises ValueError with a message that says what is expected.

_SIZE_UNITS = {
    "": 1,
    "b": 1,
    "kb": 10**3,
    "mb": 10**6,
    "gb": 10**9,
    "tb": 10**12,
    "kib": 2**10,
    "mib": 2**20,
    "gib": 2**30,
    "tib": 2**40,
}
# [0-9], not \d: \d matches other scripts' digits too, which float() and int() read ("٣" as 3).
_SIZE_RE = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*([a-zA-Z]*)\s*$")


def parse_size(raw: Any) -> int:
    """Bytes, from an int or a string such as "512MiB", "16GiB", "1.5GB"."""
    if isinstance(raw, bool):
        raise ValueError("expected a size such as 16GiB")
    if isinstance(raw, int):
        value = raw
    else:
        match = _SIZE_RE.match(str(raw))
        unit = match.group(2).lower() if match else None
        if match is None or unit not in _SIZE_UNITS:
            raise ValueError(
                "expected a size: bytes, or a number with B, KiB, MiB, GiB, TiB, KB, MB, GB or TB"
            )
        value = int(float(match.group(1)) * _SIZE_UNITS[unit])
    if value < 0:
        raise ValueError("a size cannot be negative")
    return value


# The smallest store.map_size a daemon starts and works with (its own records, the reserve for
# jobs' last writes); a bare number is bytes, so `map_size = 64` meant as GiB is refused here, at
# settings time (exit 2), not later as "the store is full".
MIN_MAP_SIZE = 256 << 10


def parse_map_size(raw: Any) -> int:
    """store.map_size: a size of at least MIN_MAP_SIZE."""
    value = parse_size(raw)
    if value < MIN_MAP_SIZE:
        raise ValueError(
            f"expected at least {format_size(MIN_MAP_SIZE)}; a number without a unit is bytes: "
            'write the unit, as "16GiB"'
        )
    return value


# The largest message gRPC can carry (its length prefix is read as a signed 32-bit int).
GRPC_MESSAGE_SIZE_CEILING = 2**31 - 1


def parse_message_size(raw: Any) -> int:
    """A gRPC message size: at least 256 B, at most GRPC_MESSAGE_SIZE_CEILING."""
    value = parse_size(raw)
    if not 256 <= value <= GRPC_MESSAGE_SIZE_CEILING:
        raise ValueError("expected a size from 256B to 2GiB - 1 byte (gRPC's largest message)")
    return value


def format_size(n: int) -> str:
    """The largest binary unit that parse_size reads (up to TiB) and keeps the number at 1 or
    more, to 3 significant digits and never in exponent notation: 17179869184 -> "16 GiB",
    1000 GiB -> "1000 GiB", 1 PiB -> "1024 TiB"."""
    for unit, factor in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= factor:
            value = n / factor
            # `g` writes 3 significant digits of 999.5 and more as "1e+03"; whole ones read plainer.
            return f"{value:.0f} {unit}" if value >= 100 else f"{value:.3g} {unit}"
    return f"{n} B"


def parse_address(raw: Any) -> Address:
    """host:port, [v6]:port; port 0..65535."""
    text = str(raw).strip()
    match = re.match(r"^\[([0-9a-fA-F:.]+)\]:([0-9]+)$", text) or re.match(r"^([^:\s\[\]]+):([0-9]+)$", text)
    if not match and text.isascii() and text.isdigit():
        raise ValueError(f"expected host:port, and {text} is a port alone: write 127.0.0.1:{text}")
    if not match:
        raise ValueError("expected host:port, e.g. 127.0.0.1:50051 or [::1]:50051")
    port = int(match.group(2))
    if port > 65535:
        raise ValueError(f"port {port} is out of range 0..65535")
    return Address(match.group(1), port)


def parse_optional_address(raw: Any) -> Address | None:
    """An address, or "" / "off" to disable."""
    if str(raw).strip().lower() in ("", "off", "none", "disabled"):
        return None
    return parse_address(raw)


def parse_choice(*choices: str) -> Callable[[Any], str]:
    def parse(raw: Any) -> str:
        text = str(raw).strip().lower()
        if text not in choices:
            raise ValueError(f"expected one of {', '.join(choices)}")
        return text

    return parse


def parse_number(kind: type, low: float, high: float) -> Callable[[Any], Any]:
    def parse(raw: Any) -> Any:
        if isinstance(raw, bool):
            raise ValueError(f"expected a number in {low}..{high}")
        try:
            value = kind(raw)
        except (TypeError, ValueError):
            raise ValueError(
                f"expected {'an integer' if kind is int else 'a number'} in {low}..{high}"
            ) from None
        if (isinstance(value, float) and not math.isfinite(value)) or not low <= value <= high:
            raise ValueError(f"expected a value in {low}..{high}")
        return value

    return parse


def parse_bool(raw: Any) -> bool:
    if isinstance(raw, bool):
        return raw
    text = str(raw).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise ValueError("expected true or false")


def parse_path(raw: Any) -> Path:
    text = str(raw).strip()
    if not text:
        raise ValueError("expected a path")
    return Path(text).expanduser()


def parse_module_paths(raw: Any) -> tuple[Path, ...]:
    """Directories, from a list or one string separated by the OS's path separator (as PYTHONPATH),
    made absolute against the daemon's working directory: a Ray worker reads them from another."""
    items = raw if isinstance(raw, list | tuple) else str(raw).split(os.pathsep)
    return tuple(parse_path(item).absolute() for item in items if str(item).strip())


def parse_optional_path(raw: Any) -> Path | None:
    """A path, or "" / "off" for none."""
    if str(raw).strip().lower() in ("", "off", "none"):
        return None
    return parse_path(raw)


# A host name, or one with a leading dot for every name under it; no port, no scheme.
_HOST_NAME_RE = re.compile(r"^\.?[a-z0-9_-]+(\.[a-z0-9_-]+)*$")


def parse_host_names(raw: Any) -> tuple[str, ...]:
    """Host names (lower case), from a list or one string separated by commas; `*` stands for any."""
    items = raw if isinstance(raw, list) else str(raw).split(",")
    names = []
    for item in items:
        name = str(item).strip().lower()
        if not name:
            continue
        if name != "*" and not _HOST_NAME_RE.match(name):
            raise ValueError(
                f"{name[:100]!r} is not a host name: expected names such as tessera.example.com, "
                ".example.com for every name under it, or * for any; no port or scheme (IP addresses "
                "are always answered)"
            )
        names.append(name)
    return tuple(names)


_ORIGIN_RE = re.compile(r"^(https?)://(\[[0-9a-f:.]+\]|[a-z0-9_-]+(?:\.[a-z0-9_-]+)*)(?::([0-9]{1,5}))?$")
_DEFAULT_PORTS = {"http": "80", "https": "443"}


def parse_origins(raw: Any) -> tuple[str, ...]:
    """Browser origins (scheme://host[:port], lower case, a default port left out as browsers
    leave it out of Origin), from a list or one string separated by commas; `*` stands for any."""
    items = raw if isinstance(raw, list) else str(raw).split(",")
    origins = []
    for item in items:
        text = str(item).strip().lower()
        if not text:
            continue
        found = _ORIGIN_RE.match(text)
        if text != "*" and (found is None or int(found[3] or 1) > 65535):
            raise ValueError(
                f"{text[:100]!r} is not an origin: expected a page's origin as the browser sends it, "
                "scheme://host[:port] such as https://app.example.com or http://localhost:3000 (no "
                "path, no trailing slash), or * for any page"
            )
        if found is not None and found[3] == _DEFAULT_PORTS[found[1]]:
            text = f"{found[1]}://{found[2]}"
        origins.append(text)
    return tuple(origins)


@dataclass(frozen=True)
class Preload:
    """A model (the versions its requests are routed to) or one version of it, loaded at start."""

    model: str
    version: int | None = None

    def __str__(self) -> str:
        return self.model if self.version is None else f"{self.model}:{self.version}"


def parse_preloads(raw: Any) -> tuple[Preload, ...]:
    """MODEL or MODEL:VERSION entries, from a list or one string separated by commas."""
    items = raw if isinstance(raw, list) else str(raw).split(",")
    preloads = []
    for item in items:
        text = str(item).strip()
        if not text:
            continue
        model, colon, version = text.partition(":")
        if not NAME_PATTERN.fullmatch(model):
            raise ValueError(
                f"{model[:100]!r} is not a valid model name: expected MODEL or MODEL:VERSION entries "
                "such as resnet or resnet:3"
            )
        if not colon:
            preloads.append(Preload(model))
            continue
        if not (version.isascii() and version.isdigit()) or int(version) < 1:
            raise ValueError(
                f"{text[:100]!r}: a version is a whole number from 1 (write {model} for the versions "
                "its requests are routed to, its deployment's or latest)"
            )
        preloads.append(Preload(model, int(version)))
    return tuple(preloads)


def parse_default_alias(raw: Any) -> str:
    """latest, or the name of an alias (as SetAlias takes it)."""
    text = str(raw).strip()
    if not NAME_PATTERN.fullmatch(text):
        raise ValueError(
            f"{text[:100]!r} is not an alias name: expected latest, or a name such as production "
            "(a-z, 0-9, '.', '_' and '-', starting with a letter or digit)"
        )
    if problem := version_like_alias(text):
        raise ValueError(f"{text!r} {problem}")
    return text


def setting(default: Any, parse: Callable[[Any], Any], help: str) -> Any:
    """A settings field: its default, its parser and a line of help for --help and errors."""
    return field(default=default, metadata={"parse": parse, "help": help})


@dataclass(frozen=True)
class StoreSettings:
    map_size: int = setting(
        16 * 2**30,
        parse_map_size,
        "most the LMDB file may grow to (at least 256 KiB); address space only, disk is used as data arrives",
    )
    durability: str = setting(
        "full",
        parse_choice("full", "relaxed"),
        "full: every commit is fsynced before it is acknowledged; relaxed: synced every "
        "second (a power loss may lose the last second, a daemon crash loses nothing)",
    )
    group_commit_interval_ms: float = setting(
        0.0,
        parse_number(float, 0.0, 1000.0),
        "extra time hot-path writes (metrics, events) wait for others to join their commit; 0: "
        "commit at once, and writes that arrive during a commit share the next one",
    )


@dataclass(frozen=True)
class LimitsSettings:
    max_artifact_size: int = setting(
        8 * 2**30, parse_size, "largest model artifact UploadVersion accepts (RESOURCE_EXHAUSTED above it)"
    )
    max_dataset_size: int = setting(
        4 * 2**30, parse_size, "largest dataset file UploadDataset accepts (RESOURCE_EXHAUSTED above it)"
    )
    max_run_artifact_size: int = setting(
        2**30,
        parse_size,
        "largest run artifact (a plot, notes, a small model file) UploadRunArtifact accepts "
        "(RESOURCE_EXHAUSTED above it)",
    )
    dataset_quota: int = setting(
        64 * 2**30, parse_size, "most bytes all stored datasets may take together (shared content once)"
    )
    chunk_size: int = setting(
        2**20, parse_number(int, 4096, 4 * 2**20), "bytes per chunk of a download when the request sets none"
    )
    max_concurrent_calls: int = setting(
        1000,
        parse_number(int, 1, 1_000_000),
        "RPCs the daemon runs at once (Health Check and OIP ServerLive/ServerReady aside); more "
        "answer RESOURCE_EXHAUSTED. With max_concurrent_streams it also sizes the streams one "
        "connection may open at once (their sum) and the calls gRPC queues before the daemon sees "
        "them (4 times that sum, at least 3,000 and at most 100,000; past it gRPC answers CANCELLED)",
    )
    max_concurrent_streams: int = setting(
        100,
        parse_number(int, 1, 1_000_000),
        "streaming RPCs (watch, upload, download, predict streams) open at once; more answer "
        "RESOURCE_EXHAUSTED. Health Watch streams, open without a token, have as many of their own. "
        "With max_concurrent_calls it also sizes each connection's stream cap and gRPC's queue of "
        "pending calls (see max_concurrent_calls)",
    )
    backup_stall_timeout_s: float = setting(
        120.0,
        parse_number(float, 0.1, 86400.0),
        "seconds a Backup's client may take to take a chunk sent (or the chunk's size at 8 KiB/s, "
        "where longer; the daemon makes one backup at a time); past it the backup ends ABORTED and "
        "the next one in line begins",
    )
    http_request_timeout_s: float = setting(
        60.0,
        parse_number(float, 0.01, 3600.0),
        "on the HTTP listeners: the time a client has to send a request's headers (from its "
        "connection's start or its previous answer; an idle connection closes then) and then its "
        "body (OIP over HTTP and the dashboard's login: 408 after it); on the metrics port, the "
        "time a client has to send its whole request from its connection's start (it is closed "
        "then)",
    )
    http_max_connections: int = setting(
        1000,
        parse_number(int, 1, 1_000_000),
        "connections each HTTP listener (dashboard, OIP over HTTP, metrics) holds open at once; one "
        "more is closed as it arrives, unanswered, and counted in tessera_http_connections_refused_total",
    )


@dataclass(frozen=True)
class SecuritySettings:
    tls_cert_file: Path | None = setting(
        None, parse_optional_path, "PEM server certificate (chain); with tls_key_file it turns TLS on"
    )
    tls_key_file: Path | None = setting(
        None,
        parse_optional_path,
        "PEM private key of tls_cert_file, owned by tesserad's user (0600) or root (0640); on a "
        "read-only tmpfs (a Kubernetes or Docker secret) any mode",
    )
    tls_client_ca_file: Path | None = setting(
        None,
        parse_optional_path,
        "PEM CA bundle; when set, clients must present a certificate it signed (mutual TLS)",
    )
    tokens_file: Path | None = setting(
        None,
        parse_optional_path,
        "TOML file of hashed tokens and their roles (`tesserad tokens add`); when set, every "
        "call needs a token",
    )
    tokens_reload_interval_s: float = setting(
        5.0,
        parse_number(float, 0.0, 86400.0),
        "seconds between checks of tokens_file and the TLS files for a change (one stat each); "
        "a changed file is applied without a restart, as on SIGHUP. 0: only on SIGHUP",
    )
    health_open: bool = setting(
        True, parse_bool, "answer grpc.health.v1.Health (and OIP ServerLive/ServerReady) without a token"
    )
    http_allowed_hosts: tuple[str, ...] = setting(
        (),
        parse_host_names,
        "names (besides localhost and IP addresses) the HTTP listeners (dashboard, OIP over HTTP) "
        "answer in the Host header, and whose pages may POST to them; a leading dot takes the names "
        "under it, * any host. Host is checked on loopback or without authentication, against DNS "
        "rebinding; the metrics port checks it on loopback",
    )
    metrics_role: str = setting(
        "off",
        parse_choice("off", "reader", "trainer", "admin"),
        "the least role a token of tokens_file needs to read /metrics on metrics_listen, sent as "
        "'Authorization: Bearer <token>' (Prometheus: `authorization: {credentials_file: ...}`); "
        "others get 401. off (the default): /metrics answers whoever reaches metrics_listen, as "
        "before. Needs tokens_file",
    )
    metrics_tls: bool = setting(
        False,
        parse_bool,
        "serve /metrics over HTTPS with tls_cert_file (and, when tls_client_ca_file is set, only to "
        "clients with a certificate it signed); false (the default): plain HTTP, as before. Needs "
        "tls_cert_file",
    )


def parse_target(raw: Any) -> str:
    """A gRPC target (host:port, dns:///name:port, ipv4:..., a host alone: port 443), or "" /
    "off" for none; never a URL, which gRPC would take for a host name and dial for ever."""
    text = str(raw).strip()
    if text.lower() in ("", "off", "none"):
        return ""
    if any(c.isspace() for c in text):
        raise ValueError("expected a gRPC target such as tesserad-primary:50051, without spaces")
    scheme, _, rest = text.partition("://")
    if scheme.lower() in ("http", "https"):
        host = rest.split("/", 1)[0] or "tesserad-primary"
        example = host if ":" in host else f"{host}:50051"
        tls = " (TLS is a setting of its own: replica.tls for a primary)" if scheme.lower() == "https" else ""
        raise ValueError(f"expected a gRPC target, not a URL: write host:port, e.g. {example}{tls}")
    return text


def parse_ray_address(raw: Any) -> str:
    """auto, host:port or ray://host:port."""
    text = str(raw).strip()
    if text == "auto":
        return text
    rest = text.removeprefix("ray://")
    if not re.match(r"^(\[[0-9a-fA-F:.]+\]|[^:\s\[\]/]+):[0-9]{1,5}$", rest):
        raise ValueError("expected auto, host:port (the head's GCS port) or ray://host:port")
    return text


@dataclass(frozen=True)
class TrainingSettings:
    cpu_slots: int = setting(
        2, parse_number(int, 0, 1024), "CPU training jobs (or DDP processes) that may run at once; 0: none"
    )
    threads_per_slot: int = setting(
        0, parse_number(int, 0, 1024), "torch threads per CPU worker process; 0: usable cores / cpu_slots"
    )
    watch_buffer_events: int = setting(
        1024,
        parse_number(int, 16, 1_000_000),
        "events buffered per WatchJob stream; a watcher that falls further behind is ended with "
        "RESOURCE_EXHAUSTED and resumes from the sequence number it names",
    )
    cancel_grace_s: float = setting(
        10.0,
        parse_number(float, 0.0, 3600.0),
        "how long a cancelled job may take to reach its next step boundary before it is killed",
    )
    resource_interval_s: float = setting(
        5.0, parse_number(float, 0.1, 3600.0), "how often a running job reports its CPU and memory use"
    )
    compile: str = setting(
        "auto",
        parse_choice("auto", "on", "off"),
        "torch.compile the model in training workers; auto: on for CUDA jobs, off on CPU, where "
        "the cnn4d bench measured compile at 0.5-1.2x eager's speed after up to minutes of compiling",
    )
    backend: str = setting(
        "local",
        parse_choice("local", "ray"),
        "where jobs run: local worker processes, or the Ray cluster at training.ray_address, a job as "
        "a Ray actor and a DDP job as a Ray Train TorchTrainer (needs the tesserad[ray] extra)",
    )
    ray_address: str = setting(
        "auto",
        parse_ray_address,
        "the Ray cluster of training.backend = ray: host:port of its head (GCS), ray://host:10001, or "
        "auto (the cluster `ray start` began on this machine)",
    )
    ray_daemon_target: str = setting(
        "",
        parse_target,
        "the gRPC target Ray workers reach this daemon at, to fetch datasets (default: the listen "
        "address, which must then be reachable from every Ray node); when the daemon serves TLS the "
        "workers connect with TLS, trusting security.tls_cert_file, so it must name this target",
    )
    ray_worker_token_file: Path | None = setting(
        None,
        parse_optional_path,
        "file holding the token (reader role) Ray workers present to fetch datasets when "
        "security.tokens_file is set; it travels to them with each job",
    )
    ray_tls_cert_file: Path | None = setting(
        None,
        parse_optional_path,
        "PEM client certificate Ray workers present to fetch datasets when the daemon asks for one "
        "(security.tls_client_ca_file, which must have signed it); it travels to them with each job",
    )
    ray_tls_key_file: Path | None = setting(
        None, parse_optional_path, "PEM private key of ray_tls_cert_file (0600, or 0640 owned by root)"
    )
    ray_dataset_cache_size: int = setting(
        16 * 2**30,
        parse_size,
        "bytes of fetched datasets each Ray node keeps for the jobs that follow (least recently "
        "used evicted; one a job began with in the last minute stays)",
    )
    checkpoints_keep_latest: int = setting(
        1,
        parse_number(int, 0, 1000),
        "checkpoints an ended job keeps, newest first (the rest are released and their blobs deleted); "
        "1: the newest, which PBT copies and a finished job's weights come from; a job's spec.checkpoints.retain_latest "
        "overrides it. A sweep's trials keep theirs until the sweep ends",
    )
    checkpoints_keep_best: int = setting(
        1,
        parse_number(int, 0, 1000),
        "checkpoints an ended job keeps besides those, best first by its spec.checkpoints.keep_best_metric "
        "(none without one); a job's spec.checkpoints.retain_best overrides it",
    )
    module_paths: tuple[Path, ...] = setting(
        (),
        parse_module_paths,
        "directories the architecture family python imports users' nn.Module classes from "
        "(entry module:Class); none (the default): that family is refused. Whoever can write "
        "them runs code as the daemon",
    )
    worker_start: str = setting(
        "forkserver",
        parse_choice("forkserver", "spawn"),
        "how a job's worker process starts; forkserver: forked from a server process that has "
        "imported torch once (a job starts in milliseconds); spawn: a fresh interpreter per job "
        "that imports torch itself (about 1.5 s of CPU more per job)",
    )


@dataclass(frozen=True)
class NnSettings:
    max_workspace: int = setting(
        0,
        parse_size,
        "most scratch memory one Conv4d call may take in training workers; a faster formulation "
        "that needs more gives way to the next best (logged at debug); also the most that "
        "Conv4d's pool of large scratch buffers keeps between calls; 0: no limit (the pool keeps "
        "up to 1 GiB)",
    )


@dataclass(frozen=True)
class ServingSettings:
    oip_http_listen: Address | None = setting(
        None,
        parse_optional_address,
        "the Open Inference Protocol over HTTP/REST (KServe v2 /v2/..., as Triton's port 8000; "
        "e.g. 127.0.0.1:8000); off (the default) disables; port 0 picks a free port",
    )
    oip_http_max_json_size: int = setting(
        64 * 2**20,
        parse_size,
        "largest JSON part of an inference request over HTTP (the whole body, or what its "
        "Inference-Header-Content-Length says); beyond: 413, pointing to binary tensor data",
    )
    oip_http_json_processes: int = setting(
        1,
        parse_number(int, 0, 64),
        "processes (started as the first large body arrives) that parse inference request JSON "
        "of oip_http_json_process_min_size and more, so health probes and other calls are not "
        "held up behind its parse; 0: every body is parsed on the daemon's event loop",
    )
    oip_http_json_process_min_size: int = setting(
        64 * 2**10,
        parse_size,
        "inference request JSON of this size or more is parsed in those processes; smaller JSON "
        "is parsed on the event loop, where 16 KiB of numbers takes about as long as a hand-over",
    )
    oip_http_json_queue_size: int = setting(
        128 * 2**20,
        parse_size,
        "most bytes of request bodies (binary data included) whose JSON waits for or is in those "
        "processes (one body is always taken); beyond: 503 with Retry-After. A parse gets "
        "limits.http_request_timeout_s plus 1 s per MiB: past it, its process is killed and its "
        "request answered 503",
    )
    oip_http_cors_origins: tuple[str, ...] = setting(
        (),
        parse_origins,
        "browser origins (https://app.example.com) whose pages may call the Open Inference "
        "Protocol over HTTP (CORS: preflights answered, Access-Control-Allow-Origin, credentials "
        "and the Authorization header allowed), a TOML list or origins separated by commas; * any "
        "page, without credentials; empty (the default): no CORS headers, as Triton",
    )
    trace_file: Path | None = setting(
        None,
        parse_optional_path,
        "the file the Open Inference Protocol's trace extension writes traces to (Triton's "
        "trace_file; with a log_frequency, FILE.0, FILE.1, ...), overwritten as tracing starts; "
        "clients turn tracing on and off, never change the file; off (the default): tracing stays off",
    )
    autoload: bool = setting(
        True,
        parse_bool,
        "a request for a version that is not loaded loads it with the defaults below; one whose "
        "load failed is not loaded again for a request until LoadModel, RepositoryModelLoad or an unload",
    )
    preload: tuple[Preload, ...] = setting(
        (),
        parse_preloads,
        "models loaded (with the defaults below) before the daemon reports ready, as Triton's "
        "--load-model: MODEL (the versions its requests are routed to) or MODEL:VERSION, a TOML "
        "list or names separated by commas; one that cannot be loaded stops the start. A primary's "
        "only: a replica loads what its primary's deployments route to",
    )
    default_alias: str = setting(
        "latest",
        parse_default_alias,
        "what a request naming no version gets from a model without a deployment: latest (its "
        "newest version), or the version an alias names (production, say) where the model has "
        "that alias, its latest where it has not",
    )
    instances: int = setting(
        0,
        parse_number(int, 0, 64),
        "default model instances per loaded version, running batches in parallel; 0: 2 on a CPU, 1 on a GPU",
    )
    max_batch_size: int = setting(
        32,
        parse_number(int, 1, 65536),
        "default most rows per batch (a Predict of more runs in slices of this many); 1 turns batching off",
    )
    max_queue_delay_us: int = setting(
        0,
        parse_number(int, 0, 10_000_000),
        "default longest a request waits for more rows while the model is idle (0: never delay a lone request)",
    )
    max_queue_size: int = setting(
        1024,
        parse_number(int, 1, 1_000_000),
        "default most queued requests per version; beyond: RESOURCE_EXHAUSTED (the Open Inference "
        "Protocol answers UNAVAILABLE, HTTP 503, as Triton)",
    )
    warmup_runs: int = setting(
        2, parse_number(int, 0, 1000), "default inference runs on random inputs before traffic"
    )
    max_shared_memory_regions: int = setting(
        256,
        parse_number(int, 1, 65536),
        "most system shared-memory regions registered at once (each holds an open file "
        "descriptor until unregistered); beyond: RESOURCE_EXHAUSTED",
    )
    intra_op_threads: int = setting(
        0,
        parse_number(int, 0, 1024),
        "default onnxruntime threads per instance; 0: on a CPU the cores shared among a version's instances, on a GPU onnxruntime's own default",
    )
    inline_max_compute_us: float = setting(
        500.0,
        parse_number(float, 0.0, 1e7),
        "a lone request to an idle model runs on the gRPC thread when a batch takes at most this long",
    )
    drain_timeout_s: float = setting(
        30.0,
        parse_number(float, 0.0, 3600.0),
        "how long an unloaded or swapped-out version may finish its queue",
    )
    response_cache_size: int = setting(
        0,
        parse_size,
        "bytes of answers kept for versions loaded with response_cache (least recently used "
        "evicted; shared by every version); 0: no response cache, and a load asking for it fails",
    )
    explain_threads: int = setting(
        1,
        parse_number(int, 1, 64),
        "threads that compute explanations (Explain); at most this many run at once beside Predict",
    )
    explain_queue_size: int = setting(
        4, parse_number(int, 1, 1024), "most explanations waiting for a thread; beyond: RESOURCE_EXHAUSTED"
    )
    explain_chunk_rows: int = setting(
        8,
        parse_number(int, 1, 4096),
        "most model rows an explanation runs at once; a Predict waits behind at most one such chunk",
    )
    triton_metrics: bool = setting(
        True,
        parse_bool,
        "also export Triton's per-model metrics (nv_inference_request_success and the rest) on "
        "/metrics, for dashboards, alerts and autoscalers built on Triton's; /metrics is then always "
        "in Prometheus's text format 0.0.4, as Triton's is (their counters cannot be OpenMetrics)",
    )
    switch_interval_us: float = setting(
        500.0,
        parse_number(float, 0.0, 100_000.0),
        "Python's GIL switch interval (0: Python's 5 ms default); 500 us lifted served/in-process "
        "onnxruntime throughput from 0.71 to 0.83 for a conv model",
    )


@dataclass(frozen=True)
class RegistrySettings:
    max_concurrent_exports: int = setting(
        1,
        parse_number(int, 1, 64),
        "ONNX exports (ExportOnnx) that run at once, on threads of their own so that other calls "
        "never wait behind them; more wait their turn, and one whose caller goes away or whose "
        "deadline passes leaves the queue unstarted (once started, it registers nothing). An export takes seconds to minutes of CPU "
        "(torch's exporter, then a parity run on torch's and onnxruntime's threads); a stop waits for "
        "a running one at most grace_period_s, then abandons it (it registers nothing, and is logged)",
    )
    max_queued_exports: int = setting(
        16,
        parse_number(int, 1, 1024),
        "most ONNX exports waiting for an export thread; beyond: RESOURCE_EXHAUSTED (each waiting "
        "export holds a call open and, once it runs, a model's weights in memory)",
    )
    deployment_history: int = setting(
        100,
        parse_number(int, 1, 1_000_000),
        "deployment revisions kept per model (ListDeployments): each Deploy or Rollback, and each "
        "start for every model, drops those older than this many, except the ones before the current "
        "deployment that Rollbacks restore in turn, so this many minus one Rollbacks always find what "
        "to restore",
    )


@dataclass(frozen=True)
class ReplicaSettings:
    primary: str = setting(
        "",
        parse_target,
        "run as a serving replica of the tesserad at this gRPC target (empty: a primary with its own registry)",
    )
    cache_size: int = setting(
        4 * 2**30, parse_size, "bytes of artifacts a replica keeps (least recently used evicted)"
    )
    advertise: str = setting(
        "",
        parse_target,
        "the address a replica announces to its primary for cluster statistics (default: its listen address)",
    )
    change_history: int = setting(
        10_000,
        parse_number(int, 1, 100_000_000),
        "on a primary: the newest registry changes kept in full for WatchChanges; older ones are "
        "compacted to each model's newest, which is all a replica needs to catch up",
    )
    keepalive_s: float = setting(
        20.0,
        parse_number(float, 1.0, 3600.0),
        "seconds between a replica's pings of its primary (HTTP/2 keepalive); a connection that "
        "answers none for as long again is taken as lost, and the replica connects again. The "
        "primary's heartbeats, telling the replica its newest change, come as often",
    )
    tls: bool = setting(
        False,
        parse_bool,
        "reach the primary over TLS (on by itself when any other replica.tls_* setting is set); on "
        "a primary (also on when it serves TLS itself), ask replicas that serve plaintext for "
        "cluster statistics only at a loopback address; those that serve TLS are asked over TLS, "
        "each replica's certificate checked against the address it announces",
    )
    tls_ca_file: Path | None = setting(
        None,
        parse_optional_path,
        "PEM CA that signed the primary's certificate (default: the system's roots); on a "
        "primary, the CA that signed its replicas' certificates",
    )
    tls_cert_file: Path | None = setting(
        None,
        parse_optional_path,
        "PEM client certificate for mutual TLS to the primary; on a primary, the one it presents "
        "to replicas that ask for one",
    )
    tls_key_file: Path | None = setting(None, parse_optional_path, "PEM private key of tls_cert_file")
    tls_server_name: str = setting(
        "", str, "name to check the primary's certificate against (a replica's setting only)"
    )
    token_file: Path | None = setting(
        None, parse_optional_path, "file holding the token a replica presents to the primary (reader role)"
    )

    @property
    def uses_tls(self) -> bool:
        """Whether the replica reaches its primary over TLS: a CA, a client certificate or a
        name to check means TLS, so setting one never leaves the link in plaintext."""
        return self.tls or any(
            (self.tls_ca_file, self.tls_cert_file, self.tls_key_file, self.tls_server_name)
        )


@dataclass(frozen=True)
class Settings:
    listen: Address = setting(
        Address("127.0.0.1", 50051),
        parse_address,
        "gRPC address; port 0 picks a free port; clients and replicas may ping it (HTTP/2 keepalive) as "
        "often as every 0.5 s, also with no call in flight (pings more often, three times over, close "
        'the connection with GOAWAY "too_many_pings")',
    )
    data_dir: Path = setting(Path("./var"), parse_path, "where the LMDB store and the blobs live")
    metrics_listen: Address | None = setting(
        Address("127.0.0.1", 9464), parse_optional_address, "Prometheus /metrics address; off disables"
    )
    http_listen: Address | None = setting(
        Address("127.0.0.1", 8080),
        parse_optional_address,
        "the read-only web dashboard and its JSON API (/api/v1); off disables; port 0 picks a free port",
    )
    log_format: str = setting(
        "console", parse_choice("console", "json"), "console for people, json for collectors"
    )
    log_level: str = setting(
        "info", parse_choice("debug", "info", "warning", "error"), "least severe level logged"
    )
    log_audit: bool = setting(
        True,
        parse_bool,
        "an INFO line (logger tesserad.audit) for each call that changes state: its RPC, caller, "
        "peer, objects and status code; false turns them off (refused credentials and a full disk "
        "are logged at WARNING either way)",
    )
    grace_period_s: float = setting(
        10.0,
        parse_number(float, 0.0, 3600.0),
        "on SIGTERM, how long in-flight calls may run before they are cancelled; the trace writer "
        "then gets as long again (at least 1 s) to write the traces taken (serving.trace_file)",
    )
    shutdown_delay_s: float = setting(
        0.0,
        parse_number(float, 0.0, 3600.0),
        "on SIGTERM or SIGINT, how long to report not ready (gRPC health NOT_SERVING, OIP "
        "/v2/health/ready 400) while still serving, so load balancers stop routing here before the "
        "stop; a second SIGTERM or SIGINT cuts it short. 0 for systemd or a single host; several "
        "seconds behind Kubernetes Services (endpoints update after the pod is told to stop)",
    )
    max_message_size: int = setting(
        64 * 2**20,
        parse_message_size,
        "largest gRPC message accepted or sent (stream artifacts in chunks)",
    )
    store: StoreSettings = field(default_factory=StoreSettings)
    serving: ServingSettings = field(default_factory=ServingSettings)
    training: TrainingSettings = field(default_factory=TrainingSettings)
    nn: NnSettings = field(default_factory=NnSettings)
    limits: LimitsSettings = field(default_factory=LimitsSettings)
    registry: RegistrySettings = field(default_factory=RegistrySettings)
    security: SecuritySettings = field(default_factory=SecuritySettings)
    replica: ReplicaSettings = field(default_factory=ReplicaSettings)


@dataclass(frozen=True)
class SettingInfo:
    """One setting's name, where to set it, its default (and that default as a TOML file or
    the environment would give it), and its help line."""

    name: str
    env: str
    default: Any
    help: str
    default_text: str


def _default_text(default: Any, parse: Callable[[Any], Any]) -> str:
    """`default` as its parser takes it back: true, off, 16 GiB, ./var (not True, None,
    17179869184, var)."""
    if isinstance(default, bool):
        return "true" if default else "false"
    if default is None or (default == "" and parse is parse_target):
        return "off"
    if default in ("", ()):
        return '""'
    if isinstance(default, tuple):
        return ", ".join(map(str, default))
    if parse in (parse_size, parse_message_size, parse_map_size):
        return format_size(default)
    if isinstance(default, Path) and not default.is_absolute():
        return f"./{default}"
    return str(default)


def describe_settings() -> list[SettingInfo]:
    """Every setting, for --help texts and docs."""
    return [
        SettingInfo(
            name, _env_name(name), default, f.metadata["help"], _default_text(default, f.metadata["parse"])
        )
        for name, f, default in _walk(Settings(), "")
    ]


@dataclass(frozen=True)
class LayeredSettings:
    """Settings with where each value came from: `sources` maps a dotted name set by a file, a
    variable or a flag to that source (`TESSERA_LISTEN`, `--listen`, the file's path); `shadowed`
    says, for each setting the config file sets and an environment variable sets again, which
    won (the file's value is then not the one in force, which a ConfigMap's or unit's reader
    would not guess)."""

    settings: Settings
    sources: Mapping[str, str]
    shadowed: tuple[str, ...]

    def where(self, message: str) -> str:
        """`message` with the source of each setting it names that was not left at its default,
        so a start-up error about a value says which of a file, a variable or a flag gave it."""
        named = [
            name
            for name in self.sources
            if re.search(rf"(?<![\w.]){re.escape(name)}(?=\s*[(:=,;]|\s+(?:is|to|and|or)\b|\.?$)", message)
        ]
        if not named:
            return message
        return message + " (" + "; ".join(f"{name} from {self.sources[name]}" for name in named) + ")"


def load_settings(
    config_file: Path | None = None,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Settings:
    """Layer the sources and validate. `overrides` maps dotted names to raw flag values."""
    return layer_settings(config_file, env, overrides).settings


def layer_settings(
    config_file: Path | None = None,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
    flags: Mapping[str, str] | None = None,
) -> LayeredSettings:
    """`load_settings`, keeping where each value came from. `flags`: the flag that gives each
    setting of `overrides` (`--oip-http-listen` for serving.oip_http_listen), for messages."""
    environ = os.environ if env is None else env
    raw: dict[str, tuple[Any, str]] = {}
    errors: list[str] = []
    shadowed: list[str] = []
    parsers = {name: f.metadata["parse"] for name, f, _ in _walk(Settings(), "")}
    known = set(parsers)

    if config_file is not None:
        for name, value in _flatten(_read_config(config_file)):
            if name not in known:
                errors.append(f"{name} (in {config_file}): {_unknown(name, known)}")
            else:
                raw[name] = (value, str(config_file))
    for name in sorted(known):
        env_name = _env_name(name)
        if env_name in environ:
            # The same value in both (`"10"` over `10`, `./x` over `x`) hides no edit of the file.
            if name in raw and not _same_value(parsers[name], raw[name][0], environ[env_name]):
                shadowed.append(
                    f"environment variable {env_name} = {environ[env_name]!r} overrides {name} = "
                    f"{raw[name][0]!r} of {config_file}: the environment ranks above the config file; "
                    f"unset {env_name} to let the file decide"
                )
            raw[name] = (environ[env_name], env_name)
    for name, value in (overrides or {}).items():
        if name not in known:
            raise KeyError(f"no setting named {name}")
        if value is not None:
            raw[name] = (value, (flags or {}).get(name) or "--" + name.replace("_", "-").replace(".", "-"))

    settings = Settings()
    for name, f, _ in _walk(settings, ""):
        if name not in raw:
            continue
        value, source = raw[name]
        try:
            parsed = f.metadata["parse"](value)
        except ValueError as exc:
            errors.append(f"{name} = {value!r} (from {source}): {exc}")
            continue
        settings = _replace(settings, name.split("."), parsed)
    if errors:
        raise SettingsError("invalid settings:\n  " + "\n  ".join(errors))
    return LayeredSettings(settings, {name: source for name, (_, source) in raw.items()}, tuple(shadowed))


def unknown_environment(env: Mapping[str, str] | None = None) -> list[str]:
    """A warning for each TESSERA_* variable that names no setting (nor one a client reads), with
    the setting it likely meant. Not an error, as a config file's unknown key is: the environment
    is shared with other tools."""
    environ = os.environ if env is None else env
    settings = {_env_name(name): name for name, _, _ in _walk(Settings(), "")}
    warnings = []
    for env_name in sorted(environ):
        if not env_name.startswith(ENV_PREFIX) or env_name in settings or env_name in CLIENT_ENV_NAMES:
            continue
        key = env_name.removeprefix(ENV_PREFIX)
        guess = difflib.get_close_matches(
            key, [k.removeprefix(ENV_PREFIX) for k in settings], n=1, cutoff=0.75
        )
        meant = (
            [ENV_PREFIX + guess[0]]
            if guess
            else sorted(k for k, name in settings.items() if name.rpartition(".")[2].upper() == key)
        )
        hint = f"; did you mean {settings[meant[0]]} ({meant[0]})?" if meant else ""
        warnings.append(
            f"environment variable {env_name} names no tesserad setting and is ignored{hint} "
            "(`tesserad settings` lists every setting)"
        )
    return warnings


def _read_config(config_file: Path) -> dict[str, Any]:
    """The TOML document of `config_file`; SettingsError naming the file and what to fix."""
    try:
        text = config_file.read_bytes().decode()
    except FileNotFoundError:
        raise SettingsError(f"config file {config_file} does not exist") from None
    except IsADirectoryError:
        raise SettingsError(f"config file {config_file} is a directory; name the TOML file in it") from None
    except PermissionError:
        raise SettingsError(
            f"config file {config_file} cannot be read: permission denied; make it readable by the "
            "user tesserad runs as"
        ) from None
    except OSError as exc:
        raise SettingsError(f"config file {config_file} cannot be read: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise SettingsError(
            f"config file {config_file} is not UTF-8 text (byte {exc.start} cannot be decoded); "
            "TOML files are UTF-8: save it as such"
        ) from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise SettingsError(f"config file {config_file} is not valid TOML: {exc}") from None


def _unknown(name: str, known: set[str]) -> str:
    """Why `name` is refused, with the setting it most likely meant (or the names its section
    takes) rather than all of them."""
    sections = sorted({k.split(".")[0] for k in known if "." in k})
    if name in sections:
        return f"{name} is a section, not a setting: write its settings under [{name}]"
    section, _, key = name.rpartition(".")
    listing = "(`tesserad settings` lists every setting)"
    if section in known:
        return f"{section} is a setting, not a section: give it one value, as `{section} = ...`"
    if section and section not in sections:
        return f"there is no section [{section}]; the sections are [{'], ['.join(sections)}] {listing}"
    prefix = f"{section}." if section else ""
    siblings = sorted(k.removeprefix(prefix) for k in known if k.rpartition(".")[0] == section)
    guess = difflib.get_close_matches(key, siblings, n=1, cutoff=0.75)
    elsewhere = sorted(k for k in known if k.rpartition(".")[2] == key)
    if guess:
        hint = f"did you mean {prefix}{guess[0]}?"
    elif elsewhere:
        hint = f"did you mean {elsewhere[0]}?"
    else:
        hint = f"{f'[{section}]' if section else 'the top level'} takes {', '.join(siblings)}"
    return f"unknown setting; {hint} {listing}"


def _env_name(name: str) -> str:
    return ENV_PREFIX + name.replace(".", "_").upper()


def _same_value(parse: Callable[[Any], Any], a: Any, b: Any) -> bool:
    try:
        return bool(parse(a) == parse(b))
    except ValueError:
        # One of them is refused as the settings are read, naming it; until then they differ.
        return False


def _walk(obj: Any, prefix: str) -> Iterator[tuple[str, dataclasses.Field[Any], Any]]:
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        name = prefix + f.name
        if dataclasses.is_dataclass(value) and "parse" not in f.metadata:
            yield from _walk(value, name + ".")
        else:
            yield name, f, value


def _flatten(document: Mapping[str, Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    for key, value in document.items():
        if isinstance(value, dict):
            yield from _flatten(value, f"{prefix}{key}.")
        else:
            yield prefix + key, value


def _replace(obj: Any, path: list[str], value: Any) -> Any:
    head, *rest = path
    new = value if not rest else _replace(getattr(obj, head), rest, value)
    return dataclasses.replace(obj, **{head: new})
