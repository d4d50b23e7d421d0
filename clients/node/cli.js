#!/usr/bin/env node
'use strict';
// tessera-node: a few commands over clients/node/tessera.js; `tessera-node --help` lists them.
// Prints JSON on stdout (a watch: one event a line); on failure prints "tessera-node: CODE:
// message" (or what to fix) on stderr and exits 1.

const fs = require('node:fs');
const { Client } = require('./tessera');

const OPTIONS = `options (before or after the command):
  --target HOST:PORT  the daemon (default: $TESSERA_TARGET, else 127.0.0.1:50051)
  --token TOKEN       bearer token (default: $TESSERA_TOKEN)
  --timeout SECONDS   each call's deadline (default 30); a watch has none
  --help              this help, or a command's`;

const COMMANDS = {
  info: { usage: 'info', about: "the daemon's version and services" },
  models: { usage: 'models [PREFIX]', about: 'the models (whose name starts with PREFIX)' },
  predict: {
    usage: 'predict MODEL INPUTS_JSON [--version N | --alias A]',
    about:
      'one Predict; INPUTS_JSON: {"input": {"dtype": "DATA_TYPE_FLOAT32", "shape": [1, 4], "values": [1, 2, 3, 4]}}',
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
    usage: 'runs ls [EXPERIMENT] [--status STATUS]...',
    about: 'runs, newest first: of EXPERIMENT (default: all), in one of the STATUSes (running, succeeded, failed, cancelled, interrupted)',
  },
  'sweeps ls': { usage: 'sweeps ls', about: 'every sweep' },
  'sweeps show': { usage: 'sweeps show SWEEP_ID', about: 'a sweep with its trials' },
};

// Each command's flags beyond OPTIONS, and whether they take a value.
const FLAGS = {
  predict: { '--version': true, '--alias': true },
  'jobs submit': { '--follow': false },
  'jobs watch': { '--from-seq': true },
  'runs ls': { '--status': true },
};
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

function usage() {
  const lines = Object.values(COMMANDS).map(({ usage: line, about }) => `  ${line}\n${wrapped(about, '      ')}`);
  return `usage: tessera-node [options] COMMAND ...\n\ncommands:\n${lines.join('\n')}\n\n${OPTIONS}\n`;
}

function commandUsage(name) {
  const { usage: line, about } = COMMANDS[name];
  return `usage: tessera-node [options] ${line}\n\n${wrapped(about, '')}\n\n${OPTIONS}\n`;
}

// A command line that is wrong; `command` names the command when it is known, for its usage line.
class UsageError extends Error {
  constructor(message, command) {
    super(message);
    this.command = command;
  }
}

// Digits 0-9 only: Number() also reads "0x1", "1e0" and " 1" as 1, and "" as 0 (the latest
// version); beyond 2**53 it would round to another version.
function wholeNumber(name, text) {
  if (!/^[0-9]+$/.test(text || '') || Number(text) > Number.MAX_SAFE_INTEGER) {
    throw new Error(`${name} must be a whole number written in digits 0-9, got ${JSON.stringify(text)}`);
  }
  return Number(text);
}

// A plain decimal number above 0: Number() also reads "", " 1", "0x10" and "1e3", and a deadline
// of NaN or Infinity is none at all.
function seconds(name, text) {
  const value = Number(text);
  if (!/^[0-9]*\.?[0-9]+$/.test(text || '') || !(value > 0 && value <= 1e9)) {
    throw new Error(
      `${name} must be seconds above 0 (at most 1e9) written in digits and a point, such as 30 or 0.5, ` +
        `got ${JSON.stringify(text)}`,
    );
  }
  return value;
}

// The command (one word, or two for a group such as `jobs submit`), its positional arguments and
// its flags ({ '--status': ['running'] }); a flag another command takes is refused, not ignored.
function parse(argv) {
  const args = { target: process.env.TESSERA_TARGET || '127.0.0.1:50051', positional: [], flags: {} };
  const words = [];
  const given = [];
  for (let i = 0; i < argv.length; i += 1) {
    const arg = argv[i];
    if (arg === '--help' || arg === '-h') args.help = true;
    else if (arg.startsWith('--')) {
      const takesValue = GLOBAL_FLAGS[arg] ?? Object.values(FLAGS).find((flags) => arg in flags)?.[arg];
      if (takesValue === undefined) throw new UsageError(`unknown option ${arg}`);
      if (takesValue && i + 1 >= argv.length) throw new UsageError(`${arg} needs a value`);
      given.push([arg, takesValue ? argv[++i] : true]);
    } else words.push(arg);
  }
  const [first, second] = words;
  args.command = `${first} ${second}` in COMMANDS ? `${first} ${second}` : first;
  args.positional = words.slice(args.command ? args.command.split(' ').length : 0);
  for (const [flag, value] of given) {
    if (flag === '--target') args.target = value;
    else if (flag === '--token') args.token = value;
    else if (flag === '--timeout') args.timeoutMs = seconds('--timeout', value) * 1000;
    else if (!(flag in (FLAGS[args.command] || {}))) {
      throw new UsageError(`${flag} is not an option of ${args.command || 'tessera-node'}`, args.command);
    } else (args.flags[flag] = args.flags[flag] || []).push(value);
  }
  return args;
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

// A followed or watched job's events, one a line; fails unless the job succeeded.
async function follow(client, jobId, fromSeq) {
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

async function run(client, args) {
  const { command, positional, flags } = args;
  const one = (flag) => flags[flag] && flags[flag][flags[flag].length - 1];
  if (command === 'info') {
    arity(args, 0, 0);
    const info = await client.info();
    return print({ version: info.version, services: info.services });
  }
  if (command === 'models') {
    arity(args, 0, 1);
    const models = await client.listModels(positional[0] || '');
    return print(models.map((m) => ({ name: m.name, latest_version: m.latest_version, aliases: m.aliases })));
  }
  if (command === 'predict') {
    arity(args, 2, 2);
    const version = one('--version') === undefined ? undefined : wholeNumber('--version', one('--version'));
    return print(await client.predict(positional[0], JSON.parse(positional[1]), { version, alias: one('--alias') }));
  }
  if (command === 'jobs submit') {
    arity(args, 1, 1);
    const job = await client.submitJob(readSpec(positional[0]));
    print(job);
    return flags['--follow'] ? follow(client, job.job_id, 1) : undefined;
  }
  if (command === 'jobs watch') {
    arity(args, 1, 1);
    const fromSeq = one('--from-seq') === undefined ? 1 : wholeNumber('--from-seq', one('--from-seq'));
    return follow(client, positional[0], fromSeq);
  }
  if (command === 'runs ls') {
    arity(args, 0, 1);
    return print(await client.listRuns(positional[0] || '', { statuses: flags['--status'] || [] }));
  }
  if (command === 'sweeps ls') {
    arity(args, 0, 0);
    return print(await client.listSweeps());
  }
  if (command === 'sweeps show') {
    arity(args, 1, 1);
    return print(await client.getSweep(positional[0]));
  }
  throw new UsageError(`unknown command ${JSON.stringify(positional.length ? `${command} ${positional[0]}` : command)}`);
}

async function main() {
  const args = parse(process.argv.slice(2));
  if (args.help) {
    process.stdout.write(args.command in COMMANDS ? commandUsage(args.command) : usage());
    return;
  }
  if (!args.command) throw new UsageError('no command given');
  const client = new Client(args.target, { token: args.token, timeoutMs: args.timeoutMs });
  try {
    await run(client, args);
  } finally {
    client.close();
  }
}

main().catch((err) => {
  let hint = '';
  if (err instanceof UsageError) {
    hint = err.command in COMMANDS ? `\nusage: tessera-node ${COMMANDS[err.command].usage}` : '\n(tessera-node --help lists the commands)';
  }
  process.stderr.write(`tessera-node: ${err.message}${hint}\n`);
  process.exit(1);
});
