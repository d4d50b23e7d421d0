"""client.models against a real daemon."""

from __future__ import annotations

import asyncio
import errno
import re
import sys
import threading
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import tessera
import tessera.aio
import tessera.transfer
from tessera.models import INLINE_BYTES
from tessera.transport import AioConnection, Connection
from tessera.v1 import registry_pb2
from tests.fsyncs import recorded_fsyncs
from tests.tmpfs import tmpfs


@pytest.fixture
def two_versions(client, make_onnx):
    client.models.push("affine", make_onnx("a", scale=2.0), description="first")
    client.models.push("affine", make_onnx("b", scale=3.0), set_alias="staging")
    return "affine"


def test_push_registers_an_onnx_version_with_progress_and_alias(client, onnx_file):
    progress: list[tuple[int, int]] = []
    version = client.models.push(
        "affine",
        onnx_file,
        set_alias="production",
        params={"scale": "2"},
        chunk_size=64,
        progress=lambda done, total: progress.append((done, total)),
    )
    assert (version.model, version.version) == ("affine", 1)
    assert "production" in version.aliases
    assert [t.name for t in version.signature.inputs] == ["input"]
    assert progress[-1] == (onnx_file.stat().st_size, onnx_file.stat().st_size)
    assert len(progress) > 1


def test_get_list_update_and_versions(client, two_versions):
    model = client.models.get("affine")
    assert (model.latest_version, model.version_count, model.aliases["staging"]) == (2, 2, 2)
    assert [m.name for m in client.models.list(prefix="aff")] == ["affine"]
    assert [v.version for v in client.models.versions("affine")] == [2, 1]
    assert client.models.version("affine").version == 2
    assert client.models.version("affine", 1).description == "first"
    assert client.models.version("affine", "staging").version == 2
    updated = client.models.update("affine", description="y = ax + b", set_tags={"team": "ml"})
    assert updated.description == "y = ax + b" and updated.tags["team"] == "ml"
    assert [m.name for m in client.models.list(tags={"team": "ml"})] == ["affine"]


def test_model_listings_read_again_and_make_frames(client, two_versions):
    """`len(list(ms)), len(list(ms))` was 1, 0: a listing was a generator, read once."""
    models = client.models.list()
    assert len(list(models)) == len(list(models)) == 1
    versions = client.models.versions("affine")
    frame = versions.to_pandas()
    assert frame["version"].tolist() == [2, 1] and frame["format"].tolist() == ["onnx", "onnx"]
    assert frame["description"].tolist()[1] == "first" and "staging" in frame["aliases"].tolist()[0]
    assert str(frame["created_at"].dt.tz) == "UTC" and "signature" not in frame.columns
    assert [v.version for v in versions] == [2, 1]
    assert models.to_pandas()["name"].tolist() == ["affine"]
    # An empty listing's frame has its item's columns (it had none), as the async one's has.
    empty = client.models.list(prefix="zz").to_pandas()
    assert empty.empty and list(empty.columns) == list(models.to_pandas().columns)
    assert "name" in empty.columns and str(empty["created_at"].dt.tz) == "UTC"


def test_aliases_move_and_keep_a_history(client, two_versions):
    assert client.models.set_alias("affine", "production", 1).version == 1
    assert client.models.set_alias("affine", "production", 2, expected_version=1).version == 2
    with pytest.raises(tessera.FailedPrecondition):
        client.models.set_alias("affine", "production", 1, expected_version=1)
    assert client.models.alias("affine", "production").version == 2
    assert {a.alias for a in client.models.aliases("affine")} >= {"production", "staging"}
    history = list(client.models.alias_history("affine", "production"))
    assert [(e.from_version, e.to_version) for e in history] == [(1, 2), (0, 1)]
    client.models.delete_alias("affine", "production")
    with pytest.raises(tessera.NotFound):
        client.models.alias("affine", "production")
    with pytest.raises(tessera.InvalidArgument, match="latest"):
        client.models.set_alias("affine", "latest", 1)


def test_aliases_pages_through_every_alias_sync_and_aio(daemon, client, two_versions):
    canaries = [f"canary-{i:02}" for i in range(11)]
    for name in canaries:
        client.models.set_alias("affine", name, 1)
    every = [*canaries, "staging", "latest"]
    assert [a.alias for a in client.models.aliases("affine", page_size=5)] == every
    assert [a.alias for a in client.models.aliases("affine")] == every

    async def scenario():
        async with tessera.aio.Client(daemon.target) as aio_client:
            return [a.alias async for a in aio_client.models.aliases("affine", page_size=2)]

    assert asyncio.run(scenario()) == every


def test_compare_lineage_and_download(client, two_versions, tmp_path):
    diff = client.models.compare("affine", 1, "staging")
    assert (diff.a.version, diff.b.version) == (1, 2)
    assert diff.same_signature
    lineage = client.models.lineage("affine", 2)
    assert lineage.version.version == 2
    header = client.models.download("affine", tmp_path / "copy.onnx", version=1)
    assert header.version == 1
    assert (tmp_path / "copy.onnx").read_bytes() == (tmp_path / "a.onnx").read_bytes()


def test_a_download_with_overwrite_false_refuses_a_file_there_sync_and_aio(
    daemon, client, two_versions, tmp_path
):
    """The replacing default stays for existing callers; the CLI asks for the refusal."""
    copy = tmp_path / "out" / "copy.onnx"
    copy.parent.mkdir()
    copy.write_bytes(b"mine")
    with pytest.raises(FileExistsError) as refused:
        client.models.download("affine", copy, version=1, overwrite=False)
    assert refused.value.filename == str(copy) and copy.read_bytes() == b"mine"

    async def scenario() -> None:
        async with tessera.aio.Client(daemon.target) as aio_client:
            with pytest.raises(FileExistsError):
                await aio_client.models.download("affine", copy, version=1, overwrite=False)

    asyncio.run(asyncio.wait_for(scenario(), 60))
    assert copy.read_bytes() == b"mine" and list(copy.parent.iterdir()) == [copy]
    client.models.download("affine", copy, version=1)
    assert copy.read_bytes() == (tmp_path / "a.onnx").read_bytes()


def test_a_refused_download_opens_no_stream_sync_and_aio(daemon, client, two_versions, tmp_path, monkeypatch):
    """overwrite=False refusing the file is decided before the download's stream is opened, so
    no call is left to cancel (or to the garbage collector)."""
    streams: list[Any] = []

    def recorded(server_stream: Callable[..., Any]) -> Callable[..., Any]:
        def record(*args: Any) -> Any:
            streams.append(server_stream(*args))
            return streams[-1]

        return record

    monkeypatch.setattr(Connection, "server_stream", recorded(Connection.server_stream))
    monkeypatch.setattr(AioConnection, "server_stream", recorded(AioConnection.server_stream))
    copy = tmp_path / "copy.onnx"
    copy.write_bytes(b"mine")
    with pytest.raises(FileExistsError):
        client.models.download("affine", copy, version=1, overwrite=False)

    async def scenario() -> None:
        async with tessera.aio.Client(daemon.target) as aio_client:
            with pytest.raises(FileExistsError):
                await aio_client.models.download("affine", copy, version=1, overwrite=False)

    asyncio.run(asyncio.wait_for(scenario(), 60))
    assert streams == [] and copy.read_bytes() == b"mine"


def claim_at_the_end(name: Path) -> tessera.transfer.Progress:
    """A progress callback that creates a file at `name` once the last chunk has come, as another
    program could while the download finishes."""

    def claim(done: int, total: int) -> None:
        if done == total:
            name.write_bytes(b"theirs")

    return claim


def test_a_download_with_overwrite_false_keeps_a_file_that_came_after_every_check(
    client, two_versions, tmp_path, monkeypatch
):
    """The refusal holds to the moment the download takes the name, not only at the checks."""
    copy = tmp_path / "out" / "copy.onnx"
    copy.parent.mkdir()
    # Every look at the name is made before the file comes: only placing the download is left.
    monkeypatch.setattr(tessera.transfer, "check_free", lambda path, overwrite: None)
    with pytest.raises(FileExistsError) as refused:
        client.models.download("affine", copy, version=1, progress=claim_at_the_end(copy), overwrite=False)
    assert refused.value.filename == str(copy)
    assert copy.read_bytes() == b"theirs" and list(copy.parent.iterdir()) == [copy]


def test_where_hard_links_are_refused_a_download_checks_the_name_then_renames(
    client, two_versions, tmp_path, monkeypatch
):
    """A filesystem without hard links (FAT answers EPERM) still takes downloads, and refuses a
    file that came while one ran."""

    def no_hard_links(source: Path, target: Path) -> None:
        raise PermissionError(errno.EPERM, "Operation not permitted", str(source), None, str(target))

    monkeypatch.setattr(tessera.transfer.os, "link", no_hard_links)
    copy = tmp_path / "out" / "copy.onnx"
    copy.parent.mkdir()
    client.models.download("affine", copy, version=1, overwrite=False)
    assert copy.read_bytes() == (tmp_path / "a.onnx").read_bytes()
    late = copy.with_name("late.onnx")
    with pytest.raises(FileExistsError):
        client.models.download("affine", late, version=1, progress=claim_at_the_end(late), overwrite=False)
    assert late.read_bytes() == b"theirs" and sorted(copy.parent.iterdir()) == [copy, late]


def test_deploy_rollback_and_their_errors(client, two_versions):
    with pytest.raises(tessera.NotFound):
        client.models.deployment("affine")
    first = client.models.deploy("affine", {1: 100}, comment="v1")
    second = client.models.deploy("affine", {1: 90, "staging": 10}, shadow=2, shadow_percent=50)
    assert second.revision == first.revision + 1
    assert sorted(r.weight for r in client.models.deployment("affine").routes) == [10, 90]
    assert [d.revision for d in client.models.deployments("affine")] == [second.revision, first.revision]
    restored = client.models.rollback("affine")
    assert [r.version for r in restored.routes] == [1]
    with pytest.raises(tessera.InvalidArgument, match="100"):
        client.models.deploy("affine", {1: 50})


@pytest.mark.parametrize("weight", [2**31, 2**63, -(2**31) - 1])
def test_a_weight_or_percent_past_int32_is_invalid_argument_naming_the_range(client, two_versions, weight):
    # The message's int32 fields cannot hold them: protobuf's bare "Value out of range" came out.
    with pytest.raises(tessera.InvalidArgument, match=rf"routes\[1\]\.weight must be 1\.\.100, got {weight}"):
        client.models.deploy("affine", {1: 50, 2: weight})
    with pytest.raises(tessera.InvalidArgument, match=rf"shadow_percent must be 1\.\.100, got {weight}"):
        client.models.deploy("affine", {1: 100}, shadow=2, shadow_percent=weight)
    with pytest.raises(tessera.NotFound):
        client.models.deployment("affine")


@pytest.mark.parametrize("percent", [101, 2**31 - 1, -5])
def test_a_shadow_percent_past_1_to_100_is_refused_naming_the_argument_passed(client, two_versions, percent):
    # Also where the daemon would refuse it: it names its proto field, shadow.percent.
    with pytest.raises(tessera.InvalidArgument) as raised:
        client.models.deploy("affine", {1: 100}, shadow=2, shadow_percent=percent)
    assert str(raised.value) == f"INVALID_ARGUMENT: shadow_percent must be 1..100, got {percent}"
    with pytest.raises(tessera.NotFound):
        client.models.deployment("affine")


def test_a_shadow_percent_of_0_is_refused_not_taken_as_100(client, two_versions):
    # On the wire 0 means "unset", which the daemon reads as the default of 100%.
    with pytest.raises(tessera.InvalidArgument, match="leave the shadow out"):
        client.models.deploy("affine", {1: 100}, shadow=2, shadow_percent=0)
    with pytest.raises(tessera.NotFound):
        client.models.deployment("affine")


@pytest.mark.parametrize("number", [2**63, -(2**63) - 1])
def test_a_version_past_int64_is_invalid_argument_not_a_bare_value_error(client, two_versions, number):
    calls = [
        ("version", lambda: client.models.version("affine", number)),
        ("version", lambda: client.models.set_alias("affine", "prod", number)),
        ("expected_version", lambda: client.models.set_alias("affine", "prod", 1, expected_version=number)),
        ("version", lambda: client.models.delete_version("affine", number)),
        ("routes[0].version", lambda: client.models.deploy("affine", {number: 100})),
        ("shadow.version", lambda: client.models.deploy("affine", {1: 100}, shadow=number)),
    ]
    for field, call in calls:
        with pytest.raises(
            tessera.InvalidArgument, match=rf"^INVALID_ARGUMENT: {re.escape(field)} must be a version"
        ):
            call()
    assert [a.alias for a in client.models.aliases("affine")] == ["staging", "latest"]


def test_delete_rules_and_not_found_messages(client, two_versions):
    with pytest.raises(tessera.FailedPrecondition):
        client.models.delete_version("affine", 2)
    client.models.delete_version("affine", 1)
    with pytest.raises(tessera.FailedPrecondition):
        client.models.delete("affine")
    assert client.models.delete("affine", force=True) == 1
    with pytest.raises(tessera.NotFound, match="'affine'"):
        client.models.get("affine")
    with pytest.raises(tessera.AlreadyExists):
        client.models.create("fresh")
        client.models.create("fresh")


def test_bad_uploads_are_refused_with_what_to_fix(client, tmp_path, onnx_file):
    with pytest.raises(ValueError, match="format"):
        client.models.push("m", onnx_file.rename(tmp_path / "model.bin"))
    weights = tmp_path / "w.safetensors"
    weights.write_bytes(b"\0" * 16)
    with pytest.raises(ValueError, match="architecture"):
        client.models.push("m", weights)
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"not a model")
    with pytest.raises(tessera.InvalidArgument):
        client.models.push("m", broken)
    with pytest.raises(tessera.NotFound):
        client.models.push("absent", tmp_path / "model.bin", format="onnx", create=False)


def test_a_torch_model_or_state_dict_passed_as_the_path_says_how_to_push_it(client):
    """A notebook's model object went on to fail in pathlib: "expected str, bytes or os.PathLike
    object, not Linear"."""
    import torch

    module = torch.nn.Linear(4, 2)
    with pytest.raises(TypeError, match=r"not a torch module \(Linear\); export it to ONNX") as raised:
        client.models.push("m", module)
    assert "safetensors.torch.save_file(model.state_dict()" in str(raised.value)
    assert "Bring your own model" in str(raised.value)
    with pytest.raises(TypeError, match=r"not a mapping \(OrderedDict: a state_dict\?\); save the weights"):
        client.models.push("m", module.state_dict())
    with pytest.raises(TypeError, match=r"artifact file \(str or Path\): \.onnx, or \.safetensors"):
        client.models.push("m", b"model.onnx")
    assert list(client.models.list()) == []


def test_aio_models(daemon, onnx_file, tmp_path):
    async def scenario():
        async with tessera.aio.Client(daemon.target) as client:
            pushed = await client.models.push("affine", onnx_file, set_alias="production")
            names = [m.name async for m in client.models.list()]
            version = await client.models.version("affine", "production")
            header = await client.models.download("affine", tmp_path / "copy.onnx")
            with pytest.raises(tessera.NotFound):
                await client.models.get("nope")
            return pushed, names, version, header

    pushed, names, version, header = asyncio.run(scenario())
    assert pushed.version == version.version == header.version == 1
    assert names == ["affine"]
    assert (tmp_path / "copy.onnx").read_bytes() == onnx_file.read_bytes()


def ok_calls(daemon, method: str) -> float:
    """How many calls of a Registry RPC the daemon answered OK, from its metrics endpoint."""
    url = f"http://127.0.0.1:{daemon.daemon.metrics_port}/metrics"
    text = urllib.request.urlopen(url, timeout=5).read().decode()
    line = f'tessera_rpc_total{{code="OK",method="{method}",service="tessera.v1.Registry"}} '
    return sum(float(row.removeprefix(line)) for row in text.splitlines() if row.startswith(line))


def wide_onnx(path: Path, features: int) -> Path:
    """output = input + bias, with a bias of `features` floats (a file of about 4 * features bytes)."""
    bias = numpy_helper.from_array(np.ones(features, np.float32), "bias")
    graph = helper.make_graph(
        [helper.make_node("Add", ["input", "bias"], ["output"])],
        "wide",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", features])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", features])],
        [bias],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def test_push_sends_a_small_artifact_in_one_message_and_streams_a_larger_one(
    daemon, client, onnx_file, tmp_path
):
    wide = wide_onnx(tmp_path / "wide.onnx", 20_000)
    assert onnx_file.stat().st_size <= INLINE_BYTES < wide.stat().st_size
    small = client.models.push("affine", onnx_file)

    async def push_async() -> registry_pb2.ModelVersion:
        async with tessera.aio.Client(daemon.target) as aio_client:
            return await aio_client.models.push("affine", onnx_file)

    again = asyncio.run(push_async())
    large = client.models.push("wide", wide, chunk_size=16 * 1024)
    assert (small.version, again.version, large.version) == (1, 2, 1)
    assert ok_calls(daemon, "UploadVersionInline") == 2
    assert ok_calls(daemon, "UploadVersion") == 1
    client.models.download("affine", tmp_path / "small.onnx", version=2)
    client.models.download("wide", tmp_path / "large.onnx")
    assert (tmp_path / "small.onnx").read_bytes() == onnx_file.read_bytes()
    assert (tmp_path / "large.onnx").read_bytes() == wide.read_bytes()


def test_a_download_filling_its_disk_leaves_nothing_and_names_the_file(client, tmp_path):
    """Models, datasets and run artifacts download through the same temp file: with chunks under
    its write buffer, what was left in the buffer failed again as it was closed, so the temp
    file stayed, filling the disk, and the error named no file."""
    rng = np.random.default_rng(0)
    dataset = client.datasets.push("noise", x=rng.normal(size=64 * 1024).astype(np.float32))
    with tmpfs(tmp_path / "disk", f"size={dataset.size_bytes // 2}") as disk:
        with pytest.raises(OSError, match="No space left") as raised:
            client.datasets.download("noise", disk / "noise.npz", chunk_size=4096)
        assert raised.value.errno == errno.ENOSPC
        assert raised.value.filename == str(disk / "noise.npz")
        assert list(disk.iterdir()) == []


def test_a_download_is_on_the_disk_before_it_takes_its_name(client, onnx_file, tmp_path, monkeypatch):
    """Its bytes are fsynced before it takes its name, and its directory after, as a backup's
    are: a power cut after the download returns never leaves an empty or short file there."""
    client.models.push("affine", onnx_file)
    synced = recorded_fsyncs(monkeypatch)
    out = tmp_path / "out"
    out.mkdir()
    out = out.resolve()  # as /proc names the files
    client.models.download("affine", out / "copy.onnx")
    ours = [path for path in synced if path == str(out) or path.startswith(f"{out}/")]
    assert len(ours) == 2, synced
    assert re.fullmatch(rf"{re.escape(str(out))}/\.copy\.onnx\.[0-9a-f]{{8}}\.partial", ours[0]), ours
    assert ours[1] == str(out)


def test_a_download_to_a_directory_writes_the_clis_default_name_there_sync_and_aio(
    daemon, client, two_versions, tmp_path
):
    header = client.models.download("affine", tmp_path, version=1)
    assert header.version == 1
    assert (tmp_path / "affine-v1.onnx").read_bytes() == (tmp_path / "a.onnx").read_bytes()
    # A str ending in "/" is a directory, made where missing; the alias is pinned to its version.
    client.models.download("affine", f"{tmp_path}/new/", version="staging")
    assert (tmp_path / "new" / "affine-v2.onnx").read_bytes() == (tmp_path / "b.onnx").read_bytes()

    async def scenario():
        async with tessera.aio.Client(daemon.target) as aio_client:
            return await aio_client.models.download("affine", f"{tmp_path}/aio/")

    assert asyncio.run(scenario()).version == 2
    assert (tmp_path / "aio" / "affine-v2.onnx").read_bytes() == (tmp_path / "b.onnx").read_bytes()


class _Stopped(Exception):
    pass


def _stop(written: int, total: int) -> None:
    raise _Stopped


def test_a_download_into_a_directory_it_made_that_fails_leaves_no_directory_sync_and_aio(
    daemon, client, two_versions, tmp_path
):
    before = set(tmp_path.iterdir())
    with pytest.raises(_Stopped):
        client.models.download("affine", f"{tmp_path}/made/deeper/", version=1, progress=_stop)
    assert set(tmp_path.iterdir()) == before

    async def scenario():
        async with tessera.aio.Client(daemon.target) as aio_client:
            await aio_client.models.download("affine", f"{tmp_path}/made/aio/", version=1, progress=_stop)

    with pytest.raises(_Stopped):
        asyncio.run(scenario())
    assert set(tmp_path.iterdir()) == before


_MADE_ON: dict[str, str] = {}


def _record_mkdir_thread(event: str, args: tuple[Any, ...]) -> None:
    if event == "os.mkdir" and str(args[0]).startswith(tuple(_MADE_ON)):
        _MADE_ON[next(p for p in _MADE_ON if str(args[0]).startswith(p))] = threading.current_thread().name


sys.addaudithook(_record_mkdir_thread)


def test_an_aio_download_makes_its_directory_off_the_event_loop(daemon, two_versions, tmp_path):
    _MADE_ON[f"{tmp_path}/made"] = ""

    async def scenario():
        async with tessera.aio.Client(daemon.target) as aio_client:
            await aio_client.models.download("affine", f"{tmp_path}/made/aio/", version=1)
        return threading.current_thread().name

    loop_thread = asyncio.run(scenario())
    assert (tmp_path / "made" / "aio" / "affine-v1.onnx").is_file()
    assert _MADE_ON.pop(f"{tmp_path}/made") not in ("", loop_thread)


def test_set_alias_moves_an_alias_and_alias_its_old_name_warns(client, make_onnx):
    pushed = client.models.push("affine", make_onnx("a"), set_alias="staging")
    assert "staging" in pushed.aliases
    with pytest.warns(
        DeprecationWarning, match=r"models\.push\(alias=\.\.\.\) is deprecated: use set_alias="
    ) as caught:
        moved = client.models.push("affine", make_onnx("b", scale=3.0), alias="staging")
    assert "staging" in moved.aliases and caught[0].filename == __file__
    ensemble = client.models.register_ensemble("ens", ["affine:1", "affine:2"], set_alias="production")
    assert "production" in ensemble.aliases
    with pytest.warns(DeprecationWarning, match=r"models\.register_ensemble\(alias=\.\.\.\) is deprecated"):
        again = client.models.register_ensemble("ens", ["affine:1", "affine:2"], alias="canary")
    assert client.models.version("ens", "canary").version == again.version
    with pytest.raises(TypeError, match=r"models\.push: pass set_alias= alone; alias= is its old name"):
        client.models.push("affine", make_onnx("c"), alias="a", set_alias="b")
