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
        ["3", "alias prod (v1) 100%", "", "rollback of revision 2 to revision 1"],
        ["2", "v1 90%, v2 10%", "v2 100%", "canary"],
        ["1", "alias prod (v1) 100%", "", ""],
    ]
    as_json = tessera_cli("--json", "models", "deployments", "affine").json()
    assert [d["revision"] for d in as_json] == [3, 2, 1] and as_json[0]["rolled_back_from"] == 2
