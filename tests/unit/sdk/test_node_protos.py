"""Where clients/node finds the .proto contract: ../../protos from proto.js (this checkout's
protos/), or the directory TESSERA_PROTO_DIR names; a copy of the client without either is told
what to set, not shown a file-not-found stack."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
NODE_CLIENT = ROOT / "clients" / "node"


def _require_proto(directory: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    environment = {k: v for k, v in os.environ.items() if k != "TESSERA_PROTO_DIR"}
    return subprocess.run(
        ["node", "-e", "require('./proto.js'); console.log('loaded')"],
        cwd=directory,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**environment, **env},
    )


@pytest.fixture
def copied_client(tmp_path: Path) -> Path:
    if shutil.which("node") is None:
        pytest.skip("node is not installed; install Node.js 18+ to test clients/node")
    copy = tmp_path / "service" / "vendor" / "tessera-node"
    copy.mkdir(parents=True)
    shutil.copy(NODE_CLIENT / "proto.js", copy)
    return copy


@pytest.mark.parametrize("named", [False, True])
def test_a_copy_without_the_protos_is_told_what_to_set(
    copied_client: Path, tmp_path: Path, named: bool
) -> None:
    missing = tmp_path / "no-protos"
    answer = _require_proto(copied_client, {"TESSERA_PROTO_DIR": str(missing)} if named else {})
    assert answer.returncode != 0
    looked = missing if named else (copied_client / ".." / ".." / "protos").resolve()
    said = "TESSERA_PROTO_DIR" if named else "../../protos from proto.js"
    assert (
        f"tessera's .proto files are not in {looked} ({said}): set TESSERA_PROTO_DIR to the protos/ "
        "directory of the tessera checkout the daemon was built from"
    ) in answer.stderr
    assert "ENOENT" not in answer.stderr


def test_tessera_proto_dir_names_the_protos(copied_client: Path) -> None:
    if not (NODE_CLIENT / "node_modules" / "@grpc" / "proto-loader").is_dir():
        pytest.skip("clients/node/node_modules is missing; run `npm ci` in clients/node")
    (copied_client / "node_modules").symlink_to(NODE_CLIENT / "node_modules")
    answer = _require_proto(copied_client, {"TESSERA_PROTO_DIR": str(ROOT / "protos")})
    assert (answer.returncode, answer.stdout.strip()) == (0, "loaded"), answer.stderr
