#!/usr/bin/env node
// The `dmtp` command: the compiled CLI (dist/bin/cli.js, after `npm run build`) when there is one, else the
// TypeScript source through tsx, so it works straight from a clone.
const fs = require('node:fs');
const path = require('node:path');

// grpc-js prints its own error lines unless told not to; the CLI reports failures itself, in one line.
process.env.GRPC_VERBOSITY ??= 'NONE';

const compiled = path.join(__dirname, '..', 'dist', 'bin', 'cli.js');
if (fs.existsSync(compiled)) {
  require(compiled).run();
} else {
  require('tsx/cjs');
  require('./cli.ts').run();
}
