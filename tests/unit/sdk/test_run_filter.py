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
    found = parse_filter("params.optimizer.lr = '0.001' and tags.mlflow.runName = 'a' and params.x = 'y'")
    assert found.params == {"optimizer.lr": "0.001", "x": "y"}
    assert found.tags == {"mlflow.runName": "a"}


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
        ("(metrics.a > 1)", 1, "expected metrics.KEY, params.KEY, tags.KEY or attributes.status"),
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
        ("tags.team LIKE 'vis%'", 11, "tags compare with = only: ListRuns matches a tag's exact text"),
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
            "attributes.start_time > 5",
            1,
            "attributes.start_time cannot be filtered: ListRuns filters attributes by status only",
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
    assert parse_orders(["metrics.acc DESC"]) == RunOrderBy("acc", pb.SUMMARY_FIELD_UNSPECIFIED, True)
    assert parse_orders([]) is None and parse_orders("") is None
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
        (
            "metrics.a DESC, metrics.b",
            15,
            "ListRuns orders by one metric: leave out the orders after the first",
        ),
        ("metrics.a, metrics.b", 10, "ListRuns orders by one metric"),
        ("metrics.a sideways", 11, "expected ASC or DESC, or the end of the order"),
        ("metrics.val-loss DESC", 12, "a key with - in it goes in backquotes: metrics.`val-loss`"),
        ("attributes.start_time DESC", 1, "ListRuns orders runs by a metric only"),
        (
            " desc",
            2,
            "desc is a direction alone: write the metric before it, metrics.KEY DESC (ListRuns orders "
            "runs by a metric only; without an order they come newest first)",
        ),
        ("ASC", 1, "ASC is a direction alone: write the metric before it, metrics.KEY ASC"),
        (
            "run.loss ASC",
            1,
            "ListRuns orders runs by a metric only (metrics.KEY [ASC|DESC]); without an "
            "order they come newest first (a metric named run.loss is metrics.`run.loss`)",
        ),
    ],
)
def test_an_order_mistake_names_its_column(text: str, column: int, reason: str) -> None:
    with pytest.raises(RunFilterError) as info:
        parse_order(text)
    assert (info.value.column, info.value.reason[: len(reason)]) == (column, reason)


def test_more_than_one_order_is_refused() -> None:
    with pytest.raises(ValueError, match="ListRuns orders by one metric, 2 orders given"):
        parse_orders(["metrics.a ASC", "metrics.b DESC"])


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
    ("text", "written", "suggested"),
    [
        ("start_time", "start_time", "metrics.start_time"),
        ("end_time", "end_time", "metrics.end_time"),
        ("start_time DESC", "start_time", "metrics.start_time DESC"),
        ("Created asc", "Created", "metrics.Created ASC"),
        ("status", "status", "metrics.status"),
    ],
)
def test_an_order_on_a_run_attribute_is_refused_as_mlflow_reads_it(
    text: str, written: str, suggested: str
) -> None:
    # MLflow reads a bare start_time as the run attribute; it was read as a metric no run has,
    # and the runs came in no order the caller asked for.
    assert is_order_string(text)
    with pytest.raises(RunFilterError) as info:
        parse_order(text)
    assert info.value.column == 1
    assert info.value.reason == (
        f"{written} is a run attribute, as in MLflow, and ListRuns orders runs by a metric only: leave "
        f"the order out for runs newest first, or write {suggested} for a metric of that name"
    )
