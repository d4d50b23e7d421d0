'use strict';
// A small Node.js client for tesserad. It loads the .proto contract from protos/ at run time,
// so it always speaks the same API as the daemon built from this checkout.

const path = require('node:path');
const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');

const PROTO_ROOT = path.resolve(__dirname, '..', '..', 'protos');
const PROTO_FILES = ['registry', 'inference', 'system'].map((name) => `tessera/v1/${name}.proto`);

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

function loadPackage() {
  const definition = protoLoader.loadSync(PROTO_FILES, {
    includeDirs: [PROTO_ROOT],
    keepCase: true,
    longs: Number,
    enums: String,
    defaults: true,
    oneofs: true,
  });
  return grpc.loadPackageDefinition(definition).tessera.v1;
}

// Every call has a deadline, as in the Python SDK: a timeout left undefined takes the default
// (this client's calls are all unary), and one that is not a number of milliseconds above 0 is
// refused before anything is sent (0 took the default through `||`, and a negative one failed at
// once with a bare DEADLINE_EXCEEDED).
const DEFAULT_TIMEOUT_MS = 30000;
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

// A TesseraError carries the gRPC status name and the daemon's message.
class TesseraError extends Error {
  constructor(err) {
    const code = Object.keys(grpc.status).find((name) => grpc.status[name] === err.code) || 'UNKNOWN';
    super(`${code}: ${err.details || err.message}`);
    this.code = code;
    this.details = err.details || err.message;
  }
}

class Client {
  // target: "host:port"; options: { token, timeoutMs (each call's deadline, default 30000),
  // rootCert (Buffer, enables TLS) }.
  constructor(target, options = {}) {
    this.timeoutMs = timeoutMs(options.timeoutMs, DEFAULT_TIMEOUT_MS);
    const v1 = loadPackage();
    const credentials = options.rootCert
      ? grpc.credentials.createSsl(options.rootCert)
      : grpc.credentials.createInsecure();
    this.metadata = new grpc.Metadata();
    const token = options.token || process.env.TESSERA_TOKEN;
    if (token) this.metadata.set('authorization', `Bearer ${token}`);
    this.registry = new v1.Registry(target, credentials);
    this.inference = new v1.Inference(target, credentials, { channelOverride: this.registry.getChannel() });
    this.system = new v1.System(target, credentials, { channelOverride: this.registry.getChannel() });
  }

  // `timeout`: this call's timeoutMs (undefined: the client's).
  call(stub, method, request, timeout) {
    const deadline = new Date(Date.now() + timeoutMs(timeout, this.timeoutMs));
    return new Promise((resolve, reject) => {
      stub[method](request, this.metadata, { deadline }, (err, response) =>
        err ? reject(new TesseraError(err)) : resolve(response),
      );
    });
  }

  // Each method takes { timeoutMs } last, for its calls instead of the client's.
  async info({ timeoutMs: timeout } = {}) {
    return this.call(this.system, 'GetServerInfo', {}, timeout);
  }

  // Every model, following page tokens; each page is a call of its own, with its own deadline.
  async listModels(namePrefix = '', { timeoutMs: timeout } = {}) {
    const models = [];
    let pageToken = '';
    do {
      const request = { name_prefix: namePrefix, page_token: pageToken };
      const page = await this.call(this.registry, 'ListModels', request, timeout);
      models.push(...page.models);
      pageToken = page.next_page_token;
    } while (pageToken);
    return models;
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

  close() {
    this.registry.close();
  }
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

module.exports = { Client, TesseraError, encodeTensor, decodeTensor };
