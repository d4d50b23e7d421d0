'use strict';
// The daemon's messages in a CLI user's words, as the Python CLI shows them
// (clients/python/src/tessera/rpc_commands.py): where a message names an RPC ("ListJobs lists
// them"), the command that does the same. The library keeps the API's words.

// RPC name -> the `tessera-node` command that does it, else the Python CLI's (or the SDK call)
// from tessera.rpc_commands.COMMAND_BY_RPC, whose RPCs this table holds every one of.
const COMMAND_BY_RPC = {
  // Registry
  CreateModel: '`tessera models push MODEL FILE`',
  UploadVersion: '`tessera models push MODEL FILE`',
  UploadVersionInline: '`tessera models push MODEL FILE`',
  UploadVersionBatch: "the Python SDK's client.models.push_batch()",
  ListModels: '`tessera-node models ls`',
  GetVersion: '`tessera models show MODEL`',
  ListVersions: '`tessera models versions MODEL`',
  DeleteVersion: '`tessera-node models rm MODEL VERSION`',
  DeleteModel: '`tessera-node models rm MODEL`',
  DownloadVersion: '`tessera models download MODEL PATH`',
  SetAlias: '`tessera-node models alias MODEL ALIAS VERSION`',
  DeleteAlias: '`tessera-node models unalias MODEL ALIAS`',
  ListAliasHistory: '`tessera models aliases MODEL --history`',
  CompareVersions: '`tessera models compare MODEL A B`',
  ExportOnnx: '`tessera export onnx MODEL`',
  Deploy: '`tessera-node models deploy MODEL ROUTE...`',
  Rollback: '`tessera-node models rollback MODEL`',
  ListDeployments: '`tessera-node models deployments MODEL`',
  WatchChanges: '`tessera models changes`',
  UpdateModel: "the Python SDK's client.models.update()",
  // Datasets
  UploadDataset: '`tessera-node datasets push NAME FILE`',
  ListDatasets: '`tessera-node datasets ls`',
  GetDatasetVersion: '`tessera-node datasets show NAME[:VERSION]`',
  ListDatasetVersions: '`tessera datasets versions NAME`',
  DeleteDataset: '`tessera datasets rm NAME[:VERSION]`',
  DownloadDataset: '`tessera datasets download NAME[:VERSION]`',
  // Training
  SubmitJob: '`tessera-node jobs submit SPEC.json`',
  ListJobs: '`tessera-node jobs ls`',
  WatchJob: '`tessera-node jobs watch JOB_ID`',
  CancelJob: '`tessera jobs cancel JOB_ID`',
  ListRuns: '`tessera-node runs ls`',
  GetRun: '`tessera runs show RUN_ID`',
  ListRunMetrics: '`tessera-node runs metrics RUN_ID`',
  GetMetricHistory: '`tessera runs metrics RUN_ID --history KEY`',
  LogMetrics: "the Node client's logMetrics()",
  LogMetricsStream: "the Node client's logMetricsStream()",
  CompareRuns: '`tessera-node runs compare RUN_ID RUN_ID...`',
  DeleteRun: '`tessera runs rm RUN_ID`',
  RestoreRun: '`tessera runs restore RUN_ID`',
  UpdateRun: "the Python SDK's client.training.update_run()",
  UploadRunArtifact: '`tessera runs artifacts put RUN_ID FILE`',
  ListRunArtifacts: '`tessera runs artifacts ls RUN_ID`',
  DownloadRunArtifact: '`tessera runs artifacts get RUN_ID PATH`',
  ListExperiments: '`tessera experiments ls`',
  UpdateExperiment: '`tessera experiments update NAME`',
  DeleteExperiment: '`tessera experiments rm NAME`',
  RestoreExperiment: '`tessera experiments restore NAME`',
  Leaderboard: '`tessera runs leaderboard EXPERIMENT METRIC`',
  CreateRun: "the Node client's createRun()",
  CreateExperiment: "the Node client's createExperiment()",
  SubmitSweep: '`tessera sweep SPEC.toml`',
  GetSweep: '`tessera-node sweeps show SWEEP_ID`',
  ListSweeps: '`tessera-node sweeps ls`',
  CancelSweep: '`tessera sweeps cancel SWEEP_ID`',
  // Inference
  Predict: '`tessera-node predict MODEL INPUTS_JSON`',
  Explain: '`tessera explain MODEL --input FILE`',
  GetStats: '`tessera stats MODEL`',
  ListLoaded: '`tessera-node serve-status`',
  LoadModel: '`tessera-node load MODEL`',
  UnloadModel: '`tessera-node unload MODEL`',
  // System
  GetServerInfo: '`tessera-node info`',
  Backup: '`tessera admin backup -o FILE`',
  VerifyStore: '`tessera admin verify`',
  VerifyStoreStream: '`tessera admin verify`',
};

// Request field a daemon message names (one to set, or one it refused) -> the flag that sets it,
// as the Python CLI's FLAG_BY_FIELD.
const FLAG_BY_FIELD = {
  allow_nonfinite: '`tessera-node datasets push --allow-nonfinite`',
  force: '--force',
  // Every list the CLI filters by a name prefix (models ls, datasets ls) sends it here.
  name_prefix: '--prefix',
};

// An RPC told to name a version ("LoadModel naming version 3"): its command with --version, as
// the Python CLI's _VERSIONED_COMMAND.
const VERSIONED_RPC = /\b(LoadModel|Predict) naming version (\d+)/g;
const VERSIONED_COMMAND = {
  LoadModel: (version) => `\`tessera-node load MODEL --version ${version}\``,
  Predict: (version) => `\`tessera-node predict MODEL INPUTS_JSON --version ${version}\``,
};

const SERVICES = ['Registry', 'Datasets', 'Training', 'Inference', 'System'];
const alternatives = (names) => [...names].sort((a, b) => b.length - a.length).join('|');
// An RPC bare, as Service.Rpc, or as its method path tessera.v1.Service/Rpc (which
// PERMISSION_DENIED names): the whole of it becomes the command.
const RPC_WORD = new RegExp(
  `(?:\\btessera\\.v1\\.(?:${SERVICES.join('|')})/|\\b(?:${SERVICES.join('|')})\\.)?` +
    `\\b(${alternatives(Object.keys(COMMAND_BY_RPC))})\\b`,
  'g',
);
const FIELD_WORD = new RegExp(`\\b(${alternatives(Object.keys(FLAG_BY_FIELD))})\\b`, 'g');
// An RPC as its method path, which PERMISSION_DENIED names ahead of its fix.
const METHOD_PATH = new RegExp(
  `\\btessera\\.v1\\.(?:${SERVICES.join('|')})/(${alternatives(Object.keys(COMMAND_BY_RPC))})\\b`,
  'g',
);
// A name a message quotes, as Python's repr writes it ('clips', "it's"): the user's own text. A
// quote after a letter is an apostrophe ("the daemon's"), not the start of one. A letter, digit or
// _ of any script, as the Python CLI's \w.
const QUOTED = /(?<![\p{L}\p{N}_])(?:'(?:[^'\\]|\\[^])*'|"(?:[^"\\]|\\[^])*")(?![\p{L}\p{N}_])/gu;

// `message` with the fix that ends each of its lines in a CLI user's words (a spec's problems come
// one to a line, each with its own fix), as the Python CLI's in_cli_words: the fix (what follows a
// line's last "; ", or the whole of a line without one) has each RPC it names as its command (one
// told to name a version with --version) and each request field it tells the caller to set as
// the flag that sets it. Before the fix a line says what went wrong, in the user's own text too
// (a job id, a path), so only a method path is put in the CLI's words there. The names a message
// quotes are the user's and stay as they are.
function inCliWords(message) {
  return message.split('\n').map(lineInCliWords).join('\n');
}

function lineInCliWords(line) {
  const quoted = Array.from(line.matchAll(QUOTED), (match) => [match.index, match.index + match[0].length]);
  let outside = line;
  for (const [start, end] of quoted) {
    outside = outside.slice(0, start) + '\0'.repeat(end - start) + outside.slice(end);
  }
  const last = outside.lastIndexOf('; ');
  const fixStart = last >= 0 ? last + 2 : 0;
  let said = '';
  let at = 0;
  for (const [start, end] of [...quoted, [line.length, line.length]]) {
    const plain = line.slice(at, start);
    const split = Math.min(Math.max(fixStart - at, 0), plain.length);
    said += wordsBeforeTheFix(plain.slice(0, split)) + wordsOfTheFix(plain.slice(split));
    said += line.slice(start, end);
    at = end;
  }
  return said;
}

function wordsBeforeTheFix(text) {
  return text.replace(METHOD_PATH, (_, rpc) => COMMAND_BY_RPC[rpc]);
}

function wordsOfTheFix(text) {
  return text
    .replace(VERSIONED_RPC, (_, rpc, version) => VERSIONED_COMMAND[rpc](version))
    .replace(RPC_WORD, (_, rpc) => COMMAND_BY_RPC[rpc])
    .replace(FIELD_WORD, (_, field) => FLAG_BY_FIELD[field]);
}

module.exports = { COMMAND_BY_RPC, inCliWords };
