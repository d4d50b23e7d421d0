"""MLflow's run-search strings read into ListRuns' structured filters and order, without a daemon.

Filter: conditions joined by AND (any case), e.g.
`metrics.val_acc > 0.9 and params.lr = '0.01' and tags.team = 'vision' and attributes.status = 'FINISHED'`

- `metrics.KEY OP NUMBER`, OP one of < <= > >= = !=, compares the metric's last value;
  `metrics.KEY.min` or `.max` (or `.last`) compares that value of its summary instead. This
  suffix is tessera's own: MLflow reads metrics.val.min as the metric named val.min, which is
  metrics.`val.min` here (and metrics.`val.min`.max its max); a key with more dots unquoted,
  such as metrics.a.b.min, is refused, naming both readings.
- `params.KEY = 'VALUE'` and `tags.KEY = 'VALUE'`: exact text, in single or double quotes (a quote
  inside doubled: 'it''s'); the daemon compares a param and a value that are both numbers as
  numbers ('3e-3' matches 0.003; tessera.param_values has the rule), and true and false in any case.
  `!=`, `IN ('a', 'b')` and `NOT IN (...)` compare so too; `LIKE 'res%'` (% any run of characters,
  _ any one; case-sensitive) and `ILIKE` (not) match the text as logged. A run without the key
  matches none of these.
- `attributes.run_name`, `attributes.run_id` and `attributes.parent_run_id`: as a tag's text;
  MLflow's tags of the first and last, `tags.mlflow.runName` and `tags.mlflow.parentRunId`, read them. `attributes.start_time` and
  `attributes.end_time` OP MILLISECONDS since the epoch, as MLflow's (a run not ended has no end_time).
- `attributes.status = 'X'`, `!= 'X'`, `IN ('X', 'Y')` or `NOT IN (...)`: a run status, or MLflow's
  FINISHED (succeeded) and KILLED (cancelled).
- A key of other characters than letters, digits and _ goes in backquotes: metrics.`val-loss`;
  a param's or tag's may hold dots without them, as in MLflow: params.optimizer.lr.
  MLflow's other entity spellings (metric, param, parameter, tag, attribute, attr, run) work too.

Order: one key or more apart by commas (or a list of strings), each `metrics.KEY` (with .last,
.min or .max as above), `params.KEY` (as text) or a run attribute, start_time, end_time, run_name
or status (bare, as MLflow reads them, or attributes.NAME; created is start_time), then ASC or
DESC; without either, ascending, as in MLflow (the SDK's runs() reads it so; a metric's name alone,
order_by="val_loss", takes the metric's own direction instead, and no ASC or DESC). The first key
decides first; runs lacking a key's value come after the others, and equal runs by run id.

Mistakes raise RunFilterError (a ValueError) naming the column and what fits there.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field

from tessera.state_words import enum_word
from tessera.v1 import training_pb2 as pb

_ENTITIES = {
    "metric": "metrics",
    "metrics": "metrics",
    "param": "params",
    "params": "params",
    "parameter": "params",
    "parameters": "params",
    "tag": "tags",
    "tags": "tags",
    "attribute": "attributes",
    "attributes": "attributes",
    "attr": "attributes",
    "run": "attributes",
}
# Longest first, so "<=" is not read as "<" then "=".
_COMPARISONS = {
    "<=": pb.COMPARISON_LE,
    ">=": pb.COMPARISON_GE,
    "!=": pb.COMPARISON_NE,
    "<": pb.COMPARISON_LT,
    ">": pb.COMPARISON_GT,
    "=": pb.COMPARISON_EQ,
}
_DIRECTIONS = ("ASC", "DESC")
# MLflow's run attributes an order names bare ("start_time", "start_time DESC"), as MLflow reads
# them (RunInfo's orderable attributes and the alias "created"): ListRuns orders by a metric only,
# so such an order is refused, not read as a metric of that name that no run has.
_RUN_ATTRIBUTES = (
    "start_time",
    "end_time",
    "created",
    "status",
    "run_name",
    "run_id",
    "user_id",
    "artifact_uri",
)
_FIELDS = {"last": pb.SUMMARY_FIELD_LAST, "min": pb.SUMMARY_FIELD_MIN, "max": pb.SUMMARY_FIELD_MAX}
RUN_STATUSES = tuple(
    enum_word(pb.RunStatus.DESCRIPTOR, value.name) for value in pb.RunStatus.DESCRIPTOR.values if value.number
)
# MLflow's names for the statuses tessera names otherwise.
STATUS_ALIASES = {"finished": "succeeded", "killed": "cancelled"}
_STATUS_NAMES = [
    status + "".join(f" (or {alias.upper()})" for alias, same in STATUS_ALIASES.items() if same == status)
    for status in RUN_STATUSES
]
_STATUS_CHOICES = f"{', '.join(_STATUS_NAMES[:-1])} or {_STATUS_NAMES[-1]}"
_WORD = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_KEY = re.compile(r"\w+")  # letters of any script, digits and _
# Characters MLflow's keys often hold (train/loss, batch-size) that end a key unquoted here.
_KEY_PUNCTUATION = ("-", "/", ":")
_NUMBER = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?")
_CONDITIONS = "metrics.KEY, params.KEY, tags.KEY or attributes.NAME"
_TEXT_ATTRIBUTES = ("run_name", "run_id", "parent_run_id")
_TIME_ATTRIBUTES = ("start_time", "end_time")
_FILTER_ATTRIBUTES = ("status", *_TEXT_ATTRIBUTES, *_TIME_ATTRIBUTES)
# The run attributes ListRuns orders by, and MLflow's alias of start_time.
_ORDER_ATTRIBUTES = ("start_time", "end_time", "run_name", "status")
_ATTRIBUTE_ALIASES = {"created": "start_time"}
# The tags MLflow keeps a run's name and parent in: here they are the run's own attributes, so a
# filter or order on the tag reads those (a run holds no such tag, and would match nothing).
_MLFLOW_ATTRIBUTE_TAGS = {"mlflow.runName": "run_name", "mlflow.parentRunId": "parent_run_id"}
_TEXT_ENTITIES = {
    "params": pb.TEXT_ENTITY_PARAM,
    "tags": pb.TEXT_ENTITY_TAG,
    "attributes": pb.TEXT_ENTITY_ATTRIBUTE,
}
# As the daemon bounds a LIKE pattern (its matching costs up to value x pattern steps).
MAX_LIKE_PATTERN = 500
_MILLISECONDS = re.compile(r"[0-9]+")


class RunFilterError(ValueError):
    """A filter or order string that cannot be read: where (1-based column) and why."""

    def __init__(self, text: str, column: int, reason: str) -> None:
        self.text, self.column, self.reason = text, column, reason
        super().__init__(f"column {column}: {reason}\n  {text}\n  {' ' * (column - 1)}^")


@dataclass
class RunFilter:
    """A filter string as ListRuns' fields; every condition must hold."""

    statuses: list[str] = field(default_factory=list)  # empty: any status
    params: dict[str, str] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    metrics: list[pb.MetricFilter] = field(default_factory=list)
    # LIKE, ILIKE, IN, NOT IN and != on params and tags, and conditions on run_name and run_id.
    texts: list[pb.TextFilter] = field(default_factory=list)
    times: list[pb.TimeFilter] = field(default_factory=list)


@dataclass(frozen=True)
class RunOrderBy:
    """One key of an order string as ListRuns' RunOrder."""

    key: str
    field: pb.SummaryField.ValueType  # UNSPECIFIED when not given: the last value (metrics only)
    descending: bool | None  # None: not written (ascending, as MLflow's, unless told otherwise)
    entity: str = "metrics"  # metrics, params or attributes

    def to_proto(self) -> pb.RunOrder:
        """As one of ListRunsRequest.order_keys: ascending unless DESC was written."""
        order = pb.RunOrder(field=self.field)
        setattr(
            order, {"metrics": "metric", "params": "param", "attributes": "attribute"}[self.entity], self.key
        )
        order.direction = pb.SORT_DIRECTION_DESCENDING if self.descending else pb.SORT_DIRECTION_ASCENDING
        return order


class _Scanner:
    """Reads a string left to right, failing with the column it got to."""

    def __init__(self, text: str) -> None:
        self.text, self.at = text, 0

    def fail(self, reason: str, at: int | None = None) -> RunFilterError:
        return RunFilterError(self.text, (self.at if at is None else at) + 1, reason)

    def space(self) -> None:
        while self.at < len(self.text) and self.text[self.at].isspace():
            self.at += 1

    def done(self) -> bool:
        self.space()
        return self.at == len(self.text)

    def match(self, pattern: re.Pattern[str]) -> str:
        found = pattern.match(self.text, self.at)
        if not found:
            return ""
        self.at = found.end()
        return found.group()

    def peek_word(self) -> str:
        found = _WORD.match(self.text, self.at)
        return found.group() if found else ""

    def take(self, literal: str) -> bool:
        if self.text.startswith(literal, self.at):
            self.at += len(literal)
            return True
        return False

    def quoted(self, quotes: str, what: str) -> str:
        """Text between a pair of one of `quotes`, a quote inside it doubled; "" if none opens here."""
        start, quote = self.at, self.text[self.at : self.at + 1]
        if not quote or quote not in quotes:
            return ""
        self.at += 1
        parts = []
        while True:
            end = self.text.find(quote, self.at)
            if end < 0:
                raise self.fail(f"the {what} opened here has no closing {quote}", start)
            parts.append(self.text[self.at : end])
            self.at = end + 1
            if not self.take(quote):
                return quote.join(parts)


@dataclass
class _Operand:
    """`entity.key[.field]` as written, with where it starts."""

    entity: str
    key: str
    field: str
    start: int


def _operand(scan: _Scanner, allowed: str) -> _Operand:
    scan.space()
    start = scan.at
    word = scan.match(_WORD)
    entity = _ENTITIES.get(word.lower())
    if entity is None:
        raise scan.fail(
            f"{word!r} is not a condition; write {allowed}" if word else f"expected {allowed}", start
        )
    if not scan.take("."):
        raise scan.fail(f"expected . and a key after {word}, e.g. {entity}.val_loss")
    key_at = scan.at
    quoted = scan.text[key_at : key_at + 1] in ("`", '"')
    key = scan.quoted('`"', "key") if quoted else scan.match(_KEY)
    key_end = scan.at
    if not key:
        if quoted:
            raise scan.fail("the key is empty", key_at)
        raise scan.fail(
            f"expected a key after {word}.: letters, digits and _, or any key in backquotes, "
            f"e.g. {entity}.`val-loss`"
        )
    summary = ""
    if entity in ("params", "tags") and not quoted:
        # As in MLflow, whose key is all after the entity's dot: a job's run names its spec's
        # params by their path (optimizer.lr), and params and tags have no .min or .max to tell apart.
        while scan.take("."):
            part = scan.match(_KEY)
            if not part:
                raise scan.fail(f"expected the rest of the key after {entity}.{key}.")
            key = f"{key}.{part}"
    elif scan.take("."):
        suffix_at = scan.at
        summary = scan.match(_WORD)
        if entity != "metrics":
            dotted = f"{key}.{summary}" if summary else "a.b"
            raise scan.fail(f"write a key with dots in backquotes: {entity}.`{dotted}`", suffix_at)
        if summary not in _FIELDS or scan.text[scan.at : scan.at + 1] == ".":
            end = key_end
            while end < len(scan.text) and not scan.text[end].isspace() and scan.text[end] not in "<>=!":
                end += 1
            raise scan.fail(_dotted_metric(key + scan.text[key_end:end]), suffix_at)
    if not quoted and scan.text[scan.at : scan.at + 1] in _KEY_PUNCTUATION:
        # Read on, the rest would be refused as a comparison: say what the key needs instead.
        end = scan.at
        while end < len(scan.text) and not scan.text[end].isspace() and scan.text[end] not in "<>=!":
            end += 1
        mark = scan.text[scan.at]
        if summary:
            # The metric's aggregate was read, so what follows is no part of its key.
            raise scan.fail(
                f"expected a comparison after {entity}.{key}.{summary}, not {mark}: .last, .min or .max "
                f"ends a metric, and a key with {mark} in it goes in backquotes before it, e.g. "
                f"{entity}.`a{mark}b`.{summary}"
            )
        written = scan.text[key_at:end]
        stem, dot, field = written.rpartition(".")
        if entity == "metrics" and dot and field in _FIELDS:
            raise scan.fail(
                f"a key with {mark} in it goes in backquotes, .last, .min or .max after them: "
                f"{entity}.`{stem}`.{field}"
            )
        raise scan.fail(f"a key with {mark} in it goes in backquotes: {entity}.`{written}`")
    if entity == "tags" and key in _MLFLOW_ATTRIBUTE_TAGS:
        return _Operand("attributes", _MLFLOW_ATTRIBUTE_TAGS[key], summary, start)
    return _Operand(entity, key, summary, start)


def _backquoted(key: str) -> str:
    return "`" + key.replace("`", "``") + "`"


def _dotted_metric(written: str) -> str:
    """What to write for a metric's key with dots that was not in backquotes, `written` as it
    was from the key on. Ending in .last, .min or .max, it reads two ways: a metric of that whole
    name, as in MLflow, or that value of the metric before it, as here; both are spelt out."""
    stem, _, field = written.rpartition(".")
    if field in _FIELDS:
        return (
            f"metrics.{written} reads two ways: write metrics.{_backquoted(written)} for the metric named "
            f"{written} (as MLflow reads it), or metrics.{_backquoted(stem)}.{field} for the {field} of "
            f"metric {stem} (a key with dots goes in backquotes, .last, .min or .max after them)"
        )
    return (
        "write .last, .min or .max after a metric's key, or a key with dots in backquotes: "
        f"metrics.{_backquoted(written)}"
    )


def _comparison(scan: _Scanner) -> str:
    scan.space()
    if scan.take("=="):
        raise scan.fail("write = to compare for equality, not ==", scan.at - 2)
    return next((op for op in _COMPARISONS if scan.take(op)), "")


def _number(scan: _Scanner, compared: str) -> float:
    scan.space()
    start = scan.at
    if scan.text[start : start + 1] in ("'", '"'):
        raise scan.fail(f"a metric compares with a number, not text: write {compared} > 0.9")
    text = scan.match(_NUMBER)
    if not text or scan.peek_word() or scan.text[scan.at : scan.at + 1] in (".", "`", '"', "'"):
        raise scan.fail(f"expected a number after {compared}'s comparison, e.g. 0.9 or 1e-3", start)
    value = float(text)
    if value in (float("inf"), float("-inf")):
        raise scan.fail(f"{text} is past the largest number a metric holds", start)
    return value


def _text(scan: _Scanner, operand: _Operand) -> str:
    scan.space()
    start = scan.at
    value = scan.quoted("'\"", "value")
    if scan.at == start:
        raise scan.fail(f"quote the value: {operand.entity}.{operand.key} = 'VALUE'")
    return value


def _status(scan: _Scanner) -> str:
    scan.space()
    start = scan.at
    value = _text(scan, _Operand("attributes", "status", "", start))
    status = STATUS_ALIASES.get(value.lower(), value.lower())
    if status not in RUN_STATUSES:
        raise scan.fail(f"{value!r} is not a run status; use {_STATUS_CHOICES}", start)
    return status


def _status_list(scan: _Scanner) -> set[str]:
    scan.space()
    if not scan.take("("):
        raise scan.fail("expected ( and the statuses after IN, e.g. IN ('failed', 'cancelled')")
    statuses = {_status(scan)}
    while True:
        scan.space()
        if scan.take(")"):
            return statuses
        if not scan.take(","):
            raise scan.fail("expected , and another status, or ) to close the list")
        statuses.add(_status(scan))


def _status_condition(scan: _Scanner, operand: _Operand) -> set[str]:
    """The statuses `attributes.status OP ...` lets through."""
    if operand.key != "status":
        raise scan.fail(
            f"attributes.{operand.key} cannot be filtered: ListRuns filters attributes "
            f"{', '.join(_FILTER_ATTRIBUTES)}",
            operand.start,
        )
    scan.space()
    at = scan.at
    word = scan.peek_word().upper()
    if word in ("IN", "NOT"):
        scan.match(_WORD)
        if word == "NOT":
            scan.space()
            if scan.match(_WORD).upper() != "IN":
                raise scan.fail("expected IN after NOT", at)
        listed = _status_list(scan)
        return set(RUN_STATUSES) - listed if word == "NOT" else listed
    op = _comparison(scan)
    if op not in ("=", "!="):
        raise scan.fail("attributes.status compares with =, !=, IN (...) or NOT IN (...)", at)
    status = _status(scan)
    return set(RUN_STATUSES) - {status} if op == "!=" else {status}


def _text_list(scan: _Scanner, operand: _Operand, word: str) -> list[str]:
    scan.space()
    if not scan.take("("):
        raise scan.fail(f"expected ( and the values after {word}, e.g. {word} ('a', 'b')")
    values = [_text(scan, operand)]
    while True:
        scan.space()
        if scan.take(")"):
            return values
        if not scan.take(","):
            raise scan.fail("expected , and another value, or ) to close the list")
        values.append(_text(scan, operand))


def _text_condition(scan: _Scanner, operand: _Operand, found: RunFilter) -> None:
    """A param's, tag's, run_name's or run_id's condition: = and a param or tag into
    found.params or found.tags (as ListRuns has long taken them), the others into found.texts."""
    scan.space()
    at = scan.at
    column = f"{operand.entity}.{operand.key}"
    word = scan.peek_word().upper()
    if word in ("LIKE", "ILIKE", "IN", "NOT"):
        scan.match(_WORD)
        if word == "NOT":
            scan.space()
            if scan.match(_WORD).upper() != "IN":
                raise scan.fail("expected IN after NOT", at)
            word = "NOT_IN"
        if word in ("IN", "NOT_IN"):
            values = _text_list(scan, operand, word.replace("_", " "))
        else:
            scan.space()
            value_at = scan.at
            values = [_text(scan, operand)]
            if len(values[0]) > MAX_LIKE_PATTERN:
                raise scan.fail(
                    f"a {word} pattern is at most {MAX_LIKE_PATTERN} characters, this one is {len(values[0]):,}",
                    value_at,
                )
        match = getattr(pb, f"TEXT_MATCH_{word}")
    else:
        op = _comparison(scan)
        if op not in ("=", "!="):
            raise scan.fail(f"{column} compares with =, !=, LIKE, ILIKE, IN (...) or NOT IN (...)", at)
        value = _text(scan, operand)
        if op == "=" and operand.entity != "attributes":
            kept = found.params if operand.entity == "params" else found.tags
            if kept.get(operand.key, value) != value:
                raise scan.fail(
                    f"{column} is already compared with {kept[operand.key]!r}; "
                    "a run has one value, so no run matches both",
                    operand.start,
                )
            kept[operand.key] = value
            return
        values = [value]
        match = pb.TEXT_MATCH_EQ if op == "=" else pb.TEXT_MATCH_NE
    found.texts.append(
        pb.TextFilter(entity=_TEXT_ENTITIES[operand.entity], key=operand.key, match=match, values=values)
    )


def _time_condition(scan: _Scanner, operand: _Operand) -> pb.TimeFilter:
    """`attributes.start_time OP MILLISECONDS` (since the epoch, as MLflow's times)."""
    scan.space()
    at = scan.at
    op = _comparison(scan)
    if not op:
        raise scan.fail(f"expected a comparison after attributes.{operand.key}: <, <=, >, >=, = or !=", at)
    scan.space()
    value_at = scan.at
    text = scan.match(_MILLISECONDS)
    if not text or scan.peek_word() or scan.text[scan.at : scan.at + 1] in (".", "'", '"'):
        raise scan.fail(
            f"attributes.{operand.key} compares with a whole number of milliseconds since the epoch, "
            "e.g. 1700000000000",
            value_at,
        )
    if int(text) >= 2**63:
        raise scan.fail(f"{text} is past the largest time", value_at)
    return pb.TimeFilter(attribute=operand.key, op=_COMPARISONS[op], value_ms=int(text))


def parse_filter(text: str) -> RunFilter:
    """A filter string (see the module's docstring) as ListRuns' fields; "" filters nothing."""
    scan = _Scanner(text)
    found = RunFilter()
    statuses: set[str] | None = None
    while not scan.done():
        operand = _operand(scan, _CONDITIONS)
        if operand.entity == "metrics":
            scan.space()
            at = scan.at
            op = _comparison(scan)
            if not op:
                raise scan.fail(
                    f"expected a comparison after metrics.{operand.key}: <, <=, >, >=, = or !=", at
                )
            value = _number(scan, f"metrics.{operand.key}")
            found.metrics.append(
                pb.MetricFilter(
                    key=operand.key,
                    field=_FIELDS[operand.field or "last"],
                    op=_COMPARISONS[op],
                    value=value,
                )
            )
        elif operand.entity == "attributes" and operand.key in _TIME_ATTRIBUTES:
            found.times.append(_time_condition(scan, operand))
        elif operand.entity == "attributes" and operand.key in _TEXT_ATTRIBUTES:
            _text_condition(scan, operand, found)
        elif operand.entity == "attributes":
            allowed = _status_condition(scan, operand)
            statuses = allowed if statuses is None else statuses & allowed
            if not statuses:
                raise scan.fail("no run status meets every condition on attributes.status", operand.start)
        else:
            _text_condition(scan, operand, found)
        if scan.done():
            break
        joiner_at = scan.at
        joiner = scan.match(_WORD).upper()
        if joiner == "OR":
            raise scan.fail(
                "OR is not supported (nor in MLflow's search): list once per alternative, or for "
                "statuses write attributes.status IN ('failed', 'cancelled')",
                joiner_at,
            )
        if joiner != "AND":
            raise scan.fail("expected AND between two conditions, or the end of the filter", joiner_at)
        if scan.done():
            raise scan.fail(f"expected a condition after AND: {_CONDITIONS}")
    found.statuses = [s for s in RUN_STATUSES if s in statuses] if statuses is not None else []
    return found


def parse_metric_condition(text: str) -> pb.MetricFilter:
    """`KEY OP NUMBER` on a metric's last value, e.g. val_acc>0.9 (the CLI's --metric): the key
    as written up to the comparison, dots and dashes included."""
    scan = _Scanner(text)
    scan.at = next((i for i, c in enumerate(text) if c in "<>=!"), len(text))
    key = text[: scan.at].strip()
    if not key:
        raise scan.fail("expected a metric's key, then a comparison and a number, e.g. val_acc>0.9", 0)
    if scan.at == len(text):
        raise scan.fail("expected a comparison, <, <=, >, >=, = or !=, and a number, e.g. val_acc>0.9")
    op = _comparison(scan)
    if not op:
        raise scan.fail(f"expected a comparison after {key}: <, <=, >, >=, = or !=, e.g. {key}>0.9")
    value = _number(scan, key)
    if not scan.done():
        raise scan.fail("expected the end after the number")
    return pb.MetricFilter(key=key, field=pb.SUMMARY_FIELD_LAST, op=_COMPARISONS[op], value=value)


def _order_key(scan: _Scanner) -> RunOrderBy:
    """One key of an order: `metrics.KEY[.FIELD]`, `params.KEY`, `attributes.NAME` or a bare
    attribute's NAME (as MLflow reads start_time), then ASC or DESC if written."""
    scan.space()
    start = scan.at
    word = scan.peek_word()
    after = scan.text[start + len(word) : start + len(word) + 1]
    entity = _ENTITIES.get(word.lower()) if after == "." else None
    if entity is None:
        name = _ATTRIBUTE_ALIASES.get(word.lower(), word.lower())
        if not word or name not in _ORDER_ATTRIBUTES or (after and not after.isspace() and after != ","):
            raise _unnamed_order(scan)
        scan.match(_WORD)
        key, field_name = name, ""
        entity = "attributes"
    else:
        operand = _operand(scan, "metrics.KEY, params.KEY or attributes.NAME, then ASC or DESC")
        entity, key, field_name = operand.entity, operand.key, operand.field
        if entity == "tags":
            raise scan.fail("runs are ordered by metrics, params and attributes, not by tags", start)
        if entity == "attributes":
            key = _ATTRIBUTE_ALIASES.get(key.lower(), key)
            if key not in _ORDER_ATTRIBUTES:
                raise scan.fail(
                    f"attributes.{operand.key} orders nothing: ListRuns orders by attributes "
                    f"{', '.join(_ORDER_ATTRIBUTES)}",
                    start,
                )
    descending: bool | None = None
    scan.space()
    at = scan.at
    if not scan.done() and not scan.text.startswith(",", at):
        direction = scan.match(_WORD).upper()
        if direction not in _DIRECTIONS:
            raise scan.fail("expected ASC or DESC, a comma and the next key, or the end of the order", at)
        descending = direction == "DESC"
    field = _FIELDS[field_name] if field_name else pb.SUMMARY_FIELD_UNSPECIFIED
    return RunOrderBy(key, field, descending, entity)


def parse_order_keys(text: str) -> list[RunOrderBy]:
    """An order string of one or more keys apart by commas, e.g. `metrics.val_loss ASC,
    start_time DESC`: the first decides first, the next between runs equal in it, and so on."""
    scan = _Scanner(text)
    if scan.done():
        raise scan.fail(
            "the order is empty; write metrics.KEY, params.KEY or an attribute, then ASC or DESC if you choose"
        )
    keys = [_order_key(scan)]
    while not scan.done():
        if not scan.take(","):
            raise scan.fail("expected a comma and the next key, or the end of the order")
        if scan.done():
            raise scan.fail("expected a key after the comma")
        keys.append(_order_key(scan))
    return keys


def parse_order(text: str) -> RunOrderBy:
    """An order string of one key (see parse_order_keys)."""
    keys = parse_order_keys(text)
    if len(keys) > 1:
        raise RunFilterError(text, text.index(",") + 1, "expected one key: use parse_order_keys for more")
    return keys[0]


def _unnamed_order(scan: _Scanner) -> RunFilterError:
    """The error for an order key whose metric lacks `metrics.`, such as "val_loss DESC", or a
    run attribute that orders nothing, such as run_id."""
    rest = scan.text[scan.at :].split(",", 1)[0]
    *name, last = rest.split() or [""]
    if not name and last.upper() in _DIRECTIONS:
        return scan.fail(
            f"{last} is a direction alone: write the key before it, metrics.KEY {last.upper()} (or "
            "params.KEY, or an attribute such as start_time)"
        )
    direction = f" {last.upper()}" if name and last.upper() in _DIRECTIONS else ""
    written = rest.strip()
    if direction:
        written = written[: -len(last)].rstrip()
    quoted = _KEY.fullmatch(written) or written.startswith("`")
    key = written if quoted else "`" + written.replace("`", "``") + "`"
    if written.lower() in _RUN_ATTRIBUTES:
        return scan.fail(
            f"{written} is a run attribute, as in MLflow, that ListRuns does not order by: use one of "
            f"{', '.join(_ORDER_ATTRIBUTES)}, or write metrics.{key}{direction} for a metric of that name"
        )
    return scan.fail(
        f"an order names its metric as metrics.KEY: write metrics.{key}{direction} (or params.KEY, or an "
        f"attribute: {', '.join(_ORDER_ATTRIBUTES)})"
    )


def is_order_string(text: str) -> bool:
    """Whether an order is MLflow's, read by parse_order: it names `entity.key`, it ends in ASC
    or DESC, which a metric's name alone does not take, or it is a run attribute's name, which
    MLflow reads as the attribute (read as a metric's name, "val_loss DESC", "start_time DESC" or
    "start_time" would order by a metric no run has)."""
    entity, dot, _ = text.strip().partition(".")
    words = text.split()
    return (
        "," in text
        or (bool(dot) and entity.lower() in _ENTITIES)
        or (len(words) > 1 and words[-1].upper() in _DIRECTIONS)
        or (len(words) == 1 and words[0].lower() in _RUN_ATTRIBUTES)
    )


def parse_orders(orders: str | Iterable[str]) -> list[RunOrderBy]:
    """MLflow's order_by, a string or a list of them, each of one key or more apart by commas;
    [] for no order."""
    given = [orders] if isinstance(orders, str) else list(orders)
    return [key for text in given if text.strip() for key in parse_order_keys(text)]
