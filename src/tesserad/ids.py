"""Identifiers for jobs, runs and sweeps: unique, URL-safe, and sortable by creation time."""

from __future__ import annotations

import secrets
import time

_ALPHABET = "0123456789abcdefghjkmnpqrstvwxyz"  # Crockford base32, lower case


def _base32(value: int, length: int) -> str:
    chars = []
    for _ in range(length):
        value, digit = divmod(value, 32)
        chars.append(_ALPHABET[digit])
    return "".join(reversed(chars))


def new_id(prefix: str) -> str:
    """e.g. "job-01jd3k8x2m4q7w9r": 48 bits of milliseconds, then 40 random bits."""
    millis = time.time_ns() // 1_000_000
    return f"{prefix}-{_base32(millis, 10)}{_base32(secrets.randbits(40), 8)}"
