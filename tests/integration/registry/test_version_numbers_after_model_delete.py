"""Version numbers are never reused, even across a model's delete: a model created again under a
deleted model's name numbers its versions on from the highest the deleted one gave, so "m v1" kept
by a client, a job record or a config names the deleted artifact or nothing, never another one."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import grpc

from tessera.cli import main as tessera_main
from tessera.v1 import common_pb2, registry_pb2, registry_pb2_grpc
from tesserad.cli import main as tesserad_main
from tesserad.registry.backfill import NUMBERS_RETIRED
from tesserad.registry.records import MODEL_KIND, SCHEMA
from tesserad.registry.tables import MODELS, RETIRED_NUMBERS
from tesserad.store import WriteTxn, decode_record, encode_record
from tesserad.store.schema import SCHEMA_KEY, recorded_schema
from tesserad.training.search_space import SweepParameter
from tesserad.training.sweeps import Trial, encode_sweep, encode_trial
from tests.conftest import InProcessDaemon, daemon_settings
from tests.integration.older_store import daemon_on, old_sweep, written_while_stopped
from tests.integration.registry.conftest import (
    onnx_header,
    onnx_identity,
    rpc_error,
    upload,
    upload_versions,
)
from tests.integration.test_store_schema import with_manifest

R = registry_pb2


def test_a_model_created_again_numbers_its_versions_on_from_the_deleted_one(stub):
    upload_versions(stub, "m", 3)
    # A deleted version's number counts too: it was given.
    stub.DeleteVersion(R.DeleteVersionRequest(model="m", version=3))
    stub.DeleteModel(R.DeleteModelRequest(name="m"))

    stub.CreateModel(R.CreateModelRequest(name="m"))
    assert [v.version for v in upload_versions(stub, "m", 2, width=5)] == [4, 5]
    # Another name, never deleted, numbers from 1.
    assert upload_versions(stub, "other", 1)[0].version == 1


def test_an_upload_that_creates_the_model_again_numbers_on_too(stub):
    upload_versions(stub, "m", 2)
    stub.DeleteModel(R.DeleteModelRequest(name="m"))
    assert upload_versions(stub, "m", 1, width=5)[0].version == 3
    # Deleted again at a higher number, and created again: on from there.
    stub.DeleteModel(R.DeleteModelRequest(name="m"))
    assert upload_versions(stub, "m", 1)[0].version == 4


def test_a_version_kept_from_before_the_delete_names_none_of_the_new_ones(stub):
    kept = upload_versions(stub, "m", 1)[0]
    stub.DeleteModel(R.DeleteModelRequest(name="m"))
    upload_versions(stub, "m", 1, width=5)

    error = rpc_error(
        stub.GetVersion, R.GetVersionRequest(ref=common_pb2.VersionRef(model="m", version=kept.version))
    )
    assert error.code() == grpc.StatusCode.NOT_FOUND


def test_an_expected_version_kept_from_before_the_delete_is_refused(stub):
    upload_versions(stub, "m", 2)
    stub.SetAlias(R.SetAliasRequest(model="m", alias="prod", version=1))
    stub.DeleteModel(R.DeleteModelRequest(name="m", force=True))
    new = upload_versions(stub, "m", 2, width=5)
    stub.SetAlias(R.SetAliasRequest(model="m", alias="prod", version=new[0].version))

    # A client that read "prod is at 1" before the delete moves it only if prod still names that
    # artifact: here it names another, so the compare-and-set fails and prod stays.
    stale = rpc_error(
        stub.SetAlias, R.SetAliasRequest(model="m", alias="prod", version=new[1].version, expected_version=1)
    )
    assert stale.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert stub.GetAlias(R.GetAliasRequest(model="m", alias="prod")).version == new[0].version


@contextlib.contextmanager
def _serving(data_dir) -> Iterator[tuple[InProcessDaemon, registry_pb2_grpc.RegistryStub]]:
    """A daemon on `data_dir` and a registry stub to it, stopped at the end."""
    with daemon_on(data_dir) as running:
        yield running, registry_pb2_grpc.RegistryStub(running.channel())


def test_a_restart_keeps_the_numbers_deleted_models_reached(data_dir):
    with _serving(data_dir) as (_, stub):
        upload_versions(stub, "m", 2)
        stub.DeleteModel(R.DeleteModelRequest(name="m"))

    with _serving(data_dir) as (_, stub):
        assert upload_versions(stub, "m", 1, width=5)[0].version == 3


def test_a_model_created_again_by_an_older_tesserad_leaves_the_higher_number_kept(daemon, stub):
    upload_versions(stub, "m", 3)
    stub.DeleteModel(R.DeleteModelRequest(name="m"))
    # An older tesserad creates the name again from 1 and leaves the row (next number 4) alone.
    _created_again_from_1_by_an_older_tesserad(daemon, stub, "m")
    with daemon.daemon._store.write() as txn:
        txn.put(RETIRED_NUMBERS, ("m",), encode_record(RETIRED_NUMBERS, 1, {"next_version": 4}))
    assert upload_versions(stub, "m", 1, width=5)[0].version == 1
    stub.DeleteModel(R.DeleteModelRequest(name="m"))

    assert upload_versions(stub, "m", 1)[0].version == 4


def _without_retired_numbers(txn: WriteTxn) -> None:
    """The store as a tesserad from before retired numbers left it: no deleted model's number
    kept, and no start has yet derived them."""
    txn.delete_range(RETIRED_NUMBERS, ())
    txn.delete("meta", NUMBERS_RETIRED)


def _as_left_by_a_tesserad_from_before_retired_numbers(data_dir) -> None:
    written_while_stopped(data_dir, _without_retired_numbers)


def _created_again_from_1_by_an_older_tesserad(daemon: InProcessDaemon, stub, model: str) -> None:
    """`model` (deleted) created again as a tesserad that numbers every new model from 1 does,
    leaving whatever number is kept for its name."""
    stub.CreateModel(R.CreateModelRequest(name=model))
    with daemon.daemon._store.write() as txn:
        fields = decode_record(txn.get(MODELS, (model,)), MODEL_KIND, SCHEMA)[1]
        del fields["first_event"]
        fields.pop("first_revision", None)
        fields.update(first_version=1, next_version=1, next_event=1)
        txn.put(MODELS, (model,), encode_record(MODEL_KIND, SCHEMA, fields))


def _m_deleted_and_created_again_from_1_by_an_older_tesserad(daemon: InProcessDaemon, stub) -> None:
    """Model "m" with 3 versions, deleted and created again from 1 by an older tesserad: it
    numbers "m" from 1 again. The change feed's record of "m v3" is then what names the old
    versions (the create took over the number the delete kept)."""
    upload_versions(stub, "m", 3)
    # The feed's thread reads a model's state when it gets to it: one that looked only after the
    # delete would have recorded no "m v3", and the next start would number "m" from 2 or 3.
    _feed_recorded(stub)
    stub.DeleteModel(R.DeleteModelRequest(name="m"))
    _created_again_from_1_by_an_older_tesserad(daemon, stub, "m")
    assert upload_versions(stub, "m", 1, width=5)[0].version == 1


def _deleted_with_a_child_naming_its_newest(stub, model: str, versions: int) -> None:
    """`model` with `versions` versions, deleted; "child" v1's lineage names the newest."""
    upload_versions(stub, model, versions)
    data = onnx_identity(6)
    lineage = R.Lineage(parent_model=model, parent_version=versions)
    upload(stub, onnx_header("child", data, lineage=lineage), data)
    stub.DeleteModel(R.DeleteModelRequest(name=model))


def test_a_model_deleted_before_the_upgrade_numbers_on_past_what_the_store_still_names(data_dir):
    with _serving(data_dir) as (_, stub):
        _deleted_with_a_child_naming_its_newest(stub, "base", 3)
    _as_left_by_a_tesserad_from_before_retired_numbers(data_dir)

    with _serving(data_dir) as (_, stub):
        # child's lineage still names "base v3": the new base's first version is past it.
        assert upload_versions(stub, "base", 1, width=5)[0].version == 4
        assert upload_versions(stub, "child", 1, width=5)[0].version == 2


def test_a_model_deleted_before_it_gave_a_number_leaves_no_row(daemon, stub):
    stub.CreateModel(R.CreateModelRequest(name="empty"))
    stub.DeleteModel(R.DeleteModelRequest(name="empty"))

    with daemon.daemon._store.read() as txn:
        assert not txn.exists(RETIRED_NUMBERS, ("empty",))


def _feed_recorded(stub) -> int:
    """Return once the change feed has recorded every commit made so far: its newest change."""
    return len(_changes_after(stub, 0))


def _changes_after(stub, seq: int) -> list[R.RegistryChange]:
    """The changes the feed has recorded after `seq`, every commit made so far recorded."""
    changes = []
    for response in stub.WatchChanges(R.WatchChangesRequest(from_seq=seq + 1), timeout=60):
        if response.HasField("caught_up"):
            return changes
        changes.append(response.change)
    raise AssertionError("the watch ended before it caught up")


def test_a_model_deleted_before_the_upgrade_numbers_on_past_what_the_change_feed_tells(data_dir):
    with _serving(data_dir) as (_, stub):
        upload_versions(stub, "m", 2)
        _feed_recorded(stub)
        stub.DeleteModel(R.DeleteModelRequest(name="m"))
    _as_left_by_a_tesserad_from_before_retired_numbers(data_dir)

    with _serving(data_dir) as (_, stub):
        # A watch replaying from before the delete is still told of "m v2".
        assert upload_versions(stub, "m", 1, width=5)[0].version == 3


def _sweep_naming_deleted_models(txn: WriteTxn) -> None:
    """What an older tesserad left of a sweep that names versions of models it deleted: its base
    starts from "swept v4", and its trial, set by a client to start from "trial-parent v6", could
    not be submitted (no job record names it, and its spec names what did not exist)."""
    trial = Trial(
        params={"init_from.version": "6"},
        raw={"init_from": {"model": "trial-parent", "version": 6}},
        document={},
        state="failed",
        error="spec.init_from: model 'trial-parent' does not exist",
    )
    sweep = old_sweep({"init_from": {"model": "swept", "version": 4}}, "sweep-old", [trial])
    txn.put("sweeps", (sweep.sweep_id,), encode_sweep(sweep))
    txn.put("sweep_trials", (sweep.sweep_id, 0), encode_trial(trial))
    # A base whose init_from a parameter sets was never checked as it stands.
    swept_over = old_sweep(
        {"init_from": {"model": "swept-over", "version": 9}},
        "sweep-over",
        parameters=[SweepParameter("init_from.version", values=["1", "2"])],
    )
    txn.put("sweeps", (swept_over.sweep_id,), encode_sweep(swept_over))


def test_a_model_deleted_before_the_upgrade_numbers_on_past_what_sweeps_name(data_dir, caplog):
    InProcessDaemon(daemon_settings(data_dir)).start().stop()

    def left(txn: WriteTxn) -> None:
        _without_retired_numbers(txn)
        _sweep_naming_deleted_models(txn)

    written_while_stopped(data_dir, left)
    caplog.set_level("INFO", logger="tesserad.registry")

    with _serving(data_dir) as (_, stub):
        assert upload_versions(stub, "swept", 1)[0].version == 5
        # A trial's spec a client chose and no submit checked keeps no number.
        assert upload_versions(stub, "trial-parent", 1)[0].version == 1
        assert upload_versions(stub, "swept-over", 1)[0].version == 1
    # The scan says what it read and how long it took: on a large store it is start-up's wait.
    [scan] = [r for r in caplog.records if r.getMessage().startswith("read the model versions")]
    assert (scan.references, scan.models) == (1, 1)
    assert scan.seconds >= 0


def test_a_reference_that_names_no_version_is_passed_over_with_a_warning(data_dir, caplog):
    with _serving(data_dir) as (_, stub):
        upload_versions(stub, "m", 1)
    # Sweeps as an older tesserad may have left them, naming versions no model can have: past
    # int64, one whose next number would be past it, a name no model can have, and a digit int()
    # refuses; beside them one that names "m v5".
    named = [
        {"model": "m", "version": 2**64},
        {"model": "m", "version": 2**63 - 1},
        {"model": "Not A Name", "version": 3},
        {"model": "m", "version": "\u00b2"},
        {"model": "m", "version": 5},
    ]
    sweeps = [old_sweep({"init_from": parent}, f"sweep-{n}") for n, parent in enumerate(named)]

    def left(txn: WriteTxn) -> None:
        txn.delete("meta", NUMBERS_RETIRED)
        for sweep in sweeps:
            txn.put("sweeps", (sweep.sweep_id,), encode_sweep(sweep))

    written_while_stopped(data_dir, left)
    caplog.set_level("INFO", logger="tesserad.registry")

    with _serving(data_dir) as (_, stub):
        assert upload_versions(stub, "m", 1, width=5)[0].version == 6
    [warning] = [r for r in caplog.records if r.levelname == "WARNING" and "passed over" in r.getMessage()]
    assert warning.references == 4
    assert set(warning.shown) == {
        ("m", 2**64),
        ("m", 2**63 - 1),
        ("Not A Name", 3),
        ("m", "\u00b2"),
    }


def _job_run_logging(params: dict[str, str]) -> Callable[[WriteTxn], None]:
    """A training job's run as the daemon stores it after a client's LogParams on it: its params
    are the client's to write, fine_tune's included."""

    def write(txn: WriteTxn) -> None:
        run = {
            "run_id": "run-job",
            "experiment": "default",
            "name": "job-live",
            "status": "running",
            "params": params,
            "tags": {},
            "start_time": 1.0,
            "end_time": 0.0,
            "attempts": 1,
            "job_id": "job-live",
        }
        txn.put("runs", ("run-job",), encode_record("run", 1, run))
        txn.delete("meta", NUMBERS_RETIRED)

    return write


def test_the_params_a_client_logs_on_a_jobs_run_number_no_model(data_dir):
    with _serving(data_dir) as (_, stub):
        upload_versions(stub, "live", 2)
    # A version far past the model's, and a digit int() refuses: neither is a number the store keeps.
    for version, expected in (("1000", 3), ("\u00b2", 4)):
        written_while_stopped(
            data_dir, _job_run_logging({"fine_tune.model": "live", "fine_tune.version": version})
        )
        with _serving(data_dir) as (_, stub):
            assert upload_versions(stub, "live", 1, width=expected)[0].version == expected


def test_a_model_an_older_tesserad_created_again_from_1_numbers_on_past_what_the_store_names(data_dir):
    with _serving(data_dir) as (first, stub):
        _deleted_with_a_child_naming_its_newest(stub, "base", 5)
        with first.daemon._store.write() as txn:
            txn.delete_range(RETIRED_NUMBERS, ())
        # Deleted and created again by an older tesserad: v1 and v2 again, while child's lineage
        # still names the old "base v5".
        _created_again_from_1_by_an_older_tesserad(first, stub, "base")
        assert [v.version for v in upload_versions(stub, "base", 2, width=5)] == [1, 2]
        recorded = _feed_recorded(stub)
    _as_left_by_a_tesserad_from_before_retired_numbers(data_dir)

    with _serving(data_dir) as (_, stub):
        # Numbers passed over are no versions registered and deleted: watchers are told nothing.
        assert _changes_after(stub, recorded) == []
        assert upload_versions(stub, "base", 1, width=7)[0].version == 6
        assert stub.GetModel(R.GetModelRequest(name="base")).version_count == 3
        [change] = _changes_after(stub, recorded)
        assert list(change.kinds) == [R.CHANGE_KIND_VERSION_REGISTERED]


def test_a_number_kept_for_a_name_an_older_tesserad_created_again_is_past_at_the_next_start(data_dir):
    with _serving(data_dir) as (first, stub):
        _m_deleted_and_created_again_from_1_by_an_older_tesserad(first, stub)
    # That older tesserad wrote the store, so the next start derives the numbers again.
    written_while_stopped(data_dir, lambda txn: txn.delete("meta", NUMBERS_RETIRED))

    with _serving(data_dir) as (_, stub):
        assert upload_versions(stub, "m", 1, width=6)[0].version == 4


def test_a_revision_kept_for_a_name_an_older_tesserad_created_again_is_past_at_the_next_start(data_dir):
    with _serving(data_dir) as (first, stub):
        version = upload_versions(stub, "m", 1)[0].version
        for _ in range(2):
            stub.Deploy(R.DeployRequest(model="m", routes=[R.Route(version=version, weight=100)]))
            stub.Rollback(R.RollbackRequest(model="m"))
        stub.DeleteModel(R.DeleteModelRequest(name="m", force=True))
        # Created again by an older tesserad, which leaves the row kept for the name (past the
        # deleted model's 4 revisions) as it is.
        _created_again_from_1_by_an_older_tesserad(first, stub, "m")
        with first.daemon._store.write() as txn:
            row = {"next_version": 2, "next_event": 1, "next_revision": 5}
            txn.put(RETIRED_NUMBERS, ("m",), encode_record(RETIRED_NUMBERS, 1, row))
    written_while_stopped(data_dir, lambda txn: txn.delete("meta", NUMBERS_RETIRED))

    with _serving(data_dir) as (_, stub):
        version = upload_versions(stub, "m", 1, width=5)[0].version
        routes = [R.Route(version=version, weight=100)]
        assert stub.Deploy(R.DeployRequest(model="m", routes=routes, expected_revision=0)).revision == 5
        # And its own delete keeps the number on for the name's next model.
        stub.DeleteModel(R.DeleteModelRequest(name="m", force=True))
        version = upload_versions(stub, "m", 1, width=6)[0].version
        routes = [R.Route(version=version, weight=100)]
        assert stub.Deploy(R.DeployRequest(model="m", routes=routes)).revision == 6


def test_a_revision_kept_for_a_name_outlives_a_model_an_older_tesserad_created_again_and_deployed(data_dir):
    with _serving(data_dir) as (first, stub):
        version = upload_versions(stub, "m", 1)[0].version
        for _ in range(2):
            stub.Deploy(R.DeployRequest(model="m", routes=[R.Route(version=version, weight=100)]))
            stub.Rollback(R.RollbackRequest(model="m"))
        stub.DeleteModel(R.DeleteModelRequest(name="m", force=True))
        # Created again and deployed (revision 1) by an older tesserad, which leaves the row kept
        # for the name (past the deleted model's 4 revisions) as it is.
        _created_again_from_1_by_an_older_tesserad(first, stub, "m")
        version = upload_versions(stub, "m", 1, width=5)[0].version
        routes = [R.Route(version=version, weight=100)]
        assert stub.Deploy(R.DeployRequest(model="m", routes=routes)).revision == 1
        with first.daemon._store.write() as txn:
            row = {"next_version": 2, "next_event": 1, "next_revision": 5}
            txn.put(RETIRED_NUMBERS, ("m",), encode_record(RETIRED_NUMBERS, 1, row))
    written_while_stopped(data_dir, lambda txn: txn.delete("meta", NUMBERS_RETIRED))

    with _serving(data_dir) as (_, stub):
        stub.DeleteModel(R.DeleteModelRequest(name="m", force=True))
        version = upload_versions(stub, "m", 1, width=6)[0].version
        routes = [R.Route(version=version, weight=100)]
        assert stub.Deploy(R.DeployRequest(model="m", routes=routes)).revision == 5


def _recorded_schema_is(txn: WriteTxn, schema: int) -> None:
    record = recorded_schema(txn)
    assert record is not None and record.schema == schema


def _written_by_schema_3(txn: WriteTxn) -> None:
    """The store's schema record as a tesserad of schema 3 leaves it after a start of this one:
    its own schema, the token kept (it knew the store's)."""
    _recorded_schema_is(txn, 4)
    record = recorded_schema(txn)
    assert record is not None
    data = {"schema": 3, "tesserad_version": "0.9.0", "token": record.token, "at": 0.0}
    txn.put("meta", SCHEMA_KEY, encode_record("store_schema", 1, data))


def test_a_model_a_schema_3_tesserad_created_again_from_1_is_numbered_on_at_the_next_start(data_dir):
    with _serving(data_dir) as (first, stub):
        # A tesserad of schema 3 from before this pass creates the name again from 1. It writes
        # numbers_skipped and first_event into no record, so it takes a store this one opened no
        # longer: here it is as if it had, recording schema 3 under the store's token.
        _m_deleted_and_created_again_from_1_by_an_older_tesserad(first, stub)

    written_while_stopped(data_dir, _written_by_schema_3)

    with _serving(data_dir) as (_, stub):
        assert upload_versions(stub, "m", 1, width=6)[0].version == 4


def test_a_backup_a_schema_3_tesserad_made_is_restored_and_its_numbers_passed_again(tmp_path, capsys):
    archive = tmp_path / "backup.tar"
    with _serving(tmp_path / "source") as (source, stub):
        _m_deleted_and_created_again_from_1_by_an_older_tesserad(source, stub)
        # The store as a tesserad of schema 3 backs it up: its record and the manifest say 3.
        with source.daemon._store.write() as txn:
            _written_by_schema_3(txn)
        assert tessera_main(["--target", source.target, "admin", "backup", "-o", str(archive)]) == 0
    of_schema_3 = with_manifest(archive, tmp_path / "schema-3.tar", lambda d: {**d, "store_schema": 3})
    restored = tmp_path / "restored"
    assert tesserad_main(["restore", str(of_schema_3), "--data-dir", str(restored)]) == 0
    capsys.readouterr()

    with _serving(restored) as (_, stub):
        assert upload_versions(stub, "m", 1, width=6)[0].version == 4
    written_while_stopped(restored, lambda txn: _recorded_schema_is(txn, 4))


def test_a_store_marked_by_the_first_numbers_pass_is_passed_again(data_dir):
    with _serving(data_dir) as (first, stub):
        _m_deleted_and_created_again_from_1_by_an_older_tesserad(first, stub)

    def marked_by_the_first_pass(txn: WriteTxn) -> None:
        # The first pass (its own marker) kept deleted names' numbers and left live models alone.
        txn.delete("meta", NUMBERS_RETIRED)
        txn.put(
            "meta", ("model_numbers_retired_derived",), encode_record("model_numbers_retired_derived", 1, {})
        )

    written_while_stopped(data_dir, marked_by_the_first_pass)

    with _serving(data_dir) as (_, stub):
        assert upload_versions(stub, "m", 1, width=6)[0].version == 4


def _moves(stub, model: str, versions: list[int]) -> None:
    for version in versions:
        stub.SetAlias(R.SetAliasRequest(model=model, alias="prod", version=version))


def test_a_history_page_token_from_before_the_delete_shows_none_of_the_new_models_moves(stub):
    old = [v.version for v in upload_versions(stub, "m", 2)]
    _moves(stub, "m", [*old, *old])
    first = stub.ListAliasHistory(R.ListAliasHistoryRequest(model="m", page_size=2))
    stub.DeleteModel(R.DeleteModelRequest(name="m", force=True))
    deleted = _feed_recorded(stub)
    new = [v.version for v in upload_versions(stub, "m", 2, width=5)]
    # Numbering on from the deleted model's events is no alias moved for watchers.
    assert all(R.CHANGE_KIND_ALIAS_MOVED not in c.kinds for c in _changes_after(stub, deleted))
    _moves(stub, "m", [*new, new[0]])

    # The deleted model's history ended with it: the token resumes into none of the new one's
    # moves, which would otherwise follow as if older than those it listed, the newest left out.
    rest = stub.ListAliasHistory(R.ListAliasHistoryRequest(model="m", page_token=first.next_page_token))
    assert list(rest.events) == []
    history = stub.ListAliasHistory(R.ListAliasHistoryRequest(model="m"))
    assert [e.to_version for e in history.events] == [new[0], new[1], new[0]]


def test_a_history_page_token_from_before_the_delete_shows_none_of_the_moves_after_the_next_start(
    data_dir,
):
    with _serving(data_dir) as (first, stub):
        old = [v.version for v in upload_versions(stub, "m", 2)]
        _moves(stub, "m", [*old, *old])
        page = stub.ListAliasHistory(R.ListAliasHistoryRequest(model="m", page_size=2))
        stub.DeleteModel(R.DeleteModelRequest(name="m", force=True))
        # Created again by an older tesserad: its alias events from 1, the row kept for the name
        # (past the deleted model's versions and events) left as it is.
        _created_again_from_1_by_an_older_tesserad(first, stub, "m")
        with first.daemon._store.write() as txn:
            row = {"next_version": 3, "next_event": 5}
            txn.put(RETIRED_NUMBERS, ("m",), encode_record(RETIRED_NUMBERS, 1, row))
        recorded = _feed_recorded(stub)
    written_while_stopped(data_dir, lambda txn: txn.delete("meta", NUMBERS_RETIRED))

    with _serving(data_dir) as (_, stub):
        # Numbering its events on is no alias moved for watchers.
        assert _changes_after(stub, recorded) == []
        new = [v.version for v in upload_versions(stub, "m", 2, width=5)]
        assert new == [3, 4]
        _moves(stub, "m", new)

        rest = stub.ListAliasHistory(R.ListAliasHistoryRequest(model="m", page_token=page.next_page_token))
        assert list(rest.events) == []
