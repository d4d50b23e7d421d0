"""Streaming files up and down in chunks, with sha256 and a progress callback."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from pathlib import Path

from tessera.errors import DataLoss

Progress = Callable[[int, int], None]
"""Called as progress(bytes_done, bytes_total) after each chunk."""

CHUNK_BYTES = 1 << 20


def file_digest(path: Path) -> tuple[str, int]:
    """sha256 (hex) and size of a file, read in chunks."""
    digest = hashlib.sha256()
    size = 0
    with path.open("rb") as file:
        while chunk := file.read(CHUNK_BYTES):
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size


def file_chunks(path: Path, total: int, chunk_size: int, progress: Progress | None) -> Iterator[bytes]:
    """The file's bytes in chunks, reporting progress after each."""
    done = 0
    with path.open("rb") as file:
        while chunk := file.read(chunk_size):
            done += len(chunk)
            yield chunk
            if progress is not None:
                progress(done, total)


def bytes_chunks(data: bytes, chunk_size: int, progress: Progress | None) -> Iterator[bytes]:
    """An in-memory buffer in chunks, reporting progress after each."""
    view = memoryview(data)
    for start in range(0, len(data), chunk_size):
        chunk = bytes(view[start : start + chunk_size])
        yield chunk
        if progress is not None:
            progress(start + len(chunk), len(data))


class DownloadSink:
    """Writes a downloaded stream to `path` (through a temp file), checking size and sha256."""

    def __init__(self, path: Path, expected_sha256: str, expected_size: int, progress: Progress | None):
        self.path = path
        self._partial = path.with_name(path.name + ".partial")
        self._file = self._partial.open("wb")
        self._digest = hashlib.sha256()
        self._size = 0
        self._expected = (expected_sha256, expected_size)
        self._progress = progress

    def write(self, chunk: bytes) -> None:
        self._file.write(chunk)
        self._digest.update(chunk)
        self._size += len(chunk)
        if self._progress is not None:
            self._progress(self._size, self._expected[1])

    def finish(self) -> None:
        """Close and move into place; raises DataLoss (and removes the file) on a mismatch."""
        self._file.close()
        sha256, size = self._expected
        if (sha256 and self._digest.hexdigest() != sha256) or (size and self._size != size):
            self._partial.unlink(missing_ok=True)
            raise DataLoss(
                f"download of {self.path.name} is corrupt: got {self._size} bytes with sha256 "
                f"{self._digest.hexdigest()}, expected {size} bytes with sha256 {sha256}; download it again"
            )
        self._partial.replace(self.path)

    def abort(self) -> None:
        self._file.close()
        self._partial.unlink(missing_ok=True)
