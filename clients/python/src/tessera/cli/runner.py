"""One command run: its client, Ctrl-C and SIGTERM while it runs, and each failure in one line on
stderr with its exit status."""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
import threading
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

from rich.console import Console

from tessera.cli import EXIT_DAEMON, EXIT_FAILED, EXIT_OUTPUT_CLOSED, EXIT_USAGE
from tessera.cli.arguments import InCliWords, UsageError
from tessera.cli.datasets import cmd_datasets_download, cmd_datasets_push
from tessera.cli.jobs import cmd_jobs_watch, cmd_train
from tessera.cli.models import cmd_export_onnx, cmd_models_download, cmd_models_push
from tessera.cli.output import Output, close_output
from tessera.cli.parser import build_parser
from tessera.cli.serving import cmd_explain, cmd_load, cmd_unload
from tessera.cli.system import cmd_admin_backup, cmd_demo
from tessera.cli.tracking import cmd_runs_artifacts_get, cmd_runs_artifacts_put
from tessera.client import Client
from tessera.entry import EXIT_INTERRUPTED, EXIT_TERMINATED
from tessera.errors import (
    DeadlineExceeded,
    JobFailed,
    NotAnswering,
    StoreDamaged,
    SweepFailed,
    Terminated,
    TesseraError,
)
from tessera.rpc_commands import in_cli_words
from tessera.sweep_commands import cmd_sweep, cmd_sweeps_show
from tessera.transfer import remove_unfinished
from tessera.transport import DEFAULT_TIMEOUT_S, MODEL_CALL_TIMEOUT_S, TLS, UNLOAD_TIMEOUT_S

# Commands whose slow call the SDK (or the command) gives at least these seconds, whatever
# --timeout says (Inference.load, unload and explain, Models.export_onnx): what that call is, in
# the words of the message for a deadline that passed.
_LONGER_CALLS: dict[Callable[..., None], tuple[str, float]] = {
    cmd_load: ("loading the model", MODEL_CALL_TIMEOUT_S),
    cmd_unload: ("unloading it", UNLOAD_TIMEOUT_S),
    cmd_export_onnx: ("the export", MODEL_CALL_TIMEOUT_S),
    cmd_explain: ("the explanation", MODEL_CALL_TIMEOUT_S),
    cmd_demo: ("the demo's export and load", MODEL_CALL_TIMEOUT_S),
}

# Commands that follow a job or a sweep (`jobs watch`, and the others with --follow), which has
# no limit: their calls (the lookups before, while and after it, a submit before it) get at least
# --timeout's default, whatever --timeout says, since a shorter one failed the following however
# long the job ran. What those calls are, in the words of the message for a deadline that passed.
_FOLLOWERS: dict[Callable[..., None], str] = {
    cmd_jobs_watch: "looking the job up",
    cmd_train: "submitting the job and looking it up",
    cmd_sweep: "submitting the sweep and looking it up",
    cmd_sweeps_show: "looking the sweep up",
}

# Commands that move a file's bytes under --transfer-timeout, and whether they also make calls
# under --timeout (a lookup before a download, the demo's other steps): a deadline that passed
# names the flag that bounded it, both only where either could have.
_TRANSFERS: dict[Callable[..., None], bool] = {
    cmd_models_push: False,
    cmd_datasets_push: False,
    cmd_runs_artifacts_put: False,
    cmd_admin_backup: False,
    cmd_models_download: True,
    cmd_datasets_download: True,
    cmd_runs_artifacts_get: True,
    cmd_demo: True,
}


class _Signals:
    """Ctrl-C (SIGINT) and SIGTERM while a command runs: each raises in the main thread
    (KeyboardInterrupt, Terminated), so that the file being written is removed on the way out;
    `caught` says which came (None: none). Only the main thread may set a handler: main() run from another
    thread keeps the default. A signal ignored stays ignored (a shell's background job ignores
    Ctrl-C)."""

    def __init__(self) -> None:
        self.caught: int | None = None
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
        self.caught = signum
        if signum == signal.SIGTERM:
            raise Terminated
        raise KeyboardInterrupt


def tls_from(args: argparse.Namespace) -> TLS | None:
    """The TLS the flags ask for (None: plaintext); UsageError for a client certificate without
    its key or a key without its certificate (the SDK's words for it name its own arguments)."""
    if not (args.tls or args.tls_ca or args.tls_cert or args.tls_key):
        return None
    if (args.tls_cert is None) != (args.tls_key is None):
        raise UsageError(
            "--tls-cert and --tls-key go together: give the client certificate and its private key"
        )
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
        close_output()
        return EXIT_OUTPUT_CLOSED
    return status


def run(args: argparse.Namespace, out: Output, signals: _Signals) -> int:
    """The command in `args`, its failures said in one line on stderr; returns the exit status."""
    try:
        with Client(
            args.target,
            token=args.token,
            tls=tls_from(args),
            timeout=_call_timeout(args),
            transfer_timeout=args.transfer_timeout,
            keepalive=args.keepalive,
        ) as client:
            _handle(client, args, out, signals)
    except BrokenPipeError:
        raise
    except UsageError as err:
        args.parser.print_usage(sys.stderr)
        return _fail(EXIT_USAGE, f"{args.parser.prog}: error: {err}")
    except NotAnswering as err:
        # The daemon did not answer at all (no connection ready, a follower's asks unanswered): its
        # words say what to check, and a longer --timeout would not have helped.
        return _fail(EXIT_DAEMON, f"tessera: {err.code}: {in_cli_words(err.daemon_message)}")
    except DeadlineExceeded as err:
        # gRPC's own words ("Deadline Exceeded") name no limit, nor how to lengthen it.
        return _fail(
            EXIT_DAEMON, f"tessera: {err.code}: {in_cli_words(err.daemon_message)}; {deadline_words(args)}"
        )
    except TesseraError as err:
        said = err.daemon_message if isinstance(err, InCliWords) else in_cli_words(err.daemon_message)
        return _fail(EXIT_DAEMON, f"tessera: {err.code}: {said}")
    except (JobFailed, SweepFailed, StoreDamaged) as err:
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


def _follows(args: argparse.Namespace) -> bool:
    """Whether the command follows a job or a sweep: `jobs watch` always (it has no --follow),
    the other _FOLLOWERS with --follow."""
    return args.handler in _FOLLOWERS and bool(getattr(args, "follow", True))


def _call_timeout(args: argparse.Namespace) -> float:
    """The client's timeout for the command's calls: --timeout, or at least DEFAULT_TIMEOUT_S for
    a command that follows (see _FOLLOWERS)."""
    if _follows(args):
        return max(float(args.timeout), DEFAULT_TIMEOUT_S)
    return float(args.timeout)


def _longer_call(args: argparse.Namespace) -> tuple[str, float] | None:
    """What the command's call given more than --timeout is, and the least it gets; None for none."""
    if _follows(args):
        return _FOLLOWERS[args.handler], DEFAULT_TIMEOUT_S
    return _LONGER_CALLS.get(args.handler)


def deadline_words(args: argparse.Namespace) -> str:
    """The limit the command's calls ran under, for a deadline that passed, and the flag that
    lengthens it: --transfer-timeout for a transfer, --timeout for any other call, both for a
    command that makes both."""
    transfer = f"--transfer-timeout ({args.transfer_timeout:g} s)"
    also_calls = _TRANSFERS.get(args.handler)
    if also_calls is False:
        return f"the transfer may take {transfer}: give it more seconds"
    limits = f"a call may take --timeout ({args.timeout:g} s)"
    longer = _longer_call(args)
    if longer is not None:
        what, floor = longer
        limits += f", {what} {max(args.timeout, floor):g} s (the longer of --timeout and {floor:g} s)"
    if also_calls is None:
        return f"{limits}: give --timeout more seconds"
    return f"{limits}, the transfer {transfer}: give the one it ran past more seconds"


def _handle(client: Client, args: argparse.Namespace, out: Output, signals: _Signals) -> None:
    try:
        args.handler(client, args, out)
    except BaseException as err:
        if signals.caught is None:
            # Raised by no signal (a caller of main() in-process, or a failure): no call was cut short.
            raise
        if not isinstance(err, (Terminated, KeyboardInterrupt)):
            # The signal's exception can come out as another: raised between a lock's acquire and
            # the `with` that releases it (in gRPC's own code), it becomes "cannot release
            # un-acquired lock" on the way out. The command stopped because of the signal all the same.
            stop: Terminated | KeyboardInterrupt = (
                Terminated() if signals.caught == signal.SIGTERM else KeyboardInterrupt()
            )
        else:
            stop = err
        # The file being written was removed on the way here, unless the signal landed right
        # after its creation, before the code that removes it: it goes now. Exit at once:
        # closing the channel can wait forever on a call the signal cut short.
        remove_unfinished()
        status, message = _stopped_by(stop)
        _fail(status, message)
        with contextlib.suppress(OSError, ValueError):
            sys.stdout.flush()
        os._exit(status)


def _stopped_by(err: Terminated | KeyboardInterrupt) -> tuple[int, str]:
    """The status and the one line for a command a signal stopped; its own words (those of
    StoppedFollowing, or of a Terminated raised while following) say what goes on without the
    command."""
    if isinstance(err, Terminated):
        return EXIT_TERMINATED, f"tessera: {str(err) or 'terminated'}"
    return EXIT_INTERRUPTED, f"tessera: {str(err) or 'interrupted'}"


def _os_error_words(err: OSError) -> str:
    """`FILE: reason`, as cat and cp say it, for an error about a file, the fix a download's
    reason ends in (how to go on from the bytes it kept) in the CLI's words; else the error's
    text (Python's `[Errno 2] ...: 'FILE'` reads as a crash's last line)."""
    if err.filename is None or not err.strerror:
        return str(err)
    return f"{err.filename}: {in_cli_words(err.strerror)}"


def _fail(status: int, message: str) -> int:
    """`message` on stderr while it is open: with `2>&-` or a reader gone, the status alone
    says it (and print(file=None) would write to stdout)."""
    if sys.stderr is None:
        return status
    try:
        print(message, file=sys.stderr, flush=True)
    except (OSError, ValueError):
        close_output(sys.stderr)
    return status
