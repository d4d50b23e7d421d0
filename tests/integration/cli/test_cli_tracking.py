"""`tessera runs ls` filters and order, `tessera runs rm|restore` and `tessera experiments
ls|update|rm|restore`, and the SDK calls under them, against a real daemon."""

from __future__ import annotations

import re
from concurrent import futures
from typing import Any

import grpc
import pytest

from tessera.cli import EXIT_DAEMON, EXIT_USAGE
from tessera.errors import FailedPrecondition, InvalidArgument, NotFound
from tessera.run_filter import RunFilterError
from tessera.training import Training
from tessera.v1 import training_pb2, training_pb2_grpc


def test_runs_ls_filters_by_status_param_and_tag_and_orders_by_a_metric(tessera_cli, client):
    training = client.training
    low = training.create_run("cli-ls", params={"lr": "0.1"}, tags={"team": "a"}, create_experiment=True)
    high = training.create_run("cli-ls", params={"lr": "0.1"}, tags={"team": "b"}, create_experiment=True)
    other = training.create_run("cli-ls", params={"lr": "0.2"}, tags={"team": "a"}, create_experiment=True)
    for run, loss in ((low, 0.1), (high, 0.9), (other, 0.5)):
        training.log_metrics(run.run_id, {"val_loss": loss}, step=0)
    training.update_run(other.run_id, status="succeeded")

    def listed(*flags: str) -> list[str]:
        result = tessera_cli("--json", "runs", "ls", "--experiment", "cli-ls", *flags)
        assert result.code == 0, result.err
        return [r["run_id"] for r in result.json()]

    assert listed("--status", "succeeded") == [other.run_id]
    assert listed("--param", "lr=0.1") == [high.run_id, low.run_id]
    assert listed("--param", "lr=0.1", "--tag", "team=a") == [low.run_id]
    assert listed("--order-by", "val_loss") == [low.run_id, other.run_id, high.run_id]
    assert listed("--order-by", "val_loss", "--desc") == [high.run_id, other.run_id, low.run_id]
    twice = tessera_cli("runs", "ls", "--tag", "team=a", "--tag", "team=b")
    assert twice.code == EXIT_USAGE and "--tag team is given twice" in twice.err

    sdk = [r.run_id for r in training.runs("cli-ls", tags={"team": "a"}, order_by="val_loss", page_size=1)]
    assert sdk == [low.run_id, other.run_id]
    training.log_metrics(low.run_id, {"val_loss": 0.95}, step=1)  # last 0.95, min still 0.1
    by_last = [r.run_id for r in training.runs("cli-ls", order_by="val_loss")]
    assert by_last == [other.run_id, high.run_id, low.run_id]
    by_min = training.runs("cli-ls", order_by="val_loss", order_field="min", page_size=2)
    assert [r.run_id for r in by_min] == [low.run_id, other.run_id, high.run_id]


def _search_runs(training) -> dict[str, str]:
    """Four runs of experiment "search", oldest first, by name: their ids."""
    ids = {}
    for name, lr, team, status, acc in (
        ("a", "0.01", "vision", "succeeded", [0.5, 0.95]),  # last 0.95, min 0.5
        ("b", "0.01", "vision", None, [0.92, 0.85]),  # last 0.85, max 0.92, still running
        ("c", "0.1", "nlp", "succeeded", [0.97]),
        ("d", "0.01", "vision", "failed", []),  # no val_acc
    ):
        run = training.create_run(
            "search", name=name, params={"lr": lr}, tags={"team": team}, create_experiment=True
        )
        for step, value in enumerate(acc):
            training.log_metrics(run.run_id, {"val_acc": value}, step=step)
        if status:
            training.update_run(run.run_id, status=status)
        ids[name] = run.run_id
    return ids


def test_sdk_runs_take_mlflows_filter_and_order_strings(client):
    training = client.training
    ids = _search_runs(training)
    names = {run_id: name for name, run_id in ids.items()}

    def searched(**arguments) -> str:
        return "".join(names[r.run_id] for r in training.runs("search", page_size=1, **arguments))

    mlflow = (
        "metrics.val_acc > 0.9 and params.lr = '0.01' and tags.team = 'vision' "
        "and attributes.status = 'FINISHED'"
    )
    assert searched(filter=mlflow) == "a"
    assert searched(filter="metrics.val_acc.max > 0.9 AND params.lr = '0.01'") == "ba"
    assert searched(filter="metrics.val_acc.min >= 0.85") == "cb"
    assert searched(filter="metrics.val_acc != 0.85") == "ca"  # d has no val_acc
    assert searched(filter="attributes.status IN ('running', 'failed')") == "db"
    assert searched(filter="tags.team = 'vision'", params={"lr": "0.01"}, statuses=["succeeded"]) == "a"
    assert searched(order_by="metrics.val_acc DESC") == "cabd"  # runs without it last
    assert searched(order_by=["metrics.val_acc.max ASC"]) == "bacd"
    # An order string without ASC or DESC sorts ascending, as MLflow's; a name alone, the metric's way.
    assert searched(order_by="metrics.val_acc", filter="params.lr = '0.01'") == "bad"
    assert searched(order_by=["metrics.val_acc"]) == "bacd"
    assert searched(order_by="metrics.val_acc", descending=True) == "cabd"
    assert searched(order_by="val_acc") == "cabd"
    assert searched(order_by="val_acc", descending=False, order_field="max") == "bacd"

    with pytest.raises(ValueError, match=r"params is filtered twice, in filter and in params="):
        training.runs("search", filter="params.lr = '0.1'", params={"lr": "0.1"})
    with pytest.raises(ValueError, match="gives its direction: leave out descending="):
        training.runs("search", order_by="metrics.val_acc ASC", descending=True)
    with pytest.raises(ValueError, match="names the summary field: leave out order_field="):
        training.runs("search", order_by="metrics.val_acc.min", order_field="max")
    with pytest.raises(
        ValueError, match=r"descending= applies to the metric order_by names: give order_by too"
    ):
        training.runs("search", descending=True)
    with pytest.raises(
        ValueError, match=r"order_field= applies to the metric order_by names: give order_by too"
    ):
        training.runs("search", order_field="min")
    assert searched(order_by=["metrics.val_acc DESC", "params.lr"]) == "cabd"
    with pytest.raises(RunFilterError, match="OR is not supported") as refused:
        training.runs("search", filter="params.lr = '0.1' or params.lr = '0.01'")
    assert refused.value.column == 19
    # MLflow's direction after a bare name is refused, not read as a metric no run has.
    with pytest.raises(RunFilterError, match=r"write metrics\.val_acc DESC"):
        training.runs("search", order_by="val_acc DESC")


def test_sdk_and_cli_search_with_like_in_run_attributes_and_several_order_keys(tessera_cli, client, channel):
    training = client.training
    ids = {}
    for name, model, lr, team, loss in (
        ("resnet-a", "resnet50", "0.01", "Vision", 0.3),
        ("resnet-b", "resnet18", "0.1", "vision", 0.3),
        ("vit-c", "vit", "0.01", "nlp", 0.5),
        ("d_1", "res_net", "1e-2", "vision", None),
    ):
        run = training.create_run(
            "mlsearch",
            name=name,
            params={"model": model, "lr": lr},
            tags={"team": team},
            create_experiment=True,
        )
        if loss is not None:
            training.log_metrics(run.run_id, {"val_loss": loss}, step=0)
        ids[name] = run.run_id
    training.update_run(ids["resnet-b"], status="succeeded")
    names = {run_id: name[0] if name[0] != "r" else name[-1] for name, run_id in ids.items()}

    def searched(**arguments: Any) -> str:
        return "".join(names[r.run_id] for r in training.runs("mlsearch", page_size=1, **arguments))

    assert searched(filter="params.model LIKE 'resnet%'") == "ba"
    assert searched(filter="params.model LIKE 'resnet__'") == "ba"
    assert searched(filter="params.model LIKE 'res_net'") == "d"  # _ is one character
    assert searched(filter="params.model like '%n%t%'") == "dba"
    assert searched(filter="tags.team LIKE 'vision'") == "db"  # case-sensitive, as MLflow's
    assert searched(filter="tags.team ILIKE 'VIS%'") == "dba"
    assert searched(filter="params.lr IN ('0.01', '0.5')") == "dva"  # 1e-2 is 0.01, as for =
    assert searched(filter="params.lr NOT IN ('0.01')") == "b"
    assert searched(filter="params.model != 'vit' and tags.team NOT IN ('Vision')") == "db"
    assert searched(filter="attributes.run_name LIKE 'resnet-%'") == "ba"
    assert searched(filter="run.run_name = 'vit-c'") == "v"
    assert searched(filter=f"attributes.run_id IN ('{ids['d_1']}', 'nope')") == "d"
    started = {r.run_id: r.info.start_time.ToMilliseconds() for r in training.runs("mlsearch")}
    since = started[ids["vit-c"]]
    later = "".join(names[i] for i in reversed(ids.values()) if started[i] >= since)  # dv, unless ms tie
    assert searched(filter=f"attributes.start_time >= {since}") == later
    assert searched(filter="attributes.end_time > 0") == "b"  # only b has ended

    # Several keys in turn, equal runs by run id; runs without the metric last; pages of one.
    assert searched(order_by=["metrics.val_loss ASC", "start_time DESC"]) == "bavd"
    assert searched(order_by="metrics.val_loss, attributes.run_name DESC") == "bavd"
    assert searched(order_by=["metrics.val_loss", "run_name"]) == "abvd"
    assert searched(order_by="params.model DESC") == "vabd"
    assert searched(order_by="attributes.start_time DESC") == "dvba"
    assert searched(order_by="start_time", filter="params.model LIKE 'res%'") == "abd"
    assert searched(order_by=["status DESC", "created"]) == "bavd"
    running = sorted(ids[name] for name in ("resnet-a", "vit-c", "d_1"))  # equal in status: by run id
    assert [r.run_id for r in training.runs("mlsearch", order_by="status", page_size=1)] == [
        *running,
        ids["resnet-b"],
    ]

    with pytest.raises(
        ValueError, match="descending= applies to an order_by of one metric: write ASC or DESC"
    ):
        training.runs("mlsearch", order_by=["metrics.val_loss", "start_time"], descending=True)
    with pytest.raises(
        RunFilterError, match="runs are ordered by metrics, params and attributes, not by tags"
    ):
        training.runs("mlsearch", order_by="tags.team")

    # The daemon checks what a client sends, naming the field.
    stub = training_pb2_grpc.TrainingStub(channel)
    S = training_pb2
    like = S.TextFilter(entity=S.TEXT_ENTITY_PARAM, key="model", match=S.TEXT_MATCH_LIKE)
    for request, message in (
        (
            S.ListRunsRequest(texts=[S.TextFilter(key="m", match=S.TEXT_MATCH_EQ, values=["x"])]),
            "texts[0].entity",
        ),
        (S.ListRunsRequest(texts=[like]), "texts[0].values: LIKE takes one value, got 0"),
        (
            S.ListRunsRequest(
                texts=[
                    S.TextFilter(
                        entity=S.TEXT_ENTITY_PARAM, key="m", match=S.TEXT_MATCH_LIKE, values=["%" * 501]
                    )
                ]
            ),
            "a LIKE pattern is at most 500 characters",
        ),
        (
            S.ListRunsRequest(
                texts=[
                    S.TextFilter(
                        entity=S.TEXT_ENTITY_ATTRIBUTE, key="user", match=S.TEXT_MATCH_EQ, values=["x"]
                    )
                ]
            ),
            "texts[0].key: 'user' is no text attribute",
        ),
        (
            S.ListRunsRequest(texts=[S.TextFilter(entity=S.TEXT_ENTITY_TAG, key="t", match=S.TEXT_MATCH_IN)]),
            "texts[0].values: IN takes 1 to 1,000 values, got 0",
        ),
        (
            S.ListRunsRequest(times=[S.TimeFilter(attribute="created", op=S.COMPARISON_GT)]),
            "times[0].attribute: 'created' is no time",
        ),
        (S.ListRunsRequest(times=[S.TimeFilter(attribute="start_time")]), "times[0].op"),
        (
            S.ListRunsRequest(order_keys=[S.RunOrder(metric="a", param="b")]),
            "order_keys[0]: set exactly one of metric, param or attribute",
        ),
        (
            S.ListRunsRequest(order_keys=[S.RunOrder(attribute="run_id")]),
            "order_keys[0].attribute: 'run_id' orders nothing",
        ),
        (
            S.ListRunsRequest(order_keys=[S.RunOrder(param="p", field=S.SUMMARY_FIELD_MAX)]),
            "order_keys[0].field applies to a metric",
        ),
        (
            S.ListRunsRequest(
                order_by=S.RunOrder(metric="val_loss"), order_keys=[S.RunOrder(attribute="status")]
            ),
            "order_by and order_keys are both set",
        ),
    ):
        with pytest.raises(grpc.RpcError) as refused:
            stub.ListRuns(request)
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT, message
        assert message in refused.value.details(), refused.value.details()

    def listed(*flags: str) -> str:
        result = tessera_cli("--json", "runs", "ls", "--experiment", "mlsearch", *flags)
        assert result.code == 0, result.err
        return "".join(names[r["run_id"]] for r in result.json())

    assert listed("--filter", "params.model ILIKE 'RES%' and attributes.status = 'running'") == "da"
    assert listed("--order-by", "metrics.val_loss ASC, start_time DESC") == "bavd"
    both = tessera_cli("runs", "ls", "--order-by", "metrics.val_loss, start_time", "--desc")
    assert both.code == EXIT_USAGE and "--asc and --desc order by one metric" in both.err
    # A metric no run has logged, once none may log it yet, as for one metric.
    for name in ("resnet-a", "vit-c", "d_1"):
        training.update_run(ids[name], status="failed")
    with pytest.raises(NotFound, match="did you mean 'val_loss'"):
        list(training.runs("mlsearch", order_by=["metrics.val_los", "start_time"]))


def test_nested_runs_name_their_parent_filter_by_it_and_list_under_it(tessera_cli, client):
    training = client.training
    parent = training.create_run("nest", name="sweep", create_experiment=True)
    child = training.create_run("nest", name="trial-1", parent_run_id=parent.run_id, create_experiment=True)
    grandchild = training.create_run(
        "nest", name="fold-1", parent_run_id=child.run_id, create_experiment=True
    )
    sibling = training.create_run("nest", name="trial-2", parent_run_id=parent.run_id, create_experiment=True)
    training.create_run("nest", name="alone", create_experiment=True)
    assert child.info.parent_run_id == parent.run_id
    assert child.info.tags["mlflow.parentRunId"] == parent.run_id  # as MLflow's
    assert training.run(grandchild.run_id).info.parent_run_id == child.run_id
    assert not parent.info.parent_run_id

    def names(search: str) -> list[str]:
        return [r.name for r in training.runs("nest", filter=search)]

    assert names(f"attributes.parent_run_id = '{parent.run_id}'") == ["trial-2", "trial-1"]
    assert names(f"tags.mlflow.parentRunId = '{parent.run_id}'") == ["trial-2", "trial-1"]
    assert names(f"attributes.parent_run_id IN ('{child.run_id}')") == ["fold-1"]
    assert names("attributes.parent_run_id LIKE '%'") == ["trial-2", "fold-1", "trial-1"]  # nested ones

    table = tessera_cli("runs", "ls", "--experiment", "nest")
    assert table.code == 0, table.err
    rows = [line for line in table.out.splitlines() if re.search(r"sweep|trial|fold|alone", line)]
    assert [re.search(r"(└ )?(sweep|trial-\d|fold-1|alone)", row).group() for row in rows] == [
        "alone",
        "sweep",
        "└ trial-2",
        "└ trial-1",
        "└ fold-1",
    ]
    assert rows[4].index("└ fold-1") > rows[3].index("└ trial-1")  # one level deeper

    with pytest.raises(NotFound, match="parent_run_id: run 'nope' does not exist"):
        training.create_run("nest", parent_run_id="nope", create_experiment=True)
    with pytest.raises(InvalidArgument, match="is of experiment 'nest', not 'elsewhere'"):
        training.create_run("elsewhere", parent_run_id=parent.run_id, create_experiment=True)
    with pytest.raises(InvalidArgument, match=r"tags: mlflow\.parentRunId is 'x' but parent_run_id is"):
        training.create_run(
            "nest", tags={"mlflow.parentRunId": "x"}, parent_run_id=parent.run_id, create_experiment=True
        )
    training.update_run(sibling.run_id, status="succeeded")
    training.delete_run(sibling.run_id)
    with pytest.raises(FailedPrecondition, match=r"is deleted; restore it with .* to nest runs under it"):
        training.create_run("nest", parent_run_id=sibling.run_id, create_experiment=True)
    # Nothing was stored by the refused creations.
    assert sorted(r.name for r in training.runs("nest")) == ["alone", "fold-1", "sweep", "trial-1"]
    assert [e.name for e in training.experiments() if e.name == "elsewhere"] == []


def test_the_mlflow_parent_tag_alone_nests_a_run_and_never_changes(client):
    # MLflow's start_run(nested=True) sends the parent as this tag alone: the run had no parent.
    training = client.training
    tag = "mlflow.parentRunId"
    parent = training.create_run("tagnest", name="parent", create_experiment=True)
    other = training.create_run("tagnest", name="other")
    child = training.create_run("tagnest", name="child", tags={tag: parent.run_id})
    assert child.info.parent_run_id == parent.run_id
    assert training.run(child.run_id).info.parent_run_id == parent.run_id
    both = training.create_run("tagnest", name="both", tags={tag: parent.run_id}, parent_run_id=parent.run_id)
    assert both.info.parent_run_id == parent.run_id

    # The checks of parent_run_id, naming the tag.
    with pytest.raises(NotFound, match=r"tags: mlflow\.parentRunId: run 'nope' does not exist"):
        training.create_run("tagnest", tags={tag: "nope"})
    with pytest.raises(
        InvalidArgument, match=r"tags: mlflow\.parentRunId: run .* is of experiment 'tagnest', not"
    ):
        training.create_run("tagnest-elsewhere", tags={tag: parent.run_id}, create_experiment=True)
    with pytest.raises(
        InvalidArgument, match=r"tags: mlflow\.parentRunId is empty; give the parent run's id"
    ):
        training.create_run("tagnest", tags={tag: ""})
    training.update_run(other.run_id, "succeeded")
    training.delete_run(other.run_id)
    with pytest.raises(FailedPrecondition, match=r"tags: mlflow\.parentRunId: run .* is deleted; restore it"):
        training.create_run("tagnest", tags={tag: other.run_id})
    training.restore_run(other.run_id)

    # The tag never changes after, so that it and parent_run_id never disagree.
    refused = r"tags: mlflow\.parentRunId cannot change after a run is created; it names the run's parent"
    with pytest.raises(FailedPrecondition, match=refused + rf" \(run '{child.run_id}' has parent run"):
        training.update_run(child.run_id, set_tags={tag: other.run_id})
    with pytest.raises(FailedPrecondition, match=refused):
        training.update_run(child.run_id, remove_tags=[tag])
    with pytest.raises(FailedPrecondition, match=refused + rf" \(run '{other.run_id}' has no parent\)"):
        training.update_run(other.run_id, set_tags={tag: parent.run_id, "k": "v"})
    # Changes that leave it as it is pass.
    training.update_run(child.run_id, set_tags={tag: parent.run_id, "k": "v"})
    training.update_run(other.run_id, remove_tags=[tag])
    stored = training.run(child.run_id).info
    assert stored.parent_run_id == stored.tags[tag] == parent.run_id and stored.tags["k"] == "v"
    assert (
        "k" not in training.run(other.run_id).info.tags and not training.run(other.run_id).info.parent_run_id
    )
    assert sorted(r.name for r in training.runs("tagnest")) == ["both", "child", "other", "parent"]
    assert [e.name for e in training.experiments() if e.name == "tagnest-elsewhere"] == []


def test_create_run_refuses_a_misspelt_experiment_unless_asked_to_create_it(client, channel):
    training = client.training
    training.create_experiment("typo-check")
    missing = (
        r"experiment 'typo-chekc' does not exist; did you mean 'typo-check'\? create it with "
        r"`client\.training\.create_experiment\(name\)`, or set create_experiment to create it with the run"
    )
    with pytest.raises(NotFound, match=missing):
        training.create_run("typo-chekc", name="lost", params={"lr": 0.1})
    with pytest.raises(NotFound, match=missing):
        training.start_run("typo-chekc")
    assert [e.name for e in training.experiments("typo-")] == ["typo-check"]
    assert training.create_run("typo-check").info.experiment == "typo-check"
    assert training.create_run("typo-new", create_experiment=True).info.experiment == "typo-new"
    with training.start_run("typo-fresh", create_experiment=True) as run:
        assert run.info.experiment == "typo-fresh"
    with pytest.raises(ValueError, match="leave experiment, name, params, tags and create_experiment out"):
        training.start_run(run_id=run.id, create_experiment=True)
    # A client that does not send the field (the Node client, older SDKs) gets its experiment
    # created with the run, as before.
    stub = training_pb2_grpc.TrainingStub(channel)
    stub.CreateRun(training_pb2.CreateRunRequest(experiment="typo-legacy"))
    with pytest.raises(grpc.RpcError) as refused:
        stub.CreateRun(training_pb2.CreateRunRequest(experiment="typo-legacyy", create_experiment=False))
    assert refused.value.code() == grpc.StatusCode.NOT_FOUND
    assert "did you mean 'typo-legacy'? create it with CreateExperiment" in refused.value.details()
    assert [e.name for e in training.experiments("typo-")] == [
        "typo-check",
        "typo-fresh",
        "typo-legacy",
        "typo-new",
    ]


def test_runs_ls_filter_metric_and_mlflow_order(tessera_cli, client, capsys):
    ids = _search_runs(client.training)
    names = {run_id: name for name, run_id in ids.items()}

    def listed(*flags: str) -> str:
        result = tessera_cli("--json", "runs", "ls", "--experiment", "search", *flags)
        assert result.code == 0, result.err
        return "".join(names[r["run_id"]] for r in result.json())

    assert listed("--filter", "metrics.val_acc > 0.9 and tags.team = 'vision'") == "a"
    assert listed("--metric", "val_acc>0.9", "--param", "lr=0.01") == "a"
    assert listed("--metric", "val_acc>=0.85", "--metric", "val_acc<0.96") == "ba"
    assert listed("--filter", "attributes.status != 'succeeded'", "--metric", "val_acc<1") == "b"
    assert listed("--order-by", "metrics.val_acc.max ASC") == "bacd"
    assert listed("--order-by", "metrics.val_acc", "--asc") == "bacd"
    assert listed("--order-by", "metrics.val_acc") == "bacd"  # MLflow's: ascending without a direction
    assert listed("--order-by", "metrics.val_acc", "--desc") == "cabd"
    assert listed("--order-by", "val_acc") == "cabd"  # the plain METRIC form, highest first for acc

    # What is listed when nothing matches says where to find the keys to compare.
    none = tessera_cli("runs", "ls", "--experiment", "search", "--filter", "params.optimizer.lr = '0.01'")
    assert none.code == 0 and " ".join(none.out.split()) == (
        "no run of experiment search meets these conditions; `tessera runs show RUN_ID` lists the params, "
        "tags and metrics a run has (a job's run has each field of its spec as a param, by path: optimizer.lr)"
    ), none.out

    bad = tessera_cli("runs", "ls", "--filter", "metrics.val_acc ~ 0.9")
    assert bad.code == EXIT_USAGE
    assert "--filter: column 17: expected a comparison after metrics.val_acc" in bad.err, bad.err
    assert "  metrics.val_acc ~ 0.9\n" + " " * 18 + "^" in bad.err
    twice = tessera_cli("runs", "ls", "--filter", "params.lr = '0.01'", "--param", "lr=0.01")
    assert twice.code == EXIT_USAGE and "--filter compares params and --param too" in twice.err
    direction = tessera_cli("runs", "ls", "--order-by", "metrics.val_acc DESC", "--asc")
    assert direction.code == EXIT_USAGE and "gives its direction: leave out --asc and --desc" in direction.err
    for flag in ("--asc", "--desc"):
        unordered = tessera_cli("runs", "ls", flag)
        assert unordered.code == EXIT_USAGE, unordered.err
        assert f"{flag} orders by the metric --order-by names: add --order-by METRIC" in unordered.err
    assert listed("--order-by", "metrics.val_acc DESC, params.lr") == "cabd"
    bare = tessera_cli("runs", "ls", "--order-by", "val_acc DESC")
    assert bare.code == EXIT_USAGE, bare.err
    wanted = "--order-by: column 1: an order names its metric as metrics.KEY: write metrics.val_acc DESC"
    assert wanted in bare.err
    # MLflow's bare attribute, as MLflow reads it.
    assert listed("--order-by", "start_time") == "abcd"
    assert listed("--order-by", "start_time DESC") == "dcba"
    with pytest.raises(SystemExit) as usage:
        tessera_cli("runs", "ls", "--metric", "val_acc~0.9")
    assert usage.value.code == EXIT_USAGE
    assert (
        "argument --metric: column 12: expected a comparison, <, <=, >, >=, = or !="
        in capsys.readouterr().err
    )


def test_runs_rm_and_restore(tessera_cli, client):
    run = client.training.create_run("cli-rm", create_experiment=True)
    removed = tessera_cli("runs", "rm", run.run_id)
    assert removed.code == 0 and f"tessera runs restore {run.run_id}" in removed.out
    assert run.run_id not in tessera_cli("runs", "ls", "--experiment", "cli-rm").out
    deleted = tessera_cli("runs", "ls", "--experiment", "cli-rm", "--view", "deleted")
    assert run.run_id in deleted.out and "(deleted)" in deleted.out
    refused = tessera_cli("runs", "rm", "run-absent")
    assert refused.code == EXIT_DAEMON and "NOT_FOUND" in refused.err
    with pytest.raises(
        FailedPrecondition, match=r"is deleted; restore it with `client\.training\.restore_run\(run_id\)`"
    ):
        client.training.log_metrics(run.run_id, {"loss": 1.0}, step=0)
    restored = tessera_cli("runs", "restore", run.run_id)
    assert restored.code == 0 and f"restored run {run.run_id}" in restored.out
    assert client.training.log_metrics(run.run_id, {"loss": 1.0}, step=0) == 1


def test_runs_rm_and_restore_say_when_there_was_nothing_to_do(tessera_cli, client):
    run = client.training.create_run("cli-rm-twice", create_experiment=True)
    unchanged = tessera_cli("runs", "restore", run.run_id)
    assert (
        unchanged.code == 0
        and unchanged.out.strip() == f"run {run.run_id} is not deleted; nothing to restore"
    )
    assert tessera_cli("runs", "rm", run.run_id).code == 0
    again = tessera_cli("runs", "rm", run.run_id)
    assert again.code == 0 and f"run {run.run_id} was already deleted" in again.out, again.out
    assert f"tessera runs restore {run.run_id}" in again.out
    assert client.training.run(run.run_id).deleted


def test_experiments_rm_and_restore_say_when_there_was_nothing_to_do(tessera_cli, client):
    client.training.create_run("cli-exp-twice", create_experiment=True)
    unchanged = tessera_cli("experiments", "restore", "cli-exp-twice")
    assert unchanged.code == 0
    assert unchanged.out.strip() == "experiment cli-exp-twice is not deleted; nothing to restore"
    assert tessera_cli("experiments", "rm", "cli-exp-twice").code == 0
    again = tessera_cli("experiments", "rm", "cli-exp-twice")
    assert again.code == 0 and "experiment cli-exp-twice was already deleted" in again.out, again.out
    assert "tessera experiments restore cli-exp-twice" in again.out


class ReadsUnavailable(training_pb2_grpc.TrainingServicer):
    """A Training service whose GetRun and GetExperiment answer UNAVAILABLE (a daemon going
    away between two calls) and whose deletes and restores act: it notes each one made."""

    def __init__(self) -> None:
        self.acted: list[str] = []

    def GetRun(self, request, context):
        context.abort(grpc.StatusCode.UNAVAILABLE, "daemon restarting")

    def GetExperiment(self, request, context):
        context.abort(grpc.StatusCode.UNAVAILABLE, "daemon restarting")

    def DeleteRun(self, request, context):
        self.acted.append(f"DeleteRun {request.run_id}")
        return training_pb2.Run(run_id=request.run_id, deleted=True)

    def RestoreRun(self, request, context):
        self.acted.append(f"RestoreRun {request.run_id}")
        return training_pb2.Run(run_id=request.run_id)

    def DeleteExperiment(self, request, context):
        self.acted.append(f"DeleteExperiment {request.name}")
        return training_pb2.Experiment(name=request.name, deleted=True)

    def RestoreExperiment(self, request, context):
        self.acted.append(f"RestoreExperiment {request.name}")
        return training_pb2.Experiment(name=request.name)


@pytest.mark.parametrize(
    ("command", "acted", "answer"),
    [
        (("runs", "rm", "run-1"), "DeleteRun run-1", {"run_id": "run-1", "deleted": True}),
        (("runs", "restore", "run-1"), "RestoreRun run-1", {"run_id": "run-1", "deleted": False}),
        (("experiments", "rm", "exp"), "DeleteExperiment exp", {"name": "exp", "deleted": True}),
        (("experiments", "restore", "exp"), "RestoreExperiment exp", {"name": "exp", "deleted": False}),
    ],
)
def test_rm_and_restore_under_json_act_without_reading_the_state_first(tessera_cli, command, acted, answer):
    """The state read first only words the line said ("was already deleted"), which --json never
    says: a read failing (UNAVAILABLE) failed the command before it acted."""
    service = ReadsUnavailable()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    training_pb2_grpc.add_TrainingServicer_to_server(service, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        result = tessera_cli("--json", *command, target=f"127.0.0.1:{port}")
    finally:
        server.stop(0).wait(5)
    assert result.code == 0, result.err
    assert service.acted == [acted]
    assert answer.items() <= result.json().items()


def test_experiments_update_rm_and_restore(tessera_cli, client):
    run = client.training.create_run(
        "cli-exp", create_experiment=True
    )  # the experiment is created on first use
    client.training.log_metrics(run.run_id, {"loss": 0.5}, step=0)
    client.training.update_run(run.run_id, status="succeeded")
    updated = tessera_cli(
        "--json", "experiments", "update", "cli-exp", "--description", "4-D CNN", "--tag", "team=vision"
    )
    assert updated.code == 0, updated.err
    assert updated.json()["description"] == "4-D CNN" and updated.json()["tags"] == {"team": "vision"}
    dropped = tessera_cli("--json", "experiments", "update", "cli-exp", "--remove-tag", "team").json()
    assert dropped["tags"] == {} and dropped["description"] == "4-D CNN"

    removed = tessera_cli("experiments", "rm", "cli-exp")
    assert removed.code == 0 and "tessera experiments restore cli-exp" in removed.out
    assert "cli-exp" not in tessera_cli("experiments", "ls").out
    assert "cli-exp (deleted)" in tessera_cli("experiments", "ls", "--view", "all").out
    hidden = tessera_cli("--json", "runs", "ls", "--experiment", "cli-exp")
    assert hidden.code == 0 and hidden.json() == []
    # An empty table read as an experiment without runs, and the leaderboard as no run having the metric.
    listed = tessera_cli("runs", "ls", "--experiment", "cli-exp")
    assert listed.code == 0, listed.err
    assert (
        "experiment cli-exp is deleted, with its runs; bring them back with: tessera experiments restore cli-exp"
        in (" ".join(listed.out.split()))
    )
    # Not "no run has logged loss ... did you mean loss?": its runs went with it.
    for condition in (("--order-by", "loss"), ("--metric", "loss<1")):
        searched = tessera_cli("runs", "ls", "--experiment", "cli-exp", *condition)
        assert searched.code == 0, searched.err
        assert "tessera experiments restore cli-exp" in " ".join(searched.out.split())
    board = tessera_cli("runs", "leaderboard", "cli-exp", "loss")
    assert board.code == EXIT_DAEMON and "FAILED_PRECONDITION" in board.err
    assert "is deleted; restore it with `tessera experiments restore NAME` to rank its runs" in board.err
    again = tessera_cli("experiments", "update", "cli-exp", "--description", "x")
    assert again.code == EXIT_DAEMON and "FAILED_PRECONDITION" in again.err
    assert "`tessera experiments restore NAME`" in again.err  # the RPC named in CLI words
    restored = tessera_cli("experiments", "restore", "cli-exp")
    assert restored.code == 0 and "restored experiment cli-exp (1 run)" in restored.out
    assert [e.name for e in client.training.experiments(prefix="cli-exp")] == ["cli-exp"]


def test_runs_leaderboard_of_a_metric_no_run_has_fails_naming_the_logged_ones(tessera_cli, client):
    run = client.training.create_run("cli-board", create_experiment=True)
    client.training.log_metrics(run.run_id, {"val_loss": 0.5, "val_mse": 0.2}, step=0)
    client.training.update_run(run.run_id, status="succeeded")
    # A misspelt metric printed an empty answer and exit 0: a script went on with no runs ranked.
    misspelt = tessera_cli("runs", "leaderboard", "cli-board", "val_los")
    assert misspelt.code == EXIT_DAEMON and misspelt.out == "", misspelt
    assert misspelt.err == (
        "tessera: NOT_FOUND: no run of experiment cli-board has logged val_los; did you mean val_loss? "
        "Its runs have logged: val_loss, val_mse.\n"
    )
    other = tessera_cli("runs", "leaderboard", "cli-board", "accuracy")
    assert other.code == EXIT_DAEMON and other.err == (
        "tessera: NOT_FOUND: no run of experiment cli-board has logged accuracy. "
        "Its runs have logged: val_loss, val_mse.\n"
    )
    as_json = tessera_cli("--json", "runs", "leaderboard", "cli-board", "val_los")
    assert as_json.code == EXIT_DAEMON and as_json.out == "" and "did you mean val_loss?" in as_json.err
    board = tessera_cli("runs", "leaderboard", "cli-board", "val_loss")
    assert board.code == 0 and run.run_id in board.out


def test_runs_ls_of_a_key_or_experiment_no_run_has_fails_naming_the_nearest(tessera_cli, client):
    run = client.training.create_run("cli-typos", params={"batch_size": "16"}, create_experiment=True)
    client.training.log_metrics(run.run_id, {"val_loss": 0.5}, step=0)
    client.training.update_run(run.run_id, status="succeeded")
    # Each printed an empty list, or the unchanged order, and exit 0: a misspelt key read as no run meeting it.
    for condition, meant in (
        (["--metric", "val_los<0.01"], "metric 'val_los', and none is running"),
        (["--param", "batchsize=16"], "param 'batchsize', and none is running"),
        (["--order-by", "val_los"], "metric 'val_los' to order by"),
    ):
        listed = tessera_cli("runs", "ls", "--experiment", "cli-typos", *condition)
        assert listed.code == EXIT_DAEMON and listed.out == "", listed
        assert "NOT_FOUND: no run of experiment 'cli-typos' has logged " + meant in listed.err, listed.err
        assert "did you mean 'val_loss'?" in listed.err or "did you mean 'batch_size'?" in listed.err
    unmet = tessera_cli("--json", "runs", "ls", "--experiment", "cli-typos", "--metric", "val_loss<0.01")
    assert (unmet.code, unmet.json()) == (0, [])
    with pytest.raises(NotFound, match="did you mean 'val_loss'"):
        list(client.training.runs("cli-typos", filter="metrics.val_los < 0.01"))
    for words in (
        ["runs", "ls", "--experiment", "cli-typoz"],
        ["experiments", "update", "cli-typoz", "--description", "x"],
    ):
        missing = tessera_cli(*words)
        assert missing.code == EXIT_DAEMON and "did you mean 'cli-typos'?" in missing.err, missing


def test_runs_leaderboard_of_a_metric_a_running_run_may_log_yet_is_empty(tessera_cli, client):
    # In a first epoch a run logs train_loss each step and val_loss only at the epoch's end:
    # asking for val_loss then failed NOT_FOUND with "did you mean train_loss?".
    ended, running = (
        client.training.create_run("cli-epoch", create_experiment=True),
        client.training.create_run("cli-epoch", create_experiment=True),
    )
    for run in (ended, running):
        client.training.log_metrics(run.run_id, {"train_loss": 0.9}, step=0)
    client.training.update_run(ended.run_id, status="failed")
    early = tessera_cli("runs", "leaderboard", "cli-epoch", "val_loss")
    assert (early.code, early.err) == (0, ""), early
    assert " ".join(early.out.split()) == (
        "no run of experiment cli-epoch has logged val_loss yet; 1 run is still running or waiting to "
        "resume and may log it. Its runs have logged: train_loss."
    )
    assert tessera_cli("--json", "runs", "leaderboard", "cli-epoch", "val_loss").json() == []
    client.training.update_run(running.run_id, status="succeeded")
    done = tessera_cli("runs", "leaderboard", "cli-epoch", "val_loss")
    # None running: nothing can log it now, so the name is doubted.
    assert done.code == EXIT_DAEMON and done.err == (
        "tessera: NOT_FOUND: no run of experiment cli-epoch has logged val_loss; did you mean train_loss? "
        "Its runs have logged: train_loss.\n"
    )


def _interrupt(daemon, run_id: str) -> None:
    """Leave the run as a daemon stopped mid-job does: INTERRUPTED until the re-queued job's next
    attempt starts it running again."""
    tracking = daemon.daemon.training._tracking
    with tracking._store.write() as txn:
        run = tracking.load_run(txn, run_id)
        run.status = "interrupted"
        tracking.put_run(txn, run)


def test_runs_leaderboard_of_a_metric_an_interrupted_run_may_log_yet_is_empty(tessera_cli, client, daemon):
    # Only running runs were counted: the run of a job that a daemon stop interrupted resumes and
    # may log it, yet the name was refused NOT_FOUND as misspelt.
    ended, interrupted = (
        client.training.create_run("cli-resume", create_experiment=True),
        client.training.create_run("cli-resume", create_experiment=True),
    )
    for run in (ended, interrupted):
        client.training.log_metrics(run.run_id, {"train_loss": 0.9}, step=0)
    client.training.update_run(ended.run_id, status="failed")
    _interrupt(daemon, interrupted.run_id)
    waiting = tessera_cli("runs", "leaderboard", "cli-resume", "val_loss")
    assert (waiting.code, waiting.err) == (0, ""), waiting
    assert " ".join(waiting.out.split()) == (
        "no run of experiment cli-resume has logged val_loss yet; 1 run is still running or waiting to "
        "resume and may log it. Its runs have logged: train_loss."
    )


def test_runs_leaderboard_of_a_metric_logged_after_the_board_was_read_asks_again(
    tessera_cli, client, monkeypatch
):
    # The board and the runs' keys are two reads: a metric logged between them read as misspelt,
    # "has not logged val_loss; did you mean val_loss?".
    run = client.training.create_run("cli-race", create_experiment=True)
    client.training.log_metrics(run.run_id, {"train_loss": 0.9}, step=0)
    # The test's own client reads the board: bound before the patch, it keeps the real call.
    board = client.training.leaderboard
    reads = []

    def logged_after_the_first_read(_cli: Training[Any], *args: Any, **kwargs: Any) -> Any:
        entries = board(*args, **kwargs)
        if not reads:
            # Logged and ended before the runs' keys are read: none is running to explain it.
            client.training.log_metrics(run.run_id, {"val_loss": 0.5}, step=1)
            client.training.update_run(run.run_id, status="succeeded")
        reads.append(len(entries))
        return entries

    monkeypatch.setattr(Training, "leaderboard", logged_after_the_first_read)
    ranked = tessera_cli("--json", "runs", "leaderboard", "cli-race", "val_loss")
    assert (ranked.code, reads) == (0, [0, 1]), ranked
    assert [entry["run"]["run_id"] for entry in ranked.json()] == [run.run_id]


def test_runs_leaderboard_names_the_users_names_as_they_are(tessera_cli, client):
    # Its error went through the words that turn RPC and field names into commands and flags:
    # "no run of experiment rv---force has logged forc; did you mean --force?".
    run = client.training.create_run("rv-force", create_experiment=True)
    client.training.log_metrics(run.run_id, {"force": 1.0, "ListRuns": 2.0}, step=0)
    client.training.update_run(run.run_id, status="succeeded")
    misspelt = tessera_cli("runs", "leaderboard", "rv-force", "forc")
    assert misspelt.code == EXIT_DAEMON and misspelt.err == (
        "tessera: NOT_FOUND: no run of experiment rv-force has logged forc; did you mean force? "
        "Its runs have logged: ListRuns, force.\n"
    )


def test_runs_leaderboard_of_an_experiment_with_nothing_logged_yet_is_empty(tessera_cli, client):
    """No run, or runs that have logged no metric yet: nothing to rank, and no name to doubt."""
    client.training.create_experiment("cli-empty")
    empty = tessera_cli("runs", "leaderboard", "cli-empty", "val_loss")
    assert (empty.code, empty.err) == (0, ""), empty
    assert " ".join(empty.out.split()) == "experiment cli-empty has no runs yet"
    assert tessera_cli("--json", "runs", "leaderboard", "cli-empty", "val_loss").json() == []
    client.training.create_run("cli-empty", create_experiment=True)
    started = tessera_cli("runs", "leaderboard", "cli-empty", "val_loss")
    assert started.code == 0, started
    assert " ".join(started.out.split()) == (
        "no run of experiment cli-empty has logged val_loss; its runs have logged no metric yet"
    )
    assert tessera_cli("--json", "runs", "leaderboard", "cli-empty", "val_loss").json() == []


def test_runs_leaderboard_ranks_by_any_summary_field(tessera_cli, client):
    early, steady = (
        client.training.create_run("cli-field", create_experiment=True),
        client.training.create_run("cli-field", create_experiment=True),
    )
    client.training.log_metrics(early.run_id, {"val_loss": 0.5}, step=0)
    client.training.log_metrics(early.run_id, {"val_loss": 0.9}, step=1)  # best 0.5, last 0.9
    client.training.log_metrics(steady.run_id, {"val_loss": 0.7}, step=0)

    def ranked(*flags: str) -> list[tuple[str, float]]:
        result = tessera_cli("--json", "runs", "leaderboard", "cli-field", "val_loss", *flags)
        assert result.code == 0, result.err
        return [(e["run"]["run_id"], e["value"]) for e in result.json()]

    assert ranked() == [(early.run_id, 0.5), (steady.run_id, 0.7)]
    assert ranked("--field", "last") == [(steady.run_id, 0.7), (early.run_id, 0.9)]
    board = client.training.leaderboard("cli-field", "val_loss", field="last")
    assert [(e.run.run_id, e.value) for e in board] == [(steady.run_id, 0.7), (early.run_id, 0.9)]
    with pytest.raises(ValueError, match="best"):
        client.training.leaderboard("cli-field", "val_loss", field="best")


def test_runs_leaderboard_shows_the_params_that_differ_between_the_runs(tessera_cli, client):
    # A job's run logs every field of its spec (some 50 params): listing them all in each row
    # buried the one or two a search varied.
    runs = [
        client.training.create_run(
            "cli-differ", params={"lr": lr, "seed": "0", "epochs": "5"}, create_experiment=True
        )
        for lr in ("0.1", "0.01")
    ]
    client.training.log_params(runs[1].run_id, {"momentum": "0.9"})
    for run, loss in zip(runs, (0.2, 0.4), strict=True):
        client.training.log_metrics(run.run_id, {"val_loss": loss}, step=0)
    board = tessera_cli("runs", "leaderboard", "cli-differ", "val_loss")
    assert board.code == 0, board.err
    # One param a line: a wrapped cell then breaks between params, not inside one.
    assert re.search(r"lr=0.01 +│\n.* momentum=0.9 ", board.out), board.out
    assert "lr=0.1 " in board.out, board.out
    assert "seed=0" not in board.out and "epochs=5" not in board.out, board.out
    assert "left out: 2 params with one value in every run above" in board.out, board.out
    entries = tessera_cli("--json", "runs", "leaderboard", "cli-differ", "val_loss").json()
    assert entries[0]["run"]["params"] == {"lr": "0.1", "seed": "0", "epochs": "5"}


def test_runs_show_says_which_metrics_it_leaves_out_and_runs_metrics_lists_every_one(tessera_cli, client):
    training = client.training
    run = training.create_run("cli-keys", create_experiment=True)
    keys = [f"class_{c:04d}/f1" for c in range(2050)]
    assert training.log_metrics(run.run_id, dict.fromkeys(keys, 0.5), step=0) == 2050

    shown = tessera_cli("runs", "show", run.run_id)
    assert shown.code == 0, shown.err
    said = " ".join(shown.out.split())
    assert "50 more keys after class_1999/f1" in said, shown.out
    assert f"tessera runs metrics {run.run_id}" in said, shown.out

    listed = tessera_cli("--json", "runs", "metrics", run.run_id)
    assert listed.code == 0, listed.err
    assert [summary["key"] for summary in listed.json()] == keys
    table = tessera_cli("runs", "metrics", run.run_id)
    assert table.code == 0 and "class_2049/f1" in table.out, table.err
    assert [summary.key for summary in training.list_metrics(run.run_id, page_size=1000)] == keys

    empty = training.create_run("cli-keys", create_experiment=True)
    none = tessera_cli("runs", "metrics", empty.run_id)
    assert none.code == 0 and f"run {empty.run_id} has logged no metrics" in none.out, none.err
    unknown = tessera_cli("runs", "metrics", "no-such-run")
    assert unknown.code == EXIT_DAEMON and "no-such-run" in unknown.err, unknown.err


def test_a_metric_named_with_a_summary_suffix_is_reached_in_backquotes(tessera_cli, client):
    """MLflow reads metrics.val.min as the metric named val.min; here it is val's min, and the
    metric named val.min is metrics.`val.min`, in filters and orders alike."""
    training = client.training
    named = training.create_run("dotted", name="named", create_experiment=True)
    summed = training.create_run("dotted", name="summed", create_experiment=True)
    training.log_metrics(named.run_id, {"val.min": 0.2}, step=0)
    for step, value in enumerate((0.1, 0.9)):
        training.log_metrics(summed.run_id, {"val": value}, step=step)

    def found(**search: str) -> list[str]:
        return [run.name for run in training.runs("dotted", **search)]

    assert found(filter="metrics.`val.min` < 0.5") == ["named"]
    assert found(filter="metrics.val.min < 0.5") == ["summed"]
    assert found(filter="metrics.`val.min`.max > 0.1") == ["named"]
    assert found(order_by="metrics.`val.min` DESC") == ["named", "summed"]
    assert found(order_by="metrics.val.min DESC") == ["summed", "named"]
    with pytest.raises(RunFilterError, match=r"write metrics.`val.min.max` for the metric named val.min.max"):
        found(filter="metrics.val.min.max > 0")

    # A suffix that matches nothing says how the metric of that whole name is written.
    none = tessera_cli("runs", "ls", "--experiment", "dotted", "--filter", "metrics.val.max > 1")
    assert none.code == 0, none.err
    assert "metrics.val.max compares the max of metric val, where MLflow reads a metric named val.max: " in (
        " ".join(none.out.split())
    ), none.out
    assert "write metrics.`val.max` for that one" in " ".join(none.out.split()), none.out


def test_runs_compare_shows_runs_side_by_side_and_says_which_metric_keys_it_leaves_out(tessera_cli, client):
    training = client.training
    many = training.create_run("cli-compare", name="many", params={"lr": "0.1"}, create_experiment=True)
    few = training.create_run(
        "cli-compare", name="few", params={"lr": "0.2", "seed": "1"}, create_experiment=True
    )
    keys = [f"k{i:04d}" for i in range(2000)]
    training.log_metrics(many.run_id, dict.fromkeys(keys, 0.5), step=0)
    training.log_metrics(few.run_id, {"k0001": 0.25, "z": 1.0}, step=0)

    shown = tessera_cli("runs", "compare", many.run_id, few.run_id)
    assert shown.code == 0, shown.err
    said = " ".join(shown.out.split())
    assert re.search(r"param lr\s*│\s*0\.1\s*│\s*0\.2", shown.out), shown.out
    assert re.search(r"param seed\s*│\s*-\s*│\s*1 ", shown.out), shown.out
    assert re.search(r"metric k0001\s*│\s*0\.5\s*│\s*0\.25", shown.out), shown.out
    assert re.search(r"metric k1999\s*│\s*0\.5\s*│\s*-", shown.out), shown.out
    assert "metric z" not in shown.out
    assert (
        "left out: 1 more metric key after k1999 (the first 2,000 of the runs' keys together are "
        "compared); list each run's with: tessera runs metrics RUN_ID"
    ) in said, shown.out
    as_json = tessera_cli("--json", "runs", "compare", many.run_id, few.run_id)
    assert as_json.code == 0 and as_json.json()["metrics_left_out"] == 1, as_json.err

    alone = tessera_cli("runs", "compare", many.run_id)
    assert alone.code == EXIT_USAGE and "runs compare takes two or more RUN_IDs" in alone.err, alone.err
    unknown = tessera_cli("runs", "compare", many.run_id, "no-such-run")
    assert unknown.code == EXIT_DAEMON and "no-such-run" in unknown.err, unknown.err


def test_runs_metrics_history_prints_each_step_of_one_metric_and_its_plot(tessera_cli, client):
    training = client.training
    run = training.create_run("cli-history", create_experiment=True)
    for step, loss in enumerate((0.9, 0.5, 0.3)):
        training.log_metrics(run.run_id, {"val_loss": loss, "train_loss": loss / 2}, step=step)

    history = tessera_cli("runs", "metrics", run.run_id, "--history", "val_loss")
    assert history.code == 0, history.err
    rows = [
        [cell.strip() for cell in line.split("│")[1:-1]]
        for line in history.out.splitlines()
        if line.startswith("│")
    ]
    assert [row[:2] for row in rows] == [["0", "0.9"], ["1", "0.5"], ["2", "0.3"]]
    assert "val_loss" in history.out.split("┃")[0] and "• val_loss" in history.out, history.out
    as_json = tessera_cli("--json", "runs", "metrics", run.run_id, "--history", "val_loss").json()
    assert [(p["step"], p["value"]) for p in as_json["points"]] == [(0, 0.9), (1, 0.5), (2, 0.3)]
    missing = tessera_cli("runs", "metrics", run.run_id, "--history", "val_acc")
    assert missing.code == 0 and f"run {run.run_id} has logged no val_acc" in missing.out, missing.out


def test_runs_metrics_history_prints_the_last_points_unless_all(tessera_cli, client):
    # Every point was a row: a run of a million steps printed a million-line table.
    training = client.training
    run = training.create_run("cli-history", create_experiment=True)
    for step in range(25):
        training.log_metrics(run.run_id, {"loss": 1 / (step + 1)}, step=step)

    def steps(shown: str) -> list[str]:
        return [line.split("│")[1].strip() for line in shown.splitlines() if line.startswith("│")]

    last = tessera_cli("runs", "metrics", run.run_id, "--history", "loss")
    assert last.code == 0, last.err
    assert steps(last.out) == [str(step) for step in range(5, 25)], last.out
    said = " ".join(last.out.split())
    assert "the last 20 of 25 points; 5 earlier left out (--all prints every one)" in said, said
    every = tessera_cli("runs", "metrics", run.run_id, "--history", "loss", "--all")
    assert steps(every.out) == [str(step) for step in range(25)] and "left out" not in every.out
    assert (
        len(tessera_cli("--json", "runs", "metrics", run.run_id, "--history", "loss").json()["points"]) == 25
    )
    alone = tessera_cli("runs", "metrics", run.run_id, "--all")
    assert alone.code == EXIT_USAGE and "--all prints every point of --history KEY" in alone.err, alone.err


def test_runs_compare_and_leaderboard_show_as_differing_only_params_a_filter_tells_apart(tessera_cli, client):
    training = client.training
    runs = [
        training.create_run(
            "cli-same",
            name=name,
            params={"lr": lr, "nesterov": nesterov, "seed": seed},
            create_experiment=True,
        )
        for name, lr, nesterov, seed in (("a", "3e-3", "True", "1"), ("b", "0.003", "true", "2"))
    ]
    for run, loss in zip(runs, (0.5, 0.4), strict=True):
        training.log_metrics(run.run_id, {"val_loss": loss}, step=0)
    listed = tessera_cli("--json", "runs", "ls", "--experiment", "cli-same", "--param", "lr=3e-3")
    assert len(listed.json()) == 2
    compared = tessera_cli("runs", "compare", *(r.run_id for r in runs))
    assert "param seed" in compared.out and "param lr" not in compared.out, compared.out
    assert "param nesterov" not in compared.out
    board = tessera_cli("runs", "leaderboard", "cli-same", "val_loss")
    assert "seed=1" in board.out and "lr=" not in board.out and "nesterov=" not in board.out, board.out
