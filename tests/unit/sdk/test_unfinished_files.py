"""The partial files a signal's way out removes (`remove_unfinished`, the CLI's SIGTERM): those
this process created and has neither put in place nor removed, and never a file another made."""

from __future__ import annotations

import contextlib
import os
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from types import FrameType

import pytest

from tessera.errors import Unavailable
from tessera.transfer import ResumableDownloadSink, make_directories, partial_names, remove_unfinished


def download_sink(path: Path) -> ResumableDownloadSink:
    return ResumableDownloadSink(path, None, overwrite=False, resume=True, describe=str)


def test_a_second_download_to_the_same_path_leaves_the_first_ones_partial_file_to_remove(
    tmp_path: Path,
) -> None:
    """The second, finding the first's partial file there, forgot it was the first's to remove."""
    path = tmp_path / "m.onnx"
    first = download_sink(path)
    with pytest.raises(ValueError, match="another download to it is running"):
        download_sink(path)
    try:
        remove_unfinished()
        assert list(tmp_path.iterdir()) == []
    finally:
        first.abort(Unavailable("stopped"))


def test_a_file_another_put_at_a_created_partial_files_name_is_left(tmp_path: Path) -> None:
    """The name is the download's, not the file: one another download (another process) made
    there once this one's was moved away is that one's."""
    path = tmp_path / "m.onnx"
    partial, _ = partial_names(path)
    sink = download_sink(path)
    try:
        partial.rename(tmp_path / "moved")
        partial.write_bytes(b"another's")
        remove_unfinished()
        assert partial.read_bytes() == b"another's"
    finally:
        sink.abort(Unavailable("stopped"))


@pytest.mark.parametrize("landing_after", [1, 2])
def test_a_signal_landing_as_a_directory_is_made_leaves_none_of_those_made(
    tmp_path: Path, landing_after: int
) -> None:
    """The signal lands once `landing_after` mkdirs have returned, before the code that notes the
    last of them runs: those made go as it propagates, the directory there before is left."""
    with pytest.raises(KeyboardInterrupt), signal_at_mkdir(landing_after):
        make_directories(tmp_path / "a" / "b" / "c")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("landing_after", [1, 2])
def test_directories_a_second_signal_left_being_made_are_removed_on_the_way_out(
    tmp_path: Path, landing_after: int
) -> None:
    """A second signal lands as the first's removes them: the signal's way out (the CLI's) does."""
    with pytest.raises(KeyboardInterrupt), signal_at_mkdir(landing_after), signal_at_call(Path.rmdir):
        make_directories(tmp_path / "a" / "b" / "c")
    assert (tmp_path / "a").is_dir()
    remove_unfinished()
    assert list(tmp_path.iterdir()) == []


@contextlib.contextmanager
def signal_at_mkdir(nth: int) -> Iterator[None]:
    """KeyboardInterrupt raised within the block, as a signal's handler raises it, as the nth
    os.mkdir returns (before the code after it runs)."""
    returned = 0

    def profile(frame: FrameType, event: str, arg: object) -> None:
        nonlocal returned
        if event == "c_return" and arg is os.mkdir:
            returned += 1
            if returned == nth:
                raise KeyboardInterrupt

    sys.setprofile(profile)
    try:
        yield
    finally:
        sys.setprofile(None)


@contextlib.contextmanager
def signal_at_call(function: Callable[..., object]) -> Iterator[None]:
    """KeyboardInterrupt raised within the block, as a signal's handler raises it, as the Python
    `function` is first called."""

    def trace(frame: FrameType, event: str, arg: object) -> None:
        if event == "call" and frame.f_code is function.__code__:
            raise KeyboardInterrupt

    sys.settrace(trace)
    try:
        yield
    finally:
        sys.settrace(None)


def test_a_directory_another_made_at_a_name_being_made_is_left(tmp_path: Path) -> None:
    """Found there as it was to be made: another's, not this download's to remove."""
    directory = tmp_path / "a"
    directory.mkdir()
    assert make_directories(directory) == []
    remove_unfinished()
    assert directory.is_dir()


def test_a_directory_another_thread_is_making_is_still_noted_after_this_one_finds_it_there(
    tmp_path: Path,
) -> None:
    """Two downloads on two threads make one directory: the one that finds it made, between the
    other's mkdir and its noting, dropped the other's note (one set of names for all threads), so
    that a signal's way out left it behind."""
    shared = tmp_path / "shared"
    made, go = threading.Event(), threading.Event()
    failures: list[BaseException] = []

    def other() -> None:
        def pause_after_mkdir(frame: FrameType, event: str, arg: object) -> None:
            if event == "c_return" and arg is os.mkdir and not made.is_set():
                made.set()
                go.wait(10)

        sys.setprofile(pause_after_mkdir)
        try:
            make_directories(shared / "b")
        except BaseException as error:
            failures.append(error)
        finally:
            sys.setprofile(None)

    maker = threading.Thread(target=other)

    def other_makes_it_first(frame: FrameType, event: str, arg: object) -> None:
        # This one found `shared` missing; the other makes it as this one goes to.
        if event == "c_call" and arg is os.mkdir and not maker.is_alive() and not made.is_set():
            maker.start()
            made.wait(10)

    sys.setprofile(other_makes_it_first)
    try:
        make_directories(shared / "a")
    finally:
        sys.setprofile(None)
    try:
        assert made.is_set() and (shared / "a").is_dir()
        remove_unfinished()
        assert not shared.exists()
    finally:
        go.set()
        maker.join(10)
    # Its directory went on the way out under it, as it does on a signal's.
    assert [type(error) for error in failures] == [FileNotFoundError]
