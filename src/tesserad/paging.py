"""Pagination: page sizes and opaque page tokens shared by every List RPC.

A token carries the key to resume after plus a fingerprint of the query it belongs to, so a
token reused with different filters is rejected instead of silently skipping items.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from dataclasses import dataclass
from typing import Any

from tesserad.errors import InvalidArgument

DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 1000


def page_size(requested: int) -> int:
    """0 means the default; larger than the maximum is capped to it."""
    if requested < 0:
        raise InvalidArgument(
            f"page_size must be >= 0 (0 for the default of {DEFAULT_PAGE_SIZE}), got {requested}"
        )
    return min(requested or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)


def _fingerprint(query: Any) -> str:
    return hashlib.sha256(json.dumps(query, sort_keys=True, default=str).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class PageToken:
    after: bytes  # the last key of the previous page
    query: str

    def encode(self) -> str:
        return base64.urlsafe_b64encode(
            json.dumps({"a": self.after.hex(), "q": self.query}).encode()
        ).decode()


def make_token(after: bytes, query: Any) -> str:
    return PageToken(after, _fingerprint(query)).encode()


def resume_after(token: str, query: Any) -> bytes | None:
    """The key to resume after, or None for the first page."""
    if not token:
        return None
    try:
        decoded = json.loads(base64.urlsafe_b64decode(token.encode()))
        after, fingerprint = bytes.fromhex(decoded["a"]), decoded["q"]
    except (ValueError, KeyError, TypeError, binascii.Error):
        raise InvalidArgument(
            "page_token is not one this server issued; pass next_page_token unchanged"
        ) from None
    if fingerprint != _fingerprint(query):
        raise InvalidArgument(
            "page_token belongs to a different query; keep the filters the same across pages"
        )
    return after
