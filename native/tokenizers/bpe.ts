// GPT-2's byte-level BPE: text is split by GPT-2's pre-tokenisation pattern, each piece's UTF-8 bytes are
// mapped to printable characters (the bytes_to_unicode table of the original encoder.py), and adjacent
// symbols are merged, lowest rank first. Two vocabulary sources share this code: a checkpoint's
// vocab.json + merges.txt (rank of a pair = its line in merges.txt) and tiktoken's r50k_base ranks shipped
// by gpt-tokenizer (rank of a pair = rank of the merged token), which are GPT-2's own vocabulary.
import { TokenizerError } from './types';

// GPT-2's pattern; \p{White_Space} rather than \s, which in JavaScript also matches U+FEFF.
const PRETOKENIZE =
  /'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\p{White_Space}\p{L}\p{N}]+|\p{White_Space}+(?!\P{White_Space})|\p{White_Space}+/gu;
const CACHE_LIMIT = 50_000;

/** bytes_to_unicode: printable bytes map to themselves, the rest to code points from 256 up. */
function byteTables(): { byteToChar: string[]; charToByte: Map<string, number> } {
  const printable: number[] = [];
  for (let b = 0x21; b <= 0x7e; b++) printable.push(b);
  for (let b = 0xa1; b <= 0xac; b++) printable.push(b);
  for (let b = 0xae; b <= 0xff; b++) printable.push(b);
  const byteToChar = new Array<string>(256);
  let extra = 0;
  for (let b = 0; b < 256; b++) {
    byteToChar[b] = String.fromCodePoint(printable.includes(b) ? b : 256 + extra++);
  }
  const charToByte = new Map(byteToChar.map((c, b) => [c, b]));
  return { byteToChar, charToByte };
}
const { byteToChar, charToByte } = byteTables();

export function bytesToSymbols(bytes: Uint8Array): string {
  let s = '';
  for (const b of bytes) s += byteToChar[b];
  return s;
}

export interface BpeVocabulary {
  /** token (in byte-to-unicode symbols) -> id */
  tokenToId: Map<string, number>;
  /** merge priority of two adjacent symbols, undefined when they never merge */
  pairRank(left: string, right: string): number | undefined;
  /** special tokens matched verbatim in text before BPE (e.g. <|endoftext|>) */
  specialTokens: Map<string, number>;
  unknownId?: number;
}

export class ByteLevelBpe {
  private readonly idToBytes: Array<Uint8Array | undefined>;
  private readonly cache = new Map<string, number[]>();
  private readonly specialPattern: RegExp | null;
  readonly vocabSize: number;

  constructor(private readonly vocab: BpeVocabulary) {
    let maxId = -1;
    for (const id of vocab.tokenToId.values()) maxId = Math.max(maxId, id);
    for (const id of vocab.specialTokens.values()) maxId = Math.max(maxId, id);
    this.vocabSize = maxId + 1;
    this.idToBytes = new Array(this.vocabSize);
    for (const [token, id] of vocab.tokenToId) {
      const bytes = new Uint8Array(token.length);
      let ok = true;
      let n = 0;
      for (const ch of token) {
        const b = charToByte.get(ch);
        if (b === undefined) {
          ok = false;
          break;
        }
        bytes[n++] = b;
      }
      this.idToBytes[id] = ok ? bytes.subarray(0, n) : new TextEncoder().encode(token);
    }
    for (const [token, id] of vocab.specialTokens) this.idToBytes[id] = new TextEncoder().encode(token);
    const specials = [...vocab.specialTokens.keys()].sort((a, b) => b.length - a.length);
    this.specialPattern = specials.length
      ? new RegExp(specials.map((s) => s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')).join('|'), 'g')
      : null;
  }

  encode(text: string): number[] {
    const out: number[] = [];
    let last = 0;
    if (this.specialPattern) {
      for (const m of text.matchAll(this.specialPattern)) {
        this.encodeOrdinary(text.slice(last, m.index), out);
        out.push(this.vocab.specialTokens.get(m[0]) as number);
        last = (m.index as number) + m[0].length;
      }
    }
    this.encodeOrdinary(text.slice(last), out);
    return out;
  }

  private encodeOrdinary(text: string, out: number[]): void {
    const encoder = new TextEncoder();
    for (const m of text.matchAll(PRETOKENIZE)) {
      const word = bytesToSymbols(encoder.encode(m[0]));
      let ids = this.cache.get(word);
      if (!ids) {
        ids = this.bpe(word).map((tok) => this.idOf(tok));
        if (this.cache.size >= CACHE_LIMIT) this.cache.clear();
        this.cache.set(word, ids);
      }
      out.push(...ids);
    }
  }

  private idOf(token: string): number {
    const id = this.vocab.tokenToId.get(token);
    if (id !== undefined) return id;
    if (this.vocab.unknownId !== undefined) return this.vocab.unknownId;
    throw new TokenizerError(
      `byte-level BPE produced '${token}', which is not in the vocabulary (vocab.json lacks a byte?)`,
    );
  }

  /** Merges the lowest-ranked adjacent pair, all its occurrences at once, until no pair has a rank. */
  private bpe(word: string): string[] {
    let symbols = Array.from(word);
    while (symbols.length > 1) {
      let best = Number.POSITIVE_INFINITY;
      let bestAt = -1;
      for (let i = 0; i < symbols.length - 1; i++) {
        const r = this.vocab.pairRank(symbols[i], symbols[i + 1]);
        if (r !== undefined && r < best) {
          best = r;
          bestAt = i;
        }
      }
      if (bestAt < 0) break;
      const left = symbols[bestAt];
      const right = symbols[bestAt + 1];
      const merged: string[] = [];
      for (let i = 0; i < symbols.length; i++) {
        if (i < symbols.length - 1 && symbols[i] === left && symbols[i + 1] === right) {
          merged.push(left + right);
          i++;
        } else merged.push(symbols[i]);
      }
      symbols = merged;
    }
    return symbols;
  }

  /** The bytes of `ids`; ids that are no token are skipped. */
  decodeBytes(ids: readonly number[]): Uint8Array {
    const parts: Uint8Array[] = [];
    let n = 0;
    for (const id of ids) {
      const b = Number.isInteger(id) && id >= 0 ? this.idToBytes[id] : undefined;
      if (b) {
        parts.push(b);
        n += b.length;
      }
    }
    const out = new Uint8Array(n);
    let at = 0;
    for (const p of parts) {
      out.set(p, at);
      at += p.length;
    }
    return out;
  }

  decode(ids: readonly number[]): string {
    // invalid UTF-8 becomes U+FFFD, as GPT2Tokenizer's errors='replace'
    return new TextDecoder('utf-8').decode(this.decodeBytes(ids));
  }
}

/** vocab.json + merges.txt as written by GPT2Tokenizer / tokenizers' ByteLevelBPETokenizer. */
export function vocabularyFromHf(vocabJson: string, mergesTxt: string, where: string): BpeVocabulary {
  let raw: unknown;
  try {
    raw = JSON.parse(vocabJson);
  } catch (err) {
    throw new TokenizerError(`${where}/vocab.json is not valid JSON (${(err as Error).message})`);
  }
  if (typeof raw !== 'object' || raw === null || Array.isArray(raw))
    throw new TokenizerError(`${where}/vocab.json is not an object`);
  const tokenToId = new Map<string, number>();
  const seen = new Set<number>();
  for (const [tok, id] of Object.entries(raw as Record<string, unknown>)) {
    if (typeof id !== 'number' || !Number.isSafeInteger(id) || id < 0) {
      throw new TokenizerError(`${where}/vocab.json maps '${tok}' to ${JSON.stringify(id)}, not a token id`);
    }
    if (seen.has(id)) throw new TokenizerError(`${where}/vocab.json gives id ${id} to two tokens`);
    seen.add(id);
    tokenToId.set(tok, id);
  }
  const ranks = new Map<string, number>();
  const lines = mergesTxt.split('\n');
  let rank = 0;
  for (let i = 0; i < lines.length; i++) {
    const line = lines[i].replace(/\r$/, '');
    if (line === '' || (i === 0 && line.startsWith('#version'))) continue;
    const parts = line.split(' ');
    if (parts.length !== 2 || !parts[0] || !parts[1]) {
      throw new TokenizerError(
        `${where}/merges.txt line ${i + 1} is not two symbols separated by a space: ${JSON.stringify(line)}`,
      );
    }
    const key = `${parts[0]} ${parts[1]}`;
    if (!ranks.has(key)) ranks.set(key, rank);
    rank++;
  }
  const specialTokens = new Map<string, number>();
  const eot = tokenToId.get('<|endoftext|>');
  if (eot !== undefined) specialTokens.set('<|endoftext|>', eot);
  return {
    tokenToId,
    pairRank: (a, b) => ranks.get(`${a} ${b}`),
    specialTokens,
    unknownId: eot,
  };
}

/** A tiktoken rank file ("<base64 bytes> <rank>" per line) plus its special tokens. */
export function vocabularyFromTiktoken(text: string, specials: Record<string, number>, where: string): BpeVocabulary {
  const tokenToId = new Map<string, number>();
  for (const [i, line] of text.split('\n').entries()) {
    if (line === '') continue;
    const sp = line.indexOf(' ');
    const rank = Number(line.slice(sp + 1));
    if (sp < 0 || !Number.isSafeInteger(rank))
      throw new TokenizerError(`${where} line ${i + 1} is not '<base64> <rank>'`);
    tokenToId.set(bytesToSymbols(Buffer.from(line.slice(0, sp), 'base64')), rank);
  }
  return {
    tokenToId,
    // tiktoken merges the pair whose concatenation has the lowest rank
    pairRank: (a, b) => tokenToId.get(a + b),
    specialTokens: new Map(Object.entries(specials)),
  };
}
