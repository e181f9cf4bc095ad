// Mocha runs the TypeScript tests through tsx (esbuild), so there is no separate build step before testing.
// No --exit: every test stops what it starts, and mocha must exit by itself.
module.exports = {
  require: ['tsx/cjs'],
  extension: ['ts'],
  timeout: 20000,
  reporter: 'spec',
};
