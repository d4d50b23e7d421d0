'use strict';
// The .proto contract, loaded from protos/ at run time, so that the client always speaks the same
// API as the daemon built from this checkout.

const path = require('node:path');
const protoLoader = require('@grpc/proto-loader');

const PROTO_ROOT = path.resolve(__dirname, '..', '..', 'protos');
const PROTO_FILES = ['registry', 'datasets', 'inference', 'system', 'training'].map((name) => `tessera/v1/${name}.proto`);

const DEFINITION = protoLoader.loadSync(PROTO_FILES, {
  includeDirs: [PROTO_ROOT],
  keepCase: true,
  longs: Number,
  enums: String,
  defaults: true,
  oneofs: true,
});

// The names of enum `typeName` ('tessera.v1.RunStatus'), its 0 value (PREFIX_UNSPECIFIED) first.
function enumNames(typeName) {
  return DEFINITION[typeName].type.value.map((v) => v.name);
}

module.exports = { DEFINITION, enumNames };
