#!/usr/bin/env node
// The `dmtp` command. In a checkout (bin/cli.ts present) it runs the TypeScript source through tsx, so a stale
// `dist/` can never shadow the code being worked on; in an installed package (sources not shipped) it runs the
// compiled CLI from dist/.
const fs = require('node:fs');
const path = require('node:path');

// grpc-js prints its own error lines unless told not to; the CLI reports failures itself, in one line.
process.env.GRPC_VERBOSITY ??= 'NONE';

const source = path.join(__dirname, 'cli.ts');
let useSource = fs.existsSync(source);
if (useSource) {
  try {
    require.resolve('tsx/cjs');
  } catch {
    useSource = false; // a checkout without dev dependencies: fall back to the build
  }
}
if (useSource) {
  require('tsx/cjs');
  require('./cli.ts').run();
} else {
  require(path.join(__dirname, '..', 'dist', 'bin', 'cli.js')).run();
}
