"""client.models.push_batch (UploadVersionBatch) against a real daemon: many files in one call,
all or nothing, from the blocking and the asyncio client."""

from __future__ import annotations

import asyncio

import pytest

import tessera
import tessera.aio
from tessera.models import VersionFile


def test_push_batch_registers_every_file_in_order(client, make_onnx):
    files = [make_onnx(f"m{i}", scale=float(i + 1)) for i in range(3)]
    versions = client.models.push_batch(
        [
            VersionFile("affine", files[0], params={"scale": "1"}),
            VersionFile("other", files[1], set_alias="candidate"),
            VersionFile("affine", files[2], description="third"),
        ]
    )
    assert [(v.model, v.version) for v in versions] == [("affine", 1), ("other", 1), ("affine", 2)]
    assert versions[0].params["scale"] == "1" and "candidate" in versions[1].aliases
    assert client.models.version("affine", 2).description == "third"


def test_a_version_files_alias_its_old_name_warns_as_push_does(client, make_onnx):
    """VersionFile(alias=) moved the alias with no word while push(alias=) warned: one name, set_alias."""
    with pytest.warns(
        DeprecationWarning, match=r"VersionFile\(alias=\.\.\.\) is deprecated: use set_alias="
    ) as caught:
        old = VersionFile("affine", make_onnx("old"), alias="staging")
    assert caught[0].filename == __file__
    [moved] = client.models.push_batch([old])
    assert "staging" in moved.aliases
    with pytest.raises(TypeError, match=r"models\.push_batch: pass set_alias= alone; alias= is its old name"):
        VersionFile("affine", make_onnx("both"), alias="a", set_alias="b")


def test_push_batch_with_one_bad_file_registers_none(client, make_onnx, tmp_path):
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"not an onnx model")
    good = make_onnx("good")
    with pytest.raises(tessera.InvalidArgument, match=r"items\[1\]: .*not a valid ONNX model"):
        client.models.push_batch([VersionFile("affine", good), VersionFile("affine", junk)])
    with pytest.raises(tessera.NotFound):
        client.models.get("affine")


def test_push_batch_from_the_asyncio_client(daemon, make_onnx):
    async def push() -> list[int]:
        async with tessera.aio.Client(daemon.target) as client:
            pushed = await client.models.push_batch(
                [VersionFile("affine", make_onnx(f"m{i}", scale=float(i + 1))) for i in range(4)]
            )
            return [v.version for v in pushed]

    assert asyncio.run(push()) == [1, 2, 3, 4]
