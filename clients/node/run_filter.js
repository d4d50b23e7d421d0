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
//   quote inside doubled: 'it''s').
// - `attributes.status = 'X'`, `!= 'X'`, `IN ('X', 'Y')` or `NOT IN (...)`: a run status, or
//   MLflow's FINISHED (succeeded) and KILLED (cancelled).
// - A key of other characters than letters, digits and _ goes in backquotes: metrics.`val-loss`;
//   a param's or tag's may hold dots without them, as in MLflow: params.optimizer.lr.
//   MLflow's other entity spellings (metric, param, parameter, tag, attribute, attr, run) work too.
// Order: `metrics.KEY [ASC|DESC]` (with .last, .min or .max as above); ListRuns orders by one metric.
// A metric's name alone (listRuns' orderBy 'val_loss') takes no ASC or DESC.
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
// them (RunInfo's orderable attributes and the alias "created"): listRuns orders by a metric only,
// so such an order is refused, not read as a metric of that name that no run has.
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

function textCondition(scan, written, kept) {
  scan.space();
  const at = scan.at;
  if (comparison(scan) !== '=') {
    // Worded as the Python SDK's parser (which also takes !=, LIKE, ILIKE and IN); this port takes = only.
    throw scan.fail(
      `${written.entity}.${written.key} compares with =, !=, LIKE, ILIKE, IN (...) or NOT IN (...)`,
      at,
    );
  }
  const value = quotedText(scan, written);
  if (Object.hasOwn(kept, written.key) && kept[written.key] !== value) {
    throw scan.fail(
      `${written.entity}.${written.key} is already compared with ${pyRepr(kept[written.key])}; ` +
        'a run has one value, so no run matches both',
      written.start,
    );
  }
  kept[written.key] = value;
}

// A filter string as listRuns' options: { statuses: ['failed', ...] (empty: any status),
// params: { key: value }, tags: { key: value }, metrics: [{ key, field, op, value }] }; every
// condition must hold. '' filters nothing.
function parseFilter(text) {
  const scan = new Scanner(text);
  const found = { statuses: [], params: {}, tags: {}, metrics: [] };
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
    } else if (written.entity === 'attributes') {
      const allowed = statusCondition(scan, written);
      statuses = statuses === undefined ? allowed : new Set([...statuses].filter((s) => allowed.has(s)));
      if (!statuses.size) throw scan.fail('no run status meets every condition on attributes.status', written.start);
    } else {
      textCondition(scan, written, written.entity === 'params' ? found.params : found.tags);
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

// An order string, `metrics.KEY[.FIELD] [ASC|DESC]`, as { metric, field ('last', 'min', 'max';
// undefined when not written: the last value), descending (undefined when not written) }.
function parseOrder(text) {
  const scan = new Scanner(text);
  if (scan.done()) throw scan.fail('the order is empty; write metrics.KEY, then ASC or DESC if you choose');
  if (!Object.hasOwn(ENTITIES, scan.peekWord().toLowerCase())) throw unnamedOrder(scan);
  const written = operand(scan, 'metrics.KEY, then ASC or DESC');
  if (written.entity !== 'metrics') {
    const shown = text.slice(written.start, scan.at);
    throw scan.fail(
      'ListRuns orders runs by a metric only (metrics.KEY [ASC|DESC]); without an order they ' +
        `come newest first (a metric named ${shown} is metrics.\`${shown}\`)`,
      written.start,
    );
  }
  let descending;
  if (!scan.done()) {
    const at = scan.at;
    const direction = scan.match(WORD).toUpperCase();
    if (!DIRECTIONS.includes(direction)) {
      if (scan.take(',')) throw scan.fail('ListRuns orders by one metric: leave out the orders after the first', at);
      throw scan.fail('expected ASC or DESC, or the end of the order', at);
    }
    descending = direction === 'DESC';
    if (!scan.done()) throw scan.fail('ListRuns orders by one metric: leave out the orders after the first');
  }
  return { metric: written.key, field: written.field || undefined, descending };
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

// The error for an order whose metric lacks `metrics.`, such as "val_loss DESC", or that names a
// run attribute, such as MLflow's "start_time DESC".
function unnamedOrder(scan) {
  const all = words(scan.text);
  const last = all[all.length - 1];
  if (all.length === 1 && DIRECTIONS.includes(last.toUpperCase())) {
    return scan.fail(
      `${last} is a direction alone: write the metric before it, metrics.KEY ${last.toUpperCase()} ` +
        '(ListRuns orders runs by a metric only; without an order they come newest first)',
    );
  }
  const direction = all.length > 1 && DIRECTIONS.includes(last.toUpperCase()) ? ` ${last.toUpperCase()}` : '';
  let written = stripped(scan.text);
  if (direction) written = stripped(written.slice(0, -last.length));
  const quoted = /^[\p{L}\p{N}_]+$/u.test(written) || written.startsWith('`');
  const key = quoted ? written : `\`${written.replaceAll('`', '``')}\``;
  if (RUN_ATTRIBUTES.includes(written.toLowerCase())) {
    return scan.fail(
      `${written} is a run attribute, as in MLflow, and ListRuns orders runs by a metric only: ` +
        `leave the order out for runs newest first, or write metrics.${key}${direction} for a metric ` +
        'of that name',
    );
  }
  return scan.fail(
    `an order names its metric as metrics.KEY: write metrics.${key}${direction} (ListRuns orders ` +
      'runs by a metric only; without an order they come newest first)',
  );
}

// Whether an order is MLflow's, read by parseOrder: it names `entity.key`, it ends in ASC or DESC,
// which a metric's name alone does not take, or it is a run attribute's name, which MLflow reads as
// the attribute (read as a metric's name, "val_loss DESC", "start_time DESC" or "start_time" would
// order by a metric no run has).
function isOrderString(text) {
  // stripped, not trim(): the spaces Python's str.strip() takes, so both SDKs read alike.
  const trimmed = stripped(text);
  const dot = trimmed.indexOf('.');
  const all = words(text);
  return (
    (dot >= 0 && Object.hasOwn(ENTITIES, trimmed.slice(0, dot).toLowerCase())) ||
    (all.length > 1 && DIRECTIONS.includes(all[all.length - 1].toUpperCase())) ||
    (all.length === 1 && RUN_ATTRIBUTES.includes(all[0].toLowerCase()))
  );
}

module.exports = { RunFilterError, parseFilter, parseOrder, isOrderString, RUN_STATUSES };
