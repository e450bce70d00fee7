// CSV export must round-trip through a spreadsheet: quoting per RFC 4180 and no formula injection from tags/notes.
import assert from 'node:assert/strict';
import { it } from 'node:test';
import { objectsToCsv, toCsv } from '../../lib/csv';
import { formatBytes, formatMs, methodLabel } from '../../lib/format';

it('quotes commas, quotes and line breaks', () => {
  const csv = toCsv(
    ['a', 'b', 'c'],
    [
      ['x,y', 'say "hi"', 'two\nlines'],
      [1.5, true, null],
    ],
  );
  assert.equal(csv, 'a,b,c\r\n"x,y","say ""hi""","two\nlines"\r\n1.5,true,\r\n');
});

it('defuses cells a spreadsheet would evaluate, but keeps negative numbers', () => {
  const csv = toCsv(['v'], [['=HYPERLINK("x")'], ['-12.5'], ['-cmd'], [-3]]);
  assert.equal(csv, 'v\r\n"\'=HYPERLINK(""x"")"\r\n-12.5\r\n\'-cmd\r\n-3\r\n');
});

it('refuses ragged rows', () => {
  assert.throws(() => toCsv(['a', 'b'], [['only one']]), /row 1 has 1 fields, the header has 2/);
});

it('writes objects by column', () => {
  const csv = objectsToCsv([{ header: 'id', value: (r: { id: number }) => r.id }], [{ id: 1 }, { id: 2 }]);
  assert.equal(csv, 'id\r\n1\r\n2\r\n');
});

it('formats figures with units', () => {
  assert.equal(formatMs(54900), '54.9 s');
  assert.equal(formatMs(12.34), '12.3 ms');
  assert.equal(formatMs(0.25), '250 µs');
  assert.equal(formatBytes(1536), '1.50 KiB');
  assert.equal(formatBytes(13 * 1024 ** 3), '13.0 GiB');
  assert.equal(methodLabel({ attention: 'fa2', kvCache: true, tp: 2, dtype: 'fp16' }), 'FA2 + KV cache, TP=2, fp16');
});
