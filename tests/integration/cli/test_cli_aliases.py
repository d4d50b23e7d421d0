"""`tessera models aliases` lists every alias of a model, page after page; `unalias` deletes one."""

from __future__ import annotations

from tests.integration.sdk.affine import affine_onnx


def test_aliases_lists_every_page_and_unalias_deletes(tessera_cli, client, tmp_path):
    client.models.push("affine", affine_onnx(tmp_path / "affine.onnx"))
    names = [f"canary-{i:03}" for i in range(120)]  # more than the 100 a page held once
    for name in names:
        client.models.set_alias("affine", name, 1)

    listed = tessera_cli("--json", "models", "aliases", "affine")
    assert listed.code == 0
    assert [(a["alias"], a["version"]) for a in listed.json()] == [(n, 1) for n in [*names, "latest"]]
    table = tessera_cli("models", "aliases", "affine")
    assert table.code == 0 and "canary-119" in table.out and "latest" in table.out

    client.models.deploy("affine", {"canary-000": 100})
    refused = tessera_cli("models", "unalias", "affine", "canary-000")
    assert refused.code != 0 and "do not name it (`tessera models deploy MODEL ROUTE...`), or roll back" in (
        refused.err
    )
    deleted = tessera_cli("models", "unalias", "affine", "canary-001")
    assert deleted.code == 0 and "affine: alias canary-001 deleted" in deleted.out
    after = [a["alias"] for a in tessera_cli("--json", "models", "aliases", "affine").json()]
    assert "canary-001" not in after and len(after) == 120
