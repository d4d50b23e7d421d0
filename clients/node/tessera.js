'use strict';
// A small Node.js client for tesserad. It loads the .proto contract from protos/ at run time
// (proto.js), so it always speaks the same API as the daemon built from this checkout.

const crypto = require('node:crypto');
const fs = require('node:fs');
const path = require('node:path');
const grpc = require('@grpc/grpc-js');
const { DEFINITION, enumNames } = require('./proto');
const { TesseraError, tesseraError } = require('./errors');
const { PartialDownload, makeDirectories, removeEmptyDirectories } = require('./download');
const runFilter = require('./run_filter');

// Little-endian element readers/writers for the float and integer dtypes a Tensor carries.
const DTYPES = {
  DATA_TYPE_FLOAT32: { size: 4, read: (b, o) => b.readFloatLE(o), write: (b, v, o) => b.writeFloatLE(v, o) },
  DATA_TYPE_FLOAT64: { size: 8, read: (b, o) => b.readDoubleLE(o), write: (b, v, o) => b.writeDoubleLE(v, o) },
  DATA_TYPE_INT32: { size: 4, read: (b, o) => b.readInt32LE(o), write: (b, v, o) => b.writeInt32LE(v, o) },
  DATA_TYPE_INT64: {
    size: 8,
    read: (b, o) => Number(b.readBigInt64LE(o)),
    write: (b, v, o) => b.writeBigInt64LE(BigInt(v), o),
  },
};

// The value of enum `typeName` ('tessera.v1.RunStatus') that `given` names, in full
// ('RUN_STATUS_SUCCEEDED') or short ('succeeded'), as the Python SDK takes them: proto-loader
// sends a name it does not know as 0 (unspecified) without a word, which the daemon reads as "not
// given". `label` names the argument in the error.
function enumValue(typeName, given, label) {
  // Every enum of the protos starts with its 0 value, PREFIX_UNSPECIFIED.
  const [unspecified, ...choices] = enumNames(typeName);
  const prefix = unspecified.slice(0, -'UNSPECIFIED'.length);
  const full = typeof given === 'string' ? (given.startsWith(prefix) ? given : prefix + given.toUpperCase()) : '';
  if (choices.includes(full)) return full;
  const short = choices.map((name) => name.slice(prefix.length).toLowerCase()).join(', ');
  throw new RangeError(`${label}: ${JSON.stringify(given)} is not one of ${short}`);
}

// Every call has a deadline, as in the Python SDK: a timeout left undefined takes the default
// (watchJob's: none, a watch lasts as long as its job), and one that is not a number of
// milliseconds above 0 is refused before anything is sent (0 took the default through `||`, and
// a negative one failed at once with a bare DEADLINE_EXCEEDED).
const DEFAULT_TIMEOUT_MS = 30000;
// The daemon a client without a target (and TESSERA_TARGET unset) talks to, as the Python SDK's.
const DEFAULT_TARGET = '127.0.0.1:50051';
// LoadModel waits for the version to load and warm up, UnloadModel for its queue to drain: their
// default deadlines, as the Python SDK's (MODEL_CALL_TIMEOUT_S, UNLOAD_TIMEOUT_S), unless the
// client's is longer.
const MODEL_CALL_TIMEOUT_MS = 300000;
const UNLOAD_TIMEOUT_MS = 120000;
// Streams that move files or many metric points: an hour, as the Python SDK's transfer_timeout.
const DEFAULT_TRANSFER_TIMEOUT_MS = 3600000;
// An upload's chunk, as the Python SDK's (the daemon takes messages up to 4 MiB).
const CHUNK_BYTES = 1 << 20;
// The most a download asks for in one chunk, as the daemon takes (4 MiB).
const MAX_CHUNK_BYTES = 4 << 20;
// The smallest chunk a download may ask for: the daemon refuses fewer bytes a message.
const MIN_CHUNK_BYTES = 4096;
const MAX_TIMEOUT_MS = 1e12;

function timeoutMs(value, fallback) {
  if (value === undefined) return fallback;
  if (typeof value !== 'number' || !(value > 0 && value <= MAX_TIMEOUT_MS)) {
    const given = typeof value === 'string' ? JSON.stringify(value) : String(value);
    throw new RangeError(
      `timeoutMs must be milliseconds above 0 (at most ${MAX_TIMEOUT_MS}), got ${given}; ` +
        `leave it out for the default (${DEFAULT_TIMEOUT_MS} ms)`,
    );
  }
  return value;
}

// Keepalive pings find a connection that died without a word (a NAT or load balancer that forgot
// it, a peer host gone): without them a watch on it waits for ever. tesserad takes a ping every
// 500 ms at most, also between calls; one more often is answered with GOAWAY (too_many_pings),
// so the interval is 1 s at least. Pings go only while a call is open.
const DEFAULT_KEEPALIVE = { timeMs: 30000, timeoutMs: 20000 };
const MIN_KEEPALIVE_TIME_MS = 1000;
// An hour, as the Python SDK's bound: grpc-js hands these to setTimeout, which takes a delay past
// 2^31 - 1 ms as 1 ms (a ping every millisecond, or a connection dropped at once).
const MAX_KEEPALIVE_MS = 3600000;

function keepaliveOptions(keepalive) {
  if (keepalive === false) return {};
  const given = keepalive === undefined || keepalive === true ? {} : keepalive;
  if (typeof given !== 'object' || given === null) {
    throw new TypeError(`keepalive must be false, true or { timeMs, timeoutMs }, got ${String(keepalive)}`);
  }
  const { timeMs = DEFAULT_KEEPALIVE.timeMs, timeoutMs: ackMs = DEFAULT_KEEPALIVE.timeoutMs } = given;
  if (typeof timeMs !== 'number' || !(timeMs >= MIN_KEEPALIVE_TIME_MS && timeMs <= MAX_KEEPALIVE_MS)) {
    throw new RangeError(
      `keepalive.timeMs must be milliseconds from ${MIN_KEEPALIVE_TIME_MS} to ${MAX_KEEPALIVE_MS} (tesserad ` +
        `refuses pings more often than every 500 ms), got ${String(timeMs)}; keepalive: false turns pings off`,
    );
  }
  if (typeof ackMs !== 'number' || !(ackMs > 0 && ackMs <= MAX_KEEPALIVE_MS)) {
    throw new RangeError(`keepalive.timeoutMs must be milliseconds above 0 (at most ${MAX_KEEPALIVE_MS}), got ${String(ackMs)}`);
  }
  return { 'grpc.keepalive_time_ms': timeMs, 'grpc.keepalive_timeout_ms': ackMs };
}

function channelCredentials({ tls, rootCert, clientCert, clientKey }) {
  if (Boolean(clientCert) !== Boolean(clientKey)) {
    throw new TypeError('clientCert and clientKey go together: give both for mutual TLS, or neither');
  }
  if (!tls && !rootCert && !clientCert) return grpc.credentials.createInsecure();
  return grpc.credentials.createSsl(rootCert || null, clientKey || null, clientCert || null);
}

// A whole number a request's int64 field takes: proto-loader sends 1.5 as 1 and '7' as 7.
function wholeNumber(name, value) {
  if (!Number.isSafeInteger(value) || value < 0) {
    throw new RangeError(`${name} must be a whole number >= 0, got ${String(value)}`);
  }
  return value;
}

// A download's bytes per chunk (0: the daemon's default) as its int32 field carries it:
// proto-loader would send 1.5 as 1 and 2**32 + 4096 as 4096, without a word.
function chunkBytes(value) {
  if (!Number.isSafeInteger(value) || value < 0 || value > MAX_CHUNK_BYTES || (value > 0 && value < MIN_CHUNK_BYTES)) {
    throw new RangeError(
      `chunkSize must be a whole number of bytes: 0 (the daemon's default) or ${MIN_CHUNK_BYTES} to ${MAX_CHUNK_BYTES}, got ${String(value)}`,
    );
  }
  return value;
}

// A weight or percent an int32 field can carry: proto-loader would send 2**32 + 50 as 50, which
// the daemon would take. The daemon checks 1..100 and says so in the same words.
function int32(name, value) {
  if (!Number.isInteger(value) || value < -(2 ** 31) || value >= 2 ** 31) {
    throw new RangeError(`${name} must be 1..100, got ${String(value)}`);
  }
  return value;
}

// Param and tag values are text, as in the Python SDK: numbers and booleans are written out.
// `values` is an object of key: value, or a Map. Anything else is refused, as the Python SDK
// refuses what is no mapping: an array of pairs may give a key twice, which the request's map
// would keep once (and Object.entries read it as keys "0", "1", ...). A Map's keys that read as
// one text (1 and '1') are refused likewise.
function asText(values = {}, what = 'params') {
  if (values === null || typeof values !== 'object' || Array.isArray(values)) {
    const given = Array.isArray(values) ? 'an array' : values === null ? 'null' : typeof values;
    throw new TypeError(
      `${what}: give an object of key: value (or a Map), not ${given}: pairs may give a key twice, ` +
        'and the request keeps one value of each key',
    );
  }
  const text = {};
  for (const [key, value] of values instanceof Map ? values : Object.entries(values)) {
    const name = String(key);
    if (Object.hasOwn(text, name)) {
      throw new RangeError(`${what}: key ${JSON.stringify(name)} is given twice; give each key once`);
    }
    text[name] = String(value);
  }
  return text;
}

// `text` as Python's repr() writes a str, so that both clients quote what was given alike.
function pythonRepr(text) {
  const quote = text.includes("'") && !text.includes('"') ? '"' : "'";
  const escaped = text.replace(/\\/g, '\\\\').replace(/\n/g, '\\n').replace(/\t/g, '\\t');
  return quote + (quote === "'" ? escaped.replace(/'/g, "\\'") : escaped) + quote;
}

// `text` when it is a gRPC target with a host and a port, as the Python SDK's check_target: gRPC resolves
// "http://host:port" as a host name, and dials 443 without a port. Else a RangeError saying the
// form (a TypeError for a target that is not a string), ending with `where` the target was
// given; `tlsOption`: what turns TLS on there, for an https URL.
function checkTarget(text, where, tlsOption) {
  if (typeof text !== 'string') {
    throw new TypeError(`the target must be a string, HOST:PORT (e.g. ${DEFAULT_TARGET}), not ${typeof text}, ${where}`);
  }
  const defaultPort = DEFAULT_TARGET.split(':').pop();
  if (text === '') {
    throw new RangeError(`the target is empty: write HOST:PORT, e.g. ${DEFAULT_TARGET}, ${where}`);
  }
  if (text.startsWith('http://') || text.startsWith('https://')) {
    const host = text.split('://')[1].split('/')[0];
    const example = host.includes(':') ? host : `${host}:${defaultPort}`;
    const tls = text.startsWith('https://') ? ` (with ${tlsOption} for TLS)` : '';
    throw new RangeError(
      `${pythonRepr(text)} is a URL; tesserad speaks gRPC: write HOST:PORT, e.g. ${example}${tls}, ${where}`,
    );
  }
  if (/^[0-9]+$/.test(text)) {
    const defaultHost = DEFAULT_TARGET.split(':')[0];
    throw new RangeError(`${pythonRepr(text)} has no host: write HOST:PORT, e.g. ${defaultHost}:${text}, ${where}`);
  }
  if (!text.includes(':')) {
    throw new RangeError(`${pythonRepr(text)} has no port: write HOST:PORT, e.g. ${text}:${defaultPort}, ${where}`);
  }
  return text;
}

// The target a client without one talks to: TESSERA_TARGET (checked), else DEFAULT_TARGET.
function defaultTarget() {
  const fromEnv = process.env.TESSERA_TARGET;
  return fromEnv ? checkTarget(fromEnv, 'in env TESSERA_TARGET', 'tls: true') : DEFAULT_TARGET;
}

// A SubmitJob request id the daemon keeps (AIP-155), as the Python SDK's rule.
const REQUEST_ID = /^[A-Za-z0-9_-]{1,64}$/;
// Tries of a submit that fails UNAVAILABLE, as the Python SDK's RetryPolicy.attempts (5).
const SUBMIT_TRIES = 5;

class Client {
  // target: "host:port" (undefined: the TESSERA_TARGET environment variable, else
  // 127.0.0.1:50051, as the Python SDK and `tessera`; a target, given or in TESSERA_TARGET, that is
  // empty, a URL or has no port is refused with a RangeError, one that is not a string with a
  // TypeError, as the Python SDK refuses them); options: { token, timeoutMs (each call's deadline, default 30000),
  // tls (true: TLS trusting the system's CAs), rootCert (PEM Buffer of the CA that signed the
  // daemon's certificate; enables TLS), clientCert and clientKey (PEM Buffers, for a daemon that
  // asks for client certificates; enable TLS), keepalive ({ timeMs, timeoutMs }: a ping every
  // timeMs (default 30000) while a call is open, the connection dropped when one is not answered
  // within timeoutMs (default 20000); false: no pings) }.
  constructor(target, options = {}) {
    this.timeoutMs = timeoutMs(options.timeoutMs, DEFAULT_TIMEOUT_MS);
    const channelOptions = keepaliveOptions(options.keepalive);
    const v1 = grpc.loadPackageDefinition(DEFINITION).tessera.v1;
    const credentials = channelCredentials(options);
    this.target = target == null ? defaultTarget() : checkTarget(target, "as the client's target", 'tls: true');
    this.metadata = new grpc.Metadata();
    const token = options.token || process.env.TESSERA_TOKEN;
    if (token) this.metadata.set('authorization', `Bearer ${token}`);
    this.registry = new v1.Registry(this.target, credentials, channelOptions);
    const shared = { channelOverride: this.registry.getChannel() };
    this.inference = new v1.Inference(this.target, credentials, shared);
    this.system = new v1.System(this.target, credentials, shared);
    this.training = new v1.Training(this.target, credentials, shared);
    this.datasets = new v1.Datasets(this.target, credentials, shared);
    // The calls in flight, and the pauses before a call is sent again, for cancelCalls; how many
    // times it was called, for a loop between a failed call and its pause.
    this.inFlight = new Set();
    this.pauses = new Set();
    this.cancellations = 0;
  }

  // Waits `ms` before a call is sent again; cancelCalls ends the wait with a TesseraError
  // CANCELLED, so that nothing is sent after it. `since`: this.cancellations when the loop that
  // pauses began: a cancelCalls since (after its call ended, before this pause) ends it at once.
  pause(ms, since) {
    return new Promise((resolve, reject) => {
      if (since !== this.cancellations) {
        reject(new TesseraError({ code: grpc.status.CANCELLED, details: 'Cancelled on client' }));
        return;
      }
      const wait = {
        timer: setTimeout(() => {
          this.pauses.delete(wait);
          resolve();
        }, ms),
        cancel: () => {
          clearTimeout(wait.timer);
          this.pauses.delete(wait);
          reject(new TesseraError({ code: grpc.status.CANCELLED, details: 'Cancelled on client' }));
        },
      };
      this.pauses.add(wait);
    });
  }

  // `call` (a grpc-js call of any kind) kept in inFlight until it ends; returns it.
  track(call) {
    this.inFlight.add(call);
    call.on('status', () => this.inFlight.delete(call));
    return call;
  }

  // Cancels every call in flight, and a submit, watch or metric stream waiting to be sent again
  // (nothing more is sent): each rejects, or its loop throws, a TesseraError CANCELLED, and the
  // daemon ends its side at once (a watch, a stream) rather than when the connection goes.
  // For a process that stops (the CLI on Ctrl-C): close() the client too, so that no call the
  // caller's code makes next starts.
  cancelCalls() {
    this.cancellations += 1;
    for (const call of this.inFlight) call.cancel();
    for (const wait of this.pauses) wait.cancel();
  }

  // `timeout`: this call's timeoutMs (undefined: the client's).
  call(stub, method, request, timeout) {
    const deadline = new Date(Date.now() + timeoutMs(timeout, this.timeoutMs));
    return new Promise((resolve, reject) => {
      this.track(
        stub[method](request, this.metadata, { deadline }, (err, response) =>
          err ? reject(new TesseraError(err)) : resolve(response),
        ),
      );
    });
  }

  // Every page of a listing, each page a call of its own with its own deadline.
  async pages(stub, method, request, field, timeout) {
    const items = [];
    let pageToken = '';
    do {
      const page = await this.call(stub, method, { ...request, page_token: pageToken }, timeout);
      items.push(...page[field]);
      pageToken = page.next_page_token;
    } while (pageToken);
    return items;
  }

  // Each method takes { timeoutMs } last, for its calls instead of the client's.
  async info({ timeoutMs: timeout } = {}) {
    return this.call(this.system, 'GetServerInfo', {}, timeout);
  }

  // Every model, following page tokens.
  async listModels(namePrefix = '', { timeoutMs: timeout } = {}) {
    return this.pages(this.registry, 'ListModels', { name_prefix: namePrefix }, 'models', timeout);
  }

  // inputs: { name: { dtype: 'DATA_TYPE_FLOAT32', shape: [2, 4], values: [...] } }.
  // Resolves to { version, outputs: { name: { dtype, shape, values } } }.
  async predict(model, inputs, { version, alias, timeoutMs: timeout } = {}) {
    const target = { model };
    if (version !== undefined) target.version = version;
    if (alias !== undefined) target.alias = alias;
    const request = {
      target,
      inputs: Object.entries(inputs).map(([name, tensor]) => encodeTensor(name, tensor)),
    };
    const response = await this.call(this.inference, 'Predict', request, timeout);
    const outputs = {};
    for (const tensor of response.outputs) outputs[tensor.name] = decodeTensor(tensor);
    return { model: response.model, version: response.version, outputs };
  }

  // Training jobs. spec: a JobSpec (protos/tessera/v1/job_spec.proto) with its field names, enum
  // values by their full or short names ('TASK_REGRESSION' or 'regression'); a field or enum
  // name the proto does not have is refused before sending. Resolves to the Job.
  // The submit carries requestId (a new UUID4 unless given), so that it is sent again when it
  // fails UNAVAILABLE, as the Python SDK's: up to five tries in all, with watchJob's backoff,
  // within the one deadline; a repeat of a submit the daemon had committed answers that job
  // instead of creating a second. Give your own (1 to 64 of A-Z a-z 0-9 - _) to send the same
  // submit again yourself, within 24 hours; the same id with another spec is ALREADY_EXISTS.
  // Ids are each caller's own (each token's). A daemon older than resume_from drops it and would
  // train from scratch, and one older than its full resume would start from the checkpoint's
  // weights alone (unless the spec sets resume_weights_only): its job is cancelled and the submit
  // fails UNIMPLEMENTED (answeredJob).
  async submitJob(spec, { requestId = crypto.randomUUID(), timeoutMs: timeout } = {}) {
    if (typeof requestId !== 'string' || !REQUEST_ID.test(requestId)) {
      const given = typeof requestId === 'string' ? pythonRepr(requestId.slice(0, 65)) : String(requestId);
      throw new RangeError(
        `requestId: ${given} is not a request id: leave it out for a generated one, or give 1 to 64 ` +
          'characters from A-Z a-z 0-9 - _',
      );
    }
    const request = checkedRequest(this.training.SubmitJob, { spec, request_id: requestId });
    const deadline = Date.now() + timeoutMs(timeout, this.timeoutMs);
    const since = this.cancellations;
    for (let tries = 1; ; tries += 1) {
      let job;
      try {
        job = await this.call(this.training, 'SubmitJob', request, Math.max(1, deadline - Date.now()));
      } catch (err) {
        const pause = backoffMs(tries);
        if (err.code !== 'UNAVAILABLE' || tries >= SUBMIT_TRIES || Date.now() + pause >= deadline) throw err;
        await this.pause(pause, since);
        continue;
      }
      return this.answeredJob(request.spec, job, timeout);
    }
  }

  // The submitted job; where the daemon dropped the spec's resume_from (one older than the
  // field, which keeps no field it does not know, so its job trains from scratch), or kept it but
  // started from the weights alone where the spec asked for the full resume (its run's param
  // resume_from.mode is not "full": a daemon from before the full resume records none), that job
  // cancelled and an UNIMPLEMENTED TesseraError, as the Python SDK's submit.
  async answeredJob(sent, job, timeout) {
    if (!sent.resume_from) return job;
    if (!(job.spec && job.spec.resume_from)) return this.cancelledFromScratch(job.job_id, 'job', timeout);
    if (sent.resume_weights_only) return job;
    const run = await this.getRun(job.run_id, { timeoutMs: timeout });
    if ((run.params || {})['resume_from.mode'] === 'full') return job;
    return this.cancelledFromScratch(job.job_id, 'job', timeout, true);
  }

  // The submitted sweep, as answeredJob: cancelled where the daemon dropped its base's resume_from.
  async answeredSweep(sent, sweep, timeout) {
    const base = (spec) => (spec && spec.base) || {};
    if (!base(sent).resume_from || base(sweep.spec).resume_from) return sweep;
    return this.cancelledFromScratch(sweep.sweep_id, 'sweep', timeout);
  }

  // Cancels the job or sweep `id` a daemon older than resume_from made without it, then throws
  // UNIMPLEMENTED saying so; where the cancel fails, the error names what it left running and how
  // to cancel it.
  async cancelledFromScratch(id, kind, timeout, weightsAlone = false) {
    const said = weightsAlone
      ? 'this tesserad starts a resume_from job from the checkpoint\'s weights alone, not going on in full ' +
        '(older than the client); upgrade it, or set resume_weights_only = true for that start. '
      : 'this tesserad does not know resume_from (older than the client); upgrade it. ';
    const start = weightsAlone ? 'from the weights alone' : 'from scratch';
    const sweep = kind === 'sweep';
    try {
      if (sweep) await this.cancelSweep(id, { timeoutMs: timeout });
      else await this.cancelJob(id, { timeoutMs: timeout });
    } catch (err) {
      const how = sweep
        ? `client.cancelSweep('${id}'), or tessera sweeps cancel ${id}`
        : `client.cancelJob('${id}'), or tessera jobs cancel ${id}`;
      throw tesseraError(
        'UNIMPLEMENTED',
        `${said}Its ${kind} ${id} trains ${start} and could not be cancelled (${err.message}); cancel it: ${how}`,
      );
    }
    throw tesseraError('UNIMPLEMENTED', `${said}Its ${kind} ${id} would have trained ${start}, and is cancelled`);
  }

  async getJob(jobId, { timeoutMs: timeout } = {}) {
    return this.call(this.training, 'GetJob', { job_id: jobId }, timeout);
  }

  // Jobs, newest first: every one, or those in one of `states` ('queued', 'running', ...), of
  // `experiment`, of sweep `sweepId`; every page (pageSize jobs each; 0: the daemon's default).
  async listJobs({ states = [], experiment = '', sweepId = '', pageSize = 0, timeoutMs: timeout } = {}) {
    const request = {
      states: states.map((state, i) => enumValue('tessera.v1.JobState', state, `states[${i}]`)),
      experiment,
      sweep_id: sweepId,
      page_size: wholeNumber('pageSize', pageSize),
    };
    return this.pages(this.training, 'ListJobs', request, 'jobs', timeout);
  }

  async cancelJob(jobId, { timeoutMs: timeout } = {}) {
    return this.call(this.training, 'CancelJob', { job_id: jobId }, timeout);
  }

  // A job's events (JobEvent: `event` names the one it carries, e.g. event.state) from fromSeq,
  // then live until the job ends, for `for await`. No deadline unless timeoutMs bounds the whole
  // watch. A cut connection (UNAVAILABLE: the daemon restarting, a dead connection the keepalive
  // found) or a watcher too slow for the daemon (RESOURCE_EXHAUSTED) is watched again from the
  // event after the last one given, up to `reconnects` times in a row (default 4: five tries in
  // all, as the Python SDK's, with about 1.5 s of backoff; 0: none), so no event is missed or
  // repeated. Any other failure, or one more, throws a TesseraError. Leaving the loop early ends
  // the call.
  watchJob(jobId, { fromSeq = 1, reconnects = DEFAULT_RECONNECTS, timeoutMs: timeout } = {}) {
    wholeNumber('fromSeq', fromSeq);
    wholeNumber('reconnects', reconnects);
    const ms = timeoutMs(timeout, undefined);
    const deadline = ms === undefined ? undefined : Date.now() + ms;
    return this.resumedEvents(jobId, fromSeq, reconnects, deadline);
  }

  async *resumedEvents(jobId, fromSeq, reconnects, deadline) {
    let nextSeq = fromSeq;
    let failures = 0;
    const since = this.cancellations;
    for (;;) {
      const callOptions = deadline === undefined ? {} : { deadline: new Date(deadline) };
      const stream = this.track(this.training.WatchJob({ job_id: jobId, from_seq: nextSeq }, this.metadata, callOptions));
      try {
        for await (const event of stream) {
          nextSeq = event.seq + 1;
          failures = 0;
          yield event;
        }
        return;
      } catch (err) {
        const error = new TesseraError(err);
        failures += 1;
        const pause = backoffMs(failures);
        const late = deadline !== undefined && Date.now() + pause >= deadline;
        if (!RESUMED_CODES.includes(error.code)) throw error;
        if (failures > reconnects || late) {
          // The first of the failed tries was the watch itself, not a reconnect.
          const why = late ? ': its timeout ends before the next' : '';
          error.message +=
            ` (gave up watching job ${jobId} after ${failures - 1} reconnects, the last failing ` +
            `${error.code}${why}; watch again with fromSeq ${nextSeq})`;
          throw error;
        }
        await this.pause(pause, since);
      } finally {
        stream.cancel();
      }
    }
  }

  // Tracking: experiments hold runs; a run holds params (fixed once logged), tags and metric
  // points (key, value, step). Param and tag values are sent as text.
  async createExperiment(name, { description = '', tags, timeoutMs: timeout } = {}) {
    const request = { name, description, tags: asText(tags, 'tags') };
    return this.call(this.training, 'CreateExperiment', request, timeout);
  }

  async getExperiment(name, { timeoutMs: timeout } = {}) {
    return this.call(this.training, 'GetExperiment', { name }, timeout);
  }

  // view: 'active_only' (default), 'deleted_only' or 'all'.
  async listExperiments(namePrefix = '', { view = 'active_only', timeoutMs: timeout } = {}) {
    const request = { name_prefix: namePrefix, view: enumValue('tessera.v1.LifecycleView', view, 'view') };
    return this.pages(this.training, 'ListExperiments', request, 'experiments', timeout);
  }

  // A run for a process outside the daemon (a service logging online metrics, a script);
  // end it with updateRun(runId, { status }). Resolves to the Run; run.run_id names it.
  // parentRunId (or the tag mlflow.parentRunId) nests it under a run of the same experiment, as
  // MLflow's nested runs (the tag says so too). An experiment that does not exist is refused
  // NOT_FOUND, naming a close existing one (a misspelt name makes no new experiment), as the
  // Python SDK's create_run and MLflow's; createExperiment: true creates it instead.
  async createRun(experiment, { name = '', params, tags, parentRunId = '', createExperiment = false, timeoutMs: timeout } = {}) {
    if (typeof createExperiment !== 'boolean') {
      throw new TypeError(`createExperiment: give true or false, not ${typeof createExperiment}`);
    }
    const request = {
      experiment,
      name,
      params: asText(params),
      tags: asText(tags, 'tags'),
      parent_run_id: parentRunId,
      // Always sent: left unset, the daemon creates a missing experiment (as before the field).
      create_experiment: createExperiment,
    };
    return this.call(this.training, 'CreateRun', request, timeout);
  }

  // A run for the length of `body`, as the Python SDK's start_run in a `with` block: the run is
  // created (options as createRun's), or with runId the ended run reopened (its status back to
  // running, as MLflow's start_run(run_id)); then body(run) is awaited and the run ended
  // SUCCEEDED, or FAILED where body throws (its error goes on, with why the run could not be
  // ended added to its message where that failed too). Resolves to what body resolves to.
  //   const loss = await client.withRun('mnist', { params: { lr: 0.01 } }, async (run) => { ... });
  // A process that exits before body settles leaves the run running (end it with updateRun).
  async withRun(experiment, options, body) {
    if (body === undefined && typeof options === 'function') [options, body] = [{}, options];
    if (typeof body !== 'function') {
      throw new TypeError('withRun(experiment, options, body): give body as a function, e.g. async (run) => { ... }');
    }
    const { runId, timeoutMs: timeout, ...create } = options ?? {};
    let run;
    if (runId !== undefined) {
      if (experiment || Object.values(create).some((value) => value !== undefined && value !== '' && value !== false)) {
        throw new RangeError(
          'withRun with runId reopens a run as it is: leave experiment, name, params, tags, parentRunId and ' +
            "createExperiment out (logParams and updateRun's setTags add to it)",
        );
      }
      run = await this.updateRun(runId, { status: 'running', timeoutMs: timeout });
    } else {
      if (!experiment) throw new RangeError('withRun needs an experiment (or runId in options to reopen a run)');
      run = await this.createRun(experiment, { ...create, timeoutMs: timeout });
    }
    let result;
    try {
      result = await body(run);
    } catch (error) {
      try {
        await this.updateRun(run.run_id, { status: 'failed', timeoutMs: timeout });
      } catch (ending) {
        // The body's own error goes on; why the run could not be ended rides along where the
        // error takes it (a DOMException's or a frozen error's message cannot be written).
        const note = `run ${run.run_id} could not be ended failed: ${ending?.message ?? ending}`;
        try {
          if (error instanceof Error) error.message += ` (${note})`;
          else process.emitWarning(note);
        } catch {
          process.emitWarning(note);
        }
      }
      throw error;
    }
    await this.updateRun(run.run_id, { status: 'succeeded', timeoutMs: timeout });
    return result;
  }

  // status: 'succeeded', 'failed' or 'cancelled' ends the run; setTags and removeTags change its
  // tags (a removed key that is not there is no error).
  async updateRun(runId, { status, setTags, removeTags = [], timeoutMs: timeout } = {}) {
    const request = { run_id: runId, set_tags: asText(setTags, 'setTags'), remove_tags: removeTags };
    if (status !== undefined) request.status = enumValue('tessera.v1.RunStatus', status, 'status');
    return this.call(this.training, 'UpdateRun', request, timeout);
  }

  // A run with its params, tags and metric summaries (run.metrics: key, last, min, max, count).
  async getRun(runId, { timeoutMs: timeout } = {}) {
    return this.call(this.training, 'GetRun', { run_id: runId }, timeout);
  }

  // Every metric summary of a run in key order, following page tokens: those getRun leaves out
  // past its first 2,000 keys (run.metrics_left_out) too.
  async listRunMetrics(runId, { pageSize = 0, timeoutMs: timeout } = {}) {
    const request = { run_id: runId, page_size: pageSize };
    return this.pages(this.training, 'ListRunMetrics', request, 'metrics', timeout);
  }

  // Runs matching every filter given, newest first, or by orderBy; every page. statuses:
  // ['running', ...]; params, tags: { key: value }; metrics: [{ key, op ('lt', 'le', 'gt', 'ge',
  // 'eq', 'ne'), value, field ('last' (default), 'min', 'max') }]; filter: MLflow's search string
  // in place of the option of each kind it uses, e.g. "metrics.val_acc > 0.9 and params.lr =
  // '0.01'" (run_filter.js; parseRunFilter shows what it reads); orderBy: a metric's key, with
  // orderField and descending (undefined: the metric's own direction, lowest loss first), or
  // MLflow's order string of one key or more, 'metrics.val_loss DESC, start_time' (without ASC or
  // DESC: ascending, as MLflow's), or an array of them; view as listExperiments'. A filter or
  // order that cannot be read throws RunFilterError (a RangeError) naming the column.
  async listRuns(experiment = '', options = {}) {
    const request = listRunsRequest(experiment, options);
    return this.pages(this.training, 'ListRuns', request, 'runs', options.timeoutMs);
  }

  // Params and metrics of two or more runs side by side: { runs, params: [{ key, values,
  // present, differs }], metrics: [{ key, values (last values), present }], metrics_left_out },
  // each list's values in the order of runIds; metrics holds the first 2,000 keys of the runs
  // together and metrics_left_out counts the rest (listRunMetrics lists each run's).
  async compareRuns(runIds, { timeoutMs: timeout } = {}) {
    return this.call(this.training, 'CompareRuns', { run_ids: runIds }, timeout);
  }

  // An experiment's runs ranked by `metric`: mode 'min' or 'max' is better (undefined: by the
  // metric's name, min for a loss or error), by its summary's field ('last', 'min' or 'max';
  // undefined: the one mode names); the best `limit` (default 10). Resolves to the entries,
  // each { rank, run, value }.
  async leaderboard(experiment, metric, { mode, field, limit = 10, timeoutMs: timeout } = {}) {
    const request = { experiment, metric, limit: wholeNumber('limit', limit) };
    if (mode !== undefined) request.mode = enumValue('tessera.v1.OptimizeMode', mode, 'mode');
    if (field !== undefined) request.field = enumValue('tessera.v1.SummaryField', field, 'field');
    const response = await this.call(this.training, 'Leaderboard', request, timeout);
    return response.entries;
  }

  // A logged param cannot change value; logging it again with its value changes nothing.
  async logParams(runId, params, { timeoutMs: timeout } = {}) {
    await this.call(this.training, 'LogParams', { run_id: runId, params: asText(params) }, timeout);
  }

  // metrics: { key: number } (NaN and Infinity are stored, as MLflow stores them) at one step (a
  // whole number >= 0: a request count, a time bucket; undefined: each key's point at the step
  // after the highest its run holds, as the Python SDK's log_metrics without a step);
  // time: a Date for the points (default: the daemon's clock). Resolves to the points accepted.
  // A run keeps one point per key and step, the newest: sending a point again changes nothing, and
  // a new value at a logged key and step replaces the one there, with a process warning of type
  // MetricPointsReplaced (once per call; process.on('warning') sees it), as the Python SDK warns.
  async logMetrics(runId, metrics, step, { time, timeoutMs: timeout } = {}) {
    if (step !== undefined) wholeNumber('step', step);
    const stamp = time === undefined ? undefined : timestamp(time);
    const points = Object.entries(metrics).map(([key, value]) => ({
      key,
      value: metricValue(key, value),
      ...(step === undefined ? { next_step: true } : { step }),
      ...(stamp && { time: stamp }),
    }));
    const response = await this.call(this.training, 'LogMetrics', { run_id: runId, points }, timeout);
    warnReplaced(response);
    return response.accepted;
  }

  // One metric's points from startStep to endStep (inclusive; undefined: to the last step), in
  // step order, downsampled by the daemon to maxPoints (0: every point; else 4 or more). The
  // daemon's pages (pageSize points each; 0: its default, 10,000) are joined, each a call of its
  // own: { run_id, key, points: [{ key, value, step, time }], total_points, downsampled }.
  async metricHistory(runId, key, { maxPoints = 0, startStep = 0, endStep, pageSize = 0, timeoutMs: timeout } = {}) {
    const request = {
      run_id: runId,
      key,
      max_points: wholeNumber('maxPoints', maxPoints),
      start_step: wholeNumber('startStep', startStep),
      page_size: wholeNumber('pageSize', pageSize),
    };
    if (endStep !== undefined) request.end_step = wholeNumber('endStep', endStep);
    let history;
    let pageToken = '';
    do {
      const page = await this.call(this.training, 'GetMetricHistory', { ...request, page_token: pageToken }, timeout);
      if (history === undefined) history = page;
      else history.points.push(...page.points);
      pageToken = page.next_page_token;
    } while (pageToken);
    delete history.next_page_token;
    return history;
  }

  // Soft deletes, as MLflow's: a deleted experiment (with its runs) or run is hidden from lists
  // and refuses new runs, params and metrics, and keeps its data until restored. Each resolves to
  // the Experiment or Run; a repeat changes nothing.
  async deleteExperiment(name, { timeoutMs: timeout } = {}) {
    return this.call(this.training, 'DeleteExperiment', { name }, timeout);
  }

  // Brings back the experiment and the runs its deletion deleted (not those deleted one by one).
  async restoreExperiment(name, { timeoutMs: timeout } = {}) {
    return this.call(this.training, 'RestoreExperiment', { name }, timeout);
  }

  async deleteRun(runId, { timeoutMs: timeout } = {}) {
    return this.call(this.training, 'DeleteRun', { run_id: runId }, timeout);
  }

  // FAILED_PRECONDITION while the run's experiment is deleted (restoreExperiment restores both).
  async restoreRun(runId, { timeoutMs: timeout } = {}) {
    return this.call(this.training, 'RestoreRun', { run_id: runId }, timeout);
  }

  // Many steps' metrics over LogMetricsStream: `steps` yields [step, { key: number }] in order
  // (an array, a generator or an async generator), sent in batches of batchPoints points (at most
  // MAX_BATCH_POINTS, the daemon's limit for one batch).
  // Resolves to the points accepted. The daemon stores a stream's batches in order, each whole or
  // not at all, and when one fails answers how many before it are stored (none after them). A
  // stream cut UNAVAILABLE (the connection lost, the daemon restarting) is sent again, as the
  // Python SDK's is, from its first batch not known to be stored, up to `reconnects` times in a
  // row (default 4: five tries in all, as the Python SDK's; 0: none) after watchJob's backoff: a
  // cut without the daemon's answer sends again what may be stored, which changes nothing (a run
  // keeps one point per key and step). Any other failure, or one more, throws a TesseraError
  // saying how many points are stored and up to which step (storedPoints, lastStoredStep): resend
  // from there. A step or value refused here (RangeError, TypeError) ends the stream where it is;
  // batches sent before it may be stored. A stream that ends before `steps` do closes them (a
  // generator's `finally` runs; an error it throws then is dropped when the stream failed, whose
  // own error is thrown). timeoutMs bounds each try (default an hour), as the Python SDK's
  // transfer_timeout does: a stream cut late is still sent again, so the caller waits up to
  // reconnects + 1 times timeoutMs.
  async logMetricsStream(runId, steps, { batchPoints = 1000, reconnects = DEFAULT_RECONNECTS, timeoutMs: timeout } = {}) {
    if (!Number.isSafeInteger(batchPoints) || batchPoints < 1 || batchPoints > MAX_BATCH_POINTS) {
      throw new RangeError(`batchPoints must be in 1..${MAX_BATCH_POINTS}, got ${String(batchPoints)}`);
    }
    wholeNumber('reconnects', reconnects);
    const tryMs = timeoutMs(timeout, DEFAULT_TRANSFER_TIMEOUT_MS);
    const batches = new MetricBatches(runId, steps, batchPoints);
    let accepted;
    try {
      accepted = await this.streamBatches(batches, reconnects, tryMs);
    } catch (error) {
      // The stream's failure says what is stored: a `finally` of `steps` that throws as they are
      // closed must not replace it.
      await batches.close().catch(() => {});
      throw error;
    }
    await batches.close();
    return accepted;
  }

  // LogMetricsStream calls sending `batches` until one is answered, or a failure is not sent
  // again; each call within tryMs.
  async streamBatches(batches, reconnects, tryMs) {
    let failures = 0;
    const since = this.cancellations;
    for (;;) {
      const call = clientStream(this, this.training, 'LogMetricsStream', new Date(Date.now() + tryMs));
      try {
        for (const batch of batches.kept) {
          if (call.answered) break;
          await call.send(batch);
        }
        for (;;) {
          if (call.answered) break;
          const batch = await batches.next();
          if (batch === undefined) break;
          await call.send(batch);
        }
      } catch (err) {
        call.stream.cancel();
        throw err;
      }
      call.stream.end();
      try {
        const response = await call.response;
        // Counts the last try's alone, as the Python SDK's: a cut try's answer never comes.
        warnReplaced(response);
        return batches.storedPoints + response.accepted;
      } catch (err) {
        const [stored] = err.metadata.get(STORED_BATCHES);
        const answered = stored !== undefined;
        if (batches.stored(Number(stored || 0))) failures = 0;
        failures += 1;
        if (err.code !== 'UNAVAILABLE') throw streamFailure(err, batches, answered);
        if (failures > reconnects) {
          const resends = reconnects === 1 ? '1 resend' : `${reconnects} resends`;
          const gaveUp = `gave up logging metrics to run ${batches.runId} after ${resends}, the last failing ${err.code}`;
          throw streamFailure(err, batches, answered, gaveUp);
        }
        try {
          await this.pause(backoffMs(failures), since);
        } catch (cancelled) {
          throw streamFailure(cancelled, batches, answered);
        }
      }
    }
  }

  // Run artifacts (MLflow's log_artifact): the file at localPath stored with the run under the
  // directory artifactPath ('plots'; undefined: the top) with the file's own name. Streamed in
  // chunks after a header with its size and sha256, which the daemon checks: an upload cut short
  // stores nothing. Storing to a path again replaces what was there. Resolves to the RunArtifact.
  async uploadArtifact(runId, localPath, { artifactPath, chunkSize = CHUNK_BYTES, timeoutMs: timeout } = {}) {
    if (!Number.isSafeInteger(chunkSize) || chunkSize < 1) {
      throw new RangeError(`chunkSize must be a whole number of bytes >= 1, got ${String(chunkSize)}`);
    }
    const deadline = new Date(Date.now() + timeoutMs(timeout, DEFAULT_TRANSFER_TIMEOUT_MS));
    const name = path.basename(localPath);
    const artifact = artifactPath ? `${artifactPath.replace(/\/$/, '')}/${name}` : name;
    const open = () => clientStream(this, this.training, 'UploadRunArtifact', deadline);
    return uploadFile(open, { run_id: runId, path: artifact }, localPath, chunkSize);
  }

  // A run's artifacts in path order: every one, or those under the directory `path`.
  async listArtifacts(runId, { path: under = '', timeoutMs: timeout } = {}) {
    return this.pages(this.training, 'ListRunArtifacts', { run_id: runId, path: under }, 'artifacts', timeout);
  }

  // The artifact at `artifactPath` written to `dst` (a file; or a directory that exists, or a path
  // ending in '/', to put it in under its own name, made where missing and removed again where the
  // download fails, or is cancelled, leaving it empty; default: the current directory), checked
  // against the header's size and sha256 before it takes the file's place: a download that fails
  // leaves what was there. overwrite: false refuses a file already there (EEXIST) before the call,
  // and one that appeared during it (on a filesystem without hard links, up to the moment before
  // it is renamed into place: see putInPlace). A stream that breaks (UNAVAILABLE: the connection
  // cut, the daemon restarting) is made again, up to `reconnects` times in a row (default 4, as
  // watchJob's), and goes on from the bytes written; one that gives up or runs past timeoutMs
  // (default an hour, for the whole download) keeps them in a hidden partial file beside the
  // file, with a record of the artifact's sha256 (as the Python SDK's, which goes on from them
  // too), as does one with resume: true that cancelCalls stops (one without leaves nothing).
  // resume: true goes on from them where the artifact still has that sha256 (an Error where
  // it was stored again since, leaving them as they are); without it the download starts again
  // from the first byte. progress(done, total) hears of the bytes written; chunkSize: bytes per
  // chunk (0: the daemon's default; at most 4 MiB).
  // Resolves to { artifact (the RunArtifact), file (where it was written) }.
  async downloadArtifact(
    runId,
    artifactPath,
    dst = '.',
    { overwrite = true, resume = false, progress, chunkSize = 0, reconnects = DEFAULT_RECONNECTS, timeoutMs: timeout } = {},
  ) {
    wholeNumber('reconnects', reconnects);
    const chunk = chunkBytes(chunkSize);
    const deadline = Date.now() + timeoutMs(timeout, DEFAULT_TRANSFER_TIMEOUT_MS);
    const made = dst.endsWith('/') ? makeDirectories(dst) : [];
    try {
      const isDir = fs.existsSync(dst) && fs.statSync(dst).isDirectory();
      const file = isDir ? path.join(dst, path.posix.basename(artifactPath)) : dst;
      const describe = (artifact) => `artifact ${artifact.path} of run ${artifact.run_id}`;
      const sink = await PartialDownload.open(file, { overwrite, resume, describe, progress });
      const artifact = await this.resumingDownload(sink, {
        stub: this.training,
        method: 'DownloadRunArtifact',
        request: (_header, offset) => ({ run_id: runId, path: artifactPath, chunk_size: chunk, offset }),
        resolve: (ms) => this.artifactAt(runId, artifactPath, ms),
        reconnects,
        deadline,
        doing: `downloading artifact ${artifactPath} of run ${runId}`,
      });
      return { artifact, file };
    } catch (err) {
      removeEmptyDirectories(made);
      throw err;
    }
  }

  // The RunArtifact at `artifactPath` (NOT_FOUND where there is none), without downloading it.
  async artifactAt(runId, artifactPath, ms) {
    const request = { run_id: runId, path: artifactPath, page_size: 1 };
    const [first] = (await this.call(this.training, 'ListRunArtifacts', request, ms)).artifacts;
    if (first === undefined || first.path !== artifactPath) {
      throw tesseraError(
        'NOT_FOUND',
        `run ${pythonRepr(runId)} has no artifact at ${pythonRepr(artifactPath)}; listArtifacts lists them`,
      );
    }
    return first;
  }

  // A model version's artifact (version or alias; default the latest) written to the file `file`,
  // checked, reconnected, kept and resumed as downloadArtifact's are: a reconnect asks for the
  // version the first stream sent (an alias may have moved meanwhile), and resume: true goes on
  // from the bytes kept where the version asked for has the artifact they are of. Resolves to
  // { version (the ModelVersion), file }.
  async downloadVersion(
    model,
    file,
    {
      version,
      alias,
      overwrite = true,
      resume = false,
      progress,
      chunkSize = 0,
      reconnects = DEFAULT_RECONNECTS,
      timeoutMs: timeout,
    } = {},
  ) {
    wholeNumber('reconnects', reconnects);
    const chunk = chunkBytes(chunkSize);
    const asked = versionRef(model, version, alias);
    const deadline = Date.now() + timeoutMs(timeout, DEFAULT_TRANSFER_TIMEOUT_MS);
    const describe = (found) => `${found.model} v${found.version}`;
    const sink = await PartialDownload.open(file, { overwrite, resume, describe, progress });
    // Named as the Python SDK names it, an alias as the version asked for.
    let named = '';
    if (version !== undefined) named = ` version ${version}`;
    else if (alias !== undefined) named = ` version ${alias}`;
    const found = await this.resumingDownload(sink, {
      stub: this.registry,
      method: 'DownloadVersion',
      request: (header, offset) => ({
        ref: header === undefined ? asked : { model: header.model, version: header.version },
        chunk_size: chunk,
        offset,
      }),
      resolve: (ms) => this.call(this.registry, 'GetVersion', { ref: asked }, ms),
      reconnects,
      deadline,
      doing: `downloading ${model}${named}`,
    });
    return { version: found, file };
  }

  // A download into `sink` (a PartialDownload) over `method` of `stub`, each stream asking
  // request(header, offset) for the rest of the file (header: undefined for the first stream,
  // then the first stream's, so that a reconnect gets the same file), made again after
  // UNAVAILABLE up to `reconnects` times in a row, all by `deadline` (ms since the epoch). Where
  // the sink holds bytes of an earlier download, resolve(ms) says first what file was named, for
  // the sink to check them against. `doing` names the download in messages. Resolves to the
  // header.
  async resumingDownload(sink, { stub, method, request, resolve, reconnects, deadline, doing }) {
    const since = this.cancellations;
    let failures = 0;
    try {
      if (sink.resuming()) {
        await sink.start(await resolve(this.remainingMs(deadline, doing, sink)));
        // The bytes kept may be all there is: no chunk would report them.
        sink.progressed();
      }
      for (;;) {
        // A cancelCalls that found no call in flight (it landed as the kept bytes were copied)
        // stops the download all the same, before it sends another.
        if (since !== this.cancellations) {
          throw new TesseraError({ code: grpc.status.CANCELLED, details: 'Cancelled on client' });
        }
        const remaining = this.remainingMs(deadline, doing, sink);
        const askedFrom = sink.offset();
        const options = { deadline: new Date(Date.now() + remaining) };
        const stream = this.track(stub[method](request(sink.header, askedFrom), this.metadata, options));
        try {
          for await (const message of stream) {
            if (message.part === 'header') {
              await sink.start(message.header);
            } else {
              await sink.write(message.chunk);
              sink.progressed();
              failures = 0;
            }
          }
          break;
        } catch (err) {
          // The call's failures carry a gRPC status code (a number); the file's and the sink's
          // refusals are thrown as they are.
          if (typeof err.code !== 'number') throw err;
          const error = new TesseraError(err);
          if (error.code === 'OUT_OF_RANGE' && askedFrom) {
            // Bytes the file had when they were written are past its end now: it was stored again.
            throw sink.changed(`it now ends before byte ${askedFrom}`);
          }
          if (error.code === 'DEADLINE_EXCEEDED') {
            error.message += ` (${doing}; ${sink.howToGoOn()})`;
            throw error;
          }
          if (error.code !== 'UNAVAILABLE') throw error;
          failures += 1;
          const pause = backoffMs(failures);
          const late = Date.now() + pause >= deadline;
          if (failures > reconnects || late) {
            // The first of the failed tries was the stream itself, not a reconnect.
            const why = late ? ': its timeout ends before the next' : '';
            error.message +=
              ` (gave up ${doing} after ${failures - 1} reconnects, the last failing ` +
              `${error.code}${why}; ${sink.howToGoOn()})`;
            throw error;
          }
          await this.pause(pause, since);
        } finally {
          stream.cancel();
        }
      }
    } catch (error) {
      await sink.abort(error);
      throw error;
    }
    return sink.finish();
  }

  // Milliseconds left before `deadline`; DEADLINE_EXCEEDED, saying what was kept, once none are.
  remainingMs(deadline, doing, sink) {
    const remaining = deadline - Date.now();
    if (remaining <= 0) throw tesseraError('DEADLINE_EXCEEDED', `${doing} ran past its timeout; ${sink.howToGoOn()}`);
    return remaining;
  }

  // Hyperparameter sweeps: many jobs from one base spec. spec: a SweepSpec
  // (protos/tessera/v1/training.proto) with its field names, enum values by their full or short
  // names ('SWEEP_STRATEGY_GRID' or 'grid'), checked as submitJob's. Resolves to the Sweep.
  // A daemon older than the base's resume_from drops it, and its trials would train from scratch:
  // the sweep is cancelled and the submit fails UNIMPLEMENTED (answeredSweep).
  async submitSweep(spec, { timeoutMs: timeout } = {}) {
    const request = checkedRequest(this.training.SubmitSweep, { spec });
    const sweep = await this.call(this.training, 'SubmitSweep', request, timeout);
    return this.answeredSweep(request.spec, sweep, timeout);
  }

  // A sweep with its trials (each trial's job_id, params, state and metric) and best_job_id.
  async getSweep(sweepId, { timeoutMs: timeout } = {}) {
    return this.call(this.training, 'GetSweep', { sweep_id: sweepId }, timeout);
  }

  // Every sweep, following page tokens.
  async listSweeps({ timeoutMs: timeout } = {}) {
    return this.pages(this.training, 'ListSweeps', {}, 'sweeps', timeout);
  }

  // Stores the sweep CANCELLED, then cancels its trials' jobs; a trial whose job could not be
  // cancelled is named in the TesseraError, though the sweep is CANCELLED (getSweep shows it).
  async cancelSweep(sweepId, { timeoutMs: timeout } = {}) {
    return this.call(this.training, 'CancelSweep', { sweep_id: sweepId }, timeout);
  }

  // Deletes a model with its versions; force: even when aliases or a deployment point into it
  // (they go too). Resolves to the number of versions deleted. There is no restore.
  async deleteModel(name, { force = false, timeoutMs: timeout } = {}) {
    const response = await this.call(this.registry, 'DeleteModel', { name, force }, timeout);
    return response.deleted_versions;
  }

  // Deletes one version of a model (FAILED_PRECONDITION while an alias points at it).
  async deleteVersion(model, version, { timeoutMs: timeout } = {}) {
    await this.call(this.registry, 'DeleteVersion', { model, version: wholeNumber('version', version) }, timeout);
  }

  // Routes the Predict calls that name no version or alias: routes, an array of { version,
  // weight } or { alias, weight } (percents, 1..100, summing to 100); shadow: { version } or
  // { alias } with percent (1..100, default 100), the share of the requests other versions answer
  // copied to it; expectedRevision: deploy only if the model's newest deployment revision is this
  // one (0: never deployed), else FAILED_PRECONDITION with nothing changed, so that a deploy made
  // meanwhile is not undone. Resolves to the Deployment.
  async deploy(model, routes, { shadow, comment = '', expectedRevision, timeoutMs: timeout } = {}) {
    if (!Array.isArray(routes)) {
      throw new TypeError('routes: give an array of { version, weight } or { alias, weight }');
    }
    routes.forEach((route, i) => int32(`routes[${i}].weight`, route.weight));
    if (shadow !== undefined && shadow.percent !== undefined) int32('shadow.percent', shadow.percent);
    const request = { model, routes, shadow, comment };
    if (expectedRevision !== undefined) request.expected_revision = wholeNumber('expectedRevision', expectedRevision);
    return this.call(this.registry, 'Deploy', checkedRequest(this.registry.Deploy, request), timeout);
  }

  // Restores the deployment before the current one, as a new revision; rolling back the first
  // leaves none (the Deployment resolved to has `undeployed` set). expectedRevision: only if the
  // model's newest deployment revision is this one, else FAILED_PRECONDITION: two callers rolling
  // back one bad revision at once then restore one revision, not two.
  async rollback(model, { expectedRevision, timeoutMs: timeout } = {}) {
    const request = { model };
    if (expectedRevision !== undefined) request.expected_revision = wholeNumber('expectedRevision', expectedRevision);
    return this.call(this.registry, 'Rollback', request, timeout);
  }

  // The model's current deployment (NOT_FOUND when it has none).
  async getDeployment(model, { timeoutMs: timeout } = {}) {
    return this.call(this.registry, 'GetDeployment', { model }, timeout);
  }

  // The model's deployment history, newest first (the first is the current one), following page
  // tokens.
  async listDeployments(model, { pageSize = 0, timeoutMs: timeout } = {}) {
    const request = { model, page_size: wholeNumber('pageSize', pageSize) };
    return this.pages(this.registry, 'ListDeployments', request, 'deployments', timeout);
  }

  // Points `alias` at `version`; expectedVersion: only if it points there now (0: only if it does
  // not exist yet), else FAILED_PRECONDITION. Resolves to the Alias.
  async setAlias(model, alias, version, { expectedVersion, timeoutMs: timeout } = {}) {
    const request = { model, alias, version: wholeNumber('version', version) };
    if (expectedVersion !== undefined) request.expected_version = wholeNumber('expectedVersion', expectedVersion);
    return this.call(this.registry, 'SetAlias', request, timeout);
  }

  // Deletes an alias (FAILED_PRECONDITION while the deployment routes through it).
  async deleteAlias(model, alias, { timeoutMs: timeout } = {}) {
    await this.call(this.registry, 'DeleteAlias', { model, alias }, timeout);
  }

  // Datasets: versioned .npz or .npy arrays that training jobs read. Uploads the file at `file`
  // as the next version of dataset `name`, streamed in chunks after a header with its size and
  // sha256, which the daemon checks. splits: { name: fraction } (summing to 1, cut at random
  // from seed) or { name: [sample indices] } (default: one split train of every sample);
  // arrayName: a .npy's array name (default x); allowNonfinite: accept NaN and Inf; description,
  // tags ({ key: value }). A push the newest version matches in bytes, splits, flags, description
  // and tags adds none and answers that one (existing_version set). Resolves to the
  // DatasetVersion.
  async pushDataset(
    name,
    file,
    {
      splits,
      seed = 0,
      arrayName = '',
      allowNonfinite = false,
      description = '',
      tags,
      chunkSize = CHUNK_BYTES,
      timeoutMs: timeout,
    } = {},
  ) {
    if (!Number.isSafeInteger(chunkSize) || chunkSize < 1) {
      throw new RangeError(`chunkSize must be a whole number of bytes >= 1, got ${String(chunkSize)}`);
    }
    const format = DATASET_FORMATS[path.extname(file).toLowerCase()];
    if (format === undefined) throw new RangeError(`${file}: datasets are .npz or .npy files`);
    const deadline = new Date(Date.now() + timeoutMs(timeout, DEFAULT_TRANSFER_TIMEOUT_MS));
    const header = {
      name,
      format,
      allow_nonfinite: allowNonfinite,
      array_name: arrayName,
      description,
      tags: asText(tags, 'tags'),
      splits: splitSpec(splits, wholeNumber('seed', seed)),
    };
    const open = () => clientStream(this, this.datasets, 'UploadDataset', deadline);
    return uploadFile(open, header, file, chunkSize);
  }

  // Every dataset (whose name starts with namePrefix), following page tokens.
  async listDatasets(namePrefix = '', { timeoutMs: timeout } = {}) {
    return this.pages(this.datasets, 'ListDatasets', { name_prefix: namePrefix }, 'datasets', timeout);
  }

  // One version of a dataset, 'name' for its newest or 'name:3': arrays with their statistics,
  // splits.
  async getDatasetVersion(ref, { timeoutMs: timeout } = {}) {
    return this.call(this.datasets, 'GetDatasetVersion', { ref: datasetRef(ref) }, timeout);
  }

  // Serving. Loads and warms up a version (version or alias; default the latest) with config, a
  // ServingConfig with its field names ({ runtime: 'onnx', device: 'cpu', max_batch_size: 8,
  // ... }): a field left out takes the version's saved config, else the daemon's default. Loading
  // a loaded version again swaps in the new config without dropping requests. saveConfig: also
  // store config as the version's saved config (LoadModel save_config, `tessera load --save`), in
  // place of the one saved before ({} removes it); the load then runs with config alone. Resolves
  // to the LoadedModel.
  async loadModel(model, { version, alias, config = {}, saveConfig = false, timeoutMs: timeout } = {}) {
    const request = checkedRequest(this.inference.LoadModel, {
      target: versionRef(model, version, alias),
      config,
      save_config: saveConfig,
    });
    return this.call(this.inference, 'LoadModel', request, timeout ?? Math.max(this.timeoutMs, MODEL_CALL_TIMEOUT_MS));
  }

  // Stops serving a version (every loaded version of the model when neither version nor alias
  // is given): it takes no new requests, finishes those queued, and is freed. Resolves to the
  // LoadedModels unloaded.
  async unloadModel(model, { version, alias, timeoutMs: timeout } = {}) {
    const request = { target: versionRef(model, version, alias) };
    const response = await this.call(
      this.inference,
      'UnloadModel',
      request,
      timeout ?? Math.max(this.timeoutMs, UNLOAD_TIMEOUT_MS),
    );
    return response.unloaded;
  }

  // The loaded versions (of `model`, or of every model), with their state and config.
  async listLoaded(model = '', { timeoutMs: timeout } = {}) {
    const response = await this.call(this.inference, 'ListLoaded', { model }, timeout);
    return response.models;
  }

  close() {
    this.registry.close();
  }
}

const DATASET_FORMATS = { '.npz': 'DATASET_FORMAT_NPZ', '.npy': 'DATASET_FORMAT_NPY' };

// A SplitSpec from { name: fraction } or { name: [indices] }; undefined for none.
function splitSpec(splits, seed) {
  if (splits === undefined || !Object.keys(splits).length) return undefined;
  const entries = Object.entries(splits);
  const fractions = entries.filter(([, value]) => typeof value === 'number');
  if (fractions.length === entries.length) {
    return { fractions: { splits: fractions.map(([name, fraction]) => ({ name, fraction })), seed } };
  }
  if (fractions.length) {
    throw new RangeError('splits: give every split a fraction or every split its indices, not both');
  }
  return {
    indices: {
      splits: entries.map(([name, indices]) => {
        if (!Array.isArray(indices)) {
          throw new TypeError(`splits.${name}: give a fraction or an array of sample indices`);
        }
        return { name, indices: indices.map((index, i) => wholeNumber(`splits.${name}[${i}]`, index)) };
      }),
    },
  };
}

// A DatasetRef from 'name' (its newest version) or 'name:version', as the Python SDK reads one.
function datasetRef(ref) {
  const at = ref.indexOf(':');
  const [name, version] = at < 0 ? [ref, ''] : [ref.slice(0, at), ref.slice(at + 1)];
  if (version && !/^[0-9]+$/.test(version)) {
    throw new RangeError(`dataset ${pythonRepr(ref)}: write name or name:version with a whole version number`);
  }
  return { name, version: version ? Number(version) : 0 };
}

// A VersionRef: the version number or the alias given (not both), else none (the latest, or for
// an unload every loaded version).
function versionRef(model, version, alias) {
  if (version !== undefined && alias !== undefined) {
    throw new RangeError('give version or alias, not both');
  }
  if (version !== undefined) return { model, version: wholeNumber('version', version) };
  return alias === undefined ? { model } : { model, alias };
}

// The ListRuns request listRuns sends (without its page token): the same as the Python SDK's
// runs() sends for the same filter and order strings.
function listRunsRequest(
  experiment = '',
  { statuses = [], params, tags, metrics = [], filter = '', orderBy, orderField, descending, view = 'active_only', pageSize = 0 } = {},
) {
  const given = { statuses, params: asText(params), tags: asText(tags, 'tags'), metrics, texts: [], times: [] };
  if (filter) withFilter(given, runFilter.parseFilter(filter));
  const request = {
    experiment,
    statuses: given.statuses.map((status, i) => enumValue('tessera.v1.RunStatus', status, `statuses[${i}]`)),
    params: Object.entries(given.params).map(([key, value]) => ({ key, value })),
    tags: Object.entries(given.tags).map(([key, value]) => ({ key, value })),
    metrics: given.metrics.map(({ key, op, value, field = 'last' }, i) => ({
      key,
      op: enumValue('tessera.v1.Comparison', op, `metrics[${i}].op`),
      value: metricValue(key, value),
      field: enumValue('tessera.v1.SummaryField', field, `metrics[${i}].field`),
    })),
    texts: given.texts.map(({ entity, key, match, values }, i) => ({
      entity: enumValue('tessera.v1.TextEntity', entity, `texts[${i}].entity`),
      key,
      match: enumValue('tessera.v1.TextMatch', match, `texts[${i}].match`),
      values,
    })),
    times: given.times.map(({ attribute, op, value_ms }, i) => ({
      attribute,
      op: enumValue('tessera.v1.Comparison', op, `times[${i}].op`),
      value_ms,
    })),
    view: enumValue('tessera.v1.LifecycleView', view, 'view'),
    page_size: wholeNumber('pageSize', pageSize),
  };
  const { order, orderKeys } = runOrder(orderBy, orderField, descending);
  if (order !== undefined) request.order_by = order;
  if (orderKeys.length) request.order_keys = orderKeys;
  return request;
}

// A filter string's conditions (parseFilter's) added to listRuns' options `given`; refused where
// an option of the same kind is given too, as it is not said whether both should hold.
function withFilter(given, found) {
  const kinds = [
    ['attributes.status', 'statuses', found.statuses.length, given.statuses.length],
    ['params', 'params', Object.keys(found.params).length, Object.keys(given.params).length],
    ['tags', 'tags', Object.keys(found.tags).length, Object.keys(given.tags).length],
    ['metrics', 'metrics', found.metrics.length, given.metrics.length],
  ];
  for (const [written, option, inFilter, inOption] of kinds) {
    if (inFilter && inOption) {
      throw new RangeError(`${written} is filtered twice, in filter and in ${option}; give the conditions in one of them`);
    }
  }
  Object.assign(given, Object.fromEntries(kinds.filter(([, , inFilter]) => inFilter).map(([, option]) => [option, found[option]])));
  // Conditions no option gives: LIKE, IN, != and the like, and run names, ids and times.
  given.texts.push(...found.texts);
  given.times.push(...found.times);
}

// ListRuns' order from a metric's name or MLflow's order strings, and the field and direction
// given beside it, as the Python SDK's: { order } (order_by) for one metric, as ListRuns has long
// taken it, else { orderKeys } (order_keys). Refused where both say the same thing, or where
// either is given without one metric to apply to. Without a direction a metric's name takes the
// metric's own (the daemon's default), an order string ascending, as MLflow's search_runs does.
function runOrder(orderBy = '', orderField, descending) {
  const orders = typeof orderBy === 'string' ? [orderBy] : [...orderBy];
  const named = orders.length === 1 && !runFilter.isOrderString(orders[0]);
  let keys;
  if (named) keys = orders[0] ? [{ entity: 'metrics', key: orders[0] }] : [];
  else keys = runFilter.parseOrders(orders);
  if (keys.length !== 1 || keys[0].entity !== 'metrics') {
    for (const [name, value] of [['descending', descending], ['orderField', orderField]]) {
      if (value !== undefined) {
        if (!keys.length) throw new RangeError(`${name} applies to the metric orderBy names: give orderBy too`);
        throw new RangeError(`${name} applies to an orderBy of one metric: write ASC or DESC after each key in orderBy`);
      }
    }
    return { orderKeys: keys.map(orderKeyMessage) };
  }
  const [parsed] = keys;
  const shown = JSON.stringify(orders[0]);
  if (parsed.descending !== undefined && descending !== undefined) {
    throw new RangeError(`orderBy ${shown} gives its direction: leave out descending`);
  }
  if (parsed.field !== undefined && orderField !== undefined) {
    throw new RangeError(`orderBy ${shown} names the summary field: leave out orderField`);
  }
  const field = parsed.field ?? orderField;
  const order = {
    metric: parsed.key,
    field: field === undefined ? 'SUMMARY_FIELD_UNSPECIFIED' : enumValue('tessera.v1.SummaryField', field, 'orderField'),
  };
  const down = parsed.descending ?? descending ?? (named ? undefined : false);
  if (down !== undefined) order.direction = down ? 'SORT_DIRECTION_DESCENDING' : 'SORT_DIRECTION_ASCENDING';
  return { order, orderKeys: [] };
}

// One key of parseOrderKeys as ListRunsRequest.order_keys' RunOrder: ascending unless DESC was
// written.
function orderKeyMessage({ entity, key, field, descending }) {
  return {
    [{ metrics: 'metric', params: 'param', attributes: 'attribute' }[entity]]: key,
    field: field === undefined ? 'SUMMARY_FIELD_UNSPECIFIED' : enumValue('tessera.v1.SummaryField', field, 'field'),
    direction: descending ? 'SORT_DIRECTION_DESCENDING' : 'SORT_DIRECTION_ASCENDING',
  };
}

// A watch is resumed after these, as the Python SDK's: a cut connection, a watcher too slow.
const RESUMED_CODES = ['UNAVAILABLE', 'RESOURCE_EXHAUSTED'];
// Five tries in all, as the Python SDK's RetryPolicy.attempts (5) for its watch and metric stream.
const DEFAULT_RECONNECTS = 4;
// The daemon refuses a LogMetrics request or stream batch of more points, as the Python SDK's
// MAX_BATCH_POINTS says.
const MAX_BATCH_POINTS = 10000;

// The Python SDK's RetryPolicy backoff: 100 ms doubling to 2 s at most, with full jitter, which
// spreads reconnecting clients apart after a daemon restart.
function backoffMs(failure) {
  const ceiling = Math.min(2000, 100 * 2 ** (failure - 1));
  return ceiling / 2 + Math.random() * (ceiling / 2);
}

// `request` as the daemon will read it, refused (RangeError) where proto-loader would drop a field
// or send an enum value as unspecified: see `checked`.
function checkedRequest(method, request) {
  const { requestSerialize, requestDeserialize } = method;
  return checked(request, requestDeserialize(requestSerialize(request)), '');
}

// `given` with its enum values by their full names, checked against `echoed` (what proto-loader
// makes of it): proto-loader drops a field the message does not have and sends an enum name it
// does not know as 0 (unspecified), both without a word, so a misspelt field or value would
// train something else than asked.
function checked(given, echoed, path) {
  if (Array.isArray(given)) return given.map((value, i) => checked(value, echoed[i], `${path}[${i}]`));
  if (typeof given === 'string' && typeof echoed === 'string' && given !== echoed) {
    return enumName(given, echoed, path);
  }
  if (given === null || typeof given !== 'object' || Buffer.isBuffer(given)) return given;
  const result = {};
  for (const [key, value] of Object.entries(given)) {
    const name = path ? `${path}.${key}` : key;
    if (value === undefined) continue;
    if (echoed === null || typeof echoed !== 'object' || !(key in echoed)) {
      throw new RangeError(`${name} is not a field of this message; see protos/tessera/v1/`);
    }
    result[key] = checked(value, echoed[key], name);
  }
  return result;
}

// The full name of enum value `given`, its field sent as `unspecified` (the enum's 0 value).
function enumName(given, unspecified, path) {
  const typeName = Object.keys(DEFINITION).find((name) => {
    const { format, type } = DEFINITION[name];
    return format === 'Protocol Buffer 3 EnumDescriptorProto' && type.value[0].name === unspecified;
  });
  return enumValue(typeName, given, path);
}

// A LogMetrics answer's points that replaced another value at their key and step, as a process
// warning worded as the Python SDK's MetricPointsReplaced.
function warnReplaced({ accepted, replaced }) {
  if (!replaced) return;
  process.emitWarning(
    `${replaced} of the ${accepted} point(s) replaced another value logged before at the same key and step: ` +
      'a run keeps one point per key and step, the newest (log each step once, or the next value at a new step)',
    { type: 'MetricPointsReplaced' },
  );
}

// A metric value is a number (proto-loader would send '0.5' as 0.5 and true as 1); the daemon
// refuses NaN and the infinities, naming the point.
function metricValue(key, value) {
  if (typeof value !== 'number') throw new TypeError(`metric ${key}: value must be a number, got ${typeof value}`);
  return value;
}

// Trailing metadata of a failed LogMetricsStream: how many of its batches, from the first, the
// daemon stored (none after them).
const STORED_BATCHES = 'tessera-stored-batches';

// The batches of a metric stream, made from `steps` as they are sent and kept until an answer
// says they are stored, so that a cut stream is sent again from the first batch not known to be
// stored; storedPoints and lastStoredStep (undefined while none is) count those known stored.
class MetricBatches {
  constructor(runId, steps, batchPoints) {
    this.runId = runId;
    const iterate = steps?.[Symbol.asyncIterator] || steps?.[Symbol.iterator];
    if (typeof iterate !== 'function') {
      throw new TypeError(`steps must be an array, a generator or an async generator, got ${String(steps)}`);
    }
    this.steps = iterate.call(steps);
    this.batchPoints = batchPoints;
    this.kept = []; // made and not known stored, in order
    this.taken = []; // points from steps read, not yet in a batch
    this.storedPoints = 0;
    this.lastStoredStep = undefined;
    this.finished = false; // steps ended or threw: nothing to close
  }

  // The next batch of points from `steps`, kept; undefined when they are all sent.
  async next() {
    while (this.taken.length < this.batchPoints) {
      this.finished = true;
      const { value: item, done } = await this.steps.next();
      if (done) break;
      this.finished = false;
      if (!Array.isArray(item) || item.length !== 2) {
        throw new TypeError(`steps must yield [step, { key: value }], got ${JSON.stringify(item)}`);
      }
      const [step, metrics] = item;
      wholeNumber('step', step);
      for (const [key, value] of Object.entries(metrics)) this.taken.push({ key, value: metricValue(key, value), step });
    }
    if (!this.taken.length) return undefined;
    const batch = { run_id: this.runId, points: this.taken.splice(0, this.batchPoints) };
    this.kept.push(batch);
    return batch;
  }

  // Closes `steps` where the stream ends before they do (refused, cut for good), as leaving a
  // `for await` loop does: a generator's `finally` runs.
  async close() {
    if (!this.finished) await this.steps.return?.();
  }

  // Drops the first `count` kept batches, which an answer says are stored; true if any.
  stored(count) {
    for (const batch of this.kept.splice(0, count)) {
      this.storedPoints += batch.points.length;
      this.lastStoredStep = batch.points[batch.points.length - 1].step;
    }
    return count > 0;
  }
}

// `error` with what of a metric stream is stored (storedPoints, lastStoredStep) and its message
// saying so, after `gaveUp` where it is given (the stream sent again until it gave up);
// `answered`: whether the daemon said what it stored (a cut connection does not).
function streamFailure(error, batches, answered, gaveUp) {
  const { storedPoints, lastStoredStep } = batches;
  Object.assign(error, { storedPoints, lastStoredStep });
  // The daemon's message counts this try's stored batches; this says which steps of the stream.
  let done;
  if (!storedPoints) done = answered ? 'no point of this stream is stored' : 'cut without the daemon saying what it stored: some points may be';
  else {
    const points = storedPoints === 1 ? '1 point of this stream is' : `${storedPoints} points of this stream are`;
    done = `${points} stored, up to step ${lastStoredStep}`;
  }
  if (storedPoints && !answered) done += '; some sent after them may be too';
  error.message = `${error.message} (${gaveUp === undefined ? '' : `${gaveUp}; `}${done})`;
  return error;
}

// A client-streaming call of `stub`'s (a service's) `method`, tracked by `client`: stream (grpc-js's, to write and end), response (its
// answer's promise; a TesseraError when it fails), answered (whether it has come: a call the
// daemon ended early needs no more messages) and send (a message written, waiting while the
// stream's buffer is full).
function clientStream(client, stub, method, deadline) {
  const call = { answered: false };
  call.response = new Promise((resolve, reject) => {
    call.stream = client.track(
      stub[method](client.metadata, { deadline }, (err, response) => {
        call.answered = true;
        return err ? reject(new TesseraError(err)) : resolve(response);
      }),
    );
  });
  // Awaited once the stream is sent; a failure meanwhile shows there, not as an unhandled one.
  call.response.catch(() => {});
  call.send = async (message) => {
    // A call that ends while the buffer is full may never drain: its answer ends the wait too.
    if (!call.stream.write(message)) {
      await Promise.race([new Promise((resolve) => call.stream.once('drain', resolve)), call.response.catch(() => {})]);
    }
  };
  return call;
}

// Send `file` on the upload call `open` starts (a clientStream) once the file is read through:
// `header` with its sha256 and size, then its chunks until they end or the daemon answers; the
// answer's promise.
async function uploadFile(open, header, file, chunkSize) {
  const { sha256, size } = await fileDigest(file);
  const call = open();
  try {
    await call.send({ header: { ...header, sha256, size_bytes: size } });
    for await (const chunk of fs.createReadStream(file, { highWaterMark: chunkSize })) {
      if (call.answered) break;
      await call.send({ chunk });
    }
  } catch (err) {
    call.stream.cancel();
    throw err;
  }
  call.stream.end();
  return call.response;
}

// A file's hex sha256 and size, read before an upload's header is sent.
async function fileDigest(file) {
  const hash = crypto.createHash('sha256');
  let size = 0;
  for await (const chunk of fs.createReadStream(file)) {
    hash.update(chunk);
    size += chunk.length;
  }
  return { sha256: hash.digest('hex'), size };
}

function timestamp(date) {
  if (!(date instanceof Date) || Number.isNaN(date.getTime())) {
    throw new TypeError(`time must be a valid Date, got ${String(date)}`);
  }
  const ms = date.getTime();
  return { seconds: Math.floor(ms / 1000), nanos: (ms - Math.floor(ms / 1000) * 1000) * 1e6 };
}

function encodeTensor(name, { dtype, shape, values }) {
  const kind = DTYPES[dtype];
  if (!kind) throw new Error(`input ${name}: dtype ${dtype} is not one of ${Object.keys(DTYPES).join(', ')}`);
  const count = shape.reduce((a, b) => a * b, 1);
  if (values.length !== count) throw new Error(`input ${name}: ${values.length} values do not fill shape [${shape}]`);
  const data = Buffer.alloc(count * kind.size);
  values.forEach((value, i) => kind.write(data, value, i * kind.size));
  return { name, dtype, shape, data };
}

function decodeTensor(tensor) {
  const kind = DTYPES[tensor.dtype];
  if (!kind) throw new Error(`output ${tensor.name}: dtype ${tensor.dtype} is not supported by this client`);
  const values = [];
  for (let offset = 0; offset < tensor.data.length; offset += kind.size) values.push(kind.read(tensor.data, offset));
  return { dtype: tensor.dtype, shape: tensor.shape.map(Number), values };
}

module.exports = {
  Client,
  checkTarget,
  datasetRef,
  pythonRepr,
  TesseraError,
  encodeTensor,
  decodeTensor,
  RunFilterError: runFilter.RunFilterError,
  parseRunFilter: runFilter.parseFilter,
  parseRunOrder: runFilter.parseOrder,
  parseRunOrderKeys: runFilter.parseOrderKeys,
  listRunsRequest,
};
