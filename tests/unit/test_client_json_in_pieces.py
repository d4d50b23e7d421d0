"""loads_in_pieces: what json.loads makes of a text, and its error where json.loads fails."""

from __future__ import annotations

import functools
import json
import random
from dataclasses import dataclass
from typing import Any

from tesserad.client_json import loads_in_pieces


@dataclass(frozen=True)
class _Constant:
    text: str


def _outcome(parse: Any, text: str | bytes) -> tuple[str, str]:
    try:
        return "parsed", repr(parse(text))
    except (ValueError, RecursionError) as exc:
        return type(exc).__name__, str(exc)


_ATOMS = [
    "1",
    "-2",
    "3.5e-3",
    "1e400",
    "NaN",
    "-Infinity",
    "true",
    "false",
    "null",
    '"a,]["',
    '"x\\"],"',
    '""',
    '{"k": "[,"}',
]


def _document(rng: random.Random, depth: int) -> str:
    if depth > 3 or rng.random() < 0.3:
        return rng.choice(_ATOMS)
    if rng.random() < 0.8:
        return "[" + ",".join(_document(rng, depth + 1) for _ in range(rng.randint(0, 6))) + "]"
    return "{" + ",".join(f'"k{i}": {_document(rng, depth + 1)}' for i in range(rng.randint(0, 3))) + "}"


def test_any_text_parses_or_fails_as_json_loads_has_it() -> None:
    rng = random.Random(7)
    texts = [
        "[1,,2]",
        "[1,]",
        "[,1]",
        "[1 2]",
        "[[1],[2],]",
        "[[1, 2] , [3, 4]]",
        "  [ 1 , 2 ] ",
        "[1,2]]",
        "\ufeff[1]",
        "[" + "1," * 100 + "1]",
        "[" + "[1, [2, 3]]," * 50 + "[]]",
        "[" + "9" * 5000 + "]",
        "[" * 5000,
    ]
    for _ in range(5000):
        text = _document(rng, 0)
        if rng.random() < 0.5:
            text = "".join(c + rng.choice(["", " ", "\n "]) if c in ",[]:" else c for c in text)
        if rng.random() < 0.2 and text:
            at = rng.randrange(len(text))
            text = (
                text[:at] + rng.choice([",", "]", "[", "{", "\\", "\\q", "\n", "x", "", '"']) + text[at + 1 :]
            )
        if rng.random() < 0.1:
            text = text[: rng.randrange(len(text) + 1)]
        texts.append(text)
    for text in texts:
        whole = _outcome(lambda t: json.loads(t, parse_constant=_Constant), text)
        # Pieces of 16 characters and more: most arrays are parsed in several.
        for piece in (16, 40, 1 << 16):
            outcome = _outcome(
                functools.partial(loads_in_pieces, parse_constant=_Constant, piece=piece), text
            )
            assert outcome == whole, (piece, text[:200])


def test_bytes_are_read_as_json_loads_reads_them() -> None:
    for data in [b'{"a": [1, 2.5]}', '{"a": 1}'.encode("utf-8-sig"), '{"b": [3]}'.encode("utf-16")]:
        assert loads_in_pieces(data, piece=4) == json.loads(data)
