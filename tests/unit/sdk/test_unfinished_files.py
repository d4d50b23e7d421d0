"""The partial files a signal's way out removes (`remove_unfinished`, the CLI's SIGTERM): those
this process created and has neither put in place nor removed, and never a file another made."""

from __future__ import annotations

from pathlib import Path

import pytest

from tessera.errors import Unavailable
from tessera.transfer import ResumableDownloadSink, partial_names, remove_unfinished


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
