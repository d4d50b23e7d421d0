'use strict';
// The .proto contract, loaded from protos/ at run time, so that the client always speaks the same
// API as the daemon built from this checkout.

const fs = require('node:fs');
const path = require('node:path');

const PROTO_FILES = ['registry', 'datasets', 'inference', 'system', 'training'].map((name) => `tessera/v1/${name}.proto`);

// TESSERA_PROTO_DIR, else this checkout's protos/; checked before anything is loaded, so that a
// copy of the client without them is told what to set rather than shown a file-not-found stack.
function protoRoot() {
  const named = process.env.TESSERA_PROTO_DIR;
  const root = named ? path.resolve(named) : path.resolve(__dirname, '..', '..', 'protos');
  if (!PROTO_FILES.every((file) => fs.existsSync(path.join(root, file)))) {
    const from = named ? 'TESSERA_PROTO_DIR' : '../../protos from proto.js';
    throw new Error(
      `tessera's .proto files are not in ${root} (${from}): set TESSERA_PROTO_DIR to the protos/ ` +
        'directory of the tessera checkout the daemon was built from',
    );
  }
  return root;
}

const PROTO_ROOT = protoRoot();
const protoLoader = require('@grpc/proto-loader');

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
