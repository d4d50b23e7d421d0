'use strict';
// The error of a call the daemon (or gRPC) failed, in a module of its own so that the client's
// parts beside tessera.js can fail in the same terms.

const grpc = require('@grpc/grpc-js');

// A TesseraError carries the gRPC status name (`code`), the daemon's message (`details`) and the
// call's trailing metadata (`metadata`, a grpc.Metadata; empty when the call never reached it).
class TesseraError extends Error {
  constructor(err) {
    const code = Object.keys(grpc.status).find((name) => grpc.status[name] === err.code) || 'UNKNOWN';
    super(`${code}: ${err.details || err.message}`);
    this.name = 'TesseraError';
    this.code = code;
    this.details = err.details || err.message;
    this.metadata = err.metadata || new grpc.Metadata();
  }
}

// A TesseraError of `code` (a gRPC status name) made here, with `details` as its message.
function tesseraError(code, details) {
  return new TesseraError({ code: grpc.status[code], details });
}

module.exports = { TesseraError, tesseraError };
