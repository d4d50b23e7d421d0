"""Identifiers for jobs, runs and sweeps: unique, URL-safe, and sortable by creation time."""

from __future__ import annotations

import secrets
import threading
import time

_ALPHABET = "0123456789abcdefghjkmnpqrstvwxyz"  # Crockford base32, lower case
_RANDOM_BITS = 40

_lock = threading.Lock()
_last = (0, 0)  # (milliseconds, random part) of the last id this process made


def _base32(value: int, length: int) -> str:
    chars = []
    for _ in range(length):
        value, digit = divmod(value, 32)
        chars.append(_ALPHABET[digit])
    return "".join(reversed(chars))


def new_id(prefix: str) -> str:
    """e.g. "job-01jd3k8x2m4q7w9r": 48 bits of milliseconds, then 40 random bits.

    Ids made in one millisecond (a sweep's runs) or after the clock stepped back continue from
    the last one, as monotonic ULIDs do, so newest-first lists order them as they were made.
    """
    global _last
    with _lock:
        millis = time.time_ns() // 1_000_000
        last_millis, last_random = _last
        if millis > last_millis:
            _last = (millis, secrets.randbits(_RANDOM_BITS))
        elif last_random + 1 < 1 << _RANDOM_BITS:
            _last = (last_millis, last_random + 1)
        else:
            _last = (last_millis + 1, secrets.randbits(_RANDOM_BITS))
        millis, random = _last
    return f"{prefix}-{_base32(millis, 10)}{_base32(random, 8)}"
