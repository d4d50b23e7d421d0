"""`tesserad tokens add|hash`: make tokens and keep only their hashes in the tokens file."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from tesserad.security import Role, TokensFileError, TokenTable, hash_token, new_token
from tesserad.security.tokens import format_entry, validate_name

_HEADER = (
    "# tesserad tokens file: each token is stored as its SHA-256, never in clear.\n"
    "# Add one with `tesserad tokens add --file THIS_FILE --name NAME --role reader|trainer|admin`.\n"
)


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    tokens = commands.add_parser(
        "tokens",
        help="make tokens for clients and store their hashes",
        description="Manage the tokens file named by security.tokens_file; restart tesserad to apply.",
    )
    actions = tokens.add_subparsers(dest="tokens_command", required=True, metavar="ACTION")
    add = actions.add_parser(
        "add",
        help="make a random token, append its hash and role to the file, print the token once",
    )
    add.add_argument("--file", type=Path, required=True, help="tokens file (created if missing)")
    add.add_argument("--name", required=True, help="who holds the token; shown in audit logs")
    add.add_argument("--role", required=True, choices=[r.label for r in Role], help="what it may do")
    actions.add_parser(
        "hash",
        help="print the sha256 of a token read from stdin (for tokens made elsewhere)",
        description="Reads one token from standard input (so it stays out of shell history) and "
        "prints the line to put in a tokens file.",
    )


def run(args: argparse.Namespace) -> int:
    try:
        if args.tokens_command == "add":
            return _add(args.file, args.name, Role.parse(args.role))
        return _hash(sys.stdin.readline().strip())
    except (ValueError, TokensFileError) as exc:
        print(f"tesserad tokens: {exc}", file=sys.stderr)
        return 2


def _add(path: Path, name: str, role: Role) -> int:
    validate_name(name)
    if path.exists():
        table = TokenTable.load(path)
        if name in table.names:
            raise ValueError(f"{path} already has a token named {name!r}; pick another name")
    token = new_token()
    entry = format_entry(name, role, hash_token(token))
    # Owner-only: the file holds no secrets, but who holds which role is nobody else's business.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    with os.fdopen(fd, "a") as file:
        if file.tell() == 0:
            file.write(_HEADER)
        file.write(entry)
    TokenTable.load(path)
    print(token)
    print(
        f"added {name!r} ({role.label}) to {path}; this is the only time the token is shown. "
        "Restart tesserad to apply.",
        file=sys.stderr,
    )
    return 0


def _hash(token: str) -> int:
    print(f'sha256 = "{hash_token(token)}"')
    return 0
