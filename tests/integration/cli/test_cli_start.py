"""`tessera` while it starts: Ctrl-C or SIGTERM during the import of the CLI (grpc, numpy, rich
and the stubs take a good part of a second) ends with the CLI's one line and status, as it does
once a command runs; it ended in a traceback and a death by SIGINT (or by SIGTERM, silently),
and still did for `python -m tessera.cli`, which ran the CLI's module without the entry."""

from __future__ import annotations

import signal
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from tessera import __version__
from tessera.cli import EXIT_INTERRUPTED, EXIT_TERMINATED

PYPROJECT = Path(__file__).parents[3] / "clients" / "python" / "pyproject.toml"
CONSOLE_SCRIPT = tomllib.loads(PYPROJECT.read_text())["project"]["scripts"]["tessera"]

# Runs the command as the console script (argv[1] "module:function") or as `python -m MODULE`
# (argv[1] "-m MODULE") would.
RUN = """
import runpy, sys

entry, sys.argv = sys.argv[1], ["tessera", *sys.argv[2:]]
if entry.startswith("-m "):
    runpy.run_module(entry.removeprefix("-m "), run_name="__main__", alter_sys=True)
module, function = entry.split(":")
sys.exit(getattr(__import__(module, fromlist=[function]), function)())
"""
# RUN with the import of grpc held: it says so on stdout, then waits on stdin, which the test
# never writes, so the signal always comes while the CLI is being imported.
HELD_IMPORT = (
    """
import importlib.abc, sys

class HoldGrpc(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name == "grpc":
            print("importing grpc", flush=True)
            sys.stdin.buffer.read(1)
        return None

sys.meta_path.insert(0, HoldGrpc())
"""
    + RUN
)


ENTRIES = pytest.mark.parametrize(
    "entry",
    [CONSOLE_SCRIPT, "-m tessera", "-m tessera.cli"],
    ids=["console-script", "python-m", "python-m-tessera-cli"],
)


@ENTRIES
@pytest.mark.parametrize(
    ("signum", "status", "line"),
    [
        (signal.SIGINT, EXIT_INTERRUPTED, "tessera: interrupted\n"),
        (signal.SIGTERM, EXIT_TERMINATED, "tessera: terminated\n"),
    ],
    ids=["ctrl-c", "sigterm"],
)
def test_a_signal_while_the_cli_is_imported_ends_in_one_line_and_its_status(entry, signum, status, line):
    cli = subprocess.Popen(
        [sys.executable, "-c", HELD_IMPORT, entry, "--version"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        assert cli.stdout is not None
        assert cli.stdout.readline() == b"importing grpc\n"
        cli.send_signal(signum)
        out, err = cli.communicate(timeout=60)
    finally:
        cli.kill()
    assert (cli.returncode, err.decode(), out) == (status, line, b"")


@ENTRIES
def test_the_console_script_and_python_m_run_the_cli(entry):
    done = subprocess.run(
        [sys.executable, "-c", RUN, entry, "--version"], capture_output=True, timeout=60, check=False
    )
    assert done.returncode == 0 and done.stderr == b""
    assert done.stdout.decode().startswith(f"tessera {__version__} ")


def test_python_m_tessera_cli_runs_the_cli_as_a_process():
    done = subprocess.run(
        [sys.executable, "-m", "tessera.cli", "--version"], capture_output=True, timeout=60, check=False
    )
    assert done.returncode == 0 and done.stderr == b""
    assert done.stdout.decode().startswith(f"tessera {__version__} ")
