"""A download with `resume` stopped (Ctrl-C, SIGTERM, a cancel) keeps its bytes whenever the stop
lands: once the file is whole and checked too, before it takes its name."""

from __future__ import annotations

import hashlib
from pathlib import Path
from types import SimpleNamespace

import pytest

from tessera import transfer
from tessera.transfer import ResumableDownloadSink, partial_names

DATA = bytes(range(256)) * 400


def header() -> SimpleNamespace:
    return SimpleNamespace(sha256=hashlib.sha256(DATA).hexdigest(), size_bytes=len(DATA))


def whole_download(path: Path) -> ResumableDownloadSink:
    sink = ResumableDownloadSink(path, None, overwrite=False, resume=True, describe=lambda _: "m v1")
    sink.start(header())
    sink.write(DATA)
    return sink


def test_a_stop_as_the_whole_file_is_put_in_place_keeps_it_for_the_next_resume(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "m.onnx"
    sink = whole_download(path)

    def stopped(*_: object) -> None:
        raise KeyboardInterrupt

    with monkeypatch.context() as patched:
        patched.setattr(transfer, "put_in_place", stopped)
        with pytest.raises(KeyboardInterrupt):
            sink.finish()
    partial, record = partial_names(path)
    assert partial.read_bytes() == DATA
    assert record.exists()
    assert not path.exists()

    again = ResumableDownloadSink(path, None, overwrite=False, resume=True, describe=lambda _: "m v1")
    again.start(header())
    again.finish()
    assert path.read_bytes() == DATA
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]


def test_without_resume_a_stop_as_the_file_is_put_in_place_removes_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "m.onnx"
    sink = ResumableDownloadSink(path, None, overwrite=False, resume=False, describe=lambda _: "m v1")
    sink.start(header())
    sink.write(DATA)

    def stopped(*_: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(transfer, "put_in_place", stopped)
    with pytest.raises(KeyboardInterrupt):
        sink.finish()
    assert list(tmp_path.iterdir()) == []
