// Mocha's spec reporter plus one closing line, "<label>: N passed, N failed", that CI reads as the verdict.
'use strict';
const Mocha = require('mocha');

class DmtpReporter extends Mocha.reporters.Spec {
  constructor(runner, options) {
    super(runner, options);
    const label = (options && options.reporterOption && options.reporterOption.label) || 'tests';
    runner.once('end', () => {
      const s = this.stats;
      process.stdout.write(`\n${label}: ${s.passes} passed, ${s.failures} failed\n`);
    });
  }
}
module.exports = DmtpReporter;
