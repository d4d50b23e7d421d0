"""A `tessera.v1` enum's values as lowercase words (`JobState`, `SweepState`, `RunStatus`,
`LoadState`), each also equal to the number it stands for, as code written against the
messages compares them (`sweep.state == pb.SWEEP_STATE_RUNNING`)."""

from __future__ import annotations

import re
from enum import StrEnum
from typing import TYPE_CHECKING, Any, Self

if TYPE_CHECKING:
    from google.protobuf.descriptor import EnumDescriptor

    # The stubs' type of a generated enum; at run time it is EnumTypeWrapper.
    from google.protobuf.internal.enum_type_wrapper import _EnumTypeWrapper

_WORD_START = re.compile(r"(?<!^)(?=[A-Z])")


def enum_prefix(enum: EnumDescriptor) -> str:
    """The prefix each value of `enum` carries, its type's name: OptimizeMode's is OPTIMIZE_MODE_."""
    return _WORD_START.sub("_", enum.name).upper() + "_"


def enum_word(enum: EnumDescriptor, name: str) -> str:
    """An enum value's name as the CLI and the SDK say it: JOB_STATE_SUCCEEDED of JobState is "succeeded"."""
    return name.removeprefix(enum_prefix(enum)).lower()


def number_word(numbers: _EnumTypeWrapper[Any], number: int) -> str:
    """The word for `number` of a generated enum (`training_pb2.JobState`); ValueError for one it lacks."""
    return enum_word(numbers.DESCRIPTOR, numbers.Name(number))


class StateWord(StrEnum):
    """A value of the `tessera.v1` enum `_numbers()` names, as the lowercase word for it: equal to
    that word and to its number. It hashes as the word, so a set or dict of them is looked up by
    words, not numbers. A number this SDK does not know (a newer daemon's) reads as UNSPECIFIED,
    which prints "unspecified"."""

    @staticmethod
    def _numbers() -> _EnumTypeWrapper[Any]:
        raise NotImplementedError

    @classmethod
    def _prefix(cls) -> str:
        return enum_prefix(cls._numbers().DESCRIPTOR)

    @classmethod
    def from_proto(cls, value: int) -> Self:
        """The word for the enum's number `value`; UNSPECIFIED for one this SDK does not know."""
        try:
            name = cls._numbers().Name(value)
        except ValueError:
            return cls("unspecified")
        return cls(enum_word(cls._numbers().DESCRIPTOR, name))

    def to_proto(self) -> int:
        """The number this word stands for in the `tessera.v1` enum."""
        return int(self._numbers().Value(self._prefix() + self.name))

    def __eq__(self, other: object) -> bool:
        if isinstance(other, int) and not isinstance(other, bool):
            return self.to_proto() == other
        return str.__eq__(self, other)

    def __ne__(self, other: object) -> bool:
        return not self == other

    __hash__ = str.__hash__
