"""`tessera models deploy` refuses a route given twice: it was kept once, and the daemon then
said the weights did not sum to 100."""

from __future__ import annotations

from tessera.cli import EXIT_DAEMON, EXIT_USAGE
from tests.integration.sdk.affine import affine_onnx


def test_a_route_given_twice_is_refused_naming_it(tessera_cli, tmp_path):
    assert tessera_cli("models", "push", "affine", str(affine_onnx(tmp_path / "affine.onnx"))).code == 0
    twice = tessera_cli("models", "deploy", "affine", "1=50", "1=50")
    assert twice.code == EXIT_USAGE
    assert "route version 1 is given twice; give it one route with the percents added" in twice.err


def test_an_alias_moved_onto_another_routes_version_is_warned_in_commands(tessera_cli, tmp_path):
    artifact = str(affine_onnx(tmp_path / "affine.onnx"))
    for _ in range(2):
        assert tessera_cli("models", "push", "affine", artifact).code == 0
    assert tessera_cli("models", "alias", "affine", "prod", "1").code == 0
    assert tessera_cli("models", "alias", "affine", "canary", "2").code == 0
    same = tessera_cli("models", "deploy", "affine", "canary=50", "latest=50")
    assert same.code == EXIT_DAEMON
    assert (
        "routes[0] (alias 'canary') and routes[1] (alias 'latest') both resolve to version 2, so they "
        "would split nothing between them" in same.err
    )
    assert tessera_cli("models", "deploy", "affine", "prod=90", "canary=10").code == 0

    promoted = tessera_cli("models", "alias", "affine", "prod", "2")
    warning = (
        "warning: routes[0] (alias 'prod') and routes[1] (alias 'canary') both resolve to version 2 now, "
        "so it answers their 100% and they split nothing; deploy one route to it (`tessera models deploy "
        "MODEL ROUTE...`), or move one of the aliases (`tessera models alias MODEL ALIAS VERSION`)"
    )
    assert promoted.code == 0
    assert (promoted.out, promoted.err) == ("affine: prod -> v2\n", f"{warning}\n")
    assert tessera_cli("models", "deployments", "affine").err == f"{warning}\n"


def test_a_push_that_moves_a_routed_alias_warns(tessera_cli, tmp_path):
    artifact = str(affine_onnx(tmp_path / "affine.onnx"))
    for _ in range(2):
        assert tessera_cli("models", "push", "affine", artifact).code == 0
    assert tessera_cli("models", "alias", "affine", "canary", "1").code == 0
    assert tessera_cli("models", "deploy", "affine", "latest=90", "canary=10").code == 0

    pushed = tessera_cli("models", "push", "affine", artifact, "--set-alias", "canary")
    assert pushed.code == 0
    assert "alias canary: v1 -> v3" in pushed.out
    assert pushed.err == (
        "warning: routes[0] (alias 'latest') and routes[1] (alias 'canary') both resolve to version 3 now, "
        "so it answers their 100% and they split nothing; deploy one route to it (`tessera models deploy "
        "MODEL ROUTE...`), or move one of the aliases (`tessera models alias MODEL ALIAS VERSION`)\n"
    )


def test_percents_that_do_not_sum_to_100_are_refused_in_the_words_of_the_help(tessera_cli, tmp_path):
    """The help says VERSION=PERCENT and the daemon said "route weights": the same numbers, in
    words the reader had to match up (the SDK's and the Node client's field is `weight`)."""
    assert tessera_cli("models", "push", "affine", str(affine_onnx(tmp_path / "affine.onnx"))).code == 0
    short = tessera_cli("models", "deploy", "affine", "1=60")
    assert short.code == EXIT_DAEMON
    assert short.err == (
        "tessera: INVALID_ARGUMENT: route weights are percents of the traffic and must sum to 100, got 60\n"
    )


def test_routes_to_versions_of_other_output_shapes_are_refused(tessera_cli, tmp_path):
    # Exit 0 before: predict then answered [?, 4] or [?, 5] by the split.
    assert tessera_cli("models", "push", "m", str(affine_onnx(tmp_path / "four.onnx"))).code == 0
    five = affine_onnx(tmp_path / "five.onnx", features=5)
    assert tessera_cli("models", "push", "m", str(five)).code == 0
    mixed = tessera_cli("models", "deploy", "m", "2=50", "1=50")
    assert mixed.code == EXIT_DAEMON
    assert (
        "FAILED_PRECONDITION: routes[1] and routes[0] send requests to versions that answer differently: "
        in (mixed.err)
    )
    assert "input 'input': shape [-1, 4] vs [-1, 5]" in mixed.err
