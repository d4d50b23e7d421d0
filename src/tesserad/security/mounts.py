"""The mount table of this process's mount namespace, from /proc/self/mountinfo (Linux)."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

_MOUNTINFO = Path("/proc/self/mountinfo")

# The kernel writes a space, tab, newline and backslash in a path as a backslash and three octal
# digits (`\040` for a space).
_OCTAL_ESCAPE = re.compile(r"\\([0-7]{3})")


@dataclass(frozen=True)
class Mount:
    device: str  # "MAJOR:MINOR", as a stat's st_dev gives it with os.major and os.minor
    mount_point: Path
    filesystem_type: str


def parse_mountinfo(text: str) -> list[Mount]:
    """The mounts the text of a mountinfo file lists, in its order; a line not in its format is
    left out."""
    mounts = []
    for line in text.splitlines():
        # "ID PARENT MAJOR:MINOR ROOT MOUNT-POINT OPTIONS [OPTIONAL...] - TYPE SOURCE SUPER-OPTIONS"
        fields, _, described = line.partition(" - ")
        names = fields.split(" ")
        if len(names) < 5 or not described:
            continue
        mount_point = _OCTAL_ESCAPE.sub(lambda escape: chr(int(escape.group(1), 8)), names[4])
        mounts.append(Mount(names[2], Path(mount_point), described.split(" ")[0]))
    return mounts


def read_mounts() -> list[Mount] | None:
    """This process's mounts; None when the table cannot be read (not Linux)."""
    try:
        # Paths are bytes to the kernel: decoded as Python decodes any file name.
        return parse_mountinfo(os.fsdecode(_MOUNTINFO.read_bytes()))
    except OSError:
        return None


__all__ = ["Mount", "parse_mountinfo", "read_mounts"]
