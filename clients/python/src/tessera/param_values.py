"""When two texts are one param value: the rule a run filter (ListRuns' params) matches by, and
by which a comparison (CompareRuns' `differs`, the CLI's columns of params that differ) tells
values apart, so that the runs a filter lists never show as differing in that param.

Free of grpc and the generated modules: the daemon's domain code imports it too.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from decimal import Decimal

# A number as Python, TOML and JSON write one: ASCII digits, an optional fraction and exponent; no
# underscores, nan or inf, which float() would also read, and no leading zero ("007" is a code, a
# zero-padded name: text). The fraction hangs off the digits as one optional group, so a long
# digit run that fails to match is given back one digit at a time, not split every way (quadratic).
_NUMBER = re.compile(r"[+-]?(?:(?:0|[1-9][0-9]*)(?:\.[0-9]*)?|\.[0-9]+)(?:[eE](?P<exponent>[+-]?[0-9]+))?")
# Beyond it a number is compared as text: Decimal's arithmetic on such exponents costs more than a
# filter scanning thousands of runs should, and no param is written so.
_MAX_EXPONENT = 1000
_BOOL_WORDS = ("true", "false")


def _number(text: str) -> Decimal | None:
    match = _NUMBER.fullmatch(text)
    if match is None:
        return None
    exponent = (match["exponent"] or "0").lstrip("+-").lstrip("0")
    if len(exponent) > len(str(_MAX_EXPONENT)) or int(exponent or "0") > _MAX_EXPONENT:
        return None
    return Decimal(text)


def same_param_value(a: str, b: str) -> bool:
    """Whether `a` and `b` are one param value: the same text; the same number where both are
    numbers, exactly (3e-3 is 0.003 and 1 is 1.0, since a value's spelling is its writer's: Python
    writes 0.003, a spec may say 3e-3); or the same bool word in any case, since job runs stored
    Python's True and False before their specs' true and false, and the SDK logs Python's bools so."""
    if a == b:
        return True
    left, right = _number(a), _number(b)
    if left is not None and right is not None:
        return left == right
    lowered = a.lower()
    return lowered in _BOOL_WORDS and lowered == b.lower()


def param_values_differ(values: Sequence[str | None]) -> bool:
    """Whether a param's values across runs (None: a run without it) are not all one value."""
    first = values[0]
    return first is None or any(v is None or not same_param_value(v, first) for v in values)
