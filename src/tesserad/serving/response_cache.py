"""The response cache: answers of versions loaded with `response_cache`, kept by request hash.

As Triton's: a request whose inputs and requested outputs match an earlier one's is answered from
the cache without the batcher or the model. Whether a version's outputs are a pure function of
its inputs is the operator's to say (ServingConfig.response_cache, off by default, as Triton's
model config `response_cache { enable: true }`): the daemon cannot tell a deterministic model
from one that samples, and caching the latter would repeat one draw forever.

One cache per daemon (serving.response_cache_size bytes, 0: none), shared by every version and
least recently used out by bytes. A key is a SHA-256 digest of the version's identity (model,
version, the artifact's sha256, runtime and device: a re-registered version or another runtime
never finds another's answers), each input's name, dtype, shape and bytes, and the requested
outputs. Cached arrays are views of immutable bytes: no caller can write into them.
"""

from __future__ import annotations

import hashlib
import struct
import threading
import time
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from tesserad.dtypes import STRING_DTYPE
from tesserad.serving.stats import ServingStats

# What an entry costs beyond its outputs' bytes (key, dict and array headers), so that a budget
# of many tiny answers is not overrun by their bookkeeping.
ENTRY_OVERHEAD_BYTES = 256


def _frozen(array: np.ndarray) -> np.ndarray:
    """A read-only copy over immutable bytes: its WRITEABLE flag cannot be set again. Strings
    (an object array, which no buffer holds) are a read-only copy of the array of their str
    objects, themselves immutable."""
    contiguous = np.ascontiguousarray(array)
    if contiguous.dtype == STRING_DTYPE:
        copy = contiguous.copy()
        copy.flags.writeable = False
        return copy
    return np.frombuffer(contiguous.tobytes(), dtype=contiguous.dtype).reshape(contiguous.shape)


def _size(array: np.ndarray) -> int:
    """The bytes `array` holds: a string array's references and its strings' UTF-8."""
    if array.dtype == STRING_DTYPE:
        return array.nbytes + sum(len(text.encode()) for text in array.flat)
    return array.nbytes


@dataclass(frozen=True)
class _Entry:
    identity: bytes
    outputs: dict[str, np.ndarray]
    nbytes: int


class ResponseCache:
    """Thread-safe LRU of answers, bounded by bytes; looked up on the event loop, filled from
    batcher threads."""

    def __init__(self, capacity_bytes: int) -> None:
        self.capacity_bytes = capacity_bytes
        self._lock = threading.Lock()
        self._entries: OrderedDict[bytes, _Entry] = OrderedDict()
        self.used_bytes = 0

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: bytes) -> dict[str, np.ndarray] | None:
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                return None
            self._entries.move_to_end(key)
        # A dict of its own: the caller may add to or drop from it, never from the cache's.
        return dict(entry.outputs)

    def put(self, key: bytes, identity: bytes, outputs: Mapping[str, np.ndarray]) -> None:
        """Keep a copy of `outputs`; one larger than the whole budget is not kept."""
        frozen = {name: _frozen(array) for name, array in outputs.items()}
        nbytes = ENTRY_OVERHEAD_BYTES + sum(_size(a) for a in frozen.values())
        if nbytes > self.capacity_bytes:
            return
        with self._lock:
            if key in self._entries:  # two misses of one request ran at once
                self._entries.move_to_end(key)
                return
            while self.used_bytes + nbytes > self.capacity_bytes:
                _, evicted = self._entries.popitem(last=False)
                self.used_bytes -= evicted.nbytes
            self._entries[key] = _Entry(identity, frozen, nbytes)
            self.used_bytes += nbytes

    def forget(self, identity: bytes) -> None:
        """Drop a version's entries (it was unloaded: its memory goes with it)."""
        with self._lock:
            for key in [k for k, e in self._entries.items() if e.identity == identity]:
                self.used_bytes -= self._entries.pop(key).nbytes


def version_identity(model: str, version: int, artifact_sha256: str, runtime: str, device: str) -> bytes:
    return _fields(
        model.encode(), str(version).encode(), artifact_sha256.encode(), runtime.encode(), device.encode()
    )


def _fields(*parts: bytes) -> bytes:
    """Length-prefixed, so that no two different field lists run together into the same bytes."""
    return b"".join(struct.pack("<Q", len(part)) + part for part in parts)


def request_key(identity: bytes, inputs: Mapping[str, np.ndarray], output_names: Sequence[str]) -> bytes:
    # SHA-256 over blake2b: with the CPU's SHA extensions it hashes 128 KiB (a cnn4d clip) in 66
    # us against blake2b's 196 us on the dev box.
    digest = hashlib.sha256(identity)
    for name in sorted(inputs):
        array = np.ascontiguousarray(inputs[name])
        digest.update(_fields(name.encode(), array.dtype.str.encode(), repr(array.shape).encode()))
        if array.dtype == STRING_DTYPE:
            # An object array's buffer holds references, not the text: each string is hashed.
            for text in array.flat:
                digest.update(_fields(text.encode()))
            continue
        digest.update(struct.pack("<Q", array.nbytes))
        digest.update(array.data)
    digest.update(_fields(*(name.encode() for name in output_names)))
    # Requested outputs named or not: the answers differ (an empty list means all of them).
    digest.update(struct.pack("<Q", len(output_names)))
    return digest.digest()


class VersionCache:
    """A loaded version's view of the daemon's cache: its identity and its statistics."""

    __slots__ = ("_cache", "_stats", "identity")

    def __init__(self, cache: ResponseCache, identity: bytes, stats: ServingStats) -> None:
        self._cache = cache
        self.identity = identity
        self._stats = stats

    def lookup(
        self, inputs: Mapping[str, np.ndarray], output_names: Sequence[str]
    ) -> tuple[bytes, int, dict[str, np.ndarray] | None]:
        """(key, the lookup's ns, cached outputs or None); a hit is counted here."""
        started = time.perf_counter_ns()
        key = request_key(self.identity, inputs, output_names)
        outputs = self._cache.get(key)
        lookup_ns = time.perf_counter_ns() - started
        if outputs is not None:
            self._stats.record_cache_hit(lookup_ns)
        return key, lookup_ns, outputs

    def insert(self, key: bytes, lookup_ns: int, outputs: Mapping[str, np.ndarray] | None) -> None:
        """After a miss ran: keep its outputs (None: it failed) and count the miss with the
        time of its lookup and insert (the model's run between them left out)."""
        started = time.perf_counter_ns()
        if outputs is not None:
            self._cache.put(key, self.identity, outputs)
        self._stats.record_cache_miss(lookup_ns + time.perf_counter_ns() - started)
