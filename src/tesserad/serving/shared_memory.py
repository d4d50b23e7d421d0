"""System shared memory (Triton's `system_shared_memory` extension): a local client creates a
POSIX shared-memory object, registers a region of it under a name, and inference requests then
read inputs from it and write outputs into it instead of carrying their bytes.

Regions live in the daemon's memory only (never in the store): a restart forgets them. The
daemon opens a client's object but never creates or unlinks one; the object stays the client's,
after unregister and after shutdown alike. A region unregistered while requests use it stays
open until the last of them ends (its name is free at once).
"""

from __future__ import annotations

import os
import stat
import threading
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from tesserad.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
    Unimplemented,
)

# Where Linux (glibc's shm_open) keeps POSIX shared-memory objects.
SHM_DIRECTORY = Path("/dev/shm")
# NAME_MAX: the longest file name, so the longest object name.
_MAX_KEY = 255
_MAX_NAME = 255


@dataclass(frozen=True)
class RegionStatus:
    """A registered region: `byte_size` bytes at `offset` in the shared-memory object `key`."""

    name: str
    key: str
    offset: int
    byte_size: int


@dataclass(frozen=True)
class TensorPlace:
    """Where a tensor's bytes are: `byte_size` bytes at `offset` in the registered region `region`."""

    region: str
    offset: int
    byte_size: int


class _Region:
    """A registered region over its object's open descriptor.

    Read and written with pread/pwrite rather than mapped: a client can shrink its object at any
    time, and touching a mapping past the object's end kills the process with SIGBUS, where a
    read past it returns short and a write is refused below."""

    __slots__ = ("_fd", "status", "unregistered", "users")

    def __init__(self, status: RegionStatus, fd: int) -> None:
        self.status = status
        self._fd = fd
        self.users = 0
        self.unregistered = False

    def read(self, start: int, size: int, where: str) -> bytes:
        data = os.pread(self._fd, size, self.status.offset + start)
        if len(data) != size:
            raise FailedPrecondition(self._shrunk(where))
        return data

    def write(self, start: int, data: bytes, where: str) -> None:
        begin = self.status.offset + start
        # A write past the end would grow the client's object instead.
        if os.fstat(self._fd).st_size < begin + len(data) or os.pwrite(self._fd, data, begin) != len(data):
            raise FailedPrecondition(self._shrunk(where))

    def _shrunk(self, where: str) -> str:
        return (
            f"{where}: shared-memory object {self.status.key!r} is smaller than region "
            f"{self.status.name!r} was registered over (it was truncated since); register it again"
        )

    def close(self) -> None:
        os.close(self._fd)


def shm_path(key: str, directory: Path = SHM_DIRECTORY) -> Path:
    """The file of the POSIX shared-memory object `key` ("/name" or "name", as shm_open takes
    it); InvalidArgument for a key that is not one plain name (which could reach other files)."""
    stem = key[1:] if key.startswith("/") else key
    if not stem or "/" in stem or "\0" in stem or stem in (".", "..") or len(stem) > _MAX_KEY:
        raise InvalidArgument(
            f"shared-memory key {key[:300]!r} is not the name of a POSIX shared-memory object: give "
            f"one name of 1 to {_MAX_KEY} characters without '/' (a single leading '/' is allowed, "
            "as in '/input_data'), as passed to shm_open"
        )
    return directory / stem


def _not_an_object(key: str) -> str:
    return (
        f"{key!r} is not a shared-memory object (it is a directory, a link or a special file); "
        "register an object made with shm_open"
    )


def _check_place(region: RegionStatus, offset: int, byte_size: int, where: str) -> None:
    if offset < 0 or byte_size < 0:
        raise InvalidArgument(
            f"{where}: shared_memory_offset and shared_memory_byte_size must be at least 0, "
            f"got {offset} and {byte_size}"
        )
    if offset + byte_size > region.byte_size:
        raise InvalidArgument(
            f"{where}: {byte_size} bytes at offset {offset} do not fit in shared-memory region "
            f"{region.name!r}, which has {region.byte_size} bytes; register a larger region or "
            "send a smaller offset or byte size"
        )


class SharedMemory:
    """The registered system shared-memory regions, by name. Thread-safe."""

    def __init__(self, max_regions: int, directory: Path = SHM_DIRECTORY) -> None:
        self._directory = directory
        self._max_regions = max_regions
        self._regions: dict[str, _Region] = {}
        self._lock = threading.Lock()

    def register(self, name: str, key: str, offset: int, byte_size: int) -> None:
        """Open object `key` read/write for its `byte_size` bytes at `offset`, as region `name`."""
        if not name or len(name) > _MAX_NAME:
            raise InvalidArgument(f"a shared-memory region needs a name of 1 to {_MAX_NAME} characters")
        path = shm_path(key, self._directory)
        if offset < 0 or byte_size < 1:
            raise InvalidArgument(
                f"shared-memory region {name!r} needs an offset of at least 0 and a byte_size of at "
                f"least 1, got offset {offset} and byte_size {byte_size}"
            )
        with self._lock:
            if name in self._regions:
                raise AlreadyExists(
                    f"shared-memory region {name!r} is already registered (key "
                    f"{self._regions[name].status.key!r}); unregister it first, or pick another name"
                )
            if len(self._regions) >= self._max_regions:
                raise ResourceExhausted(
                    f"{len(self._regions)} system shared-memory regions are registered, as many as "
                    "serving.max_shared_memory_regions allows; unregister one first, or raise the setting"
                )
            fd = self._open(path, key, offset + byte_size)
            self._regions[name] = _Region(RegionStatus(name, key, offset, byte_size), fd)

    def _open(self, path: Path, key: str, length: int) -> int:
        """The object's descriptor, open for reading and writing, once it is known to hold `length` bytes."""
        if not self._directory.is_dir():
            raise Unimplemented(
                f"system shared memory needs POSIX shared-memory objects under {self._directory}, which "
                "this host lacks; send tensors in the request instead"
            )
        try:
            # O_NOFOLLOW: a link in the directory could name any file the daemon may write;
            # O_NONBLOCK: a FIFO there must not hold the open.
            fd = os.open(path, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
        except FileNotFoundError:
            raise NotFound(
                f"there is no shared-memory object {key!r} on the daemon's host: create it first "
                "(e.g. tritonclient.utils.shared_memory.create_shared_memory_region), on the same "
                "machine as the daemon"
            ) from None
        except PermissionError:
            raise FailedPrecondition(
                f"the daemon may not open shared-memory object {key!r} for reading and writing: "
                "create it as the daemon's user, or give that user read and write permission"
            ) from None
        except OSError:
            raise InvalidArgument(_not_an_object(key)) from None
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode):
                raise InvalidArgument(_not_an_object(key))
            if length > info.st_size:
                raise InvalidArgument(
                    f"shared-memory object {key!r} has {info.st_size} bytes, but the region asks for "
                    f"{length} (offset plus byte_size); register a region within the object"
                )
        except BaseException:
            os.close(fd)
            raise
        return fd

    def status(self, name: str = "") -> list[RegionStatus]:
        """Every region (`name` empty), else region `name`: NotFound when it is not registered."""
        with self._lock:
            if not name:
                return [r.status for r in self._regions.values()]
            region = self._regions.get(name)
        if region is None:
            raise NotFound(f"no system shared-memory region {name!r} is registered")
        return [region.status]

    def unregister(self, name: str = "") -> None:
        """Forget region `name` (empty: every region); a name not registered is no error (as
        Triton). Its object is closed once no request uses it."""
        with self._lock:
            names = list(self._regions) if not name else [name] if name in self._regions else []
            for gone in names:
                region = self._regions.pop(gone)
                region.unregistered = True
                if region.users == 0:
                    region.close()

    def close(self) -> None:
        """At shutdown: unregister every region."""
        self.unregister()

    def lease(self) -> Lease:
        return Lease(self)

    def _acquire(self, name: str, where: str) -> _Region:
        with self._lock:
            region = self._regions.get(name)
            if region is None:
                raise NotFound(
                    f"{where} names shared-memory region {name!r}, which is not registered; register "
                    "it (SystemSharedMemoryRegister) before the request"
                )
            region.users += 1
            return region

    def _release(self, region: _Region) -> None:
        with self._lock:
            region.users -= 1
            if region.unregistered and region.users == 0:
                region.close()


class Lease:
    """The regions one inference request uses, kept open until it ends (`with`): an unregister
    meanwhile closes them after it."""

    def __init__(self, memory: SharedMemory) -> None:
        self._memory = memory
        self._held: dict[str, _Region] = {}

    def __enter__(self) -> Lease:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        for region in self._held.values():
            self._memory._release(region)
        self._held.clear()

    def _region(self, place: TensorPlace, where: str) -> _Region:
        region = self._held.get(place.region)
        if region is None:
            region = self._held[place.region] = self._memory._acquire(place.region, where)
        _check_place(region.status, place.offset, place.byte_size, where)
        return region

    def read(self, place: TensorPlace, expected: int, where: str) -> bytes:
        """A copy of an input's bytes (the client may reuse its region while the model runs);
        `expected`: the byte size its shape and datatype need."""
        region = self._region(place, where)
        if place.byte_size != expected:
            raise InvalidArgument(
                f"{where} has shared_memory_byte_size {place.byte_size}, but its shape and datatype "
                f"need {expected} bytes; send the tensor's exact byte size"
            )
        return region.read(place.offset, place.byte_size, where)

    def reserve(self, place: TensorPlace, where: str) -> None:
        """Hold an output's region from before the model runs, so that its answer has somewhere to go."""
        self._region(place, where)

    def write(self, place: TensorPlace, data: bytes, where: str) -> None:
        region = self._region(place, where)
        if len(data) > place.byte_size:
            raise InvalidArgument(
                f"{where} has {len(data)} bytes, more than the {place.byte_size} of its "
                f"shared_memory_byte_size in region {place.region!r}; give it at least {len(data)}"
            )
        region.write(place.offset, data, where)
