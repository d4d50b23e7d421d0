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
- `attributes.status = 'X'`, `!= 'X'`, `IN ('X', 'Y')` or `NOT IN (...)`: a run status, or MLflow's
  FINISHED (succeeded) and KILLED (cancelled).
- A key of other characters than letters, digits and _ goes in backquotes: metrics.`val-loss`;
  a param's or tag's may hold dots without them, as in MLflow: params.optimizer.lr.
  MLflow's other entity spellings (metric, param, parameter, tag, attribute, attr, run) work too.

Order: `metrics.KEY [ASC|DESC]` (with .last, .min or .max as above); without ASC or DESC,
ascending, as in MLflow (the SDK's runs() reads it so; a metric's name alone, order_by="val_loss",
takes the metric's own direction instead, and no ASC or DESC). ListRuns orders by one metric,
and by no run attribute: MLflow's start_time, end_time, status and the like, bare or with ASC or
DESC, are refused (without an order, runs come newest first).

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
_CONDITIONS = "metrics.KEY, params.KEY, tags.KEY or attributes.status"


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


@dataclass(frozen=True)
class RunOrderBy:
    """An order string as ListRuns' RunOrder."""

    metric: str
    field: pb.SummaryField.ValueType  # UNSPECIFIED when not given: the last value
    descending: bool | None  # None: not written (ascending, as MLflow's, unless told otherwise)


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
            f"attributes.{operand.key} cannot be filtered: ListRuns filters attributes by status only",
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


def _text_condition(scan: _Scanner, operand: _Operand, kept: dict[str, str]) -> None:
    scan.space()
    at = scan.at
    if _comparison(scan) != "=":
        singular = operand.entity[:-1]
        raise scan.fail(
            f"{operand.entity} compare with = only: ListRuns matches a {singular}'s exact text, "
            f"e.g. {operand.entity}.{operand.key} = 'VALUE'",
            at,
        )
    value = _text(scan, operand)
    if kept.get(operand.key, value) != value:
        raise scan.fail(
            f"{operand.entity}.{operand.key} is already compared with {kept[operand.key]!r}; "
            "a run has one value, so no run matches both",
            operand.start,
        )
    kept[operand.key] = value


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
        elif operand.entity == "attributes":
            allowed = _status_condition(scan, operand)
            statuses = allowed if statuses is None else statuses & allowed
            if not statuses:
                raise scan.fail("no run status meets every condition on attributes.status", operand.start)
        else:
            _text_condition(scan, operand, found.params if operand.entity == "params" else found.tags)
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


def parse_order(text: str) -> RunOrderBy:
    """An order string, `metrics.KEY[.FIELD] [ASC|DESC]`, as ListRuns' RunOrder."""
    scan = _Scanner(text)
    if scan.done():
        raise scan.fail("the order is empty; write metrics.KEY, then ASC or DESC if you choose")
    if scan.peek_word().lower() not in _ENTITIES:
        raise _unnamed_order(scan)
    operand = _operand(scan, "metrics.KEY, then ASC or DESC")
    if operand.entity != "metrics":
        written = text[operand.start : scan.at]
        raise scan.fail(
            "ListRuns orders runs by a metric only (metrics.KEY [ASC|DESC]); without an order they "
            f"come newest first (a metric named {written} is metrics.`{written}`)",
            operand.start,
        )
    descending: bool | None = None
    if not scan.done():
        at = scan.at
        direction = scan.match(_WORD).upper()
        if direction not in _DIRECTIONS:
            if scan.take(","):
                raise scan.fail("ListRuns orders by one metric: leave out the orders after the first", at)
            raise scan.fail("expected ASC or DESC, or the end of the order", at)
        descending = direction == "DESC"
        if not scan.done():
            raise scan.fail("ListRuns orders by one metric: leave out the orders after the first")
    field = _FIELDS[operand.field] if operand.field else pb.SUMMARY_FIELD_UNSPECIFIED
    return RunOrderBy(operand.key, field, descending)


def _unnamed_order(scan: _Scanner) -> RunFilterError:
    """The error for an order whose metric lacks `metrics.`, such as "val_loss DESC", or that
    names a run attribute, such as MLflow's "start_time DESC"."""
    *name, last = scan.text.split()
    if not name and last.upper() in _DIRECTIONS:
        return scan.fail(
            f"{last} is a direction alone: write the metric before it, metrics.KEY {last.upper()} "
            "(ListRuns orders runs by a metric only; without an order they come newest first)"
        )
    direction = f" {last.upper()}" if name and last.upper() in _DIRECTIONS else ""
    written = scan.text.strip()
    if direction:
        written = written[: -len(last)].rstrip()
    quoted = _KEY.fullmatch(written) or written.startswith("`")
    key = written if quoted else "`" + written.replace("`", "``") + "`"
    if written.lower() in _RUN_ATTRIBUTES:
        return scan.fail(
            f"{written} is a run attribute, as in MLflow, and ListRuns orders runs by a metric only: "
            f"leave the order out for runs newest first, or write metrics.{key}{direction} for a metric "
            "of that name"
        )
    return scan.fail(
        f"an order names its metric as metrics.KEY: write metrics.{key}{direction} (ListRuns orders "
        "runs by a metric only; without an order they come newest first)"
    )


def is_order_string(text: str) -> bool:
    """Whether an order is MLflow's, read by parse_order: it names `entity.key`, it ends in ASC
    or DESC, which a metric's name alone does not take, or it is a run attribute's name, which
    MLflow reads as the attribute (read as a metric's name, "val_loss DESC", "start_time DESC" or
    "start_time" would order by a metric no run has)."""
    entity, dot, _ = text.strip().partition(".")
    words = text.split()
    return (
        (bool(dot) and entity.lower() in _ENTITIES)
        or (len(words) > 1 and words[-1].upper() in _DIRECTIONS)
        or (len(words) == 1 and words[0].lower() in _RUN_ATTRIBUTES)
    )


def parse_orders(orders: str | Iterable[str]) -> RunOrderBy | None:
    """MLflow's order_by, a string or a list of at most one; None for no order."""
    given = [orders] if isinstance(orders, str) else list(orders)
    given = [o for o in given if o.strip()]
    if len(given) > 1:
        raise ValueError(
            f"order_by: ListRuns orders by one metric, {len(given)} orders given; give one, e.g. "
            "'metrics.val_loss ASC'"
        )
    return parse_order(given[0]) if given else None
