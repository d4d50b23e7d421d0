"""Building request messages from plain Python values: version refs, specs from dicts and TOML
files, checked with every problem named at once."""

from __future__ import annotations

import dataclasses
import datetime as dt
import difflib
import json
import numbers
import sys
import tomllib
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

from google.protobuf import json_format, timestamp_pb2
from google.protobuf.descriptor import Descriptor, EnumDescriptor, FieldDescriptor
from google.protobuf.message import Message

from tessera.errors import InvalidArgument
from tessera.progress_line import byte_size
from tessera.state_words import enum_prefix, enum_word
from tessera.toml_lines import KeyPath, TomlSource, key_lines
from tessera.v1 import common_pb2

M = TypeVar("M", bound=Message)


MODEL_URI_PREFIX = "models:/"
"""MLflow's model URIs: "models:/NAME@ALIAS" and "models:/NAME/VERSION"."""


def model_uri_parts(uri: str) -> tuple[str, int | str | None]:
    """The model and its version (an int) or alias (a str; None: neither) that an MLflow model
    URI names, "models:/NAME@ALIAS" or "models:/NAME/VERSION" (or "models:/NAME", the newest);
    ValueError saying the forms for another, such as MLflow's stages ("models:/NAME/Production"),
    which are aliases here."""
    rest = uri.removeprefix(MODEL_URI_PREFIX)
    model, at, alias = rest.partition("@")
    if at:
        if alias and "/" not in alias and "/" not in model and model:
            return model, alias
    else:
        model, slash, version = rest.partition("/")
        if model and not slash:
            return model, None
        if model and is_digits(version) and int(version) > 0:
            return model, version_number("version", int(version), model)
        if model and version and "/" not in version and not is_digits(version):
            raise ValueError(
                f"{uri!r}: MLflow's stage {version!r} is an alias here; write "
                f"{MODEL_URI_PREFIX}{model}@{version.lower()} (or pass alias={version.lower()!r})"
            )
    raise ValueError(
        f"{uri!r} is no model URI tessera reads: write {MODEL_URI_PREFIX}NAME@ALIAS or "
        f"{MODEL_URI_PREFIX}NAME/VERSION (or the model's name, with version= or alias=)"
    )


def version_ref(
    model: str, version: int | str | None = None, alias: str | None = None
) -> common_pb2.VersionRef:
    """A VersionRef by number or alias (neither: the RPC's default, usually "latest"). A str
    `version` is an alias, as in every SDK method that takes `version=`. `model` may be an MLflow
    model URI naming the version itself, "models:/NAME@ALIAS" or "models:/NAME/VERSION"."""
    if model.startswith(MODEL_URI_PREFIX):
        uri = model
        model, named = model_uri_parts(uri)
        if named is not None and (version is not None or alias is not None):
            raise ValueError(f"model {uri!r} names its version: pass version or alias, or neither with it")
        if named is not None:
            version = named
    if version is not None and alias is not None:
        raise ValueError(f"model {model!r}: pass version or alias, not both")
    if isinstance(version, str):
        return common_pb2.VersionRef(model=model, alias=version)
    if version is not None:
        return common_pb2.VersionRef(model=model, version=version_number("version", version))
    if alias is not None:
        return common_pb2.VersionRef(model=model, alias=alias)
    return common_pb2.VersionRef(model=model)


# Versions, sequence numbers and counts are int64 in the protos.
INT64_MAX = 2**63 - 1


def version_number(field: str, version: int | str, model: str = "MODEL") -> int:
    """`version` when an int64 field can carry it; else InvalidArgument naming `field`, where
    protobuf would raise a bare ValueError "Value out of range". An alias (a str) is a ValueError
    saying how to read its number, where Python would raise a bare TypeError."""
    if isinstance(version, str):
        raise ValueError(
            f"{field}={version!r} is an alias, and this call takes a version number: read the alias's "
            f"with client.models.alias({model!r}, {version!r}).version"
        )
    if not -INT64_MAX - 1 <= version <= INT64_MAX:
        raise InvalidArgument(f"{field} must be a version number 1..{INT64_MAX}, got {version}")
    return version


def is_digits(text: str) -> bool:
    """Whether `text` is written in digits 0-9 alone: str.isdigit() also passes other scripts'
    digits, which int() reads ("٣" as 3), and "²", which int() refuses."""
    return text.isascii() and text.isdigit()


def counted(count: int, noun: str) -> str:
    """`1 request`, `2 requests`: a count with its noun (one that takes -s) in the right number."""
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


def checked_store(blobs: int, num_bytes: int, references: int, seconds: float) -> str:
    """What a store check (`tessera admin verify`, `tesserad verify`) covered, and its rate."""
    rate = num_bytes / seconds / 1e6 if seconds > 0 else 0.0
    return (
        f"checked {counted(blobs, 'blob')} ({byte_size(num_bytes)}, {rate:.0f} MB/s) and "
        f"{counted(references, 'reference')} to them in {seconds:.1f} s"
    )


def whole_number(text: str) -> int:
    """`text` as an int in 0..INT64_MAX, else ValueError saying what is taken; int() alone would
    also read "٣", "+3", " 3" and "1_0", and refuses over 4300 digits."""
    digits = text.lstrip("0") or "0"
    if not is_digits(text) or len(digits) > len(str(INT64_MAX)) or int(digits) > INT64_MAX:
        shown = text if len(text) <= 40 else text[:40] + "..."
        raise ValueError(f"must be a whole number in 0..{INT64_MAX} written in digits 0-9, got {shown!r}")
    return int(digits)


def dataset_ref(ref: str | common_pb2.DatasetRef) -> common_pb2.DatasetRef:
    """ "name" (newest version) or "name:version" as a DatasetRef."""
    if isinstance(ref, common_pb2.DatasetRef):
        return ref
    name, _, version = ref.partition(":")
    try:
        number = whole_number(version) if version else 0
    except ValueError:
        raise ValueError(f"dataset {ref!r}: write name or name:version with a whole version number") from None
    return common_pb2.DatasetRef(name=name, version=number)


def to_datetime(timestamp: timestamp_pb2.Timestamp) -> dt.datetime | None:
    """A protobuf Timestamp as an aware UTC datetime; None when unset."""
    if timestamp.seconds == 0 and timestamp.nanos == 0:
        return None
    return timestamp.ToDatetime(tzinfo=dt.UTC)


class TomlTable(dict[str, Any]):
    """A table read by `load_toml`: a plain dict that also knows the file it came from and its
    own place in it, so that `from_dict` can name the line of each problem."""

    source: TomlSource | None = None
    prefix: KeyPath = ()


def load_toml(path: str | Path) -> TomlTable:
    """A TOML file as a dict (its tables as `TomlTable`s that know their lines); ValueError
    saying where the syntax is wrong. "-" reads standard input, as `tessera train -` does."""
    try:
        if str(path) == "-":
            path, text = "<stdin>", sys.stdin.buffer.read().decode("utf-8")
        else:
            text = Path(path).read_text(encoding="utf-8")
        data = tomllib.loads(text)
    except UnicodeDecodeError as err:
        raise ValueError(f"{path}: not valid TOML: not UTF-8 text ({err.reason})") from None
    except tomllib.TOMLDecodeError as err:
        raise ValueError(f"{path}: not valid TOML: {err}") from None
    return _table(data, TomlSource(str(path), key_lines(text)), ())


def parse_setting(text: str) -> tuple[KeyPath, Any]:
    """`KEY=VALUE` as (KEY's path, VALUE): KEY a TOML key (`optimizer.lr`, dotted for a table's
    key), VALUE a TOML value (`3e-4`, `true`, `[16, 16]`, `"text"`), or text as it is where it is
    not one (`adamw`). ValueError saying how to write it."""
    equals = _equals_outside_quotes(text)
    key, value = text[:equals], text[equals + 1 :]
    path = _key_path(key) if equals >= 0 else None
    if path is None:
        raise ValueError(
            f"{text!r}: write KEY=VALUE, KEY the spec's names joined by dots and VALUE a TOML value, "
            "e.g. optimizer.lr=3e-4"
        )
    try:
        parsed = tomllib.loads(f"value = {value}")
    except tomllib.TOMLDecodeError:
        return path, value
    return path, parsed["value"] if list(parsed) == ["value"] else value


def _equals_outside_quotes(text: str) -> int:
    """Where the first `=` outside a TOML key's quotes is (`tags."a=b"=c`: the last), or -1."""
    quote = ""
    escaped = False
    for index, char in enumerate(text):
        if escaped:
            escaped = False
        elif quote == '"' and char == "\\":
            escaped = True
        elif char == quote:
            quote = ""
        elif not quote and char in "\"'":
            quote = char
        elif not quote and char == "=":
            return index
    return -1


def _key_path(key: str) -> KeyPath | None:
    """A TOML key's path (`a.b` as ("a", "b")), read by TOML itself; None if it is not one key."""
    try:
        level: Any = tomllib.loads(f"{key} = 0")
    except tomllib.TOMLDecodeError:
        return None
    path: list[str | int] = []
    while isinstance(level, dict) and len(level) == 1:
        name, level = next(iter(level.items()))
        path.append(name)
    return tuple(path) if level == 0 and not isinstance(level, bool) and path else None


def with_settings(
    table: TomlTable,
    settings: Sequence[tuple[KeyPath, Any, str]],
    message_type: type[Message] | None = None,
) -> TomlTable:
    """`table` (from load_toml) with each setting's value at its path, the tables above it made
    where missing; a setting is (path, value, the words that set it), and its problems are named
    by those words (`--set optimizer.lr=...`) instead of a line of the file. A value written as
    text that `message_type` also takes as a table (a dataset "clips:2") becomes that table where
    a setting goes inside it (`data.dataset.version=3`). ValueError for a path that goes through
    any other value that is not a table."""
    set_by: dict[KeyPath, str] = {}
    for path, value, words in settings:
        here: dict[str, Any] = table
        descriptor: Descriptor | None = message_type.DESCRIPTOR if message_type is not None else None  # type: ignore[assignment]
        for depth, key in enumerate(path[:-1], start=1):
            field = descriptor.fields_by_name.get(str(key)) if descriptor is not None else None
            descriptor = field.message_type if field is not None else None
            below = here.setdefault(str(key), TomlTable())
            if isinstance(below, str) and descriptor is not None and descriptor.full_name in _TEXT_AS_TABLE:
                try:
                    below = here[str(key)] = TomlTable(_TEXT_AS_TABLE[descriptor.full_name](below))
                except ValueError as err:
                    raise ValueError(f"{words}: {dotted_name(path[:depth])}: {err}") from None
            if not isinstance(below, dict):
                raise ValueError(f"{words}: {dotted_name(path[:depth])} is {_describe(below)}, not a table")
            here = below
        here[str(path[-1])] = value
        set_by[path] = words
    if table.source is not None:
        table.source = dataclasses.replace(table.source, set_by={**table.source.set_by, **set_by})
    return table


def _dataset_table(text: str) -> dict[str, Any]:
    ref = dataset_ref(text)
    return {"name": ref.name, **({"version": ref.version} if ref.version else {})}


# Messages a spec may give as text, and the table each text stands for.
_TEXT_AS_TABLE: dict[str, Callable[[str], dict[str, Any]]] = {"tessera.v1.DatasetRef": _dataset_table}


def _table(value: dict[str, Any], source: TomlSource, prefix: KeyPath) -> TomlTable:
    table = TomlTable({key: _tables(item, source, (*prefix, key)) for key, item in value.items()})
    table.source, table.prefix = source, prefix
    return table


def _tables(value: Any, source: TomlSource, prefix: KeyPath) -> Any:
    if isinstance(value, dict):
        return _table(value, source, prefix)
    if isinstance(value, list):
        return [_tables(item, source, (*prefix, index)) for index, item in enumerate(value)]
    return value


def from_dict(message_type: type[M], data: Mapping[str, Any] | M, what: str = "spec") -> M:
    """A message from a dict (e.g. parsed TOML), with friendly spellings: enum values by their
    short lowercase name ("regression" for TASK_REGRESSION) and datasets as "name[:version]".

    Every problem is reported at once in one ValueError: unknown keys (with the nearest known
    one), values of the wrong type and unknown enum values, each by its dotted snake_case name
    (`architecture.cnn4d.kernel_size`) and, for a table from `load_toml`, its file and line."""
    if isinstance(data, message_type):
        return data
    problems = _Problems(quoted_numbers=not isinstance(data, TomlTable))
    descriptor: Descriptor = message_type.DESCRIPTOR  # type: ignore[assignment]  # upb's is the same type
    plain = _message(descriptor, data, (), problems)
    if problems:
        raise ValueError(_report(what, data, problems))
    message = message_type()
    try:
        json_format.ParseDict(plain, message)
    except json_format.ParseError as err:
        raise ValueError(f"{what}: {err}") from None
    return message


class _Problems(list[tuple[KeyPath, str]]):
    """The problems found so far, and whether a number may be given as a string: in a dict it
    may (proto3's JSON, and so MessageToDict, writes 64-bit integers as strings), in TOML, which
    has numbers of its own, quotes around one are a mistake."""

    def __init__(self, quoted_numbers: bool) -> None:
        super().__init__()
        self.quoted_numbers = quoted_numbers


def _report(what: str, data: Any, problems: list[tuple[KeyPath, str]]) -> str:
    """One line per problem, in the file's order when the lines are known."""
    source = data.source if isinstance(data, TomlTable) else None
    prefix = data.prefix if isinstance(data, TomlTable) else ()
    located = []
    for path, text in problems:
        full = (*prefix, *path)
        line = source.line_of(full) if source is not None else None
        place = source.place_of(full) if source is not None else None
        where = f"{place}: " if place else ""
        located.append((line or 0, f"{where}{dotted_name(full)}: {text}"))
    lines = [text for _, text in sorted(located, key=lambda item: item[0])]
    origin = source.name if source is not None else what
    if len(lines) == 1:
        return lines[0] if lines[0].startswith(f"{origin}:") else f"{origin}: {lines[0]}"
    return f"{origin} has {len(lines)} problems:\n" + "\n".join(f"  {line}" for line in lines)


def dotted_name(path: KeyPath) -> str:
    """("a", "b", 0, "c") as "a.b[0].c", the way TOML spells a key's place."""
    name = ""
    for part in path:
        name += f"[{part}]" if isinstance(part, int) else (f".{part}" if name else part)
    return name or "(top level)"


def _message(descriptor: Descriptor, data: Any, path: KeyPath, problems: _Problems) -> dict[str, Any]:
    """`data` checked against a message type and put in the form json_format reads."""
    if not isinstance(data, Mapping):
        problems.append((path, f"expected a table, got {_describe(data)}"))
        return {}
    out: dict[str, Any] = {}
    oneof_choice: dict[str, str] = {}
    for key, value in data.items():
        here = (*path, key)
        field = descriptor.fields_by_name.get(key) or descriptor.fields_by_camelcase_name.get(key)
        if field is None:
            problems.append((here, "unknown key" + _key_suggestion(str(key), descriptor)))
            continue
        if field.name in out:
            problems.append((here, f"set twice (as {field.name} and {field.json_name})"))
            continue
        if value is None:
            continue
        oneof = field.containing_oneof
        if oneof is not None and len(oneof.fields) > 1:
            if oneof.name in oneof_choice:
                choices = ", ".join(f.name for f in oneof.fields)
                problems.append((here, f"{oneof_choice[oneof.name]} is set too; set only one of {choices}"))
            else:
                oneof_choice[oneof.name] = field.name
        out[field.name] = _field(field, value, here, problems)
    return out


def _field(field: FieldDescriptor, value: Any, path: KeyPath, problems: _Problems) -> Any:
    if field.message_type is not None and field.message_type.GetOptions().map_entry:
        if not isinstance(value, Mapping):
            problems.append((path, f"expected a table of names to values, got {_describe(value)}"))
            return {}
        entry = field.message_type.fields_by_name["value"]
        return {key: _single(entry, item, (*path, key), problems) for key, item in value.items()}
    if field.is_repeated:
        if not isinstance(value, list | tuple):
            problems.append((path, f"expected a list, got {_describe(value)}"))
            return []
        return [_single(field, item, (*path, index), problems) for index, item in enumerate(value)]
    return _single(field, value, path, problems)


_WHOLE_RANGES = {
    FieldDescriptor.CPPTYPE_INT32: (-(2**31), 2**31 - 1),
    FieldDescriptor.CPPTYPE_INT64: (-(2**63), 2**63 - 1),
    FieldDescriptor.CPPTYPE_UINT32: (0, 2**32 - 1),
    FieldDescriptor.CPPTYPE_UINT64: (0, 2**64 - 1),
}


def _single(field: FieldDescriptor, value: Any, path: KeyPath, problems: _Problems) -> Any:
    """One value (a list item or a map value too) checked against its field's type."""
    kind = field.cpp_type
    if field.message_type is not None:
        full_name = field.message_type.full_name
        if full_name == "tessera.v1.DatasetRef" and isinstance(value, str):
            try:
                ref = dataset_ref(value)
            except ValueError as err:
                problems.append((path, str(err)))
                return None
            return {"name": ref.name, "version": ref.version}
        if full_name.startswith("google.protobuf."):
            return value  # well-known types keep their JSON spellings (e.g. "1.5s")
        return _message(field.message_type, value, path, problems)
    if field.enum_type is not None:
        return _enum(field.enum_type, value, path, problems)
    problem = None
    if field.full_name in _VALUES_AS_TEXT:
        if isinstance(value, bool | numbers.Real):
            # Range and type are the daemon's to judge, by the field each value is for: a whole
            # number past int64 is a valid float parameter's value and no int parameter's.
            return _value_text(value)
        if not isinstance(value, str):
            problem = f"expected a number, true or false, or text in quotes, got {_describe(value)}"
    elif kind == FieldDescriptor.CPPTYPE_STRING:
        if not isinstance(value, str):
            problem = f"expected text in quotes, got {_describe(value)}"
    elif kind == FieldDescriptor.CPPTYPE_BOOL:
        if not isinstance(value, bool):
            problem = f"expected true or false, got {_describe(value)}"
    else:
        number = "a whole number" if kind in _WHOLE_RANGES else "a number"
        if kind in _WHOLE_RANGES:
            problem = _whole_number_problem(value, *_WHOLE_RANGES[kind])
        elif not _is_number(value):
            problem = f"expected {number}, got {_describe(value)}"
        if problem is None and isinstance(value, str) and not problems.quoted_numbers:
            problem = f"expected {number}, got the string {_describe(value)}; write it without quotes"
    if problem is not None:
        problems.append((path, problem))
    return value


# A sweep's values travel as text, parsed by the daemon to each field's type; numbers and
# booleans are taken as Ray Tune and Optuna take them.
_VALUES_AS_TEXT = ("tessera.v1.SweepValues.values", "tessera.v1.SweepCondition.values")


def _value_text(value: bool | numbers.Real) -> str:
    """A number or boolean as the text the daemon parses back to it: true/false, an int's digits,
    a float's repr (the shortest text that reads back as the same float: 1e-3 as "0.001").
    NumPy's numbers are taken as Python's: their own repr reads "np.float64(0.001)"."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, numbers.Integral):
        return str(int(value))
    return repr(float(value))


def _whole_number_problem(value: Any, low: int, high: int) -> str | None:
    whole = (
        (isinstance(value, int) and not isinstance(value, bool))
        or (isinstance(value, float) and value.is_integer())
        or (isinstance(value, str) and is_digits(value.strip().lstrip("+-")))
    )
    if not whole:
        return f"expected a whole number, got {_describe(value)}"
    if not low <= int(value) <= high:
        return f"{int(value)} is out of range: expected a whole number from {low} to {high}"
    return None


def _is_number(value: Any) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, int | float):
        return True
    if isinstance(value, str):  # json_format's spellings: "1e-3", "NaN", "Infinity"
        try:
            float(value)
        except ValueError:
            return False
        return True
    return False


def _enum(enum_type: EnumDescriptor, value: Any, path: KeyPath, problems: _Problems) -> Any:
    """An enum value by number, full name or short name ("regression" for TASK_REGRESSION)."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    names = [v.name for v in enum_type.values]
    prefix = enum_prefix(enum_type)
    choices = [enum_word(enum_type, name) for name in names if not name.endswith("_UNSPECIFIED")]
    if isinstance(value, str):
        wanted = value.upper()
        for name in names:
            if name in (wanted, prefix + wanted):
                return name
        problems.append(
            (
                path,
                # The values are listed already: only a near miss is worth adding.
                f"{_describe(value)} is not one of {', '.join(choices)}" + _near_miss(value.lower(), choices),
            )
        )
    else:
        problems.append((path, f"expected one of {', '.join(choices)}, got {_describe(value)}"))
    return value


# PyTorch's names for a spec's fields that no near miss finds.
_SYNONYMS = {"learning_rate": "lr", "eta_min": "min_lr"}


def _key_suggestion(key: str, descriptor: Descriptor) -> str:
    """_suggestion's hint, or first the field `key` is another library's name for, or the tables
    one level down that hold it exactly: `lr` at a spec's top belongs in [optimizer], and TOML
    takes `optimizer.lr = 0.01` there as it is."""
    meant = _SYNONYMS.get(key, key)
    if meant in descriptor.fields_by_name:
        return f"; did you mean {meant}?"
    tables = [
        field.name
        for field in descriptor.fields
        if field.message_type is not None
        and not field.message_type.GetOptions().map_entry
        and meant in field.message_type.fields_by_name
    ]
    if tables:
        return f"; did you mean {' or '.join(f'{table}.{meant}' for table in tables)}?"
    return _suggestion(key, list(descriptor.fields_by_name))


def _suggestion(word: str, known: list[str]) -> str:
    """ "; did you mean X?" for a near miss, else the known names when they are few."""
    near = _near_miss(word, known)
    if near:
        return near
    return f" (known: {', '.join(known)})" if len(known) <= 8 else ""


def _near_miss(word: str, known: list[str]) -> str:
    """ "; did you mean X?" for the known name nearest `word`, "" when none is near."""
    close = difflib.get_close_matches(word, known, n=1)
    return f"; did you mean {close[0]}?" if close else ""


def _describe(value: Any) -> str:
    """A value the way its TOML would read."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, list | tuple):
        return "a list"
    if isinstance(value, Mapping):
        return "a table"
    return type(value).__name__
