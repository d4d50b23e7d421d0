"""Which failures to start a job blame the workers' interpreter: the fork server's exec failing
shows as a refused or dropped connection or a short answer, depending on when the child died."""

import errno
import multiprocessing
import os
import sys

import pytest

from tesserad.training.jobs import start_failure_cause


@pytest.fixture
def missing_interpreter(tmp_path):
    missing = tmp_path / "gone" / "python"
    multiprocessing.set_executable(str(missing))
    yield missing
    multiprocessing.set_executable(sys.executable)


@pytest.mark.parametrize(
    "failure",
    [
        ConnectionRefusedError(errno.ECONNREFUSED, os.strerror(errno.ECONNREFUSED)),
        BrokenPipeError(errno.EPIPE, os.strerror(errno.EPIPE)),
        ConnectionResetError(errno.ECONNRESET, os.strerror(errno.ECONNRESET)),
        EOFError("unexpected EOF"),
    ],
    ids=["refused", "broken-pipe", "reset", "eof"],
)
def test_a_fork_server_that_died_at_exec_names_the_interpreter(missing_interpreter, failure):
    cause = start_failure_cause(failure)
    assert cause is not None and str(missing_interpreter) in cause and os.strerror(errno.ENOENT) in cause


def test_other_failures_are_told_as_they_are(missing_interpreter):
    assert start_failure_cause(OSError(errno.EMFILE, os.strerror(errno.EMFILE))) is None
    assert start_failure_cause(ValueError("bad")) is None


def test_a_runnable_interpreter_is_never_blamed():
    assert start_failure_cause(BrokenPipeError(errno.EPIPE, os.strerror(errno.EPIPE))) is None
