"""`tessera info`, `tessera admin backup`, `tessera admin verify` and `tessera demo`: the daemon as a whole. Each command
takes (client, args, out) and prints its result."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any, BinaryIO

from tessera.backup import Manifest, SavedBackup
from tessera.cli.arguments import UsageError
from tessera.cli.output import Output, close_output, size, when
from tessera.client import Client
from tessera.demo import run_demo
from tessera.errors import StoreDamaged, TesseraError
from tessera.json_output import dumps
from tessera.messages import checked_store, counted
from tessera.progress_line import ProgressLine, byte_size, progress_wanted
from tessera.rpc_commands import in_cli_words
from tessera.v1 import system_pb2 as pb


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
    out.line(data_line(info.data_dir, info.replication.role == pb.REPLICATION_ROLE_REPLICA))
    if info.HasField("replication"):
        out.line(replication_line(info.replication))


def data_line(usage: pb.DataDirUsage, replica: bool) -> str:
    """What the data directory holds: a replica's cache, or a primary's store and blobs."""
    if replica:
        held = f"cache {byte_size(usage.blob_bytes)}"
    else:
        # 0 from a daemon older than the field: it told no schema.
        schema = usage.store_schema or "-"
        held = (
            f"store {byte_size(usage.store_bytes)} of {byte_size(usage.store_map_size_bytes)}, "
            f"blobs {byte_size(usage.blob_bytes)}, store schema {schema}"
        )
    return f"data {usage.path}: {held}, {byte_size(usage.fs_free_bytes)} free"


def replication_line(replication: pb.Replication) -> str:
    """Which registry change the daemon routes by; on a replica, how it follows its primary."""
    store = f"store {replication.store_incarnation or '-'}"
    if replication.role != pb.REPLICATION_ROLE_REPLICA:
        return f"role primary: routes by change {replication.applied_change}, {store}"
    if replication.refused:
        link = f"refused by the primary: {replication.refusal}"
    else:
        link = "connected" if replication.connected else "disconnected"
    contact = when(replication.last_contact) if replication.HasField("last_contact") else "never"
    return (
        f"role replica of {replication.primary}, {link}: routes by change {replication.applied_change} "
        f"(the primary's newest it knows: {replication.primary_change}), {store}, last contact {contact}"
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
        copying = "the daemon is copying its store"

        def waiting(waits: bool) -> None:
            line.note(
                "waiting for another backup to end (the daemon makes one at a time)" if waits else copying
            )

        line.note(copying)
        saved = client.system.backup(path, overwrite=args.force, progress=told, waiting=waiting)
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
            f"{err.daemon_message}; what reached stdout is an incomplete archive and must not be used"
        ) from None
    except BrokenPipeError:
        raise
    except OSError as err:
        if err.filename is not None or not err.strerror:
            raise
        # What stdout's buffer still holds would fail again as Python flushes it at exit.
        close_output()
        raise OSError(err.errno, err.strerror, "standard output") from None
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
    return f"{byte_size(saved.archive_size)}, sha256 {saved.archive_sha256}"


def _backup_contents(manifest: Manifest) -> str:
    return (
        f"{counted(sum(manifest.records.values()), 'record')}, {counted(len(manifest.blobs), 'blob')} "
        f"({byte_size(manifest.blob_bytes)}), every file's sha256 verified"
    )


def cmd_admin_verify(client: Client, args: argparse.Namespace, out: Output) -> None:
    wanted = progress_wanted(args.progress, out.as_json, sys.stderr)
    with ProgressLine("verify", sys.stderr if wanted else None) as line:
        if wanted:
            line.note("the daemon is counting its blobs")
        report = client.system.verify(progress=line.update if wanted else None)
        line.finish(report.bytes_checked)
    # A daemon names the first problems alone and counts them all (an older one counts none).
    found = max(report.damaged_blobs + report.missing_blobs, len(report.problems))
    unnamed = found - len(report.problems)
    if not out.as_json:
        for problem in report.problems:
            out.line(in_cli_words(problem.message))
        if unnamed:
            out.line(
                f"{counted(unnamed, 'more problem')} found {'is' if unnamed == 1 else 'are'} not named "
                "here; stop the daemon and run `tesserad verify --data-dir DIR` on its data "
                "directory to name them all"
            )
        checked = checked_store(
            report.blobs_checked, report.bytes_checked, report.references_checked, report.seconds
        )
        out.line(f"{checked}: {'no damage' if not found else counted(found, 'problem')}")
    else:
        out.json(report)
    if found:
        named = "each named above" if not unnamed else f"the first {len(report.problems)} named above"
        raise StoreDamaged(
            f"the store is damaged: {counted(found, 'problem')}, {named} with the records that own the blob"
        )


def cmd_demo(client: Client, args: argparse.Namespace, out: Output) -> None:
    if out.as_json:
        # Its steps, progress bar and plot are for people: JSON would not be all it printed.
        raise UsageError("demo tells its steps for people and prints no JSON; leave out --json")
    run_demo(
        client, out.console, name=args.name, samples=args.samples, epochs=args.epochs, requests=args.requests
    )
