"""A version named as the tables show it ("v2") or as other tools write it ("model:2") is taken,
or refused with the words that name it."""

from __future__ import annotations

import pytest

from tessera.cli import EXIT_USAGE
from tests.integration.sdk.affine import affine_onnx


def refused(tessera_cli, capsys, *args: str) -> str:
    with pytest.raises(SystemExit) as exited:
        tessera_cli(*args)
    assert exited.value.code == EXIT_USAGE
    return " ".join(capsys.readouterr().err.split())


@pytest.fixture
def two_versions(client, tmp_path):
    model = affine_onnx(tmp_path / "affine.onnx")
    client.models.push("affine", model)
    client.models.push("affine", model)
    client.models.set_alias("affine", "staging", 1)


def test_models_alias_takes_a_version_as_the_tables_show_it(tessera_cli, client, two_versions):
    pointed = tessera_cli("models", "alias", "affine", "champion", "v2")
    assert pointed.code == 0 and "affine: champion -> v2" in pointed.out, pointed.err
    assert client.models.version("affine", "champion").version == 2


def test_models_alias_to_an_alias_says_to_name_its_version(tessera_cli, client, two_versions):
    result = tessera_cli("models", "alias", "affine", "champion", "staging")
    assert result.code == EXIT_USAGE, result.err
    told = " ".join(result.err.split())
    assert "'staging' is an alias, which points at v1; an alias points at a version number" in told, told
    assert "`tessera models alias affine champion 1`" in told, told
    assert [a.alias for a in client.models.aliases("affine")] == ["staging", "latest"]


@pytest.mark.parametrize(
    "command",
    [
        ("models", "show", "{model}"),
        ("models", "download", "{model}"),
        ("load", "{model}"),
        ("unload", "{model}"),
        ("stats", "{model}"),
        ("export", "onnx", "{model}"),
        ("predict", "{model}", "--input", "x.npz"),
        ("explain", "{model}", "--input", "x.npz"),
    ],
)
def test_model_and_version_together_says_to_write_version(tessera_cli, capsys, command):
    numbered = refused(tessera_cli, capsys, *[word.format(model="affine:6") for word in command])
    assert "'affine:6' names a model and a version together; to name version 6, write `--version 6`" in (
        numbered
    ), numbered
    aliased = refused(tessera_cli, capsys, *[word.format(model="affine:staging") for word in command])
    assert "to name the version alias staging points at, write `--alias staging`" in aliased, aliased


@pytest.mark.parametrize("given", ["affine:", ":6", ":"])
def test_model_with_an_empty_part_around_the_colon_is_refused_plainly(tessera_cli, capsys, given):
    # "affine:" was told "to name the version alias  points at, write `--alias `".
    told = refused(tessera_cli, capsys, "models", "show", given)
    assert f"{given!r} is no model's name: a model's name holds no ':'" in told, told
    assert "--alias `" not in told and "alias  points" not in told, told
