// Tokenizers against the libraries that define them: byte-level BPE against transformers' GPT2Tokenizer ids,
// SentencePiece against the sentencepiece library's ids, GPT-2's own vocabulary against gpt-tokenizer; then
// round trips and streamed decoding on Unicode, Chinese, emoji and whitespace runs.
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { test } from 'node:test';
import { encode as r50kEncode } from 'gpt-tokenizer/encoding/r50k_base';
import { loadTokenizer, type Tokenizer } from '../../native/tokenizers/index';

const dir = join(import.meta.dirname, '..', 'fixtures', 'tokenizers');
const reference = JSON.parse(readFileSync(join(dir, 'reference.json'), 'utf8')) as {
  bpe: Array<{ text: string; ids: number[] }>;
  sentencepiece: Array<{ text: string; ids: number[]; pieces: string[] }>;
};

const texts = [
  ...reference.bpe.map((c) => c.text),
  'plain ascii',
  '   three leading spaces and trailing    ',
  '\t\ttabs\t and\r\nwindows newlines\n\n\n',
  '中文：大语言模型的推理加速。張量並行',
  '日本語のテキストと한국어 텍스트',
  'emoji 😀😃😄 skin tones 👍🏻👍🏿 family 👨‍👩‍👧‍👦 flag 🏳️‍🌈 keycap 1️⃣',
  'combining e\u0301 and precomposed é; zero width\u200bspace; BOM\ufeffinside',
  'Arabic العربية and Hebrew עברית mixed with English',
  'math ∀x∈ℝ: x² ≥ 0, ∑ᵢ aᵢ, 𝔘𝔫𝔦𝔠𝔬𝔡𝔢 𝕏',
  "contractions: don't, I'm, we'll, they've, she'd, it's",
  'numbers 3.14159 1e-5 -42 1,000,000 ٣٤٥',
  '',
];

function roundTrip(tok: Tokenizer, text: string): void {
  const ids = tok.encode(text);
  assert.ok(
    ids.every((id) => Number.isInteger(id) && id >= 0 && id < tok.vocabSize),
    `ids in range for ${JSON.stringify(text)}`,
  );
  assert.equal(tok.decode(ids), text, `${tok.kind} round trip of ${JSON.stringify(text)}`);
}

/** Feeding ids one at a time must give the same text as decoding them together, without broken characters. */
function streamsLikeDecode(tok: Tokenizer, text: string): void {
  const ids = tok.encode(text);
  const stream = tok.createStreamDecoder();
  const chunks = ids.map((id) => stream.push(id));
  chunks.push(stream.flush());
  assert.equal(chunks.join(''), tok.decode(ids), `${tok.kind} stream of ${JSON.stringify(text)}`);
  if (!text.includes('\uFFFD')) {
    for (const c of chunks)
      assert.ok(!c.includes('\uFFFD'), `${tok.kind} emitted a broken character for ${JSON.stringify(text)}`);
  }
}

test('byte-level BPE from vocab.json + merges.txt gives transformers.GPT2Tokenizer ids', async () => {
  const tok = await loadTokenizer({ family: 'gpt2', dir: join(dir, 'bpe') });
  assert.equal(tok.kind, 'bpe');
  for (const c of reference.bpe) assert.deepEqual(tok.encode(c.text), c.ids, JSON.stringify(c.text));
  assert.equal(tok.eosTokenId, 0); // the fixture vocabulary was trained with <|endoftext|> as its first token
  for (const t of texts) {
    roundTrip(tok, t);
    streamsLikeDecode(tok, t);
  }
});

test("GPT-2's vocabulary (r50k_base) agrees with gpt-tokenizer's own encoder", async () => {
  const tok = await loadTokenizer({ family: 'gpt2' });
  assert.equal(tok.kind, 'r50k');
  assert.equal(tok.vocabSize, 50257);
  assert.equal(tok.eosTokenId, 50256);
  assert.deepEqual(tok.encode('Hello world'), [15496, 995]);
  for (const t of texts) {
    assert.deepEqual(tok.encode(t), r50kEncode(t), JSON.stringify(t));
    roundTrip(tok, t);
    streamsLikeDecode(tok, t);
  }
  // the special token in text is the end-of-text id, as GPT2Tokenizer treats it
  assert.deepEqual(tok.encode('a<|endoftext|>b'), [64, 50256, 65]);
});

test('SentencePiece tokenizer.model gives the sentencepiece library ids, THUDM special tokens after its vocabulary', async () => {
  const tok = await loadTokenizer({ family: 'chatglm2', dir });
  assert.equal(tok.kind, 'sentencepiece');
  for (const c of reference.sentencepiece) assert.deepEqual(tok.encode(c.text), c.ids, JSON.stringify(c.text));
  // the fixture model has 700 pieces; THUDM numbers [MASK] [gMASK] [sMASK] sop eop from there
  assert.deepEqual(tok.specialTokens, { '[MASK]': 700, '[gMASK]': 701, '[sMASK]': 702, sop: 703, eop: 704 });
  assert.equal(tok.vocabSize, 705);
  assert.equal(tok.eosTokenId, 2);
  for (const t of texts) {
    roundTrip(tok, t);
    streamsLikeDecode(tok, t);
  }
  // special tokens and padding rows of the model's embedding decode to nothing
  const ids = tok.encode('你好');
  assert.equal(tok.decode([701, 703, ...ids, 704, 65000]), '你好');
});

test('streaming holds back a character split over tokens until it is complete', async () => {
  const tok = await loadTokenizer({ family: 'gpt2' });
  const ids = tok.encode('😀');
  assert.ok(ids.length > 1, 'the emoji spans several GPT-2 tokens');
  const stream = tok.createStreamDecoder();
  const out = ids.map((id) => stream.push(id));
  assert.deepEqual(out.slice(0, -1), new Array(ids.length - 1).fill(''));
  assert.equal(out.at(-1), '😀');
  assert.equal(stream.flush(), '');
  // bytes that never form a character are released rather than held forever
  const bad = tok.createStreamDecoder();
  const lone = ids[0];
  let text = '';
  for (let i = 0; i < 8; i++) text += bad.push(lone);
  text += bad.flush();
  assert.ok(text.length > 0 && text.includes('\uFFFD'));
});

test('ChatGLM2 without tokenizer.model falls back to a byte-level stand-in that says so', async () => {
  const tok = await loadTokenizer({ family: 'chatglm2', dir: join(dir, 'bpe') });
  assert.equal(tok.kind, 'bytes');
  assert.match(tok.source, /no tokenizer\.model/);
  assert.equal(tok.eosTokenId, 2);
  assert.deepEqual(tok.encode('A'), [65 + 3]);
  for (const t of texts) {
    roundTrip(tok, t);
    streamsLikeDecode(tok, t);
  }
});

test('malformed tokenizer files are refused with the file named', async () => {
  const { mkdtemp, writeFile, rm } = await import('node:fs/promises');
  const { tmpdir } = await import('node:os');
  const tmp = await mkdtemp(join(tmpdir(), 'flashlab-tok-'));
  try {
    await writeFile(join(tmp, 'tokenizer.model'), Buffer.from([0x0a, 0xff, 0xff, 0xff, 0x0f, 0x01]));
    await assert.rejects(loadTokenizer({ family: 'chatglm2', dir: tmp }), /tokenizer\.model is truncated/);
    await writeFile(join(tmp, 'tokenizer.model'), Buffer.from('not a model at all'));
    await assert.rejects(loadTokenizer({ family: 'chatglm2', dir: tmp }), /tokenizer\.model/);
    await writeFile(join(tmp, 'vocab.json'), '{"a": 0, "b": 0}');
    await writeFile(join(tmp, 'merges.txt'), '#version: 0.2\na b\n');
    await assert.rejects(loadTokenizer({ family: 'gpt2', dir: tmp }), /vocab\.json gives id 0 to two tokens/);
    await writeFile(join(tmp, 'vocab.json'), '{"a": 0, "b": 1}');
    await writeFile(join(tmp, 'merges.txt'), '#version: 0.2\na b c\n');
    await assert.rejects(loadTokenizer({ family: 'gpt2', dir: tmp }), /merges\.txt line 2/);
  } finally {
    await rm(tmp, { recursive: true, force: true });
  }
});
