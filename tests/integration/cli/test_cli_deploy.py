"""`tessera models deploy` refuses a route given twice: it was kept once, and the daemon then
said the weights did not sum to 100."""

from __future__ import annotations

from tessera.cli import EXIT_USAGE
from tests.integration.sdk.affine import affine_onnx


def test_a_route_given_twice_is_refused_naming_it(tessera_cli, tmp_path):
    assert tessera_cli("models", "push", "affine", str(affine_onnx(tmp_path / "affine.onnx"))).code == 0
    twice = tessera_cli("models", "deploy", "affine", "1=50", "1=50")
    assert twice.code == EXIT_USAGE
    assert "route version 1 is given twice; give it one route with the percents added" in twice.err
