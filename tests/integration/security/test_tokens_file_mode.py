"""A tokens file that any user of the host could change is refused: whoever can write it (or
rename another file over it) could give themselves the admin role."""

from __future__ import annotations

import grp
import os
import pwd
import shutil
import subprocess

import pytest

from tesserad.server import StartupError
from tests.conftest import InProcessDaemon, daemon_settings
from tests.integration.security.conftest import Tokens
from tests.tmpfs import tmpfs


def start(tmp_path, tokens_file) -> InProcessDaemon:
    return InProcessDaemon(
        daemon_settings(tmp_path / "data", **{"security.tokens_file": str(tokens_file)})
    ).start()


def test_a_tokens_file_every_user_can_write_stops_the_start(tmp_path, tokens: Tokens):
    tokens.file.chmod(0o666)
    with pytest.raises(StartupError) as err:
        start(tmp_path, tokens.file)
    message = str(err.value)
    assert message.startswith(f"security.tokens_file: tokens file {tokens.file}: the file ")
    assert "can be written by every user of this host (mode 0666)" in message
    assert "anyone could add a token with the admin role" in message
    assert f"`chmod go-w {tokens.file}`" in message


def test_a_tokens_file_in_a_directory_every_user_can_write_stops_the_start(tmp_path, tokens: Tokens):
    shared = tmp_path / "shared"
    shared.mkdir()
    moved = tokens.file.rename(shared / "tokens.toml")
    shared.chmod(0o777)
    with pytest.raises(StartupError) as err:
        start(tmp_path, moved)
    message = str(err.value)
    assert f"its directory {shared} can be written by every user of this host (mode 0777)" in message
    assert f"`chmod go-w {shared}`" in message


def test_a_sticky_shared_directory_and_a_file_others_only_read_are_fine(tmp_path, tokens: Tokens):
    # As /tmp: the sticky bit keeps others from renaming over a file they do not own.
    shared = tmp_path / "shared"
    shared.mkdir()
    moved = tokens.file.rename(shared / "tokens.toml")
    shared.chmod(0o1777)
    moved.chmod(0o644)
    daemon = start(tmp_path, moved)
    daemon.stop()


def test_a_tokens_file_below_a_directory_every_user_can_write_stops_the_start(tmp_path, tokens: Tokens):
    """Whoever can write a directory higher up can rename the file's own directory away and put
    one of theirs, with their own tokens file, in its place."""
    shared = tmp_path / "shared"
    (shared / "tesserad").mkdir(parents=True)
    moved = tokens.file.rename(shared / "tesserad" / "tokens.toml")
    shared.chmod(0o777)
    with pytest.raises(StartupError) as err:
        start(tmp_path, moved)
    message = str(err.value)
    assert f"the directory {shared} above it can be written by every user of this host (mode 0777)" in message
    assert f"`chmod go-w {shared}`" in message


def test_a_directory_every_user_can_write_above_a_linked_tokens_file_stops_the_start(
    tmp_path, tokens: Tokens
):
    """The file a link leads to can be replaced from above as well as the link."""
    shared = tmp_path / "shared"
    (shared / "secrets").mkdir(parents=True)
    target = tokens.file.rename(shared / "secrets" / "tokens.toml")
    (tmp_path / "etc").mkdir()
    link = tmp_path / "etc" / "tokens.toml"
    link.symlink_to(target)
    shared.chmod(0o777)
    with pytest.raises(StartupError) as err:
        start(tmp_path, link)
    assert f"the directory {shared} above it can be written by every user" in str(err.value)
    shared.chmod(0o1777)
    start(tmp_path, link).stop()


def test_a_read_only_mount_below_a_directory_every_user_can_write_is_fine(tmp_path, tokens: Tokens):
    """As a Secret mounted at /app/secrets in an image whose Dockerfile ran `chmod 777 /app`: a
    mount point cannot be renamed away (EBUSY), so the directory above it guards nothing."""
    app = tmp_path / "app"
    app.mkdir()
    with tmpfs(app / "secrets", "size=1m") as secrets:
        mounted = shutil.copy(tokens.file, secrets / "tokens.toml")
        subprocess.run(["mount", "-o", "remount,ro", str(secrets)], check=True)
        app.chmod(0o777)
        start(tmp_path, mounted).stop()


def test_a_directory_every_user_can_write_above_the_mount_point_stops_the_start(tmp_path, tokens: Tokens):
    """Only the directory holding the mount point is spared: one higher up can rename that one
    away, mount point and all."""
    shared = tmp_path / "shared"
    (shared / "app").mkdir(parents=True)
    with tmpfs(shared / "app" / "secrets", "size=1m") as secrets:
        mounted = shutil.copy(tokens.file, secrets / "tokens.toml")
        subprocess.run(["mount", "-o", "remount,ro", str(secrets)], check=True)
        shared.chmod(0o777)
        with pytest.raises(StartupError) as err:
            start(tmp_path, mounted)
    assert f"the directory {shared} above it can be written by every user" in str(err.value)


@pytest.mark.skipif(os.getuid() != 0, reason="only root can give a directory to another group")
def test_a_tokens_file_in_a_directory_its_group_can_write_stops_the_start(tmp_path, tokens: Tokens):
    """As sshd's StrictModes: a group's users could rename the file away and put theirs there."""
    shared = tmp_path / "shared"
    shared.mkdir()
    moved = tokens.file.rename(shared / "tokens.toml")
    os.chown(shared, -1, OTHER_GID)
    shared.chmod(0o775)
    with pytest.raises(StartupError) as err:
        start(tmp_path, moved)
    message = str(err.value)
    assert f"its directory {shared} can be written by the users of its group (mode 0775)" in message
    assert "they could add a token with the admin role" in message
    assert f"`chmod g-w {shared}`" in message
    shared.chmod(0o1775)
    start(tmp_path, moved).stop()


@pytest.mark.skipif(os.getuid() != 0, reason="only root can give a file to another group")
def test_a_tokens_file_its_group_can_write_stops_the_start(tmp_path, tokens: Tokens):
    os.chown(tokens.file, -1, OTHER_GID)
    tokens.file.chmod(0o660)
    with pytest.raises(StartupError) as err:
        start(tmp_path, tokens.file)
    assert f"the file {tokens.file} can be written by the users of its group (mode 0660)" in str(err.value)
    assert f"`chmod g-w {tokens.file}`" in str(err.value)


@pytest.mark.skipif(os.getuid() != 0, reason="only root can give a directory to another group")
def test_a_directory_its_group_and_others_can_write_is_told_both(tmp_path, tokens: Tokens):
    shared = tmp_path / "shared"
    (shared / "tesserad").mkdir(parents=True)
    moved = tokens.file.rename(shared / "tesserad" / "tokens.toml")
    os.chown(shared, -1, OTHER_GID)
    shared.chmod(0o777)
    with pytest.raises(StartupError) as err:
        start(tmp_path, moved)
    assert f"`chmod go-w {shared}`" in str(err.value)


def _private_group() -> bool:
    """Whether the daemon's primary group holds no other user (as one of its members, or as
    their own primary group)."""
    gid = os.getgid()
    if grp.getgrgid(gid).gr_mem:
        return False
    return all(entry.pw_gid != gid or entry.pw_uid == os.getuid() for entry in pwd.getpwall())


@pytest.mark.skipif(not _private_group(), reason="the tests' primary group holds other users")
def test_a_directory_and_file_only_the_daemons_own_group_can_write_are_fine(tmp_path, tokens: Tokens):
    """As under Debian's umask 002, or a Kubernetes fsGroup equal to the daemon's gid: the
    group's only user is the daemon's, so its write permission lets nobody else in."""
    shared = tmp_path / "shared"
    shared.mkdir()
    moved = tokens.file.rename(shared / "tokens.toml")
    os.chown(shared, -1, os.getgid())
    os.chown(moved, -1, os.getgid())
    shared.chmod(0o775)
    moved.chmod(0o660)
    start(tmp_path, moved).stop()


OTHER_UID = 54321
OTHER_GID = 54321


@pytest.mark.skipif(os.getuid() != 0, reason="only root can give a directory to another user")
def test_a_directory_another_user_owns_above_the_tokens_file_stops_the_start(tmp_path, tokens: Tokens):
    """Its owner could chmod it open, or rename what lies below it away, whatever its mode."""
    theirs = tmp_path / "theirs"
    (theirs / "tesserad").mkdir(parents=True)
    moved = tokens.file.rename(theirs / "tesserad" / "tokens.toml")
    os.chown(theirs, OTHER_UID, -1)
    with pytest.raises(StartupError) as err:
        start(tmp_path, moved)
    message = str(err.value)
    assert f"the directory {theirs} above it is owned by uid {OTHER_UID}" in message
    assert "not by root or by the user tesserad runs as" in message
    assert "so that user could put their own tokens file there, with the admin role" in message
    assert f"`chown {user_name()} {theirs}`" in message
    os.chown(theirs, os.getuid(), -1)
    start(tmp_path, moved).stop()


@pytest.mark.skipif(os.getuid() != 0, reason="only root can give a file to another user")
def test_a_tokens_file_another_user_owns_stops_the_start(tmp_path, tokens: Tokens):
    os.chown(tokens.file, OTHER_UID, -1)
    with pytest.raises(StartupError) as err:
        start(tmp_path, tokens.file)
    assert f"the file {tokens.file} is owned by uid {OTHER_UID}" in str(err.value)


def user_name() -> str:
    return pwd.getpwuid(os.getuid()).pw_name
