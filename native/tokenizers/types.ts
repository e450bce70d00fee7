// What every tokenizer offers the engine's callers: text <-> ids, and incremental decoding for streamed tokens.

export interface StreamDecoder {
  /** Takes newly generated ids; returns the text they complete (possibly '' while a character is still partial). */
  push(ids: number | readonly number[]): string;
  /** Ends the stream: returns whatever is still held back (a trailing partial character becomes U+FFFD). */
  flush(): string;
}

export interface Tokenizer {
  family: 'gpt2' | 'chatglm2';
  /** bpe: vocab.json + merges.txt; r50k: GPT-2's vocabulary from gpt-tokenizer; sentencepiece: tokenizer.model;
   *  bytes: ChatGLM2 fallback without tokenizer.model (UTF-8 bytes as ids, for illustration with random weights) */
  kind: 'bpe' | 'r50k' | 'sentencepiece' | 'bytes';
  /** where the vocabulary came from, for logs and the dashboard */
  source: string;
  /** ids the tokenizer can produce, special tokens included */
  vocabSize: number;
  eosTokenId: number;
  /** named special tokens (GPT-2: <|endoftext|>; ChatGLM2: [MASK] [gMASK] [sMASK] sop eop) */
  specialTokens: Readonly<Record<string, number>>;
  /** ids a model input starts with, as the family's reference tokenizer adds them (ChatGLM2: [gMASK] sop;
   *  GPT-2: none) — encode() leaves them out, encodePrompt() puts them in */
  promptPrefix: readonly number[];
  encode(text: string): number[];
  /** ids outside the vocabulary (e.g. the padding rows of ChatGLM2's 65024-row embedding) and ChatGLM2's special
   *  tokens decode to nothing, so text from a model with random weights still renders; the byte stand-in ('bytes'),
   *  whose vocabulary is almost none of the model's rows, shows each such id as a visible ⟨id N⟩ marker instead */
  decode(ids: readonly number[]): string;
  createStreamDecoder(): StreamDecoder;
}

export class TokenizerError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'TokenizerError';
  }
}
