"""Tokens file parsing, hashing, constant-time lookup, reloading, and `tesserad tokens add|remove|list|hash`."""

from __future__ import annotations

import datetime
import hmac
import io
import re
import shlex
import stat

import pytest

from tesserad import cli
from tesserad.errors import ResourceExhausted
from tesserad.security import Identity, Role, TokensFileError, TokenTable, hash_token, new_token
from tesserad.security.limits import ConcurrencyGate
from tesserad.security.tokens import (
    MIN_TOKEN_LENGTH,
    TokenChanges,
    TokenFile,
    format_entry,
    format_time,
    parse_lifetime,
    validate_name,
)


def table_of(*entries: tuple[str, Role, str]) -> TokenTable:
    return TokenTable.parse(
        {"tokens": [{"name": n, "role": r.label, "sha256": hash_token(t)} for n, r, t in entries]}, "test"
    )


def test_a_token_identifies_its_holder_and_role():
    alice, bob = new_token(), new_token()
    table = table_of(("alice", Role.ADMIN, alice), ("bob", Role.READER, bob))
    assert table.identify(alice) == Identity("alice", Role.ADMIN)
    assert table.identify(bob) == Identity("bob", Role.READER)
    assert table.identify(alice[:-1]) is None
    assert table.identify("") is None


def test_new_tokens_are_long_and_distinct():
    tokens = {new_token() for _ in range(100)}
    assert len(tokens) == 100
    assert all(t.startswith("tsr_") and len(t) >= 40 for t in tokens)


def test_short_tokens_cannot_be_hashed():
    with pytest.raises(ValueError, match=f"at least {MIN_TOKEN_LENGTH} characters"):
        hash_token("password")


def test_lookup_compares_every_entry_in_constant_time(monkeypatch):
    """Which entry matches (first, last, none) does not change the work done."""
    tokens = [new_token() for _ in range(5)]
    table = table_of(*((f"h{i}", Role.READER, t) for i, t in enumerate(tokens)))
    compared: list[int] = []
    real = hmac.compare_digest

    def counting(a, b):
        compared.append(1)
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", counting)
    for presented in (tokens[0], tokens[-1], new_token()):
        compared.clear()
        table.identify(presented)
        assert len(compared) == 5


def test_the_file_stores_hashes_only(tmp_path):
    token = new_token()
    path = tmp_path / "tokens.toml"
    path.write_text(format_entry("ci", Role.TRAINER, hash_token(token)))
    assert token not in path.read_text()
    assert TokenTable.load(path).identify(token) == Identity("ci", Role.TRAINER)


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ('[[tokens]]\nname = "ci"\nrole = "root"\nsha256 = "' + "a" * 64 + '"\n', "unknown role 'root'"),
        ('[[tokens]]\nname = "ci"\nrole = "admin"\nsha256 = "tsr_plaintoken"\n', "never the token itself"),
        ('[[tokens]]\nname = "ci"\nrole = "admin"\n', "needs exactly the keys name, role and sha256"),
        ('[[tokens]]\nname = "../x"\nrole = "admin"\nsha256 = "' + "a" * 64 + '"\n', "token name '../x'"),
        (
            '[[tokens]]\nname = "a"\nrole = "admin"\nsha256 = "' + "a" * 64 + '"\n'
            '[[tokens]]\nname = "a"\nrole = "reader"\nsha256 = "' + "b" * 64 + '"\n',
            "the name is used twice",
        ),
        (
            '[[tokens]]\nname = "a"\nrole = "admin"\nsha256 = "' + "a" * 64 + '"\n'
            '[[tokens]]\nname = "b"\nrole = "reader"\nsha256 = "' + "a" * 64 + '"\n',
            "the same token is listed twice",
        ),
        ("", "lists no tokens"),
        ('users = ["x"]\n', "unknown key 'users'"),
        ("[[tokens]\n", "cannot be read"),
    ],
)
def test_bad_tokens_files_are_refused_saying_what_to_fix(tmp_path, text, problem):
    path = tmp_path / "tokens.toml"
    path.write_text(text)
    with pytest.raises(TokensFileError) as err:
        TokenTable.load(path)
    assert problem in str(err.value)
    assert str(path) in str(err.value)


def test_a_missing_tokens_file_says_how_to_make_one_in_a_command_that_runs_as_pasted(tmp_path, capsys):
    path = tmp_path / "absent.toml"
    with pytest.raises(TokensFileError) as err:
        TokenTable.load(path)
    said = re.search(r"`tesserad (tokens add [^`]*)`", str(err.value))
    assert said is not None, err.value
    assert cli.main(shlex.split(said[1])) == 0, capsys.readouterr().err
    assert len(TokenTable.load(path).names) == 1


def test_tokens_add_appends_a_hashed_token_and_prints_it_once(tmp_path, capsys):
    path = tmp_path / "tokens.toml"
    assert cli.main(["tokens", "add", "--file", str(path), "--name", "alice", "--role", "admin"]) == 0
    first = capsys.readouterr().out.strip()
    assert cli.main(["tokens", "add", "--file", str(path), "--name", "ci", "--role", "trainer"]) == 0
    second = capsys.readouterr().out.strip()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert first not in path.read_text() and second not in path.read_text()
    table = TokenTable.load(path)
    assert table.identify(first) == Identity("alice", Role.ADMIN)
    assert table.identify(second) == Identity("ci", Role.TRAINER)


def test_tokens_add_refuses_a_name_already_used_with_the_status_tessera_gives_a_refusal(tmp_path, capsys):
    path = tmp_path / "tokens.toml"
    cli.main(["tokens", "add", "--file", str(path), "--name", "alice", "--role", "admin"])
    capsys.readouterr()
    before = path.read_text()
    assert cli.main(["tokens", "add", "--file", str(path), "--name", "alice", "--role", "reader"]) == 3
    # The status first, as `tessera` shows the daemon's ALREADY_EXISTS.
    assert capsys.readouterr().err == (
        f"tesserad tokens: ALREADY_EXISTS: {path} already has a token named 'alice'; pick another name\n"
    )
    assert path.read_text() == before


@pytest.mark.parametrize("name", ["-alice", "al ice", "alice\n", "a" * 129])
def test_tokens_add_refuses_a_bad_name_under_its_usage_as_tessera_says_a_wrong_command_line(
    tmp_path, capsys, name
):
    path = tmp_path / "tokens.toml"
    with pytest.raises(SystemExit) as exit_:
        cli.main(["tokens", "add", "--file", str(path), f"--name={name}", "--role", "reader"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: tesserad tokens add ")
    assert "tesserad tokens add: error: argument --name: token name " in err
    assert not path.exists()


def test_tokens_hash_reads_the_token_from_stdin(monkeypatch, capsys):
    token = new_token()
    monkeypatch.setattr("sys.stdin", io.StringIO(token + "\n"))
    assert cli.main(["tokens", "hash"]) == 0
    assert capsys.readouterr().out.strip() == f'sha256 = "{hash_token(token)}"'


def test_tokens_hash_refuses_a_short_token(monkeypatch, capsys):
    monkeypatch.setattr("sys.stdin", io.StringIO("short\n"))
    assert cli.main(["tokens", "hash"]) == 2
    usage, error = capsys.readouterr().err.splitlines()
    assert usage.startswith("usage: tesserad tokens hash")
    assert error.startswith("tesserad tokens hash: error: a token must be at least ")


def test_the_gate_refuses_over_its_limit_and_names_the_setting():
    gate = ConcurrencyGate(2, "limits.max_concurrent_streams", "streaming calls")
    gate.enter()
    gate.enter()
    with pytest.raises(ResourceExhausted) as err:
        gate.enter()
    assert "limits.max_concurrent_streams = 2" in err.value.message
    assert "TESSERA_LIMITS_MAX_CONCURRENT_STREAMS" in err.value.message
    gate.leave()
    gate.enter()
    assert gate.in_flight == 2


def add(path, name: str, role: str = "reader") -> None:
    assert cli.main(["tokens", "add", "--file", str(path), "--name", name, "--role", role]) == 0


def test_tokens_add_records_when_and_replaces_the_file_whole(tmp_path, capsys):
    path = tmp_path / "tokens.toml"
    add(path, "alice", "admin")
    inode = path.stat().st_ino
    add(path, "ci")
    # A new file, renamed over the old one: a daemon never reads half of it.
    assert path.stat().st_ino != inode
    assert [entry.created is not None for entry in TokenTable.load(path).entries] == [True, True]
    assert list(tmp_path.iterdir()) == [path]


def test_tokens_remove_keeps_the_other_entries_their_comments_and_the_mode(tmp_path, capsys):
    path = tmp_path / "tokens.toml"
    alice, ci, bot = new_token(), new_token(), new_token()
    path.write_text(
        "# the team's tokens\n"
        + "\n# alice, on call\n"
        + format_entry("alice", Role.ADMIN, hash_token(alice)).lstrip("\n")
        + "\n# CI runners\n"
        + format_entry("ci", Role.TRAINER, hash_token(ci)).lstrip("\n")
        + "\n# the bot\n"
        + format_entry("bot", Role.READER, hash_token(bot)).lstrip("\n")
    )
    path.chmod(0o640)

    assert cli.main(["tokens", "remove", "ci", "--file", str(path)]) == 0

    text = path.read_text()
    assert "CI runners" not in text and "# the team's tokens" in text
    assert "# alice, on call" in text and "# the bot" in text
    table = TokenTable.load(path)
    assert table.names == ["alice", "bot"]
    assert table.identify(ci) is None and table.identify(bot) == Identity("bot", Role.READER)
    assert stat.S_IMODE(path.stat().st_mode) == 0o640
    assert "removed 'ci'" in capsys.readouterr().err


def test_tokens_remove_of_an_unknown_name_or_the_last_token_changes_nothing(tmp_path, capsys):
    path = tmp_path / "tokens.toml"
    add(path, "alice", "admin")
    add(path, "ci", "trainer")
    capsys.readouterr()
    before = path.read_text()
    # 3, as `tessera` exits for NOT_FOUND: 2 is a wrong command line.
    assert cli.main(["tokens", "remove", "bob", "--file", str(path)]) == 3
    assert capsys.readouterr().err == (
        f"tesserad tokens: NOT_FOUND: {path} has no token named 'bob'; its holders are: alice, ci "
        f"(`tesserad tokens list --file {path}` shows their roles)\n"
    )
    assert cli.main(["tokens", "remove", "ci", "--file", str(path)]) == 0
    capsys.readouterr()
    before = path.read_text()
    assert cli.main(["tokens", "remove", "alice", "--file", str(path)]) == 3
    assert capsys.readouterr().err.startswith(
        f"tesserad tokens: FAILED_PRECONDITION: 'alice' holds the only token in {path}, "
    )
    assert path.read_text() == before
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_tokens_remove_of_an_unknown_name_shows_a_list_command_that_pastes(tmp_path, capsys):
    path = tmp_path / "team tokens.toml"
    add(path, "alice", "admin")
    capsys.readouterr()
    assert cli.main(["tokens", "remove", "bob", "--file", str(path)]) == 3
    assert f"(`tesserad tokens list --file '{path}'` shows their roles)" in capsys.readouterr().err


def test_tokens_remove_rewrites_entries_it_cannot_cut_out(tmp_path, capsys):
    path = tmp_path / "tokens.toml"
    keep = new_token()
    path.write_text(
        f'tokens = [{{name = "a", role = "admin", sha256 = "{hash_token(keep)}"}}, '
        f'{{name = "b", role = "reader", sha256 = "{hash_token(new_token())}"}}]\n'
    )
    assert cli.main(["tokens", "remove", "b", "--file", str(path)]) == 0
    assert TokenTable.load(path).names == ["a"]
    assert TokenTable.load(path).identify(keep) == Identity("a", Role.ADMIN)
    assert "comments were not kept" in capsys.readouterr().err


def test_tokens_list_shows_holders_never_hashes(tmp_path, capsys):
    path = tmp_path / "tokens.toml"
    add(path, "alice", "admin")
    path.write_text(path.read_text() + format_entry("old", Role.TRAINER, hash_token(new_token())))
    capsys.readouterr()
    assert cli.main(["tokens", "list", "--file", str(path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["NAME", "ROLE", "CREATED", "EXPIRES"]
    assert lines[1].split()[:2] == ["alice", "admin"] and lines[1].split()[2].startswith("20")
    assert lines[1].split()[3] == "never"
    assert lines[2].split() == ["old", "trainer", "-", "never"]
    assert not any(entry.digest.hex() in "\n".join(lines) for entry in TokenTable.load(path).entries)


@pytest.mark.parametrize("value", ['"yesterday"', "09:00:00", "1"])
def test_created_must_be_a_date_or_date_time(tmp_path, value):
    path = tmp_path / "tokens.toml"
    path.write_text(format_entry("a", Role.ADMIN, "a" * 64) + f"created = {value}\n")
    with pytest.raises(TokensFileError, match="created must be a TOML date or date-time"):
        TokenTable.load(path)
    path.write_text(format_entry("a", Role.ADMIN, "a" * 64) + "created = 2026-01-31\n")
    assert str(TokenTable.load(path).entries[0].created) == "2026-01-31"


def test_a_token_file_reload_reports_changes_by_name_and_keeps_the_old_table_on_error(tmp_path):
    path = tmp_path / "tokens.toml"
    alice, bob, carol = new_token(), new_token(), new_token()
    path.write_text(
        format_entry("alice", Role.ADMIN, hash_token(alice))
        + format_entry("bob", Role.READER, hash_token(bob))
    )
    tokens = TokenFile(path)
    assert not tokens.changed()

    path.write_text(
        format_entry("alice", Role.READER, hash_token(alice))
        + format_entry("bob", Role.READER, hash_token(carol))
        + format_entry("dan", Role.TRAINER, hash_token(new_token()))
    )
    assert tokens.changed()
    assert tokens.reload() == TokenChanges(added=("dan",), role_changed=("alice",), replaced=("bob",))
    assert tokens.table.identify(bob) is None and tokens.table.identify(carol) == Identity("bob", Role.READER)

    path.write_text("[[tokens]\n")
    with pytest.raises(TokensFileError, match="cannot be read"):
        tokens.reload()
    assert tokens.table.identify(alice) == Identity("alice", Role.READER)
    # The broken file is not reported again until it changes.
    assert not tokens.changed()
    assert not TokenChanges.between(tokens.table, tokens.table)


@pytest.mark.parametrize(("text", "seconds"), [("90s", 90), ("15m", 900), ("12h", 43200), ("30d", 2592000)])
def test_a_lifetime_takes_seconds_minutes_hours_or_days(text, seconds):
    assert parse_lifetime(text) == datetime.timedelta(seconds=seconds)


@pytest.mark.parametrize("text", ["0d", "0", "-1d", "30", "3w", "1.5h", "", "d"])
def test_tokens_add_refuses_a_lifetime_that_is_not_one_with_a_usage_error(tmp_path, capsys, text):
    path = tmp_path / "tokens.toml"
    argv = ["tokens", "add", "--file", str(path), "--name", "ci", "--role", "reader", f"--expires-in={text}"]
    with pytest.raises(SystemExit) as exit_:
        cli.main(argv)
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "usage:" in err and "a lifetime must be a positive whole number with a unit s, m, h or d" in err
    assert not path.exists()


@pytest.mark.parametrize("text", ["36501d", "3000000d", "99999999999999999999d", "876601h"])
def test_tokens_add_refuses_a_lifetime_over_a_century_with_a_usage_error(tmp_path, capsys, text):
    path = tmp_path / "tokens.toml"
    argv = ["tokens", "add", "--file", str(path), "--name", "ci", "--role", "reader", "--expires-in", text]
    with pytest.raises(SystemExit) as exit_:
        cli.main(argv)
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "usage:" in err and "at most 36500d" in err and "leave --expires-in out" in err
    assert not path.exists()
    assert parse_lifetime("36500d") == datetime.timedelta(days=36500)


def test_tokens_add_writes_an_expiry_and_list_marks_expired_tokens(tmp_path, capsys):
    path = tmp_path / "tokens.toml"
    argv = ["tokens", "add", "--file", str(path), "--name", "ci", "--role", "reader", "--expires-in", "30d"]
    assert cli.main(argv) == 0
    assert "expiring at 20" in capsys.readouterr().err
    entry = TokenTable.load(path).entries[0]
    assert entry.created is not None and entry.expires is not None
    assert entry.expires - entry.created == datetime.timedelta(days=30)
    path.write_text(
        path.read_text()
        + format_entry(
            "old",
            Role.ADMIN,
            hash_token(new_token()),
            expires=datetime.datetime(2020, 1, 1, tzinfo=datetime.UTC),
        )
    )
    assert cli.main(["tokens", "list", "--file", str(path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[1].split()[3] == format_time(entry.expires)
    assert lines[2].split() == ["old", "admin", "-", "2020-01-01T00:00:00Z", "EXPIRED"]
    # Removing another entry keeps each expiry.
    assert cli.main(["tokens", "add", "--file", str(path), "--name", "bot", "--role", "reader"]) == 0
    assert cli.main(["tokens", "remove", "bot", "--file", str(path)]) == 0
    assert [e.expires for e in TokenTable.load(path).entries] == [
        entry.expires,
        datetime.datetime(2020, 1, 1, tzinfo=datetime.UTC),
    ]


def test_an_expired_token_still_names_its_holder_who_is_then_refused():
    token = new_token()
    document = {
        "tokens": [
            {
                "name": "ci",
                "role": "reader",
                "sha256": hash_token(token),
                "expires": datetime.datetime(
                    2026, 3, 2, 10, 0, tzinfo=datetime.timezone(datetime.timedelta(hours=1))
                ),
            }
        ]
    }
    identity = TokenTable.parse(document, "test").identify(token)
    assert identity is not None and identity.expires == datetime.datetime(
        2026, 3, 2, 9, 0, tzinfo=datetime.UTC
    )
    assert not identity.expired(datetime.datetime(2026, 3, 2, 8, 59, 59, tzinfo=datetime.UTC))
    assert identity.expired(datetime.datetime(2026, 3, 2, 9, 0, tzinfo=datetime.UTC))


@pytest.mark.parametrize("value", ["2026-03-02T09:00:00", "2026-03-02", '"30d"'])
def test_expires_must_be_a_date_time_with_its_offset(tmp_path, value):
    path = tmp_path / "tokens.toml"
    path.write_text(format_entry("a", Role.ADMIN, "a" * 64) + f"expires = {value}\n")
    with pytest.raises(TokensFileError, match="expires must be a TOML date-time with its offset"):
        TokenTable.load(path)


@pytest.mark.parametrize("value", ["9999-12-31T23:59:59-01:00", "0001-01-01T00:30:00+01:00"])
def test_an_expiry_with_no_utc_moment_is_refused_saying_what_to_fix(tmp_path, value):
    path = tmp_path / "tokens.toml"
    path.write_text(format_entry("a", Role.ADMIN, "a" * 64) + f"expires = {value}\n")
    with pytest.raises(TokensFileError, match="expires is out of range in UTC"):
        TokenTable.load(path)


def test_a_reload_reports_a_changed_expiry(tmp_path):
    path = tmp_path / "tokens.toml"
    digest = hash_token(new_token())
    path.write_text(format_entry("ci", Role.READER, digest))
    tokens = TokenFile(path)
    path.write_text(
        format_entry("ci", Role.READER, digest, expires=datetime.datetime(2030, 1, 1, tzinfo=datetime.UTC))
    )
    assert tokens.reload() == TokenChanges(expiry_changed=("ci",))


# A tokens file saved in Latin-1 (an accented holder's comment): TOML files are UTF-8.
NOT_UTF8 = b'# tokens\n[[tokens]]\nname = "ci"\nrole = "reader"\n# Zo\xeb\nsha256 = "' + b"0" * 64 + b'"\n'


@pytest.mark.parametrize(
    ("action", "content"),
    [
        (["list"], None),
        (["remove", "ci"], None),
        (["list"], "[[tokens]\n"),
        (["remove", "ci"], "[[tokens]\n"),
        (["add", "--name", "ci", "--role", "reader"], "[[tokens]\n"),
        (["list"], NOT_UTF8),
        (["remove", "ci"], NOT_UTF8),
        (["add", "--name", "ci", "--role", "reader"], NOT_UTF8),
    ],
    ids=[
        "list-missing",
        "remove-missing",
        "list-broken",
        "remove-broken",
        "add-broken",
        "list-not-utf8",
        "remove-not-utf8",
        "add-not-utf8",
    ],
)
def test_a_tokens_file_that_is_missing_or_broken_fails_with_status_1_not_as_a_usage_error(
    tmp_path, capsys, action, content
):
    """A missing or unreadable file is an operational failure (1), as `tesserad restore` and
    `tessera` report one; 2 is for a wrong command line, which this is not."""
    path = tmp_path / "tokens.toml"
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        path.write_text(content)
    assert cli.main(["tokens", action[0], "--file", str(path), *action[1:]]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"tesserad tokens: tokens file {path} ") and "usage:" not in err
    if content == NOT_UTF8:
        assert f"tokens file {path} is not UTF-8 text (byte 52 cannot be decoded)" in err
        assert path.read_bytes() == NOT_UTF8


def test_a_name_or_digest_with_a_line_end_is_refused():
    # `$` also matches before a final newline: such a name would be a second name for the holder.
    with pytest.raises(ValueError, match="token name"):
        validate_name("alice\n")
    digest = hash_token(new_token())
    with pytest.raises(TokensFileError, match="sha256 must be 64 hex digits"):
        TokenTable.parse({"tokens": [{"name": "alice", "role": "reader", "sha256": digest + "\n"}]}, "test")
