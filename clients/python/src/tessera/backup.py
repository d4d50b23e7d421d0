"""The backup archive: what `System.Backup` streams, `tessera admin backup` saves and
`tesserad restore` puts back. Defined once here, since the daemon depends on this package.

A tar file whose first member is `manifest.json`; then `store/data.mdb`, a compacted copy of
the LMDB store; then `blobs/<sha256>` for every blob that copy references. The manifest
names every other member with its sha256 and size, so a reader checks each as it reads it
and, at the end, that none is missing (a file cut short at a member's boundary is still a
tar file).

The daemon imports this module, so it imports nothing beyond the standard library (and
`tessera/__init__.py` imports the SDK only on first use): no grpc in the daemon's domain code.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import json
import queue
import re
import tarfile
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Literal, Protocol

FORMAT = "tessera-backup"
FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"
STORE_NAME = "store/data.mdb"
BLOB_PREFIX = "blobs/"
READ_BYTES = 1 << 20
# The most a reader holds in memory of one member, whatever its header claims: a crafted
# archive could otherwise declare (and, compressed, carry in kilobytes) gigabytes of manifest
# or of extended header. 64 MiB is the manifest of some 600,000 blobs (111 bytes each); the
# extended headers (pax, GNU long names) of a backup are some 100 bytes.
MANIFEST_MAX_BYTES = 64 << 20
HEADER_MAX_BYTES = 1 << 20

_SHA256 = re.compile(r"^[0-9a-f]{64}\Z")


class ArchiveError(ValueError):
    """The archive is not a whole, untampered backup this version can read; the message says how."""


@dataclass(frozen=True)
class Entry:
    sha256: str
    size: int


@dataclass(frozen=True)
class Manifest:
    tesserad_version: str
    created_at: str  # ISO 8601, UTC
    records: dict[str, int]  # entries per store table
    store: Entry
    blobs: dict[str, int]  # sha256 -> size
    # The store schema of the copy (tesserad.store.schema); None from a tesserad before them.
    store_schema: int | None = None

    @property
    def blob_bytes(self) -> int:
        return sum(self.blobs.values())

    def to_json(self) -> bytes:
        document = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "tesserad_version": self.tesserad_version,
            "created_at": self.created_at,
            "records": self.records,
            "store": {"name": STORE_NAME, "sha256": self.store.sha256, "size": self.store.size},
            "blobs": [{"sha256": sha256, "size": size} for sha256, size in sorted(self.blobs.items())],
        }
        if self.store_schema is not None:
            document["store_schema"] = self.store_schema
        return json.dumps(document, indent=1).encode()

    @classmethod
    def from_json(cls, data: bytes) -> Manifest:
        try:
            document = json.loads(data)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ArchiveError(f"its {MANIFEST_NAME} is not JSON ({exc}); the archive is damaged") from None
        if not isinstance(document, dict) or document.get("format") != FORMAT:
            raise ArchiveError(f"its {MANIFEST_NAME} does not describe a {FORMAT} archive")
        version = document.get("format_version")
        if version != FORMAT_VERSION:
            raise ArchiveError(
                f"it is backup format version {version!r}, and this tessera reads version "
                f"{FORMAT_VERSION} only; restore it with the tesserad release that made it "
                f"({document.get('tesserad_version', 'unknown')})"
            )
        try:
            store = document["store"]
            return cls(
                tesserad_version=str(document["tesserad_version"]),
                created_at=str(document["created_at"]),
                records={str(k): _size(v) for k, v in document["records"].items()},
                store=Entry(_sha256(store["sha256"]), _size(store["size"])),
                blobs={_sha256(b["sha256"]): _size(b["size"]) for b in document["blobs"]},
                store_schema=None if "store_schema" not in document else _size(document["store_schema"]),
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ArchiveError(
                f"its {MANIFEST_NAME} is malformed ({exc!r}); the archive is damaged"
            ) from None


@dataclass(frozen=True, kw_only=True)
class SavedBackup(Manifest):
    """The manifest of a backup as saved, with the sha256 and size of the archive's own bytes
    (what `sha256sum` says of the file), for the operator to record beside it."""

    archive_sha256: str
    archive_size: int

    @classmethod
    def of(cls, manifest: Manifest, digest: Any, size: int) -> SavedBackup:
        """`manifest` with the archive's `digest` (a hashlib sha256 fed every byte) and size."""
        known = {field.name: getattr(manifest, field.name) for field in dataclasses.fields(Manifest)}
        return cls(**known, archive_sha256=digest.hexdigest(), archive_size=size)


def _sha256(value: Any) -> str:
    if not isinstance(value, str) or not _SHA256.match(value):
        raise ValueError(f"not a sha256: {value!r}")
    return value


def _size(value: Any) -> int:
    """A count or a size: an int >= 0 (JSON's true is not one)."""
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ValueError(f"not a count or size: {value!r}")
    return value


class Target(Protocol):
    """Where one member's bytes go."""

    def write(self, data: bytes, /) -> object: ...

    def close(self) -> None: ...


Place = Callable[[str, Entry], Target]
"""Where a member's bytes go, by its name and manifest entry."""

ReadManifest = Callable[[Manifest], None]
"""Told the manifest once it is read, before the members it names."""


def read_archive(
    path: Path | IO[bytes], place: Place | None = None, read_manifest: ReadManifest | None = None
) -> Manifest:
    """Read the archive at `path` (or from an open binary file, stdin: it is read as a stream)
    through, checking every member against the manifest (its sha256 and size, nothing unnamed,
    nothing twice, nothing missing), handing each member's bytes to what `place` gives;
    ArchiveError at the first fault. `read_manifest` is given the manifest before any other
    member is read (to refuse the archive before its bytes are placed: it raises). The files
    `place` gave are closed, whole or not: the caller removes them when this raises."""
    if not isinstance(path, Path):
        return _read(path, place, read_manifest=read_manifest)
    with path.open("rb") as file:
        return _read(file, place, read_manifest=read_manifest)


Checked = Callable[[int], None]
"""Told the offset in the archive up to which every byte has checked out, as it grows."""


def _read(
    file: IO[bytes],
    place: Place | None,
    checked: Checked | None = None,
    read_manifest: ReadManifest | None = None,
) -> Manifest:
    # "r|*": a backup compressed since (gzip, bzip2, xz) reads as it is, as tar reads it. With
    # `checked`, "r|": the offsets it is told are those of the tar stream, which must be the bytes read.
    mode: Literal["r|*", "r|"] = "r|*" if checked is None else "r|"
    try:
        with tarfile.open(fileobj=file, mode=mode, tarinfo=_BoundedTarInfo) as tar:
            return _read_members(tar, place, checked, read_manifest)
    except tarfile.TarError as exc:
        raise ArchiveError(f"it is not a whole tar file ({exc}); it is truncated or damaged") from None
    except EOFError:
        raise ArchiveError("it ends in the middle of a member; it is truncated") from None


class _BoundedTarInfo(tarfile.TarInfo):
    """A header whose payload tarfile reads whole into memory is refused when it claims more
    than HEADER_MAX_BYTES; global pax headers (which tarfile keeps, one after another) and GNU
    sparse members (whose map of holes it reads whole), which no backup holds, are refused.
    `_proc_member` is where tarfile reads what follows a header: the one place to see the
    claim before the bytes are read."""

    def _proc_member(self, tarfile_: tarfile.TarFile) -> tarfile.TarInfo:
        if self.type in (tarfile.XGLTYPE, tarfile.GNUTYPE_SPARSE):
            kind = "sparse file" if self.type == tarfile.GNUTYPE_SPARSE else "global pax header"
            raise ArchiveError(f"it holds a {kind}, which no backup holds; it was altered")
        if self.type in _EXTENDED_HEADERS and self.size > HEADER_MAX_BYTES:
            raise ArchiveError(
                f"it holds an extended tar header of {self.size} bytes, over the {_mib(HEADER_MAX_BYTES)} "
                "this reader takes; it was altered"
            )
        return super()._proc_member(tarfile_)  # type: ignore[misc,no-any-return]


_EXTENDED_HEADERS = (
    tarfile.XHDTYPE,
    tarfile.SOLARIS_XHDTYPE,
    tarfile.GNUTYPE_LONGNAME,
    tarfile.GNUTYPE_LONGLINK,
)


def _mib(size: int) -> str:
    return f"{size >> 20} MiB"


def _read_members(
    tar: tarfile.TarFile, place: Place | None, checked: Checked | None, read_manifest: ReadManifest | None
) -> Manifest:
    first = tar.next()
    if first is None or first.name != MANIFEST_NAME or not first.isfile():
        raise ArchiveError(f"its first member is not {MANIFEST_NAME}; it is not a tessera backup")
    if first.size > MANIFEST_MAX_BYTES:
        raise ArchiveError(
            f"its {MANIFEST_NAME} is {first.size} bytes, over the {_mib(MANIFEST_MAX_BYTES)} a manifest "
            "may be; it was altered"
        )
    manifest = Manifest.from_json(_member_bytes(tar, first))
    if read_manifest is not None:
        read_manifest(manifest)
    expected = {STORE_NAME: manifest.store}
    expected.update({BLOB_PREFIX + sha256: Entry(sha256, size) for sha256, size in manifest.blobs.items()})
    seen: set[str] = set()
    # tar.next(), not iteration, which starts again from the first member.
    while (member := tar.next()) is not None:
        entry = expected.get(member.name)
        if entry is None:
            raise ArchiveError(f"it holds {member.name!r}, which its manifest does not name")
        if not member.isfile():
            raise ArchiveError(
                f"its member {member.name!r} is a link or special file, not a file; it was altered"
            )
        if member.name in seen:
            raise ArchiveError(f"it holds {member.name!r} twice")
        seen.add(member.name)
        _copy_checked(tar, member, entry, place(member.name, entry) if place else None, checked)
    missing = expected.keys() - seen
    if missing:
        raise ArchiveError(
            f"{len(missing)} of the {len(expected)} files its manifest names are missing "
            f"(e.g. {min(missing)}); it is truncated"
        )
    return manifest


def _member_bytes(tar: tarfile.TarFile, member: tarfile.TarInfo) -> bytes:
    file = tar.extractfile(member)
    if file is None:
        raise ArchiveError(f"its member {member.name} is not a file")
    return file.read()


def _copy_checked(
    tar: tarfile.TarFile,
    member: tarfile.TarInfo,
    entry: Entry,
    target: Target | None,
    checked: Checked | None,
) -> None:
    if member.size != entry.size:
        raise ArchiveError(
            f"{member.name} is {member.size} bytes, and its manifest says {entry.size}; it was altered"
        )
    source = tar.extractfile(member)
    if source is None:
        raise ArchiveError(f"its member {member.name} is not a file")
    digest = hashlib.sha256()
    done = 0
    try:
        while chunk := source.read(READ_BYTES):
            digest.update(chunk)
            if target is not None:
                target.write(chunk)
            done += len(chunk)
            # The member's last bytes check out only with its sha256, below.
            if checked is not None and done < member.size:
                checked(member.offset_data + done)
    finally:
        if target is not None:
            target.close()
    if digest.hexdigest() != entry.sha256:
        raise ArchiveError(
            f"{member.name} has sha256 {digest.hexdigest()}, and its manifest says {entry.sha256}; "
            "it was altered or damaged"
        )
    if checked is not None:
        checked(member.offset_data + member.size)


class ArchiveCheck:
    """Checks an archive as its bytes arrive, as `read_archive` checks a file: `feed` each
    piece, and pass on only the pieces `checked()` gives, every byte of which has checked out
    (a member's last bytes, with its sha256); `end()` gives the manifest, after which
    `checked()` gives the rest. tarfile reads from a file, so a thread of its own reads the
    pieces through it while more arrive; a fault it finds is raised by the next `feed`, and
    by `end()`, and no piece from the one it was found in on is ever given."""

    def __init__(self) -> None:
        self._pieces = _Pieces()
        self._manifest: Manifest | None = None
        self._fault: ArchiveError | None = None
        # Pieces fed and not yet given, each with the offset of its end.
        self._held: collections.deque[tuple[int, bytes]] = collections.deque()
        self._fed = 0
        # Where the check has got to: written by its thread, then by end() once it has ended.
        self._through = 0
        self._thread = threading.Thread(target=self._check, name="tessera-backup-check", daemon=True)
        self._thread.start()

    def feed(self, data: bytes) -> None:
        if self._fault is not None:
            raise self._fault
        self._fed += len(data)
        self._held.append((self._fed, data))
        self._pieces.put(data)

    def checked(self) -> list[bytes]:
        """The pieces fed, in order, up to the last whose every byte has checked out so far."""
        given = []
        while self._held and self._held[0][0] <= self._through:
            given.append(self._held.popleft()[1])
        return given

    def end(self) -> Manifest:
        """The manifest, once every byte is fed and checks out; ArchiveError otherwise."""
        self.stop()
        if self._fault is not None:
            raise self._fault
        assert self._manifest is not None
        # The tar's end marker and padding, which no member's check covers, are whole too.
        self._through = self._fed
        return self._manifest

    def stop(self) -> None:
        """No more bytes: the check ends (with a fault, unless every byte was fed)."""
        if self._thread.is_alive():
            self._pieces.put(None)
            self._thread.join()

    def _check(self) -> None:
        try:
            # Stream mode ("r|") only reads: typeshed asks for a whole file.
            self._manifest = _read(self._pieces, None, self._checked_through)  # type: ignore[arg-type]
        except ArchiveError as exc:
            self._fault = exc
        except Exception as exc:
            self._fault = ArchiveError(f"it could not be checked ({exc!r})")
        self._pieces.drain()

    def _checked_through(self, offset: int) -> None:
        self._through = offset


class _Pieces:
    """The bytes fed to an ArchiveCheck, as a file its thread reads (None: the end). At most
    `_QUEUED` pieces wait, so a check that falls behind holds the stream back."""

    _QUEUED = 8

    def __init__(self) -> None:
        self._queue: queue.Queue[bytes | None] = queue.Queue(self._QUEUED)
        self._piece = b""
        self._offset = 0
        self._ended = False

    def put(self, data: bytes | None) -> None:
        self._queue.put(data)

    def read(self, size: int = -1) -> bytes:
        """`size` bytes (-1: all), fewer only at the end."""
        parts: list[bytes] = []
        wanted = size
        while wanted != 0:
            if self._offset == len(self._piece):
                piece = None if self._ended else self._queue.get()
                if piece is None:
                    self._ended = True
                    break
                self._piece, self._offset = piece, 0
            take = len(self._piece) - self._offset
            if wanted > 0:
                take = min(take, wanted)
                wanted -= take
            parts.append(self._piece[self._offset : self._offset + take])
            self._offset += take
        return b"".join(parts)

    def drain(self) -> None:
        """Take what tarfile left unread (the padding after the end marker, or all that
        follows a fault) up to the end, so that `put` never waits on a full queue."""
        while not self._ended:
            self._ended = self._queue.get() is None
