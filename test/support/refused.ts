/**
 * An `assert.throws`/`assert.rejects` matcher for a setting refused with InvalidArgumentError: its message matches
 * `message` and its `details.option` names `option`.
 */
import { strict as assert } from 'node:assert';
import { InvalidArgumentError } from '../../common';

export const refusedOption = (option: string, message: RegExp) => (err: unknown) => {
  assert.ok(err instanceof InvalidArgumentError, String(err));
  assert.match(err.message, message);
  assert.equal((err.details as { option?: string }).option, option);
  return true;
};
