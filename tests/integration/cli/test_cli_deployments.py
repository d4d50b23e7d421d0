"""`tessera models deployments MODEL` lists the deployment history a rollback walks back, and
`--expected-revision` makes `deploy` and `rollback` compare-and-set on its newest revision: a
second operator rolling back the same bad revision is refused (exit 3) instead of rolling back
twice."""

from __future__ import annotations

from tessera.cli import EXIT_DAEMON
from tests.integration.sdk.affine import affine_onnx


def test_the_history_and_a_rollback_that_expects_a_revision(tessera_cli, tmp_path):
    model_file = str(affine_onnx(tmp_path / "affine.onnx"))
    for _ in range(2):
        assert tessera_cli("models", "push", "affine", model_file).code == 0
    assert tessera_cli("models", "alias", "affine", "prod", "1").code == 0
    never = tessera_cli("models", "deployments", "affine")
    assert (never.code, never.out.strip()) == (
        0,
        "affine was never deployed: requests without a version or alias go to its latest version",
    )
    assert tessera_cli("models", "deploy", "affine", "prod=100", "--expected-revision", "0").code == 0
    assert (
        tessera_cli("models", "deploy", "affine", "1=90", "2=10", "--shadow", "2", "--comment", "canary").code
        == 0
    )

    first = tessera_cli("models", "rollback", "affine", "--expected-revision", "2")
    assert first.code == 0, first.err
    assert first.out.splitlines()[0] == "affine: rollback of revision 2 to revision 1"
    second = tessera_cli("models", "rollback", "affine", "--expected-revision", "2")
    assert second.code == EXIT_DAEMON
    assert second.err.strip() == (
        "tessera: FAILED_PRECONDITION: model 'affine' is at deployment revision 3, where the call "
        "expected revision 2: another deploy or rollback came first; read its deployment history again "
        "(`tessera models deployments MODEL`) and retry if the change still stands"
    )

    listed = tessera_cli("models", "deployments", "affine")
    assert listed.code == 0, listed.err
    rows = [line.split("│")[1:-1] for line in listed.out.splitlines() if line.startswith("│")]
    assert [[cell.strip() for cell in row[:3]] + [row[5].strip()] for row in rows] == [
        ["3", "alias prod (v1 now) 100%", "", "rollback of revision 2 to revision 1"],
        ["2", "v1 90%, v2 10%", "v2 100%", "canary"],
        ["1", "alias prod (v1 now) 100%", "", ""],
    ]
    as_json = tessera_cli("--json", "models", "deployments", "affine").json()
    assert [d["revision"] for d in as_json] == [3, 2, 1] and as_json[0]["rolled_back_from"] == 2


def test_a_past_revision_names_the_version_its_alias_route_resolves_to_now(tessera_cli, tmp_path):
    # A revision records the alias, not the version it resolved to when deployed: the history
    # must not read as though the revision served the alias's version of today.
    model_file = str(affine_onnx(tmp_path / "affine.onnx"))
    for _ in range(3):
        assert tessera_cli("models", "push", "affine", model_file).code == 0
    assert tessera_cli("models", "alias", "affine", "champion", "2").code == 0
    assert tessera_cli("models", "deploy", "affine", "3=100").code == 0
    assert tessera_cli("models", "deploy", "affine", "champion=80", "1=20").code == 0
    assert tessera_cli("models", "alias", "affine", "champion", "3").code == 0
    assert tessera_cli("models", "rollback", "affine").code == 0

    listed = tessera_cli("models", "deployments", "affine")
    assert listed.code == 0, listed.err
    rows = [line.split("│")[1:-1] for line in listed.out.splitlines() if line.startswith("│")]
    assert [[cell.strip() for cell in row[:2]] for row in rows] == [
        ["3", "v3 100%"],
        ["2", "alias champion (v3 now) 80%, v1 20%"],
        ["1", "v3 100%"],
    ]


def test_the_alias_history_lists_each_move_newest_first(tessera_cli, tmp_path):
    model_file = str(affine_onnx(tmp_path / "affine.onnx"))
    for _ in range(3):
        assert tessera_cli("models", "push", "affine", model_file).code == 0
    assert tessera_cli("models", "alias", "affine", "champion", "2").code == 0
    assert tessera_cli("models", "alias", "affine", "prod", "1").code == 0
    assert tessera_cli("models", "alias", "affine", "champion", "3").code == 0

    listed = tessera_cli("models", "aliases", "affine", "--history")
    assert listed.code == 0, listed.err
    rows = [line.split("│")[1:-1] for line in listed.out.splitlines() if line.startswith("│")]
    moves = [[cell.strip() for cell in row[:3]] for row in rows]
    assert [m for m in moves if m[0] != "latest"] == [
        ["champion", "v2", "v3"],
        ["prod", "-", "v1"],
        ["champion", "-", "v2"],
    ]
    one = tessera_cli("models", "aliases", "affine", "champion", "--history")
    assert [line.split("│")[2].strip() for line in one.out.splitlines() if line.startswith("│")] == [
        "v2",
        "-",
    ]
    as_json = tessera_cli("--json", "models", "aliases", "affine", "champion", "--history").json()
    assert [(e["alias"], e["to_version"]) for e in as_json] == [("champion", 3), ("champion", 2)]
    refused = tessera_cli("models", "aliases", "affine", "champion")
    assert refused.code == 2
    assert "--history" in refused.err
