"""Streaming files up and down in chunks, with sha256 and a progress callback."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import secrets
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO, Generic, Protocol, TypeVar

from tessera.errors import DataLoss

Progress = Callable[[int, int], None]
"""Called as progress(bytes_done, bytes_total) after each chunk."""

CHUNK_BYTES = 1 << 20


def check_chunk_size(chunk_size: int) -> None:
    """ValueError for an upload's `chunk_size` below 1 byte, where a file would go as no bytes
    (0: the daemon answers DATA_LOSS) or whole in one message (a negative size)."""
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be at least 1 byte, got {chunk_size} (default {CHUNK_BYTES})")


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


def new_partial(path: Path, mode: int = 0o666) -> tuple[Path, BinaryIO]:
    """A new temp file beside `path`, to become it once whole: its own name, so that a name at
    the filesystem's length limit still has room, a concurrent write to `path` keeps its own,
    and a link planted at the name is refused (O_EXCL) rather than written through. `mode`:
    its permissions (less the umask), which `path` keeps."""
    if path.is_dir():
        # Else the temp file, written whole, could never be moved onto it.
        raise IsADirectoryError(
            errno.EISDIR, f"{path} is a directory; name the file to write in it", str(path)
        )
    partial = path.with_name(f".{path.name[:32]}.{secrets.token_hex(4)}.partial")
    try:
        fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    except FileNotFoundError:
        # Named for the file asked for, not the temp file the user never named.
        raise FileNotFoundError(
            errno.ENOENT, f"no directory {path.parent} to write it in; create it first", str(path)
        ) from None
    return partial, os.fdopen(fd, "wb")


def bytes_chunks(data: bytes, chunk_size: int, progress: Progress | None) -> Iterator[bytes]:
    """An in-memory buffer in chunks, reporting progress after each."""
    view = memoryview(data)
    for start in range(0, len(data), chunk_size):
        chunk = bytes(view[start : start + chunk_size])
        yield chunk
        if progress is not None:
            progress(start + len(chunk), len(data))


class FileHeader(Protocol):
    """What a download's header (a ModelVersion, a DatasetVersion) says of the file."""

    @property
    def sha256(self) -> str: ...

    @property
    def size_bytes(self) -> int: ...


H = TypeVar("H", bound=FileHeader)


def check_free(path: Path, overwrite: bool) -> None:
    """FileExistsError for a file at `path` unless `overwrite` (a link left there, even a
    dangling one, is there too)."""
    if not overwrite and os.path.lexists(path):
        raise _exists(path)


def _exists(path: Path) -> FileExistsError:
    return FileExistsError(errno.EEXIST, "it exists; overwrite=True replaces it", str(path))


# errnos of a filesystem that makes no hard links (FAT, some network and FUSE mounts).
_NO_HARD_LINKS = frozenset({errno.EPERM, errno.EXDEV, errno.ENOTSUP, errno.EOPNOTSUPP, errno.ENOSYS})


def put_in_place(partial: Path, path: Path, overwrite: bool) -> None:
    """The finished temp file `partial` becomes `path`. Unless `overwrite`, a file at `path` by
    now is refused (FileExistsError, `partial` left for the caller to remove): a hard link takes
    the name only where it is free, in one step, so a file created at any moment before is kept."""
    if overwrite:
        partial.replace(path)
        return
    try:
        os.link(partial, path)
    except FileExistsError:
        raise _exists(path) from None
    except OSError as err:
        if err.errno not in _NO_HARD_LINKS:
            raise
        # No hard links here: check, then rename. A file created between the two is replaced.
        check_free(path, overwrite)
        partial.replace(path)
        return
    partial.unlink()


class PartialFile:
    """`path` written through a new temp file beside it (`new_partial`, `mode`), which takes
    the name only once `keep` is called, synced to the disk before it does and the directory
    after (a power cut then leaves no empty or short file there); `discard` removes it. Unless
    `overwrite`, a file at `path` is refused (FileExistsError) now and again as it takes the
    name. An OSError writing it names `path`, the file asked for."""

    def __init__(self, path: Path, overwrite: bool, mode: int = 0o666) -> None:
        check_free(path, overwrite)
        self.path = path
        self._overwrite = overwrite
        self.temp, self._file = new_partial(path, mode)

    def write(self, data: bytes) -> None:
        with _naming(self.path):
            self._file.write(data)

    @contextlib.contextmanager
    def writing(self) -> Iterator[BinaryIO]:
        """The temp file itself, for a writer that needs a file to seek in (np.savez's zip); an
        OSError meanwhile names `path`, as `write`'s does."""
        with _naming(self.path):
            yield self._file

    def close(self) -> None:
        """All of it on the disk and closed, to be read back or kept; removed if that fails."""
        try:
            with _naming(self.path):
                self._file.flush()
                os.fsync(self._file.fileno())
                self._file.close()
        except BaseException:
            self.discard()
            raise

    def keep(self) -> None:
        """The closed temp file becomes `path`; removed if it cannot."""
        try:
            put_in_place(self.temp, self.path, self._overwrite)
            _sync_dir(self.path.parent)
        except BaseException:
            self.temp.unlink(missing_ok=True)
            raise

    def discard(self) -> None:
        # A write that failed (a full disk) leaves bytes in the file's buffer, whose flush fails
        # again as it closes; the file is closed all the same, and then removed.
        with contextlib.suppress(OSError):
            self._file.close()
        self.temp.unlink(missing_ok=True)


def _sync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def _naming(path: Path) -> Iterator[None]:
    """An OSError of a write to the temp file beside `path` named for `path`, the file the user
    asked for ("b.tar: No space left on device"), not for no file at all."""
    try:
        yield
    except OSError as exc:
        if exc.filename is not None or exc.strerror is None:
            raise
        raise OSError(exc.errno, exc.strerror, str(path)) from None


class DownloadSink(Generic[H]):
    """Writes a downloaded file to `path` (through a `PartialFile`), checking it against the
    size and sha256 of its `header`; `finish` gives the header. Unless `overwrite`, a file at
    `path` is refused (FileExistsError) before anything is written and again as the download
    takes its name."""

    def __init__(self, path: Path, header: H, progress: Progress | None, overwrite: bool = True) -> None:
        self.path = path
        self._file = PartialFile(path, overwrite)
        self._header = header
        self._digest = hashlib.sha256()
        self._size = 0
        self._progress = progress

    def write(self, chunk: bytes) -> None:
        self._file.write(chunk)
        self._digest.update(chunk)
        self._size += len(chunk)
        if self._progress is not None:
            self._progress(self._size, self._header.size_bytes)

    def finish(self) -> H:
        """Close and move into place; raises DataLoss (and removes the file) on a mismatch."""
        self._file.close()
        sha256, size = self._header.sha256, self._header.size_bytes
        if (sha256 and self._digest.hexdigest() != sha256) or (size and self._size != size):
            self._file.discard()
            raise DataLoss(
                f"download of {self.path.name} is corrupt: got {self._size} bytes with sha256 "
                f"{self._digest.hexdigest()}, expected {size} bytes with sha256 {sha256}; download it again"
            )
        # A download takes a while: the name may have been taken meanwhile.
        self._file.keep()
        return self._header

    def abort(self) -> None:
        self._file.discard()
