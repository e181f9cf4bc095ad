import { strict as assert } from 'node:assert';
import { renderFields, renderTable } from '../../../bin/table';

describe('bin/table', () => {
  it('aligns columns two spaces apart under capitalised headers, with no trailing spaces', () => {
    const out = renderTable(
      ['service', 'address', 'weight'],
      [
        ['inventory', '127.0.0.1:7001', 1],
        ['payment', '10.0.0.5:80', 20],
      ],
    );
    assert.equal(
      out,
      'SERVICE    ADDRESS         WEIGHT\n' +
        'inventory  127.0.0.1:7001  1\n' +
        'payment    10.0.0.5:80     20\n',
    );
    for (const line of out.split('\n')) assert.equal(line, line.trimEnd());
  });

  it("shows '-' for empty cells and keeps one row per line", () => {
    const out = renderTable(['a', 'b', 'c'], [['', undefined, 'two\nlines']]);
    assert.equal(out.split('\n')[1], '-  -  two lines');
  });

  it('cuts a runaway cell with an ellipsis', () => {
    const out = renderTable(['error'], [['x'.repeat(100)]], { maxCellWidth: 10 });
    assert.equal(out.split('\n')[1], 'xxxxxxxxx…');
  });

  it('renders only headers for no rows', () => {
    assert.equal(renderTable(['xid', 'state'], []), 'XID  STATE\n');
  });

  it('aligns key/value fields and leaves out undefined ones', () => {
    assert.equal(
      renderFields([
        ['xid', 'c:1:2'],
        ['abort reason', ''],
        ['labels', undefined],
      ]),
      'xid:           c:1:2\nabort reason:  -\n',
    );
  });
});
