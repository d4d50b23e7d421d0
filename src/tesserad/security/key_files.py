"""Whether a private key file is kept from the host's other users.

The rule is PostgreSQL's for its server key (OpenSSH refuses such keys too): the key is owned by
the daemon's user or by root; one owned by the daemon's user gives its group and others no
access (0600 or less); one owned by root may be read by its group (0640 or less), so a key shared
through a group such as ssl-cert works. Whoever can read the key can pose as the daemon to its
clients, or read traffic recorded earlier where the key exchange allows; whoever owns it can
chmod it open again.

A key on a read-only tmpfs or ramfs (a Kubernetes Secret, a Docker secret) is spared the mode
check: its mode is the orchestrator's (0644 by default), and the container, not the file's
mode, keeps others out. Not a key on any other read-only mount (a host's NFS export or bind
mount), which the host's other users may well read.
"""

from __future__ import annotations

import os
import shlex
import stat
from pathlib import Path

from tesserad.security.mounts import read_mounts
from tesserad.security.users import described_user, user_name

# What the orchestrators mount secrets on: in memory, in the container's own mount namespace.
_SECRET_FILESYSTEMS = {"tmpfs", "ramfs"}


class KeyFileModeError(Exception):
    """A private key file others may read, or another user owns; the message names the setting,
    the file and the fix."""


def check_key_file_mode(setting: str, path: Path) -> None:
    """KeyFileModeError when the key file `setting` names breaks PostgreSQL's rule."""
    try:
        info = os.stat(path)
        read_only = bool(os.statvfs(path).f_flag & os.ST_RDONLY)
    except OSError:
        # Not there, or not stat'able: reading the file says so in its own words.
        return
    owned_by_root = info.st_uid == 0
    if not owned_by_root and info.st_uid != os.getuid():
        raise KeyFileModeError(
            f"{setting} {path}: the private key is owned by {described_user(info.st_uid)}, not by the user "
            f"tesserad runs as ({described_user(os.getuid())}) or root, so that user could read it or open "
            f"it to others; give it to the user tesserad runs as: `chown {user_name(os.getuid())} "
            f"{shlex.quote(str(path))}`"
        )
    forbidden = stat.S_IRWXO | (stat.S_IWGRP | stat.S_IXGRP if owned_by_root else stat.S_IRWXG)
    if info.st_mode & forbidden and not (read_only and _filesystem_type(info.st_dev) in _SECRET_FILESYSTEMS):
        who = "every user of this host" if info.st_mode & stat.S_IRWXO else "the users of its group"
        mode = "640" if owned_by_root else "600"
        raise KeyFileModeError(
            f"{setting} {path}: the private key is open to {who} (mode "
            f"{stat.S_IMODE(info.st_mode):04o}), who could then pose as this daemon; keep it to the "
            f"user tesserad runs as: `chmod {mode} {shlex.quote(str(path))}`"
        )


def _filesystem_type(device: int) -> str | None:
    """The type of the file system mounted from `device` (a stat's st_dev), from the mount
    table; None when no mount lists it or the table cannot be read (not Linux)."""
    wanted = f"{os.major(device)}:{os.minor(device)}"
    for mount in read_mounts() or []:
        if mount.device == wanted:
            return mount.filesystem_type
    return None


__all__ = ["KeyFileModeError", "check_key_file_mode"]
