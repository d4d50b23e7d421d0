"""`tesserad tokens add|remove|list|hash`: keep only tokens' hashes in the tokens file.

Every change writes the whole file to a temporary file beside it and renames it over the old
one, so a daemon reading it (on SIGHUP or when it sees the file change) finds the old file or
the new one, never half of one. The new file keeps the old one's permissions and owner (the
daemon may read it through its group); a new file is 0600.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import fcntl
import os
import re
import shlex
import sys
import tempfile
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tesserad.security import Role, TokensFileError, TokenTable, hash_token, new_token
from tesserad.security.tokens import (
    TokenEntry,
    format_entry,
    format_time,
    parse_lifetime,
    read_tokens_file,
    utc_now,
    validate_name,
)

_HEADER = (
    "# tesserad tokens file: each token is stored as its SHA-256, never in clear.\n"
    "# Add one with `tesserad tokens add --file THIS_FILE --name NAME --role reader|trainer|admin`.\n"
)
_APPLY = (
    "A running tesserad applies it on SIGHUP (`systemctl reload tesserad`, `kill -HUP PID`), "
    "or within security.tokens_reload_interval_s when that is not 0."
)
_TABLE_HEADER = re.compile(r"^\s*\[\[\s*tokens\s*\]\]")


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    tokens = commands.add_parser(
        "tokens",
        help="make, remove and list client tokens (the file keeps their hashes only)",
        description=(
            "Manage the tokens file named by security.tokens_file. A running tesserad reads it "
            "again on SIGHUP and when the file changes (security.tokens_reload_interval_s), "
            "without a restart: a removed token's next call is refused, and its open streams "
            "end with UNAUTHENTICATED. Exit status, as `tessera`'s: 0 done; 1 the file is missing, "
            "cannot be read or written, or holds a wrong entry; 2 the command line is wrong (a bad "
            "name or --expires-in, a short token to hash), said under the action's usage; 3 the file "
            "refuses the change, and the message starts with the status `tessera` would show: "
            "NOT_FOUND (no token of that name), ALREADY_EXISTS (a name already used) or "
            "FAILED_PRECONDITION (the last token to remove)."
        ),
    )
    actions = tokens.add_subparsers(dest="tokens_command", required=True, metavar="ACTION")
    add = actions.add_parser(
        "add",
        help="make a random token, add its hash and role to the file, print the token once",
        description=(
            "Make a random token for holder NAME with ROLE (reader: read and predict; trainer: "
            "also push datasets and versions, train, track runs, export; admin: also aliases, "
            "deployments, loading, deletes and backups), add its SHA-256 to the file and print "
            "the token on stdout, once: the file never holds it."
        ),
    )
    add.add_argument("--file", type=Path, required=True, help="tokens file (created if missing)")
    add.add_argument(
        "--name", type=_holder_name, required=True, help="who holds the token; shown in audit logs"
    )
    add.add_argument("--role", required=True, choices=[r.label for r in Role], help="what it may do")
    add.add_argument(
        "--expires-in",
        type=_lifetime,
        metavar="LIFETIME",
        help="refuse the token after this long: a whole number with s, m, h or d (30d); default: never",
    )
    remove = actions.add_parser(
        "remove",
        help="remove a holder's token from the file (revoke it)",
        description="Remove the token of holder NAME from the file; other entries and comments stay.",
    )
    remove.add_argument("name", metavar="NAME", help="the holder's name, as `tesserad tokens list` shows it")
    remove.add_argument("--file", type=Path, required=True, help="tokens file")
    listing = actions.add_parser(
        "list",
        help="list the holders: name, role, when the token was made and expires (never the token)",
        description="List the file's holders: name, role, when each token was made and when it expires.",
    )
    listing.add_argument("--file", type=Path, required=True, help="tokens file")
    hashing = actions.add_parser(
        "hash",
        help="print the sha256 of a token read from stdin (for tokens made elsewhere)",
        description="Reads one token from standard input (so it stays out of shell history) and "
        "prints the line to put in a tokens file.",
    )
    for action in (add, remove, listing, hashing):
        action.set_defaults(tokens_parser=action)


# Exit statuses beyond 0 (done), as `tessera`'s table has them (EXIT_STATUS_HELP there): a
# script handles a name not in the file as it handles NOT_FOUND from the daemon. Written out
# here, as the daemon does not import the SDK.
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_REFUSED = 3


class Refused(Exception):
    """The file as it stands refuses the change: the name is not in it, or already is, or it is
    the last token. `code` is the gRPC status name the daemon would answer such a refusal with;
    `tessera` exits 3 for those and starts its message with the name, and so does this."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


def run(args: argparse.Namespace) -> int:
    if args.tokens_command == "hash":
        return _hash(sys.stdin.readline().strip(), args.tokens_parser)
    try:
        if args.tokens_command == "add":
            return _add(args.file, args.name, Role.parse(args.role), args.expires_in)
        if args.tokens_command == "remove":
            return _remove(args.file, args.name)
        return _list(args.file)
    except TokensFileError as exc:
        # The file is missing or wrong: a failure here (1), as `tessera` says one; 2 is for a
        # wrong command line.
        print(f"tesserad tokens: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except Refused as exc:
        print(f"tesserad tokens: {exc.code}: {exc}", file=sys.stderr)
        return EXIT_REFUSED
    except OSError as exc:
        print(f"tesserad tokens: {exc.filename or args.file}: {exc.strerror or exc}", file=sys.stderr)
        return EXIT_FAILED


def _holder_name(text: str) -> str:
    try:
        return validate_name(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _lifetime(text: str) -> datetime.timedelta:
    try:
        return parse_lifetime(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _add(path: Path, name: str, role: Role, lifetime: datetime.timedelta | None) -> int:
    with _locked(path):
        text = read_tokens_file(path) if path.exists() else ""
        document = _document(text, path)
        # A file of comments only (as a new one starts) has no tokens yet, and that is fine here.
        if document.get("tokens") and name in TokenTable.parse(document, str(path)).names:
            raise Refused("ALREADY_EXISTS", f"{path} already has a token named {name!r}; pick another name")
        token = new_token()
        created = utc_now().replace(microsecond=0)
        expires = None if lifetime is None else created + lifetime
        entry = format_entry(name, role, hash_token(token), created, expires)
        new_text = (text or _HEADER) + ("" if not text or text.endswith("\n") else "\n") + entry
        TokenTable.parse(_document(new_text, path), str(path))
        _replace(path, new_text)
    print(token)
    until = "" if expires is None else f", expiring at {format_time(expires)}"
    print(
        f"added {name!r} ({role.label}{until}) to {path}; this is the only time the token is shown. {_APPLY}",
        file=sys.stderr,
    )
    return 0


def _remove(path: Path, name: str) -> int:
    with _locked(path):
        table = TokenTable.load(path)
        if name not in table.names:
            known = ", ".join(sorted(table.names))
            raise Refused(
                "NOT_FOUND",
                f"{path} has no token named {name!r}; its holders are: {known} "
                f"(`tesserad tokens list --file {shlex.quote(str(path))}` shows their roles)",
            )
        if table.names == [name]:
            raise Refused(
                "FAILED_PRECONDITION",
                f"{name!r} holds the only token in {path}, and a tokens file without tokens cannot "
                "be used (no call could succeed); add another token first, or turn token "
                "authentication off by unsetting security.tokens_file",
            )
        text = read_tokens_file(path)
        new_text = _without_entry(text, name)
        kept = {entry.name: entry for entry in table.entries if entry.name != name}
        if new_text is None or _entries_of(new_text, path) != kept:
            # Entries written some other way (an inline array, several per table): write the
            # remaining ones afresh; their comments cannot be kept.
            new_text = _HEADER + "".join(
                format_entry(e.name, e.role, e.digest.hex(), e.created, e.expires) for e in kept.values()
            )
            print(
                f"tesserad tokens: {path} was rewritten in the standard layout; its comments were not kept",
                file=sys.stderr,
            )
        _replace(path, new_text)
    print(f"removed {name!r} from {path}. {_APPLY}", file=sys.stderr)
    return 0


def _list(path: Path) -> int:
    table = TokenTable.load(path)
    now = utc_now()
    rows = [
        (
            entry.name,
            entry.role.label,
            "-" if entry.created is None else format_time(entry.created),
            _expiry(entry, now),
        )
        for entry in table.entries
    ]
    width = max(len("NAME"), *(len(row[0]) for row in rows))
    created_width = max(len("CREATED"), *(len(row[2]) for row in rows))
    print(f"{'NAME':<{width}}  {'ROLE':<7}  {'CREATED':<{created_width}}  EXPIRES")
    for name, role, created, expires in rows:
        print(f"{name:<{width}}  {role:<7}  {created:<{created_width}}  {expires}")
    return 0


def _expiry(entry: TokenEntry, now: datetime.datetime) -> str:
    if entry.expires is None:
        return "never"
    when = format_time(entry.expires)
    return f"{when} EXPIRED" if now >= entry.expires else when


def _hash(token: str, parser: argparse.ArgumentParser) -> int:
    try:
        digest = hash_token(token)
    except ValueError as exc:
        # A wrong command line (a short token), said as argparse says its own.
        parser.print_usage(sys.stderr)
        print(f"{parser.prog}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    print(f'sha256 = "{digest}"')
    return 0


def _without_entry(text: str, name: str) -> str | None:
    """`text` without the `[[tokens]]` table of `name` and the comment lines just above it;
    None when no one table holds exactly that entry."""
    lines = text.splitlines(keepends=True)
    starts = [i for i, line in enumerate(lines) if _TABLE_HEADER.match(line)]
    for index, start in enumerate(starts):
        end = starts[index + 1] if index + 1 < len(starts) else len(lines)
        # The comments and blank lines above the next table belong to it, not to this one.
        while end > start + 1 and (not lines[end - 1].strip() or lines[end - 1].lstrip().startswith("#")):
            end -= 1
        try:
            body = tomllib.loads("".join(lines[start + 1 : end]))
        except tomllib.TOMLDecodeError:
            return None
        if body.get("name") != name:
            continue
        first = start
        while first > 0 and lines[first - 1].lstrip().startswith("#"):
            first -= 1
        return "".join(lines[:first] + lines[end:])
    return None


def _entries_of(text: str, path: Path) -> dict[str, TokenEntry]:
    try:
        table = TokenTable.parse(tomllib.loads(text), str(path))
    except (tomllib.TOMLDecodeError, TokensFileError):
        return {}
    return {entry.name: entry for entry in table.entries}


def _document(text: str, path: Path) -> dict[str, Any]:
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise TokensFileError(f"tokens file {path} cannot be read: {exc}; fix it by hand first") from None


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on the file's directory, so two `tesserad tokens` runs do not
    each write the file over the other's change."""
    directory = os.open(path.resolve().parent, os.O_RDONLY)
    try:
        fcntl.flock(directory, fcntl.LOCK_EX)
        yield
    finally:
        os.close(directory)


def _replace(path: Path, text: str) -> None:
    """Write `text` to a temporary file beside `path`, with its mode and owner, and rename it over."""
    target = path.resolve()
    try:
        old = os.stat(target)
    except FileNotFoundError:
        old = None
    fd, temporary = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as file:
            file.write(text)
            file.flush()
            os.fsync(file.fileno())
        if old is not None:
            os.chmod(temporary, old.st_mode & 0o7777)
            if (old.st_uid, old.st_gid) != (os.getuid(), os.getgid()):
                try:
                    os.chown(temporary, old.st_uid, old.st_gid)
                except PermissionError:
                    raise PermissionError(
                        f"cannot give the new {target} the old one's owner {old.st_uid}:{old.st_gid} "
                        "(the daemon may read it through them); run this as that user or as root"
                    ) from None
        os.replace(temporary, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise
    directory = os.open(target.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)
