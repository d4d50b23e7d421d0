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
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tesserad.security.roles import Role

TOKEN_PREFIX = "tsr_"
MIN_TOKEN_LENGTH = 24
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,127}$")
_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")


class TokensFileError(Exception):
    """The tokens file cannot be used; the message names the file, the entry and the fix."""


@dataclass(frozen=True)
class Identity:
    """Who is calling and what they may do."""

    name: str
    role: Role


@dataclass(frozen=True)
class TokenEntry:
    name: str
    role: Role
    digest: bytes


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


def format_entry(name: str, role: Role, sha256: str) -> str:
    """One `[[tokens]]` table, as appended to a tokens file."""
    return f'\n[[tokens]]\nname = "{name}"\nrole = "{role.label}"\nsha256 = "{sha256}"\n'


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

    @classmethod
    def load(cls, path: Path) -> TokenTable:
        try:
            document = tomllib.loads(path.read_text())
        except FileNotFoundError:
            raise TokensFileError(
                f"tokens file {path} does not exist; create it with `tesserad tokens add --file {path}`"
            ) from None
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
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
            if not isinstance(raw, dict) or set(raw) != {"name", "role", "sha256"}:
                problems.append(f"{where}: needs exactly the keys name, role and sha256")
                continue
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
            if name in seen_names:
                problems.append(f"{where}: the name is used twice; each holder needs its own name")
            if digest in seen_digests:
                problems.append(f"{where}: the same token is listed twice")
            seen_names.add(name)
            seen_digests.add(digest)
            entries.append(TokenEntry(name, role, bytes.fromhex(digest)))
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
        presented = hashlib.sha256(token.encode()).digest()
        found: TokenEntry | None = None
        for entry in self._entries:
            if hmac.compare_digest(entry.digest, presented):
                found = entry
        return None if found is None else Identity(found.name, found.role)
