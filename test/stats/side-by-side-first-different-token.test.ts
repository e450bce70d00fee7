// Side-by-side chat marks the first TOKEN where two streamed answers part. The ids arrive in batches with the text
// they add; these cases place that token in both texts from the batch ends and the first differing character,
// against offsets worked out by hand.
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import {
  addDelta,
  EMPTY_STREAM,
  firstDifferentToken,
  type StreamedTokens,
  tokenDifference,
} from '../../app/chat/token-diff';
import { firstDifference } from '../../lib/text-diff';

/** Streams (ids, text) batches as the server sends them: each delta's ids with their index and the text so far. */
function streamOf(batches: Array<[number[], string]>): StreamedTokens {
  let s = EMPTY_STREAM;
  let text = '';
  let n = 0;
  for (const [ids, piece] of batches) {
    text += piece;
    s = addDelta(s, { text, tokenIds: ids, tokenStart: n });
    n += ids.length;
  }
  return s;
}

const diff = (a: StreamedTokens, b: StreamedTokens, ended = false) =>
  tokenDifference(a, b, ended, firstDifference(a.text, b.text, ended));

describe('first different token', () => {
  it('compares ids, and a shorter list is a difference only once both ended', () => {
    assert.equal(firstDifferentToken([1, 2, 3], [1, 2, 4]), 2);
    assert.equal(firstDifferentToken([1, 2], [1, 2, 3]), null);
    assert.equal(firstDifferentToken([1, 2], [1, 2, 3], true), 2);
    assert.equal(firstDifferentToken([5], [5], true), null);
    assert.equal(firstDifferentToken([], [7], true), 0);
  });

  it('keeps ids by index: a delta seen twice (reconnect) or a late snapshot changes nothing', () => {
    let s = addDelta(EMPTY_STREAM, { text: 'The', tokenIds: [10], tokenStart: 0 });
    s = addDelta(s, { text: 'The cat', tokenIds: [11], tokenStart: 1 });
    const again = addDelta(s, { text: 'The cat', tokenIds: [10, 11], tokenStart: 0 }); // snapshot after reconnect
    assert.deepEqual(again.tokenIds, [10, 11]);
    assert.deepEqual(
      again.marks.map((m) => [m.tokens, m.chars]),
      [
        [0, 0],
        [1, 3],
        [2, 7],
      ],
    );
    // Without ids (a server that sends none) the text still follows.
    assert.equal(addDelta(s, { text: 'The cat sat' }).text, 'The cat sat');
  });

  it('one token per delta: the token is marked exactly, in both texts', () => {
    const a = streamOf([
      [[464], 'The'],
      [[3797], ' cat'],
      [[3332], ' sat'],
    ]);
    const b = streamOf([
      [[464], 'The'],
      [[3290], ' dog'],
      [[3332], ' sat'],
    ]);
    const d = diff(a, b, true);
    assert.ok(d);
    assert.deepEqual([d.index, d.idA, d.idB], [1, 3797, 3290]);
    assert.deepEqual(d.spanA, { start: 3, end: 7, exact: true });
    assert.deepEqual(d.spanB, { start: 3, end: 7, exact: true });
  });

  it('the token differs but its text starts alike: still marked from the token, not from the character', () => {
    // " the" (id 262) vs " then" (id 788): the texts part at character 8 ("n"), the tokens at token 2 (offset 4).
    const a = streamOf([
      [[1], 'Say'],
      [[2], ' so'],
      [[262], ' the'],
      [[3], ' end'],
    ]);
    const b = streamOf([
      [[1], 'Say'],
      [[2], ' so'],
      [[788], ' then'],
      [[3], ' end'],
    ]);
    assert.equal(firstDifference(a.text, b.text), 10);
    const d = diff(a, b);
    assert.ok(d);
    assert.equal(d.index, 2);
    assert.deepEqual(d.spanA, { start: 6, end: 10, exact: true });
    assert.deepEqual(d.spanB, { start: 6, end: 11, exact: true });
  });

  it('batched tokens: the other side’s batch end pins the start; the mark runs to the end of the word', () => {
    // A got tokens 0..3 in one batch; B got 0..1, then 2..3: B's batch end at token 2 pins where token 2 starts.
    const a = streamOf([[[1, 2, 30, 4], 'ab cd ef']]);
    const b = streamOf([
      [[1, 2], 'ab c'],
      [[31, 4], 'x gh'],
    ]);
    const d = diff(a, b, true);
    assert.ok(d);
    assert.deepEqual([d.index, d.idA, d.idB], [2, 30, 31]);
    // Start pinned at 4 (B's batch end); A's token 2 is inside a batch: marked to the end of its word.
    assert.deepEqual(d.spanA, { start: 4, end: 5, exact: false });
    assert.deepEqual(d.spanB, { start: 4, end: 5, exact: false });
  });

  it('batched on both sides: the first differing character places the start within the bounds', () => {
    const a = streamOf([
      [[1], 'Hi'],
      [[2, 3, 4], ' there you'],
    ]);
    const b = streamOf([
      [[1], 'Hi'],
      [[2, 5, 6], ' there me'],
    ]);
    const d = diff(a, b, true);
    assert.ok(d);
    assert.deepEqual([d.index, d.idA, d.idB], [2, 3, 5]);
    // Token 2 starts somewhere in [2, 11] (after A's and B's first batch, before both second batches end); the
    // texts part at character 9 ("y" vs "m"), which places it.
    assert.deepEqual(d.spanA, { start: 9, end: 12, exact: false });
    assert.deepEqual(d.spanB, { start: 9, end: 11, exact: false });
  });

  it('an answer that stopped early: the difference is where it stopped, the other side’s token is marked', () => {
    const a = streamOf([
      [[1], 'One'],
      [[2], ' two'],
    ]);
    const b = streamOf([
      [[1], 'One'],
      [[2], ' two'],
      [[3], ' three'],
    ]);
    assert.equal(diff(a, b, false), null, 'B still streaming ahead is not a difference');
    const d = diff(a, b, true);
    assert.ok(d);
    assert.deepEqual([d.index, d.idA, d.idB], [2, undefined, 3]);
    assert.deepEqual(d.spanA, { start: 7, end: 7, exact: true });
    assert.deepEqual(d.spanB, { start: 7, end: 13, exact: true });
  });

  it('ids that differ while the text is the same ("the" vs "t"+"he") are still a token difference', () => {
    const a = streamOf([[[1169], 'the']]);
    const b = streamOf([
      [[83], 't'],
      [[258], 'he'],
    ]);
    const d = diff(a, b, true);
    assert.ok(d);
    assert.equal(firstDifference(a.text, b.text, true), null);
    assert.deepEqual([d.index, d.idA, d.idB], [0, 1169, 83]);
    assert.deepEqual(d.spanA, { start: 0, end: 3, exact: true });
    assert.deepEqual(d.spanB, { start: 0, end: 1, exact: true });
  });

  it('identical answers have no difference', () => {
    const a = streamOf([
      [[1, 2], 'same'],
      [[3], '!'],
    ]);
    const b = streamOf([
      [[1], 'sa'],
      [[2, 3], 'me!'],
    ]);
    assert.equal(diff(a, b, true), null);
  });
});
