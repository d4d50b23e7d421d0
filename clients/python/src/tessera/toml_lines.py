"""Where each key of a TOML file is written, so that a spec's problems can name their lines.

tomllib gives values without positions; this reads the text once more, line by line, and notes
the line of every `key = value`, `[table]` and `[[array of tables]]` entry. Keys inside inline
tables and multi-line values are not noted: they are found at the line of the key holding them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

KeyPath = tuple[str | int, ...]
"""A key's place in the document: table and key names, and the index of an array element."""


@dataclass(frozen=True)
class TomlSource:
    """A TOML file's name (as the user gave it), the line of each key in it, and the keys set
    over it from elsewhere (`tessera train --set`), each with the words that set it."""

    name: str
    lines: Mapping[KeyPath, int]
    set_by: Mapping[KeyPath, str] = field(default_factory=dict)

    def place_of(self, path: KeyPath) -> str | None:
        """Where `path` was written: the words that set it or a key above it (`--set a.b=1`), else
        `NAME:LINE` of it or of the nearest key above it that is noted; None if neither is."""
        for end in range(len(path), 0, -1):
            if path[:end] in self.set_by:
                return self.set_by[path[:end]]
        line = self.line_of(path)
        return f"{self.name}:{line}" if line is not None else None

    def line_of(self, path: KeyPath) -> int | None:
        """The line of `path`, or of the nearest key above it that is noted; None if none is."""
        for end in range(len(path), 0, -1):
            line = self.lines.get(path[:end])
            if line is not None:
                return line
        return None


def key_lines(text: str) -> dict[KeyPath, int]:
    """The line (from 1) where each key, table header and array-of-tables element is written."""
    lines: dict[KeyPath, int] = {}
    arrays: dict[KeyPath, int] = {}  # array-of-tables path -> elements seen so far
    table: KeyPath = ()
    quote, depth = "", 0  # an open multi-line string or bracket of a value spanning lines
    for number, line in enumerate(text.splitlines(), start=1):
        if quote or depth:
            quote, depth = _scan_value(line, quote, depth)
            continue
        stripped = line.strip()
        if stripped.startswith("[["):
            name = _in_arrays(_key_path(stripped[2 : stripped.find("]]")]), arrays)
            arrays[name] = arrays.get(name, 0) + 1
            table = (*name, arrays[name] - 1)
            lines.setdefault(name, number)
            lines[table] = number
        elif stripped.startswith("["):
            table = _in_arrays(_key_path(stripped[1 : stripped.find("]")]), arrays)
            lines[table] = number
        elif stripped and not stripped.startswith("#"):
            key, _, value = _split_assignment(stripped)
            if key:
                lines[(*table, *_key_path(key))] = number
                quote, depth = _scan_value(value, "", 0)
    return lines


def _in_arrays(name: tuple[str, ...], arrays: Mapping[KeyPath, int]) -> KeyPath:
    """A header's path with the current element of each array of tables it passes through."""
    path: KeyPath = ()
    for part in name:
        path = (*path, part)
        if path in arrays and path != name:
            path = (*path, arrays[path] - 1)
    return path


def _split_assignment(text: str) -> tuple[str, str, str]:
    """`key = value` split at the first '=' outside quotes; no '=': ("", "", "")."""
    quote = ""
    for index, char in enumerate(text):
        if quote:
            if char == quote:
                quote = ""
        elif char in "\"'":
            quote = char
        elif char == "=":
            return text[:index].strip(), "=", text[index + 1 :]
    return "", "", ""


def _key_path(text: str) -> tuple[str, ...]:
    """A dotted key (`a."b.c".d`) as its parts, quotes removed."""
    parts, current, quote = [], "", ""
    for char in text:
        if quote:
            if char == quote:
                quote = ""
            else:
                current += char
        elif char in "\"'":
            quote = char
        elif char == ".":
            parts.append(current.strip())
            current = ""
        else:
            current += char
    parts.append(current.strip())
    return tuple(parts)


def _scan_value(text: str, quote: str, depth: int) -> tuple[str, int]:
    """Read (part of) a value: the multi-line string still open and the brackets still open
    at the end of `text`, given those open at its start."""
    index = 0
    while index < len(text):
        if quote:
            if quote[0] == '"' and text[index] == "\\":
                index += 2
            elif text.startswith(quote, index):
                index += len(quote)
                quote = ""
            else:
                index += 1
            continue
        char = text[index]
        if char == "#":
            break
        if text.startswith(('"""', "'''"), index):
            quote = text[index : index + 3]
            index += 3
            continue
        if char in "\"'":
            quote = char
        elif char in "[{":
            depth += 1
        elif char in "]}":
            depth -= 1
        index += 1
    # A one-line string cannot run on (tomllib has already refused such a file).
    return (quote if len(quote) == 3 else ""), max(depth, 0)
