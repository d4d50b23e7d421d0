"""A replica's artifact cache: blobs by content hash, verified, bounded, least recently used out.

Blobs are fetched from the primary into a BlobStore (written to a temp file, hashed, checked
against the sha256 the change feed gave, renamed), so a torn or tampered download never lands.
Every open re-hashes the blob: one damaged on disk is dropped and fetched again. Blobs in use
by a load are pinned; the others are evicted oldest-used first when the cache is over size.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import threading
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from tesserad.config import format_size
from tesserad.errors import DataLoss, ResourceExhausted
from tesserad.store import BlobStore, NotAsDeclared

log = logging.getLogger(__name__)

# Streams a blob's bytes from the primary (raises a TesseraError when it cannot).
Fetch = Callable[[], Iterable[bytes]]


class BlobCache:
    def __init__(self, root: Path, max_bytes: int) -> None:
        self._blobs = BlobStore(root)
        self._max_bytes = max_bytes
        self._lock = threading.Lock()
        self._sizes: collections.OrderedDict[str, int] = collections.OrderedDict()  # oldest use first
        self._pins: collections.Counter[str] = collections.Counter()
        self._fetching: dict[str, threading.Lock] = {}
        for sha256 in self._blobs.all():  # what a previous run left: kept, checked when opened
            self._sizes[sha256] = self._blobs.size(sha256)

    def close(self) -> None:
        self._blobs.close()

    @property
    def used_bytes(self) -> int:
        with self._lock:
            return sum(self._sizes.values())

    def path(self, sha256: str) -> Path:
        """Where the blob lies (it may not be there)."""
        return self._blobs.path(sha256)

    @contextlib.contextmanager
    def open(self, sha256: str, size: int, fetch: Fetch) -> Iterator[Path]:
        """The verified blob's path, fetched first when missing or damaged; pinned while open."""
        with self._lock:
            self._pins[sha256] += 1
            fetching = self._fetching.setdefault(sha256, threading.Lock())
        try:
            with fetching:  # one fetch per blob at a time; the others wait and find it in place
                if not self._blobs.verify(sha256):
                    if self._blobs.delete(sha256):  # a blob in place is never replaced
                        log.warning("cached blob damaged; fetching it again", extra={"sha256": sha256})
                    self._fetch(sha256, size, fetch)
            with self._lock:
                self._sizes[sha256] = size
                self._sizes.move_to_end(sha256)
            yield self._blobs.path(sha256)
        finally:
            with self._lock:
                self._pins[sha256] -= 1
                if not self._pins[sha256]:
                    del self._pins[sha256]
                    self._fetching.pop(sha256, None)
            self._evict()

    def _fetch(self, sha256: str, size: int, fetch: Fetch) -> None:
        self._make_room(size)
        with self._blobs.writer() as writer:
            for chunk in fetch():
                writer.write(chunk)
            try:
                writer.commit(sha256, size)
            except NotAsDeclared:
                # The primary is the sender here: bytes other than its change feed names are
                # damaged on the way or at the primary, no caller's mistake.
                raise DataLoss(
                    f"the primary sent other bytes than blob {sha256} ({size} bytes) its change "
                    "feed names; nothing of them was kept"
                ) from None
        # The cache's own pins keep the blob from eviction while it is open.
        self._blobs.release(sha256)

    def _make_room(self, size: int) -> None:
        if size > self._max_bytes:
            raise ResourceExhausted(
                f"the artifact ({format_size(size)}) is larger than this replica's blob cache "
                f"({format_size(self._max_bytes)}); raise replica.cache_size"
            )
        self._evict(room_for=size)

    def _evict(self, room_for: int = 0) -> None:
        with self._lock:
            used = sum(self._sizes.values())
            for sha256 in list(self._sizes):
                if used + room_for <= self._max_bytes:
                    return
                if self._pins[sha256]:
                    continue
                used -= self._sizes.pop(sha256)
                self._blobs.delete(sha256)
                log.info("evicted a cached blob", extra={"sha256": sha256})
