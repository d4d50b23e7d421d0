"""Whether a private key file is kept from the host's other users.

The rule is PostgreSQL's for its server key (OpenSSH refuses such keys too): a key owned by the
daemon's user gives its group and others no access (0600 or less); one owned by root may be read
by its group (0640 or less), so a key shared through a group such as ssl-cert works. Whoever can
read the key can pose as the daemon to its clients, or read traffic recorded earlier where the
key exchange allows.

A key on a read-only mount (a Kubernetes Secret, a compose secret) is not checked, as the tokens
file's check does not: its mode is the orchestrator's (0644 by default), and the container,
not the file's mode, keeps others out.
"""

from __future__ import annotations

import os
import shlex
import stat
from pathlib import Path


class KeyFileModeError(Exception):
    """A private key file others may read; the message names the setting, the file and the chmod."""


def check_key_file_mode(setting: str, path: Path) -> None:
    """KeyFileModeError when the key file `setting` names gives access beyond PostgreSQL's rule."""
    try:
        info = os.stat(path)
        read_only = bool(os.statvfs(path).f_flag & os.ST_RDONLY)
    except OSError:
        # Not there, or not stat'able: reading the file says so in its own words.
        return
    owned_by_root = info.st_uid == 0
    forbidden = stat.S_IRWXO | (stat.S_IWGRP | stat.S_IXGRP if owned_by_root else stat.S_IRWXG)
    if info.st_mode & forbidden and not read_only:
        who = "every user of this host" if info.st_mode & stat.S_IRWXO else "the users of its group"
        mode = "640" if owned_by_root else "600"
        raise KeyFileModeError(
            f"{setting} {path}: the private key is open to {who} (mode "
            f"{stat.S_IMODE(info.st_mode):04o}), who could then pose as this daemon; keep it to the "
            f"user tesserad runs as: `chmod {mode} {shlex.quote(str(path))}`"
        )


__all__ = ["KeyFileModeError", "check_key_file_mode"]
