"""A paginated list as a notebook reads it: `Listing` (and `AioListing` on `tessera.aio.Client`)
asks the daemon again each time it is iterated or made a DataFrame, page by page, as MLflow's
search results can be read again; it is not an iterator (`next(iter(listing))` is the first
item). pandas is not a dependency of the SDK: it is imported when a frame is asked for."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from google.protobuf import text_format
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message

from tessera.messages import to_datetime
from tessera.state_words import enum_word

if TYPE_CHECKING:
    import pandas as pd  # type: ignore[import-untyped]  # optional, and without its stubs here

T_co = TypeVar("T_co", covariant=True)


def pandas_module() -> Any:
    """pandas, or ImportError saying how to install it."""
    try:
        import pandas  # optional: the SDK does not depend on it
    except ImportError:
        raise ImportError(
            "to_pandas() needs pandas, which the SDK does not install: pip install pandas"
        ) from None
    return pandas


def _cell(field: FieldDescriptor, value: Any) -> Any:
    if field.message_type is not None and field.message_type.full_name == "google.protobuf.Timestamp":
        return to_datetime(value)
    if field.enum_type is not None:
        known = field.enum_type.values_by_number.get(value)
        # A number this SDK does not know (a newer daemon's) stays a number.
        return value if known is None else enum_word(field.enum_type, known.name)
    return value


def _shown(field: FieldDescriptor) -> bool:
    """A field a frame has a column for: one value, a map or a list of values; a nested message
    (a signature, a spec) stays on the item (`.info` where the item wraps its message)."""
    if field.message_type is None:
        return True
    if field.message_type.GetOptions().map_entry:
        return field.message_type.fields_by_name["value"].message_type is None
    return field.message_type.full_name == "google.protobuf.Timestamp" and not field.is_repeated


def messages_frame(items: Iterable[Any], item: Descriptor | None = None) -> pd.DataFrame:
    """Items of a listing (messages, or objects whose `info` is one) as a DataFrame, one row per
    item and a column per field of one value (enums as their words, times as UTC datetimes, NaT
    where unset), per map (a dict) and per list of values (a list). Without items, the columns
    are those of the `item` message (none where it is not given)."""
    pandas = pandas_module()
    messages: list[Message] = [getattr(item, "info", item) for item in items]
    if messages:
        descriptor: Descriptor = messages[0].DESCRIPTOR  # type: ignore[assignment]  # upb's is the same type
    elif item is not None:
        descriptor = item
    else:
        return pandas.DataFrame()
    fields = [field for field in descriptor.fields if _shown(field)]
    rows = []
    for message in messages:
        row: dict[str, Any] = {}
        for field in fields:
            value = getattr(message, field.name)
            if field.message_type is not None and field.message_type.GetOptions().map_entry:
                row[field.name] = dict(value)
            elif field.is_repeated:
                row[field.name] = [_cell(field, one) for one in value]
            else:
                row[field.name] = _cell(field, value)
        rows.append(row)
    frame = pandas.DataFrame(rows, columns=[field.name for field in fields])
    for field in fields:
        if field.message_type is not None and not field.message_type.GetOptions().map_entry:
            frame[field.name] = pandas.to_datetime(frame[field.name], utc=True)
    return frame


def _asked(request: Message) -> str:
    """What a listing's request asks, in one line (`experiment: "nb"`), without its paging."""
    shown = type(request)()
    shown.CopyFrom(request)
    shown.ClearField("page_token")
    return text_format.MessageToString(shown, as_one_line=True) or "everything"


class Listing(Generic[T_co]):
    """Every item of a paginated list, asked for again each time it is iterated (`for`, `list()`)
    or made a DataFrame (`to_pandas()`), page by page as the caller gets there, so a long one is
    never held whole. Not an iterator: `next(iter(listing))` is the first item, and a listing
    read in part starts over when read again (`it = iter(listing)` goes on where it stopped)."""

    def __init__(
        self,
        items: Callable[[], Iterator[T_co]],
        request: Message,
        frame: Callable[[Iterable[Any]], pd.DataFrame],
    ) -> None:
        self._items = items
        self._request = request
        self._frame = frame

    def __iter__(self) -> Iterator[T_co]:
        return self._items()

    def __repr__(self) -> str:
        what = type(self._request).__name__.removeprefix("List").removesuffix("Request")
        return f"<Listing of {what} {_asked(self._request)} (not fetched; iterate or .to_pandas())>"

    def to_pandas(self) -> pd.DataFrame:
        """The items as a DataFrame, one row per item, asked for again; ImportError where pandas
        is not installed."""
        return self._frame(self)


class AioListing(Generic[T_co]):
    """`Listing` on `tessera.aio.Client`: asked for again each time it is iterated (`async for`)
    or made a DataFrame (`await listing.to_pandas()`). Not an async iterator:
    `await anext(aiter(listing))` is the first item."""

    def __init__(
        self,
        items: Callable[[], AsyncIterator[T_co]],
        request: Message,
        frame: Callable[[Iterable[Any]], pd.DataFrame],
    ) -> None:
        self._items = items
        self._request = request
        self._frame = frame

    def __aiter__(self) -> AsyncIterator[T_co]:
        return self._items()

    def __repr__(self) -> str:
        what = type(self._request).__name__.removeprefix("List").removesuffix("Request")
        return (
            f"<AioListing of {what} {_asked(self._request)} (not fetched; async for or await .to_pandas())>"
        )

    async def to_pandas(self) -> pd.DataFrame:
        """The items as a DataFrame, one row per item, asked for again (see `Listing.to_pandas`)."""
        items = [item async for item in self]
        # Made off the event loop: a long listing's frame takes a while to build.
        return await asyncio.to_thread(self._frame, items)
