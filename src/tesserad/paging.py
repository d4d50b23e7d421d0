"""Pagination: page sizes, opaque page tokens and the paged table scan shared by every List RPC.

A token carries the key to resume after plus a fingerprint of the query it belongs to, so a
token reused with different filters is rejected instead of silently skipping items.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import hashlib
import json
import struct
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from tesserad.errors import InvalidArgument
from tesserad.store import Key, ReadTxn, pack, unpack

T = TypeVar("T")

DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 1000
# A page also ends once its records take this many bytes in the answer, whatever page_size asks
# for, so that it stays within gRPC's default receive limit of 4 MiB in every language. A page
# always holds one record.
MAX_PAGE_BYTES = 3 * 2**20
# What a field takes in an answer beside its text, at most: a string's or nested message's tag
# and length; a number's tag and value, or a timestamp's (its tag, length, seconds and nanos).
_TEXT_WIRE_BYTES = 6
_NUMBER_WIRE_BYTES = 16


def page_size(requested: int, default: int | None = DEFAULT_PAGE_SIZE) -> int | None:
    """0 means `default` (None: as many as MAX_PAGE_BYTES holds); larger than the maximum is
    capped to it."""
    if requested < 0:
        zero = f"the default of {default}" if default else "all that fit one answer"
        raise InvalidArgument(f"page_size must be >= 0 (0 for {zero}), got {requested}")
    return min(requested, MAX_PAGE_SIZE) if requested else default


def answer_bytes(value: Any) -> int:
    """What a record (a dataclass, its fields, their maps and lists) takes in an answer at most.

    Each map entry and list item counts its field tags and lengths, which outweigh the text of
    entries of a few bytes (10,000 aliases of a model take about 1.3 MB), so a page sized by this
    stays within MAX_PAGE_BYTES however its records are made up.
    """
    if isinstance(value, str):
        return len(value.encode()) + _TEXT_WIRE_BYTES
    if isinstance(value, bytes):
        return len(value) + _TEXT_WIRE_BYTES
    if isinstance(value, Mapping):
        return sum(_TEXT_WIRE_BYTES + answer_bytes(k) + answer_bytes(v) for k, v in value.items())
    if isinstance(value, list | tuple | set | frozenset):
        return sum(answer_bytes(item) for item in value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        fields = dataclasses.fields(value)
        return _TEXT_WIRE_BYTES + sum(answer_bytes(getattr(value, f.name)) for f in fields)
    return _NUMBER_WIRE_BYTES


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


def foreign_token() -> InvalidArgument:
    """The error for a page token this server did not issue."""
    return InvalidArgument("page_token is not one this server issued; pass next_page_token unchanged")


def resume_after(token: str, query: Any) -> bytes | None:
    """The key to resume after, or None for the first page."""
    if not token:
        return None
    try:
        decoded = json.loads(base64.urlsafe_b64decode(token.encode()))
        after, fingerprint = bytes.fromhex(decoded["a"]), decoded["q"]
    # RecursionError: JSON nested deeper than the parser goes, which no token this server issued holds.
    except (ValueError, KeyError, TypeError, binascii.Error, RecursionError):
        raise foreign_token() from None
    if fingerprint != _fingerprint(query):
        raise InvalidArgument(
            "page_token belongs to a different query; keep the filters the same across pages"
        )
    # The fingerprint is no signature: an edited token can carry bytes no listing ever packed.
    try:
        unpack(after)
    except (ValueError, IndexError, struct.error):
        raise foreign_token() from None
    return after


def resume_key(token: str, query: Any) -> Key | None:
    """`resume_after`'s key decoded (resume_after has refused one that does not decode)."""
    after = resume_after(token, query)
    return None if after is None else unpack(after)


@dataclass
class Page(Generic[T]):
    items: list[T] = field(default_factory=list)
    next_page_token: str = ""


class PageFill(Generic[T]):
    """The page-end rule of every listing: a page ends at `requested_size` items or once they
    take MAX_PAGE_BYTES (it always holds one), and its token points after its last item's key.

    A listing offers each candidate it keeps with `room(its size)` and `add`s it while there is
    room; a token is issued only when a further candidate was offered. `default_size`: the page
    size that `requested_size` 0 gives (None: MAX_PAGE_BYTES alone ends the page).
    """

    def __init__(
        self, requested_size: int, query: Mapping[str, Any], default_size: int | None = DEFAULT_PAGE_SIZE
    ) -> None:
        self._limit = page_size(requested_size, default_size)
        self._query = query
        self._bytes = 0
        self._last: Key | None = None
        self.page: Page[T] = Page()

    def room(self, size: int) -> bool:
        """Whether an item of `size` bytes still goes on the page; when not, the page is done."""
        self._bytes += size
        if self._last is not None and (len(self.page.items) == self._limit or self._bytes > MAX_PAGE_BYTES):
            self.page.next_page_token = make_token(pack(self._last), self._query)
            return False
        return True

    def add(self, key: Key, item: T) -> None:
        self.page.items.append(item)
        self._last = key


def read_page(
    txn: ReadTxn,
    table: str,
    prefix: Key = (),
    *,
    query: Mapping[str, Any],
    page_token: str,
    requested_size: int,
    item: Callable[[Key, bytes], T],
    keep: Callable[[Key, bytes], bool] | None = None,
    until: Callable[[Key], bool] | None = None,
    start: Key | None = None,
    reverse: bool = False,
) -> Page[T]:
    """One page of `table`'s rows under `prefix`, in key order (or reversed), as `item(key, value)`.

    `query` identifies the listing (its filters included) for the page token; `keep` skips rows
    a filter rejects; the scan ends at the first key for which `until` is true; `start` is
    where a first page begins (a resumed page begins after the token's key). The page ends as
    PageFill says, sizing each item as `answer_bytes` does: what an item gains beside its row
    (a model's or version's aliases) counts too.
    """
    fill: PageFill[T] = PageFill(requested_size, query)
    after_key = resume_key(page_token, query)
    rows = txn.scan(
        table,
        prefix,
        start=start if after_key is None else None,
        after=after_key,
        reverse=reverse,
    )
    for key, raw in rows:
        if until is not None and until(key):
            break
        if keep is not None and not keep(key, raw):
            continue
        answered = item(key, raw)
        if not fill.room(answer_bytes(answered)):
            break
        fill.add(key, answered)
    return fill.page
