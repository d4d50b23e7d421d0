"""The SDK says the fix of a daemon message in its own words: every RPC a daemon error message
names has an SDK call to say instead, and each call the table says is one the client has."""

from __future__ import annotations

import inspect
import pickle
import re
from pathlib import Path

import grpc
import pytest

import tessera
from tessera.datasets import Datasets
from tessera.inference import Inference
from tessera.models import Models
from tessera.sdk_words import CALL_BY_RPC, in_sdk_words
from tessera.system import System
from tessera.training import Training
from tests.unit.sdk.test_rpc_commands import DAEMON_SOURCE, RPC_NAMES, rpc_names_in_error_messages

PARTS = {
    "models": Models,
    "datasets": Datasets,
    "training": Training,
    "inference": Inference,
    "system": System,
}


def test_every_rpc_named_in_a_daemon_error_message_has_an_sdk_call():
    named: dict[str, list[str]] = {}
    for path in sorted(Path(DAEMON_SOURCE).rglob("*.py")):
        if path.name.endswith(("_pb2.py", "_pb2_grpc.py")):
            continue
        for name in rpc_names_in_error_messages(path.read_text(encoding="utf-8")):
            named.setdefault(name, []).append(str(path.relative_to(DAEMON_SOURCE)))
    assert named, "the scan found no message naming an RPC: is it still reading the daemon's source?"
    unmapped = {name: files for name, files in named.items() if name not in CALL_BY_RPC}
    assert not unmapped, f"add these RPCs to tessera.sdk_words.CALL_BY_RPC: {unmapped}"


def test_the_table_names_real_rpcs_and_real_sdk_calls():
    assert set(CALL_BY_RPC) <= RPC_NAMES
    for call in CALL_BY_RPC.values():
        found = re.fullmatch(r"`client\.(\w+)\.(\w+)\((.*)\)`", call)
        assert found is not None, call
        part, method, arguments = found.groups()
        parameters = inspect.signature(getattr(PARTS[part], method).__wrapped__).parameters
        named = [word.partition("=")[0] for word in arguments.split(", ") if word and word != "..."]
        assert set(named) <= set(parameters), f"{call}: {list(parameters)}"


def test_the_fix_is_put_in_sdk_words_and_a_name_the_message_quotes_stays():
    assert in_sdk_words(
        "model 'ListVersions' has no version 9 (the newest is 1; ListVersions lists them)"
    ) == (
        "model 'ListVersions' has no version 9 (the newest is 1; `client.models.versions(name)` lists them)"
    )
    assert in_sdk_words("dataset 'clips' is in use by training job j1; pass force to delete it anyway") == (
        "dataset 'clips' is in use by training job j1; pass `force=True` to delete it anyway"
    )
    assert in_sdk_words("m v1 is not loaded; load it with LoadModel naming version 1, or Predict") == (
        "m v1 is not loaded; load it with `client.inference.load(model, 1)`, or "
        "`client.inference.predict(model, inputs)`"
    )
    assert in_sdk_words(
        "tessera.v1.Datasets/UploadDataset needs the trainer role; the token 'r' is a reader"
    ) == ("`client.datasets.push(name, path)` needs the trainer role; the token 'r' is a reader")
    assert (
        in_sdk_words("a Deployment, DeployFoo and ExportOnnxes stay")
        == "a Deployment, DeployFoo and ExportOnnxes stay"
    )


def test_an_error_says_sdk_words_and_keeps_the_daemons():
    error = tessera.NotFound("run 'r1' does not exist; ListRuns lists them", {"k": "v"})
    assert error.message == "run 'r1' does not exist; `client.training.runs()` lists them"
    assert str(error) == f"NOT_FOUND: {error.message}"
    assert error.daemon_message == "run 'r1' does not exist; ListRuns lists them"
    back = pickle.loads(pickle.dumps(error))
    assert (type(back), back.message, back.daemon_message, back.trailers) == (
        tessera.NotFound,
        error.message,
        error.daemon_message,
        {"k": "v"},
    )


@pytest.mark.parametrize("rpc", sorted(CALL_BY_RPC))
def test_words_already_in_sdk_words_stay_as_they_are(rpc):
    said = in_sdk_words(f"do it; {rpc} does it")
    assert in_sdk_words(said) == said


def test_names_a_model_author_chose_stay_as_given_in_the_fix():
    message = "output 'y' is not an output of model 'm' v1; its outputs are force, Deploy, Predict"
    assert in_sdk_words(message) == message
    assert in_sdk_words("model 'm' is in use; pass force to delete it") == (
        "model 'm' is in use; pass `force=True` to delete it"
    )
    assert in_sdk_words("version 2 serves traffic; move it with Deploy, or roll back") == (
        "version 2 serves traffic; move it with `client.models.deploy(name, routes)`, or roll back"
    )
    assert in_sdk_words("no route; see `Deploy` for routes") == "no route; see `Deploy` for routes"


def test_grpcs_method_not_found_stays_as_grpc_wrote_it():
    message = "Method not found: tessera.v1.Training/SubmitSweep"
    error = tessera.errors.error_for(grpc.StatusCode.UNIMPLEMENTED, message)
    assert error.message == error.daemon_message == message


def test_a_backup_is_said_as_its_call() -> None:
    assert in_sdk_words("wait, then Backup again") == "wait, then `client.system.backup(path)` again"
