"""JSON a client sent (a request body, an ensemble spec, a model configuration), parsed so that
every way it can fail is the client's error, InvalidArgument, never the daemon's: besides text
that is not JSON, Python's parser raises RecursionError on nesting some thousand levels deep and
ValueError on an integer of more digits than it converts, which reached clients as INTERNAL."""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Callable
from json import scanner
from typing import Any

from tesserad.errors import InvalidArgument


def parse_client_json(
    data: str | bytes,
    what: str,
    deep_fix: str,
    parse_constant: Callable[[str], Any] | None = None,
    in_pieces: bool = False,
) -> Any:
    """`data` parsed; InvalidArgument naming `what` ("the ensemble spec") when it is not JSON,
    nests deeper than the parser goes (`deep_fix` says what to send instead), or holds an
    integer too long to convert. `parse_constant`: what NaN, Infinity and -Infinity become
    (json.loads's hook; floats by default). `in_pieces`: parsed as `loads_in_pieces` parses it
    (for a large body parsed off the event loop)."""
    try:
        if in_pieces:
            return loads_in_pieces(data, parse_constant)
        return json.loads(data, parse_constant=parse_constant)
    except RecursionError:
        raise InvalidArgument(f"{what} nests deeper than Python's parser goes; {deep_fix}") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidArgument(f"{what} is not JSON: {exc}") from None
    except ValueError:
        # The only other ValueError json raises: int() refusing a number past this many digits.
        raise InvalidArgument(
            f"{what} holds an integer of more than {sys.get_int_max_str_digits()} digits, which no "
            "field takes; send each number within its field's range"
        ) from None


def loads_in_pieces(
    data: str | bytes, parse_constant: Callable[[str], Any] | None = None, piece: int = 1 << 16
) -> Any:
    """`json.loads(data, parse_constant=...)`, parsed so that no one call into the C parser takes
    more than about `piece` characters (64 Ki: some 1 ms of parsing): a thread parsing megabytes
    of JSON numbers then lets go of the interpreter between pieces, and the event loop answers
    meanwhile (one json.loads call holds it throughout: the interpreter's switch interval,
    `sys.getswitchinterval()`, is heeded only between Python steps). Runs of whole array elements
    and small objects in arrays go to the C parser; larger objects and the punctuation between
    pieces to json's own pure-Python scanner. The same result as json.loads, and on any failure
    its error (the same message and position: the pure-Python scanner is json.loads's own other
    implementation)."""
    # As json.loads reads bytes and refuses a str that starts with a byte order mark.
    text = data.decode(json.detect_encoding(data), "surrogatepass") if isinstance(data, bytes) else data
    if text.startswith("\ufeff"):
        return json.loads(text, parse_constant=parse_constant)
    decoder = json.JSONDecoder(parse_constant=parse_constant)
    whole = json.JSONDecoder(parse_constant=parse_constant)
    decoder.parse_array = _array_in_pieces(whole, piece)  # type: ignore[attr-defined]
    decoder.scan_once = scanner.py_make_scanner(decoder)  # type: ignore[attr-defined]
    try:
        return decoder.decode(text)
    except RecursionError:
        # The pure-Python scanner takes fewer levels of nesting than the C parser, whose answer
        # this is.
        return whole.decode(text)


# What ends the stretch a piece may come from: an object (its keys are strings, where brackets
# and commas are text), or an escape, past which quotes no longer tell where strings are.
_NOT_IN_A_PIECE = re.compile(r"[{}\\]")
_WHITESPACE = re.compile(r"[ \t\n\r]*")
# How much of the text a small object in an array is first tried in, by the C parser.
_SMALL_OBJECT = 512


def _array_in_pieces(
    whole: json.JSONDecoder, piece: int
) -> Callable[[tuple[str, int], Callable[..., Any]], Any]:
    """json.decoder.JSONArray, taking runs of whole elements up to `piece` characters long at once
    with `whole` (the C parser)."""

    def parse_array(
        s_and_end: tuple[str, int], scan_once: Callable[[str, int], Any]
    ) -> tuple[list[Any], int]:
        text, end = s_and_end
        values: list[Any] = []
        end = _WHITESPACE.match(text, end).end()  # type: ignore[union-attr]
        if text[end : end + 1] == "]":
            return values, end + 1
        # Up to where a piece the C parser refused reached: its elements go one by one, so that
        # each is not parsed again in the next piece.
        refused = end
        while True:
            cut = _cut(text, end, piece) if end >= refused else -1
            if cut > end:
                try:
                    run = whole.decode(f"[{text[end:cut]}]")
                except json.JSONDecodeError:
                    run = []
                if run:
                    values.extend(run)
                    end = _WHITESPACE.match(text, cut + 1).end()  # type: ignore[union-attr]
                    continue
                refused = cut
            value, end = _element(text, end, scan_once)
            values.append(value)
            end = _WHITESPACE.match(text, end).end()  # type: ignore[union-attr]
            delimiter = text[end : end + 1]
            end += 1
            if delimiter == "]":
                return values, end
            if delimiter != ",":
                raise json.JSONDecodeError("Expecting ',' delimiter", text, end - 1)
            end = _WHITESPACE.match(text, end).end()  # type: ignore[union-attr]

    def _element(text: str, end: int, scan_once: Callable[[str, int], Any]) -> tuple[Any, int]:
        if text.startswith("{", end):
            # A small object (a tensor of the request's inputs or outputs) whole by the C parser;
            # a larger one, which may hold long arrays, by the scanner, its arrays in pieces.
            try:
                value, length = whole.raw_decode(text[end : end + _SMALL_OBJECT])
            except json.JSONDecodeError:
                pass
            else:
                return value, end + length
        try:
            return scan_once(text, end)  # type: ignore[no-any-return]
        except StopIteration as exc:
            raise json.JSONDecodeError("Expecting value", text, exc.value) from None

    return parse_array


def _cut(text: str, start: int, piece: int) -> int:
    """The position of a comma, at most `piece` characters after `start`, such that
    text[start:cut] holds whole array elements only (numbers, literals, strings without escapes,
    arrays of them); -1 when none is found. The C parser checks a piece: where this guessed wrong,
    it fails, and the elements go one by one."""
    found = _NOT_IN_A_PIECE.search(text, start, start + piece)
    stop = found.start() if found else min(len(text), start + piece)
    first_close = text.find("]", start, stop)
    if first_close < 0:
        first_close = stop
    if text.find("[", start, first_close) < 0:
        # Scalars up to the first bracket: the array's own values, as a flat tensor's data is. A
        # comma after an even number of quotes is outside a string.
        cut = text.rfind(",", start, first_close)
        for _ in range(4):
            if cut < 0 or text.count('"', start, cut) % 2 == 0:
                return cut
            cut = text.rfind(",", start, cut)
        return -1
    # Nested arrays (a tensor's data nested by row): cut after the last whole row, counting
    # brackets where no string holds one.
    quote = text.find('"', start, stop)
    if quote >= 0:
        stop = quote
    close = stop
    for _ in range(4):
        close = text.rfind("]", start, close)
        if close < 0:
            return -1
        after = _WHITESPACE.match(text, close + 1).end()  # type: ignore[union-attr]
        if text[after : after + 1] == "," and text.count("[", start, close) == text.count(
            "]", start, close + 1
        ):
            return after
    return -1
