#!/usr/bin/env node
'use strict';
// tessera-node: a few commands over clients/node/tessera.js; `tessera-node --help` lists them.
// Prints JSON on stdout (a watch: one event a line); on failure prints "tessera-node: CODE:
// message" (or what to fix) on stderr and exits with the Python CLI's statuses (EXIT_STATUS).

// The Python CLI's exit statuses (clients/python/src/tessera/cli/__init__.py), so that a script
// tells the same failures apart from either.
const EXIT_FAILED = 1;
const EXIT_USAGE = 2;
const EXIT_DAEMON = 3;
const EXIT_INTERRUPTED = 130;
// What a shell reports for a tool killed by SIGPIPE (128 + 13) and by SIGTERM (128 + 15).
const EXIT_OUTPUT_CLOSED = 141;
const EXIT_TERMINATED = 143;
const EXIT_STATUS = `exit status:
  0    done
  ${EXIT_FAILED}    failed here: a file could not be read, a spec file is wrong, or a followed or
       watched job ended without succeeding
  ${EXIT_USAGE}    the command line is wrong: the message says what, with the command's usage
  ${EXIT_DAEMON}    the daemon refused or failed the request, or could not be reached: the message
       starts with the gRPC status (NOT_FOUND, INVALID_ARGUMENT, UNAVAILABLE, ...)
  ${EXIT_INTERRUPTED}  interrupted (Ctrl-C); a followed or watched job goes on
  ${EXIT_TERMINATED}  terminated (SIGTERM)
  ${EXIT_OUTPUT_CLOSED}  the output was closed early (\`tessera-node ... | head\`); nothing more is printed`;

// The client of the command running (undefined before it is made and once it is closed), and
// the job it follows.
let client;
let followed;
// The status of a command stopped before its end, by a signal or its output's reader gone.
let stoppedWith;

// Stops the command, as the Python CLI does, with `status` and `line` on stderr (none: nothing
// said): its calls are cancelled, so that the daemon drops a watch at once, and it exits once
// they have ended (main's end). With no client open (before the command, or after it: the output
// written, then found closed), or stopped again (a second Ctrl-C, one more write to a closed
// output), it exits at once.
function stop(status, line) {
  if (stoppedWith !== undefined) process.exit(stoppedWith);
  if (line) process.stderr.write(`${line}\n`);
  if (client === undefined) process.exit(status);
  stoppedWith = status;
  client.cancelCalls();
  client.close();
}

// Set before the modules below load (grpc-js and the protos: a fifth of a second), so that Ctrl-C
// then too ends in one line and the status rather than a death by SIGINT.
process.on('SIGINT', () =>
  stop(
    EXIT_INTERRUPTED,
    followed === undefined
      ? 'tessera-node: interrupted'
      : `tessera-node: stopped following job ${followed}, which goes on: \`tessera-node jobs watch ${followed}\` ` +
          `follows it again, \`tessera jobs cancel ${followed}\` stops it`,
  ),
);
process.on('SIGTERM', () => stop(EXIT_TERMINATED, 'tessera-node: terminated'));
// Whoever reads the output stopped (`| head`): Node would throw EPIPE with its stack trace.
process.stdout.on('error', (err) =>
  err.code === 'EPIPE' ? stop(EXIT_OUTPUT_CLOSED, '') : stop(EXIT_FAILED, `tessera-node: ${err.message}`),
);
// With stderr closed (`2>&-`) or its reader gone, the status alone says it.
process.stderr.on('error', () => {});

const fs = require('node:fs');
const path = require('node:path');
const { enumNames } = require('./proto');
const { didYouMean } = require('./names');
const { inCliWords } = require('./rpc_commands');
const {
  Client,
  RunFilterError,
  TesseraError,
  checkTarget,
  datasetRef,
  parseRunFilter,
  pythonRepr,
} = require('./tessera');

// An enum's values by their short names ('running'), as the Python CLI's choices.
const choices = (typeName) => {
  const [unspecified, ...names] = enumNames(typeName);
  const prefix = unspecified.slice(0, -'UNSPECIFIED'.length);
  return names.map((name) => name.slice(prefix.length).toLowerCase());
};
const JOB_STATES = choices('tessera.v1.JobState');
const RUN_STATUSES = choices('tessera.v1.RunStatus');
const RUNTIMES = choices('tessera.v1.Runtime');
// The flags that take one of a few words, and those words.
const CHOICES = { '--state': JOB_STATES, '--status': RUN_STATUSES, '--runtime': RUNTIMES };
// The Python CLI's words for the TLS a target's https:// asked for, where this CLI has none.
const TLS_OPTION = "the Node client's `tls: true`";

const EXPECTED_REVISION =
  "--expected-revision N: only if the model's newest deployment revision is N (0: never deployed; " +
  '`models deployments MODEL` lists them), so that a deploy or rollback made meanwhile is not undone';

const OPTIONS = `options (before or after the command):
  --target HOST:PORT  the daemon (default: $TESSERA_TARGET, else 127.0.0.1:50051)
  --token TOKEN       bearer token (default: $TESSERA_TOKEN)
  --timeout SECONDS   each call's deadline (default: $TESSERA_TIMEOUT_S, else 30); a watch has none
  --help              this help, or a command's or a group's (jobs --help)`;

const COMMANDS = {
  info: { usage: 'info', about: "the daemon's version and services" },
  models: { usage: 'models', about: 'every model: short for `models ls`' },
  'models ls': {
    usage: 'models ls [--prefix PREFIX]',
    about: 'the models, by name; --prefix: only those whose name starts with PREFIX',
  },
  'models alias': {
    usage: 'models alias MODEL ALIAS VERSION',
    about: 'point an alias at a version (the alias latest is kept by the daemon)',
  },
  'models unalias': {
    usage: 'models unalias MODEL ALIAS',
    about: 'delete an alias (refused while the deployment routes through it)',
  },
  'models rm': {
    usage: 'models rm MODEL [VERSION] [--force]',
    about:
      'delete a version, or with no version the model and every version; refused while an alias, the ' +
      'deployment, an ensemble or an unfinished fine-tuning job uses one. --force: delete the model even ' +
      'where aliases or a deployment point into it (they go with it)',
  },
  'models deploy': {
    usage:
      'models deploy MODEL ROUTE... [--shadow VERSION_OR_ALIAS] [--shadow-percent N] [--comment TEXT] ' +
      '[--expected-revision N]',
    about:
      'route traffic: ROUTE is VERSION=PERCENT or ALIAS=PERCENT, e.g. 3=90 staging=10; --shadow gets a copy ' +
      'of --shadow-percent (1..100, default 100) of the requests other versions answer. ' +
      EXPECTED_REVISION,
  },
  'models rollback': {
    usage: 'models rollback MODEL [--expected-revision N]',
    about:
      'restore the previous deployment (none before the first: requests then go to the latest version). ' +
      EXPECTED_REVISION,
  },
  'models deployments': {
    usage: 'models deployments MODEL',
    about: 'the deployment history, newest first (the first is the current deployment)',
  },
  predict: {
    usage: 'predict MODEL INPUTS_JSON [--version N | --alias A]',
    about:
      'one Predict; INPUTS_JSON: {"input": {"dtype": "DATA_TYPE_FLOAT32", "shape": [1, 4], "values": [1, 2, 3, 4]}}',
  },
  'datasets ls': {
    usage: 'datasets ls [--prefix PREFIX]',
    about: 'the datasets, by name; --prefix: only those whose name starts with PREFIX',
  },
  'datasets show': {
    usage: 'datasets show NAME[:VERSION]',
    about: 'the arrays, statistics and splits of version VERSION of NAME (default: its newest)',
  },
  'datasets push': {
    usage:
      'datasets push NAME FILE [--split NAME=FRACTION]... [--seed N] [--allow-nonfinite] [--array-name NAME] ' +
      '[--description TEXT] [--tag KEY=VALUE]...',
    about:
      'upload a .npz (its arrays by name) or .npy file (one array, named by --array-name, default x) as the ' +
      'next version of dataset NAME; --split once per split, the fractions summing to 1 (default: one split ' +
      'train of every sample), cut at random from --seed (default 0); --allow-nonfinite: accept NaN and Inf; ' +
      '--tag once per tag. Pushing the same file, splits and tags again stores nothing new',
  },
  load: {
    usage:
      'load MODEL [--version VERSION_OR_ALIAS] [--runtime RUNTIME] [--device DEVICE] [--instances N] ' +
      '[--max-batch-size N] [--max-queue-delay-us N] [--max-queue-size N] [--warmup-runs N] ' +
      '[--intra-op-threads N] [--response-cache]',
    about:
      'load and warm up a version for serving (default: the latest), or reload it with another config, ' +
      "swapping it without dropping requests; an option left out takes the daemon's default. RUNTIME: " +
      `${RUNTIMES.join(' or ')}; DEVICE: cpu, cuda:N or cuda`,
  },
  unload: {
    usage: 'unload MODEL [--version VERSION_OR_ALIAS]',
    about:
      'stop serving a version (default: every loaded version of the model): it takes no new requests, ' +
      'finishes those queued, and is freed',
  },
  'serve-status': {
    usage: 'serve-status [MODEL]',
    about: "the loaded model versions (of MODEL, default every model's) and their config",
  },
  'jobs ls': {
    usage: 'jobs ls [--state STATE]... [--experiment NAME] [--sweep SWEEP_ID]',
    about: `jobs, newest first: every one, or those in one of the STATEs (${JOB_STATES.join(', ')}), of experiment NAME, of sweep SWEEP_ID`,
  },
  'jobs submit': {
    usage: 'jobs submit SPEC.json [--follow]',
    about:
      'submit a training job from a JobSpec written as JSON (protos/tessera/v1/job_spec.proto field names, ' +
      'enum values full or short: "task": "classification"); prints the job, or with --follow its events ' +
      'until it ends (failing unless it succeeded)',
  },
  'jobs watch': {
    usage: 'jobs watch JOB_ID [--from-seq N]',
    about: "a job's events from N (default 1), one JSON line each, until it ends; fails unless it succeeded",
  },
  'runs ls': {
    usage: "runs ls [--experiment NAME] [--status STATUS]... [--filter 'FILTER'] [--order-by ORDER]",
    about:
      'runs, newest first: of experiment NAME (default: all; `runs ls NAME` is short for it), in one of the ' +
      `STATUSes (${RUN_STATUSES.join(', ')}), ` +
      "matching MLflow's search FILTER, conditions joined by AND: metrics.KEY OP NUMBER (OP <, <=, >, >=, = " +
      "or !=; metrics.KEY.min or .max for that value of the summary), params.KEY and tags.KEY = 'VALUE' " +
      "(or !=, LIKE 'res%', ILIKE, IN ('a', 'b'), NOT IN (...)), attributes.run_name, run_id and " +
      'parent_run_id as text, attributes.start_time and end_time OP MILLISECONDS, ' +
      "attributes.status = 'STATUS' (or !=, IN (...), NOT IN (...)); backquote a key of other " +
      "characters than letters, digits and _, e.g. metrics.`val-loss`, and a metric's with dots: MLflow's " +
      "metrics.val.min, the metric named val.min, is metrics.`val.min`. ORDER: a metric's name (lowest first " +
      "for a loss or error, else highest first) or 'metrics.KEY [ASC|DESC]' (without ASC or DESC: lowest " +
      'first, as MLflow; runs without the metric last); several keys apart by commas, each metrics.KEY, ' +
      "params.KEY, start_time, end_time, run_name or status, decide in turn, e.g. 'metrics.val_loss ASC, " +
      "start_time DESC' (equal runs by run id)",
  },
  'runs compare': {
    usage: 'runs compare RUN_ID RUN_ID...',
    about:
      "two or more runs' params and metrics (last values) side by side; the runs' first 2,000 metric keys " +
      'together, metrics_left_out counting the rest (`runs metrics RUN_ID` lists each run\'s)',
  },
  'runs metrics': {
    usage: 'runs metrics RUN_ID',
    about: "every metric key of a run with its summary (last, min, max, count, last_step)",
  },
  'sweeps ls': { usage: 'sweeps ls', about: 'every sweep' },
  'sweeps show': { usage: 'sweeps show SWEEP_ID', about: 'a sweep with its trials' },
};

// Each command's flags beyond OPTIONS, and whether they take a value.
const FLAGS = {
  predict: { '--version': true, '--alias': true },
  models: { '--prefix': true },
  'models ls': { '--prefix': true },
  'models rm': { '--force': false },
  'models deploy': { '--shadow': true, '--shadow-percent': true, '--comment': true, '--expected-revision': true },
  'models rollback': { '--expected-revision': true },
  'jobs submit': { '--follow': false },
  'jobs ls': { '--state': true, '--experiment': true, '--sweep': true },
  'jobs watch': { '--from-seq': true },
  'runs ls': { '--experiment': true, '--status': true, '--filter': true, '--order-by': true },
  'datasets ls': { '--prefix': true },
  'datasets push': {
    '--split': true,
    '--seed': true,
    '--allow-nonfinite': false,
    '--array-name': true,
    '--description': true,
    '--tag': true,
  },
  load: {
    '--version': true,
    '--runtime': true,
    '--device': true,
    '--instances': true,
    '--max-batch-size': true,
    '--max-queue-delay-us': true,
    '--max-queue-size': true,
    '--warmup-runs': true,
    '--intra-op-threads': true,
    '--response-cache': false,
  },
  unload: { '--version': true },
};
// Command groups (jobs, runs, sweeps): their commands' first word.
const GROUPS = [...new Set(Object.keys(COMMANDS).filter((name) => name.includes(' ')).map((name) => name.split(' ')[0]))];
const GLOBAL_FLAGS = { '--target': true, '--token': true, '--timeout': true };

// `text` in lines of at most 92 columns, each after `indent`.
function wrapped(text, indent) {
  const lines = [];
  let line = '';
  for (const word of text.split(' ')) {
    if (line && indent.length + line.length + 1 + word.length > 92) {
      lines.push(indent + line);
      line = word;
    } else line = line ? `${line} ${word}` : word;
  }
  return [...lines, indent + line].join('\n');
}

// The commands of `group` ('' for all; `models` itself is one of its group's), each with what it
// does.
function commandList(group) {
  return Object.entries(COMMANDS)
    .filter(([name]) => !group || name === group || name.startsWith(`${group} `))
    .map(([, { usage: line, about }]) => `  ${line}\n${wrapped(about, '      ')}`)
    .join('\n');
}

function usage() {
  return `usage: tessera-node [options] COMMAND ...\n\ncommands:\n${commandList('')}\n\n${OPTIONS}\n\n${EXIT_STATUS}\n`;
}

function groupUsage(group) {
  return `usage: tessera-node [options] ${group} COMMAND ...\n\ncommands:\n${commandList(group)}\n\n${OPTIONS}\n`;
}

function commandUsage(name) {
  const { usage: line, about } = COMMANDS[name];
  return `usage: tessera-node [options] ${line}\n\n${wrapped(about, '')}\n\n${OPTIONS}\n`;
}

// A command line that is wrong; `command` names the command (or group) when it is known, for its
// usage line.
class UsageError extends Error {
  constructor(message, command) {
    super(message);
    this.command = command;
  }
}

// Digits 0-9 only: Number() also reads "0x1", "1e0" and " 1" as 1, and "" as 0 (the latest
// version); beyond 2**53 it would round to another version.
function wholeNumber(name, text, command) {
  if (!/^[0-9]+$/.test(text || '') || Number(text) > Number.MAX_SAFE_INTEGER) {
    throw new UsageError(`${name} must be a whole number written in digits 0-9, got ${JSON.stringify(text)}`, command);
  }
  return Number(text);
}

// A plain decimal number above 0: Number() also reads "", " 1", "0x10" and "1e3", and a deadline
// of NaN or Infinity is none at all.
function seconds(name, text) {
  const value = Number(text);
  if (!/^[0-9]*\.?[0-9]+$/.test(text || '') || !(value > 0 && value <= 1e9)) {
    throw new UsageError(
      `${name} must be seconds above 0 (at most 1e9) written in digits and a point, such as 30 or 0.5, ` +
        `got ${JSON.stringify(text)}`,
    );
  }
  return value;
}

// --target's HOST:PORT (or TESSERA_TARGET's), as the Python CLI checks it.
function daemonTarget(text) {
  try {
    return checkTarget(text, 'here or in env TESSERA_TARGET', TLS_OPTION);
  } catch (err) {
    throw new UsageError(`--target: ${err.message}`);
  }
}

// The pairs of repeatable `flag` (NAME=VALUE), each read by `read`, as an object; a name given
// twice is refused, as the Python CLI's once_each refuses it.
function pairs(args, flag, read) {
  const found = {};
  for (const text of args.flags[flag] || []) {
    const [name, value] = read(text);
    if (Object.hasOwn(found, name)) throw new UsageError(`${flag} ${name} is given twice; give each once`, args.command);
    found[name] = value;
  }
  return found;
}

// --split's NAME=FRACTION, as the Python CLI's split().
function split(text, command) {
  const at = text.indexOf('=');
  const [name, fraction] = at < 0 ? [text, ''] : [text.slice(0, at), text.slice(at + 1)];
  const value = /^\s*[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?\s*$/.test(fraction) ? Number(fraction) : NaN;
  if (at < 0 || !name || !Number.isFinite(value)) {
    throw new UsageError(`--split: ${pythonRepr(text)}: write NAME=FRACTION, e.g. train=0.8`, command);
  }
  if (!(value > 0 && value <= 1)) {
    throw new UsageError(
      `--split: ${pythonRepr(text)}: the fraction must be above 0 and at most 1, e.g. train=0.8`,
      command,
    );
  }
  return [name, value];
}

// --tag's KEY=VALUE, as the Python CLI's key_value().
function keyValue(text, command) {
  const at = text.indexOf('=');
  if (at <= 0) throw new UsageError(`--tag: ${pythonRepr(text)}: write KEY=VALUE`, command);
  return [text.slice(0, at), text.slice(at + 1)];
}

// The command `words` (those not of a flag) begin with: one word, or two for a group's (`jobs
// submit`); undefined for none.
function commandOf([first, second]) {
  return `${first} ${second}` in COMMANDS ? `${first} ${second}` : first;
}

// The command (one word, or two for a group such as `jobs submit`), its positional arguments and
// its flags ({ '--status': ['running'] }); a flag another command takes is refused, not ignored.
function parse(argv) {
  const args = { positional: [], flags: {} };
  const words = [];
  const given = [];
  let valueMissing;
  for (let i = 0; i < argv.length; i += 1) {
    const arg = argv[i];
    if (arg === '--help' || arg === '-h') args.help = true;
    else if (arg.startsWith('--')) {
      // As argparse: `--flag=value` is `--flag value`.
      const equals = arg.indexOf('=');
      const flag = equals === -1 ? arg : arg.slice(0, equals);
      const takesValue = GLOBAL_FLAGS[flag] ?? Object.values(FLAGS).find((flags) => flag in flags)?.[flag];
      if (takesValue === undefined) throw new UsageError(`unknown option ${flag}`);
      if (equals !== -1) given.push([flag, arg.slice(equals + 1), !takesValue]);
      else if (takesValue && i + 1 >= argv.length) valueMissing = flag;
      else given.push([flag, takesValue ? argv[++i] : true, false]);
    } else words.push(arg);
  }
  args.command = commandOf(words);
  args.positional = words.slice(args.command ? args.command.split(' ').length : 0);
  // Another command's flag anywhere on the line is refused as that, first: a value (for a flag
  // ending the line) or none (for a switch given one) would not make it one of this command's.
  for (const [flag] of given) refuseUnlessOptionOf(flag, args.command);
  if (valueMissing !== undefined) {
    refuseUnlessOptionOf(valueMissing, args.command);
    const allowed = CHOICES[valueMissing] ? `: one of ${CHOICES[valueMissing].join(', ')}` : '';
    throw new UsageError(`${valueMissing} needs a value${allowed}`, args.command);
  }
  for (const [flag, value, unwanted] of given) {
    if (unwanted) throw new UsageError(`${flag} takes no value, got ${JSON.stringify(value)}`, args.command);
    if (flag === '--target') args.target = value;
    else if (flag === '--token') args.token = value;
    else if (flag === '--timeout') args.timeoutMs = seconds('--timeout', value) * 1000;
    else (args.flags[flag] = args.flags[flag] || []).push(value);
  }
  // As the Python CLI: the environment's default is read (and checked) only when --timeout is not
  // given, and an empty one is none.
  const timeoutDefault = process.env.TESSERA_TIMEOUT_S;
  if (args.timeoutMs === undefined && timeoutDefault) {
    args.timeoutMs = seconds('env TESSERA_TIMEOUT_S (the default of --timeout)', timeoutDefault) * 1000;
  }
  return args;
}

// A flag neither global nor one of `command`'s is refused as not an option of it.
function refuseUnlessOptionOf(flag, command) {
  if (!(flag in GLOBAL_FLAGS) && !(flag in (FLAGS[command] || {}))) {
    throw new UsageError(`${flag} is not an option of ${command || 'tessera-node'}`, command);
  }
}

function arity(args, min, max) {
  if (args.positional.length < min || args.positional.length > max) {
    const count = min === max ? min : `${min} to ${max}`;
    throw new UsageError(`${args.command} takes ${count} argument(s), got ${args.positional.length}`, args.command);
  }
}

function print(value) {
  process.stdout.write(`${JSON.stringify(value)}\n`);
}

// A deployment's warnings on stderr after the answer (which carries them too), one line each in
// the CLI's words, as the Python CLI's.
function warn(warnings) {
  for (const warning of warnings) process.stderr.write(`warning: ${inCliWords(warning)}\n`);
}

// `value` (`given` as read) when it is one of `flag`'s CHOICES, else a UsageError saying them and
// the one likely meant, the same word the Python CLI suggests.
function choice(flag, value, given, command) {
  const allowed = CHOICES[flag];
  if (!allowed.includes(value)) {
    throw new UsageError(
      `${flag}: ${JSON.stringify(given)} is not one of ${allowed.join(', ')}${didYouMean(value, allowed)}`,
      command,
    );
  }
  return value;
}

// The values of repeatable `flag`, each one of its CHOICES in any case, as the Python CLI's.
function chosen(args, flag) {
  return (args.flags[flag] || []).map((given) => choice(flag, given.toLowerCase(), given, args.command));
}

// A version number or an alias, as the Python CLI reads one: digits are a version.
function versionOrAlias(text) {
  return /^[0-9]+$/.test(text) ? { version: Number(text) } : { alias: text };
}

// A deployment route VERSION=PERCENT or ALIAS=PERCENT.
function route(text, command) {
  const at = text.indexOf('=');
  const [target, weight] = [text.slice(0, at), text.slice(at + 1)];
  if (at < 0 || !target || !/^[0-9]+$/.test(weight)) {
    throw new UsageError(
      `route ${JSON.stringify(text)}: write VERSION=PERCENT or ALIAS=PERCENT, e.g. 3=90 staging=10`,
      command,
    );
  }
  return { ...versionOrAlias(target), weight: Number(weight) };
}

// A followed or watched job's events, one a line; fails unless the job succeeded.
async function follow(jobId, fromSeq) {
  followed = jobId;
  for await (const event of client.watchJob(jobId, { fromSeq })) print(event);
  const job = await client.getJob(jobId);
  if (job.state !== 'JOB_STATE_SUCCEEDED') {
    throw new Error(`job ${jobId} ended ${job.state}${job.error ? `: ${job.error}` : ''}`);
  }
}

// A JobSpec from a JSON file; what is wrong with the file is said with its name.
function readSpec(file) {
  let text;
  try {
    text = fs.readFileSync(file, 'utf8');
  } catch (err) {
    throw new Error(`cannot read ${file}: ${err.message}`);
  }
  try {
    return JSON.parse(text);
  } catch (err) {
    throw new Error(`${file} is not JSON: ${err.message}`);
  }
}

// A NAME[:VERSION] argument, as the Python CLI's dataset().
function dataset(text, command) {
  try {
    datasetRef(text);
  } catch (err) {
    throw new UsageError(err.message, command);
  }
  return text;
}

function prefixHint(word) {
  return `\`tessera-node models ls --prefix ${word}\` lists the models whose name starts with ${word}`;
}

// load's ServingConfig: the options given, each in its proto field's range, as the Python CLI's.
function servingConfig(args) {
  const { command, flags } = args;
  const one = (flag) => flags[flag] && flags[flag][flags[flag].length - 1];
  const config = {};
  const runtime = one('--runtime');
  // Written as it is, as the Python CLI's --runtime takes it.
  if (runtime !== undefined) config.runtime = choice('--runtime', runtime, runtime, command);
  if (one('--device') !== undefined) config.device = one('--device');
  // The daemon's range of each (its serving pool's CONFIG_LIMITS, which a test holds this to); 0
  // where it starts at 1 is the daemon's default, as the daemon takes it.
  const numbers = [
    ['--instances', 'instances', 1, 64],
    ['--max-batch-size', 'max_batch_size', 1, 65536],
    ['--max-queue-delay-us', 'max_queue_delay_us', 0, 10000000],
    ['--max-queue-size', 'max_queue_size', 1, 1000000],
    ['--warmup-runs', 'warmup_runs', 0, 1000],
    ['--intra-op-threads', 'intra_op_threads', 0, 1024],
  ];
  for (const [flag, field, low, high] of numbers) {
    const text = one(flag);
    if (text === undefined) continue;
    if (!/^[0-9]+$/.test(text) || !((Number(text) >= low && Number(text) <= high) || (low && Number(text) === 0))) {
      const shown = text.length <= 40 ? text : `${text.slice(0, 40)}...`;
      const zero = low ? " (0 for the daemon's default)" : '';
      throw new UsageError(`${flag} must be in ${low}..${high}${zero}, got ${JSON.stringify(shown)}`, command);
    }
    config[field] = Number(text);
  }
  if (flags['--response-cache']) config.response_cache = true;
  return config;
}

// --expected-revision's number, undefined when it is not given.
function expectedRevision(args) {
  const given = args.flags['--expected-revision'];
  return given === undefined ? undefined : wholeNumber('--expected-revision', given[given.length - 1], args.command);
}

async function run(args) {
  const { command, positional, flags } = args;
  const one = (flag) => flags[flag] && flags[flag][flags[flag].length - 1];
  if (command === 'info') {
    arity(args, 0, 0);
    const info = await client.info();
    return print({ version: info.version, services: info.services });
  }
  if (command === 'models ls' || (command === 'models' && !positional.length)) {
    arity(args, 0, 0);
    const models = await client.listModels(one('--prefix') || '');
    return print(models.map((m) => ({ name: m.name, latest_version: m.latest_version, aliases: m.aliases })));
  }
  if (command === 'models alias') {
    arity(args, 3, 3);
    const [model, alias, versionText] = positional;
    const moved = await client.setAlias(model, alias, wholeNumber('VERSION', versionText, command));
    print(moved);
    return warn(moved.deployment_warnings);
  }
  if (command === 'models unalias') {
    arity(args, 2, 2);
    const [model, alias] = positional;
    await client.deleteAlias(model, alias);
    return print({ model, alias, deleted: true });
  }
  if (command === 'datasets ls') {
    arity(args, 0, 0);
    return print(await client.listDatasets(one('--prefix') || ''));
  }
  if (command === 'datasets show') {
    arity(args, 1, 1);
    return print(await client.getDatasetVersion(dataset(positional[0], command)));
  }
  if (command === 'datasets push') {
    arity(args, 2, 2);
    const [name, file] = positional;
    const splits = pairs(args, '--split', (text) => split(text, command));
    const tags = pairs(args, '--tag', (text) => keyValue(text, command));
    const arrayName = one('--array-name') || '';
    if (arrayName && path.extname(file).toLowerCase() !== '.npy') {
      throw new UsageError(
        `--array-name names the array of a .npy file; ${file} is not one (an .npz names its arrays itself)`,
        command,
      );
    }
    const seed = one('--seed') === undefined ? 0 : wholeNumber('--seed', one('--seed'), command);
    return print(
      await client.pushDataset(name, file, {
        splits,
        seed,
        arrayName,
        allowNonfinite: Boolean(flags['--allow-nonfinite']),
        description: one('--description') || '',
        tags,
      }),
    );
  }
  if (command === 'load') {
    arity(args, 1, 1);
    const selector = one('--version') === undefined ? {} : versionOrAlias(one('--version'));
    return print(await client.loadModel(positional[0], { ...selector, config: servingConfig(args) }));
  }
  if (command === 'unload') {
    arity(args, 1, 1);
    const selector = one('--version') === undefined ? {} : versionOrAlias(one('--version'));
    return print(await client.unloadModel(positional[0], selector));
  }
  if (command === 'serve-status') {
    arity(args, 0, 1);
    return print(await client.listLoaded(positional[0] || ''));
  }
  if (command === 'models rm') {
    arity(args, 1, 2);
    const [model, versionText] = positional;
    if (versionText === undefined) {
      return print({ model, deleted_versions: await client.deleteModel(model, { force: Boolean(flags['--force']) }) });
    }
    const version = wholeNumber('VERSION', versionText, command);
    if (version < 1) throw new UsageError('VERSION must be a version number, 1 or more, got 0', command);
    if (flags['--force']) {
      // DeleteVersion has no force: what refuses it (an alias, the deployment) must be moved.
      throw new UsageError(
        '--force deletes a whole model with its aliases and deployment; a version in use is freed by moving ' +
          'what uses it, as the refusal says',
        command,
      );
    }
    await client.deleteVersion(model, version);
    return print({ model, version, deleted_versions: 1 });
  }
  if (command === 'models deploy') {
    if (positional.length < 2) {
      throw new UsageError(
        `models deploy takes MODEL and at least one ROUTE, got ${positional.length} argument(s)`,
        command,
      );
    }
    const [model, ...routeTexts] = positional;
    const routes = routeTexts.map((text) => route(text, command));
    const seen = new Set();
    for (const { version, alias } of routes) {
      const words = version === undefined ? `alias '${alias}'` : `version ${version}`;
      if (seen.has(words)) {
        throw new UsageError(`route ${words} is given twice; give it one route with the percents added`, command);
      }
      seen.add(words);
    }
    const percentText = one('--shadow-percent');
    const percent = percentText === undefined ? 100 : wholeNumber('--shadow-percent', percentText, command);
    if (percent < 1 || percent > 100) {
      throw new UsageError(`--shadow-percent must be 1..100, got ${percent}`, command);
    }
    const shadow = one('--shadow') === undefined ? undefined : { ...versionOrAlias(one('--shadow')), percent };
    const comment = one('--comment') || '';
    return print(await client.deploy(model, routes, { shadow, comment, expectedRevision: expectedRevision(args) }));
  }
  if (command === 'models rollback') {
    arity(args, 1, 1);
    return print(await client.rollback(positional[0], { expectedRevision: expectedRevision(args) }));
  }
  if (command === 'models deployments') {
    arity(args, 1, 1);
    const history = await client.listDeployments(positional[0]);
    print(history);
    return warn(history.length ? history[0].warnings : []);
  }
  if (command === 'predict') {
    arity(args, 2, 2);
    const version = one('--version') === undefined ? undefined : wholeNumber('--version', one('--version'), command);
    let inputs;
    try {
      inputs = JSON.parse(positional[1]);
    } catch (err) {
      throw new UsageError(`INPUTS_JSON is not JSON: ${err.message}`, command);
    }
    return print(await client.predict(positional[0], inputs, { version, alias: one('--alias') }));
  }
  if (command === 'jobs ls') {
    arity(args, 0, 0);
    const states = chosen(args, '--state');
    return print(await client.listJobs({ states, experiment: one('--experiment') || '', sweepId: one('--sweep') || '' }));
  }
  if (command === 'jobs submit') {
    arity(args, 1, 1);
    const job = await client.submitJob(readSpec(positional[0]));
    print(job);
    return flags['--follow'] ? follow(job.job_id, 1) : undefined;
  }
  if (command === 'jobs watch') {
    arity(args, 1, 1);
    const fromSeq = one('--from-seq') === undefined ? 1 : wholeNumber('--from-seq', one('--from-seq'), command);
    return follow(positional[0], fromSeq);
  }
  if (command === 'runs ls') {
    arity(args, 0, 1);
    if (positional.length && flags['--experiment']) {
      throw new UsageError('the experiment is given twice: give it as --experiment NAME or as NAME alone', command);
    }
    const experiment = positional[0] ?? one('--experiment') ?? '';
    const statuses = chosen(args, '--status');
    const options = { statuses, filter: one('--filter') || '', orderBy: one('--order-by') };
    try {
      if (statuses.length && parseRunFilter(options.filter).statuses.length) {
        throw new UsageError('--filter compares attributes.status and --status too; give those conditions in one of them', command);
      }
      return print(await client.listRuns(experiment, options));
    } catch (err) {
      if (!(err instanceof RunFilterError)) throw err;
      // Which flag the string came from, as the Python CLI says it: the filter is read first.
      const flag = err.text === options.filter ? '--filter' : '--order-by';
      throw new UsageError(`${flag}: ${err.message}`, command);
    }
  }
  if (command === 'runs compare') {
    // As the Python CLI: fewer than two is a usage error, not the daemon's INVALID_ARGUMENT.
    if (positional.length < 2) throw new UsageError('runs compare takes two or more RUN_IDs', command);
    return print(await client.compareRuns(positional));
  }
  if (command === 'runs metrics') {
    arity(args, 1, 1);
    return print(await client.listRunMetrics(positional[0]));
  }
  if (command === 'sweeps ls') {
    arity(args, 0, 0);
    return print(await client.listSweeps());
  }
  if (command === 'sweeps show') {
    arity(args, 1, 1);
    return print(await client.getSweep(positional[0]));
  }
  if (GROUPS.includes(command)) {
    if (!positional.length) throw new UsageError(`${command} needs a command`, command);
    const words = Object.keys(COMMANDS)
      .filter((name) => name.startsWith(`${command} `))
      .map((name) => name.slice(command.length + 1));
    const [word] = positional;
    // `models PREFIX` listed a prefix before, and could not list one spelled like a command: the
    // listing is named also beside a command the word is near ("clips" to "alias").
    const meant = didYouMean(word, words) + (command === 'models' ? `; ${prefixHint(word)}` : '');
    throw new UsageError(`unknown command ${JSON.stringify(`${command} ${word}`)}${meant}`, command);
  }
  const words = [...new Set(Object.keys(COMMANDS).map((name) => name.split(' ')[0]))];
  throw new UsageError(`unknown command ${JSON.stringify(command)}${didYouMean(command, words)}`);
}


async function main() {
  const args = parse(process.argv.slice(2));
  if (args.help) {
    if (GROUPS.includes(args.command)) process.stdout.write(groupUsage(args.command));
    else if (args.command in COMMANDS) process.stdout.write(commandUsage(args.command));
    else process.stdout.write(usage());
    return;
  }
  if (!args.command) throw new UsageError('no command given');
  // As the Python CLI: TESSERA_TARGET is --target's default, checked as --target is, and only for
  // a command, which connects: help answers whatever the environment says.
  const target = args.target ?? (process.env.TESSERA_TARGET || undefined);
  client = new Client(target === undefined ? undefined : daemonTarget(target), { token: args.token, timeoutMs: args.timeoutMs });
  try {
    await run(args);
  } finally {
    client.close();
    client = undefined;
  }
}

// What follows a usage error's message: the command's usage line, or where to find it.
function usageHint(command) {
  // A group first: `models` is a command of its own too, which lists the models.
  if (GROUPS.includes(command)) return `(tessera-node ${command} --help lists its commands)`;
  if (command in COMMANDS) return `usage: tessera-node ${COMMANDS[command].usage}`;
  return '(tessera-node --help lists the commands)';
}

main().then(
  () => {
    if (stoppedWith !== undefined) process.exit(stoppedWith);
  },
  (err) => {
    // A command stopped fails with its calls cancelled: it was said already.
    if (stoppedWith !== undefined) process.exit(stoppedWith);
    failed(err);
  },
);

function failed(err) {
  if (err instanceof UsageError) {
    process.stderr.write(`tessera-node: ${err.message}\n${usageHint(err.command)}\n`);
    process.exit(EXIT_USAGE);
  }
  if (err instanceof TesseraError) {
    // In the CLI's words, as the Python CLI shows it: an RPC the message names as the command that
    // does it ("ListJobs lists them"), a request field as the flag that sets it ("pass force").
    process.stderr.write(`tessera-node: ${inCliWords(err.message)}\n`);
    process.exit(EXIT_DAEMON);
  }
  process.stderr.write(`tessera-node: ${err.message}\n`);
  process.exit(EXIT_FAILED);
}
