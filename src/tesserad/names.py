"""Resource names: validated once, at the edge, with a message that says what is allowed."""

from __future__ import annotations

import difflib
import logging
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from tesserad.errors import InvalidArgument, NotFound
from tesserad.numbers import INT64_MAX

if TYPE_CHECKING:
    from tesserad.store import ReadTxn

MAX_NAME_LENGTH = 128
# Matched with fullmatch: `$` also matches before a final newline.
NAME_PATTERN = re.compile(rf"[a-z0-9][a-z0-9._-]{{0,{MAX_NAME_LENGTH - 1}}}")
# The highest version a stored reference may name: the number after it, which the numbering
# passes keep, is an int64 as versions are in the protos and the store's keys.
_HIGHEST_NAMED_VERSION = INT64_MAX - 1
# The references passed over that a numbering pass's warning shows; it counts them all.
_SHOWN_PASSED_OVER = 10
# The characters a refusal shows of a name too long to be one: its length is what is wrong, and
# the whole of it (a pasted file, say) would bury the message.
_SHOWN_OF_LONG_NAME = 64
# "latest" always means the newest version; nobody may point it elsewhere.
RESERVED_ALIASES = frozenset({"latest"})
# Aliases that read as a version number: the CLI takes digits as a version, so an alias "3" could
# never be named there, and tables show versions as "v3", so an alias "v3" on another version misleads.
_VERSION_LIKE_ALIAS = re.compile(r"v?[0-9]+")


def version_like_alias(alias: str) -> str:
    """Why an alias that reads as a version number ("3", "v3") cannot be set; "" for any other."""
    if not _VERSION_LIKE_ALIAS.fullmatch(alias):
        return ""
    number = int(alias.removeprefix("v"))
    return (
        f"reads as a version number; name version {number} by its number, and pick a name such as "
        f"'production' or 'candidate-{number}' for an alias"
    )


def validate_name(field: str, value: str) -> str:
    """Return `value` if it is a valid resource name, else raise InvalidArgument naming `field`."""
    if not value:
        raise InvalidArgument(f"{field} is required")
    if value.startswith("models:/"):
        # MLflow's model URIs ("models:/NAME@ALIAS", "models:/NAME/3"): the version goes apart here.
        raise InvalidArgument(
            f"{field} {_shown(value)} is MLflow's model URI: give the model's name alone in {field}, "
            "and its version number or alias in the version reference's own field (version or alias)"
        )
    if not NAME_PATTERN.fullmatch(value):
        raise InvalidArgument(
            f"{field} {_shown(value)} is not a valid name: use 1 to {MAX_NAME_LENGTH} characters from "
            "a-z, 0-9, '.', '_' and '-', starting with a letter or digit"
        )
    return value


def _shown(value: str) -> str:
    """A refused name as its message shows it."""
    if len(value) > MAX_NAME_LENGTH:
        return f"{value[:_SHOWN_OF_LONG_NAME]!r}… ({len(value):,} characters)"
    return repr(value)


def validate_stored_name(field: str, value: str) -> str:
    """`validate_name` for a delete: also takes a name stored before names were matched whole (a
    valid name and a final newline), which no other call can name any more."""
    before = value.removesuffix("\n")
    if before != value and NAME_PATTERN.fullmatch(before):
        return value
    return validate_name(field, value)


def validate_name_prefix(field: str, value: str) -> str:
    """Return `value` if some name can start with it ("" starts every name), else raise
    InvalidArgument naming the name rule: such a filter would list nothing, silently, where the
    caller most likely mistyped it ("Models-", "my model"). Every non-empty start of a valid name
    is itself a valid name."""
    if not value or NAME_PATTERN.fullmatch(value):
        return value
    raise InvalidArgument(
        f"{field} {_shown(value)} can start no name, so it would match nothing: names use 1 to "
        f"{MAX_NAME_LENGTH} characters from a-z, 0-9, '.', '_' and '-', starting with a letter or digit"
    )


# Names read on each side of a missing one when looking for a near miss: keys sort by name, so
# a typo past the first few characters sits among them, and the cost stays bounded however many
# names a table holds.
NEAR_NAMES_EACH_SIDE = 500


def did_you_mean(txn: ReadTxn, table: str, name: str) -> str:
    """ "did you mean 'x'? " for a stored name (keyed `(name,)` in `table`) close to the missing
    `name`, else ""; read only on the error path."""
    around = [
        *txn.scan(table, start=(name,), limit=NEAR_NAMES_EACH_SIDE),
        *txn.scan(table, start=(name,), reverse=True, limit=NEAR_NAMES_EACH_SIDE),
    ]
    return closest([str(key[0]) for key, _ in around], name)


def near_choice(value: object, choices: Sequence[str]) -> str:
    """ "; did you mean 'x'?" for the choice `value` was likely meant as, else "": the same word
    in another case first ("Adam", "FP16"), then difflib's nearest ("adma")."""
    text = str(value)
    lowered = {choice.lower(): choice for choice in choices}
    meant = lowered.get(text.lower())
    if meant is None:
        close = difflib.get_close_matches(text.lower(), list(lowered), n=1)
        meant = lowered[close[0]] if close else None
    return f"; did you mean {meant!r}?" if meant is not None else ""


def not_one_of(value: object, choices: Sequence[str]) -> str:
    """What is wrong with a value of a choice field, in the words every such field uses."""
    return f"must be one of {', '.join(choices)}, got {value!r}{near_choice(value, choices)}"


def closest(names: list[str], name: str) -> str:
    """ "did you mean 'x'? " for the one of `names` closest to the missing `name`, else ""."""
    close = difflib.get_close_matches(name, names, n=1)
    return f"did you mean {close[0]!r}? " if close else ""


def missing_name(txn: ReadTxn, table: str, what: str, name: str, fix: str) -> NotFound:
    """NotFound for the `what` called `name`, absent from `table`: a stored name close to it
    first, then `fix` (how to make one, "create it with CreateModel")."""
    near = did_you_mean(txn, table, name)
    return NotFound(f"{what} {name!r} does not exist; " + (f"{near}Or {fix}" if near else fix))


def named_version(name: object, number: object) -> tuple[str, int] | None:
    """A (name, version) reference read from a stored record, where it can name a version: a
    resource name (one stored before names were matched whole ends in a newline) and a number in
    1..INT64_MAX-1; else None. A record an older daemon left, or one written from a client's
    input, may hold anything."""
    if (
        isinstance(name, str)
        and NAME_PATTERN.fullmatch(name.removesuffix("\n")) is not None
        and isinstance(number, int)
        and not isinstance(number, bool)
        and 1 <= number <= _HIGHEST_NAMED_VERSION
    ):
        return name, number
    return None


@dataclass
class ReferenceTally:
    """What `named_versions` read: how many references, how many it passed over as naming no
    version, and the first of those, which a warning shows (a store may hold any number)."""

    read: int = 0
    passed_over: int = 0
    shown: list[tuple[object, object]] = field(default_factory=list)

    def warn_passed_over(self, log: logging.Logger, message: str) -> None:
        """Log `message` as a warning with the references passed over, if there were any."""
        if self.passed_over:
            log.warning(message, extra={"references": self.passed_over, "shown": self.shown})


def named_versions(
    references: Iterable[tuple[object, object]], tally: ReferenceTally
) -> Iterator[tuple[str, int]]:
    """The (name, version) of each of `references` (as stored records hold them) that names a
    version (`named_version`), for a numbering pass; those that can name none are counted in
    `tally`, never raised: start-up never fails on what a record holds. Number 0 names no
    version (the newest one, or the latest of a model that has none) and is neither."""
    for name, number in references:
        tally.read += 1
        if number == 0:
            continue
        named = named_version(name, number)
        if named is None:
            tally.passed_over += 1
            if len(tally.shown) < _SHOWN_PASSED_OVER:
                tally.shown.append((name, number))
        else:
            yield named
