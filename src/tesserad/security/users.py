"""How messages name a user of the host: by name where the host has one, with the uid."""

from __future__ import annotations

import pwd


def user_name(uid: int) -> str:
    """The user's name, or the uid where the host has no name for it (as `chown` takes either)."""
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def described_user(uid: int) -> str:
    """The user as a message names it: "alice (uid 1000)", or "uid 1000" where the host has no
    name for it."""
    name = user_name(uid)
    return f"uid {uid}" if name == str(uid) else f"{name} (uid {uid})"


__all__ = ["described_user", "user_name"]
