"""RegisterJobWeights (`tessera jobs register`, `client.training.register`): a succeeded job's
weights, from its final checkpoint, become a version of any model after the job has ended, with
the lineage register_as gives; once per job and model; refused, with nothing stored, for a job
that did not succeed or whose final checkpoint is gone. The daemon has tokens: moving an alias onto
a version the job registered before is SetAlias's, an admin's; the calls here are an admin's
unless they say otherwise."""

from __future__ import annotations

import io
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
import torch
import torch.nn.functional as F
from rich.console import Console
from safetensors.torch import load_file

import tessera
from tessera.cli import main
from tessera.v1 import common_pb2, job_spec_pb2, registry_pb2, registry_pb2_grpc, training_pb2
from tessera.v1 import training_pb2_grpc as training_grpc
from tesserad.nn import build_model, spec_from_dict
from tesserad.security import Role, hash_token, new_token
from tesserad.security.tokens import format_entry
from tests.conftest import InProcessDaemon, daemon_settings
from tests.integration.training.conftest import (
    TRAINING_SETTINGS,
    follow,
    job_spec,
    model_with_aliases,
    submit,
    upload_standard_datasets,
)

S = training_pb2
R = registry_pb2


@dataclass(frozen=True)
class Jobs:
    plain: S.Job  # succeeded, without register_as
    registered: S.Job  # succeeded, registered as jr-trained v1 by register_as
    released: S.Job  # succeeded, its final checkpoint released (retain_latest = 0)
    cancelled: S.Job
    refused_while_running: grpc.RpcError  # RegisterJobWeights of `cancelled` before its cancel


TOKENS = {role: new_token() for role in Role}


class _Bearer(
    grpc.UnaryUnaryClientInterceptor, grpc.UnaryStreamClientInterceptor, grpc.StreamUnaryClientInterceptor
):
    def __init__(self, token: str) -> None:
        self._metadata = [("authorization", f"Bearer {token}")]

    def _with_token(self, details: Any) -> Any:
        return details._replace(metadata=[*(details.metadata or []), *self._metadata])

    def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return continuation(self._with_token(details), request)

    def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        return continuation(self._with_token(details), request)

    def intercept_stream_unary(self, continuation: Any, details: Any, requests: Any) -> Any:
        return continuation(self._with_token(details), requests)


def _as(daemon: InProcessDaemon, role: Role) -> grpc.Channel:
    return grpc.intercept_channel(daemon.channel(), _Bearer(TOKENS[role]))


@pytest.fixture(scope="module")
def training_daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[InProcessDaemon]:
    """conftest's training daemon, with a token for each role; the SDK and the CLI send the
    admin's (TESSERA_TOKEN)."""
    directory = tmp_path_factory.mktemp("register")
    tokens = directory / "tokens.toml"
    tokens.write_text("".join(format_entry(f"{r.label}-holder", r, hash_token(t)) for r, t in TOKENS.items()))
    settings = daemon_settings(
        directory / "data", **TRAINING_SETTINGS, **{"security.tokens_file": str(tokens)}
    )
    with pytest.MonkeyPatch.context() as env:
        env.setenv("TESSERA_TOKEN", TOKENS[Role.ADMIN])
        running = InProcessDaemon(settings).start()
        upload_standard_datasets(_as(running, Role.ADMIN))
        yield running
        running.stop()


@pytest.fixture(scope="module")
def training(training_daemon: InProcessDaemon) -> training_grpc.TrainingStub:
    return training_grpc.TrainingStub(_as(training_daemon, Role.ADMIN))


@pytest.fixture(scope="module")
def registry(training_daemon: InProcessDaemon) -> registry_pb2_grpc.RegistryStub:
    return registry_pb2_grpc.RegistryStub(_as(training_daemon, Role.ADMIN))


def _register(
    training: training_grpc.TrainingStub, job_id: str, model: str, **fields: str
) -> S.RegisterJobWeightsResponse:
    return training.RegisterJobWeights(
        S.RegisterJobWeightsRequest(job_id=job_id, model=model, **fields), timeout=60
    )


def _refused(training: training_grpc.TrainingStub, job_id: str, model: str, **fields: str) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        _register(training, job_id, model, **fields)
    return info.value


@pytest.fixture(scope="module")
def jobs(training: training_grpc.TrainingStub) -> Jobs:
    """Four one-epoch jobs run side by side (the daemon has two CPU slots)."""
    plain = submit(training, job_spec("mlp", epochs=1, seed=31, experiment="jr"))
    registered = submit(
        training,
        job_spec("mlp", epochs=1, seed=31, register_as=job_spec_pb2.RegisterAs(model="jr-trained")),
    )
    released = submit(
        training,
        job_spec("mlp", epochs=1, seed=32, checkpoints=job_spec_pb2.CheckpointPolicy(retain_latest=0)),
    )
    # Long enough to be queued or running when it is refused, then cancelled.
    long = submit(training, job_spec("mlp", epochs=500, batch_size=1, seed=33))
    while_running = _refused(training, long.job_id, "jr-never")
    training.CancelJob(S.CancelJobRequest(job_id=long.job_id))
    for job in (plain, registered, released, long):
        follow(training, job.job_id)
    ended = [
        training.GetJob(S.GetJobRequest(job_id=job.job_id)) for job in (plain, registered, released, long)
    ]
    assert [job.state for job in ended] == [S.JOB_STATE_SUCCEEDED] * 3 + [S.JOB_STATE_CANCELLED]
    return Jobs(*ended, refused_while_running=while_running)


def _model_missing(registry: registry_pb2_grpc.RegistryStub, model: str) -> bool:
    return model not in {m.name for m in registry.ListModels(R.ListModelsRequest(page_size=1000)).models}


def _version_count(registry: registry_pb2_grpc.RegistryStub, model: str) -> int:
    return len(registry.ListVersions(R.ListVersionsRequest(model=model)).versions)


def test_a_job_without_register_as_is_registered_with_its_lineage(training, registry, jobs):
    job = jobs.plain
    assert not job.HasField("registered")
    answer = _register(training, job.job_id, "jr-model", alias="staging", description="from a job")
    version = answer.version
    assert not answer.reused
    assert (version.model, version.version, version.description) == ("jr-model", 1, "from a job")
    assert version.format == R.ARTIFACT_FORMAT_SAFETENSORS
    lineage = version.lineage
    assert (lineage.job_id, lineage.run_id, lineage.experiment) == (job.job_id, job.run_id, "jr")
    assert [(d.name, d.version) for d in lineage.datasets] == [("flat", 1)]
    assert lineage.job_spec.epochs == 1
    assert version.metrics["val_loss"] == pytest.approx(job.metrics["val_loss"])
    assert version.params["optimizer.lr"] == "0.01"
    assert sorted(version.aliases) == ["latest", "staging"]
    assert (version.alias_moved.from_version, version.alias_moved.to_version) == (0, 1)
    stored = registry.GetVersion(R.GetVersionRequest(ref={"model": "jr-model", "version": 1}))
    assert (stored.lineage, stored.sha256) == (version.lineage, version.sha256)
    # The job's record is its own: it names what its register_as registered, nothing here.
    assert not training.GetJob(S.GetJobRequest(job_id=job.job_id)).HasField("registered")


def test_the_weights_are_those_register_as_registers(training, registry, jobs):
    """The final checkpoint's weights, byte for byte the safetensors register_as stored."""
    trained = registry.GetVersion(R.GetVersionRequest(ref={"model": "jr-trained", "version": 1}))
    answer = _register(training, jobs.registered.job_id, "jr-copy")
    assert not answer.reused
    assert answer.version.sha256 == trained.sha256
    assert answer.version.lineage.job_id == trained.lineage.job_id == jobs.registered.job_id


def test_the_registered_model_scored_on_the_loaded_val_split_gives_the_jobs_val_loss(
    training_daemon, jobs, tmp_path
):
    """client.datasets.load(split=) gives the rows the job validated on: the weights it registered
    score them at its own val_loss, and the train rows at another."""
    config = training_daemon.daemon.training.get(jobs.registered.job_id).config
    model = build_model(spec_from_dict(config["architecture"]))
    with tessera.Client(training_daemon.target, timeout=30) as client:
        client.models.download("jr-trained", tmp_path / "w.safetensors", version=1)
        model.load_state_dict(load_file(tmp_path / "w.safetensors"))

        def loss_on(split: str) -> float:
            rows = client.datasets.load("flat:1", split=split)
            with torch.no_grad():
                return float(F.cross_entropy(model(torch.from_numpy(rows["x"])), torch.from_numpy(rows["y"])))

        assert loss_on("val") == pytest.approx(jobs.registered.metrics["val_loss"], rel=1e-6)
        assert loss_on("train") != pytest.approx(jobs.registered.metrics["val_loss"], rel=1e-3)


def test_once_per_job_and_model_the_version_is_returned_and_an_alias_moves_onto_it(training, registry, jobs):
    first = _register(training, jobs.plain.job_id, "jr-once")
    again = _register(training, jobs.plain.job_id, "jr-once", description="other words")
    assert (again.reused, again.version.version, again.version.description) == (True, 1, "")
    assert not again.version.HasField("alias_moved")
    aliased = _register(training, jobs.plain.job_id, "jr-once", alias="prod")
    assert aliased.reused and sorted(aliased.version.aliases) == ["latest", "prod"]
    assert (aliased.version.alias_moved.from_version, aliased.version.alias_moved.to_version) == (0, 1)
    assert _version_count(registry, "jr-once") == 1
    assert again.version.sha256 == first.version.sha256
    # register_as's own version counts: the job's model holds it already.
    own = _register(training, jobs.registered.job_id, "jr-trained")
    assert (own.reused, own.version.version) == (True, 1)
    assert _version_count(registry, "jr-trained") == 1


def test_an_alias_moves_onto_the_version_a_job_registered_before_only_for_a_caller_that_may_set_it(
    training_daemon, training, registry, jobs
):
    """A trainer's call gives a new version its alias, as UploadVersion does; moving one onto an
    existing version is SetAlias's, which needs the admin role."""
    trainer = training_grpc.TrainingStub(_as(training_daemon, Role.TRAINER))
    first = _register(trainer, jobs.plain.job_id, "jr-roles", alias="staging")
    assert (first.reused, sorted(first.version.aliases)) == (False, ["latest", "staging"])
    # Already the version's alias: nothing moves, nothing is refused.
    assert _register(trainer, jobs.plain.job_id, "jr-roles", alias="staging").reused
    refused = _refused(trainer, jobs.plain.job_id, "jr-roles", alias="prod")
    assert refused.code() == grpc.StatusCode.PERMISSION_DENIED
    assert refused.details() == (
        f"job {jobs.plain.job_id} registered jr-roles v1 before: moving alias 'prod' onto that existing "
        "version is SetAlias's, and SetAlias needs the admin role (the caller 'trainer-holder' has the "
        "trainer role); register it without set_alias, or have an admin set the alias"
    )
    stored = registry.GetVersion(R.GetVersionRequest(ref={"model": "jr-roles", "version": 1}))
    assert sorted(stored.aliases) == ["latest", "staging"]
    moved = _register(training, jobs.plain.job_id, "jr-roles", alias="prod")
    assert moved.reused and sorted(moved.version.aliases) == ["latest", "prod", "staging"]


def test_the_cli_and_the_sdk_register_and_say_so(training_daemon, registry, jobs):
    screen = io.StringIO()
    console = Console(file=screen, width=200, force_terminal=False, color_system=None)
    argv = ["--target", training_daemon.target, "jobs", "register", jobs.plain.job_id, "jr-cli"]
    assert main([*argv, "--set-alias", "staging"], console=console) == 0
    said = screen.getvalue()
    assert f"registered jr-cli v1 from job {jobs.plain.job_id} (" in said
    assert "alias staging: (new) -> v1" in said
    assert main(argv, console=console) == 0
    assert (
        f"job {jobs.plain.job_id} is registered already as jr-cli v1: no version added" in screen.getvalue()
    )
    with tessera.Client(training_daemon.target) as client:
        answer = client.training.register(jobs.plain.job_id, "jr-cli")
    assert (answer.reused, answer.version.version) == (True, 1)
    assert sorted(answer.version.aliases) == ["latest", "staging"]


def test_an_unknown_job_is_not_found_and_makes_no_model(training, registry):
    refused = _refused(training, "no-such-job", "jr-unknown")
    assert refused.code() == grpc.StatusCode.NOT_FOUND
    assert refused.details() == "job 'no-such-job' does not exist; ListJobs lists them"
    assert _model_missing(registry, "jr-unknown")


def test_a_job_that_did_not_succeed_is_refused_naming_its_state(training, registry, jobs):
    refused = jobs.refused_while_running
    assert refused.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert refused.details().startswith(f"job {jobs.cancelled.job_id} is ")
    assert "wait for its end" in refused.details()
    refused = _refused(training, jobs.cancelled.job_id, "jr-cancelled", alias="staging")
    assert refused.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert refused.details() == (
        f"job {jobs.cancelled.job_id} is cancelled: only a succeeded job's weights are registered, not a "
        "cancelled one's, even where its training finished before the cancel took effect; train it again"
    )
    assert _model_missing(registry, "jr-cancelled") and _model_missing(registry, "jr-never")


def test_a_job_whose_final_checkpoint_was_released_is_refused(training, registry, jobs):
    assert jobs.released.checkpoints_kept == 0 and jobs.released.checkpoints_released == 1
    refused = _refused(training, jobs.released.job_id, "jr-released", alias="staging")
    assert refused.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert refused.details().startswith(
        f"job {jobs.released.job_id}'s final checkpoint, which holds its trained weights, was released"
    )
    assert "retain_latest" in refused.details()
    assert _model_missing(registry, "jr-released")


def test_bad_requests_are_refused_before_anything_is_read(training, registry, jobs):
    job_id = jobs.plain.job_id
    cases = [
        ({"job_id": "", "model": "jr-bad"}, "job_id is required"),
        ({"job_id": job_id, "model": ""}, "model"),
        ({"job_id": job_id, "model": "Bad Name"}, "model"),
        ({"job_id": job_id, "model": "jr-bad", "alias": "latest"}, "alias 'latest' is reserved"),
        ({"job_id": job_id, "model": "jr-bad", "alias": "v3"}, "alias 'v3'"),
    ]
    for fields, said in cases:
        with pytest.raises(grpc.RpcError) as info:
            training.RegisterJobWeights(S.RegisterJobWeightsRequest(**fields), timeout=10)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT, fields
        assert said in info.value.details(), (fields, info.value.details())
    assert _model_missing(registry, "jr-bad")


def test_the_cli_refuses_alias_for_set_alias(training_daemon, capsys):
    argv = ["--target", training_daemon.target, "jobs", "register", "some-job", "jr-cli", "--alias", "x"]
    with pytest.raises(SystemExit) as exited:
        main(argv)
    assert exited.value.code == 2
    assert "--set-alias NAME moves an alias onto the new version" in capsys.readouterr().err


def test_an_alias_new_to_a_model_at_its_cap_is_refused_and_nothing_is_registered(
    training, registry, jobs, training_daemon
):
    """register_as registers without such an alias rather than lose a job's training; here the
    caller asked for it, and is told, with the weights still there to register again."""
    model_with_aliases(registry, training_daemon, "jr-capped", 1000)
    refused = _refused(training, jobs.plain.job_id, "jr-capped", alias="fresh")
    assert refused.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "model 'jr-capped' has 1,000 aliases" in refused.details()
    assert _version_count(registry, "jr-capped") == 1
    answer = _register(training, jobs.plain.job_id, "jr-capped", alias="held-0001")
    assert (answer.reused, answer.version.version, answer.version.alias_moved.from_version) == (False, 2, 1)


def test_a_fine_tuned_job_names_its_parent_and_is_refused_once_the_parent_is_deleted(
    training, registry, jobs
):
    _register(training, jobs.plain.job_id, "jr-parent")
    init_from = common_pb2.VersionRef(model="jr-parent", version=1)
    tuned = submit(training, job_spec("mlp", epochs=1, seed=34, init_from=init_from))
    follow(training, tuned.job_id)
    lineage = _register(training, tuned.job_id, "jr-tuned").version.lineage
    assert (lineage.parent_model, lineage.parent_version, lineage.job_id) == ("jr-parent", 1, tuned.job_id)

    registry.DeleteVersion(R.DeleteVersionRequest(model="jr-parent", version=1))
    refused = _refused(training, tuned.job_id, "jr-orphan")
    assert refused.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert refused.details().startswith(f"job {tuned.job_id} was fine-tuned from jr-parent v1, deleted since")
    assert _model_missing(registry, "jr-orphan")
    # Its version of a model it was registered to is kept, and named again.
    assert _register(training, tuned.job_id, "jr-tuned").reused
