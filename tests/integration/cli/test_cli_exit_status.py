"""`tessera` as a shell sees it: one exit status per kind of failure (as `tessera --help` lists
them), quiet when its reader goes away (`| head`), and no crash when stderr is closed."""

from __future__ import annotations

import fcntl
import json
import os
import signal
import subprocess
import sys
import termios
import time
import tomllib
from pathlib import Path

import numpy as np
import pytest

import tessera
from tessera.cli import (
    EXIT_DAEMON,
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_OUTPUT_CLOSED,
    EXIT_TERMINATED,
    EXIT_USAGE,
)
from tessera.transfer import partial_names
from tests.integration.cli.test_cli_changes import CLI_WITH_CTRL_C
from tests.integration.cli.test_cli_follow import JOB_SPEC
from tests.integration.sdk.affine import affine_onnx


def run_cli(
    *args: str, stdout: int | None = None, stderr: int | None = None, **popen
) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "tessera.cli", *args],
        stdout=subprocess.PIPE if stdout is None else stdout,
        stderr=subprocess.PIPE if stderr is None else stderr,
        timeout=120,
        check=False,
        **popen,
    )


def closed_pipe() -> int:
    """The write end of a pipe whose reader has gone, as `| head` leaves it after its lines."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    return write_end


@pytest.mark.parametrize(
    "command",
    [
        ("models", "ls"),
        ("--json", "models", "ls"),
        ("--json", "models", "changes"),
        ("--json", "models", "changes", "--follow"),
    ],
)
def test_a_reader_gone_ends_quietly_with_sigpipes_status(daemon, client, tmp_path, command):
    client.models.push("affine", affine_onnx(tmp_path / "affine.onnx"))
    write_end = closed_pipe()
    try:
        result = run_cli("--target", daemon.target, *command, stdout=write_end)
    finally:
        os.close(write_end)
    assert result.returncode == EXIT_OUTPUT_CLOSED, result.stderr
    assert result.stderr == b""


def test_a_closed_stderr_keeps_the_status_and_stdout_clean(daemon):
    write_end = closed_pipe()
    try:
        reader_gone = run_cli("--target", daemon.target, "models", "show", "absent", stderr=write_end)
    finally:
        os.close(write_end)
    assert reader_gone.returncode == EXIT_DAEMON and reader_gone.stdout == b""
    # `2>&-`: print(file=None) would have written the error to stdout.
    no_stderr = run_with_closed(2, "--target", daemon.target, "models", "show", "absent")
    assert no_stderr.returncode == EXIT_DAEMON and no_stderr.stdout == b""


def run_with_closed(fd: int, *args: str) -> subprocess.CompletedProcess:
    """`tessera ... N>&-` through the shell: closing the descriptor in a preexec_fn runs Python
    in the forked child of a process whose gRPC threads are running, which can abort it."""
    return subprocess.run(
        ["sh", "-c", f'exec "$@" {fd}>&-', "sh", sys.executable, "-m", "tessera.cli", *args],
        stdout=subprocess.PIPE if fd != 1 else None,
        stderr=subprocess.PIPE if fd != 2 else None,
        timeout=120,
        check=False,
    )


def stdout_closed(daemon, *command: str) -> subprocess.CompletedProcess:
    """`tessera ... >&-`: the command starts with no stdout at all."""
    return run_with_closed(1, "--target", daemon.target, *command)


@pytest.mark.parametrize("command", [("models", "ls"), ("--json", "models", "ls"), ("info",)])
def test_a_closed_stdout_is_a_failure_said_on_stderr(daemon, command):
    # It exited 0 having printed nothing, and a failed command ended in a traceback.
    result = stdout_closed(daemon, *command)
    assert result.returncode == EXIT_FAILED
    assert result.stderr.decode().startswith("tessera: standard output is closed"), result.stderr


def test_a_closed_stdout_changes_nothing(daemon, client, table_dataset):
    result = stdout_closed(daemon, "datasets", "rm", "table")
    assert result.returncode == EXIT_FAILED, result.stderr
    assert [d.name for d in client.datasets.list()] == ["table"]


def test_usage_mistakes_found_after_parsing_exit_2_under_the_usage_line(tessera_cli, tmp_path):
    model = affine_onnx(tmp_path / "affine.onnx")
    twice = tessera_cli("models", "deploy", "affine", "1=50", "1=50")
    assert twice.code == EXIT_USAGE, twice.err
    assert twice.err.startswith("usage: tessera models deploy ")
    assert "tessera models deploy: error: route version 1 is given twice" in twice.err
    renamed = tmp_path / "affine.bin"
    renamed.write_bytes(model.read_bytes())
    unknown = tessera_cli("models", "push", "affine", str(renamed))
    assert unknown.code == EXIT_USAGE and "usage: tessera models push " in unknown.err
    fit = tessera_cli("models", "ensemble", "e", "a:1", "b:1", "--fit", "x.npz")
    assert fit.code == EXIT_USAGE and "use it with --combine stacking" in fit.err
    # The last fraction of a split given twice was taken silently.
    split_twice = tessera_cli(
        "datasets", "push", "t", "t.npz", "--split", "train=0.5", "--split", "val=0.5", "--split", "train=0.5"
    )
    assert split_twice.code == EXIT_USAGE and "--split train is given twice" in split_twice.err


def test_daemon_errors_have_their_own_status(tessera_cli):
    missing = tessera_cli("models", "show", "absent")
    assert missing.code == EXIT_DAEMON and missing.err.startswith("tessera: NOT_FOUND: ")


def test_a_push_or_download_in_a_script_prints_the_result_alone(tessera_cli, tmp_path):
    """Progress lines ("pushing x: 25% of ...") went to stdout, mixed with the result: they go to
    stderr now, and only when it is a terminal, so a script's stderr holds its errors alone."""
    pushed = tessera_cli("models", "push", "affine", str(affine_onnx(tmp_path / "affine.onnx")))
    assert pushed.code == 0 and pushed.err == "", pushed.err
    assert pushed.out.startswith("registered affine v1") and "pushing" not in pushed.out
    downloaded = tessera_cli("models", "download", "affine", str(tmp_path / "copy.onnx"))
    assert downloaded.out.startswith("wrote ") and downloaded.err == ""


def test_a_reader_gone_from_a_followed_job_ends_quietly(daemon, client, table_dataset):
    job = client.training.submit(tomllib.loads(JOB_SPEC))
    job.wait(timeout=300)
    for as_json in ([], ["--json"]):
        write_end = closed_pipe()
        try:
            result = run_cli("--target", daemon.target, *as_json, "jobs", "watch", job.id, stdout=write_end)
        finally:
            os.close(write_end)
        assert result.returncode == EXIT_OUTPUT_CLOSED, result.stderr
        assert result.stderr == b""


def test_a_file_that_cannot_be_read_or_written_is_named_with_the_reason_alone(tessera_cli, tmp_path):
    """Python's `[Errno 2] No such file or directory: 'x'` read as a traceback's last line: the
    message is the file, then why, as `cat` and `cp` say it."""
    missing = tmp_path / "clips.npz"
    pushed = tessera_cli("datasets", "push", "clips", str(missing))
    assert pushed.code == EXIT_FAILED
    assert pushed.err == f"tessera: {missing}: No such file or directory\n"
    # Not a dataset format either: that the file is missing comes first, not a recipe for other formats.
    not_npz = tessera_cli("datasets", "push", "clips", str(tmp_path / "clips.h5"))
    assert (not_npz.code, not_npz.err) == (
        EXIT_FAILED,
        f"tessera: {tmp_path / 'clips.h5'}: No such file or directory\n",
    )
    spec = tessera_cli("train", "spec.toml")
    assert spec.err == "tessera: spec.toml: No such file or directory\n"
    backup = tessera_cli("admin", "backup", "-o", str(tmp_path / "absent" / "backup.tar"))
    assert backup.code == EXIT_FAILED and "Errno" not in backup.err, backup.err
    assert backup.err.startswith(f"tessera: {tmp_path / 'absent' / 'backup.tar'}: "), backup.err


def test_a_terminated_backup_leaves_no_partial_file(spawn_daemon, tmp_path):
    """SIGTERM (a supervisor's stop, `timeout`) killed `admin backup -o FILE` outright and left
    its `.FILE.<hex>.partial` behind, which Ctrl-C and errors remove: it is removed now too."""
    daemon = spawn_daemon(
        "--listen", "127.0.0.1:0", "--metrics-listen", "off", "--data-dir", str(tmp_path / "data")
    )
    target = daemon.wait_serving()
    out = tmp_path / "out"
    out.mkdir()
    # Stopped, the daemon never answers: the backup waits on its call with the partial file
    # made, however fast the machine, until the signal comes.
    daemon.process.send_signal(signal.SIGSTOP)
    command = ["--target", target, "admin", "backup", "-o", str(out / "b.tar")]
    backup = subprocess.Popen([sys.executable, "-m", "tessera.cli", *command], stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        while not list(out.iterdir()) and time.monotonic() < deadline and backup.poll() is None:
            time.sleep(0.05)
        assert [p.name.endswith(".partial") for p in out.iterdir()] == [True]
        backup.send_signal(signal.SIGTERM)
        _, err = backup.communicate(timeout=60)
    finally:
        backup.kill()
        daemon.process.send_signal(signal.SIGCONT)
    assert backup.returncode == EXIT_TERMINATED, err
    assert err == b"tessera: terminated\n"
    assert list(out.iterdir()) == []


# The CLI run with SIGTERM sent to itself at the instant a backup's (or a download's) partial
# file exists and before anything holds it: as its creation (the "open" of its name) is followed
# by the "open" that wraps its descriptor in a file object, a loaded machine's scheduler can land
# the signal there too.
CLI_TERMINATED_AS_THE_PARTIAL_IS_MADE = """\
import os, signal, sys
made = []
def hook(event, args):
    if event != "open":
        return
    if isinstance(args[0], str) and args[0].endswith(".partial"):
        made.append(args[0])
    elif isinstance(args[0], int) and len(made) == 1:
        made.append(args[0])
        os.kill(os.getpid(), signal.SIGTERM)
sys.addaudithook(hook)
from tessera.entry import main
raise SystemExit(main())
"""


def test_a_backup_terminated_as_its_partial_file_is_made_leaves_none(daemon, tmp_path):
    """A SIGTERM landing between the partial file's creation and the code that removes it on
    the way out left it behind."""
    out = tmp_path / "out"
    out.mkdir()
    command = ["--target", daemon.target, "admin", "backup", "-o", str(out / "b.tar")]
    backup = subprocess.run(
        [sys.executable, "-c", CLI_TERMINATED_AS_THE_PARTIAL_IS_MADE, *command],
        capture_output=True,
        timeout=120,
        check=False,
    )
    assert backup.returncode == EXIT_TERMINATED, backup.stderr
    assert backup.stderr == b"tessera: terminated\n"
    assert list(out.iterdir()) == []


# As CLI_TERMINATED_AS_THE_PARTIAL_IS_MADE, at the read of a download's record once its partial
# file is open and locked (`--resume`), before the download's code that removes it is reached.
CLI_TERMINATED_AS_THE_RECORD_IS_READ = """\
import os, signal, sys
# The partial file's name is opened once to create it, again to open the one found there.
opened = []
def hook(event, args):
    if event != "open" or not isinstance(args[0], str) or "sent" in opened:
        return
    if args[0].endswith(".partial"):
        opened.append(args[0])
    elif args[0].endswith(".partial.json") and opened:
        opened.append("sent")
        os.kill(os.getpid(), signal.SIGTERM)
sys.addaudithook(hook)
from tessera.entry import main
raise SystemExit(main())
"""


# As CLI_TERMINATED_AS_THE_PARTIAL_IS_MADE, at the first open of the partial file's name (the
# attempt to create it), before the call: the file found there is an earlier download's.
CLI_TERMINATED_AS_THE_PARTIAL_IS_OPENED = """\
import os, signal, sys
opened = []
def hook(event, args):
    if event == "open" and not opened and isinstance(args[0], str) and args[0].endswith(".partial"):
        opened.append(args[0])
        os.kill(os.getpid(), signal.SIGTERM)
sys.addaudithook(hook)
from tessera.entry import main
raise SystemExit(main())
"""


def download_terminated(daemon, script: str, out: Path, *flags: str) -> subprocess.CompletedProcess:
    command = ["--target", daemon.target, "models", "download", "affine", "-o", str(out), *flags]
    return subprocess.run(
        [sys.executable, "-c", script, *command], capture_output=True, timeout=120, check=False
    )


@pytest.mark.parametrize(
    ("script", "flags"),
    [(CLI_TERMINATED_AS_THE_PARTIAL_IS_MADE, ()), (CLI_TERMINATED_AS_THE_RECORD_IS_READ, ("--resume",))],
    ids=["as-it-is-made", "as-its-record-is-read"],
)
def test_a_download_terminated_as_its_partial_file_is_made_leaves_none(
    daemon, client, tmp_path, script, flags
):
    """A download stopped on purpose keeps no bytes (README: SIGTERM removes them); one landing
    between the partial file's creation and the download's code that removes it left it behind,
    empty and with no record, for no later download to need."""
    client.models.push("affine", affine_onnx(tmp_path / "affine.onnx"))
    out = tmp_path / "out"
    out.mkdir()
    download = download_terminated(daemon, script, out / "affine.onnx", *flags)
    assert download.returncode == EXIT_TERMINATED, download.stderr
    assert download.stderr == b"tessera: terminated\n"
    assert list(out.iterdir()) == []


@pytest.mark.parametrize(
    "script",
    [CLI_TERMINATED_AS_THE_PARTIAL_IS_OPENED, CLI_TERMINATED_AS_THE_RECORD_IS_READ],
    ids=["as-its-name-is-opened", "as-its-record-is-read"],
)
def test_a_download_terminated_as_it_opens_a_kept_partial_file_leaves_it_for_a_resume(
    daemon, client, tmp_path, script
):
    """The bytes an earlier download kept are not this one's to remove before it has started:
    a signal landing as it tried to create the partial file removed them, as made by it."""
    pushed = client.models.push("affine", affine_onnx(tmp_path / "affine.onnx"))
    out = tmp_path / "out"
    out.mkdir()
    partial, record = partial_names(out / "affine.onnx")
    partial.write_bytes(b"\x08")
    described = {"file": "affine v1", "sha256": pushed.sha256, "size_bytes": pushed.size_bytes}
    record.write_text(json.dumps(described))
    download = download_terminated(daemon, script, out / "affine.onnx", "--resume")
    assert download.returncode == EXIT_TERMINATED, download.stderr
    assert sorted(out.iterdir()) == sorted([partial, record])
    assert partial.read_bytes() == b"\x08"
    assert json.loads(record.read_text()) == described


# The CLI run with a signal sent to itself once a download's partial file is synced whole, at
# the check that its name is still the download's, before it is put in place: argv[1] names the
# signal. A profile hook sees the C call of fsync return, then the call of that check.
CLI_SIGNALLED_ONCE_THE_DOWNLOAD_IS_SYNCED = """\
import os, signal, sys
signum = getattr(signal, sys.argv.pop(1))
synced = []
def profile(frame, event, arg):
    if event == "c_return" and arg is os.fsync:
        synced.append(arg)
    elif event == "call" and synced and frame.f_code.co_name == "_names":
        sys.setprofile(None)
        os.kill(os.getpid(), signum)
sys.setprofile(profile)
from tessera.entry import main
raise SystemExit(main())
"""


# As CLI_SIGNALLED_ONCE_THE_DOWNLOAD_IS_SYNCED, at the first chunk the download writes.
CLI_SIGNALLED_AS_THE_DOWNLOAD_WRITES = """\
import os, signal, sys
signum = getattr(signal, sys.argv.pop(1))
def profile(frame, event, arg):
    code = frame.f_code
    if event == "call" and code.co_name == "write" and code.co_filename.endswith("transfer.py"):
        sys.setprofile(None)
        os.kill(os.getpid(), signum)
sys.setprofile(profile)
from tessera.entry import main
raise SystemExit(main())
"""


def kept_half(pushed, artifact: bytes, destination: Path) -> None:
    """The first half of the `pushed` version's `artifact` kept beside `destination` with their
    record, as a download that gave up leaves them."""
    partial, record = partial_names(destination)
    partial.write_bytes(artifact[: len(artifact) // 2])
    record.write_text(
        json.dumps({"file": "affine v1", "sha256": pushed.sha256, "size_bytes": pushed.size_bytes})
    )


@pytest.mark.parametrize(
    ("script", "signum", "status"),
    [
        (CLI_SIGNALLED_ONCE_THE_DOWNLOAD_IS_SYNCED, "SIGTERM", EXIT_TERMINATED),
        (CLI_SIGNALLED_ONCE_THE_DOWNLOAD_IS_SYNCED, "SIGINT", EXIT_INTERRUPTED),
        (CLI_SIGNALLED_AS_THE_DOWNLOAD_WRITES, "SIGINT", EXIT_INTERRUPTED),
    ],
    ids=["synced-sigterm", "synced-sigint", "writing-sigint"],
)
def test_a_signal_leaves_no_partial_file_without_resume_and_keeps_it_for_the_next_with_resume(
    daemon, client, tmp_path, script, signum, status
):
    """A signal landing once the file was synced whole, before it was put in place, left its
    partial file and record behind (README: a signal removes them), for a --resume to finish; and
    Ctrl-C of a --resume removed the bytes an earlier download had kept, which --resume is there
    to go on from. Without --resume nothing is left; with it, the bytes stay for the next."""
    pushed = client.models.push("affine", affine_onnx(tmp_path / "affine.onnx"))
    artifact = (tmp_path / "affine.onnx").read_bytes()
    out = tmp_path / "out"
    out.mkdir()
    kept_half(pushed, artifact, out / "affine.onnx")
    partial, record = partial_names(out / "affine.onnx")
    described = record.read_text()
    command = ["--target", daemon.target, "models", "download", "affine", "-o", str(out / "affine.onnx")]
    plain = subprocess.run(
        [sys.executable, "-c", script, signum, *command], capture_output=True, timeout=120, check=False
    )
    assert plain.returncode == status, plain.stderr
    assert list(out.iterdir()) == []
    kept_half(pushed, artifact, out / "affine.onnx")
    resumed = subprocess.run(
        [sys.executable, "-c", script, signum, *command, "--resume"],
        capture_output=True,
        timeout=120,
        check=False,
    )
    assert resumed.returncode == status, resumed.stderr
    assert sorted(out.iterdir()) == sorted([partial, record])
    assert artifact.startswith(partial.read_bytes()) and len(partial.read_bytes()) >= len(artifact) // 2
    assert record.read_text() == described
    finished = run_cli(*command, "--resume")
    assert finished.returncode == 0, finished.stderr
    assert (out / "affine.onnx").read_bytes() == artifact
    assert list(out.iterdir()) == [out / "affine.onnx"]


def test_a_download_into_a_directory_it_made_terminated_leaves_no_directory(daemon, client, tmp_path):
    """`-o out/x/` made out and out/x for the file; a SIGTERM landing as the partial file was
    made removed that file on the way out, and left the directories, empty."""
    client.models.push("affine", affine_onnx(tmp_path / "affine.onnx"))
    out = tmp_path / "out"
    command = ["--target", daemon.target, "models", "download", "affine", "-o", f"{out}/x/"]
    download = subprocess.run(
        [sys.executable, "-c", CLI_TERMINATED_AS_THE_PARTIAL_IS_MADE, *command],
        capture_output=True,
        timeout=120,
        check=False,
    )
    assert download.returncode == EXIT_TERMINATED, download.stderr
    assert download.stderr == b"tessera: terminated\n"
    assert not out.exists()


# The CLI run with SIGTERM sent to itself as the nth directory a download makes is made, before
# the code after the mkdir runs: argv[1] is n. A profile hook sees the C call of os.mkdir return
# in pathlib's mkdir (the download's, not an import's __pycache__).
CLI_TERMINATED_AS_A_DIRECTORY_IS_MADE = """\
import os, signal, sys
nth = int(sys.argv.pop(1))
made = []
def profile(frame, event, arg):
    if event == "c_return" and arg is os.mkdir and frame.f_code.co_filename.endswith("pathlib.py"):
        made.append(arg)
        if len(made) == nth:
            sys.setprofile(None)
            os.kill(os.getpid(), signal.SIGTERM)
sys.setprofile(profile)
from tessera.entry import main
raise SystemExit(main())
"""


# As CLI_SIGNALLED_AS_THE_DOWNLOAD_WRITES, at the second chunk: the first is in the file.
CLI_SIGNALLED_AS_THE_DOWNLOAD_WRITES_AGAIN = """\
import os, signal, sys
signum = getattr(signal, sys.argv.pop(1))
writes = []
def profile(frame, event, arg):
    code = frame.f_code
    if event == "call" and code.co_name == "write" and code.co_filename.endswith("transfer.py"):
        writes.append(code)
        if len(writes) == 2:
            sys.setprofile(None)
            os.kill(os.getpid(), signum)
sys.setprofile(profile)
from tessera.entry import main
raise SystemExit(main())
"""


@pytest.fixture
def logged_artifact(client, tmp_path) -> tuple[str, bytes]:
    """A run with a 3 MiB artifact weights.bin (three chunks): its id and the artifact's bytes."""
    run_id = client.training.create_run("signals", create_experiment=True).run_id
    blob = np.random.default_rng(4).bytes(3 << 20)
    (tmp_path / "weights.bin").write_bytes(blob)
    client.training.log_artifact(run_id, tmp_path / "weights.bin")
    return run_id, blob


@pytest.mark.parametrize("nth", [1, 2])
def test_an_artifact_download_terminated_as_a_directory_is_made_for_it_leaves_none(
    daemon, logged_artifact, tmp_path, nth
):
    """`-o out/x/` makes out, then out/x: a SIGTERM landing between a mkdir and the code that
    notes the directory for removal left it behind."""
    run_id, _ = logged_artifact
    out = tmp_path / "out"
    command = [
        "--target",
        daemon.target,
        "runs",
        "artifacts",
        "get",
        run_id,
        "weights.bin",
        "-o",
        f"{out}/x/",
    ]
    download = subprocess.run(
        [sys.executable, "-c", CLI_TERMINATED_AS_A_DIRECTORY_IS_MADE, str(nth), *command],
        capture_output=True,
        timeout=120,
        check=False,
        env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"},
    )
    assert download.returncode == EXIT_TERMINATED, download.stderr
    assert download.stderr == b"tessera: terminated\n"
    assert not out.exists()


def test_an_artifact_download_into_directories_it_made_stopped_leaves_them_only_with_resume(
    daemon, logged_artifact, tmp_path
):
    """As a model's or a dataset's: the directories made for the file go with it when it is
    stopped, unless --resume keeps its bytes in them; `out`, there before, is left either way."""
    run_id, blob = logged_artifact
    out = tmp_path / "out"
    out.mkdir()
    command = [
        "--target",
        daemon.target,
        "runs",
        "artifacts",
        "get",
        run_id,
        "weights.bin",
        "-o",
        f"{out}/a/b/",
    ]
    script = [sys.executable, "-c", CLI_SIGNALLED_AS_THE_DOWNLOAD_WRITES_AGAIN, "SIGINT", *command]
    plain = subprocess.run(script, capture_output=True, timeout=120, check=False)
    assert plain.returncode == EXIT_INTERRUPTED, plain.stderr
    assert list(out.iterdir()) == []
    resumed = subprocess.run([*script, "--resume"], capture_output=True, timeout=120, check=False)
    assert resumed.returncode == EXIT_INTERRUPTED, resumed.stderr
    partial, record = partial_names(out / "a" / "b" / "weights.bin")
    assert sorted((out / "a" / "b").iterdir()) == sorted([partial, record])
    assert blob.startswith(partial.read_bytes()) and partial.stat().st_size


# Hours of training: a job still running while it is watched, cancelled at the end.
LONG_JOB_SPEC = """\
experiment = "ctrl-c"
task = "classification"
epochs = 100000
batch_size = 1
data = { dataset = "table" }

[architecture]
input_shape = [4]
output_size = 2
mlp = { hidden_sizes = [8] }
"""


def _ctrl_c_once_started(args, started, stdout=subprocess.DEVNULL):
    """Ctrl-C to `tessera ARGS` once `started()` says it is under way; its status and stderr. The
    wait is generous, and no run may outlast it: after SIGTERM, closing the gRPC channel was seen
    to wait forever, about one run in five."""
    cli = subprocess.Popen(
        [sys.executable, "-c", CLI_WITH_CTRL_C, *args], stdout=stdout, stderr=subprocess.PIPE
    )
    try:
        deadline = time.monotonic() + 60
        while not started() and time.monotonic() < deadline and cli.poll() is None:
            time.sleep(0.01)
        assert cli.poll() is None, "the command ended before Ctrl-C"
        cli.send_signal(signal.SIGINT)
        _, err = cli.communicate(timeout=60)
    finally:
        cli.kill()
    return cli.returncode, err.decode()


def _partial_written(directory):
    return lambda: any(p.stat().st_size > 0 for p in directory.glob(".*.partial"))


def _written(path):
    return lambda: path.stat().st_size > 0


def _pipe_holds_some(read_end):
    return lambda: fcntl.ioctl(read_end, termios.FIONREAD, b"\0\0\0\0") != b"\0\0\0\0"


# A command whose Ctrl-C lands inside an RLock's `with`, as in gRPC's own code: the lock's release on
# the way out raises RuntimeError in place of the KeyboardInterrupt.
CTRL_C_TURNED_INTO_A_LOCK_ERROR = """
import signal, sys, threading
signal.signal(signal.SIGINT, signal.default_int_handler)
from tessera.cli import main, parser

def info_cut_short(client, args, out):
    try:
        signal.raise_signal(signal.{signal})
    except BaseException:
        threading.RLock().release()

parser.cmd_info = info_cut_short
sys.exit(main())
"""


@pytest.mark.parametrize(
    ("signal_name", "status", "said"), [("SIGINT", 130, "interrupted"), ("SIGTERM", 143, "terminated")]
)
def test_a_signal_whose_exception_turns_into_another_still_ends_the_command_as_that_signal(
    signal_name, status, said
):
    ended = subprocess.run(
        [sys.executable, "-c", CTRL_C_TURNED_INTO_A_LOCK_ERROR.replace("{signal}", signal_name), "info"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert (ended.returncode, ended.stderr) == (status, f"tessera: {said}\n")


def test_ctrl_c_mid_transfer_or_follow_exits_130_at_once_leaving_no_partial_file(spawn_daemon, tmp_path):
    """Ctrl-C raised KeyboardInterrupt through the command, then the CLI closed the gRPC channel,
    which can wait forever on the call the signal cut short: it now ends as SIGTERM does, the
    partial file removed, one line said, status 130."""
    daemon = spawn_daemon(
        "--listen", "127.0.0.1:0", "--metrics-listen", "off", "--data-dir", str(tmp_path / "data")
    )
    target = daemon.wait_serving()
    rng = np.random.default_rng(0)
    with tessera.Client(target) as client:
        # 64 MiB: a download or backup takes many chunks, so it is caught under way.
        client.datasets.push("big", x=rng.normal(size=(64, 1 << 18)).astype(np.float32))
        x = rng.normal(size=(40, 4)).astype(np.float32)
        client.datasets.push("table", x=x, y=(x[:, 0] > 0).astype(np.int64))
        job = client.training.submit(tomllib.loads(LONG_JOB_SPEC))
    out, events = tmp_path / "out", tmp_path / "events"
    out.mkdir()
    try:
        for _ in range(4):
            for command in (
                ["datasets", "download", "big", "-o", str(out / "big.npz")],
                ["admin", "backup", "-o", str(out / "b.tar")],
            ):
                status, err = _ctrl_c_once_started(["--target", target, *command], _partial_written(out))
                assert (status, err) == (130, "tessera: interrupted\n")
                assert list(out.iterdir()) == []
            # Stdout read by no one: the backup waits on its writes with the stream under way.
            read_end, write_end = os.pipe()
            try:
                status, err = _ctrl_c_once_started(
                    ["--target", target, "admin", "backup", "-o", "-"],
                    _pipe_holds_some(read_end),
                    stdout=write_end,
                )
            finally:
                os.close(read_end)
                os.close(write_end)
            assert (status, err) == (130, "tessera: interrupted\n")
            with events.open("wb") as stdout:
                status, err = _ctrl_c_once_started(
                    ["--target", target, "--json", "jobs", "watch", job.id],
                    _written(events),
                    stdout=stdout.fileno(),
                )
            assert status == 130 and "Traceback" not in err
            assert (
                err.startswith(f"tessera: stopped following job {job.id}, which goes on")
                and err.count("\n") == 1
            )
    finally:
        with tessera.Client(target) as client:
            client.training.job(job.id).cancel()
