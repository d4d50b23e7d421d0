"""The host's users: how messages name one (by name where the host has one, with the uid), and
whether a group holds the daemon's user alone."""

from __future__ import annotations

import grp
import os
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


def own_private_group(gid: int) -> bool:
    """Whether `gid` is the primary group this process runs with, holding no other user: none
    listed as its member, and none with it as their own primary group (as Debian's sshd lets
    such a group write an authorized_keys file). Only the users the host lists are seen (a
    directory service that lists none adds nobody)."""
    if gid != os.getgid():
        return False
    uid = os.getuid()
    try:
        members = grp.getgrgid(gid).gr_mem
    except KeyError:
        # A gid the host has no group for (a container's runAsGroup) lists no members.
        members = []
    if any(member != user_name(uid) for member in members):
        return False
    return all(entry.pw_gid != gid or entry.pw_uid == uid for entry in pwd.getpwall())


__all__ = ["described_user", "own_private_group", "user_name"]
