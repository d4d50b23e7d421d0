"""JSON a client sent (a request body, an ensemble spec, a model configuration), parsed so that
every way it can fail is the client's error, InvalidArgument, never the daemon's: besides text
that is not JSON, Python's parser raises RecursionError on nesting some thousand levels deep and
ValueError on an integer of more digits than it converts, which reached clients as INTERNAL."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from typing import Any

from tesserad.errors import InvalidArgument


def parse_client_json(
    data: str | bytes, what: str, deep_fix: str, parse_constant: Callable[[str], Any] | None = None
) -> Any:
    """`data` parsed; InvalidArgument naming `what` ("the ensemble spec") when it is not JSON,
    nests deeper than the parser goes (`deep_fix` says what to send instead), or holds an
    integer too long to convert. `parse_constant`: what NaN, Infinity and -Infinity become
    (json.loads's hook; floats by default)."""
    try:
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
