"""Tokens: random secrets a client sends as `authorization: Bearer <token>`.

The tokens file keeps only each token's SHA-256, so reading it (or a backup of it) does not
give anyone a token. A plain hash is enough because tokens are 256-bit random values from
`new_token`; no dictionary can guess one, so a slow password hash would add latency to every
call for nothing. Tokens shorter than MIN_TOKEN_LENGTH are refused.

File format (TOML), one table per token:

    [[tokens]]
    name = "ci"            # who holds it; this is the caller identity in audit logs
    role = "trainer"       # reader, trainer or admin
    sha256 = "9f86d0..."   # `tesserad tokens hash` prints it for a token you made yourself
    created = 2026-01-31T09:00:00Z   # optional; `tesserad tokens add` writes it, `list` shows it
    expires = 2026-03-02T09:00:00Z   # optional; from then on the token is refused (`add --expires-in`)

A token without `expires` never expires. Expiry is checked on every call, not at reload: an
expired token's next call is UNAUTHENTICATED saying when it expired, and its open streams end.

A running daemon reads the file again on SIGHUP and when its modification time, size or inode
changes, or the mode or owner of a directory above it (`TokenFile`); a file that cannot be used
leaves the tokens in use as they were. Nor can one that another user of the host could change
(`check_not_open_to_writes`).
"""

from __future__ import annotations

import datetime
import hashlib
import hmac
import os
import re
import secrets
import shlex
import stat
import tomllib
from collections.abc import Sequence, Set
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tesserad.security.mounts import read_mounts
from tesserad.security.roles import Role
from tesserad.security.users import described_user, own_private_group, user_name

TOKEN_PREFIX = "tsr_"
MIN_TOKEN_LENGTH = 24
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,127}\Z")
_SHA256_RE = re.compile(r"^[0-9a-f]{64}\Z")
_REQUIRED_KEYS = {"name", "role", "sha256"}
_OPTIONAL_KEYS = {"created", "expires"}
_LIFETIME_RE = re.compile(r"^([0-9]+)([smhd])$")
_LIFETIME_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
# Longer lifetimes run past what a date can hold (year 9999) or a timedelta can (999999999 days).
MAX_LIFETIME_DAYS = 36500


class TokensFileError(Exception):
    """The tokens file cannot be used; the message names the file, the entry and the fix."""


def read_tokens_file(path: Path) -> str:
    """The tokens file's text; TokensFileError naming the file when it is missing, cannot be
    read or is not UTF-8 (as TOML is), so every reader of it says so alike."""
    try:
        return path.read_bytes().decode()
    except FileNotFoundError:
        raise TokensFileError(
            f"tokens file {path} does not exist; create it with its first token, "
            f"`tesserad tokens add --file {shlex.quote(str(path))} --name admin --role admin`"
        ) from None
    except OSError as exc:
        raise TokensFileError(f"tokens file {path} cannot be read: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise TokensFileError(
            f"tokens file {path} is not UTF-8 text (byte {exc.start} cannot be decoded); TOML files "
            "are UTF-8: save it as such"
        ) from None


@dataclass(frozen=True)
class Identity:
    """Who is calling and what they may do."""

    name: str
    role: Role
    # When the token stops working (aware, UTC); None: never.
    expires: datetime.datetime | None = None

    def expired(self, now: datetime.datetime) -> bool:
        return self.expires is not None and now >= self.expires


@dataclass(frozen=True)
class TokenEntry:
    name: str
    role: Role
    digest: bytes = field(repr=False)  # the token's hash, as TokenChanges never names it
    created: datetime.date | None = None
    expires: datetime.datetime | None = None


def utc_now() -> datetime.datetime:
    """The wall-clock time expiry is compared with (a moment, not a duration)."""
    return datetime.datetime.now(datetime.UTC)


def format_time(moment: datetime.date) -> str:
    """A date or date-time as the tokens file and messages write it: ISO 8601, UTC as Z."""
    return moment.isoformat().replace("+00:00", "Z")


def parse_lifetime(text: str) -> datetime.timedelta:
    """A token's lifetime such as 90s, 15m, 12h or 30d; ValueError for anything else, 0, or over
    MAX_LIFETIME_DAYS."""
    match = _LIFETIME_RE.match(text.strip())
    if match is None or int(match[1]) == 0:
        raise ValueError(
            f"a lifetime must be a positive whole number with a unit s, m, h or d (such as 30d), not {text!r}"
        )
    seconds = int(match[1]) * _LIFETIME_UNITS[match[2]]
    if seconds > MAX_LIFETIME_DAYS * 86400:
        raise ValueError(
            f"a lifetime must be at most {MAX_LIFETIME_DAYS}d (100 years), not {text!r}; leave "
            "--expires-in out for a token that never expires"
        )
    return datetime.timedelta(seconds=seconds)


def new_token() -> str:
    """A fresh random token (256 bits of entropy), shown to its holder once."""
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def hash_token(token: str) -> str:
    """The hex SHA-256 stored in the tokens file for `token`."""
    if len(token) < MIN_TOKEN_LENGTH:
        raise ValueError(
            f"a token must be at least {MIN_TOKEN_LENGTH} characters; use `tesserad tokens add` "
            "to make a random one"
        )
    return hashlib.sha256(token.encode()).hexdigest()


def format_entry(
    name: str,
    role: Role,
    sha256: str,
    created: datetime.date | None = None,
    expires: datetime.datetime | None = None,
) -> str:
    """One `[[tokens]]` table, as appended to a tokens file."""
    when = "" if created is None else f"created = {format_time(created)}\n"
    until = "" if expires is None else f"expires = {format_time(expires)}\n"
    return f'\n[[tokens]]\nname = "{name}"\nrole = "{role.label}"\nsha256 = "{sha256}"\n{when}{until}'


def validate_name(name: str) -> str:
    if not _NAME_RE.match(name):
        raise ValueError(
            f"token name {name!r} must be 1-128 letters, digits, '.', '_', '@' or '-', starting "
            "with a letter or digit"
        )
    return name


class TokenTable:
    """The tokens of a tokens file; `identify` finds a presented token's holder."""

    def __init__(self, entries: Sequence[TokenEntry]) -> None:
        self._entries = tuple(entries)

    @property
    def names(self) -> list[str]:
        return [entry.name for entry in self._entries]

    @property
    def entries(self) -> tuple[TokenEntry, ...]:
        return self._entries

    @classmethod
    def load(cls, path: Path) -> TokenTable:
        text = read_tokens_file(path)
        try:
            document = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise TokensFileError(f"tokens file {path} cannot be read: {exc}") from None
        return cls.parse(document, str(path))

    @classmethod
    def parse(cls, document: dict[str, Any], source: str) -> TokenTable:
        raw_entries = document.get("tokens", [])
        unknown = set(document) - {"tokens"}
        problems = [f"unknown key {key!r} (only [[tokens]] tables belong here)" for key in sorted(unknown)]
        if not isinstance(raw_entries, list):
            raise TokensFileError(f"tokens file {source}: 'tokens' must be an array of [[tokens]] tables")
        entries: list[TokenEntry] = []
        seen_names: set[str] = set()
        seen_digests: set[str] = set()
        for index, raw in enumerate(raw_entries, start=1):
            where = f"token #{index}"
            if not isinstance(raw, dict) or not _REQUIRED_KEYS <= set(raw) <= _REQUIRED_KEYS | _OPTIONAL_KEYS:
                problems.append(
                    f"{where}: needs exactly the keys name, role and sha256 (and may have created "
                    "and expires)"
                )
                continue
            created, expires = raw.get("created"), raw.get("expires")
            name, role_text, digest = (str(raw["name"]), str(raw["role"]), str(raw["sha256"]).lower())
            where = f"token #{index} ({name!r})"
            try:
                validate_name(name)
                role = Role.parse(role_text)
            except ValueError as exc:
                problems.append(f"{where}: {exc}")
                continue
            if not _SHA256_RE.match(digest):
                problems.append(
                    f"{where}: sha256 must be 64 hex digits (`tesserad tokens hash` prints it), "
                    "never the token itself"
                )
                continue
            if created is not None and not isinstance(created, datetime.date):
                problems.append(
                    f"{where}: created must be a TOML date or date-time such as 2026-01-31T09:00:00Z"
                )
                continue
            # A local time would mean another moment on each machine that reads the file.
            if expires is not None and (
                not isinstance(expires, datetime.datetime) or expires.utcoffset() is None
            ):
                problems.append(
                    f"{where}: expires must be a TOML date-time with its offset, such as 2026-03-02T09:00:00Z"
                )
                continue
            if name in seen_names:
                problems.append(f"{where}: the name is used twice; each holder needs its own name")
            if digest in seen_digests:
                problems.append(f"{where}: the same token is listed twice")
            seen_names.add(name)
            seen_digests.add(digest)
            if expires is not None:
                try:
                    expires = expires.astimezone(datetime.UTC)
                except OverflowError:
                    problems.append(
                        f"{where}: expires is out of range in UTC (before year 1 or after 9999); "
                        "remove it for a token that never expires"
                    )
                    continue
            entries.append(TokenEntry(name, role, bytes.fromhex(digest), created, expires))
        if problems:
            raise TokensFileError(f"tokens file {source}:\n  " + "\n  ".join(problems))
        if not entries:
            raise TokensFileError(
                f"tokens file {source} lists no tokens, so no call could succeed; add one with "
                f"`tesserad tokens add --file {source} --name NAME --role admin`"
            )
        return cls(entries)

    def identify(self, token: str) -> Identity | None:
        """The holder of `token`, or None.

        Compares the digest with every entry in constant time and never stops early, so the
        time taken says nothing about how much of a token, or which entry, matched.
        """
        return self.identify_digest(token_digest(token))

    def identify_digest(self, presented: bytes) -> Identity | None:
        """The holder of the token whose SHA-256 is `presented`, or None; as `identify`.
        An expired token still identifies its holder: the caller refuses it saying so."""
        found: TokenEntry | None = None
        for entry in self._entries:
            if hmac.compare_digest(entry.digest, presented):
                found = entry
        return None if found is None else Identity(found.name, found.role, found.expires)


def token_digest(token: str) -> bytes:
    """The SHA-256 of a presented token, as `TokenTable.identify_digest` takes it."""
    return hashlib.sha256(token.encode()).digest()


@dataclass(frozen=True)
class TokenChanges:
    """What changed between two token tables, by holder name (never a token or its hash)."""

    added: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()
    role_changed: tuple[str, ...] = ()
    # Same name, another token: the holder's old token no longer works.
    replaced: tuple[str, ...] = ()
    expiry_changed: tuple[str, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.added or self.removed or self.role_changed or self.replaced or self.expiry_changed)

    @classmethod
    def between(cls, old: TokenTable, new: TokenTable) -> TokenChanges:
        before = {entry.name: entry for entry in old.entries}
        after = {entry.name: entry for entry in new.entries}
        both = [name for name in after if name in before]
        return cls(
            added=tuple(name for name in after if name not in before),
            removed=tuple(name for name in before if name not in after),
            role_changed=tuple(name for name in both if before[name].role != after[name].role),
            replaced=tuple(name for name in both if before[name].digest != after[name].digest),
            expiry_changed=tuple(name for name in both if before[name].expires != after[name].expires),
        )


# What tells a changed file apart without reading it: an editor's in-place write changes the
# modification time or size, an atomic rename (`tesserad tokens`, a Kubernetes Secret's symlink
# swap) the inode, and a chmod or chown (making an unreadable file readable) the ctime alone.
FileSignature = tuple[int, int, int, int, int]


def file_signature(path: Path) -> FileSignature | None:
    """The file's (device, inode, size, mtime, ctime in ns), following links; None when it cannot
    be stat'ed."""
    try:
        info = os.stat(path)
    except OSError:
        return None
    return (info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns, info.st_ctime_ns)


def guarding_directories(path: Path) -> list[Path]:
    """Every directory above the tokens file up to /, along the path as given and along where
    its links lead, nearest first: whoever can write one can rename what lies below it away and
    put their own in its place. Not a directory whose entry on the way is a mount point (in this
    process's mount table): a mount point cannot be renamed (EBUSY), so a Secret mounted below a
    directory everyone may write (a Dockerfile's `chmod 777 /app`) stays where it is.

    RuntimeError or OSError when the path's links cannot be followed (a link loop)."""
    named, target = path.absolute(), path.resolve()
    # No table (not Linux): no entry is known to be a mount point, so every directory guards.
    mount_points = {mount.mount_point for mount in read_mounts() or []}
    parents = [*guarding_parents(named, mount_points), *guarding_parents(target, mount_points)]
    return list(dict.fromkeys(parents))


def guarding_parents(path: Path, mount_points: Set[Path]) -> list[Path]:
    """The directories above `path` (absolute) whose entry on the way could be renamed away: all
    but those whose entry is one of `mount_points` (as the mount table names them). Not told by
    a change of st_dev, which a btrfs subvolume or an overlayfs shows without being a mount."""
    guarding = []
    entry = path
    for directory in path.parents:
        # The table names mount points with links resolved; the entry itself is not resolved,
        # since a link to a mount point is no mount point and can be renamed.
        if Path(os.path.realpath(directory)) / entry.name not in mount_points:
            guarding.append(directory)
        entry = directory
    return guarding


def check_not_open_to_writes(path: Path) -> None:
    """TokensFileError when any user of the host but root and the daemon's own could change the
    tokens file: the file can be written by its group or by others, or replaced because a
    directory above it (`guarding_directories`) can (without the sticky bit, which keeps others
    from renaming over a file they do not own); or the file or such a directory is owned by
    another user, who could chmod it open. Whoever can change it could give themselves the admin
    role, so the daemon refuses it, as sshd's StrictModes refuses such an authorized_keys file
    (its secure_path walks up to / too).

    A file or directory on a read-only mount (a Kubernetes Secret, a compose secret) cannot be
    changed, whatever its mode or owner says."""
    try:
        own = {path.absolute().parent, path.resolve().parent}
        places = [(path.resolve(), "the file")]
        guarding = guarding_directories(path)
    except (RuntimeError, OSError):
        # A link loop: reading the file says so in its own words.
        return
    for directory in guarding:
        places.append((directory, "its directory" if directory in own else "the directory"))
    for place, what in places:
        try:
            info = os.stat(place)
            read_only = bool(os.statvfs(place).f_flag & os.ST_RDONLY)
        except OSError:
            # Not there, or not stat'able: reading the file says so in its own words.
            continue
        if not read_only:
            _check_place(path, place, what, info)


def _check_place(path: Path, place: Path, what: str, info: os.stat_result) -> None:
    """TokensFileError when `place` (the tokens file `path`, or a directory guarding it) is owned
    by another user than root and the daemon's, or others, or its group (unless the daemon's
    own private group), may write it."""
    named = f"{what} {place}{' above it' if what == 'the directory' else ''}"
    quoted = shlex.quote(str(place))
    if info.st_uid not in (0, os.getuid()):
        change = "write their own token" if what == "the file" else "put their own tokens file"
        raise TokensFileError(
            f"tokens file {path}: {named} is owned by {described_user(info.st_uid)}, not by root or by "
            f"the user tesserad runs as ({described_user(os.getuid())}), so that user could "
            f"{change} there, with the admin role; give it to root or to the user tesserad runs as "
            f"(`chown {user_name(os.getuid())} {quoted}`)"
        )
    sticky = stat.S_ISDIR(info.st_mode) and info.st_mode & stat.S_ISVTX
    writers = info.st_mode & (stat.S_IWGRP | stat.S_IWOTH)
    if writers == stat.S_IWGRP and own_private_group(info.st_gid):
        # Its group's only user is the daemon's (Debian's umask 002, a Kubernetes fsGroup equal
        # to the daemon's gid): the group's write lets nobody else in.
        return
    if not writers or sticky:
        return
    who = "every user of this host" if writers & stat.S_IWOTH else "the users of its group"
    anyone = "anyone" if writers & stat.S_IWOTH else "they"
    classes = ("g" if writers & stat.S_IWGRP else "") + ("o" if writers & stat.S_IWOTH else "")
    raise TokensFileError(
        f"tokens file {path}: {named} can be written by {who} (mode {stat.S_IMODE(info.st_mode):04o}), "
        f"so {anyone} could add a token with the admin role; take their write permission away "
        f"(`chmod {classes}-w {quoted}`)"
    )


# The tokens file's signature and each guarding directory's (device, inode, mode, owner, group):
# the `chmod go-w`, `chown` or `chgrp` of the directory that got the file refused changes it, so the next
# check applies the file. Not a directory's ctime, which every file made or removed in it (in
# /tmp, all the time) changes.
# The directories are None when the path's links cannot be followed (a link loop).
TokensSignature = tuple[FileSignature | None, tuple[tuple[int, int, int, int, int] | None, ...] | None]


def tokens_signature(path: Path) -> TokensSignature:
    """`path`'s TokensSignature (one stat for the file and one per directory above it)."""
    try:
        guarding = guarding_directories(path)
    except (RuntimeError, OSError):
        # Unknown until the loop is undone; the file's refusal (it cannot be read) is logged
        # once, as this signature stays the same from poll to poll.
        return file_signature(path), None
    directories: list[tuple[int, int, int, int, int] | None] = []
    for directory in guarding:
        try:
            info = os.stat(directory)
        except OSError:
            directories.append(None)
            continue
        directories.append((info.st_dev, info.st_ino, info.st_mode, info.st_uid, info.st_gid))
    return file_signature(path), tuple(directories)


class TokenFile:
    """The tokens a daemon uses: its tokens file as last read with success.

    `reload` reads the file again and swaps the table in one assignment, so a caller of
    `table` on another thread sees the old table or the new one, never a mix. A file that
    cannot be used raises TokensFileError and leaves the table as it was.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._signature = tokens_signature(path)
        check_not_open_to_writes(path)
        self.table = TokenTable.load(path)

    def changed(self) -> bool:
        """Whether the file, or the mode or owner of a directory above it, looks different from
        when it was last read (stats, no read)."""
        return tokens_signature(self.path) != self._signature

    def reload(self) -> TokenChanges:
        """Read the file again; the changes (empty when none). TokensFileError keeps the old table.

        The signature is taken before the read: a write landing in between changes it again, so
        the next `changed` sees it. A failed read is remembered too, so a poll does not report
        the same broken file again and again.
        """
        self._signature = tokens_signature(self.path)
        check_not_open_to_writes(self.path)
        table = TokenTable.load(self.path)
        changes = TokenChanges.between(self.table, table)
        self.table = table
        return changes
