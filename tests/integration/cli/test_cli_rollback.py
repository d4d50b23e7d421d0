"""`tessera models rollback` says what it changed: after a rollback of the first deployment,
that the model has no deployment."""

from __future__ import annotations

import pytest

from tessera.cli import EXIT_DAEMON
from tests.integration.sdk.affine import affine_onnx


@pytest.fixture
def model_file(tmp_path):
    return affine_onnx(tmp_path / "affine.onnx")


def test_rolling_back_the_first_deploy_says_the_model_has_no_deployment(tessera_cli, model_file):
    assert tessera_cli("models", "push", "affine", str(model_file)).code == 0
    assert tessera_cli("models", "deploy", "affine", "1=100").code == 0
    rolled = tessera_cli("models", "rollback", "affine")
    assert rolled.code == 0, rolled.err
    assert rolled.out.strip() == (
        "affine: no deployment (revision 2: rollback of revision 1 to no deployment); "
        "requests without a version or alias go to the latest version"
    )
    again = tessera_cli("models", "rollback", "affine")
    assert again.code == EXIT_DAEMON and again.err.startswith("tessera: FAILED_PRECONDITION: ")
    assert "no deployment to roll back" in again.err

    assert tessera_cli("models", "deploy", "affine", "1=100").code == 0
    as_json = tessera_cli("--json", "models", "rollback", "affine").json()
    assert as_json["undeployed"] is True and as_json["routes"] == []
    assert (as_json["revision"], as_json["rolled_back_from"]) == (4, 3)
