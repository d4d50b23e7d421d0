'use strict';
// MLflow's run-search strings read into ListRuns' structured filters and order, without a daemon:
// a port of the Python SDK's tessera.run_filter (clients/python/src/tessera/run_filter.py), with
// its grammar and its error messages.
//
// Filter: conditions joined by AND (any case), e.g.
// `metrics.val_acc > 0.9 and params.lr = '0.01' and tags.team = 'vision' and attributes.status = 'FINISHED'`
// - `metrics.KEY OP NUMBER`, OP one of < <= > >= = !=, compares the metric's last value;
//   `metrics.KEY.min` or `.max` (or `.last`) compares that value of its summary instead. This
//   suffix is tessera's own: MLflow reads metrics.val.min as the metric named val.min, which is
//   metrics.`val.min` here (and metrics.`val.min`.max its max); a key with more dots unquoted,
//   such as metrics.a.b.min, is refused, naming both readings.
// - `params.KEY = 'VALUE'` and `tags.KEY = 'VALUE'`: exact text, in single or double quotes (a
//   quote inside doubled: 'it''s'); the daemon compares a param and a value that are both numbers
//   as numbers ('3e-3' matches 0.003), and true and false in any case. `!=`, `IN ('a', 'b')` and
//   `NOT IN (...)` compare so too; `LIKE 'res%'` (% any run of characters, _ any one;
//   case-sensitive) and `ILIKE` (not) match the text as logged. A run without the key matches none
//   of these.
// - `attributes.run_name`, `attributes.run_id` and `attributes.parent_run_id`: as a tag's text.
//   `attributes.start_time` and `attributes.end_time` OP MILLISECONDS since the epoch, as MLflow's
//   (a run not ended has no end_time).
// - `attributes.status = 'X'`, `!= 'X'`, `IN ('X', 'Y')` or `NOT IN (...)`: a run status, or
//   MLflow's FINISHED (succeeded) and KILLED (cancelled).
// - A key of other characters than letters, digits and _ goes in backquotes: metrics.`val-loss`;
//   a param's or tag's may hold dots without them, as in MLflow: params.optimizer.lr.
//   MLflow's other entity spellings (metric, param, parameter, tag, attribute, attr, run) work too.
// Order: one key or more apart by commas (or an array of strings), each `metrics.KEY` (with .last,
// .min or .max as above), `params.KEY` (as text) or a run attribute, start_time, end_time,
// run_name or status (bare, as MLflow reads them, or attributes.NAME; created is start_time), then
// ASC or DESC; without either, ascending, as in MLflow (a metric's name alone, listRuns' orderBy
// 'val_loss', takes the metric's own direction instead, and no ASC or DESC). The first key decides
// first; runs lacking a key's value come after the others, and equal runs by run id.
// Mistakes throw RunFilterError (a RangeError) naming the column and what fits there.

const { enumNames } = require('./proto');

const ENTITIES = {
  metric: 'metrics',
  metrics: 'metrics',
  param: 'params',
  params: 'params',
  parameter: 'params',
  parameters: 'params',
  tag: 'tags',
  tags: 'tags',
  attribute: 'attributes',
  attributes: 'attributes',
  attr: 'attributes',
  run: 'attributes',
};
// Longest first, so "<=" is not read as "<" then "=". Values as listRuns takes them.
const COMPARISONS = { '<=': 'le', '>=': 'ge', '!=': 'ne', '<': 'lt', '>': 'gt', '=': 'eq' };
const DIRECTIONS = ['ASC', 'DESC'];
// MLflow's run attributes an order names bare ("start_time", "start_time DESC"), as MLflow reads
// them (RunInfo's orderable attributes and the alias "created"): those ListRuns does not order by
// are refused, not read as a metric of that name that no run has.
const RUN_ATTRIBUTES = ['start_time', 'end_time', 'created', 'status', 'run_name', 'run_id', 'user_id', 'artifact_uri'];
const FIELDS = ['last', 'min', 'max'];
const RUN_STATUSES = enumNames('tessera.v1.RunStatus')
  .slice(1)
  .map((name) => name.slice('RUN_STATUS_'.length).toLowerCase());
// MLflow's names for the statuses tessera names otherwise.
const STATUS_ALIASES = { finished: 'succeeded', killed: 'cancelled' };
const STATUS_NAMES = RUN_STATUSES.map(
  (status) =>
    status +
    Object.entries(STATUS_ALIASES)
      .filter(([, same]) => same === status)
      .map(([alias]) => ` (or ${alias.toUpperCase()})`)
      .join(''),
);
const STATUS_CHOICES = `${STATUS_NAMES.slice(0, -1).join(', ')} or ${STATUS_NAMES[STATUS_NAMES.length - 1]}`;
// Sticky, to match where the scanner is, as Python's pattern.match(text, pos).
const WORD = /[A-Za-z_][A-Za-z0-9_]*/y;
// Letters of any script, digits and _, as Python's \w.
const KEY = /[\p{L}\p{N}_]+/uy;
// Characters MLflow's keys often hold (train/loss, batch-size) that end a key unquoted here.
const KEY_PUNCTUATION = ['-', '/', ':'];
// Decimal digits of any script, as Python's \d (float() reads them too).
const NUMBER = /[+-]?(?:\p{Nd}+(?:\.\p{Nd}*)?|\.\p{Nd}+)(?:[eE][+-]?\p{Nd}+)?/uy;
const CONDITIONS = 'metrics.KEY, params.KEY, tags.KEY or attributes.NAME';
const TEXT_ATTRIBUTES = ['run_name', 'run_id', 'parent_run_id'];
const TIME_ATTRIBUTES = ['start_time', 'end_time'];
// The run attributes ListRuns orders by, and MLflow's alias of start_time.
const ORDER_ATTRIBUTES = ['start_time', 'end_time', 'run_name', 'status'];
const ATTRIBUTE_ALIASES = { created: 'start_time' };
// The tags MLflow keeps a run's name and parent in: here they are the run's own attributes, so a
// filter or order on the tag reads those (a run holds no such tag, and would match nothing).
const MLFLOW_ATTRIBUTE_TAGS = { 'mlflow.runName': 'run_name', 'mlflow.parentRunId': 'parent_run_id' };
// TextFilter's entity of each, as listRuns takes it.
const TEXT_ENTITIES = { params: 'param', tags: 'tag', attributes: 'attribute' };
// As the daemon bounds a LIKE pattern (its matching costs up to value x pattern steps).
const MAX_LIKE_PATTERN = 500;
// ASCII digits only, as the Python SDK's (whose float() reading of a metric takes any script's).
const MILLISECONDS = /[0-9]+/y;
// What Python's str.isspace() takes, which JavaScript's \s does not quite.
const SPACE = /[\t\n\v\f\r\x1c-\x1f \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]/;

// `text` quoted as Python's repr() writes it, for messages the same as the Python SDK's.
function pyRepr(text) {
  const quote = text.includes("'") && !text.includes('"') ? '"' : "'";
  const escapes = { '\\': '\\\\', '\n': '\\n', '\r': '\\r', '\t': '\\t', [quote]: `\\${quote}` };
  let out = '';
  for (const char of text) {
    const code = char.codePointAt(0);
    if (char in escapes) out += escapes[char];
    else if (code < 0x20 || (code >= 0x7f && code <= 0xa0) || code === 0xad) out += `\\x${code.toString(16).padStart(2, '0')}`;
    else out += char;
  }
  return quote + out + quote;
}

// A number written with decimal digits of any script, as Python's float() reads it: Unicode
// assigns each script's digits 0 to 9 in a row, so a digit's value is its place in its row.
function asNumber(text) {
  const ascii = Array.from(text, (char) => {
    if (!/\p{Nd}/u.test(char)) return char;
    let before = 0;
    while (/\p{Nd}/u.test(String.fromCodePoint(char.codePointAt(0) - before - 1))) before += 1;
    return String(before % 10);
  });
  return Number(ascii.join(''));
}

// A filter or order string that cannot be read: where (1-based column, in characters) and why.
class RunFilterError extends RangeError {
  constructor(text, column, reason) {
    super(`column ${column}: ${reason}\n  ${text}\n  ${' '.repeat(column - 1)}^`);
    this.name = 'RunFilterError';
    Object.assign(this, { text, column, reason });
  }
}

// Reads a string left to right, failing with the column it got to.
class Scanner {
  constructor(text) {
    this.text = text;
    this.at = 0;
  }

  // Columns count characters, as Python's do, not UTF-16 units.
  fail(reason, at = this.at) {
    return new RunFilterError(this.text, Array.from(this.text.slice(0, at)).length + 1, reason);
  }

  space() {
    while (this.at < this.text.length && SPACE.test(this.text[this.at])) this.at += 1;
  }

  done() {
    this.space();
    return this.at === this.text.length;
  }

  match(pattern) {
    pattern.lastIndex = this.at;
    const found = pattern.exec(this.text);
    if (!found) return '';
    this.at = pattern.lastIndex;
    return found[0];
  }

  peekWord() {
    WORD.lastIndex = this.at;
    const found = WORD.exec(this.text);
    return found ? found[0] : '';
  }

  take(literal) {
    if (this.text.startsWith(literal, this.at)) {
      this.at += literal.length;
      return true;
    }
    return false;
  }

  // Text between a pair of one of `quotes`, a quote inside it doubled; '' if none opens here.
  quoted(quotes, what) {
    const start = this.at;
    const quote = this.text.slice(this.at, this.at + 1);
    if (!quote || !quotes.includes(quote)) return '';
    this.at += 1;
    const parts = [];
    for (;;) {
      const end = this.text.indexOf(quote, this.at);
      if (end < 0) throw this.fail(`the ${what} opened here has no closing ${quote}`, start);
      parts.push(this.text.slice(this.at, end));
      this.at = end + 1;
      if (!this.take(quote)) return parts.join(quote);
    }
  }
}

// `entity.key[.field]` as written, with where it starts.
function operand(scan, allowed) {
  scan.space();
  const start = scan.at;
  const word = scan.match(WORD);
  const entity = Object.hasOwn(ENTITIES, word.toLowerCase()) ? ENTITIES[word.toLowerCase()] : undefined;
  if (entity === undefined) {
    throw scan.fail(word ? `${pyRepr(word)} is not a condition; write ${allowed}` : `expected ${allowed}`, start);
  }
  if (!scan.take('.')) throw scan.fail(`expected . and a key after ${word}, e.g. ${entity}.val_loss`);
  const keyAt = scan.at;
  const quoted = ['`', '"'].includes(scan.text.slice(keyAt, keyAt + 1));
  let key = quoted ? scan.quoted('`"', 'key') : scan.match(KEY);
  const keyEnd = scan.at;
  if (!key) {
    if (quoted) throw scan.fail('the key is empty', keyAt);
    throw scan.fail(
      `expected a key after ${word}.: letters, digits and _, or any key in backquotes, e.g. ${entity}.\`val-loss\``,
    );
  }
  let summary = '';
  if ((entity === 'params' || entity === 'tags') && !quoted) {
    // As in MLflow, whose key is all after the entity's dot: a job's run names its spec's params
    // by their path (optimizer.lr), and params and tags have no .min or .max to tell apart.
    while (scan.take('.')) {
      const part = scan.match(KEY);
      if (!part) throw scan.fail(`expected the rest of the key after ${entity}.${key}.`);
      key = `${key}.${part}`;
    }
  } else if (scan.take('.')) {
    const suffixAt = scan.at;
    summary = scan.match(WORD);
    if (entity !== 'metrics') {
      const dotted = summary ? `${key}.${summary}` : 'a.b';
      throw scan.fail(`write a key with dots in backquotes: ${entity}.\`${dotted}\``, suffixAt);
    }
    if (!FIELDS.includes(summary) || scan.text.slice(scan.at, scan.at + 1) === '.') {
      let end = keyEnd;
      while (end < scan.text.length && !SPACE.test(scan.text[end]) && !'<>=!'.includes(scan.text[end])) end += 1;
      throw scan.fail(dottedMetric(key + scan.text.slice(keyEnd, end)), suffixAt);
    }
  }
  const next = scan.text.slice(scan.at, scan.at + 1);
  if (!quoted && KEY_PUNCTUATION.includes(next)) {
    // Read on, the rest would be refused as a comparison: say what the key needs instead.
    let end = scan.at;
    while (end < scan.text.length && !SPACE.test(scan.text[end]) && !'<>=!'.includes(scan.text[end])) end += 1;
    if (summary) {
      // The metric's aggregate was read, so what follows is no part of its key.
      throw scan.fail(
        `expected a comparison after ${entity}.${key}.${summary}, not ${next}: .last, .min or .max ` +
          `ends a metric, and a key with ${next} in it goes in backquotes before it, e.g. ` +
          `${entity}.\`a${next}b\`.${summary}`,
      );
    }
    const written = scan.text.slice(keyAt, end);
    const dot = written.lastIndexOf('.');
    const field = written.slice(dot + 1);
    if (entity === 'metrics' && dot >= 0 && FIELDS.includes(field)) {
      throw scan.fail(
        `a key with ${next} in it goes in backquotes, .last, .min or .max after them: ` +
          `${entity}.\`${written.slice(0, dot)}\`.${field}`,
      );
    }
    throw scan.fail(`a key with ${next} in it goes in backquotes: ${entity}.\`${written}\``);
  }
  if (entity === 'tags' && Object.hasOwn(MLFLOW_ATTRIBUTE_TAGS, key)) {
    return { entity: 'attributes', key: MLFLOW_ATTRIBUTE_TAGS[key], field: summary, start };
  }
  return { entity, key, field: summary, start };
}

function backquoted(key) {
  return `\`${key.replaceAll('`', '``')}\``;
}

// What to write for a metric's key with dots that was not in backquotes, `written` as it was from
// the key on. Ending in .last, .min or .max, it reads two ways: a metric of that whole name, as in
// MLflow, or that value of the metric before it, as here; both are spelt out.
function dottedMetric(written) {
  const dot = written.lastIndexOf('.');
  const stem = written.slice(0, Math.max(dot, 0));
  const field = written.slice(dot + 1);
  if (FIELDS.includes(field)) {
    return (
      `metrics.${written} reads two ways: write metrics.${backquoted(written)} for the metric named ` +
      `${written} (as MLflow reads it), or metrics.${backquoted(stem)}.${field} for the ${field} of ` +
      `metric ${stem} (a key with dots goes in backquotes, .last, .min or .max after them)`
    );
  }
  return (
    "write .last, .min or .max after a metric's key, or a key with dots in backquotes: " +
    `metrics.${backquoted(written)}`
  );
}

function comparison(scan) {
  scan.space();
  if (scan.take('==')) throw scan.fail('write = to compare for equality, not ==', scan.at - 2);
  return Object.keys(COMPARISONS).find((op) => scan.take(op)) || '';
}

function number(scan, compared) {
  scan.space();
  const start = scan.at;
  if (["'", '"'].includes(scan.text.slice(start, start + 1))) {
    throw scan.fail(`a metric compares with a number, not text: write ${compared} > 0.9`);
  }
  const text = scan.match(NUMBER);
  if (!text || scan.peekWord() || ['.', '`', '"', "'"].includes(scan.text.slice(scan.at, scan.at + 1))) {
    throw scan.fail(`expected a number after ${compared}'s comparison, e.g. 0.9 or 1e-3`, start);
  }
  const value = asNumber(text);
  if (!Number.isFinite(value)) throw scan.fail(`${text} is past the largest number a metric holds`, start);
  return value;
}

function quotedText(scan, written) {
  scan.space();
  const start = scan.at;
  const value = scan.quoted('\'"', 'value');
  if (scan.at === start) throw scan.fail(`quote the value: ${written.entity}.${written.key} = 'VALUE'`);
  return value;
}

function status(scan) {
  scan.space();
  const start = scan.at;
  const value = quotedText(scan, { entity: 'attributes', key: 'status' });
  const lower = value.toLowerCase();
  const found = Object.hasOwn(STATUS_ALIASES, lower) ? STATUS_ALIASES[lower] : lower;
  if (!RUN_STATUSES.includes(found)) throw scan.fail(`${pyRepr(value)} is not a run status; use ${STATUS_CHOICES}`, start);
  return found;
}

function statusList(scan) {
  scan.space();
  if (!scan.take('(')) throw scan.fail("expected ( and the statuses after IN, e.g. IN ('failed', 'cancelled')");
  const statuses = new Set([status(scan)]);
  for (;;) {
    scan.space();
    if (scan.take(')')) return statuses;
    if (!scan.take(',')) throw scan.fail('expected , and another status, or ) to close the list');
    statuses.add(status(scan));
  }
}

const except = (listed) => new Set(RUN_STATUSES.filter((s) => !listed.has(s)));

// The statuses `attributes.status OP ...` lets through.
function statusCondition(scan, written) {
  if (written.key !== 'status') {
    throw scan.fail(
      `attributes.${written.key} cannot be filtered: ListRuns filters attributes ` +
        'status, run_name, run_id, parent_run_id, start_time, end_time',
      written.start,
    );
  }
  scan.space();
  const at = scan.at;
  const word = scan.peekWord().toUpperCase();
  if (word === 'IN' || word === 'NOT') {
    scan.match(WORD);
    if (word === 'NOT') {
      scan.space();
      if (scan.match(WORD).toUpperCase() !== 'IN') throw scan.fail('expected IN after NOT', at);
    }
    const listed = statusList(scan);
    return word === 'NOT' ? except(listed) : listed;
  }
  const op = comparison(scan);
  if (op !== '=' && op !== '!=') throw scan.fail('attributes.status compares with =, !=, IN (...) or NOT IN (...)', at);
  const one = new Set([status(scan)]);
  return op === '!=' ? except(one) : one;
}

function textList(scan, written, word) {
  scan.space();
  if (!scan.take('(')) throw scan.fail(`expected ( and the values after ${word}, e.g. ${word} ('a', 'b')`);
  const values = [quotedText(scan, written)];
  for (;;) {
    scan.space();
    if (scan.take(')')) return values;
    if (!scan.take(',')) throw scan.fail('expected , and another value, or ) to close the list');
    values.push(quotedText(scan, written));
  }
}

// A param's, tag's, run_name's, run_id's or parent_run_id's condition: = and a param or tag into
// found.params or found.tags (as ListRuns has long taken them), the others into found.texts.
function textCondition(scan, written, found) {
  scan.space();
  const at = scan.at;
  const column = `${written.entity}.${written.key}`;
  let word = scan.peekWord().toUpperCase();
  let values;
  let match;
  if (['LIKE', 'ILIKE', 'IN', 'NOT'].includes(word)) {
    scan.match(WORD);
    if (word === 'NOT') {
      scan.space();
      if (scan.match(WORD).toUpperCase() !== 'IN') throw scan.fail('expected IN after NOT', at);
      word = 'NOT_IN';
    }
    if (word === 'IN' || word === 'NOT_IN') {
      values = textList(scan, written, word.replace('_', ' '));
    } else {
      scan.space();
      const valueAt = scan.at;
      values = [quotedText(scan, written)];
      const length = Array.from(values[0]).length;
      if (length > MAX_LIKE_PATTERN) {
        throw scan.fail(
          `a ${word} pattern is at most ${MAX_LIKE_PATTERN} characters, this one is ${length.toLocaleString('en-US')}`,
          valueAt,
        );
      }
    }
    match = word.toLowerCase();
  } else {
    const op = comparison(scan);
    if (op !== '=' && op !== '!=') {
      throw scan.fail(`${column} compares with =, !=, LIKE, ILIKE, IN (...) or NOT IN (...)`, at);
    }
    const value = quotedText(scan, written);
    if (op === '=' && written.entity !== 'attributes') {
      const kept = written.entity === 'params' ? found.params : found.tags;
      if (Object.hasOwn(kept, written.key) && kept[written.key] !== value) {
        throw scan.fail(
          `${column} is already compared with ${pyRepr(kept[written.key])}; ` +
            'a run has one value, so no run matches both',
          written.start,
        );
      }
      kept[written.key] = value;
      return;
    }
    values = [value];
    match = op === '=' ? 'eq' : 'ne';
  }
  found.texts.push({ entity: TEXT_ENTITIES[written.entity], key: written.key, match, values });
}

// `attributes.start_time OP MILLISECONDS` (since the epoch, as MLflow's times); value_ms is the
// number's decimal text, exact past 2**53, as listRuns sends an int64.
function timeCondition(scan, written) {
  scan.space();
  const at = scan.at;
  const op = comparison(scan);
  if (!op) throw scan.fail(`expected a comparison after attributes.${written.key}: <, <=, >, >=, = or !=`, at);
  scan.space();
  const valueAt = scan.at;
  const text = scan.match(MILLISECONDS);
  if (!text || scan.peekWord() || ['.', "'", '"'].includes(scan.text.slice(scan.at, scan.at + 1))) {
    throw scan.fail(
      `attributes.${written.key} compares with a whole number of milliseconds since the epoch, e.g. 1700000000000`,
      valueAt,
    );
  }
  const value = BigInt(text);
  if (value >= 2n ** 63n) throw scan.fail(`${text} is past the largest time`, valueAt);
  return { attribute: written.key, op: COMPARISONS[op], value_ms: value.toString() };
}

// A filter string as listRuns' options: { statuses: ['failed', ...] (empty: any status),
// params: { key: value }, tags: { key: value }, metrics: [{ key, field, op, value }], texts:
// [{ entity ('param', 'tag', 'attribute'), key, match ('eq', 'ne', 'like', 'ilike', 'in',
// 'not_in'), values }], times: [{ attribute, op, value_ms }] }; every condition must hold. ''
// filters nothing.
function parseFilter(text) {
  const scan = new Scanner(text);
  const found = { statuses: [], params: {}, tags: {}, metrics: [], texts: [], times: [] };
  let statuses;
  while (!scan.done()) {
    const written = operand(scan, CONDITIONS);
    if (written.entity === 'metrics') {
      scan.space();
      const at = scan.at;
      const op = comparison(scan);
      if (!op) throw scan.fail(`expected a comparison after metrics.${written.key}: <, <=, >, >=, = or !=`, at);
      const value = number(scan, `metrics.${written.key}`);
      found.metrics.push({ key: written.key, field: written.field || 'last', op: COMPARISONS[op], value });
    } else if (written.entity === 'attributes' && TIME_ATTRIBUTES.includes(written.key)) {
      found.times.push(timeCondition(scan, written));
    } else if (written.entity === 'attributes' && TEXT_ATTRIBUTES.includes(written.key)) {
      textCondition(scan, written, found);
    } else if (written.entity === 'attributes') {
      const allowed = statusCondition(scan, written);
      statuses = statuses === undefined ? allowed : new Set([...statuses].filter((s) => allowed.has(s)));
      if (!statuses.size) throw scan.fail('no run status meets every condition on attributes.status', written.start);
    } else {
      textCondition(scan, written, found);
    }
    if (scan.done()) break;
    const joinerAt = scan.at;
    const joiner = scan.match(WORD).toUpperCase();
    if (joiner === 'OR') {
      throw scan.fail(
        "OR is not supported (nor in MLflow's search): list once per alternative, or for " +
          "statuses write attributes.status IN ('failed', 'cancelled')",
        joinerAt,
      );
    }
    if (joiner !== 'AND') throw scan.fail('expected AND between two conditions, or the end of the filter', joinerAt);
    if (scan.done()) throw scan.fail(`expected a condition after AND: ${CONDITIONS}`);
  }
  if (statuses !== undefined) found.statuses = RUN_STATUSES.filter((s) => statuses.has(s));
  return found;
}

// One key of an order: `metrics.KEY[.FIELD]`, `params.KEY`, `attributes.NAME` or a bare
// attribute's NAME (as MLflow reads start_time), then ASC or DESC if written.
function orderKey(scan) {
  scan.space();
  const start = scan.at;
  const word = scan.peekWord();
  const after = scan.text.slice(start + word.length, start + word.length + 1);
  let entity = after === '.' && Object.hasOwn(ENTITIES, word.toLowerCase()) ? ENTITIES[word.toLowerCase()] : undefined;
  let key;
  let field = '';
  if (entity === undefined) {
    const lower = word.toLowerCase();
    const name = Object.hasOwn(ATTRIBUTE_ALIASES, lower) ? ATTRIBUTE_ALIASES[lower] : lower;
    if (!word || !ORDER_ATTRIBUTES.includes(name) || (after && !SPACE.test(after) && after !== ',')) {
      throw unnamedOrder(scan);
    }
    scan.match(WORD);
    key = name;
    entity = 'attributes';
  } else {
    const written = operand(scan, 'metrics.KEY, params.KEY or attributes.NAME, then ASC or DESC');
    ({ entity, key } = written);
    field = written.field;
    if (entity === 'tags') throw scan.fail('runs are ordered by metrics, params and attributes, not by tags', start);
    if (entity === 'attributes') {
      const lower = key.toLowerCase();
      key = Object.hasOwn(ATTRIBUTE_ALIASES, lower) ? ATTRIBUTE_ALIASES[lower] : key;
      if (!ORDER_ATTRIBUTES.includes(key)) {
        throw scan.fail(
          `attributes.${written.key} orders nothing: ListRuns orders by attributes ${ORDER_ATTRIBUTES.join(', ')}`,
          start,
        );
      }
    }
  }
  let descending;
  scan.space();
  const at = scan.at;
  if (!scan.done() && !scan.text.startsWith(',', at)) {
    const direction = scan.match(WORD).toUpperCase();
    if (!DIRECTIONS.includes(direction)) {
      throw scan.fail('expected ASC or DESC, a comma and the next key, or the end of the order', at);
    }
    descending = direction === 'DESC';
  }
  return { entity, key, field: field || undefined, descending };
}

// An order string of one or more keys apart by commas, e.g. `metrics.val_loss ASC, start_time
// DESC`, as [{ entity ('metrics', 'params' or 'attributes'), key, field ('last', 'min', 'max';
// undefined when not written: a metric's last value), descending (undefined when not written) }]:
// the first decides first, the next between runs equal in it, and so on.
function parseOrderKeys(text) {
  const scan = new Scanner(text);
  if (scan.done()) {
    throw scan.fail(
      'the order is empty; write metrics.KEY, params.KEY or an attribute, then ASC or DESC if you choose',
    );
  }
  const keys = [orderKey(scan)];
  while (!scan.done()) {
    if (!scan.take(',')) throw scan.fail('expected a comma and the next key, or the end of the order');
    if (scan.done()) throw scan.fail('expected a key after the comma');
    keys.push(orderKey(scan));
  }
  return keys;
}

// An order string of one key (see parseOrderKeys); a metric's also as { metric }, as before.
function parseOrder(text) {
  const keys = parseOrderKeys(text);
  if (keys.length > 1) {
    throw new RunFilterError(
      text,
      Array.from(text.slice(0, text.indexOf(','))).length + 1,
      'expected one key: use parseOrderKeys for more',
    );
  }
  const [key] = keys;
  return key.entity === 'metrics' ? { metric: key.key, ...key } : key;
}

// `text` without the spaces at either end, as Python's str.strip().
function stripped(text) {
  let start = 0;
  let end = text.length;
  while (start < end && SPACE.test(text[start])) start += 1;
  while (end > start && SPACE.test(text[end - 1])) end -= 1;
  return text.slice(start, end);
}

// The words of `text` between spaces, as Python's str.split().
function words(text) {
  return stripped(text)
    .split(new RegExp(`${SPACE.source}+`))
    .filter((word) => word !== '');
}

// The error for an order key whose metric lacks `metrics.`, such as "val_loss DESC", or a run
// attribute that orders nothing, such as run_id.
function unnamedOrder(scan) {
  const rest = scan.text.slice(scan.at).split(',')[0];
  const all = words(rest);
  const last = all.length ? all[all.length - 1] : '';
  if (all.length <= 1 && DIRECTIONS.includes(last.toUpperCase())) {
    return scan.fail(
      `${last} is a direction alone: write the key before it, metrics.KEY ${last.toUpperCase()} (or ` +
        'params.KEY, or an attribute such as start_time)',
    );
  }
  const direction = all.length > 1 && DIRECTIONS.includes(last.toUpperCase()) ? ` ${last.toUpperCase()}` : '';
  let written = stripped(rest);
  if (direction) written = stripped(written.slice(0, -last.length));
  const quoted = /^[\p{L}\p{N}_]+$/u.test(written) || written.startsWith('`');
  const key = quoted ? written : `\`${written.replaceAll('`', '``')}\``;
  if (RUN_ATTRIBUTES.includes(written.toLowerCase())) {
    return scan.fail(
      `${written} is a run attribute, as in MLflow, that ListRuns does not order by: use one of ` +
        `${ORDER_ATTRIBUTES.join(', ')}, or write metrics.${key}${direction} for a metric of that name`,
    );
  }
  return scan.fail(
    `an order names its metric as metrics.KEY: write metrics.${key}${direction} (or params.KEY, or an ` +
      `attribute: ${ORDER_ATTRIBUTES.join(', ')})`,
  );
}

// Whether an order is MLflow's, read by parseOrderKeys: it holds a comma, it names `entity.key`,
// it ends in ASC or DESC, which a metric's name alone does not take, or it is a run attribute's
// name, which MLflow reads as the attribute (read as a metric's name, "val_loss DESC", "start_time
// DESC" or "start_time" would order by a metric no run has).
function isOrderString(text) {
  // stripped, not trim(): the spaces Python's str.strip() takes, so both SDKs read alike.
  const trimmed = stripped(text);
  const dot = trimmed.indexOf('.');
  const all = words(text);
  return (
    text.includes(',') ||
    (dot >= 0 && Object.hasOwn(ENTITIES, trimmed.slice(0, dot).toLowerCase())) ||
    (all.length > 1 && DIRECTIONS.includes(all[all.length - 1].toUpperCase())) ||
    (all.length === 1 && RUN_ATTRIBUTES.includes(all[0].toLowerCase()))
  );
}

// MLflow's order_by, a string or an array of them, each of one key or more apart by commas; []
// for no order.
function parseOrders(orders) {
  const given = typeof orders === 'string' ? [orders] : [...orders];
  return given.filter((text) => stripped(text)).flatMap(parseOrderKeys);
}

module.exports = { RunFilterError, parseFilter, parseOrder, parseOrderKeys, parseOrders, isOrderString, RUN_STATUSES };
