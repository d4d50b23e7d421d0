"""Resource names: validated once, at the edge, with a message that says what is allowed."""

from __future__ import annotations

import re

from tesserad.errors import InvalidArgument

NAME_PATTERN = re.compile(r"^[a-z0-9][a-z0-9._-]{0,127}$")
# "latest" always means the newest version; nobody may point it elsewhere.
RESERVED_ALIASES = frozenset({"latest"})


def validate_name(field: str, value: str) -> str:
    """Return `value` if it is a valid resource name, else raise InvalidArgument naming `field`."""
    if not value:
        raise InvalidArgument(f"{field} is required")
    if not NAME_PATTERN.match(value):
        raise InvalidArgument(
            f"{field} {value!r} is not a valid name: use 1 to 128 characters from a-z, 0-9, '.', '_' "
            "and '-', starting with a letter or digit"
        )
    return value
