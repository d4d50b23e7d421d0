"""The Node client's model and artifact downloads across a broken stream, as the Python SDK's
(test_sdk_model_artifact_download_resume.py): they go on from the bytes written, within one call
or, with resume: true, after an earlier call gave up; a partial file of another version or of an
artifact stored again is never resumed into."""

from __future__ import annotations

import hashlib
import json
import os
import stat
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import tessera
from tessera import transfer
from tessera.v1 import training_pb2
from tests.integration.sdk.download_resume import partials
from tests.integration.sdk.test_node_client import (
    NODE_CLIENT,
    node_json,
    node_ready,
    node_script,
    node_waiting,
    resume,
)
from tests.integration.sdk.test_sdk_model_artifact_download_resume import big_onnx
from tests.tmpfs import tmpfs

__all__ = ["node_ready"]

CHUNK = 4096
# What the artifact (random bytes) and the model (big_onnx) downloaded take: 2,048 chunks. A
# download cut past half way has many left, more than a client holds unread: a Node one holds a
# few chunks, a Python one (python_cut_at) was seen to hold 1 MiB, and all it holds past the cut
# still arrives (the proxy's cut closes cleanly), so 2 MiB past it was too few.
SIZE = 8 << 20
FEATURES = SIZE // 4


def model_file(path: Path, seed: int = 0) -> Path:
    """big_onnx of SIZE."""
    return big_onnx(path, seed, FEATURES)


# Each script's `download(progress)` downloads, its result printed as JSON: { ok, progress } or
# { code, message, progress }. `cutAtHalf` stops the script once past half way, says so on stdout
# and waits for the test (which cuts the connection) to send a line.
PRELUDE = """
const fs = require('node:fs');
const seen = [];
let halted = false;
function cutAtHalf(done, total) {
  seen.push(done);
  if (!halted && done >= total / 2) {
    halted = true;
    fs.writeSync(1, 'half\\n');
    fs.readSync(0, Buffer.alloc(1));
  }
}
function record(done) {
  seen.push(done);
}
(async () => {
  const client = new Client(TARGET);
  let result;
  try {
    result = { ok: await download(client), progress: seen };
  } catch (err) {
    result = { code: err.code, message: err.message, progress: seen };
  }
  client.close();
  console.log(JSON.stringify(result));
})();
"""


def node_download(target: str, call: str) -> Any:
    """The result of `call` (a download taking `client` and a progress callback `record`)."""
    return node_json(f"async function download(client) {{ return {call}; }}\n{PRELUDE}", target)


def node_downloads(target: str, calls: list[str]) -> list[Any]:
    """The result of each of `calls` (as node_download's), made one after another in one Node
    process: a process's start is most of a refused call's time."""
    downloads = ",\n".join(f"async (client) => {call}" for call in calls)
    script = f"""
const seen = [];
function record(done) {{
  seen.push(done);
}}
const downloads = [{downloads}];
(async () => {{
  const client = new Client(TARGET);
  const results = [];
  for (const download of downloads) {{
    seen.length = 0;
    try {{
      results.push({{ ok: await download(client), progress: [...seen] }});
    }} catch (err) {{
      results.push({{ code: err.code, message: err.message, progress: [...seen] }});
    }}
  }}
  client.close();
  console.log(JSON.stringify(results));
}})();
"""
    return node_json(script, target)


def node_download_cut(target: str, call: str, at_half: Callable[[], None]) -> Any:
    """The result of `call` (taking `client` and the progress callback `cutAtHalf`), `at_half`
    run once the download is past half way."""
    script = f"async function download(client) {{ return {call}; }}\n{PRELUDE}"
    with node_waiting(node_script(script, target)) as node:
        assert node.stdout is not None
        assert node.stdout.readline() == "half\n"
        at_half()
        resume(node)
        out, err = node.communicate(timeout=120)
    assert node.returncode == 0, err
    return json.loads(out.splitlines()[-1])


@pytest.fixture
def out(tmp_path: Path) -> Path:
    directory = tmp_path / "out"
    directory.mkdir()
    return directory


@pytest.fixture
def weights(tmp_path: Path) -> Path:
    path = tmp_path / "weights.bin"
    path.write_bytes(np.random.default_rng(1).bytes(SIZE))
    return path


@dataclass(frozen=True)
class LoggedWeights:
    """A run with `weights` logged as its artifact weights.bin, and the arguments of a Node
    downloadArtifact of it to `out` (run id, path, directory)."""

    run_id: str
    artifact: training_pb2.RunArtifact
    args: str


@pytest.fixture
def logged(client, weights, out) -> LoggedWeights:
    run_id = client.training.create_run("resume", create_experiment=True).run_id
    artifact = client.training.log_artifact(run_id, weights)
    return LoggedWeights(run_id, artifact, f"{json.dumps(run_id)}, 'weights.bin', {json.dumps(str(out))}")


# A download's options that cut it once past half way (see node_download_cut) and let it reconnect
# no more: it gives up, its bytes kept.
GIVE_UP_AT_HALF = f"progress: cutAtHalf, chunkSize: {CHUNK}, reconnects: 0"


def node_download_through_a_cut(
    daemon, proxy_to, download: str, before_the_cut: Callable[[], object] = lambda: None
) -> Any:
    """The result of the Node `download` (a download call, cutAtHalf its progress callback) through
    a proxy cut once it is past half way, `before_the_cut` run first."""
    proxy = proxy_to(daemon.daemon.port)

    def at_half() -> None:
        before_the_cut()
        proxy.cut()

    return node_download_cut(proxy.target, download, at_half)


def python_resume(daemon, run_id: str, out: Path) -> list[int]:
    """A Python download of run_id's weights.bin to `out` with resume=True: the bytes done at
    each progress report."""
    resumed_from: list[int] = []
    with tessera.Client(daemon.target, timeout=30) as direct:
        direct.training.download_artifact(
            run_id, "weights.bin", out, resume=True, progress=lambda done, _: resumed_from.append(done)
        )
    return resumed_from


def test_node_artifact_download_cut_midway_reconnects_and_goes_on_from_the_bytes_written(
    node_ready, daemon, proxy_to, out, weights, logged
):
    proxy = proxy_to(daemon.daemon.port)
    call = f"client.downloadArtifact({logged.args}, {{ progress: cutAtHalf, chunkSize: {CHUNK} }})"
    found = node_download_cut(proxy.target, call, proxy.cut)
    assert "ok" in found, found
    assert proxy.cuts == 1
    assert found["ok"]["artifact"]["sha256"] == hashlib.sha256(weights.read_bytes()).hexdigest()
    assert (out / "weights.bin").read_bytes() == weights.read_bytes()
    # Resumed, not started again: no byte was written twice.
    assert (
        found["progress"] == sorted(set(found["progress"]))
        and found["progress"][-1] == weights.stat().st_size
    )
    assert partials(out) == []


def test_node_model_download_cut_midway_reconnects_and_goes_on_from_the_bytes_written(
    node_ready, daemon, client, proxy_to, out, tmp_path
):
    model = model_file(tmp_path / "big.onnx")
    client.models.push("big", model)
    proxy = proxy_to(daemon.daemon.port)
    call = (
        f"client.downloadVersion('big', {json.dumps(str(out / 'big.onnx'))}, "
        f"{{ progress: cutAtHalf, chunkSize: {CHUNK} }})"
    )
    found = node_download_cut(proxy.target, call, proxy.cut)
    assert "ok" in found, found
    assert proxy.cuts == 1
    assert (found["ok"]["version"]["model"], found["ok"]["version"]["version"]) == ("big", 1)
    assert found["ok"]["file"] == str(out / "big.onnx")
    assert (out / "big.onnx").read_bytes() == model.read_bytes()
    assert (
        found["progress"] == sorted(set(found["progress"])) and found["progress"][-1] == model.stat().st_size
    )
    assert partials(out) == []


def test_node_artifact_download_that_gave_up_keeps_its_bytes_for_resume(
    node_ready, daemon, proxy_to, out, weights, logged
):
    gave_up = node_download_through_a_cut(
        daemon, proxy_to, f"client.downloadArtifact({logged.args}, {{ {GIVE_UP_AT_HALF} }})"
    )
    assert gave_up["code"] == "UNAVAILABLE", gave_up
    assert "bytes are kept in " in gave_up["message"], gave_up["message"]
    assert gave_up["message"].endswith("; download again with resume: true)"), gave_up["message"]
    assert not (out / "weights.bin").exists() and partials(out)
    resumed = node_download(
        daemon.target, f"client.downloadArtifact({logged.args}, {{ resume: true, progress: record }})"
    )
    assert "ok" in resumed, resumed
    assert (out / "weights.bin").read_bytes() == weights.read_bytes()
    assert resumed["progress"][0] >= weights.stat().st_size // 2
    assert partials(out) == []


def test_node_resume_into_the_partial_file_of_another_model_version_is_refused_and_keeps_it(
    node_ready, daemon, client, proxy_to, out, tmp_path
):
    first = model_file(tmp_path / "big.onnx")
    client.models.push("big", first)
    client.models.push("big", model_file(tmp_path / "second.onnx", seed=1))
    file = json.dumps(str(out / "big.onnx"))
    gave_up = node_download_through_a_cut(
        daemon, proxy_to, f"client.downloadVersion('big', {file}, {{ version: 1, {GIVE_UP_AT_HALF} }})"
    )
    assert gave_up["code"] == "UNAVAILABLE", gave_up
    kept = {name: (out / name).read_bytes() for name in partials(out)}
    refused = node_download(daemon.target, f"client.downloadVersion('big', {file}, {{ resume: true }})")
    message = refused.get("message", "")
    assert "the partial download " in message, refused
    assert "of big v1 (sha256 " in message and "not of big v2 (sha256 " in message, message
    assert "download it without resume: true to start again" in message, message
    assert {name: (out / name).read_bytes() for name in partials(out)} == kept
    assert not (out / "big.onnx").exists()
    resumed = node_download(
        daemon.target, f"client.downloadVersion('big', {file}, {{ version: 1, resume: true }})"
    )
    assert "ok" in resumed, resumed
    assert (out / "big.onnx").read_bytes() == first.read_bytes()
    assert partials(out) == []


def test_node_model_download_by_alias_names_it_as_the_python_sdk_does(
    node_ready, daemon, client, proxy_to, out, tmp_path
):
    client.models.push("big", model_file(tmp_path / "big.onnx"))
    client.models.set_alias("big", "production", 1)
    file = json.dumps(str(out / "big.onnx"))
    gave_up = node_download_through_a_cut(
        daemon,
        proxy_to,
        f"client.downloadVersion('big', {file}, {{ alias: 'production', {GIVE_UP_AT_HALF} }})",
    )
    assert gave_up["code"] == "UNAVAILABLE", gave_up
    assert "(gave up downloading big version production after 0 reconnects" in gave_up["message"], gave_up[
        "message"
    ]


def test_node_artifact_stored_again_smaller_midway_is_refused_as_changed_and_keeps_the_bytes(
    node_ready, daemon, client, proxy_to, out, weights, tmp_path, logged
):
    """The reconnect asks for bytes past the end of the file now stored (OUT_OF_RANGE): the
    artifact changed, and the bytes of it as it was stay, a resume refused as of another file."""
    smaller = tmp_path / "smaller" / "weights.bin"
    smaller.parent.mkdir()
    smaller.write_bytes(b"stored again")
    changed = node_download_through_a_cut(
        daemon,
        proxy_to,
        f"client.downloadArtifact({logged.args}, {{ progress: cutAtHalf, chunkSize: {CHUNK} }})",
        lambda: client.training.log_artifact(logged.run_id, smaller),
    )
    assert changed["code"] == "DATA_LOSS", changed
    message = changed["message"]
    assert f"artifact weights.bin of run {logged.run_id} changed while it was downloading" in message, message
    assert "(it now ends before byte " in message and message.endswith("without resume: true"), message
    assert not (out / "weights.bin").exists()
    (partial,) = (p for p in out.iterdir() if p.name.endswith(".partial"))
    assert weights.read_bytes().startswith(partial.read_bytes()) and partial.stat().st_size
    refused = node_download(daemon.target, f"client.downloadArtifact({logged.args}, {{ resume: true }})")
    assert "the partial download " in refused.get("message", ""), refused
    assert "ok" in node_download(daemon.target, f"client.downloadArtifact({logged.args})")
    assert (out / "weights.bin").read_bytes() == b"stored again"
    assert partials(out) == []


def test_node_resume_of_a_file_damaged_at_the_daemon_keeps_none_of_its_bytes(
    node_ready, daemon, data_dir, out, logged
):
    # The daemon sends every chunk but the last before its hash check fails: those bytes were
    # kept, and the user told to resume from the daemon's damaged bytes.
    sha256 = logged.artifact.sha256
    blob = data_dir / "blobs" / "sha256" / sha256[:2] / sha256[2:]
    damaged = bytearray(blob.read_bytes())
    damaged[100] ^= 0xFF
    blob.chmod(0o644)
    blob.write_bytes(bytes(damaged))
    refused = node_download(
        daemon.target, f"client.downloadArtifact({logged.args}, {{ resume: true, chunkSize: {CHUNK} }})"
    )
    assert refused["code"] == "DATA_LOSS" and "is damaged on disk" in refused["message"], refused
    assert "kept" not in refused["message"] and "resume" not in refused["message"], refused
    assert list(out.iterdir()) == []


def test_node_download_without_resume_starts_again_from_the_first_byte(
    node_ready, daemon, proxy_to, out, weights, logged
):
    node_download_through_a_cut(
        daemon, proxy_to, f"client.downloadArtifact({logged.args}, {{ {GIVE_UP_AT_HALF} }})"
    )
    again = node_download(
        daemon.target, f"client.downloadArtifact({logged.args}, {{ progress: record, chunkSize: {CHUNK} }})"
    )
    assert "ok" in again, again
    assert again["progress"][0] == CHUNK
    assert (out / "weights.bin").read_bytes() == weights.read_bytes()
    assert partials(out) == []


def test_python_resumes_what_a_node_download_kept(node_ready, daemon, proxy_to, out, weights, logged):
    """One partial file and record beside the file, named and written as the Python SDK's."""
    node_download_through_a_cut(
        daemon, proxy_to, f"client.downloadArtifact({logged.args}, {{ {GIVE_UP_AT_HALF} }})"
    )
    resumed_from = python_resume(daemon, logged.run_id, out)
    assert resumed_from[0] >= weights.stat().st_size // 2
    assert (out / "weights.bin").read_bytes() == weights.read_bytes()
    assert partials(out) == []


def test_node_resumes_what_a_python_download_kept(node_ready, daemon, client, proxy_to, out, weights, logged):
    python_cut_at(client, proxy_to, daemon, logged.run_id, out, 2)
    resumed = node_download(
        daemon.target, f"client.downloadArtifact({logged.args}, {{ resume: true, progress: record }})"
    )
    assert "ok" in resumed, resumed
    assert resumed["progress"][0] >= weights.stat().st_size // 2
    assert (out / "weights.bin").read_bytes() == weights.read_bytes()
    assert partials(out) == []


def python_cut_at(client, proxy_to, daemon, run_id: str, out: Path, fraction: int) -> None:
    """A Python download of run_id's weights.bin to `out` cut once past 1/`fraction` of it and
    given up: it keeps its bytes and their record, as a later resume finds them."""
    proxy = proxy_to(daemon.daemon.port)

    def cut(done: int, total: int) -> None:
        if done >= total // fraction and not proxy.cuts:
            proxy.cut()

    with (
        tessera.Client(proxy.target, timeout=30, retry=tessera.RetryPolicy(attempts=1)) as direct,
        pytest.raises(tessera.Unavailable),
    ):
        direct.training.download_artifact(run_id, "weights.bin", out, progress=cut, chunk_size=CHUNK)


def python_sink(out: Path, resume: bool) -> transfer.ResumableDownloadSink[Any]:
    """A Python download to out/weights.bin as the SDK opens it: it holds (locks) the partial file."""
    return transfer.ResumableDownloadSink(out / "weights.bin", None, True, resume, lambda _: "weights.bin")


def python_resume_finds_bytes_kept(out: Path) -> bool:
    """Whether a Python download to out/weights.bin with resume=True would go on from bytes kept."""
    again = python_sink(out, resume=True)
    try:
        return again.resuming()
    finally:
        again.abort(KeyboardInterrupt())


class PythonResumeWritingOn:
    """A Python resume to out/weights.bin, holding its partial file, that writes the next eighth
    of `blob` on from the bytes kept when `write_on` runs, without writing their record again."""

    def __init__(self, out: Path, artifact: training_pb2.RunArtifact, blob: bytes) -> None:
        self.sink = python_sink(out, resume=True)
        self.artifact = artifact
        self.blob = blob

    def write_on(self) -> None:
        self.sink.start(self.artifact)
        self.sink.write(self.blob[self.sink.size : self.sink.size + len(self.blob) // 8])

    def cut(self) -> int:
        """Stops it as a broken stream does, its bytes kept: how many it had written."""
        written = self.sink.size
        self.sink.abort(tessera.Unavailable("cut"))
        return written


def test_node_resume_while_a_python_download_writes_the_partial_file_never_lands_a_wrong_file(
    node_ready, daemon, client, proxy_to, out, weights, logged
):
    """A Python download (which locks the partial file, a lock Node cannot see) starts again from
    the first byte on the partial file a Node resume went on from, then is stopped: the Node
    download ends with the file whole or refused, never with bytes the Python one wrote over."""
    python_cut_at(client, proxy_to, daemon, logged.run_id, out, 2)
    blob = weights.read_bytes()
    holder = python_sink(out, resume=False)

    def python_starts_again() -> None:
        holder.start(logged.artifact)
        holder.write(blob[: len(blob) // 4])
        holder.abort(KeyboardInterrupt())

    found = node_download_cut(
        daemon.target,
        f"client.downloadArtifact({logged.args}, {{ resume: true, progress: cutAtHalf, chunkSize: {CHUNK} }})",
        python_starts_again,
    )
    if "ok" in found:
        assert (out / "weights.bin").read_bytes() == blob
    else:
        assert found["code"] == "DATA_LOSS" and not (out / "weights.bin").exists(), found
    assert partials(out) == []


def test_node_download_keeps_the_record_of_a_python_download_it_did_not_go_on_from(
    node_ready, daemon, out, weights, logged
):
    """A Python download to the same file starts while a Node one runs, and is cut after it
    ended: its bytes and their record stay for its resume."""
    blob = weights.read_bytes()
    holder = python_sink(out, resume=False)

    def python_writes_half() -> None:
        holder.start(logged.artifact)
        holder.write(blob[: len(blob) // 2])

    found = node_download_cut(
        daemon.target,
        f"client.downloadArtifact({logged.args}, {{ progress: cutAtHalf, chunkSize: {CHUNK} }})",
        python_writes_half,
    )
    assert "ok" in found, found
    assert (out / "weights.bin").read_bytes() == blob
    holder.abort(tessera.Unavailable("cut"))
    assert python_resume_finds_bytes_kept(out)


def test_node_resume_that_gives_up_keeps_every_byte_at_the_partial_files_name(
    node_ready, daemon, client, proxy_to, out, weights, logged
):
    python_cut_at(client, proxy_to, daemon, logged.run_id, out, 4)
    gave_up = node_download_through_a_cut(
        daemon, proxy_to, f"client.downloadArtifact({logged.args}, {{ resume: true, {GIVE_UP_AT_HALF} }})"
    )
    assert gave_up["code"] == "UNAVAILABLE", gave_up
    partial, record = transfer.partial_names(out / "weights.bin")
    assert partials(out) == sorted([partial.name, record.name])
    assert partial.stat().st_size >= weights.stat().st_size // 2
    resumed_from = python_resume(daemon, logged.run_id, out)
    assert resumed_from[0] >= weights.stat().st_size // 2
    assert (out / "weights.bin").read_bytes() == weights.read_bytes()
    assert partials(out) == []


def test_node_resume_gives_the_file_the_permissions_of_a_new_one(
    node_ready, daemon, client, proxy_to, out, logged
):
    """As the Python SDK's: a partial file kept private gets, once it is the file, those a file
    the download created would have."""
    python_cut_at(client, proxy_to, daemon, logged.run_id, out, 2)
    partial, _ = transfer.partial_names(out / "weights.bin")
    partial.chmod(0o600)
    assert "ok" in node_download(daemon.target, f"client.downloadArtifact({logged.args}, {{ resume: true }})")
    umask = os.umask(0o077)
    os.umask(umask)
    assert stat.S_IMODE((out / "weights.bin").stat().st_mode) == 0o666 & ~umask


def test_node_download_into_a_missing_directory_names_the_file_asked_for(
    node_ready, daemon, tmp_path, logged
):
    file = tmp_path / "absent" / "weights.bin"
    refused = node_download(
        daemon.target,
        f"client.downloadArtifact({json.dumps(logged.run_id)}, 'weights.bin', {json.dumps(str(file))})",
    )
    assert refused.get("code") == "ENOENT", refused
    assert refused["message"] == f"no directory {file.parent} to write {file} in; create it first", refused


def test_node_resume_with_every_byte_kept_reports_the_whole_file_done(
    node_ready, daemon, proxy_to, out, weights, logged
):
    """No chunk is left to write: the progress callback hears of the kept bytes all the same."""
    node_download_through_a_cut(
        daemon, proxy_to, f"client.downloadArtifact({logged.args}, {{ {GIVE_UP_AT_HALF} }})"
    )
    (partial,) = (p for p in out.iterdir() if p.name.endswith(".partial"))
    partial.write_bytes(weights.read_bytes())
    resumed = node_download(
        daemon.target, f"client.downloadArtifact({logged.args}, {{ resume: true, progress: record }})"
    )
    assert "ok" in resumed, resumed
    assert resumed["progress"] == [weights.stat().st_size]
    assert (out / "weights.bin").read_bytes() == weights.read_bytes()
    assert partials(out) == []


def test_node_download_refuses_a_chunk_size_the_request_would_garble(node_ready, daemon, out, logged):
    """proto-loader sends 1.5 as 1 and 2**32 + 4096 (an int32 field) as 4096, without a word; the
    daemon refuses fewer than 4096 bytes a chunk."""
    sizes = ("1.5", "-1", "2 ** 32 + 4096", "'4096'", "4095")
    calls = [
        call
        for size in sizes
        for call in (
            f"client.downloadArtifact({logged.args}, {{ chunkSize: {size} }})",
            f"client.downloadVersion('absent', {json.dumps(str(out / 'm.onnx'))}, {{ chunkSize: {size} }})",
        )
    ]
    for call, refused in zip(calls, node_downloads(daemon.target, calls), strict=True):
        assert refused.get("message", "").startswith("chunkSize must be a whole number of bytes"), (
            call,
            refused,
        )
    assert list(out.iterdir()) == []


# A download of a 10-byte file written through PartialDownload, sent 11 bytes from byte `from`
# (0: a fresh download; 4: one going on from 4 bytes an earlier one kept).
TOO_MUCH = """
const { PartialDownload } = require(DOWNLOAD_JS);
const header = { sha256: 'ab'.repeat(32), size_bytes: 10 };
const options = (resume) => ({ overwrite: false, resume, describe: () => 'clips:1', progress: undefined });
(async () => {
  if (FROM) {
    const first = await PartialDownload.open(FILE, options(false));
    await first.start(header);
    await first.write(Buffer.alloc(FROM));
    await first.abort({ code: 'UNAVAILABLE' });
  }
  const download = await PartialDownload.open(FILE, options(Boolean(FROM)));
  await download.start(header);
  try {
    await download.write(Buffer.alloc(11 - FROM));
    await download.write(Buffer.alloc(FROM));
  } catch (err) {
    await download.abort(err);
    console.log(JSON.stringify({ code: err.code, details: err.details }));
  }
})();
"""


@pytest.mark.parametrize("stream_from", [0, 4])
def test_node_download_sent_more_than_the_file_names_an_ignored_offset_only_past_the_first_byte(
    node_ready, tmp_path, stream_from
):
    """As the Python SDK's (transfer.sent_too_much): a stream asked from byte 0 that sends too much
    has no offset that could have been dropped."""
    file = tmp_path / "clips.npz"
    script = (
        f"const DOWNLOAD_JS = {json.dumps(str(NODE_CLIENT / 'download.js'))};\n"
        f"const FILE = {json.dumps(str(file))};\nconst FROM = {stream_from};\n{TOO_MUCH}"
    )
    refused = node_json(script, "unused")
    assert refused["code"] == "DATA_LOSS", refused
    if stream_from:
        assert refused["details"] == (
            "the daemon sent more than the 10 bytes of clips:1 (its stream sent from byte 4); a daemon "
            "that ignores the offset asked for (older than this client) sends the file from its first "
            "byte: upgrade tesserad, or download it again without resume: true"
        ), refused
    else:
        said = "the daemon sent more than the 10 bytes of clips:1; download it again"
        assert refused["details"] == said, refused
        assert partials(tmp_path) == [] and not file.exists()


def test_node_download_without_overwrite_leaves_no_temp_file_linked_beside_it(
    node_ready, daemon, out, weights, logged
):
    """It takes its name with a hard link: the temp file's name went on naming the file."""
    assert "ok" in node_download(
        daemon.target, f"client.downloadArtifact({logged.args}, {{ overwrite: false }})"
    )
    assert (out / "weights.bin").read_bytes() == weights.read_bytes()
    assert (out / "weights.bin").stat().st_nlink == 1
    assert partials(out) == []


def test_node_resume_keeps_the_partial_file_a_python_resume_writes_meanwhile(
    node_ready, daemon, client, proxy_to, out, weights, logged
):
    """A Python resume writes the partial file on without writing its record again: the Node
    resume that went on from it removed it at its end, bytes the Python one keeps for its own
    resume included."""
    python_cut_at(client, proxy_to, daemon, logged.run_id, out, 4)
    blob = weights.read_bytes()
    python = PythonResumeWritingOn(out, logged.artifact, blob)
    found = node_download_cut(
        daemon.target,
        f"client.downloadArtifact({logged.args}, {{ resume: true, progress: cutAtHalf, chunkSize: {CHUNK} }})",
        python.write_on,
    )
    assert "ok" in found, found
    assert (out / "weights.bin").read_bytes() == blob
    written = python.cut()
    partial, _ = transfer.partial_names(out / "weights.bin")
    assert partial.read_bytes() == blob[:written]
    assert python_resume_finds_bytes_kept(out)


def test_node_download_that_gives_up_leaves_the_partial_file_a_python_resume_writes_meanwhile(
    node_ready, daemon, client, proxy_to, out, weights, logged
):
    """Its own bytes put in the partial file's place, the Python one's lost theirs."""
    python_cut_at(client, proxy_to, daemon, logged.run_id, out, 4)
    blob = weights.read_bytes()
    python = PythonResumeWritingOn(out, logged.artifact, blob)
    gave_up = node_download_through_a_cut(
        daemon,
        proxy_to,
        f"client.downloadArtifact({logged.args}, {{ resume: true, {GIVE_UP_AT_HALF} }})",
        python.write_on,
    )
    assert gave_up["code"] == "UNAVAILABLE", gave_up
    assert "bytes are kept in " not in gave_up["message"], gave_up["message"]
    written = python.cut()
    partial, record = transfer.partial_names(out / "weights.bin")
    assert partials(out) == sorted([partial.name, record.name])
    assert partial.read_bytes() == blob[:written]


def test_node_resume_without_room_for_a_copy_of_the_kept_bytes_says_so_and_keeps_them(
    node_ready, daemon, client, tmp_path
):
    """A resume copies the kept bytes into its own temp file: it needs free space for them."""
    run_id = client.training.create_run("resume", create_experiment=True).run_id
    blob = os.urandom(256 * 1024)
    (tmp_path / "weights.bin").write_bytes(blob)
    artifact = client.training.log_artifact(run_id, tmp_path / "weights.bin")
    with tmpfs(tmp_path / "disk", "size=320k") as disk:
        partial, record = transfer.partial_names(disk / "weights.bin")
        partial.write_bytes(blob[: 200 * 1024])
        describe = f"artifact weights.bin of run {run_id}"
        record.write_text(json.dumps({"file": describe, "sha256": artifact.sha256, "size_bytes": len(blob)}))
        args = f"{json.dumps(run_id)}, 'weights.bin', {json.dumps(str(disk))}"
        found = node_download(daemon.target, f"client.downloadArtifact({args}, {{ resume: true }})")
        assert found.get("code") == "ENOSPC", found
        message = found["message"]
        assert message.startswith(f"ENOSPC: no space left on device, write '{disk / 'weights.bin'}'"), message
        assert f"the {200 * 1024} bytes kept in {partial} are still there" in message, message
        assert (
            f"a resume needs free space for the whole file ({len(blob)} bytes) beside them: "
            "free that much and download again with resume: true"
        ) in message, message
        assert partial.read_bytes() == blob[: 200 * 1024]
        assert sorted(p.name for p in disk.iterdir()) == sorted([partial.name, record.name])


def test_node_resume_that_fills_the_disk_midway_keeps_the_bytes_and_says_a_resume_needs_room_for_them_all(
    node_ready, daemon, client, tmp_path
):
    """Room for the kept bytes and their copy but not for the whole file: the disk fills while the
    rest streams, and the bytes written are kept at the partial file's name, not lost with the copy."""
    run_id = client.training.create_run("resume", create_experiment=True).run_id
    blob = os.urandom(256 * 1024)
    (tmp_path / "weights.bin").write_bytes(blob)
    artifact = client.training.log_artifact(run_id, tmp_path / "weights.bin")
    kept = 96 * 1024
    with tmpfs(tmp_path / "disk", "size=240k") as disk:
        partial, record = transfer.partial_names(disk / "weights.bin")
        partial.write_bytes(blob[:kept])
        describe = f"artifact weights.bin of run {run_id}"
        record.write_text(json.dumps({"file": describe, "sha256": artifact.sha256, "size_bytes": len(blob)}))
        args = f"{json.dumps(run_id)}, 'weights.bin', {json.dumps(str(disk))}"
        found = node_download(
            daemon.target, f"client.downloadArtifact({args}, {{ resume: true, chunkSize: {CHUNK} }})"
        )
        assert found.get("code") == "ENOSPC", found
        message = found["message"]
        assert message.startswith(f"ENOSPC: no space left on device, write '{disk / 'weights.bin'}'"), message
        held = partial.read_bytes()
        assert kept < len(held) < len(blob) and held == blob[: len(held)]
        assert f"{len(held)} of {len(blob)} bytes are kept in {partial}" in message, message
        assert (
            f"a resume needs free space for the whole file ({len(blob)} bytes) beside them: "
            "free that much and download again with resume: true"
        ) in message, message
        assert sorted(p.name for p in disk.iterdir()) == sorted([partial.name, record.name])
        assert json.loads(record.read_text())["sha256"] == artifact.sha256


def node_resume_racing(target: str, run_id: str, out: Path, swap: str) -> Any:
    """A Node resume to out/weights.bin whose partial file is changed by `swap` (JavaScript run
    with `fs` and `partial` named) once the download looked at it and before it opens it."""
    partial, _ = transfer.partial_names(out / "weights.bin")
    script = f"""
    const files = require('node:fs');
    const partial = {json.dumps(str(partial))};
    const lstatSync = files.lstatSync;
    files.lstatSync = (...args) => {{
      const found = lstatSync(...args);
      if (args[0] === partial) {{
        files.lstatSync = lstatSync;
        {swap};
      }}
      return found;
    }};
    async function download(client) {{
      return client.downloadArtifact({json.dumps(run_id)}, 'weights.bin', {json.dumps(str(out))}, {{ resume: true }});
    }}
    {PRELUDE}
    """
    return node_json(script, target)


def test_node_resume_whose_partial_file_goes_before_it_is_opened_starts_again(
    node_ready, daemon, client, proxy_to, out, weights, logged
):
    python_cut_at(client, proxy_to, daemon, logged.run_id, out, 2)
    found = node_resume_racing(daemon.target, logged.run_id, out, "fs.rmSync(partial)")
    assert "ok" in found, found
    assert (out / "weights.bin").read_bytes() == weights.read_bytes()


def test_node_resume_whose_partial_file_becomes_a_link_before_it_is_opened_is_refused(
    node_ready, daemon, client, proxy_to, out, tmp_path, logged
):
    python_cut_at(client, proxy_to, daemon, logged.run_id, out, 2)
    elsewhere = json.dumps(str(tmp_path / "elsewhere"))
    found = node_resume_racing(
        daemon.target,
        logged.run_id,
        out,
        f"fs.renameSync(partial, {elsewhere}); fs.symlinkSync({elsewhere}, partial)",
    )
    partial, _ = transfer.partial_names(out / "weights.bin")
    assert found.get("message") == (
        f"{out / 'weights.bin'}: its partial download {partial} is not a plain file of yours with one name; remove it"
    ), found
    assert not (out / "weights.bin").exists()


def cancel_at_half(resume_option: str) -> str:
    """A download's options that cancel its calls (as tessera-node does on SIGINT and SIGTERM) once
    it is past half way, `resume_option` among them."""
    return (
        f"{resume_option}, chunkSize: {CHUNK}, "
        "progress: (done, total) => { record(done); if (done >= total / 2) client.cancelCalls(); }"
    )


def test_node_download_with_resume_that_is_cancelled_keeps_its_bytes_for_the_next(
    node_ready, daemon, client, proxy_to, out, weights, logged
):
    """Those an earlier download kept with those written since, as the Python SDK's."""
    python_cut_at(client, proxy_to, daemon, logged.run_id, out, 4)
    cancelled = node_download(
        daemon.target, f"client.downloadArtifact({logged.args}, {{ {cancel_at_half('resume: true')} }})"
    )
    assert cancelled.get("code") == "CANCELLED", cancelled
    blob = weights.read_bytes()
    partial, record = transfer.partial_names(out / "weights.bin")
    assert partials(out) == sorted([partial.name, record.name])
    held = partial.read_bytes()
    assert len(blob) // 2 <= len(held) < len(blob) and held == blob[: len(held)]
    assert not (out / "weights.bin").exists()
    assert python_resume(daemon, logged.run_id, out)[0] == len(held)
    assert (out / "weights.bin").read_bytes() == blob
    assert partials(out) == []


def test_node_download_without_resume_that_is_cancelled_leaves_nothing(
    node_ready, daemon, out, weights, logged
):
    cancelled = node_download(
        daemon.target, f"client.downloadArtifact({logged.args}, {{ {cancel_at_half('resume: false')} }})"
    )
    assert cancelled.get("code") == "CANCELLED", cancelled
    assert list(out.iterdir()) == []


def test_node_download_into_directories_it_made_removes_them_when_it_fails_leaving_them_empty(
    node_ready, daemon, out, logged
):
    """Only those it made: `out` was there before."""
    run = json.dumps(logged.run_id)
    refused = node_download(
        daemon.target, f"client.downloadArtifact({run}, 'absent.bin', {json.dumps(f'{out}/a/b/')})"
    )
    assert refused.get("code") == "NOT_FOUND", refused
    cancelled = node_download(
        daemon.target,
        f"client.downloadArtifact({run}, 'weights.bin', {json.dumps(f'{out}/c/')}, "
        f"{{ {cancel_at_half('resume: false')} }})",
    )
    assert cancelled.get("code") == "CANCELLED", cancelled
    assert list(out.iterdir()) == []


def test_node_download_into_a_directory_it_made_keeps_it_with_the_bytes_kept_for_a_resume(
    node_ready, daemon, out, weights, logged
):
    directory = out / "a" / "b"
    cancelled = node_download(
        daemon.target,
        f"client.downloadArtifact({json.dumps(logged.run_id)}, 'weights.bin', {json.dumps(f'{directory}/')}, "
        f"{{ {cancel_at_half('resume: true')} }})",
    )
    assert cancelled.get("code") == "CANCELLED", cancelled
    partial, record = transfer.partial_names(directory / "weights.bin")
    assert partials(directory) == sorted([partial.name, record.name])
    assert weights.read_bytes().startswith(partial.read_bytes())


def test_node_resume_cancelled_between_its_calls_keeps_the_bytes_it_went_on_from(
    node_ready, daemon, client, proxy_to, out, weights, logged
):
    """Cancelled and closed (as tessera-node does on a signal) as it reports the kept bytes it
    copied, with no call in flight: it sends no call after, and the bytes stay for the next."""
    python_cut_at(client, proxy_to, daemon, logged.run_id, out, 2)
    partial, record = transfer.partial_names(out / "weights.bin")
    kept = partial.read_bytes()
    cancelled = node_download(
        daemon.target,
        f"client.downloadArtifact({logged.args}, {{ resume: true, "
        "progress: (done) => { record(done); client.cancelCalls(); client.close(); } })",
    )
    assert cancelled.get("code") == "CANCELLED", cancelled
    assert cancelled["progress"] == [len(kept)]
    assert partials(out) == sorted([partial.name, record.name])
    assert partial.read_bytes() == kept


@pytest.mark.parametrize("resume", ["true", "false"])
def test_node_model_download_the_daemon_refuses_midway_keeps_its_bytes_only_with_resume(
    node_ready, daemon, client, proxy_to, out, tmp_path, resume
):
    """The version is deleted as the stream is cut: the reconnect is refused (NOT_FOUND), not a
    break to go on after. With resume the bytes written stay for the next, as the Python SDK's."""
    model = model_file(tmp_path / "big.onnx")
    client.models.push("big", model)
    client.models.push("big", model)
    file = json.dumps(str(out / "big.onnx"))
    options = f"version: 1, resume: {resume}, progress: cutAtHalf, chunkSize: {CHUNK}, reconnects: 2"
    refused = node_download_through_a_cut(
        daemon,
        proxy_to,
        f"client.downloadVersion('big', {file}, {{ {options} }})",
        lambda: client.models.delete_version("big", 1),
    )
    assert refused.get("code") == "NOT_FOUND", refused
    if resume == "false":
        assert list(out.iterdir()) == []
        assert "kept" not in refused["message"], refused["message"]
        return
    partial, record = transfer.partial_names(out / "big.onnx")
    assert partials(out) == sorted([partial.name, record.name])
    held = partial.read_bytes()
    size = model.stat().st_size
    assert size // 2 <= len(held) and model.read_bytes().startswith(held)
    assert refused["message"].endswith(
        f"\n{len(held)} of {size} bytes are kept in {partial}; download again with resume: true to go on from them"
    ), refused["message"]


def test_node_whole_download_with_resume_that_cannot_take_its_name_is_kept_for_the_next(
    node_ready, daemon, out, weights, logged
):
    """A file put at the name as the download ends (overwrite: false): the whole file, checked, is
    kept with its record, and the next resume puts it in place, as the Python SDK's."""
    target = json.dumps(str(out / "weights.bin"))
    taken = node_download(
        daemon.target,
        f"client.downloadArtifact({logged.args}, {{ overwrite: false, resume: true, "
        f"progress: (done, total) => {{ if (done === total) fs.writeFileSync({target}, 'another') }} }})",
    )
    size = weights.stat().st_size
    partial, record = transfer.partial_names(out / "weights.bin")
    assert taken.get("message", "").endswith(
        f"\n{size} of {size} bytes are kept in {partial}; download again with resume: true to go on from them"
    ), taken
    assert partial.read_bytes() == weights.read_bytes()
    assert sorted(p.name for p in out.iterdir()) == sorted([partial.name, record.name, "weights.bin"])
    (out / "weights.bin").unlink()
    resumed = node_download(
        daemon.target,
        f"client.downloadArtifact({logged.args}, {{ overwrite: false, resume: true, progress: record }})",
    )
    assert "ok" in resumed, resumed
    assert resumed["progress"] == [size]
    assert (out / "weights.bin").read_bytes() == weights.read_bytes()
    assert partials(out) == []
