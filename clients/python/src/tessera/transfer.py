"""Streaming files up and down in chunks, with sha256 and a progress callback."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import secrets
import stat
import sys
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import BinaryIO, Generic, Protocol, TypeVar

from tessera.errors import Cancelled, DataLoss, DeadlineExceeded, TesseraError, Unavailable

if sys.platform == "win32":
    import msvcrt
else:
    import fcntl

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


def new_partial(path: Path, mode: int = 0o666) -> tuple[Path, BinaryIO, Identity]:
    """A new temp file beside `path`, to become it once whole: its own name, so that a name at
    the filesystem's length limit still has room, a concurrent write to `path` keeps its own,
    and a link planted at the name is refused (O_EXCL) rather than written through. `mode`:
    its permissions (less the umask), which `path` keeps. With its identity, noted as unfinished
    (`remove_unfinished`) until the caller puts it in place or removes it (`forget_made`)."""
    if path.is_dir():
        # Else the temp file, written whole, could never be moved onto it.
        raise IsADirectoryError(
            errno.EISDIR, f"{path} is a directory; name the file to write in it", str(path)
        )
    partial = path.with_name(f".{path.name[:32]}.{secrets.token_hex(4)}.partial")
    # Its name noted before it exists: a signal can land between its creation and its noting,
    # and `remove_unfinished` then still finds it. A random name, so a file there is this one.
    _being_made.add(partial)
    try:
        fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    except FileNotFoundError:
        _being_made.discard(partial)
        # Named for the file asked for, not the temp file the user never named.
        raise FileNotFoundError(
            errno.ENOENT, f"no directory {path.parent} to write it in; create it first", str(path)
        ) from None
    except OSError:
        # Not made (a name already there, planted or not, is another's to keep).
        _being_made.discard(partial)
        raise
    made = _note_made(partial, fd)
    _being_made.discard(partial)
    return partial, os.fdopen(fd, "wb"), made


Identity = tuple[int, int]
"""A file's (st_dev, st_ino): what its name may stop naming (moved away, another file put there)."""

# The temp files `new_partial` made, and the partial downloads a download created, that are
# neither in place, kept for a resume nor removed yet, by identity: a name is removed only while
# it names the file made, as a partial download's name (fixed by its path) may by then be another
# download's, or an earlier one's kept bytes, and two downloads to a path share it.
_unfinished: dict[Identity, Path] = {}
# The names `new_partial` is creating its temp file at, until it is noted in `_unfinished`.
_being_made: set[Path] = set()
# The directories a download made for its file (`make_directories`), by identity, the outermost
# first, until it put its file in them or removed them: a name is removed only while it names
# the directory made, and only while it is empty (bytes kept for a resume keep it).
_directories_made: dict[Identity, Path] = {}
# The names `make_directories` calls are making a directory at, until it is noted in
# `_directories_made`, each under a key of its own call: calls on other threads may make the same
# name, and one that fails removes only what it was making, never another's.
_directories_being_made: dict[object, Path] = {}


def _identity(status: os.stat_result) -> Identity:
    return status.st_dev, status.st_ino


def _note_made(name: Path, fd: int) -> Identity:
    """The file `fd` just created at `name`, noted as unfinished; its identity."""
    made = _identity(os.fstat(fd))
    _unfinished[made] = name
    return made


def forget_made(made: Identity | None) -> None:
    """The file made (`_note_made`) put in place, kept or removed, or found to be another's:
    `remove_unfinished` leaves it now. None: no file made."""
    if made is not None:
        _unfinished.pop(made, None)


def remove_unfinished() -> None:
    """Remove every temp file `new_partial` made, and partial download a download created, that
    is neither in place, kept nor removed yet, where its name still names it, then the
    directories made for them that this leaves empty: for a process ending at once on a signal
    (the CLI), which may have landed before any code held them. One that cannot be removed is
    left: the process is ending, and the others still go."""
    for partial in list(_being_made):
        with contextlib.suppress(OSError):
            partial.unlink(missing_ok=True)
        _being_made.discard(partial)
    for made, partial in list(_unfinished.items()):
        with contextlib.suppress(OSError):
            if _identity(os.lstat(partial)) == made:
                partial.unlink()
        forget_made(made)
    # The deepest first, of every download's: those of downloads on other threads may nest in each
    # other's.
    directories: list[tuple[Path, object | None, Identity | None]] = [
        (name, key, None) for key, name in list(_directories_being_made.items())
    ]
    directories += [(name, None, identity) for identity, name in list(_directories_made.items())]
    for name, key, identity in sorted(directories, key=lambda entry: len(entry[0].parts), reverse=True):
        if identity is None:
            _remove_if_empty(key, name)
        else:
            remove_empty_directories([identity])
            forget_directories([identity])


def is_download_directory(path: str | Path) -> bool:
    """Whether a download's `path` is a directory: one that exists, or a str ending in a
    separator (Path drops it, yet it is how a user says "a directory", existing or not). The
    SDK's rule and the CLI's, so that both write the same file."""
    return Path(path).is_dir() or (isinstance(path, str) and path.endswith(("/", os.sep)))


def make_directories(directory: Path) -> list[Identity]:
    """Make `directory` and its missing parents, each noted as made by this process (for
    `remove_unfinished`) until `forget_directories`; their identities, the deepest first. One
    that another made meanwhile is its own, not noted."""
    missing = []
    current = directory
    while not current.exists():
        missing.append(current)
        current = current.parent
    made: list[Identity] = []
    key = object()
    try:
        for name in reversed(missing):
            # Its name noted before it exists: a signal can land between its making and its noting
            # by identity, and `remove_unfinished` then still finds it, by name alone (an empty
            # one another made there in that moment would go too).
            _directories_being_made[key] = name
            try:
                name.mkdir()
            except OSError:
                # Not made: one there already is another's.
                del _directories_being_made[key]
                if not name.is_dir():
                    raise
                continue
            identity = _identity(os.lstat(name))
            _directories_made[identity] = name
            del _directories_being_made[key]
            made.insert(0, identity)
    except BaseException:
        # Stopped (Ctrl-C) or failed midway: those made are let go of as a failed download's are;
        # the one this call was making, if any, too, and none that another call is making.
        being_made = _directories_being_made.get(key)
        if being_made is not None:
            _remove_if_empty(key, being_made)
        remove_empty_directories(made)
        raise
    return made


def _remove_if_empty(key: object, name: Path) -> None:
    """The directory a call (`key`) of `make_directories` was making at `name` removed where it
    was made and is empty, and no longer noted."""
    with contextlib.suppress(OSError):
        name.rmdir()
    _directories_being_made.pop(key, None)


def remove_empty_directories(made: list[Identity]) -> None:
    """Remove the directories `make_directories` made (`made`, the deepest first) that are
    empty, where their name still names them. Those left stay noted: a partial file still
    noted in one may yet be removed on a signal's way out, which removes them then."""
    for identity in made:
        name = _directories_made.get(identity)
        if name is None:
            continue
        with contextlib.suppress(OSError):
            if _identity(os.lstat(name)) != identity:
                # Another's at that name now.
                _directories_made.pop(identity)
                continue
            name.rmdir()
            _directories_made.pop(identity)


def forget_directories(made: list[Identity]) -> None:
    """The directories made (`make_directories`) hold the file put in place, or bytes kept, or
    are removed: `remove_unfinished` leaves them now."""
    for identity in made:
        _directories_made.pop(identity, None)


class NewFiles:
    """The files of a download of many that were not there before it, and the directories that
    were missing to hold them: once `wrote` notes each put in place, `undo` removes them (a file
    while its name still names the one written, a directory while empty), deepest first, so that
    a download failing at a later file leaves the destination as it was, but for a file it
    replaced (overwrite) and the bytes a failed file kept for a resume (and their directories)."""

    def __init__(self, files: Iterable[Path]) -> None:
        files = list(files)
        self._absent = {file for file in files if not os.path.lexists(file)}
        missing: set[Path] = set()
        for file in files:
            directory = file.parent
            while directory not in missing and not directory.exists():
                missing.add(directory)
                directory = directory.parent
        self._directories = sorted(missing, key=lambda directory: len(directory.parts), reverse=True)
        self._written: dict[Path, Identity] = {}

    def wrote(self, file: Path) -> None:
        """`file` is in place: one not there before is undone by `undo`."""
        if file in self._absent:
            with contextlib.suppress(OSError):
                self._written[file] = _identity(os.lstat(file))

    def undo(self) -> None:
        """Remove the files written and the directories made empty (see the class)."""
        for file, identity in self._written.items():
            with contextlib.suppress(OSError):
                if _identity(os.lstat(file)) == identity:
                    file.unlink()
        self._written.clear()
        for directory in self._directories:
            with contextlib.suppress(OSError):
                directory.rmdir()


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


def check_same_file(first: FileHeader, header: FileHeader, changed: Callable[[str], DataLoss]) -> None:
    """A later header of a download (a stream after a reconnect) must name the file its first
    header did: else the error `changed` makes of what says so."""
    if (header.sha256, header.size_bytes) != (first.sha256, first.size_bytes):
        raise changed(f"sha256 {first.sha256}, now {header.sha256}")


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
        self.temp, self._file, self._made = new_partial(path, mode)

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
        finally:
            forget_made(self._made)

    def discard(self) -> None:
        # A write that failed (a full disk) leaves bytes in the file's buffer, whose flush fails
        # again as it closes; the file is closed all the same, and then removed.
        with contextlib.suppress(OSError):
            self._file.close()
        self.temp.unlink(missing_ok=True)
        forget_made(self._made)


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


RESUME_WORDS = "download again with resume=True"
"""What an interrupted download's message tells the caller to do (the CLI's words: --resume)."""
WITH_RESUME_WORDS = "with resume=True"
WITHOUT_RESUME_WORDS = "without resume=True"
"""How a refused resume's message names the argument (the CLI's words: with/without --resume)."""

# What ends a download with its bytes worth keeping: the stream broke or ran out of time. One asked
# to resume keeps them however it ends (stopped, refused, the disk full), as curl -C - and wget -c
# do, but for a file whose sha256 is not the header's; one not asked to leaves nothing behind.
_INTERRUPTIONS = (Unavailable, DeadlineExceeded)
# errnos of a disk too full to write the rest of the file.
_NO_ROOM = frozenset({errno.ENOSPC, errno.EDQUOT})


def _stopped(error: BaseException) -> bool:
    """Whether `error` is the caller stopping a download: Ctrl-C, a signal the CLI raises as one,
    a cancelled task (none of them an Exception), or its client closed (CANCELLED)."""
    return not isinstance(error, Exception) or isinstance(error, Cancelled)


# How often a partial file that was renamed or removed between its opening and its locking (the
# download holding it ended then) is opened again before giving up.
_OPEN_TRIES = 3


def partial_names(path: Path) -> tuple[Path, Path]:
    """The partial download of `path` and the record of what it holds, beside it: named after
    `path` alone, so that a later download to `path` finds them, and short, so that a name at
    the filesystem's length limit still has room."""
    stem = f".{path.name[:32]}.{hashlib.sha256(os.fsencode(path.name)).hexdigest()[:8]}"
    return path.with_name(f"{stem}.partial"), path.with_name(f"{stem}.partial.json")


def sent_too_much(described: str, size: int, stream_from: int, again: str) -> DataLoss:
    """A stream that sent more than the `size` bytes of the file `described`, asked from byte
    `stream_from`; `again` says what to do."""
    if not stream_from:
        return DataLoss(f"the daemon sent more than the {size} bytes of {described}; {again}")
    # Only a stream asked from past the first byte can have had its offset dropped.
    return DataLoss(
        f"the daemon sent more than the {size} bytes of {described} (its stream sent from byte "
        f"{stream_from}); a daemon that ignores the offset asked for (older than this client) sends "
        f"the file from its first byte: upgrade tesserad, or {again}"
    )


class ResumableDownloadSink(Generic[H]):
    """Writes a downloaded file to `path` through a partial file beside it (`partial_names`),
    which takes the name only once its size and sha256 match the header's. A download whose
    stream broke or timed out (`_INTERRUPTIONS`) keeps the partial file with a record of the file
    it is the start of (`describe(header)`, its sha256 and size), and so does one with `resume`
    however else it ends (`_stopped`: Ctrl-C, a signal, a cancel, whatever moment it lands at; a
    refusal; a full disk), but for a whole file whose sha256 is not the header's;
    with `resume`, a later one goes on from its bytes where its header has that sha256 and size,
    and refuses (ValueError, both left as they are) where it has not. Without `resume` it starts
    again from the first byte. The whole file's sha256 is checked at the end, so bytes damaged on
    the disk meanwhile are DataLoss, not a file at `path`. One download at a time writes the
    partial file (a lock on it)."""

    # `finish` moves the file into place: a cancelled download says so only once it has, or not.
    finish_publishes = True

    def __init__(
        self,
        path: Path,
        progress: Progress | None,
        overwrite: bool,
        resume: bool,
        describe: Callable[[H], str],
    ) -> None:
        check_free(path, overwrite)
        if path.is_dir():
            raise IsADirectoryError(
                errno.EISDIR, f"{path} is a directory; name the file to write in it", str(path)
            )
        self.path = path
        self.partial, self.record = partial_names(path)
        self._overwrite = overwrite
        self._resume = resume
        self._progress = progress
        self._describe = describe
        self._header: H | None = None
        self._digest = hashlib.sha256()
        self.size = 0
        # The bytes an earlier download kept that this one went on from.
        self._resumed_from = 0
        # Set where an error decides the bytes kept, whatever it is: how many (0: none, they are
        # removed).
        self._keep: int | None = None
        # Where the stream being written started (the offset asked for).
        self._stream_from = 0
        # The partial file's identity where this download created it (None: found there).
        self._file, self._made = _open_partial(self.partial, path)
        kept = _read_record(self.record) if resume else None
        self._kept = kept if kept is not None and os.fstat(self._file.fileno()).st_size else None

    def resuming(self) -> bool:
        """Whether bytes of an earlier download are to be gone on from (once a header matches)."""
        return self._kept is not None

    def offset(self) -> int:
        """The byte to ask the rest of the file from (once `start` took the bytes kept)."""
        return self.size

    def start(self, header: H) -> None:
        """The header of a stream: the first is checked against the bytes kept (a resume) or
        recorded as what the partial file will hold; a later one (after a reconnect) must name
        the same file."""
        if self._header is not None:
            check_same_file(self._header, header, self.changed)
            self._stream_from = self.size
            return
        if self._kept is not None:
            self._resume_from_kept(header, self._kept)
        else:
            self._file.truncate(0)
            _write_record(self.record, self._describe(header), header)
        self._header = header
        self._stream_from = self.size
        self._file.seek(self.size)

    def _resume_from_kept(self, header: H, kept: dict[str, object]) -> None:
        held = os.fstat(self._file.fileno()).st_size
        if (kept.get("sha256"), kept.get("size_bytes")) != (header.sha256, header.size_bytes):
            raise ValueError(
                f"{self.path}: the partial download {self.partial} holds {held} bytes of "
                f"{kept.get('file')} (sha256 {kept.get('sha256')}), not of {self._describe(header)} "
                f"(sha256 {header.sha256}); download it {WITHOUT_RESUME_WORDS} to start again (it "
                f"replaces them), or download {kept.get('file')} {WITH_RESUME_WORDS} to go on with it"
            )
        if held > header.size_bytes:
            # More bytes than the file has: damaged, so none of them is worth going on from.
            self._file.truncate(0)
            return
        self._file.seek(0)
        with _naming(self.path):
            while self.size < held and (chunk := self._file.read(min(CHUNK_BYTES, held - self.size))):
                self._digest.update(chunk)
                self.size += len(chunk)
        self._resumed_from = self.size

    def changed(self, how: str) -> DataLoss:
        """The error for the file having changed at the server while it downloaded (`how`: what
        says so). The bytes written are of the file as it was, which the record names: they are
        kept, so that a resume is refused as of another file rather than finding none."""
        assert self._header is not None, "changed before any header"
        self._keep = self.size
        kept = f"; the {self.size} bytes of it as it was are kept in {self.partial}" if self.size else ""
        return DataLoss(
            f"{self._describe(self._header)} changed while it was downloading ({how}){kept}; "
            f"download it again {WITHOUT_RESUME_WORDS}"
        )

    def how_to_go_on(self) -> str:
        """What the message of a download that gave up says to do."""
        if self._header is None or not self.size:
            return "download it again"
        return f"{self.size} of {self._header.size_bytes} bytes are kept in {self.partial}; {RESUME_WORDS}"

    def write(self, chunk: bytes) -> None:
        assert self._header is not None, "write before any header"
        if self.size + len(chunk) > self._header.size_bytes:
            # Refused before the disk fills: bytes this download appended are of no known place in
            # the file, those it went on from are as an earlier download left them.
            self._keep = self._resumed_from
            raise sent_too_much(
                self._describe(self._header),
                self._header.size_bytes,
                self._stream_from,
                f"download it again {WITHOUT_RESUME_WORDS}" if self._stream_from else "download it again",
            )
        with _naming(self.path):
            self._file.write(chunk)
        self._digest.update(chunk)
        self.size += len(chunk)

    def progressed(self) -> None:
        """The progress callback told of the bytes written so far (kept apart from `write`, which
        an asyncio download runs on a worker thread: the callback stays on the caller's loop)."""
        if self._progress is not None and self._header is not None:
            self._progress(self.size, self._header.size_bytes)

    def finish(self) -> H:
        """Check the whole file, then move it into place; DataLoss (and the partial file
        removed) on a mismatch. Failing or stopped before it is in place, it is kept or removed
        as `abort` says: with `resume`, whole, for the next to put in place."""
        try:
            return self._finish()
        finally:
            forget_made(self._made)

    def _finish(self) -> H:
        header = self._header
        assert header is not None, "finish before any header"
        try:
            self._check_whole(header)
        except BaseException as error:
            told = self._abort(error)
            if told is error:
                raise
            raise told from error
        try:
            # Gone first, while the lock is held: a download starting once the partial file is in
            # place writes its own record, which this one must not remove.
            self.record.unlink(missing_ok=True)
            if sys.platform == "win32":
                # Windows renames no open file. Between the close and the rename, another
                # download may lock it: Windows keeps that gap.
                self._file.close()
            # A download takes a while: the name may have been taken meanwhile.
            put_in_place(self.partial, self.path, self._overwrite)
        except BaseException as error:
            if self._resume and not self._file.closed and _names(self.partial, self._file.fileno()):
                # Stopped or failed before it took its name: whole and checked, kept (its record
                # again) for the next resume to put in place, as it keeps its bytes at any other
                # moment.
                _write_record(self.record, self._describe(header), header)
                _close_at(self._file, self.size)
                if not _stopped(error):
                    raise self._saying_kept(error, self.size) from error
            else:
                self._remove()
            raise
        # Closed (its lock let go) only once it has left the partial file's name: a download that
        # opened it before then finds, once it locks it, that the name is no longer its.
        self._file.close()
        _sync_dir(self.path.parent)
        return header

    def _check_whole(self, header: H) -> None:
        """The file synced to the disk and checked against `header`: DataLoss on a mismatch,
        ValueError where its name no longer names it."""
        with _naming(self.path):
            self._file.flush()
            os.fsync(self._file.fileno())
        sha256 = self._digest.hexdigest()
        if (header.sha256 and sha256 != header.sha256) or self.size != header.size_bytes:
            # Damaged: none of it is worth going on from, with or without resume.
            self._keep = 0
            raise DataLoss(
                f"download of {self.path.name} is corrupt: got {self.size} bytes with sha256 "
                f"{sha256}, expected {header.size_bytes} bytes with sha256 {header.sha256}; "
                "download it again"
            )
        if not _names(self.partial, self._file.fileno()):
            # Removed (and maybe made again by another download) meanwhile: not ours to move,
            # nor to remove (`_remove` leaves a name that no longer names it).
            raise ValueError(
                f"{self.path}: its partial download {self.partial} was removed or replaced while it "
                "downloaded; download it again"
            )

    def abort(self, error: BaseException) -> BaseException:
        """After `error`: the bytes written kept for a resume where it interrupted the download
        (a broken stream, a timeout), where the download was asked to `resume` and ended any
        other way (those an earlier download kept with those written since: stopped by the
        caller, refused by the daemon, the disk full), or where the file changed at the server
        (`changed`); those an earlier download kept, as they were, where the server sent more
        than the file has; none where the whole file's sha256 was not the header's or the daemon
        found its copy damaged (DataLoss); else the
        partial file removed (a download without `resume` starts it again from the first byte,
        so that holds only what it wrote), and one it had not started on left as it was. The
        error to raise: `error`, or one of its type saying how many bytes were kept where its
        words do not already say so."""
        try:
            return self._abort(error)
        finally:
            forget_made(self._made)

    def _abort(self, error: BaseException) -> BaseException:
        if self._header is None:
            if self._made is not None:
                _remove(self._file, self.partial)
            else:
                _close(self._file)
            return error
        if self._keep is not None:
            if self._keep:
                _close_at(self._file, self._keep)
            else:
                self._remove()
            return error
        if isinstance(error, DataLoss):
            # The daemon's (its copy is damaged; ours set `_keep`): the bytes it sent are of that
            # copy, none worth going on from, as with a sha256 mismatch found here.
            self._remove()
            return error
        if self._resume and not _stopped(error) and not isinstance(error, _INTERRUPTIONS):
            return self._kept_after(error)
        if self.size and (isinstance(error, _INTERRUPTIONS) or (self._resume and _stopped(error))):
            # Their words say what was kept (a stop's are the caller's). Cut back to the bytes
            # counted: a signal may land as a write has put only part of its chunk in the file.
            _close_at(self._file, self.size)
            return error
        self._remove()
        return error

    def _kept_after(self, error: BaseException) -> BaseException:
        """A download asked to resume, ended by `error` (not a break, nor a stop): every byte its
        file holds kept, each written in its place in turn (a full disk may have taken part of a
        chunk, and those bytes are the file's too), and `error` saying so; none where it holds
        none, or where its name is another's now (not this one's to keep or remove)."""
        if not _names(self.partial, self._file.fileno()):
            self._remove()
            return error
        kept = _close_holding(self._file)
        if not kept:
            self._remove()
            return error
        return self._saying_kept(error, kept)

    def _saying_kept(self, error: BaseException, kept: int) -> BaseException:
        """`error`, of its type (so that callers' handlers still match), with a line saying
        that `kept` bytes are kept and how to go on from them; `error` itself where it is not
        the SDK's or the disk's (a progress callback's own)."""
        assert self._header is not None, "kept before any header"
        total = self._header.size_bytes
        kept_in = f"{kept} of {total} bytes are kept in {self.partial}"
        again = f"{RESUME_WORDS} to go on from them"
        if isinstance(error, OSError) and error.errno in _NO_ROOM:
            how = f"the disk had no room for the rest of the file: {kept_in}; free {total - kept} bytes and {again}"
        else:
            how = f"{kept_in}; {again}"
        if isinstance(error, TesseraError):
            # On a line of its own: the fix that ends each line is put in a reader's words.
            return type(error)(f"{error.daemon_message}\n{how}", error.trailers)
        if isinstance(error, OSError) and error.strerror:
            return type(error)(error.errno, f"{error.strerror}\n{how}", error.filename)
        return error

    def _remove(self) -> None:
        _remove(self._file, self.partial, self.record)


class SinkInDirectory(ResumableDownloadSink[H]):
    """A download's file in a directory made where missing (`make_directories`), as the file is
    made. The directories it made are removed again where the download fails leaving them empty
    (bytes kept for a resume keep them), and on a signal's way out (`remove_unfinished`)."""

    def __init__(
        self,
        path: Path,
        progress: Progress | None,
        overwrite: bool,
        resume: bool,
        describe: Callable[[H], str],
    ) -> None:
        self._directories_made = make_directories(path.parent)
        try:
            super().__init__(path, progress, overwrite, resume, describe)
        except BaseException:
            # Not forgotten: a partial file made in them may be left for `remove_unfinished`.
            remove_empty_directories(self._directories_made)
            raise

    def finish(self) -> H:
        try:
            header = super().finish()
        except BaseException:
            remove_empty_directories(self._directories_made)
            forget_directories(self._directories_made)
            raise
        forget_directories(self._directories_made)
        return header

    def abort(self, error: BaseException) -> BaseException:
        try:
            return super().abort(error)
        finally:
            remove_empty_directories(self._directories_made)
            forget_directories(self._directories_made)


def _close(file: BinaryIO) -> None:
    # A write that failed (a full disk) leaves bytes in the buffer, whose flush fails again as
    # it closes; the file is closed all the same.
    with contextlib.suppress(OSError):
        file.close()


def _close_at(file: BinaryIO, size: int) -> None:
    """`file` cut back to its first `size` bytes, then closed."""
    with contextlib.suppress(OSError):
        file.truncate(size)
    _close(file)


def _close_holding(file: BinaryIO) -> int:
    """`file` flushed where it can be, then closed; how many bytes it holds."""
    with contextlib.suppress(OSError):
        file.flush()
    held = os.fstat(file.fileno()).st_size
    _close(file)
    return held


def _remove(file: BinaryIO, partial: Path, *others: Path) -> None:
    """The partial file `file` removed, with `others` (its record), then closed: removed while
    locked, so that a download that opened it meanwhile finds it gone once it locks it, and only
    where `partial` still names it."""
    if sys.platform == "win32":
        # Windows removes no open file.
        _close(file)
        mine = True
    else:
        try:
            mine = file.closed or _names(partial, file.fileno())
        except BaseException:
            _close(file)
            raise
    try:
        if mine:
            for name in (partial, *others):
                name.unlink(missing_ok=True)
    finally:
        _close(file)


def _names(partial: Path, fd: int) -> bool:
    """Whether the name `partial` is (still) the open file `fd`, not another file or none."""
    try:
        named = os.lstat(partial)
    except FileNotFoundError:
        return False
    held = os.fstat(fd)
    return (named.st_dev, named.st_ino) == (held.st_dev, held.st_ino)


def _open_partial(partial: Path, path: Path) -> tuple[BinaryIO, Identity | None]:
    """The partial file, opened to read and write and locked; its identity where it was created
    now (noted as unfinished), else None. A
    link planted at its name (symbolic or hard), a file there that is not a regular one (a FIFO,
    a device: refused before it is opened) or one of another user's is refused (ValueError)
    rather than written through. A file that the
    download holding it renamed or removed between its opening and its locking is let go of and
    the name opened again."""
    for _ in range(_OPEN_TRIES):
        fd, made = _open_or_create(partial, path)
        file = os.fdopen(fd, "r+b")
        try:
            locked = _lock_exclusively(fd)
        except BaseException:
            if made is not None:
                _remove(file, partial)
                forget_made(made)
            else:
                _close(file)
            raise
        if not locked:
            # Another download opened it before the lock and holds it: its file now.
            forget_made(made)
            _close(file)
            raise ValueError(
                f"{path}: another download to it is running (it writes {partial}); wait for it to end"
            )
        try:
            if not _names(partial, fd):
                # Another download's name now, not ours to remove.
                forget_made(made)
                _close(file)
                continue
            if made is None:
                _check_kept(partial, path, fd)
        except BaseException:
            _close(file)
            raise
        return file, made
    raise ValueError(
        f"{path}: its partial download {partial} was replaced {_OPEN_TRIES} times as it was opened "
        "(other downloads to it are starting and ending); wait for them to end"
    )


def _open_or_create(partial: Path, path: Path) -> tuple[int, Identity | None]:
    """The partial file's descriptor, and its identity where it was created now: one created is
    noted (`_note_made`) until its download puts it in place, keeps it or removes it, or finds it
    another's; one found (an earlier download's kept bytes, a running one's file) is not this
    download's to remove on a signal."""
    flags = os.O_RDWR | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_BINARY", 0)
    try:
        fd = os.open(partial, flags | os.O_CREAT | os.O_EXCL, 0o666)
    except FileExistsError:
        return _open_found(partial, path, flags), None
    except FileNotFoundError:
        raise FileNotFoundError(
            errno.ENOENT, f"no directory {path.parent} to write it in; create it first", str(path)
        ) from None
    # Noted once made, unlike `new_partial`'s temp file: a file at this name before is another's.
    # A signal landing between the two leaves it empty, with no record: a later download to the
    # path opens it and writes it from its first byte (no bytes to resume from).
    return fd, _note_made(partial, fd)


def _open_found(partial: Path, path: Path, flags: int) -> int:
    """The file found at the partial file's name, opened only where it is a regular file: the
    open of a FIFO may wait for a writer, and a device may act on being opened. Looked at before
    the open and again after it (the name may have been swapped between), which never waits."""
    if not stat.S_ISREG(os.lstat(partial).st_mode):
        raise _refused(partial, path, "is not a regular file")
    nonblocking = getattr(os, "O_NONBLOCK", 0)
    fd = os.open(partial, flags | nonblocking)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise _refused(partial, path, "is not a regular file")
        if nonblocking:
            os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _refused(partial: Path, path: Path, why: str) -> ValueError:
    return ValueError(f"{path}: its partial download {partial} {why}; remove it, then download again")


def _check_kept(partial: Path, path: Path, fd: int) -> None:
    """ValueError for a partial file found at its name that is not this user's own plain file
    with no other name (one planted there would be written through, or swapped under the
    download by its owner); its permissions made those a new one gets, which `path` keeps."""
    held = os.fstat(fd)
    if held.st_nlink > 1:
        why = f"has other links ({held.st_nlink - 1}): another name of the same file would be written"
    elif sys.platform != "win32" and held.st_uid != os.geteuid():
        why = f"is owned by another user (uid {held.st_uid})"
    else:
        if sys.platform != "win32":
            os.fchmod(fd, 0o666 & ~_umask())
        return
    raise _refused(partial, path, why)


def _umask() -> int:
    # os.umask only reads by setting: a stricter one for the moment it is read, so that a file
    # another thread creates meanwhile is only more private.
    umask = os.umask(0o077)
    os.umask(umask)
    return umask


def _lock_exclusively(fd: int) -> bool:
    """Lock the open file `fd` for this process until it is closed; False where another holds it."""
    try:
        if sys.platform == "win32":
            # Its first byte stands for the file: every download locks the same one.
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
        else:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as error:
        if sys.platform == "win32" or error.errno in (errno.EAGAIN, errno.EWOULDBLOCK, errno.EACCES):
            return False
        raise
    return True


def _read_record(record: Path) -> dict[str, object] | None:
    """What a partial file holds, as its record says; None where there is no record to trust."""
    try:
        kept = json.loads(record.read_text())
    except (OSError, ValueError):
        return None
    return kept if isinstance(kept, dict) else None


def _write_record(record: Path, file: str, header: FileHeader) -> None:
    """The record, written whole or not at all (a temp file renamed over it)."""
    temp = record.with_name(f"{record.name}.{secrets.token_hex(4)}")
    try:
        temp.write_text(json.dumps({"file": file, "sha256": header.sha256, "size_bytes": header.size_bytes}))
        temp.replace(record)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
