"""The mount table's parser, and which directories guard a tokens file by it."""

from __future__ import annotations

from pathlib import Path

from tesserad.security.mounts import Mount, parse_mountinfo
from tesserad.security.tokens import guarding_parents

_ROOT = "22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw"


def test_mount_points_are_unescaped_and_lines_not_in_the_format_left_out():
    text = "\n".join(
        [
            _ROOT,
            r"30 22 0:41 / /srv/my\040app/secrets ro,relatime - tmpfs tmpfs ro,size=64k",
            r"31 22 0:42 / /data/back\134slash\011tab rw master:2 - btrfs /dev/sdb rw",
            "not a mountinfo line",
        ]
    )
    assert parse_mountinfo(text) == [
        Mount("8:1", Path("/"), "ext4"),
        Mount("0:41", Path("/srv/my app/secrets"), "tmpfs"),
        Mount("0:42", Path("/data/back\\slash\ttab"), "btrfs"),
    ]


def test_only_the_directory_holding_a_listed_mount_point_is_spared(tmp_path):
    app = tmp_path.resolve() / "my app"
    (app / "secrets").mkdir(parents=True)
    escaped = str(app / "secrets").replace(" ", r"\040")
    table = parse_mountinfo(f"{_ROOT}\n30 22 0:41 / {escaped} ro - tmpfs tmpfs ro")
    guarding = guarding_parents(app / "secrets" / "tokens.toml", {mount.mount_point for mount in table})
    assert app / "secrets" in guarding and app not in guarding and app.parent in guarding


def test_another_device_the_table_does_not_list_as_mounted_there_spares_nothing():
    """A btrfs subvolume or an overlayfs shows another st_dev than the directory above it without
    being a mount point: /proc does too, and with a table that lists only / it guards like any."""
    table = parse_mountinfo(_ROOT)
    assert guarding_parents(Path("/proc/cpuinfo"), {mount.mount_point for mount in table}) == [
        Path("/proc"),
        Path("/"),
    ]
