"""The response cache's keys and entries (tesserad.serving.response_cache)."""

from __future__ import annotations

import numpy as np
import pytest

from tesserad.serving.response_cache import ENTRY_OVERHEAD_BYTES, ResponseCache, request_key, version_identity

IDENTITY = version_identity("m", 1, "ab" * 32, "onnx", "cpu")


def test_keys_differ_by_dtype_shape_name_outputs_and_identity() -> None:
    x = np.zeros((2, 4), dtype=np.float32)
    same_bytes = [
        {"x": x},
        {"x": x.view(np.int32)},
        {"x": x.reshape(4, 2)},
        {"y": x},
        {"x": x.view(np.uint8).reshape(2, 16)},
    ]
    keys = {request_key(IDENTITY, inputs, ()) for inputs in same_bytes}
    keys |= {request_key(IDENTITY, {"x": x}, names) for names in [("a",), ("b",), ("a", "b"), ("b", "a")]}
    for other in [("m", 2, "ab" * 32), ("m", 1, "cd" * 32), ("n", 1, "ab" * 32)]:
        keys.add(request_key(version_identity(*other, "onnx", "cpu"), {"x": x}, ()))
    keys.add(request_key(version_identity("m", 1, "ab" * 32, "torch", "cpu"), {"x": x}, ()))
    assert len(keys) == len(same_bytes) + 4 + 3 + 1
    # Equal requests: equal keys, whatever the arrays' memory layout.
    assert request_key(IDENTITY, {"x": np.asfortranarray(x)}, ()) == request_key(
        IDENTITY, {"x": x.copy()}, ()
    )


def test_cached_arrays_are_immutable_copies() -> None:
    cache = ResponseCache(10_000)
    produced = np.arange(6, dtype=np.float32)
    cache.put(b"k", IDENTITY, {"y": produced[:4]})
    produced[:] = -1  # the producer's array is its own
    first = cache.get(b"k")
    assert first is not None
    np.testing.assert_array_equal(first["y"], [0, 1, 2, 3])
    with pytest.raises(ValueError, match="read-only"):
        first["y"][0] = 5
    with pytest.raises(ValueError, match="WRITEABLE"):
        first["y"].flags.writeable = True
    first.pop("y")
    again = cache.get(b"k")
    assert again is not None and list(again) == ["y"]


def test_lru_by_bytes_and_forget() -> None:
    entry = ENTRY_OVERHEAD_BYTES + 400
    cache = ResponseCache(2 * entry)
    for key in (b"a", b"b"):
        cache.put(key, IDENTITY, {"y": np.zeros(100, np.float32)})
    assert cache.get(b"a") is not None
    cache.put(b"c", IDENTITY, {"y": np.zeros(100, np.float32)})
    assert [cache.get(k) is not None for k in (b"a", b"b", b"c")] == [True, False, True]
    assert cache.used_bytes == 2 * entry
    cache.put(b"huge", IDENTITY, {"y": np.zeros(1000, np.float32)})  # over the budget: not kept
    assert len(cache) == 2
    cache.put(b"other", version_identity("n", 1, "", "onnx", "cpu"), {"y": np.zeros(1, np.float32)})
    cache.forget(IDENTITY)
    assert len(cache) == 1 and cache.used_bytes == ENTRY_OVERHEAD_BYTES + 4
