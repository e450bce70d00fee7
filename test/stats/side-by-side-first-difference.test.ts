// Side-by-side chat marks where two answers part; only a real difference may be marked.
import assert from 'node:assert/strict';
import { it } from 'node:test';
import { firstDifference } from '../../lib/text-diff';

it('finds where two streamed answers part', () => {
  assert.equal(firstDifference('the cat sat', 'the cap sat'), 6);
  assert.equal(firstDifference('the cat', 'the cat sat'), null); // B is still ahead: not a difference yet
  assert.equal(firstDifference('the cat', 'the cat sat', true), 7); // both ended: A stopped early
  assert.equal(firstDifference('same', 'same', true), null);
  assert.equal(firstDifference('', 'x', true), 0);
});
