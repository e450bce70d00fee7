// loadTokenizer: the right tokenizer for a model family and (optionally) a checkpoint directory.
//  - GPT-2: the checkpoint's vocab.json + merges.txt; without them (random weights, or a checkpoint shipped
//    without tokenizer files) GPT-2's real vocabulary, r50k_base, from the gpt-tokenizer package.
//  - ChatGLM2: the checkpoint's SentencePiece tokenizer.model, with THUDM's special tokens numbered after the
//    SentencePiece vocabulary ([MASK], [gMASK], [sMASK], sop, eop). Without tokenizer.model there is no real
//    tokenizer; a byte-level stand-in (UTF-8 bytes as ids 3..258, every other id a visible ⟨id N⟩ marker) keeps
//    prompts and streamed text working for random-weight runs, and says so in `source`.
import { existsSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { createRequire } from 'node:module';
import { join } from 'node:path';
import { ByteLevelBpe, vocabularyFromHf, vocabularyFromTiktoken } from './bpe';
import { loadSentencePiece } from './sentencepiece';
import { byteStreamDecoder, markerStreamDecoder, windowStreamDecoder } from './stream';
import { type StreamDecoder, type Tokenizer, TokenizerError } from './types';

export { type ChatMessage, chatglm2Prompt, chatInputIds, encodePrompt, transcriptPrompt } from './chat';
export { type StreamDecoder, type Tokenizer, TokenizerError } from './types';

export const CHATGLM2_SPECIAL_TOKENS = ['[MASK]', '[gMASK]', '[sMASK]', 'sop', 'eop'] as const;
const GPT2_EOS = '<|endoftext|>';

let r50k: Promise<ByteLevelBpe> | null = null;

function loadR50k(): Promise<ByteLevelBpe> {
  r50k ??= (async () => {
    const require = createRequire(import.meta.url);
    const path = require.resolve('gpt-tokenizer/data/r50k_base.tiktoken');
    const bpe = new ByteLevelBpe(vocabularyFromTiktoken(await readFile(path, 'utf8'), { [GPT2_EOS]: 50256 }, path));
    if (bpe.vocabSize !== 50257) throw new TokenizerError(`${path} has ${bpe.vocabSize} tokens, GPT-2 has 50257`);
    return bpe;
  })();
  r50k.catch(() => {
    r50k = null;
  });
  return r50k;
}

function bpeTokenizer(bpe: ByteLevelBpe, kind: 'bpe' | 'r50k', source: string): Tokenizer {
  const eos = bpe.encode(GPT2_EOS);
  const eosTokenId = eos.length === 1 ? eos[0] : bpe.vocabSize - 1;
  return {
    family: 'gpt2',
    kind,
    source,
    vocabSize: bpe.vocabSize,
    eosTokenId,
    specialTokens: { [GPT2_EOS]: eosTokenId },
    promptPrefix: [],
    encode: (text) => bpe.encode(text),
    decode: (ids) => bpe.decode(ids),
    createStreamDecoder: (): StreamDecoder => byteStreamDecoder((ids) => bpe.decodeBytes(ids)),
  };
}

async function chatglm2SentencePiece(path: string): Promise<Tokenizer> {
  const sp = await loadSentencePiece(path);
  const n = sp.pieceCount;
  const specialTokens = Object.fromEntries(CHATGLM2_SPECIAL_TOKENS.map((t, i) => [t, n + i]));
  // THUDM's SPTokenizer: eos is the SentencePiece model's </s>
  const eosTokenId = sp.pieceToId('</s>');
  const decode = (ids: readonly number[]) => sp.decode(ids.filter((id) => Number.isInteger(id) && id >= 0 && id < n));
  return {
    family: 'chatglm2',
    kind: 'sentencepiece',
    source: path,
    vocabSize: n + CHATGLM2_SPECIAL_TOKENS.length,
    eosTokenId,
    specialTokens,
    promptPrefix: [specialTokens['[gMASK]'], specialTokens.sop],
    encode: (text) => sp.encode(text),
    decode,
    createStreamDecoder: () => windowStreamDecoder(decode),
  };
}

/** ChatGLM2 without tokenizer.model: ids 0..2 are <unk> <s> </s> as in SentencePiece, bytes follow, THUDM's
 *  special tokens after the bytes. Every other id (most of what a model with random weights samples from its
 *  65024 rows) has no text here: it decodes to a visible marker instead of nothing, so the answer shows the ids. */
function chatglm2Bytes(): Tokenizer {
  const BYTE_BASE = 3;
  const n = BYTE_BASE + 256;
  const specialTokens = Object.fromEntries(CHATGLM2_SPECIAL_TOKENS.map((t, i) => [t, n + i]));
  const names = new Map<number, string>([
    [0, '<unk>'],
    [1, '<s>'],
    [2, '</s>'],
    ...CHATGLM2_SPECIAL_TOKENS.map((t, i): [number, string] => [n + i, t]),
  ]);
  const createStreamDecoder = () => markerStreamDecoder(BYTE_BASE, names);
  return {
    family: 'chatglm2',
    kind: 'bytes',
    source:
      "no tokenizer.model: byte-level stand-in (UTF-8 bytes as ids 3..258, other ids shown as ⟨id N⟩), not ChatGLM2's vocabulary",
    vocabSize: n + CHATGLM2_SPECIAL_TOKENS.length,
    eosTokenId: 2,
    specialTokens,
    promptPrefix: [specialTokens['[gMASK]'], specialTokens.sop],
    encode: (text) => Array.from(new TextEncoder().encode(text), (b) => b + BYTE_BASE),
    // Decoding is the stream decoder run over every id: streamed chunks add up to decode() by construction.
    decode: (ids) => {
      const stream = createStreamDecoder();
      return stream.push(ids) + stream.flush();
    },
    createStreamDecoder,
  };
}

export async function loadTokenizer(opts: { family: 'gpt2' | 'chatglm2'; dir?: string }): Promise<Tokenizer> {
  const { family, dir } = opts;
  if (family === 'gpt2') {
    if (dir && existsSync(join(dir, 'vocab.json')) && existsSync(join(dir, 'merges.txt'))) {
      const [vocab, merges] = await Promise.all([
        readFile(join(dir, 'vocab.json'), 'utf8'),
        readFile(join(dir, 'merges.txt'), 'utf8'),
      ]);
      return bpeTokenizer(
        new ByteLevelBpe(vocabularyFromHf(vocab, merges, dir)),
        'bpe',
        `${dir}/vocab.json + merges.txt`,
      );
    }
    return bpeTokenizer(await loadR50k(), 'r50k', "GPT-2's vocabulary (r50k_base from gpt-tokenizer)");
  }
  if (family === 'chatglm2') {
    if (dir && existsSync(join(dir, 'tokenizer.model'))) return chatglm2SentencePiece(join(dir, 'tokenizer.model'));
    return chatglm2Bytes();
  }
  throw new TokenizerError(`no tokenizer for model family ${JSON.stringify(family)}`);
}
