"""`tesserad`: the daemon's command line."""

from __future__ import annotations

import argparse
import asyncio
import grp
import logging
import os
import pwd
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import BinaryIO, NoReturn

from tessera.backup import HEADER_MAX_BYTES, MANIFEST_MAX_BYTES, Manifest
from tessera.command_parser import CommandParser
from tessera.messages import counted
from tessera.progress_line import ProgressLine, byte_size, progress_wanted
from tesserad import __version__
from tesserad.config import (
    SettingsError,
    describe_settings,
    layer_settings,
    unknown_environment,
)
from tesserad.errors import DataLoss, TesseraError
from tesserad.logs import configure_logging
from tesserad.settings_checks import refusal
from tesserad.signal_wakeup import signal_wakeup
from tesserad.tools import tokens

# What a shell reports for a command interrupted by Ctrl-C (128 + SIGINT) and by SIGTERM (128 + 15).
EXIT_INTERRUPTED = 130
EXIT_TERMINATED = 143
# `tesserad serve` could not start (a port taken, a file a setting names missing or wrong, the
# data directory in use: a restart may find them mended), or a setting is wrong, alone or with
# others (no restart mends it: systemd's unit stops restarting on it).
EXIT_CANNOT_START = 1
EXIT_BAD_SETTINGS = 2
EXIT_RESTORED_BUT_FAILED = 3  # `restore`: the data directory holds the restore, yet an error followed
EXIT_DAMAGED = 4  # `verify`: the data directory is damaged (each problem printed)
# `serve`: the store was written by a newer tesserad (a newer schema); restarting this one never
# mends it, so systemd's unit does not restart on it either (RestartPreventExitStatus).
EXIT_STORE_TOO_NEW = 5

log = logging.getLogger("tesserad")

# Flags of `tesserad serve`: the setting each one sets, the form of its value, its help.
SERVE_FLAGS = {
    "--listen": (
        "listen",
        "HOST:PORT",
        "gRPC address of tessera's API and of the Open Inference Protocol that Triton's gRPC client "
        "speaks (default 127.0.0.1:50051; port 0 picks a free one); clients may ping it (HTTP/2 "
        "keepalive) as often as every 0.5 s",
    ),
    "--data-dir": (
        "data_dir",
        "DIR",
        "directory for the LMDB store and blobs, relative to the working directory (default ./var)",
    ),
    "--metrics-listen": (
        "metrics_listen",
        "HOST:PORT",
        "Prometheus /metrics address, or off (default 127.0.0.1:9464)",
    ),
    "--http-listen": (
        "http_listen",
        "HOST:PORT",
        "web dashboard address, or off (default 127.0.0.1:8080); the Open Inference Protocol over HTTP, "
        "for Triton's HTTP client, is --oip-http-listen",
    ),
    "--oip-http-listen": (
        "serving.oip_http_listen",
        "HOST:PORT",
        "Open Inference Protocol over HTTP/REST address (KServe v2; Triton's is :8000), or off (default off)",
    ),
    "--preload": (
        "serving.preload",
        "MODELS",
        "models to load before the daemon reports ready, as Triton's --load-model: MODEL or "
        "MODEL:VERSION, separated by commas; one that cannot be loaded stops the start",
    ),
    "--default-alias": (
        "serving.default_alias",
        "ALIAS",
        "what a request naming no version gets from a model without a deployment: latest "
        "(default), or the version ALIAS names where the model has that alias, else its latest",
    ),
    "--tokens-file": (
        "security.tokens_file",
        "FILE",
        "TOML file of hashed tokens and their roles (`tesserad tokens add --file FILE`): every call "
        "then needs a token; read again on SIGHUP and when it changes (default: none, no tokens); "
        "beyond loopback, serve TLS too (security.tls_cert_file, security.tls_key_file)",
    ),
    "--log-format": ("log_format", "FORMAT", "console (default) or json"),
    "--log-level": ("log_level", "LEVEL", "debug, info (default), warning or error"),
    "--follow": (
        "replica.primary",
        "PRIMARY",
        "serve as a stateless replica of the tesserad at this gRPC address (settings replica.*)",
    ),
    "--grace-period": (
        "grace_period_s",
        "SECONDS",
        "seconds in-flight calls get on SIGTERM before they are cancelled (default 10)",
    ),
    "--shutdown-delay": (
        "shutdown_delay_s",
        "SECONDS",
        "seconds to report not ready but go on serving on SIGTERM, before the grace period "
        "(default 0; a second SIGTERM skips it)",
    ),
}


def build_parser() -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = CommandParser(
        prog="tesserad",
        description="tessera's daemon: model registry, datasets, training and inference over gRPC.",
    )
    parser.add_argument("--version", action="version", version=f"tesserad {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = commands.add_parser(
        "serve",
        help="run the daemon until SIGTERM or SIGINT (SIGHUP applies the tokens and TLS files again)",
        description=(
            "Run the daemon. Settings come from, in rising priority: built-in defaults, the TOML "
            "file given by --config, TESSERA_* environment variables, these flags. "
            "`tesserad settings` lists every setting. SIGTERM or SIGINT stops it gracefully (after "
            "shutdown_delay_s of reporting not ready while serving, if set); "
            "SIGHUP reads security.tokens_file and the TLS certificate, key and client CA again, "
            "and on a replica replica.token_file (and only those: other settings need a restart). "
            f"Exit status: 0 stopped by a signal, after the drain; {EXIT_CANNOT_START} it could not "
            "start (the log says why: a port taken, a file a setting names missing or wrong, the data "
            f"directory in use); {EXIT_BAD_SETTINGS} a setting, flag or the --config file is wrong, "
            "or settings that do not go together (a non-loopback address without tokens or mutual "
            "TLS and without --insecure, a TLS certificate without its key, a store.map_size below "
            f"the minimum): the message names them and what to fix; {EXIT_STORE_TOO_NEW} the data "
            "directory's store was written by a newer tesserad. Neither 2 nor 5 is mended by a "
            "restart (the systemd unit's RestartPreventExitStatus)."
        ),
    )
    serve.add_argument("--config", type=Path, metavar="FILE", help="TOML settings file")
    for flag, (name, metavar, help_text) in SERVE_FLAGS.items():
        serve.add_argument(flag, dest=name.replace(".", "__"), metavar=metavar, help=help_text)
    serve.add_argument(
        "--module-path",
        dest="training__module_paths",
        action="append",
        metavar="DIR",
        help="directory the architecture family python imports users' nn.Module classes from "
        "(training.module_paths); repeat it for several; whoever can write DIR runs code as the daemon",
    )
    serve.add_argument(
        "--insecure",
        action="store_true",
        help="allow listening on a non-loopback address without tokens or mutual TLS (logs a warning)",
    )
    tokens.add_parser(commands)

    restore = commands.add_parser(
        "restore",
        help="restore a backup (`tessera admin backup`) into a new data directory, offline",
        description=(
            "Restore a backup archive (a file, a pipe, or stdin as -) into DIR, which must be missing or empty "
            "(a new disk's mount point too, its lost+found aside) and not in use, on a disk with room for it. An archive "
            "from a newer tesserad, whose store has a newer schema or tables this one does not know, is refused. "
            "Every file is checked against the archive's manifest (sha256 and size) and the "
            "store's record counts against it before anything is put in place; members a backup "
            "never holds (links, devices, other paths) and headers that claim too much to read into "
            f"memory (a manifest over {MANIFEST_MAX_BYTES >> 20} MiB, an extended header over "
            f"{HEADER_MAX_BYTES >> 20} MiB) are refused. A refused "
            "archive leaves nothing behind. Then `tesserad serve --data-dir DIR` starts on it. The "
            "restored store gets a new incarnation: replicas that followed the registry backed up "
            "follow a primary started on it from the start, whatever its change numbers. "
            "Exit status: 0 restored, 1 refused or failed (the message says why), 2 wrong "
            f"command line, {EXIT_RESTORED_BUT_FAILED} restored, but a step after it was in place failed "
            "(the message says which: a failed fsync leaves it in place with its durability not confirmed), 130 or 143 interrupted (Ctrl-C, SIGTERM: nothing is left behind, unless it came "
            "once the restore was in place, which the message then says). What a restore killed outright "
            "(SIGKILL) staged, or put in place without its store, is removed by the next restore into DIR; "
            "until then, `tesserad serve` refuses to start on DIR."
        ),
    )
    restore.add_argument(
        "archive",
        type=Path,
        metavar="FILE",
        help="the backup archive (or it compressed: gzip, bzip2, xz); - reads it from stdin "
        "(`ssh host cat b.tar | tesserad restore - ...`)",
    )
    restore.add_argument(
        "--data-dir", type=Path, required=True, metavar="DIR", help="the data directory to create"
    )
    restore.add_argument(
        "--owner",
        metavar="USER[:GROUP]",
        help="give the restored data directory and all it holds to USER (a name, or a uid, which "
        "needs no entry here: a container's runAsUser) and GROUP (a name or gid; default: USER's "
        "primary group, or the uid's number where USER has no entry): the user `tesserad serve` "
        "runs as, where the restore runs as root (default: the restore's own user)",
    )
    restore.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        help="draw the bytes restored of the archive's files' size, the rate and the time left on "
        "stderr, over one line (default: when stderr is a terminal)",
    )

    verify = commands.add_parser(
        "verify",
        help="check a data directory for damage, offline (`tessera admin verify` checks a running daemon's)",
        description=(
            "Check the data directory DIR of a stopped daemon for damage: every blob is re-hashed "
            "against its sha256, and the blob of every model version, dataset version, run artifact "
            "and job checkpoint is looked for. Each problem is printed on stdout with the records "
            "that own the blob, and a summary with the rate follows. It takes a shared lock on DIR's "
            "tesserad.lock, which keeps a daemon out, so it is refused while a daemon runs on DIR "
            "(check that one with `tessera admin verify`), and a daemon that starts meanwhile is "
            "refused. Nothing in DIR is written or created: the lock file is opened read-only, the "
            "store is opened read-only and no table is created in it, so a read-only mount or "
            "snapshot, or another user's directory, can be checked. A DIR without tesserad.lock (a "
            "copy made without it) is refused unless --unlocked is given. "
            "Exit status: 0 no damage, "
            f"{EXIT_DAMAGED} damage found (in a blob, or in the store file itself, which is said in a "
            "paragraph naming the file and what LMDB said, with the restore to make), 1 refused or "
            "failed (the message says why), 2 wrong command line, 130 or 143 interrupted."
        ),
    )
    verify.add_argument(
        "--data-dir", type=Path, required=True, metavar="DIR", help="the data directory to check"
    )
    verify.add_argument(
        "--unlocked",
        action="store_true",
        help="check a DIR that holds no tesserad.lock, without a lock: nothing then keeps a daemon "
        "from starting on DIR meanwhile, whose writes the check could report as damage",
    )

    commands.add_parser(
        "settings",
        help="list every setting with its default and environment variable",
        description="List every setting: its TOML name, environment variable, default and meaning.",
    )
    return parser


def _print_settings() -> None:
    for info in describe_settings():
        print(f"{info.name}\n    env {info.env}, default {info.default_text}\n    {info.help}")


class _Terminated(BaseException):
    """SIGTERM during a restore: raised so that its staging directory is removed on the way out,
    where the signal's default action would leave gigabytes of it behind."""


def _terminate(_signum: int, _frame: object) -> NoReturn:
    raise _Terminated


def _owner(parser: argparse.ArgumentParser, owner: str | None) -> tuple[int, int] | None:
    """The uid and gid `--owner USER[:GROUP]` gives the restore to: a name, or a uid with or
    without an entry here (a container's runAsUser); GROUP by name or gid, else the user's
    primary group, or the uid's number where it has no entry. A usage error for a name this
    system lacks, or for another owner where the restore does not run as root."""
    if owner is None:
        return None
    user, _, group = owner.partition(":")
    if user.isdigit():
        uid = int(user)
        try:
            gid = pwd.getpwuid(uid).pw_gid
        except KeyError:
            gid = uid
    else:
        try:
            entry = pwd.getpwnam(user)
        except KeyError:
            parser.error(
                f"--owner {owner}: no such user here; name the user `tesserad serve` runs as, or its uid"
            )
        uid, gid = entry.pw_uid, entry.pw_gid
    if group.isdigit():
        gid = int(group)
    elif group:
        try:
            gid = grp.getgrnam(group).gr_gid
        except KeyError:
            parser.error(f"--owner {owner}: no such group here; name the group by its name here or its gid")
    if os.geteuid() != 0 and (uid != os.geteuid() or gid not in (os.getegid(), *os.getgroups())):
        parser.error(
            f"--owner {owner}: only root may give files to another user or to a group it is not in; "
            f"run the restore as root, or as {user}"
        )
    return uid, gid


def _restore(
    archive: Path | BinaryIO, data_dir: Path, progress: bool | None, owner: tuple[int, int] | None
) -> int:
    from tesserad.backup.restore import (
        DurabilityUnconfirmed,
        FailedAfterRestore,
        InterruptedAfterRestore,
        RestoreError,
        archive_name,
        restore,
    )
    from tesserad.server import STORE_TABLES

    # What the restore tells on the way (a dead restore's staging directory it removed).
    told = logging.StreamHandler(sys.stderr)
    told.setFormatter(logging.Formatter("tesserad restore: %(message)s"))
    restore_log = logging.getLogger(restore.__module__)
    restore_log.addHandler(told)
    previous = signal.signal(signal.SIGTERM, _terminate)
    wanted = progress_wanted(progress, False, sys.stderr)
    manifest: Manifest | None = None
    interrupted: BaseException | None = None
    failed_after: BaseException | None = None
    try:
        with ProgressLine("restore", sys.stderr if wanted else None) as line:

            def staged(done: int, total: int) -> None:
                line.update(done, total)
                if done == total:
                    line.note(f"all {byte_size(total)} staged; checking the store and putting it in place")

            with signal_wakeup() as wakeup:
                manifest = restore(archive, data_dir, STORE_TABLES, staged, wakeup, owner)
            line.finish(manifest.store.size + manifest.blob_bytes)
    except (RestoreError, OSError) as exc:
        print(f"tesserad restore: {exc}", file=sys.stderr)
        return 1
    except InterruptedAfterRestore as exc:
        manifest, interrupted = exc.manifest, exc.__cause__
    except FailedAfterRestore as exc:
        manifest, failed_after = exc.manifest, exc.__cause__
    except (KeyboardInterrupt, _Terminated) as exc:
        # Once restore() has returned, the restore is in place whatever came after it.
        if manifest is None:
            print(f"tesserad restore: interrupted; nothing was written to {data_dir}", file=sys.stderr)
            return _interrupted_status(exc)
        interrupted = exc
    finally:
        signal.signal(signal.SIGTERM, previous)
        restore_log.removeHandler(told)
    records = sum(manifest.records.values())
    print(
        f"restored {archive_name(archive)} into {data_dir}: {counted(records, 'record')}, {counted(len(manifest.blobs), 'blob')} "
        f"({byte_size(manifest.blob_bytes)}), backed up by tesserad {manifest.tesserad_version} at "
        f"{manifest.created_at}; start it with `tesserad serve --data-dir {data_dir}`"
    )
    if interrupted is not None:
        print("tesserad restore: interrupted after the restore was in place; it is complete", file=sys.stderr)
        return _interrupted_status(interrupted)
    if isinstance(failed_after, DurabilityUnconfirmed):
        print(
            f"tesserad restore: the restore is in place and complete, but the disk did not confirm it is "
            f"durable: {failed_after}; a crash or power cut before the disk's next good sync may undo it: "
            "check the disk (the kernel's log says more) before starting the daemon on it",
            file=sys.stderr,
        )
        return EXIT_RESTORED_BUT_FAILED
    if failed_after is not None:
        print(
            f"tesserad restore: the restore is in place and complete, but finishing it failed: {failed_after}; "
            "fix that (a full disk?) before starting the daemon on it, rather than restoring again",
            file=sys.stderr,
        )
        return EXIT_RESTORED_BUT_FAILED
    return 0


def _verify(data_dir: Path, unlocked: bool) -> int:
    from tessera.messages import checked_store
    from tessera.rpc_commands import in_cli_words
    from tesserad.backup.verify import StoreCheck
    from tesserad.server import STORE_TABLES
    from tesserad.store import BlobStore, DataDirLock, ReadOnlyStore, store_errors
    from tesserad.store.schema import refuse_newer

    # Quoted: a relative path reads as a word otherwise ("damaged is damaged").
    named = f"data directory {str(data_dir)!r}"
    if not (data_dir / "store" / "data.mdb").is_file():
        print(
            f"tesserad verify: {named} holds no tesserad store (no store/data.mdb); name the data directory",
            file=sys.stderr,
        )
        return 1
    lock = DataDirLock(data_dir)
    try:
        locked = lock.acquire_to_read()
    except TesseraError as exc:
        print(
            f"tesserad verify: {exc}; to check the store of the daemon running on it, run "
            "`tessera admin verify` against that daemon",
            file=sys.stderr,
        )
        return 1
    except OSError as exc:
        print(f"tesserad verify: cannot take the lock of {named}: {exc}", file=sys.stderr)
        return 1
    if not locked and not unlocked:
        print(
            f"tesserad verify: {named} holds no {lock.path.name} to lock (nor is one made there), so "
            "nothing would keep a tesserad from starting on it during the check, whose writes the "
            "check could report as damage; pass --unlocked to check it so, once sure none will",
            file=sys.stderr,
        )
        return 1
    if not locked:
        print(
            f"tesserad verify: {named} holds no {lock.path.name} to lock, so the check runs "
            "unlocked (--unlocked): make sure no tesserad starts on it meanwhile",
            file=sys.stderr,
        )
    previous = signal.signal(signal.SIGTERM, _terminate)
    try:
        store = ReadOnlyStore.open(data_dir / "store", tables=STORE_TABLES, check=refuse_newer(str(data_dir)))
        try:
            with store_errors(data_dir / "store"):
                report = StoreCheck(store, BlobStore(data_dir / "blobs", read_only=True)).run()
        finally:
            store.close()
    except DataLoss as exc:
        print(f"tesserad verify: {exc}", file=sys.stderr)
        return EXIT_DAMAGED
    except (TesseraError, OSError) as exc:
        print(f"tesserad verify: {exc}", file=sys.stderr)
        return 1
    except (KeyboardInterrupt, _Terminated) as exc:
        print("tesserad verify: interrupted; nothing was changed", file=sys.stderr)
        return _interrupted_status(exc)
    finally:
        signal.signal(signal.SIGTERM, previous)
        lock.release()
    for problem in report.problems:
        # The fix in the words of the tessera CLI, which an operator deletes the owners with.
        print(in_cli_words(problem.message))
    checked = checked_store(
        report.blobs_checked, report.bytes_checked, report.references_checked, report.seconds
    )
    if not report.problems:
        print(f"{checked}: no damage")
        return 0
    print(checked)
    print(
        f"tesserad verify: {named} is damaged: {counted(len(report.problems), 'problem')}, each named on "
        "stdout with the records that own the blob",
        file=sys.stderr,
    )
    return EXIT_DAMAGED


def _interrupted_status(interruption: BaseException) -> int:
    return EXIT_TERMINATED if isinstance(interruption, _Terminated) else EXIT_INTERRUPTED


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "settings":
        try:
            _print_settings()
            sys.stdout.flush()
        except BrokenPipeError:
            # The reader stopped early (`| head`, `| less` quit): nothing of ours went wrong. Point
            # stdout at devnull so the interpreter's own flush at exit does not fail again.
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    if args.command == "tokens":
        return tokens.run(args)
    if args.command == "restore":
        owner = _owner(parser, args.owner)
        if args.archive != Path("-"):
            return _restore(args.archive, args.data_dir, args.progress, owner)
        if sys.stdin is None or sys.stdin.isatty():
            # As tar refuses: an archive is not typed in, and a closed stdin holds none.
            parser.error("restore - reads the archive from stdin: redirect it (< FILE, CMD |)")
        return _restore(sys.stdin.buffer, args.data_dir, args.progress, owner)

    if args.command == "verify":
        return _verify(args.data_dir, args.unlocked)

    overrides = {name: getattr(args, name.replace(".", "__")) for name, _, _ in SERVE_FLAGS.values()}
    overrides["training.module_paths"] = args.training__module_paths
    try:
        flags = {name: flag for flag, (name, _, _) in SERVE_FLAGS.items()}
        layered = layer_settings(args.config, overrides=overrides, flags=flags)
    except SettingsError as exc:
        print(f"tesserad: {exc}", file=sys.stderr)
        return EXIT_BAD_SETTINGS
    settings = layered.settings
    configure_logging(settings.log_format, settings.log_level)
    for warning in unknown_environment() + list(layered.shadowed):
        log.warning("%s", warning)
    # Before the server is imported (a second of CPU): these need no file, port or peer.
    refused = refusal(settings, args.insecure)
    if refused is not None:
        log.error("tesserad cannot start: %s", layered.where(refused))
        return EXIT_BAD_SETTINGS

    from tesserad.server import SettingsRefusal, StartupError, serve
    from tesserad.store.schema import StoreTooNew

    try:
        asyncio.run(serve(settings, insecure=args.insecure))
    except SettingsRefusal as exc:
        log.error("tesserad cannot start: %s", layered.where(str(exc)))
        return EXIT_BAD_SETTINGS
    except StoreTooNew as exc:
        log.error("tesserad cannot start: %s", exc)
        return EXIT_STORE_TOO_NEW
    except (StartupError, TesseraError) as exc:
        log.error("tesserad cannot start: %s", layered.where(str(exc)))
        return EXIT_CANNOT_START
    return 0


if __name__ == "__main__":
    sys.exit(main())
