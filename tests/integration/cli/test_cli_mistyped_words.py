"""A word or flag a newcomer carried over from a neighbouring command is answered with the one
meant: a spec given to the group that lists what it starts, a flag of a sibling listing."""

from __future__ import annotations

import pytest

from tessera.cli import EXIT_USAGE


def refused(tessera_cli, capsys, *args: str) -> str:
    with pytest.raises(SystemExit) as exited:
        tessera_cli(*args)
    assert exited.value.code == EXIT_USAGE
    return " ".join(capsys.readouterr().err.split())


@pytest.mark.parametrize(
    ("group", "meant"), [("sweeps", "tessera sweep sw.toml"), ("jobs", "tessera train sw.toml")]
)
def test_a_spec_given_to_a_listing_group_names_the_command_that_starts_it(tessera_cli, capsys, group, meant):
    told = refused(tessera_cli, capsys, group, "sw.toml")
    assert f"invalid choice: 'sw.toml'; a spec starts one with `{meant}`" in told, told
    followed = refused(tessera_cli, capsys, group, "sw.toml", "--follow")
    assert f"`{meant}`" in followed, followed
