// ChatGLM2 without tokenizer.model decodes through a byte-level stand-in. A model with random weights samples
// from all 65024 rows, almost none of them bytes: those ids must show as visible markers (not vanish into an empty
// answer), the same whether the ids are decoded together or streamed one at a time.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { loadTokenizer } from '../../native/tokenizers/index';

const BYTE_BASE = 3;

/** Streams ids one at a time, as the chat runner does, and returns every chunk plus the final flush. */
function streamed(tok: Awaited<ReturnType<typeof loadTokenizer>>, ids: readonly number[]): string[] {
  const s = tok.createStreamDecoder();
  const chunks = ids.map((id) => s.push(id));
  chunks.push(s.flush());
  return chunks;
}

test('ids outside the byte range decode to ⟨id N⟩ markers, named ids by their name', async () => {
  const tok = await loadTokenizer({ family: 'chatglm2' });
  assert.equal(tok.kind, 'bytes');
  assert.match(tok.source, /⟨id N⟩/);
  const hi = tok.encode('hi');
  assert.equal(tok.decode([...hi, 4711, 65023]), 'hi⟨id 4711⟩⟨id 65023⟩');
  assert.equal(tok.decode([0, 1, 2]), '⟨<unk>⟩⟨<s>⟩⟨</s>⟩');
  assert.equal(tok.decode(tok.promptPrefix), '⟨[gMASK]⟩⟨sop⟩');
  assert.equal(tok.decode([tok.specialTokens.eop, tok.specialTokens['[MASK]']]), '⟨eop⟩⟨[MASK]⟩');
  // Not an integer id at all: still shown, never dropped or thrown on.
  assert.equal(tok.decode([-1, 2.5]), '⟨id -1⟩⟨id 2.5⟩');
  // The byte range's edges are bytes: id 3 is 0x00, id 258 is 0xff (an invalid lone byte: U+FFFD).
  assert.equal(tok.decode([BYTE_BASE]), '\u0000');
  assert.equal(tok.decode([BYTE_BASE + 255]), '\uFFFD');
  assert.equal(tok.decode([BYTE_BASE + 256]), '⟨[MASK]⟩');
});

test('what a random-weight model samples renders as visible text, streamed exactly like decode()', async () => {
  const tok = await loadTokenizer({ family: 'chatglm2' });
  // A fixed spread over the 65024 rows, as a model with random weights produces: 24 ids, one of them a byte.
  const ids = Array.from({ length: 24 }, (_, i) => (i * 7919 + 1234) % 65024);
  const unmapped = ids.filter((id) => id < BYTE_BASE || id >= BYTE_BASE + 256);
  assert.ok(unmapped.length >= 20, 'most sampled ids lie outside the byte range');
  const text = tok.decode(ids);
  assert.notEqual(text.trim(), '');
  assert.equal(text.match(/⟨[^⟩]+⟩/g)?.length, unmapped.length, 'one marker per unmapped id');
  for (const id of unmapped) assert.ok(text.includes(`⟨id ${id}⟩`), `id ${id} is shown`);
  const chunks = streamed(tok, ids);
  assert.equal(chunks.join(''), text);
  for (const [i, id] of ids.entries())
    if (unmapped.includes(id)) assert.ok(chunks[i].endsWith(`⟨id ${id}⟩`), `id ${id} shows as soon as it arrives`);
});

test('a character cut off by a marker is released before it; one split over bytes waits for its last byte', async () => {
  const tok = await loadTokenizer({ family: 'chatglm2' });
  const zhong = tok.encode('中'); // three bytes
  assert.equal(zhong.length, 3);
  // Complete character over three pushes: nothing until the last byte.
  assert.deepEqual(streamed(tok, zhong), ['', '', '中', '']);
  // Two of its three bytes, then an unmapped id: the broken character becomes U+FFFD ahead of the marker, and the
  // bytes after the marker decode on their own.
  const ids = [...zhong.slice(0, 2), 5000, ...tok.encode('ok')];
  const chunks = streamed(tok, ids);
  assert.deepEqual(chunks, ['', '', '\uFFFD⟨id 5000⟩', 'o', 'k', '']);
  assert.equal(tok.decode(ids), chunks.join(''));
  // A trailing incomplete character is released by flush(), as decode() ends it.
  const tail = [5000, ...zhong.slice(0, 1)];
  assert.deepEqual(streamed(tok, tail), ['⟨id 5000⟩', '', '\uFFFD']);
  assert.equal(tok.decode(tail), '⟨id 5000⟩\uFFFD');
  // A byte-order mark after a marker is text, kept like any other character.
  assert.equal(tok.decode([5000, ...tok.encode('\ufeffx')]), '⟨id 5000⟩\ufeffx');
});

test('text the stand-in encodes still round-trips exactly (markers never come from encode)', async () => {
  const tok = await loadTokenizer({ family: 'chatglm2' });
  for (const t of ['plain', '中文 😀 e\u0301', '⟨id 12⟩ typed by a user', '']) {
    const ids = tok.encode(t);
    assert.ok(ids.every((id) => id >= BYTE_BASE && id < BYTE_BASE + 256));
    assert.equal(tok.decode(ids), t);
    assert.equal(streamed(tok, ids).join(''), t);
  }
});
