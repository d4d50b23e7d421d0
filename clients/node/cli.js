#!/usr/bin/env node
'use strict';
// tessera-node: `info`, `models [PREFIX]`, `predict MODEL INPUT_JSON [--version N | --alias A]`;
// `--timeout SECONDS` bounds each call (default 30), as `tessera --timeout` does.
// Prints JSON on stdout; on failure prints "tessera-node: CODE: message" and exits 1.
//   node cli.js --target 127.0.0.1:50051 predict affine '{"input": {"dtype": "DATA_TYPE_FLOAT32",
//     "shape": [1, 4], "values": [1, 2, 3, 4]}}'

const { Client } = require('./tessera');

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

function parse(argv) {
  const args = { target: process.env.TESSERA_TARGET || '127.0.0.1:50051', positional: [] };
  for (let i = 0; i < argv.length; i += 1) {
    const arg = argv[i];
    if (arg === '--target') args.target = argv[++i];
    else if (arg === '--token') args.token = argv[++i];
    else if (arg === '--version') args.version = wholeNumber('--version', argv[++i]);
    else if (arg === '--alias') args.alias = argv[++i];
    else if (arg === '--timeout') args.timeoutMs = seconds('--timeout', argv[++i]) * 1000;
    else args.positional.push(arg);
  }
  return args;
}

async function main() {
  const args = parse(process.argv.slice(2));
  const [command, ...rest] = args.positional;
  const client = new Client(args.target, { token: args.token, timeoutMs: args.timeoutMs });
  try {
    let result;
    if (command === 'info') {
      const info = await client.info();
      result = { version: info.version, services: info.services };
    } else if (command === 'models') {
      const models = await client.listModels(rest[0] || '');
      result = models.map((m) => ({ name: m.name, latest_version: m.latest_version, aliases: m.aliases }));
    } else if (command === 'predict') {
      if (rest.length !== 2) throw new Error('usage: predict MODEL INPUTS_JSON [--version N | --alias A]');
      result = await client.predict(rest[0], JSON.parse(rest[1]), { version: args.version, alias: args.alias });
    } else {
      throw new Error(`unknown command ${command || '(none)'}; use info, models or predict`);
    }
    process.stdout.write(`${JSON.stringify(result)}\n`);
  } finally {
    client.close();
  }
}

main().catch((err) => {
  process.stderr.write(`tessera-node: ${err.message}\n`);
  process.exit(1);
});
