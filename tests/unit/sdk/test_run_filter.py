"""MLflow's run-search strings read into ListRuns' fields: what each form gives, and where and why a
mistake is refused."""

from __future__ import annotations

import pytest

from tessera.run_filter import (
    RunFilterError,
    RunOrderBy,
    is_order_string,
    parse_filter,
    parse_metric_condition,
    parse_order,
    parse_order_keys,
    parse_orders,
)
from tessera.v1 import training_pb2 as pb


def _metric(
    key: str,
    op: pb.Comparison.ValueType,
    value: float,
    field: pb.SummaryField.ValueType = pb.SUMMARY_FIELD_LAST,
) -> pb.MetricFilter:
    return pb.MetricFilter(key=key, field=field, op=op, value=value)


def test_mlflows_example_gives_every_kind_of_condition() -> None:
    found = parse_filter(
        "metrics.val_acc > 0.9 and params.lr = '0.01' AND tags.team = \"vision\" "
        "and attributes.status = 'FINISHED'"
    )
    assert found.metrics == [_metric("val_acc", pb.COMPARISON_GT, 0.9)]
    assert found.params == {"lr": "0.01"} and found.tags == {"team": "vision"}
    assert found.statuses == ["succeeded"]


@pytest.mark.parametrize(
    ("text", "op"),
    [
        ("<", pb.COMPARISON_LT),
        ("<=", pb.COMPARISON_LE),
        (">", pb.COMPARISON_GT),
        (">=", pb.COMPARISON_GE),
        ("=", pb.COMPARISON_EQ),
        ("!=", pb.COMPARISON_NE),
    ],
)
def test_each_comparison_reads_as_its_op(text: str, op: pb.Comparison.ValueType) -> None:
    assert parse_filter(f"metrics.loss{text}-1.5e-3").metrics == [_metric("loss", op, -1.5e-3)]


def test_summary_fields_backquoted_keys_and_entity_spellings() -> None:
    found = parse_filter(
        "metric.val_loss.min < 0.3 and METRICS.`val-loss.max` >= .5 and metrics.acc.max = 1 "
        "and param.`a b` = 'it''s' and parameters.\"x.y\" = '' and tag.précision = 'v'"
    )
    assert found.metrics == [
        _metric("val_loss", pb.COMPARISON_LT, 0.3, pb.SUMMARY_FIELD_MIN),
        _metric("val-loss.max", pb.COMPARISON_GE, 0.5),
        _metric("acc", pb.COMPARISON_EQ, 1.0, pb.SUMMARY_FIELD_MAX),
    ]
    assert found.params == {"a b": "it's", "x.y": ""} and found.tags == {"précision": "v"}


def test_param_and_tag_keys_take_dots_unquoted_as_in_mlflow() -> None:
    found = parse_filter("params.optimizer.lr = '0.001' and tags.mlflow.source.name = 'a' and params.x = 'y'")
    assert found.params == {"optimizer.lr": "0.001", "x": "y"}
    assert found.tags == {"mlflow.source.name": "a"}


def test_status_conditions_keep_the_statuses_every_one_allows() -> None:
    assert parse_filter("attributes.status IN ('failed', 'KILLED', 'running')").statuses == [
        "running",
        "failed",
        "cancelled",
    ]
    assert parse_filter("run.status != 'running' and attr.status not in ('failed')").statuses == [
        "succeeded",
        "cancelled",
        "interrupted",
    ]


def test_an_empty_filter_filters_nothing_and_one_value_twice_is_one_condition() -> None:
    empty = parse_filter("  ")
    assert (empty.statuses, empty.params, empty.tags, empty.metrics) == ([], {}, {}, [])
    assert parse_filter("params.lr = '0.1' and params.lr = '0.1'").params == {"lr": "0.1"}


@pytest.mark.parametrize(
    ("text", "column", "reason"),
    [
        ("metrics.val_acc ~ 0.9", 17, "expected a comparison after metrics.val_acc: <, <=, >, >=, = or !="),
        ("val_acc > 0.9", 1, "'val_acc' is not a condition; write metrics.KEY, params.KEY"),
        ("(metrics.a > 1)", 1, "expected metrics.KEY, params.KEY, tags.KEY or attributes.NAME"),
        ("metrics.a > 1 or metrics.b < 2", 15, "OR is not supported (nor in MLflow's search)"),
        ("metrics.a > 1 metrics.b < 2", 15, "expected AND between two conditions"),
        ("metrics.a > 1 and ", 19, "expected a condition after AND"),
        ("metrics.a > '1'", 13, "a metric compares with a number, not text: write metrics.a > 0.9"),
        ("metrics.a > 0.9x", 13, "expected a number after metrics.a's comparison"),
        ("metrics.a > 1e999", 13, "1e999 is past the largest number a metric holds"),
        ("metrics.a == 1", 11, "write = to compare for equality, not =="),
        (
            "metrics.val.loss > 1",
            13,
            "write .last, .min or .max after a metric's key, or a key with dots "
            "in backquotes: metrics.`val.loss`",
        ),
        # The whole key, not its first two parts.
        (
            "metrics.a.b.c > 1",
            11,
            "write .last, .min or .max after a metric's key, or a key with dots in backquotes: metrics.`a.b.c`",
        ),
        # A dotted key ending in an aggregate is a metric of that name in MLflow, and that value
        # of the metric before it here: both are spelt out.
        (
            "metrics.a.b.min > 1",
            11,
            "metrics.a.b.min reads two ways: write metrics.`a.b.min` for the metric named a.b.min (as "
            "MLflow reads it), or metrics.`a.b`.min for the min of metric a.b (a key with dots goes in "
            "backquotes, .last, .min or .max after them)",
        ),
        (
            "metrics.val.min.max>1",
            13,
            "metrics.val.min.max reads two ways: write metrics.`val.min.max` for the metric named "
            "val.min.max (as MLflow reads it), or metrics.`val.min`.max for the max of metric val.min",
        ),
        ("metrics.`a``b`.c.last > 1", 16, "metrics.a`b.c.last reads two ways: write metrics.`a``b.c.last`"),
        # MLflow's keys often hold these; unquoted, the rest would be read as a comparison.
        ("metrics.train/loss < 0.3", 14, "a key with / in it goes in backquotes: metrics.`train/loss`"),
        ("params.batch-size = '32'", 13, "a key with - in it goes in backquotes: params.`batch-size`"),
        ("tags.a.b:c='x'", 9, "a key with : in it goes in backquotes: tags.`a.b:c`"),
        # The key before an aggregate goes in backquotes, not the aggregate with it: that is another metric.
        (
            "metrics.val-loss.min<1",
            12,
            "a key with - in it goes in backquotes, .last, .min or .max after them: metrics.`val-loss`.min",
        ),
        (
            "metrics.loss.min-1 < 2",
            17,
            "expected a comparison after metrics.loss.min, not -: .last, .min or .max ends a metric, "
            "and a key with - in it goes in backquotes before it, e.g. metrics.`a-b`.min",
        ),
        ("metrics.`val-loss > 1", 9, "the key opened here has no closing `"),
        ("metrics.`` > 1", 9, "the key is empty"),
        ("metrics.``abc > 1", 9, "the key is empty"),
        ("metrics. > 1", 9, "expected a key after metrics.: letters, digits and _, or any key in backquotes"),
        ("metrics-a > 1", 8, "expected . and a key after metrics"),
        ("params.lr = 0.01", 13, "quote the value: params.lr = 'VALUE'"),
        ("params.lr = '0.01", 13, "the value opened here has no closing '"),
        ("tags.team < 'vis%'", 11, "tags.team compares with =, !=, LIKE, ILIKE, IN (...) or NOT IN (...)"),
        ("tags.team LIKE vis", 16, "quote the value: tags.team = 'VALUE'"),
        ("params.lr IN '0.1'", 14, "expected ( and the values after IN, e.g. IN ('a', 'b')"),
        ("params.lr NOT IN ('0.1' '0.2')", 25, "expected , and another value, or ) to close the list"),
        ("params.lr NOT LIKE '0.1'", 11, "expected IN after NOT"),
        (
            "attributes.start_time > '5'",
            25,
            "attributes.start_time compares with a whole number of milliseconds",
        ),
        (
            "attributes.end_time >= 1.5",
            24,
            "attributes.end_time compares with a whole number of milliseconds",
        ),
        ("attributes.start_time LIKE '5'", 23, "expected a comparison after attributes.start_time"),
        ("attributes.run_name > 'a'", 21, "attributes.run_name compares with =, !=, LIKE"),
        ("params.a. = 'x'", 10, "expected the rest of the key after params.a."),
        ("params.`a`.b = 'x'", 12, "write a key with dots in backquotes: params.`a.b`"),
        ("params.lr = 'a' and params.lr = 'b'", 21, "params.lr is already compared with 'a'"),
        (
            "attributes.status = 'done'",
            21,
            "'done' is not a run status; use running, succeeded (or "
            "FINISHED), failed, cancelled (or KILLED) or interrupted",
        ),
        (
            "attributes.status > 'failed'",
            19,
            "attributes.status compares with =, !=, IN (...) or NOT IN (...)",
        ),
        ("attributes.status IN 'failed'", 22, "expected ( and the statuses after IN"),
        ("attributes.status IN ('failed' 'running')", 32, "expected , and another status, or ) to close"),
        ("attributes.status NOT 'failed'", 19, "expected IN after NOT"),
        (
            "attributes.user_id = 'me'",
            1,
            "attributes.user_id cannot be filtered: ListRuns filters attributes status, run_name, run_id, "
            "parent_run_id, start_time, end_time",
        ),
        (
            "attributes.status = 'failed' and attributes.status = 'running'",
            34,
            "no run status meets every condition on attributes.status",
        ),
    ],
)
def test_a_mistake_names_its_column_and_what_fits_there(text: str, column: int, reason: str) -> None:
    with pytest.raises(RunFilterError) as info:
        parse_filter(text)
    assert (info.value.column, info.value.reason[: len(reason)]) == (column, reason)
    # The message shows the filter with a caret under the column.
    shown, caret = str(info.value).splitlines()[1:]
    assert shown == f"  {text}" and caret == "  " + " " * (column - 1) + "^"
    assert isinstance(info.value, ValueError)


def test_orders_read_a_metric_its_field_and_direction() -> None:
    assert parse_order("metrics.val_loss") == RunOrderBy("val_loss", pb.SUMMARY_FIELD_UNSPECIFIED, None)
    assert parse_order(" metrics.acc desc ") == RunOrderBy("acc", pb.SUMMARY_FIELD_UNSPECIFIED, True)
    assert parse_order("metric.`a.b`.max ASC") == RunOrderBy("a.b", pb.SUMMARY_FIELD_MAX, False)
    assert parse_orders(["metrics.acc DESC"]) == [RunOrderBy("acc", pb.SUMMARY_FIELD_UNSPECIFIED, True)]
    assert parse_orders([]) == [] and parse_orders("") == []
    assert is_order_string("metrics.acc") and is_order_string("Tags.x")
    assert not is_order_string("val_loss") and not is_order_string("train.loss")


def test_a_metric_key_with_dots_is_read_whole_in_backquotes_and_an_aggregate_after_them() -> None:
    """MLflow's metrics.val.min is the metric named val.min; here the suffix is the summary's
    value, and the metric named so is written in backquotes."""
    assert parse_filter("metrics.val.min < 1").metrics == [
        _metric("val", pb.COMPARISON_LT, 1.0, pb.SUMMARY_FIELD_MIN)
    ]
    assert parse_filter("metrics.`val.min` < 1 and metrics.`val.min`.max < 2").metrics == [
        _metric("val.min", pb.COMPARISON_LT, 1.0),
        _metric("val.min", pb.COMPARISON_LT, 2.0, pb.SUMMARY_FIELD_MAX),
    ]
    assert parse_order("metrics.`val.min` DESC") == RunOrderBy("val.min", pb.SUMMARY_FIELD_UNSPECIFIED, True)
    with pytest.raises(RunFilterError) as info:
        parse_order("metrics.a.b.max DESC")
    assert info.value.reason.startswith("metrics.a.b.max reads two ways: write metrics.`a.b.max`")


@pytest.mark.parametrize(
    ("text", "column", "reason"),
    [
        ("metrics.a DESC,", 16, "expected a key after the comma"),
        ("metrics.a DESC metrics.b", 16, "expected a comma and the next key, or the end of the order"),
        ("metrics.a sideways", 11, "expected ASC or DESC, a comma and the next key, or the end of the order"),
        ("metrics.a, tags.team", 12, "runs are ordered by metrics, params and attributes, not by tags"),
        ("attributes.run_id DESC", 1, "attributes.run_id orders nothing: ListRuns orders by attributes"),
        ("metrics.a, run_id", 12, "run_id is a run attribute, as in MLflow, that ListRuns does not order by"),
        ("metrics.val-loss DESC", 12, "a key with - in it goes in backquotes: metrics.`val-loss`"),
        (
            " desc",
            2,
            "desc is a direction alone: write the key before it, metrics.KEY DESC (or params.KEY, or an "
            "attribute such as start_time)",
        ),
        ("ASC", 1, "ASC is a direction alone: write the key before it, metrics.KEY ASC"),
        ("run.loss ASC", 1, "attributes.loss orders nothing: ListRuns orders by attributes start_time,"),
    ],
)
def test_an_order_mistake_names_its_column(text: str, column: int, reason: str) -> None:
    with pytest.raises(RunFilterError) as info:
        parse_order(text)
    assert (info.value.column, info.value.reason[: len(reason)]) == (column, reason)


def test_an_order_of_several_keys_reads_each_with_its_direction() -> None:
    unset = pb.SUMMARY_FIELD_UNSPECIFIED
    both = [RunOrderBy("val_loss", unset, False), RunOrderBy("start_time", unset, True, "attributes")]
    assert parse_orders(["metrics.val_loss ASC", "start_time DESC"]) == both
    assert parse_orders("metrics.val_loss ASC, attributes.start_time DESC") == both
    assert parse_order_keys("params.`optimizer.lr`, run_name, Created, attribute.status DESC") == [
        RunOrderBy("optimizer.lr", unset, None, "params"),
        RunOrderBy("run_name", unset, None, "attributes"),
        RunOrderBy("start_time", unset, None, "attributes"),
        RunOrderBy("status", unset, True, "attributes"),
    ]
    assert is_order_string("val_loss, start_time")


def test_like_in_and_times_go_to_text_and_time_conditions() -> None:
    found = parse_filter(
        "params.model LIKE 'res%' and tags.team ILIKE '_IS%' and params.lr IN ('0.1', \"0.2\") and "
        "tags.t NOT IN ('a') and params.opt != 'sgd' and attributes.run_name = 'best' and "
        "attributes.start_time >= 1700000000000 and attributes.end_time < 1800000000000 and params.x = '1'"
    )
    text = pb.TextFilter
    assert list(found.texts) == [
        text(entity=pb.TEXT_ENTITY_PARAM, key="model", match=pb.TEXT_MATCH_LIKE, values=["res%"]),
        text(entity=pb.TEXT_ENTITY_TAG, key="team", match=pb.TEXT_MATCH_ILIKE, values=["_IS%"]),
        text(entity=pb.TEXT_ENTITY_PARAM, key="lr", match=pb.TEXT_MATCH_IN, values=["0.1", "0.2"]),
        text(entity=pb.TEXT_ENTITY_TAG, key="t", match=pb.TEXT_MATCH_NOT_IN, values=["a"]),
        text(entity=pb.TEXT_ENTITY_PARAM, key="opt", match=pb.TEXT_MATCH_NE, values=["sgd"]),
        text(entity=pb.TEXT_ENTITY_ATTRIBUTE, key="run_name", match=pb.TEXT_MATCH_EQ, values=["best"]),
    ]
    assert list(found.times) == [
        pb.TimeFilter(attribute="start_time", op=pb.COMPARISON_GE, value_ms=1700000000000),
        pb.TimeFilter(attribute="end_time", op=pb.COMPARISON_LT, value_ms=1800000000000),
    ]
    assert found.params == {"x": "1"}
    with pytest.raises(RunFilterError) as info:
        parse_filter("params.m LIKE '" + "%" * 501 + "'")
    assert (info.value.column, info.value.reason) == (
        15,
        "a LIKE pattern is at most 500 characters, this one is 501",
    )


def test_mlflows_run_name_and_parent_tags_read_the_run_attributes() -> None:
    """MLflow keeps a run's name and parent in tags; a tessera run holds no such tag, so the tags
    read the attributes instead of matching nothing. Other mlflow.* tags stay tags."""
    found = parse_filter(
        "tags.mlflow.runName = 'best' and tags.`mlflow.parentRunId` != 'r1' and tags.mlflow.source = 'x'"
    )
    text = pb.TextFilter
    assert list(found.texts) == [
        text(entity=pb.TEXT_ENTITY_ATTRIBUTE, key="run_name", match=pb.TEXT_MATCH_EQ, values=["best"]),
        text(entity=pb.TEXT_ENTITY_ATTRIBUTE, key="parent_run_id", match=pb.TEXT_MATCH_NE, values=["r1"]),
    ]
    assert found.tags == {"mlflow.source": "x"}
    unset = pb.SUMMARY_FIELD_UNSPECIFIED
    assert parse_order_keys("tags.mlflow.runName DESC") == [RunOrderBy("run_name", unset, True, "attributes")]
    with pytest.raises(RunFilterError, match=r"attributes\.parent_run_id orders nothing"):
        parse_order_keys("tags.mlflow.parentRunId")


def test_the_short_metric_condition_keeps_its_key_as_written() -> None:
    assert parse_metric_condition("val.acc-top1 >= 0.9") == _metric("val.acc-top1", pb.COMPARISON_GE, 0.9)
    assert parse_metric_condition("loss!=1") == _metric("loss", pb.COMPARISON_NE, 1.0)
    for text, column, reason in (
        (">1", 1, "expected a metric's key"),
        ("loss", 5, "expected a comparison, <, <=, >, >=, = or !=, and a number"),
        ("loss!1", 5, "expected a comparison after loss"),
        ("loss<", 6, "expected a number after loss's comparison"),
        ("loss<1 2", 8, "expected the end after the number"),
    ):
        with pytest.raises(RunFilterError) as info:
            parse_metric_condition(text)
        assert (info.value.column, info.value.reason[: len(reason)]) == (column, reason)


@pytest.mark.parametrize(
    ("text", "suggested"),
    [
        ("val_acc DESC", "metrics.val_acc DESC"),
        ("train_loss asc", "metrics.train_loss ASC"),
        ("val-loss  DESC", "metrics.`val-loss` DESC"),
    ],
)
def test_an_order_with_a_direction_names_its_metric_as_mlflow_does(text: str, suggested: str) -> None:
    # Read as a metric's name, "val_acc DESC" would order by a metric no run has: newest first.
    assert is_order_string(text)
    with pytest.raises(RunFilterError) as info:
        parse_order(text)
    assert info.value.column == 1
    assert info.value.reason.startswith(f"an order names its metric as metrics.KEY: write {suggested} ")


@pytest.mark.parametrize(
    ("text", "key", "descending"),
    [
        ("start_time", "start_time", None),
        ("end_time", "end_time", None),
        ("start_time DESC", "start_time", True),
        ("Created asc", "start_time", False),  # MLflow's alias
        ("status", "status", None),
    ],
)
def test_a_bare_run_attribute_orders_by_the_attribute_as_mlflow_reads_it(
    text: str, key: str, descending: bool | None
) -> None:
    assert is_order_string(text)
    assert parse_order(text) == RunOrderBy(key, pb.SUMMARY_FIELD_UNSPECIFIED, descending, "attributes")


@pytest.mark.parametrize("written", ["run_id", "user_id DESC", "artifact_uri"])
def test_an_order_on_a_run_attribute_listruns_cannot_order_by_is_refused(written: str) -> None:
    with pytest.raises(RunFilterError) as info:
        parse_order(written)
    name = written.split()[0]
    assert info.value.column == 1
    assert info.value.reason.startswith(
        f"{name} is a run attribute, as in MLflow, that ListRuns does not order by"
    )
