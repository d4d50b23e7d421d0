"""`tessera`: the command line for tesserad. Tables for people, `--json` for scripts; every
failure exits non-zero with the daemon's message, never a traceback."""

from __future__ import annotations

if __name__ == "__main__":
    # `python -m tessera.cli`: before the imports below (grpc, numpy, rich: a good part of a
    # second), the entry the `tessera` command runs, which answers Ctrl-C and SIGTERM from the
    # first instant and then imports this module as tessera.cli to run it.
    from tessera.entry import main as entry_main

    raise SystemExit(entry_main())

import argparse
import contextlib
import io
import math
import os
import signal
import sys
import threading
import zipfile
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, BinaryIO, NoReturn, TextIO, TypeVar

import numpy as np
from rich.console import Console
from rich.table import Table
from rich.text import Text

from tessera import __version__
from tessera.backup import Manifest, SavedBackup
from tessera.client import Client
from tessera.command_parser import CommandParser
from tessera.demo import run_demo
from tessera.ensembles import COMBINES, fit_stacking, member_pair
from tessera.entry import EXIT_INTERRUPTED, EXIT_TERMINATED
from tessera.errors import InvalidArgument, JobFailed, TesseraError
from tessera.events import JobState
from tessera.explanations import METHODS, SHORT_NAMES, top_positions
from tessera.follow import follow
from tessera.json_output import dumps, to_plain
from tessera.messages import INT64_MAX, counted, dataset_ref, is_digits, load_toml, to_datetime, whole_number
from tessera.models import FORMAT_BY_SUFFIX
from tessera.progress_line import ProgressLine, byte_size, progress_wanted
from tessera.rpc_commands import in_cli_words, unreachable_hint
from tessera.run_filter import (
    RunFilterError,
    is_order_string,
    parse_filter,
    parse_metric_condition,
    parse_order,
)
from tessera.sweep_commands import add_sweep_commands, short_value
from tessera.tables import FittedTable, fitted_table
from tessera.tensors import dtype_name
from tessera.training import artifact_target
from tessera.transport import TLS, TOKEN_ENV
from tessera.v1 import datasets_pb2, inference_pb2, registry_pb2, training_pb2

DEFAULT_TARGET = "127.0.0.1:50051"
INT32_MAX = 2**31 - 1
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_DAEMON = 3
# What a shell reports for a tool killed by SIGPIPE (128 + 13), as `yes | head` leaves for yes.
EXIT_OUTPUT_CLOSED = 141
EXIT_STATUS_HELP = f"""\
exit status:
  0    done
  {EXIT_FAILED}    failed here: a file could not be read or written (stdout closed with `>&-` too),
       a spec file is wrong, a followed job or sweep ended without succeeding, or
       `load --keep-config` found the version not loaded (no config to keep)
  {EXIT_USAGE}    the command line is wrong: the message says what, under the command's usage
  {EXIT_DAEMON}    the daemon refused or failed the request, or could not be reached: the message
       starts with the gRPC status (NOT_FOUND, INVALID_ARGUMENT, UNAVAILABLE, ...)
  {EXIT_INTERRUPTED}  interrupted (Ctrl-C); a file being written is removed
  {EXIT_TERMINATED}  terminated (SIGTERM); a file being written is removed, as after Ctrl-C
  {EXIT_OUTPUT_CLOSED}  the output was closed early (`tessera ... | head`); nothing more is printed

--json prints enum values as the tables show them, lowercase without their type's prefix
("succeeded", not "JOB_STATE_SUCCEEDED"); 64-bit integers are numbers. With --json too, a
failure is text on stderr, never JSON (stdout holds only what was done, as with gh or
kubectl): test the status, and for 3 the gRPC status after "tessera: "
("tessera: NOT_FOUND: ...")."""
JSON_HELP = "print JSON for scripts instead of tables"
# The first bytes of a .npy file and of a .npz (a zip archive).
NPY_MAGIC, ZIP_MAGIC = b"\x93NUMPY", b"PK\x03\x04"
_V = TypeVar("_V")


class UsageError(ValueError):
    """A mistake on the command line that argparse cannot see (flags that go together, a file
    whose suffix says nothing): it exits 2 under the command's usage line, as argparse's own do."""


class Terminated(BaseException):
    """SIGTERM, raised in the main thread where it is, as Ctrl-C raises KeyboardInterrupt: the
    temp file of a download or backup is removed on the way out, where the default action of
    SIGTERM would leave it behind."""


class _Signals:
    """Ctrl-C (SIGINT) and SIGTERM while a command runs: each raises in the main thread
    (KeyboardInterrupt, Terminated), so that the file being written is removed on the way out;
    `caught` says one came. Only the main thread may set a handler: main() run from another
    thread keeps the default. A signal ignored stays ignored (a shell's background job ignores
    Ctrl-C)."""

    def __init__(self) -> None:
        self.caught = False
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> _Signals:
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGINT, signal.SIGTERM):
                if signal.getsignal(signum) is not signal.SIG_IGN:
                    self._previous[signum] = signal.signal(signum, self._raise)
        return self

    def __exit__(self, *exc: object) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)

    def _raise(self, signum: int, frame: object) -> NoReturn:
        self.caught = True
        if signum == signal.SIGTERM:
            raise Terminated
        raise KeyboardInterrupt


class _PipeConsole(Console):
    """rich exits with status 1 when its output is closed; the CLI ends quietly instead."""

    def on_broken_pipe(self) -> None:
        self.quiet = True
        raise BrokenPipeError


class _StatusConsole(Console):
    """Progress on stderr: when its reader has gone, the command goes on without it."""

    def on_broken_pipe(self) -> None:
        self.quiet = True


class Output:
    """Where a command's results go: rich tables on the terminal, or JSON on stdout; progress
    goes to stderr (`status`), so that `> file` or `| jq` gets the results alone."""

    def __init__(self, as_json: bool, console: Console | None = None) -> None:
        self.as_json = as_json
        self.console = console or _PipeConsole(highlight=False, soft_wrap=False)
        self.status = _StatusConsole(stderr=True, highlight=False)

    def json(self, value: Any) -> None:
        print(dumps(value, indent=2))

    def table(
        self,
        title: str | None,
        columns: Sequence[str],
        rows: Iterable[Sequence[Any]],
        whole: Collection[str] = (),
        unbroken: Collection[str] = (),
        stacked: Mapping[str, str] | None = None,
        leave_out_first: Sequence[str] = (),
        narrower_rows: Iterable[Sequence[Any]] | None = None,
    ) -> None:
        """A table that fits the console (see `fitted_table`); one whose whole columns alone are
        too wide is printed wider than the console rather than cut. `narrower_rows`, the same
        rows in shorter words, are shown instead when `rows` would leave a column out."""

        def fitted(cells: Iterable[Sequence[Any]]) -> FittedTable:
            return fitted_table(
                self.console.width, title, columns, list(cells), whole, unbroken, stacked, leave_out_first
            )

        table = fitted(rows)
        if table.left_out and narrower_rows is not None:
            table = fitted(narrower_rows)
        self.console.print(table.table, width=table.width, crop=False)

    def pairs(self, title: str, pairs: Iterable[tuple[str, Any]]) -> None:
        table = Table(title=title, show_header=False)
        table.add_column("field", style="bold", no_wrap=True)
        table.add_column("value", overflow="fold")
        for key, value in pairs:
            table.add_row(Text(key), Text(str(value)))
        self.console.print(table)

    def line(self, text: str) -> None:
        self.console.print(text, markup=False)


def selector(text: str) -> int | str:
    """A version given on the command line: a number, or else an alias."""
    return whole_number(text) if is_digits(text) else text


def version_or_alias(text: str) -> int | str:
    """argparse's type for a version number or an alias."""
    try:
        return selector(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def whole(low: int = 0, high: int = INT64_MAX) -> Callable[[str], int]:
    """argparse's type for versions, counts and sequence numbers in low..high, the range of the
    proto field the option fills: past an int32 field's, protobuf fails with a bare "Value out
    of range" (and int() also reads "٣" as 3)."""

    def parse(text: str) -> int:
        try:
            value = whole_number(text)
        except ValueError:
            value = None
        if value is None or not low <= value <= high:
            shown = text if len(text) <= 40 else text[:40] + "..."
            raise argparse.ArgumentTypeError(
                f"must be a whole number in {low}..{high} written in digits 0-9, got {shown!r}"
            )
        return value

    return parse


def dataset(text: str) -> str:
    """argparse's type for NAME[:VERSION]."""
    try:
        dataset_ref(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None
    return text


def daemon_target(text: str) -> str:
    """argparse's type for --target (and TESSERA_TARGET): a gRPC target, never a URL, with a port
    (gRPC resolves "http://host:port" as a host name, and dials 443 without a port)."""
    where = "here or in env TESSERA_TARGET"
    if text.startswith(("http://", "https://")):
        host = text.split("://", 1)[1].split("/", 1)[0]
        example = host if ":" in host else f"{host}:{DEFAULT_TARGET.rsplit(':', 1)[1]}"
        tls = " (with --tls for TLS)" if text.startswith("https://") else ""
        raise argparse.ArgumentTypeError(
            f"{text!r} is a URL; tesserad speaks gRPC: write HOST:PORT, e.g. {example}{tls}, {where}"
        )
    if ":" not in text:
        raise argparse.ArgumentTypeError(
            f"{text!r} has no port: write HOST:PORT, e.g. {text}:{DEFAULT_TARGET.rsplit(':', 1)[1]}, {where}"
        )
    return text


def member(text: str) -> str:
    """argparse's type for an ensemble member MODEL:VERSION."""
    try:
        member_pair(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None
    return text


def route(text: str) -> tuple[int | str, int]:
    """argparse's type for a deployment route VERSION=PERCENT or ALIAS=PERCENT."""
    target, sep, weight = text.partition("=")
    if not sep or not target or not is_digits(weight):
        raise argparse.ArgumentTypeError(
            f"route {text!r}: write VERSION=PERCENT or ALIAS=PERCENT, e.g. 3=90 staging=10"
        )
    return version_or_alias(target), int(weight)


def key_value(text: str) -> tuple[str, str]:
    """argparse's type for a param or tag KEY=VALUE."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"{text!r}: write KEY=VALUE")
    return key, value


def once_each(pairs: Iterable[tuple[str, _V]] | None, flag: str) -> dict[str, _V]:
    """The pairs a repeated flag gave, as a dict; UsageError for a key given twice, whose first
    value a dict would drop without a word."""
    given: dict[str, _V] = {}
    for key, value in pairs or ():
        if key in given:
            raise UsageError(f"{flag} {key} is given twice; give each once")
        given[key] = value
    return given


def split(text: str) -> tuple[str, float]:
    """argparse's type for a dataset split NAME=FRACTION."""
    name, sep, fraction = text.partition("=")
    try:
        value = float(fraction)
    except ValueError:
        value = math.nan
    if not sep or not name or not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text!r}: write NAME=FRACTION, e.g. train=0.8")
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(
            f"{text!r}: the fraction must be above 0 and at most 1, e.g. train=0.8"
        )
    return name, value


def weight_list(text: str) -> list[float]:
    """argparse's type for ensemble weights "2,1,1": the daemon's rule (finite, >= 0, a positive
    sum), so that a weight it would refuse is a usage error before any member is looked up."""
    try:
        weights = [float(part) for part in text.split(",")]
    except ValueError:
        weights = [math.nan]
    if not all(math.isfinite(weight) and weight >= 0 for weight in weights) or sum(weights) <= 0:
        raise argparse.ArgumentTypeError(
            f"must be finite numbers >= 0 with a positive sum, separated by commas, like 2,1,1; got {text!r}"
        )
    return weights


def finite(text: str) -> float:
    """argparse's type for a plain number: float() also reads "nan" and "inf" (and "1e400" as
    inf), which no input value or threshold means."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, like 0 or -1.5; got {text!r}")
    return value


def seconds(text: str) -> float:
    """argparse's type for durations: float() also reads "nan" and "inf", and gRPC ends a call
    with either as its deadline at once."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 0 < value < math.inf:
        raise argparse.ArgumentTypeError(f"must be a number of seconds above 0, got {text!r}")
    return value


def when(timestamp: Any) -> str:
    moment = to_datetime(timestamp)
    return moment.strftime("%Y-%m-%d %H:%M:%S") if moment else "-"


def size(num_bytes: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if num_bytes < 1024 or unit == "GiB":
            return f"{num_bytes:.0f} {unit}" if unit == "B" else f"{num_bytes:.1f} {unit}"
        num_bytes /= 1024
    return f"{num_bytes:.1f} GiB"


def shape(dims: Iterable[int]) -> str:
    return "(" + ", ".join("?" if d < 0 else str(d) for d in dims) + ")"


# Commands. Each takes (client, args, out) and prints its result.


def cmd_info(client: Client, args: argparse.Namespace, out: Output) -> None:
    info = client.system.info()
    if out.as_json:
        return out.json(info)
    out.line(f"tesserad {info.version} on {info.hostname} (pid {info.pid}), up {info.uptime_s:.0f} s")
    out.table(
        "devices",
        ["id", "name", "cores", "memory"],
        [(d.id, d.name, d.cores or "-", size(d.memory_total_bytes)) for d in info.devices],
        whole=("id", "name"),
    )
    usage = info.data_dir
    out.line(
        f"data {usage.path}: store {size(usage.store_bytes)} of {size(usage.store_map_size_bytes)}, "
        f"blobs {size(usage.blob_bytes)}, {size(usage.fs_free_bytes)} free"
    )


def cmd_models_ls(client: Client, args: argparse.Namespace, out: Output) -> None:
    models = list(client.models.list(prefix=args.prefix))
    if out.as_json:
        return out.json(models)
    out.table(
        "models",
        ["name", "latest", "versions", "aliases", "updated"],
        [
            (
                m.name,
                m.latest_version or "-",
                m.version_count,
                ", ".join(f"{a}={v}" for a, v in sorted(m.aliases.items()) if a != "latest") or "-",
                when(m.updated_at),
            )
            for m in models
        ],
        whole=("name", "latest"),
        unbroken=("aliases",),
    )


def cmd_models_show(client: Client, args: argparse.Namespace, out: Output) -> None:
    version = client.models.version(args.model, args.version)
    if out.as_json:
        return out.json(version)
    out.pairs(f"{version.model} v{version.version}", version_rows(version))


def version_rows(version: registry_pb2.ModelVersion) -> list[tuple[str, Any]]:
    rows: list[tuple[str, Any]] = [
        ("format", registry_pb2.ArtifactFormat.Name(version.format).removeprefix("ARTIFACT_FORMAT_").lower()),
        ("size", size(version.size_bytes)),
        ("sha256", version.sha256),
        ("parameters", f"{version.parameter_count:,}"),
        ("aliases", ", ".join(version.aliases) or "-"),
        ("created", f"{when(version.created_at)} by {version.created_by or '-'}"),
    ]
    if version.description:
        rows.append(("description", version.description))
    rows += [(f"tag {k}", v) for k, v in sorted(version.tags.items())]
    for spec in version.signature.inputs:
        rows.append((f"input {spec.name}", shape(spec.shape)))
    for spec in version.signature.outputs:
        rows.append((f"output {spec.name}", shape(spec.shape)))
    rows += [(f"metric {k}", f"{v:.5g}") for k, v in sorted(version.metrics.items())]
    lineage = version.lineage
    if lineage.job_id:
        rows.append(("trained by", f"job {lineage.job_id}, run {lineage.run_id}"))
    for dataset in lineage.datasets:
        gone = f" (deleted, sha256 {dataset.sha256[:12]})" if dataset.deleted else ""
        rows.append(("dataset", f"{dataset.name}:{dataset.version}{gone}"))
    if lineage.parent_version:
        rows.append(("parent", parent_text(version)))
    return rows


def parent_text(version: registry_pb2.ModelVersion) -> str:
    """The lineage parent; a deleted one says so, since a model created again under its name
    has a version of the same number that is another one."""
    lineage = version.lineage
    text = f"{lineage.parent_model or version.model} v{lineage.parent_version}"
    if not lineage.HasField("parent_deleted"):
        return text
    gone = lineage.parent_deleted
    known = [f"deleted {when(gone.deleted_at)}" if gone.HasField("deleted_at") else "deleted"]
    known += [f"sha256 {gone.sha256}"] if gone.sha256 else []
    return f"{text} ({', '.join(known)})"


def cmd_models_versions(client: Client, args: argparse.Namespace, out: Output) -> None:
    versions = list(client.models.versions(args.model))
    if out.as_json:
        return out.json(versions)
    out.table(
        f"{args.model} versions",
        ["version", "format", "size", "aliases", "created", "description"],
        [
            (
                v.version,
                registry_pb2.ArtifactFormat.Name(v.format).removeprefix("ARTIFACT_FORMAT_").lower(),
                size(v.size_bytes),
                ", ".join(v.aliases) or "-",
                when(v.created_at),
                v.description,
            )
            for v in versions
        ],
        whole=("version",),
        unbroken=("aliases",),
    )


def cmd_models_push(client: Client, args: argparse.Namespace, out: Output) -> None:
    # The SDK's own messages for these name its keyword arguments (format=, architecture=).
    artifact_format = args.format or FORMAT_BY_SUFFIX.get(Path(args.file).suffix.lower())
    if artifact_format is None:
        raise UsageError(
            f"{args.file}: cannot tell the format from the suffix; name the file .onnx or .safetensors, "
            "or pass --format"
        )
    if artifact_format == "safetensors" and not args.spec:
        raise UsageError(
            f"{args.file}: safetensors weights need --spec SPEC.toml with the [architecture] that built them"
        )
    architecture = None
    if args.spec:
        spec = load_toml(args.spec)
        architecture = spec.get("architecture", spec)
    version = client.models.push(
        args.model,
        args.file,
        format=artifact_format,
        architecture=architecture,
        alias=args.alias,
        description=args.description,
        progress=transfer_progress(out, f"pushing {Path(args.file).name}"),
    )
    if out.as_json:
        return out.json(version)
    out.line(
        f"registered {version.model} v{version.version} ({size(version.size_bytes)}, sha256 {version.sha256[:12]})"
    )
    if version.HasField("alias_moved"):
        print_alias_moved(out, version.alias_moved)


def cmd_models_ensemble(client: Client, args: argparse.Namespace, out: Output) -> None:
    stacking = None
    if args.fit:
        if args.combine != "stacking":
            raise UsageError("--fit fits a stacking combiner; use it with --combine stacking")
        stacking = fit_stacking_on(client, args.members, args.fit, args.fit_target)
    version = client.models.register_ensemble(
        args.model,
        args.members,
        args.combine,
        weights=args.weights,
        stacking=stacking,
        alias=args.alias,
        description=args.description,
    )
    if out.as_json:
        return out.json(version)
    out.line(f"registered {version.model} v{version.version}: {args.combine} of {', '.join(args.members)}")


def fit_stacking_on(client: Client, members: Sequence[str], path: str, target: str) -> dict[str, Any]:
    """A stacking combiner fitted on held-out rows: the .npz's inputs run through each member."""
    arrays = load_inputs(path)
    if target not in arrays:
        raise ValueError(
            f"{path} has no {target!r} array (the targets: class labels or scores); name it with --fit-target"
        )
    targets = arrays.pop(target)
    outputs = []
    for member in members:
        model, version = member_pair(member)
        (output,) = client.inference.predict(model, arrays, version=version).outputs.values()
        outputs.append(output)
    return fit_stacking(outputs, targets)


def cmd_models_alias(client: Client, args: argparse.Namespace, out: Output) -> None:
    alias = client.models.set_alias(args.model, args.alias, args.version)
    if out.as_json:
        return out.json(alias)
    out.line(f"{alias.model}: {alias.alias} -> v{alias.version}")


def cmd_models_aliases(client: Client, args: argparse.Namespace, out: Output) -> None:
    aliases = list(client.models.aliases(args.model))
    if out.as_json:
        return out.json(aliases)
    out.table(
        f"{args.model} aliases",
        ["alias", "version", "updated", "by"],
        [(a.alias, f"v{a.version}", when(a.updated_at), a.updated_by) for a in aliases],
    )


def cmd_models_unalias(client: Client, args: argparse.Namespace, out: Output) -> None:
    client.models.delete_alias(args.model, args.alias)
    if out.as_json:
        return out.json({"model": args.model, "alias": args.alias, "deleted": True})
    out.line(f"{args.model}: alias {args.alias} deleted")


def cmd_models_deploy(client: Client, args: argparse.Namespace, out: Output) -> None:
    routes: dict[int | str, int] = {}
    for chosen, weight in args.routes:
        if chosen in routes:
            words = f"version {chosen}" if isinstance(chosen, int) else f"alias {chosen!r}"
            raise UsageError(f"route {words} is given twice; give it one route with the percents added")
        routes[chosen] = weight
    deployment = client.models.deploy(
        args.model,
        routes,
        shadow=args.shadow,
        shadow_percent=args.shadow_percent,
        comment=args.comment,
    )
    print_deployment(deployment, out)


def cmd_models_rollback(client: Client, args: argparse.Namespace, out: Output) -> None:
    print_deployment(client.models.rollback(args.model), out)


def print_deployment(deployment: registry_pb2.Deployment, out: Output) -> None:
    if out.as_json:
        return out.json(deployment)
    if deployment.undeployed:
        return out.line(
            f"{deployment.model}: no deployment (revision {deployment.revision}: {deployment.comment}); "
            "requests without a version or alias go to the latest version"
        )
    rows = []
    for route in deployment.routes:
        target = f"alias {route.alias}" if route.WhichOneof("target") == "alias" else f"v{route.version}"
        rows.append(
            (target, f"{route.weight}%", f"v{route.resolved_version}" if route.resolved_version else "-")
        )
    if deployment.HasField("shadow") and deployment.shadow.WhichOneof("target"):
        shadow = deployment.shadow
        target = f"alias {shadow.alias}" if shadow.WhichOneof("target") == "alias" else f"v{shadow.version}"
        rows.append((f"shadow {target}", f"{shadow.percent}% copied", f"v{shadow.resolved_version}"))
    out.table(
        f"{deployment.model} deployment revision {deployment.revision}",
        ["route", "traffic", "resolves to"],
        rows,
        whole=("route", "resolves to"),
    )


def cmd_models_changes(client: Client, args: argparse.Namespace, out: Output) -> None:
    shown = 0
    for change in client.models.watch_changes(from_seq=args.from_seq, follow=args.follow):
        shown += 1
        if out.as_json:
            print(dumps(change), flush=True)
        else:
            out.line(change_line(change))
    if not shown and not out.as_json:
        out.line(f"no changes from seq {max(args.from_seq, 1)} on")


def change_line(change: registry_pb2.RegistryChange) -> str:
    """One change in words: "7  2026-12-04 10:00:00  linear: alias moved; latest v2, production=v2,
    deployed production 100% (v2)"."""
    kinds = ", ".join(
        registry_pb2.ChangeKind.Name(kind).removeprefix("CHANGE_KIND_").lower().replace("_", " ")
        for kind in change.kinds
    )
    head = f"{change.seq}  {when(change.time)}  {change.model}: {kinds}"
    if not change.HasField("state"):
        return head
    state = change.state
    parts = [f"latest v{state.latest_version}" if state.latest_version else "no versions"]
    parts += [f"{alias}=v{version}" for alias, version in sorted(state.aliases.items())]
    if state.HasField("deployment") and not state.deployment.undeployed:
        routes = ", ".join(
            f"{route.alias or f'v{route.version}'} {route.weight}% (v{route.resolved_version})"
            for route in state.deployment.routes
        )
        parts.append(f"deployed {routes}")
        shadow = state.deployment.shadow
        if shadow.WhichOneof("target"):
            parts.append(f"shadow {shadow.alias or f'v{shadow.version}'} {shadow.percent}%")
    return f"{head}; {', '.join(parts)}"


def cmd_models_compare(client: Client, args: argparse.Namespace, out: Output) -> None:
    diff = client.models.compare(args.model, args.a, args.b)
    if out.as_json:
        return out.json(diff)
    title = f"{args.model}: v{diff.a.version} vs v{diff.b.version}"
    rows: list[tuple[str, str, str, str]] = []
    for m in diff.metrics:
        a = f"{m.a:.5g}" if m.present_a else "-"
        b = f"{m.b:.5g}" if m.present_b else "-"
        rows.append((f"metric {m.key}", a, b, f"{m.delta:+.5g}" if m.present_a and m.present_b else ""))
    for p in diff.params:
        rows.append((f"param {p.key}", p.a if p.present_a else "-", p.b if p.present_b else "-", ""))
    for item in diff.lineage:
        rows.append((f"lineage {item.key}", item.a or "-", item.b or "-", ""))
    rows.append(("size", size(diff.a.size_bytes), size(diff.b.size_bytes), f"{diff.size_delta:+,} B"))
    rows.append(
        ("signature", "", "", "same" if diff.same_signature else "; ".join(diff.signature_differences))
    )
    out.table(title, ["", "a", "b", "b - a"], rows)


FORMAT_WORDS = {
    registry_pb2.ARTIFACT_FORMAT_SAFETENSORS: "a safetensors",
    registry_pb2.ARTIFACT_FORMAT_ONNX: "an ONNX",
    registry_pb2.ARTIFACT_FORMAT_ENSEMBLE: "an ensemble",
}
"""Each artifact format with its article, as a message names it."""

SUFFIX_BY_FORMAT = {
    registry_pb2.ARTIFACT_FORMAT_SAFETENSORS: ".safetensors",
    registry_pb2.ARTIFACT_FORMAT_ONNX: ".onnx",
    registry_pb2.ARTIFACT_FORMAT_ENSEMBLE: ".json",
}
"""The file suffix of each artifact format, for download's default name and its check of a given one."""


def cmd_models_download(client: Client, args: argparse.Namespace, out: Output) -> None:
    # Resolved first: the file's name must match the artifact's format, and the number pins
    # the version downloaded to the one checked.
    resolved = client.models.version(args.model, args.version)
    suffix = SUFFIX_BY_FORMAT.get(resolved.format, "")
    default = f"{resolved.model}-v{resolved.version}{suffix}"
    path = Path(args.path) if args.path else Path(default)
    if path.is_dir():
        path = path / default
    given = path.suffix.lower()
    if suffix and given in SUFFIX_BY_FORMAT.values() and given != suffix:
        raise UsageError(
            f"{path} names a {given} file, but {resolved.model} v{resolved.version} is "
            f"{FORMAT_WORDS[resolved.format]} "
            f"artifact; name it {suffix} (or leave the name out for {default})"
        )
    version = client.models.download(
        resolved.model,
        path,
        resolved.version,
        progress=transfer_progress(out, f"downloading {args.model}"),
    )
    if out.as_json:
        return out.json({"path": str(path), "version": to_plain(version)})
    out.line(f"wrote {path}: {version.model} v{version.version}, {size(version.size_bytes)}, sha256 verified")


def cmd_datasets_push(client: Client, args: argparse.Namespace, out: Output) -> None:
    splits = once_each(args.split, "--split")
    tags = once_each(args.tag, "--tag")
    if args.array_name and Path(args.file).suffix.lower() != ".npy":
        raise UsageError(
            f"--array-name names the array of a .npy file; {args.file} is not one (an .npz names its arrays itself)"
        )
    version = client.datasets.push(
        args.name,
        args.file,
        splits=splits or None,
        seed=args.seed,
        array_name=args.array_name,
        allow_nonfinite=args.allow_nonfinite,
        description=args.description,
        tags=tags,
        progress=transfer_progress(out, f"pushing {Path(args.file).name}"),
    )
    if out.as_json:
        return out.json(version)
    described = f"{counted(version.num_samples, 'sample')}, {size(version.size_bytes)}"
    if version.existing_version:
        out.line(f"already stored as {version.name}:{version.version} (same bytes and splits): {described}")
    elif version.HasField("shared_with"):
        shared = f"{version.shared_with.name}:{version.shared_with.version}"
        out.line(f"stored {version.name}:{version.version} (bytes shared with {shared}): {described}")
    else:
        out.line(f"stored {version.name}:{version.version}: {described}")
    print_dataset_version(version, out)


def cmd_datasets_ls(client: Client, args: argparse.Namespace, out: Output) -> None:
    datasets = list(client.datasets.list(prefix=args.prefix))
    if out.as_json:
        return out.json(datasets)
    out.table(
        "datasets",
        ["name", "latest", "versions", "size", "updated"],
        [
            (d.name, d.latest_version, d.version_count, size(d.size_bytes), when(d.updated_at))
            for d in datasets
        ],
        whole=("name", "latest"),
    )


def cmd_datasets_show(client: Client, args: argparse.Namespace, out: Output) -> None:
    version = client.datasets.version(args.ref)
    if out.as_json:
        return out.json(version)
    print_dataset_version(version, out)


def cmd_datasets_versions(client: Client, args: argparse.Namespace, out: Output) -> None:
    versions = list(client.datasets.versions(args.name))
    if out.as_json:
        return out.json(versions)
    out.table(
        f"{args.name} versions",
        ["version", "samples", "arrays", "splits", "size", "created", "description"],
        [
            (
                v.version,
                v.num_samples,
                ", ".join(a.name for a in v.arrays),
                ", ".join(sp.name for sp in v.splits) or "-",
                size(v.size_bytes),
                when(v.created_at),
                v.description,
            )
            for v in versions
        ],
        whole=("version",),
        unbroken=("arrays", "splits"),
    )


def cmd_datasets_rm(client: Client, args: argparse.Namespace, out: Output) -> None:
    ref = dataset_ref(args.ref)
    deleted = client.datasets.delete(ref.name, ref.version, force=args.force)
    if out.as_json:
        return out.json({"name": ref.name, "version": ref.version, "deleted_versions": deleted})
    if ref.version:
        return out.line(f"deleted {ref.name}:{ref.version}")
    out.line(f"deleted dataset {ref.name} ({counted(deleted, 'version')})")


def cmd_datasets_download(client: Client, args: argparse.Namespace, out: Output) -> None:
    # Resolved first: the default file name carries the version and the stored format.
    version = client.datasets.version(args.ref)
    suffix = "npy" if version.format == datasets_pb2.DATASET_FORMAT_NPY else "npz"
    default = f"{version.name}-v{version.version}.{suffix}"
    path = Path(args.output) if args.output else Path(default)
    if path.is_dir():
        path = path / default
    version = client.datasets.download(
        f"{version.name}:{version.version}",
        path,
        progress=None if out.as_json else transfer_progress(out, f"downloading {version.name}"),
    )
    if out.as_json:
        return out.json({"path": str(path), "version": to_plain(version)})
    out.line(
        f"wrote {path}: {version.name}:{version.version}, {counted(version.num_samples, 'sample')}, "
        f"{size(version.size_bytes)}, sha256 verified"
    )


def cmd_admin_backup(client: Client, args: argparse.Namespace, out: Output) -> None:
    if args.output == "-":
        if args.force:
            raise UsageError("--force replaces a file; with --output - there is none: leave it out")
        if args.progress and out.as_json:
            raise UsageError(
                "--progress with --json and --output - would put both on stderr: leave --progress out"
            )
        return _backup_to_stdout(client, args, out)
    path = Path(args.output)
    # A trailing "/" names a directory too, one that does not exist yet (Path drops it).
    if path.is_dir() or args.output.endswith(("/", os.sep)):
        raise UsageError(f"--output {args.output} is a directory; name the file to write")
    try:
        saved = _backup_with_progress(client, path, args, out)
    except FileExistsError:
        raise UsageError(f"--output {args.output} exists; pass --force to replace it") from None
    if out.as_json:
        return out.json(_backup_summary(saved, str(path)))
    out.line(f"wrote {path}: {_backup_file(saved)}, {_backup_contents(saved)}")


def _backup_with_progress(
    client: Client, path: Path | BinaryIO, args: argparse.Namespace, out: Output
) -> SavedBackup:
    """The backup to `path`, its progress drawn on stderr for whoever watches it."""
    wanted = progress_wanted(args.progress, out.as_json, sys.stderr)
    with ProgressLine("backup", sys.stderr if wanted else None) as line:

        def told(done: int, total: int) -> None:
            line.update(done, total)
            if done == total and isinstance(path, Path):
                # A file is read back whole to check it before it takes its name.
                line.note(f"all {byte_size(total)} came; reading it back to check it")

        # Nothing comes until the daemon has copied its store: minutes, for a large one.
        line.note("the daemon is copying its store")
        saved = client.system.backup(path, overwrite=args.force, progress=told)
        line.finish(saved.archive_size)
    return saved


def _backup_to_stdout(client: Client, args: argparse.Namespace, out: Output) -> None:
    """The archive on stdout as it comes, checked on the way; the summary on stderr."""
    stdout = sys.stdout.buffer
    if stdout.isatty():
        # As tar refuses: an archive is no use on a terminal, and would garble it.
        raise UsageError("refusing to write the backup to a terminal; redirect stdout (> FILE, | CMD)")
    try:
        saved = _backup_with_progress(client, stdout, args, out)
    except TesseraError as err:
        # Part of the archive may be on stdout already, where a reader could take it for one.
        raise type(err)(
            f"{err.message}; what reached stdout is an incomplete archive and must not be used"
        ) from None
    print(
        dumps(_backup_summary(saved, "-"), indent=2)
        if args.json
        else f"wrote the backup to stdout: {_backup_file(saved)}, {_backup_contents(saved)}",
        file=sys.stderr,
    )


def _backup_summary(saved: SavedBackup, path: str) -> dict[str, Any]:
    return {
        "path": path,
        "size_bytes": saved.archive_size,
        "sha256": saved.archive_sha256,
        "tesserad_version": saved.tesserad_version,
        "created_at": saved.created_at,
        "records": sum(saved.records.values()),
        "blobs": len(saved.blobs),
        "blob_bytes": saved.blob_bytes,
    }


def _backup_file(saved: SavedBackup) -> str:
    """The archive's size and sha256, to record beside it (what `sha256sum` prints of it)."""
    return f"{size(saved.archive_size)}, sha256 {saved.archive_sha256}"


def _backup_contents(manifest: Manifest) -> str:
    return (
        f"{counted(sum(manifest.records.values()), 'record')}, {counted(len(manifest.blobs), 'blob')} "
        f"({size(manifest.blob_bytes)}), every file's sha256 verified"
    )


def print_dataset_version(version: Any, out: Output) -> None:
    out.table(
        f"{version.name}:{version.version} ({counted(version.num_samples, 'sample')})",
        ["array", "dtype", "shape", "min", "max", "mean", "std"],
        [
            (
                a.name,
                dtype_name(a.dtype),
                shape(a.shape),
                f"{a.stats.min:.4g}",
                f"{a.stats.max:.4g}",
                f"{a.stats.mean:.4g}",
                f"{a.stats.std:.4g}",
            )
            for a in version.arrays
        ],
        whole=("array",),
    )
    if version.splits:
        out.line("splits: " + ", ".join(f"{s.name} {s.count}" for s in version.splits))
    if version.description:
        out.line(f"description: {version.description}")
    if version.tags:
        out.line("tags: " + ", ".join(f"{k}={v}" for k, v in sorted(version.tags.items())))


def cmd_train(client: Client, args: argparse.Namespace, out: Output) -> None:
    job = client.training.submit(load_toml(args.spec))
    if not args.follow:
        if out.as_json:
            return out.json(job.info)
        out.line(f"submitted job {job.id} ({job.state.value}); follow it with: tessera jobs watch {job.id}")
        return None
    if not out.as_json:
        out.line(f"submitted job {job.id}")
    finish(follow(job, out.console, out.as_json))
    return None


def finish(job: Any) -> None:
    """A followed job that did not succeed makes the command fail."""
    if job.state != JobState.SUCCEEDED:
        raise JobFailed(
            job, f"job {job.id} ended {job.state.value}" + (f": {job.info.error}" if job.info.error else "")
        )


def cmd_jobs_ls(client: Client, args: argparse.Namespace, out: Output) -> None:
    jobs = list(client.training.jobs(states=args.state or ()))
    if out.as_json:
        return out.json([job.info for job in jobs])
    out.table(
        "jobs",
        ["id", "state", "experiment", "progress", "epoch", "train_loss (epoch)", "created"],
        [
            (
                j.id,
                j.state.value,
                j.info.experiment,
                f"{j.info.progress:.0%}",
                j.info.epoch,
                f"{j.info.metrics['train_loss']:.4g}" if "train_loss" in j.info.metrics else "-",
                when(j.info.created_at),
            )
            for j in jobs
        ],
        whole=("id",),
        leave_out_first=("created", "epoch"),
    )


def cmd_jobs_show(client: Client, args: argparse.Namespace, out: Output) -> None:
    job = client.training.job(args.job_id).info
    if out.as_json:
        return out.json(job)
    registered = f"{job.registered.model} v{job.registered.version}" if job.HasField("registered") else "-"
    out.pairs(
        f"job {job.job_id}",
        [
            ("state", JobState.from_proto(job.state).value),
            ("experiment", job.experiment),
            ("run", job.run_id),
            ("sweep", job.sweep_id or "-"),
            ("attempt", job.attempt),
            ("progress", f"{job.progress:.0%} (epoch {job.epoch}, step {job.step} of {job.total_steps})"),
            ("created", when(job.created_at)),
            ("started", when(job.started_at)),
            ("ended", when(job.ended_at)),
            ("error", job.error or "-"),
            ("registered", registered),
            *[(f"metric {k}", f"{v:.5g}") for k, v in sorted(job.metrics.items())],
            (
                "checkpoints",
                f"{job.checkpoints_kept} kept"
                + (f" ({len(job.checkpoints)} listed)" if len(job.checkpoints) < job.checkpoints_kept else "")
                + f", {job.checkpoints_released} released",
            ),
        ],
    )
    if not job.checkpoints:
        return None
    # The value of the metric that makes a checkpoint the best, beside each.
    metric = job.spec.checkpoints.keep_best_metric
    out.table(
        "checkpoints",
        ["epoch", "step", "reason", *([metric] if metric else []), "size", "saved", "sha256"],
        [
            (
                c.epoch,
                c.step,
                c.reason + (" (best)" if c.best and c.reason != "best" else ""),
                *([f"{c.metrics[metric]:.5g}" if metric in c.metrics else "-"] if metric else []),
                size(c.size_bytes),
                when(c.created_at),
                c.sha256[:12],
            )
            for c in job.checkpoints
        ],
        whole=("epoch", "step", "sha256"),
    )
    return None


def cmd_jobs_watch(client: Client, args: argparse.Namespace, out: Output) -> None:
    job = client.training.job(args.job_id)
    finish(follow(job, out.console, out.as_json, from_seq=args.from_seq))


def cmd_jobs_cancel(client: Client, args: argparse.Namespace, out: Output) -> None:
    job = client.training.cancel(args.job_id)
    if out.as_json:
        return out.json(job.info)
    # A queued job ends at once; a running one is asked to stop and goes on until its next step.
    stopping = "; it stops at its next step" if job.state == JobState.RUNNING else ""
    out.line(f"job {job.id}: {job.state.value}{stopping}")


def run_status(run: training_pb2.Run) -> str:
    status = training_pb2.RunStatus.Name(run.status).removeprefix("RUN_STATUS_").lower()
    return f"{status} (deleted)" if run.deleted else status


def metric_condition(text: str) -> training_pb2.MetricFilter:
    """argparse's type for --metric KEY<VALUE (or <=, >, >=, =, !=)."""
    try:
        return parse_metric_condition(text)
    except RunFilterError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def check_run_search(args: argparse.Namespace) -> None:
    """UsageError for a --filter or --order-by that cannot be read, that says again what a flag
    beside it says (whether both should hold would be a guess), or --asc/--desc without an order."""
    try:
        found = parse_filter(args.filter)
    except RunFilterError as err:
        raise UsageError(f"--filter: {err}") from None
    try:
        order = parse_order(args.order_by) if args.order_by and is_order_string(args.order_by) else None
    except RunFilterError as err:
        raise UsageError(f"--order-by: {err}") from None
    for flag, given, written, in_filter in (
        ("--status", args.status, "attributes.status", found.statuses),
        ("--param", args.param, "params", found.params),
        ("--tag", args.tag, "tags", found.tags),
        ("--metric", args.metric, "metrics", found.metrics),
    ):
        if given and in_filter:
            raise UsageError(
                f"--filter compares {written} and {flag} too; give those conditions in one of them"
            )
    if args.descending is not None and not args.order_by:
        flag = "--desc" if args.descending else "--asc"
        raise UsageError(f"{flag} orders by the metric --order-by names: add --order-by METRIC")
    if order is not None and order.descending is not None and args.descending is not None:
        raise UsageError(f"--order-by {args.order_by!r} gives its direction: leave out --asc and --desc")


def cmd_runs_ls(client: Client, args: argparse.Namespace, out: Output) -> None:
    check_run_search(args)
    runs = list(
        client.training.runs(
            experiment=args.experiment,
            statuses=args.status or (),
            params=once_each(args.param, "--param"),
            tags=once_each(args.tag, "--tag"),
            metrics=args.metric or (),
            order_by=args.order_by or "",
            descending=args.descending,
            view=VIEWS[args.view],
            filter=args.filter,
        )
    )
    if out.as_json:
        return out.json(runs)
    if not runs and (args.status or args.param or args.tag or args.metric or args.filter):
        # An empty table gives no clue that a key was misspelt (`lr` where a job's run says optimizer.lr).
        of = f" of experiment {args.experiment}" if args.experiment else ""
        return out.line(
            f"no run{of} meets these conditions; `tessera runs show RUN_ID` lists the params, tags and "
            "metrics a run has (a job's run has each field of its spec as a param, by path: optimizer.lr)"
        )
    out.table(
        "runs",
        ["id", "experiment", "name", "status", "metrics (last values)", "started"],
        [
            (
                r.run_id,
                r.experiment,
                r.name,
                run_status(r),
                ", ".join(f"{m.key}={m.last:.4g}" for m in r.metrics),
                when(r.start_time),
            )
            for r in runs
        ],
        whole=("id", "experiment", "name"),
        unbroken=("metrics (last values)",),
        stacked={"name": "id"},
    )


def cmd_runs_show(client: Client, args: argparse.Namespace, out: Output) -> None:
    run = client.training.run(args.run_id)
    if out.as_json:
        return out.json(run)
    rows: list[tuple[str, Any]] = [
        ("experiment", run.experiment),
        ("name", run.name),
        ("status", run_status(run)),
        ("job", run.job_id or "-"),
        ("started", when(run.start_time)),
        ("ended", when(run.end_time)),
    ]
    rows += [(f"param {k}", v) for k, v in sorted(run.params.items())]
    rows += [(f"tag {k}", v) for k, v in sorted(run.tags.items())]
    rows += [
        (
            f"metric {m.key}",
            f"last {m.last:.5g}  min {m.min:.5g}  max {m.max:.5g}  ({counted(m.count, 'point')})",
        )
        for m in run.metrics
    ]
    out.pairs(f"run {run.run_id}", rows)


def cmd_runs_rm(client: Client, args: argparse.Namespace, out: Output) -> None:
    run = client.training.delete_run(args.run_id)
    if out.as_json:
        return out.json(run)
    out.line(f"deleted run {run.run_id}; bring it back with: tessera runs restore {run.run_id}")


def cmd_runs_restore(client: Client, args: argparse.Namespace, out: Output) -> None:
    run = client.training.restore_run(args.run_id)
    if out.as_json:
        return out.json(run)
    out.line(f"restored run {run.run_id}")


def cmd_runs_artifacts_ls(client: Client, args: argparse.Namespace, out: Output) -> None:
    artifacts = list(client.training.list_artifacts(args.run_id, args.path))
    if out.as_json:
        return out.json(artifacts)
    under = f" under {args.path}" if args.path else ""
    if not artifacts:
        return out.line(
            f"run {args.run_id} has no artifacts{under}; store one with: "
            f"tessera runs artifacts put {args.run_id} FILE"
        )
    out.table(
        f"artifacts of run {args.run_id}{under}",
        ["path", "size", "sha256", "stored"],
        [(a.path, size(a.size_bytes), a.sha256[:12], when(a.created_at)) for a in artifacts],
        whole=("path",),
    )


def cmd_runs_artifacts_put(client: Client, args: argparse.Namespace, out: Output) -> None:
    if Path(args.file).is_dir():
        return put_artifact_tree(client, args, out)
    artifact = client.training.log_artifact(
        args.run_id,
        args.file,
        args.path or None,
        progress=transfer_progress(out, f"storing {Path(args.file).name}"),
    )
    if out.as_json:
        return out.json(artifact)
    out.line(
        f"stored {artifact.path} in run {artifact.run_id} "
        f"({size(artifact.size_bytes)}, sha256 {artifact.sha256[:12]})"
    )


def put_artifact_tree(client: Client, args: argparse.Namespace, out: Output) -> None:
    """`put RUN DIR`: every file under DIR, at its path under --path, as MLflow's log_artifacts."""
    stored = client.training.log_artifacts(args.run_id, args.file, args.path or None)
    if out.as_json:
        return out.json(stored)
    where = f"under {args.path.removesuffix('/')}/" if args.path else "at the top"
    if not stored:
        return out.line(f"no files under {args.file}, so nothing was stored in run {args.run_id}")
    total = sum(a.size_bytes for a in stored)
    out.line(
        f"stored {counted(len(stored), 'file')} ({size(total)}) from {args.file} {where} in run {args.run_id}; "
        f"list them with: tessera runs artifacts ls {args.run_id}"
    )


def cmd_runs_artifacts_get(client: Client, args: argparse.Namespace, out: Output) -> None:
    # "plots/" is the directory "plots" (see download_artifacts).
    args.path = args.path.removesuffix("/")
    listed = list(client.training.list_artifacts(args.run_id, args.path))
    if not listed and not args.path.strip("/"):
        # Every artifact asked for, and there are none: not a path to refuse.
        if out.as_json:
            return out.json({"path": str(Path(args.output or ".")), "artifacts": []})
        return out.line(
            f"run {args.run_id} has no artifacts, so nothing was written; store one with: "
            f"tessera runs artifacts put {args.run_id} FILE"
        )
    if not listed or any(a.path == args.path for a in listed):
        # One file (or nothing there: the daemon's NOT_FOUND says so).
        path = artifact_target(args.path, args.output)
        artifact = client.training.download_artifact(
            args.run_id, args.path, path, progress=transfer_progress(out, f"downloading {args.path}")
        )
        if out.as_json:
            return out.json({"path": str(path), "artifact": to_plain(artifact)})
        return out.line(f"wrote {path}: {artifact.path}, {size(artifact.size_bytes)}, sha256 verified")
    root = Path(args.output or ".")
    local = client.training.download_artifacts(args.run_id, args.path, root)
    if out.as_json:
        return out.json({"path": str(local), "artifacts": to_plain(listed)})
    total = sum(a.size_bytes for a in listed)
    out.line(f"wrote {counted(len(listed), 'artifact')} ({size(total)}) under {local}, each sha256 verified")


def cmd_experiments_ls(client: Client, args: argparse.Namespace, out: Output) -> None:
    experiments = list(client.training.experiments(prefix=args.prefix, view=VIEWS[args.view]))
    if out.as_json:
        return out.json(experiments)
    out.table(
        "experiments",
        ["name", "runs", "description", "tags", "created"],
        [
            (
                e.name + (" (deleted)" if e.deleted else ""),
                e.run_count,
                e.description,
                ", ".join(f"{k}={v}" for k, v in sorted(e.tags.items())),
                when(e.created_at),
            )
            for e in experiments
        ],
        whole=("name",),
        unbroken=("tags",),
    )


def cmd_experiments_update(client: Client, args: argparse.Namespace, out: Output) -> None:
    experiment = client.training.update_experiment(
        args.name,
        description=args.description,
        set_tags=once_each(args.tag, "--tag"),
        remove_tags=args.remove_tag or (),
    )
    if out.as_json:
        return out.json(experiment)
    rows: list[tuple[str, Any]] = [("description", experiment.description or "-")]
    rows += [(f"tag {k}", v) for k, v in sorted(experiment.tags.items())]
    out.pairs(f"experiment {experiment.name}", rows)


def cmd_experiments_rm(client: Client, args: argparse.Namespace, out: Output) -> None:
    experiment = client.training.delete_experiment(args.name)
    if out.as_json:
        return out.json(experiment)
    out.line(
        f"deleted experiment {experiment.name} and its runs; bring them back with: "
        f"tessera experiments restore {experiment.name}"
    )


def cmd_experiments_restore(client: Client, args: argparse.Namespace, out: Output) -> None:
    experiment = client.training.restore_experiment(args.name)
    if out.as_json:
        return out.json(experiment)
    out.line(f"restored experiment {experiment.name} ({counted(experiment.run_count, 'run')})")


def cmd_runs_leaderboard(client: Client, args: argparse.Namespace, out: Output) -> None:
    entries = client.training.leaderboard(
        args.experiment, args.metric, mode=args.mode, limit=args.limit, field=args.field
    )
    if out.as_json:
        return out.json(list(entries))
    if not entries:
        return out.line(
            f"no run of experiment {args.experiment} has logged {args.metric}; the metrics its runs "
            f"have: tessera runs ls --experiment {args.experiment}"
        )
    runs = [e.run for e in entries]
    differing = differing_params(runs)

    def rows(shown_keys: dict[str, str], value: Callable[[str], str]) -> list[tuple[Any, ...]]:
        return [
            (
                e.rank,
                f"{e.value:.5g}",
                e.run.run_id,
                e.run.name,
                "\n".join(
                    f"{shown_keys[k]}={value(e.run.params[k])}" for k in differing if k in e.run.params
                ),
            )
            for e in entries
        ]

    out.table(
        f"{args.experiment} by {args.metric}",
        ["rank", args.metric, "run", "name", "params that differ"],
        rows({k: k for k in differing}, str),
        whole=("rank", "run", "name"),
        unbroken=("params that differ",),
        stacked={"name": "run"},
        narrower_rows=rows(shortest_suffixes(differing), short_value),
    )
    same = len({k for run in runs for k in run.params}) - len(differing)
    if same:
        out.line(
            f"left out: {counted(same, 'param')} with one value in every run above "
            "(`tessera runs show RUN` or --json lists them)"
        )


def shortest_suffixes(paths: Sequence[str]) -> dict[str, str]:
    """Each dotted path by its shortest tail of parts that no other path ends with
    (optimizer.weight_decay as weight_decay, unless another path ends in weight_decay too)."""
    shown = {}
    for path in paths:
        parts = path.split(".")
        for start in range(len(parts) - 1, -1, -1):
            tail = ".".join(parts[start:])
            if not any(other != path and (other == tail or other.endswith("." + tail)) for other in paths):
                break
        shown[path] = tail
    return shown


def differing_params(runs: Sequence[training_pb2.Run]) -> list[str]:
    """The params whose values are not the same in every run (set in some runs only included),
    sorted: a job's run logs every field of its spec, and the few a search varies are what a
    leaderboard is read for."""
    names = sorted({k for run in runs for k in run.params})
    return [k for k in names if len({run.params.get(k) for run in runs}) > 1]


def cmd_export_onnx(client: Client, args: argparse.Namespace, out: Output) -> None:
    result = client.models.export_onnx(
        args.model,
        args.version,
        opset=args.opset,
        conv4d=args.conv4d,
        alias=args.alias,
        description=args.description,
    )
    if out.as_json:
        return out.json(result)
    done = "already exported as" if result.reused else "exported"
    out.line(
        f"{done} {result.version.model} v{result.version.version} (onnx opset {result.opset}, conv4d "
        f"{result.conv4d}, max |onnx - torch| {result.max_abs_error:.2e})"
    )
    if result.reused and args.description and args.description != result.version.description:
        out.line(
            f"description not applied: v{result.version.version} keeps its own "
            f"({result.version.description!r}); versions are immutable"
        )
    if result.HasField("alias_moved"):
        print_alias_moved(out, result.alias_moved)


def print_alias_moved(out: Output, moved: registry_pb2.AliasEvent) -> None:
    before = f"v{moved.from_version}" if moved.from_version else "(new)"
    out.line(f"alias {moved.alias}: {before} -> v{moved.to_version}")


@contextlib.contextmanager
def input_names_explained(path: str, inputs: Collection[str]) -> Iterator[None]:
    """The daemon's refusal of an array of `path` whose name is no input of the model, with how
    to name it: the daemon knows the model's inputs, not the file they came from."""
    try:
        yield
    except InvalidArgument as err:
        refused = [name for name in inputs if err.message.startswith(f"input {name!r} is not an input of ")]
        if not refused:
            raise
        where = "standard input" if path == "-" else path
        raise type(err)(
            f"{err.message}. In {where}, name the array {refused[0]!r} after the input it is for: "
            "numpy.savez(FILE, NAME=array) stores each array under its input's name (a .npy file "
            "is sent as 'input')",
            err.trailers,
        ) from None


def cmd_predict(client: Client, args: argparse.Namespace, out: Output) -> None:
    inputs = load_inputs(args.input)
    with input_names_explained(args.input, inputs):
        prediction = client.inference.predict(
            args.model, inputs, version=args.version, alias=args.alias, timeout=args.timeout
        )
    if args.output:
        # allow_pickle named so that an output of that name cannot be taken for the flag;
        # outputs are numeric arrays, which need no pickling.
        np.savez(args.output, allow_pickle=False, **prediction.outputs)
    if out.as_json:
        return out.json(
            {
                "model": prediction.model,
                "version": prediction.version,
                "queue_time_us": prediction.queue_time_us,
                "compute_time_us": prediction.compute_time_us,
                "outputs": {name: array.tolist() for name, array in prediction.outputs.items()},
            }
        )
    out.line(
        f"{prediction.model} v{prediction.version}: queued {prediction.queue_time_us} us, "
        f"computed {prediction.compute_time_us} us (batch of {counted(prediction.batch_rows, 'row')})"
    )
    for name, array in prediction.outputs.items():
        out.line(
            f"{name} {array.dtype}{list(array.shape)}:\n{np.array2string(array, precision=4, threshold=64)}"
        )
    if args.output:
        out.line(f"wrote {args.output}")


def cmd_explain(client: Client, args: argparse.Namespace, out: Output) -> None:
    inputs = load_inputs(args.input)
    with input_names_explained(args.input, inputs):
        explanation = client.inference.explain(
            args.model,
            inputs,
            args.method,
            version=args.version,
            alias=args.alias,
            target=args.output_index,
            steps=args.steps,
            baseline=args.baseline,
            window=args.window,
            timeout=max(args.timeout, 300.0),
        )
    if args.out:
        np.savez(args.out, allow_pickle=False, **explanation.attributions)
    top = {
        name: [top_positions(row, args.top) for row in array]
        for name, array in explanation.attributions.items()
    }
    if out.as_json:
        return out.json(
            {
                "model": explanation.model,
                "version": explanation.version,
                "explained_version": explanation.explained_version,
                "output_indices": explanation.output_indices,
                "convergence_delta": explanation.convergence_delta,
                "compute_time_us": explanation.compute_time_us,
                "top": {
                    name: [[{"index": list(index), "value": value} for index, value in row] for row in rows]
                    for name, rows in top.items()
                },
            }
        )
    through = (
        f", explained through torch v{explanation.explained_version}"
        if explanation.explained_version != explanation.version
        else ""
    )
    out.line(
        f"{explanation.model} v{explanation.version}{through}: {SHORT_NAMES.get(args.method, args.method)}, "
        f"computed in {explanation.compute_time_us / 1000:.1f} ms"
    )
    for name, rows in top.items():
        shape = list(explanation.attributions[name].shape)
        for row, positions in enumerate(rows):
            delta = explanation.convergence_delta[row] if explanation.convergence_delta else None
            completeness = f", completeness error {delta:+.2e}" if delta is not None else ""
            out.line(
                f"{name}{shape} row {row}, output {explanation.output_indices[row]}{completeness}: "
                f"top {counted(len(positions), 'position')} (index within the row, attribution)"
            )
            for index, value in positions:
                out.line(f"  {index}  {value:+.6g}")
    if args.out:
        out.line(f"wrote {args.out}")


def window_sizes(text: str) -> list[int]:
    """An occlusion window as "1,1,4,4,4"."""
    try:
        sizes = [whole_number(part) for part in text.split(",")]
    except ValueError:
        sizes = []
    if not sizes or max(sizes) > INT32_MAX:
        raise argparse.ArgumentTypeError(
            f"must be sizes separated by commas, each 0..{INT32_MAX}, like 1,1,4,4,4; got {text!r}"
        )
    return sizes


def load_inputs(path: str) -> dict[str, np.ndarray]:
    """Inputs from a .npz (each array by name) or a .npy (the input named "input"), told apart by
    their first bytes; "-" reads either from standard input. A file numpy cannot read is a
    ValueError naming it."""
    source: str | io.BytesIO = io.BytesIO(sys.stdin.buffer.read()) if path == "-" else path
    name = "<stdin>" if path == "-" else path
    try:
        loaded = np.load(source, allow_pickle=False)
        if isinstance(loaded, np.ndarray):
            return {"input": loaded}
        with loaded as archive:
            return {array: archive[array] for array in archive.files}
    except (ValueError, EOFError, zipfile.BadZipFile) as err:
        raise ValueError(f"{name}: {unreadable_arrays(source, err)}") from None


def unreadable_arrays(source: str | io.BytesIO, err: Exception) -> str:
    """Why numpy could not read `source`. For a file with neither format's header numpy offers
    to unpickle it, advice that does not apply to inputs, so the message says what is read."""
    if isinstance(source, io.BytesIO):
        head = source.getvalue()[: len(NPY_MAGIC)]
    else:
        with open(source, "rb") as file:
            head = file.read(len(NPY_MAGIC))
    if not head.startswith((NPY_MAGIC, ZIP_MAGIC)):
        return (
            "not a .npz or .npy file; write one with numpy.savez(FILE, input=x) (an array per "
            "input name) or numpy.save(FILE, x)"
        )
    return f"cannot be read as numpy arrays: {err}"


def cmd_stats(client: Client, args: argparse.Namespace, out: Output) -> None:
    if args.cluster:
        return print_cluster_stats(client.inference.cluster_stats(args.model, args.version), out)
    stats = client.inference.stats(args.model, args.version, reset=args.reset)
    if out.as_json:
        return out.json(list(stats))
    print_stats(stats, out)


def print_cluster_stats(response: inference_pb2.GetStatsResponse, out: Output) -> None:
    replicas, unreachable = list(response.replicas), list(response.unreachable_replicas)
    reasons = {r.address: r.reason for r in response.unreachable}
    if out.as_json:
        return out.json(
            {
                "stats": list(response.stats),
                "replicas": replicas,
                "unreachable_replicas": unreachable,
                "unreachable": [{"address": a, "reason": reasons.get(a, "")} for a in unreachable],
                "refused": list(response.refused),
            }
        )
    print_stats(response.stats, out)
    if replicas:
        out.line(f"merged: this daemon and {counted(len(replicas), 'replica')} ({', '.join(replicas)})")
    elif not unreachable:
        out.line("no serving replica follows this daemon: these are its own figures")
    if unreachable:
        out.line(f"left out, did not answer: {counted(len(unreachable), 'replica')}")
        for address in unreachable:
            out.line(f"  {address}: {reasons.get(address) or 'no reason given (an older primary)'}")
    if response.refused:
        out.line(f"refused by this daemon lately: {counted(len(response.refused), 'replica')}")
        for r in response.refused:
            out.line(f"  {r.address} (from {r.peer}) at {when(r.time)}: {r.rpc} {r.code}: {r.reason}")


def print_stats(stats: Sequence[inference_pb2.ModelStats], out: Output) -> None:
    rows = []
    for s in stats:
        for what, summary in (("queue", s.queue), ("compute", s.compute), ("total", s.total)):
            rows.append(
                (
                    f"{s.model} v{s.version}",
                    what,
                    summary.count,
                    f"{summary.p50_us:.0f}",
                    f"{summary.p95_us:.0f}",
                    f"{summary.p99_us:.0f}",
                    f"{summary.p999_us:.0f}",
                    f"{summary.max_us:.0f}",
                )
            )
    out.table(
        "latency (us)",
        ["version", "stage", "count", "p50", "p95", "p99", "p99.9", "max"],
        rows,
        whole=("version",),
    )
    for s in stats:
        batches = ", ".join(f"{b.rows}:{b.count}" for b in s.batch_sizes)
        out.line(
            f"{s.model} v{s.version}: {counted(s.request_count, 'request')} ({s.error_count} failed), "
            f"{s.throughput_rps:.1f} req/s; batch rows:count {batches or '-'}"
        )


# `tessera load` flag -> ServingConfig field, in the proto's order.
LOAD_FLAGS = (
    "runtime",
    "device",
    "instances",
    "max_batch_size",
    "max_queue_delay_us",
    "max_queue_size",
    "warmup_runs",
    "intra_op_threads",
    "response_cache",
)


def cmd_load(client: Client, args: argparse.Namespace, out: Output) -> None:
    config = current_config(client, args.model, args.version) if args.keep_config else {}
    config.update((name, getattr(args, name)) for name in LOAD_FLAGS if getattr(args, name) is not None)
    loaded = client.inference.load(args.model, args.version, **config)
    if out.as_json:
        return out.json(loaded)
    print_loaded([loaded], out)


def current_config(client: Client, model: str, version: int | str | None) -> dict[str, Any]:
    """The config the version runs with now (every default filled in), as `load` takes it; a
    version that is not loaded has none to keep, and is refused rather than loaded with the
    defaults, which is what the caller asked not to get."""
    number = version if isinstance(version, int) else client.models.version(model, version).version
    found = next((m for m in client.inference.loaded(model) if m.version == number), None)
    if found is None:
        raise ValueError(
            f"model {model!r} version {number} is not loaded, so it has no config to keep; "
            "load it without --keep-config (`tessera serve-status` lists what is loaded)"
        )
    config = {field.name: getattr(found.config, field.name) for field in found.config.DESCRIPTOR.fields}
    # An ensemble's runtime is unspecified: its version's format decides.
    config["runtime"] = inference_pb2.Runtime.Name(found.config.runtime).removeprefix("RUNTIME_").lower()
    if config["runtime"] == "unspecified":
        del config["runtime"]
    return config


def cmd_unload(client: Client, args: argparse.Namespace, out: Output) -> None:
    unloaded = client.inference.unload(args.model, args.version)
    if out.as_json:
        return out.json(list(unloaded))
    for m in unloaded:
        out.line(f"unloaded {m.model} v{m.version}")


def cmd_serve_status(client: Client, args: argparse.Namespace, out: Output) -> None:
    loaded = client.inference.loaded(args.model)
    if out.as_json:
        return out.json(list(loaded))
    print_loaded(loaded, out)


def runtime_word(runtime: inference_pb2.Runtime.ValueType) -> str:
    """A loaded version's runtime as the table says it. The daemon fills in the runtime of every
    loaded version but an ensemble's, which runs on its members' and is sent unspecified."""
    if runtime == inference_pb2.RUNTIME_UNSPECIFIED:
        return "ensemble"
    return inference_pb2.Runtime.Name(runtime).removeprefix("RUNTIME_").lower()


def print_loaded(loaded: Sequence[inference_pb2.LoadedModel], out: Output) -> None:
    out.table(
        "loaded models",
        [
            "model",
            "version",
            "state",
            "runtime",
            "device",
            "instances",
            "max batch",
            "response cache",
            "memory",
            "loaded",
        ],
        [
            (
                m.model,
                m.version,
                inference_pb2.LoadState.Name(m.state).removeprefix("LOAD_STATE_").lower(),
                runtime_word(m.config.runtime),
                m.config.device,
                m.config.instances,
                m.config.max_batch_size,
                "on" if m.config.response_cache else "off",
                size(m.memory_bytes),
                when(m.loaded_at),
            )
            for m in loaded
        ],
        whole=("model", "version"),
    )


def cmd_demo(client: Client, args: argparse.Namespace, out: Output) -> None:
    run_demo(
        client, out.console, name=args.name, samples=args.samples, epochs=args.epochs, requests=args.requests
    )


def transfer_progress(out: Output, label: str) -> Callable[[int, int], None] | None:
    """A progress callback printing whole-percent steps of an upload or download on stderr;
    None where no one watches (a script's stderr, as git decides) or with --json."""
    if out.as_json or not out.status.is_terminal:
        return None
    shown = {"percent": -1}

    def report(done: int, total: int) -> None:
        percent = 100 if total == 0 else done * 100 // total
        if percent // 25 > shown["percent"] // 25 or done == total:
            if percent != shown["percent"]:
                out.status.print(f"[dim]{label}: {percent}% of {size(total)}[/dim]")
            shown["percent"] = percent

    return report


# The parser.


VIEWS = {"active": "active_only", "deleted": "deleted_only", "all": "all"}
"""--view choices -> the SDK's LifecycleView names."""


def add_view(sub: argparse.ArgumentParser, what: str) -> None:
    sub.add_argument(
        "--view",
        choices=list(VIEWS),
        default="active",
        help=f"active {what} (default), deleted ones only, or all",
    )


MODEL_HELP = "the model's name (`tessera models ls` lists them)"
DATASET_HELP = "NAME:VERSION, or NAME for its newest version"
JOB_HELP = "the job's id (`tessera jobs ls` lists them)"
RUN_HELP = "the run's id (`tessera runs ls` lists them)"
EXPERIMENT_HELP = "the experiment's name (`tessera experiments ls` lists them)"


def build_parser() -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = CommandParser(
        prog="tessera",
        description="Talk to a running tesserad.",
        epilog=EXIT_STATUS_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--version", action="version", version=f"tessera {__version__} (the daemon's: `tessera info`)"
    )
    parser.add_argument(
        "--target",
        type=daemon_target,
        default=os.environ.get("TESSERA_TARGET", DEFAULT_TARGET),
        metavar="HOST:PORT",
        help=f"the daemon's gRPC address (env TESSERA_TARGET; default {DEFAULT_TARGET})",
    )
    parser.add_argument("--token", default=None, help=f"bearer token (default: env {TOKEN_ENV})")
    parser.add_argument("--tls", action="store_true", help="use TLS with the system's CAs")
    parser.add_argument(
        "--tls-ca", metavar="FILE", help="CA certificate that signed the daemon's (implies TLS)"
    )
    parser.add_argument("--tls-cert", metavar="FILE", help="client certificate for mutual TLS")
    parser.add_argument("--tls-key", metavar="FILE", help="client private key for mutual TLS")
    parser.add_argument(
        "--tls-server-name", metavar="NAME", help="name to check the daemon's certificate against"
    )
    parser.add_argument(
        "--timeout", type=seconds, default=30.0, metavar="SECONDS", help="seconds per call (default 30)"
    )
    parser.add_argument("--json", action="store_true", help=JSON_HELP)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(
        group: argparse._SubParsersAction[argparse.ArgumentParser],
        name: str,
        handler: Callable[..., None],
        help: str,
    ) -> argparse.ArgumentParser:
        # Every `ls` also answers to `list`, as `tessera sweeps` does.
        aliases = ["list"] if name == "ls" else []
        sub = group.add_parser(name, aliases=aliases, help=help, description=help)
        sub.set_defaults(handler=handler, parser=sub)
        # Scripts often put flags last; SUPPRESS keeps a --json given before the command.
        sub.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help=JSON_HELP)
        return sub

    command(commands, "info", cmd_info, "the daemon's version, devices and data directory")

    models = commands.add_parser("models", help="the model registry").add_subparsers(
        dest="subcommand", required=True, metavar="SUBCOMMAND"
    )
    command(models, "ls", cmd_models_ls, "list models").add_argument(
        "--prefix", default="", help="only models whose name starts with this"
    )
    sub = command(models, "show", cmd_models_show, "a model version's details")
    sub.add_argument("model", help=MODEL_HELP)
    sub.add_argument("--version", type=version_or_alias, help="number or alias (default latest)")
    sub = command(
        models, "push", cmd_models_push, "register an ONNX file, or safetensors weights with --spec"
    )
    sub.add_argument("model", help="the model to add a version to (made with its first version)")
    sub.add_argument("file", help="model.onnx or weights.safetensors")
    sub.add_argument(
        "--format",
        choices=sorted(set(FORMAT_BY_SUFFIX.values())),
        help="default: from the file's suffix",
    )
    sub.add_argument("--spec", help="TOML with the [architecture] that built safetensors weights")
    sub.add_argument("--alias", help="move this alias to the new version")
    sub.add_argument("--description", default="", help="free text stored with the version")
    command(models, "versions", cmd_models_versions, "a model's versions, newest first").add_argument(
        "model", help=MODEL_HELP
    )
    sub = command(
        models,
        "ensemble",
        cmd_models_ensemble,
        "register an ensemble of versions (MEMBER is MODEL:VERSION) as the model's next version",
    )
    sub.add_argument("model", help="the model the ensemble is the next version of (made with it)")
    sub.add_argument(
        "members",
        nargs="+",
        type=member,
        metavar="MEMBER",
        help="a member version, MODEL:VERSION (its number), e.g. clf:3",
    )
    sub.add_argument(
        "--combine",
        choices=COMBINES,
        default="mean",
        help="mean of the outputs (default); vote: each member's top class is a vote; weighted_mean "
        "(--weights); stacking: a linear combiner fitted with --fit",
    )
    sub.add_argument(
        "--weights",
        type=weight_list,
        help="weighted_mean: one weight per member, finite and >= 0 with a positive sum, e.g. 2,1,1 or 1,0",
    )
    sub.add_argument(
        "--fit",
        metavar="FILE.npz",
        help="stacking: held-out inputs (by name) and targets; each member predicts them, and the "
        "combiner is fitted by least squares",
    )
    sub.add_argument(
        "--fit-target", default="y", metavar="NAME", help="the targets' array in --fit (default y)"
    )
    sub.add_argument("--alias", help="move this alias to the new version")
    sub.add_argument("--description", default="", help="free text stored with the version")
    sub = command(models, "alias", cmd_models_alias, "point an alias at a version")
    sub.add_argument("model", help=MODEL_HELP)
    sub.add_argument("alias", help="the alias's name, e.g. production (latest is kept by the daemon)")
    sub.add_argument("version", type=whole(), help="the version number it points at")
    command(
        models,
        "aliases",
        cmd_models_aliases,
        "a model's aliases by name, latest last (at most 1,000 a model)",
    ).add_argument("model", help=MODEL_HELP)
    sub = command(
        models,
        "unalias",
        cmd_models_unalias,
        "delete an alias (refused while the deployment routes through it)",
    )
    sub.add_argument("model", help=MODEL_HELP)
    sub.add_argument("alias", help="the alias's name")
    sub = command(
        models, "deploy", cmd_models_deploy, "route traffic: ROUTE is VERSION=PERCENT or ALIAS=PERCENT"
    )
    sub.add_argument("model", help=MODEL_HELP)
    sub.add_argument(
        "routes",
        nargs="+",
        type=route,
        metavar="ROUTE",
        help="VERSION=PERCENT or ALIAS=PERCENT, e.g. 3=90 staging=10",
    )
    sub.add_argument("--shadow", type=version_or_alias, help="version or alias that gets a copy of requests")
    sub.add_argument(
        "--shadow-percent",
        type=whole(),
        default=100,
        help="percent of the requests other versions answer that are copied to --shadow (default 100)",
    )
    sub.add_argument("--comment", default="", help="free text stored with the deployment's revision")
    command(
        models,
        "rollback",
        cmd_models_rollback,
        "restore the previous deployment (none before the first: requests then go to the latest version)",
    ).add_argument("model", help=MODEL_HELP)
    sub = command(models, "compare", cmd_models_compare, "differences between two versions")
    sub.add_argument("model", help=MODEL_HELP)
    sub.add_argument("a", type=version_or_alias, help="version number or alias")
    sub.add_argument("b", type=version_or_alias, help="version number or alias")
    sub = command(
        models,
        "changes",
        cmd_models_changes,
        "the registry's changes, numbered in commit order, with each model's serving state after "
        "it (before the daemon's newest replica.change_history, only each model's newest is kept)",
    )
    sub.add_argument(
        "--from-seq",
        type=whole(),
        default=0,
        metavar="SEQ",
        help="start at this change (default 0: the first)",
    )
    sub.add_argument(
        "--follow", action="store_true", help="go on printing new changes as they come (Ctrl-C to stop)"
    )
    sub = command(models, "download", cmd_models_download, "write a version's artifact to a file (verified)")
    sub.add_argument("model", help=MODEL_HELP)
    sub.add_argument(
        "path",
        nargs="?",
        help="file to write, or a directory to write it into (default ./MODEL-vVERSION.onnx, "
        ".safetensors or .json, by the artifact's format); a suffix of another format is refused",
    )
    sub.add_argument("--version", type=version_or_alias, help="number or alias (default latest)")

    datasets = commands.add_parser("datasets", help="datasets").add_subparsers(
        dest="subcommand", required=True, metavar="SUBCOMMAND"
    )
    sub = command(datasets, "push", cmd_datasets_push, "upload a .npz or .npy file as a new version")
    sub.add_argument("name", help="the dataset's name (a new version of it when it exists)")
    sub.add_argument("file", help=".npz (its arrays by name) or .npy (one array, see --array-name)")
    sub.add_argument(
        "--split",
        action="append",
        type=split,
        default=[],
        metavar="NAME=FRACTION",
        help="once per split, the fractions summing to 1: --split train=0.8 --split val=0.2",
    )
    sub.add_argument("--seed", type=whole(), default=0, help="seed of the random split (default 0)")
    sub.add_argument("--allow-nonfinite", action="store_true", help="accept NaN and Inf")
    sub.add_argument(
        "--array-name",
        default="",
        metavar="NAME",
        help="for a .npy file: the name its array gets, as a job's spec names it (default x); refused "
        "for a .npz, which names its arrays itself",
    )
    sub.add_argument("--description", default="", help="free text stored with the version")
    sub.add_argument(
        "--tag",
        action="append",
        type=key_value,
        metavar="KEY=VALUE",
        help="a tag stored with the version (repeatable); a re-push with other tags is a new version",
    )
    command(datasets, "ls", cmd_datasets_ls, "list datasets").add_argument(
        "--prefix", default="", help="only datasets whose name starts with this"
    )
    command(datasets, "versions", cmd_datasets_versions, "a dataset's versions, newest first").add_argument(
        "name", help="the dataset's name (`tessera datasets ls` lists them)"
    )
    command(
        datasets, "show", cmd_datasets_show, "arrays, statistics and splits of NAME[:VERSION]"
    ).add_argument("ref", type=dataset, metavar="NAME[:VERSION]", help=DATASET_HELP)
    sub = command(
        datasets,
        "rm",
        cmd_datasets_rm,
        "delete version VERSION of NAME, or with NAME alone the dataset and every version; refused "
        "while a queued or running job, a running sweep or a model version's lineage uses it",
    )
    sub.add_argument(
        "ref",
        type=dataset,
        metavar="NAME[:VERSION]",
        help="NAME:VERSION for one version, NAME for every version",
    )
    sub.add_argument(
        "--force",
        action="store_true",
        help="delete even what a job, a sweep or a model version's lineage uses (a job still running may "
        "then fail)",
    )
    sub = command(
        datasets,
        "download",
        cmd_datasets_download,
        "write the stored .npz/.npy file of NAME[:VERSION] (default the newest), verified against its sha256",
    )
    sub.add_argument("ref", type=dataset, metavar="NAME[:VERSION]", help=DATASET_HELP)
    sub.add_argument(
        "-o",
        "--output",
        metavar="PATH",
        help="file to write, or a directory to write it into (default ./NAME-vVERSION.npz or .npy)",
    )

    sub = command(commands, "train", cmd_train, "submit a training job from a TOML spec")
    sub.add_argument(
        "spec",
        help="SPEC.toml: a JobSpec in TOML, enum values by their short names (its fields: "
        "protos/tessera/v1/job_spec.proto; an example: the README's spec.toml); - reads it from stdin",
    )
    sub.add_argument("--follow", action="store_true", help="show live progress until the job ends")

    jobs = commands.add_parser("jobs", help="training jobs").add_subparsers(
        dest="subcommand", required=True, metavar="SUBCOMMAND"
    )
    command(jobs, "ls", cmd_jobs_ls, "list jobs, newest first").add_argument(
        "--state",
        action="append",
        type=str.lower,
        choices=[state.value for state in JobState if state != JobState.UNSPECIFIED],
        help="only jobs in this state (repeatable)",
    )
    command(jobs, "show", cmd_jobs_show, "a job's state, metrics and kept checkpoints").add_argument(
        "job_id", help=JOB_HELP
    )
    sub = command(jobs, "watch", cmd_jobs_watch, "follow a job's progress until it ends")
    sub.add_argument("job_id", help=JOB_HELP)
    sub.add_argument("--from-seq", type=whole(), default=1, help="replay events from this sequence number")
    command(jobs, "cancel", cmd_jobs_cancel, "stop a job").add_argument("job_id", help=JOB_HELP)

    add_sweep_commands(commands, command)

    runs = commands.add_parser("runs", help="experiment runs").add_subparsers(
        dest="subcommand", required=True, metavar="SUBCOMMAND"
    )
    sub = command(runs, "ls", cmd_runs_ls, "list runs, newest first")
    sub.add_argument("--experiment", default="", help="only this experiment's runs (default: every run)")
    sub.add_argument(
        "--status",
        action="append",
        type=str.lower,
        choices=[
            value.name.removeprefix("RUN_STATUS_").lower()
            for value in training_pb2.RunStatus.DESCRIPTOR.values
            if value.number
        ],
        help="only runs with this status (repeatable)",
    )
    sub.add_argument(
        "--param",
        action="append",
        type=key_value,
        metavar="KEY=VALUE",
        help="only runs with this param (repeatable); a job's run has its spec's fields by path, "
        "e.g. optimizer.lr=0.001",
    )
    sub.add_argument(
        "--tag",
        action="append",
        type=key_value,
        metavar="KEY=VALUE",
        help="only runs with this tag (repeatable)",
    )
    sub.add_argument(
        "--metric",
        action="append",
        type=metric_condition,
        metavar="KEY<VALUE",
        help="only runs whose metric's last value compares so: <, <=, >, >=, = or != (repeatable; quote "
        "it for the shell, e.g. 'val_acc>0.9')",
    )
    sub.add_argument(
        "--filter",
        default="",
        metavar="FILTER",
        help="MLflow's search filter, conditions joined by AND: metrics.KEY OP NUMBER (OP <, <=, >, >=, = "
        "or !=; metrics.KEY.min or .max for that value of the summary), params.KEY = 'VALUE', "
        "tags.KEY = 'VALUE', attributes.status = 'STATUS' (or !=, IN (...), NOT IN (...)); backquote "
        "a key of other characters than letters, digits and _, e.g. metrics.`val-loss` (a param's or "
        "tag's may hold dots: params.optimizer.lr = '0.001')",
    )
    sub.add_argument(
        "--order-by",
        metavar="ORDER",
        help="order by a metric: METRIC or MLflow's 'metrics.METRIC [ASC|DESC]' (metrics.METRIC.min or "
        ".max for that value of its summary, else the last); without ASC or DESC, lowest first for a "
        "name with loss, error, mae, mse or mape in it, else highest first (runs without it last)",
    )
    direction = sub.add_mutually_exclusive_group()
    direction.add_argument(
        "--asc", dest="descending", action="store_false", default=None, help="--order-by: lowest first"
    )
    direction.add_argument("--desc", dest="descending", action="store_true", help="--order-by: highest first")
    add_view(sub, "runs")
    command(runs, "show", cmd_runs_show, "a run's params and metrics").add_argument("run_id", help=RUN_HELP)
    command(runs, "rm", cmd_runs_rm, "delete a run (kept until restored)").add_argument(
        "run_id", help=RUN_HELP
    )
    command(runs, "restore", cmd_runs_restore, "bring back a deleted run").add_argument(
        "run_id", help=RUN_HELP
    )
    artifacts = runs.add_parser(
        "artifacts", help="files kept with a run (plots, notes, small models)"
    ).add_subparsers(dest="artifacts_command", required=True, metavar="SUBCOMMAND")
    sub = command(artifacts, "ls", cmd_runs_artifacts_ls, "list a run's artifacts in path order")
    sub.add_argument("run_id", help=RUN_HELP)
    sub.add_argument("path", nargs="?", default="", help="only those under this directory")
    sub = command(
        artifacts, "put", cmd_runs_artifacts_put, "store a file, or every file under a directory, with a run"
    )
    sub.add_argument("run_id", help=RUN_HELP)
    sub.add_argument(
        "file",
        help="a file, or a directory: its files keep their paths under it, without its own name "
        "(as MLflow's log_artifacts; links to directories are not followed)",
    )
    sub.add_argument(
        "--path",
        default="",
        metavar="DIR",
        help="directory in the run to store it in, under the file's own name (default: the top)",
    )
    sub = command(
        artifacts, "get", cmd_runs_artifacts_get, "download an artifact, or every one under a directory"
    )
    sub.add_argument("run_id", help=RUN_HELP)
    sub.add_argument("path", help="an artifact's path, or a directory of them")
    sub.add_argument(
        "-o",
        "--output",
        help="file or directory to write to (default: the current directory; a directory keeps "
        "the artifacts' paths under it; end it with / to have it made)",
    )
    sub = command(runs, "leaderboard", cmd_runs_leaderboard, "an experiment's runs ranked by a metric")
    sub.add_argument("experiment", help=EXPERIMENT_HELP)
    sub.add_argument("metric", help="the metric's name, e.g. val_loss")
    sub.add_argument(
        "--mode",
        choices=["min", "max"],
        help="which is better (default: min for a name with loss, error, mae, mse or mape in it, else max)",
    )
    sub.add_argument(
        "--field",
        choices=["last", "min", "max"],
        help="which value of each run's metric ranks it (default: min with --mode min, else max)",
    )
    sub.add_argument("--limit", type=whole(high=INT32_MAX), default=10, help="runs shown (default 10)")

    experiments = commands.add_parser("experiments", help="experiments").add_subparsers(
        dest="subcommand", required=True, metavar="SUBCOMMAND"
    )
    sub = command(experiments, "ls", cmd_experiments_ls, "list experiments")
    sub.add_argument("--prefix", default="", help="only names starting with this")
    add_view(sub, "experiments")
    sub = command(experiments, "update", cmd_experiments_update, "change an experiment's description or tags")
    sub.add_argument("name", help=EXPERIMENT_HELP)
    sub.add_argument("--description", help='the new description ("" clears it)')
    sub.add_argument(
        "--tag", action="append", type=key_value, metavar="KEY=VALUE", help="set a tag (repeatable)"
    )
    sub.add_argument("--remove-tag", action="append", metavar="KEY", help="drop a tag (repeatable)")
    command(
        experiments, "rm", cmd_experiments_rm, "delete an experiment and its runs (kept until restored)"
    ).add_argument("name", help=EXPERIMENT_HELP)
    command(
        experiments,
        "restore",
        cmd_experiments_restore,
        "bring back an experiment and the runs deleted with it",
    ).add_argument("name", help=EXPERIMENT_HELP)

    admin = commands.add_parser("admin", help="operator tasks (admin token)").add_subparsers(
        dest="subcommand", required=True, metavar="SUBCOMMAND"
    )
    sub = command(
        admin,
        "backup",
        cmd_admin_backup,
        "save a consistent backup of the running daemon (store and blobs) to a file; "
        "`tesserad restore FILE --data-dir DIR` restores it",
    )
    sub.add_argument(
        "-o",
        "--output",
        required=True,
        metavar="FILE",
        help="the archive to write; it appears only once the whole backup has come and checks out. "
        '"-": write it to stdout as it comes (not a terminal), checked on the way, the summary on '
        "stderr; a fault stops it before the bytes that show it are written, the status is "
        "non-zero, and what was written is an incomplete archive, no backup",
    )
    sub.add_argument("--force", action="store_true", help="replace the file --output names if it exists")
    sub.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        help="draw the bytes come of the archive's size, the rate and the time left on stderr, over one "
        "line (default: when stderr is a terminal, and not with --json)",
    )

    export = commands.add_parser("export", help="export a version").add_subparsers(
        dest="subcommand", required=True, metavar="FORMAT"
    )
    sub = command(export, "onnx", cmd_export_onnx, "export a safetensors version to ONNX as a new version")
    sub.add_argument("model", help=MODEL_HELP)
    sub.add_argument(
        "--version",
        type=version_or_alias,
        help="the safetensors version to export, a number or alias (default latest)",
    )
    sub.add_argument(
        "--opset",
        type=whole(high=INT32_MAX),
        default=0,
        help="ONNX opset (default 0: the exporter's default)",
    )
    sub.add_argument(
        "--conv4d",
        choices=["auto", "decomposed", "native"],
        default="auto",
        help="how Conv4d layers are written: auto (default; the faster graph in onnxruntime), decomposed "
        "(3-D convolutions) or native (one Conv node with four spatial dimensions)",
    )
    sub.add_argument(
        "--alias", help="move this alias to the exported version (--version picks the one exported)"
    )
    sub.add_argument(
        "--description",
        default="",
        help="free text stored with the new version (an existing export keeps its own)",
    )

    sub = command(commands, "predict", cmd_predict, "run a model on inputs from a file")
    sub.add_argument("model", help=MODEL_HELP)
    sub.add_argument(
        "--input",
        required=True,
        help=".npz with arrays by input name, or .npy for 'input'; - reads either from stdin",
    )
    pick = sub.add_mutually_exclusive_group()
    pick.add_argument(
        "--version", type=whole(), help="this version number (default: as the deployment routes, else latest)"
    )
    pick.add_argument("--alias", help="the version this alias points at")
    sub.add_argument("--output", help="write the outputs to this .npz")

    sub = command(
        commands, "explain", cmd_explain, "attribute a model's output to each input position (captum)"
    )
    sub.add_argument("model", help=MODEL_HELP)
    sub.add_argument(
        "--input",
        required=True,
        help=".npz with arrays by input name, or .npy for 'input'; - reads either from stdin",
    )
    sub.add_argument(
        "--method",
        choices=[*SHORT_NAMES, *METHODS],
        default="ig",
        help="ig (integrated gradients, default), saliency, occlusion, or shap (GradientShap)",
    )
    sub.add_argument(
        "--target",
        dest="output_index",
        type=whole(high=INT32_MAX),
        metavar="N",
        help="the output index (class) to explain; default: each row's largest output (the daemon address, also --target, goes before the command)",
    )
    pick = sub.add_mutually_exclusive_group()
    pick.add_argument(
        "--version",
        type=whole(),
        help="this version number (default: the lowest the deployment routes to, else latest)",
    )
    pick.add_argument("--alias", help="the version this alias points at")
    sub.add_argument(
        "--steps",
        type=whole(high=INT32_MAX),
        default=0,
        help="ig path steps (default 32), shap samples (default 16)",
    )
    sub.add_argument("--baseline", type=finite, default=0.0, help="the input value compared with (default 0)")
    sub.add_argument(
        "--window",
        type=window_sizes,
        default=[],
        help="occlusion window per dimension of one row, e.g. 1,1,4,4,4",
    )
    sub.add_argument("--top", type=whole(), default=10, help="positions to print per row (default 10)")
    sub.add_argument("--out", help="write the attributions to this .npz (arrays by input name)")

    sub = command(commands, "stats", cmd_stats, "latency percentiles and throughput of a loaded model")
    sub.add_argument("model", nargs="?", default="", help="default: every loaded model")
    sub.add_argument(
        "--version", type=version_or_alias, help="number or alias (default: every loaded version)"
    )
    scope = sub.add_mutually_exclusive_group()
    scope.add_argument("--reset", action="store_true", help="zero the figures after reading them")
    scope.add_argument(
        "--cluster",
        action="store_true",
        help="at a primary: its figures merged with those of every serving replica following it",
    )

    sub = command(
        commands,
        "load",
        cmd_load,
        "load and warm up a version for serving (or reload it, swapping it without dropping requests)",
    )
    sub.description = (
        f"{sub.description}. Loading replaces the version's whole serving config: an option not "
        "given takes its default, not the value the version ran with, unless --keep-config is given."
    )
    sub.add_argument("model", help=MODEL_HELP)
    sub.add_argument("--version", type=version_or_alias, help="number or alias (default: latest)")
    sub.add_argument(
        "--keep-config",
        action="store_true",
        help="start from the config the version runs with now (as `tessera serve-status --json` shows "
        "it, defaults filled in: e.g. --instances alone keeps the intra-op threads worked out for the "
        "old count) and change only the options given; the version must be loaded",
    )
    sub.add_argument(
        "--runtime",
        choices=["onnx", "torch"],
        help="onnx (onnxruntime, with the CUDA provider on a GPU) or torch (default: onnx for an ONNX "
        "version, torch for a safetensors one)",
    )
    sub.add_argument("--device", help='"cpu" or "cuda:N" (default: cuda:0 when a GPU is present, else cpu)')
    sub.add_argument(
        "--instances",
        type=whole(1, INT32_MAX),
        help="model instances running batches in parallel (default: the daemon's serving.instances, "
        "else 2 on a CPU and 1 on a GPU)",
    )
    sub.add_argument(
        "--max-batch-size",
        type=whole(1, INT32_MAX),
        help="most rows per batch; 1: no batching (default: the daemon's serving.max_batch_size, 32 unless set)",
    )
    sub.add_argument(
        "--max-queue-delay-us",
        type=whole(0, INT64_MAX),
        help="microseconds a request may wait for more rows to fill a batch while the model is idle; "
        "under load batches fill without waiting; 0: a lone request never waits, whatever the daemon's "
        "default (default: the daemon's serving.max_queue_delay_us, 0 unless set)",
    )
    sub.add_argument(
        "--max-queue-size",
        type=whole(1, INT32_MAX),
        help="most requests queued; beyond it a request is refused with RESOURCE_EXHAUSTED (default: the "
        "daemon's serving.max_queue_size, 1024 unless set)",
    )
    sub.add_argument(
        "--warmup-runs",
        type=whole(0, INT32_MAX),
        help="inference runs on random inputs before the version takes traffic; 0: none (default: the "
        "daemon's serving.warmup_runs, 2 unless set)",
    )
    sub.add_argument(
        "--intra-op-threads",
        type=whole(0, INT32_MAX),
        help="threads per instance for the runtime's operators; 0: on a CPU the cores shared among the "
        "instances, on a GPU the runtime's own default (default: the daemon's serving.intra_op_threads, "
        "else as 0)",
    )
    sub.add_argument(
        "--response-cache",
        action=argparse.BooleanOptionalAction,
        help="answer a request identical to an earlier one from the daemon's response cache without "
        "running the model: only for a version whose outputs are deterministic (depend on its inputs "
        "alone); the daemon needs serving.response_cache_size > 0 (default: off)",
    )

    sub = command(
        commands,
        "unload",
        cmd_unload,
        "stop serving a version: it takes no new requests, finishes those queued, and is freed",
    )
    sub.add_argument("model", help=MODEL_HELP)
    sub.add_argument(
        "--version",
        type=version_or_alias,
        help="number or alias (default: every loaded version of the model)",
    )

    command(commands, "serve-status", cmd_serve_status, "the loaded model versions").add_argument(
        "model", nargs="?", default="", help="only this model's versions (default: every loaded model)"
    )

    sub = command(commands, "demo", cmd_demo, "the whole life cycle on a synthetic spacetime dataset")
    sub.add_argument("--name", default="demo", help="prefix of the dataset and model names")
    sub.add_argument(
        "--samples", type=whole(), default=192, help="clips in the synthetic dataset (default 192)"
    )
    sub.add_argument("--epochs", type=whole(), default=3, help="training epochs (default 3)")
    sub.add_argument(
        "--requests", type=whole(), default=200, help="predict calls for the latency figures (default 200)"
    )
    return parser


def tls_from(args: argparse.Namespace) -> TLS | None:
    if not (args.tls or args.tls_ca or args.tls_cert or args.tls_key):
        return None
    return TLS(
        ca_file=args.tls_ca, cert_file=args.tls_cert, key_file=args.tls_key, server_name=args.tls_server_name
    )


def main(argv: Sequence[str] | None = None, console: Console | None = None) -> int:
    """Run one command; returns the exit status (EXIT_STATUS_HELP lists them). argparse's own
    usage errors exit 2 through SystemExit."""
    args = build_parser().parse_args(argv)
    if sys.stdout is None:
        # `>&-`: Python leaves sys.stdout None and print() then drops every line, so the
        # command would act and exit 0 with its result lost; refused before it acts.
        return _fail(
            EXIT_FAILED,
            "tessera: standard output is closed, so the result could not be printed; "
            "send it to a file, or to /dev/null to drop it",
        )
    out = Output(args.json, console)
    try:
        with _Signals() as signals:
            status = run(args, out, signals)
            # Flushed here, not at exit: a reader gone shows as BrokenPipeError now, not as
            # Python's complaint and status 120 after main returns.
            sys.stdout.flush()
    except BrokenPipeError:
        # Whoever reads the output stopped (`| head`): no message, and nothing left to flush
        # into the closed pipe at exit, where Python would print its own complaint.
        _close_output()
        return EXIT_OUTPUT_CLOSED
    return status


def run(args: argparse.Namespace, out: Output, signals: _Signals) -> int:
    """The command in `args`, its failures said in one line on stderr; returns the exit status."""
    try:
        with Client(args.target, token=args.token, tls=tls_from(args), timeout=args.timeout) as client:
            _handle(client, args, out, signals)
    except BrokenPipeError:
        raise
    except UsageError as err:
        args.parser.print_usage(sys.stderr)
        return _fail(EXIT_USAGE, f"{args.parser.prog}: error: {err}")
    except TesseraError as err:
        hint = unreachable_hint(err.code, err.message, args.target)
        return _fail(EXIT_DAEMON, f"tessera: {err.code}: {in_cli_words(err.message)}{hint}")
    except JobFailed as err:
        return _fail(EXIT_FAILED, f"tessera: {in_cli_words(str(err))}")
    except OSError as err:
        return _fail(EXIT_FAILED, f"tessera: {_os_error_words(err)}")
    except ValueError as err:
        return _fail(EXIT_FAILED, f"tessera: {err}")
    except (Terminated, KeyboardInterrupt) as err:
        return _fail(*_stopped_by(err))
    except Exception as err:
        # A bug in the CLI itself: still one line, with enough to report it.
        return _fail(EXIT_FAILED, f"tessera: unexpected {type(err).__name__}: {err}; please report this")
    return 0


def _handle(client: Client, args: argparse.Namespace, out: Output, signals: _Signals) -> None:
    try:
        args.handler(client, args, out)
    except (Terminated, KeyboardInterrupt) as err:
        if not signals.caught:
            # Raised by no signal (by a caller of main() in-process): no call was cut short.
            raise
        # The file being written was removed on the way here. Exit at once: closing the channel
        # can wait forever on a call the signal cut short, so the process would never end.
        status, message = _stopped_by(err)
        _fail(status, message)
        with contextlib.suppress(OSError, ValueError):
            sys.stdout.flush()
        os._exit(status)


def _stopped_by(err: Terminated | KeyboardInterrupt) -> tuple[int, str]:
    """The status and the one line for a command a signal stopped; a KeyboardInterrupt's own
    words (StoppedFollowing's) say what goes on without the command."""
    if isinstance(err, Terminated):
        return EXIT_TERMINATED, "tessera: terminated"
    return EXIT_INTERRUPTED, f"tessera: {str(err) or 'interrupted'}"


def _os_error_words(err: OSError) -> str:
    """`FILE: reason`, as cat and cp say it, for an error about a file; else the error's text
    (Python's `[Errno 2] ...: 'FILE'` reads as a crash's last line)."""
    if err.filename is None or not err.strerror:
        return str(err)
    return f"{err.filename}: {err.strerror}"


def _fail(status: int, message: str) -> int:
    """`message` on stderr while it is open: with `2>&-` or a reader gone, the status alone
    says it (and print(file=None) would write to stdout)."""
    if sys.stderr is None:
        return status
    try:
        print(message, file=sys.stderr, flush=True)
    except (OSError, ValueError):
        _close_output(sys.stderr)
    return status


def _close_output(stream: TextIO | None = None) -> None:
    """Point `stream` (default stdout) at /dev/null: Python flushes it once more at exit, and
    a failure there prints its own complaint and makes the status 120."""
    try:
        fd = (stream or sys.stdout).fileno()
    except (OSError, ValueError, AttributeError):
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, fd)
    os.close(devnull)
