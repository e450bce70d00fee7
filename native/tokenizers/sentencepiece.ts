// SentencePiece tokenizer.model through @agnai/sentencepiece-js (Google's sentencepiece compiled to wasm).
// The wrapper neither reports a failed load nor exposes the vocabulary size, so the model file is first
// checked here (a ModelProto whose repeated field 1 holds the pieces) and the load status is read back.
import { readFile } from 'node:fs/promises';
import spjs from '@agnai/sentencepiece-js';
import { TokenizerError } from './types';

export interface SentencePieceModel {
  pieceCount: number;
  encode(text: string): number[];
  /** ids must be < pieceCount */
  decode(ids: readonly number[]): string;
  pieceToId(piece: string): number;
}

function readVarint(buf: Uint8Array, pos: number, where: string): [number, number] {
  let v = 0;
  let mul = 1;
  for (let i = 0; i < 10; i++) {
    if (pos >= buf.length) throw new TokenizerError(`${where} is truncated (varint at byte ${pos})`);
    const b = buf[pos++];
    v += (b & 0x7f) * mul;
    if (!(b & 0x80)) {
      if (!Number.isSafeInteger(v)) break;
      return [v, pos];
    }
    mul *= 128;
  }
  throw new TokenizerError(`${where} is not a SentencePiece model (bad varint at byte ${pos})`);
}

/** Counts the pieces of a ModelProto, checking that every top-level field is well formed. */
export function countPieces(buf: Uint8Array, where: string): number {
  let pos = 0;
  let pieces = 0;
  while (pos < buf.length) {
    let key: number;
    [key, pos] = readVarint(buf, pos, where);
    const field = Math.floor(key / 8);
    const wire = key & 7;
    if (field === 0) throw new TokenizerError(`${where} is not a SentencePiece model (field 0 at byte ${pos})`);
    if (wire === 0) [, pos] = readVarint(buf, pos, where);
    else if (wire === 1) pos += 8;
    else if (wire === 5) pos += 4;
    else if (wire === 2) {
      let len: number;
      [len, pos] = readVarint(buf, pos, where);
      pos += len;
      if (field === 1) pieces++;
    } else throw new TokenizerError(`${where} is not a SentencePiece model (wire type ${wire} at byte ${pos})`);
    if (pos > buf.length) throw new TokenizerError(`${where} is truncated`);
  }
  if (pieces === 0) throw new TokenizerError(`${where} holds no pieces: not a SentencePiece model`);
  return pieces;
}

type Processor = {
  sentencepiece: { StringView: new (s: string) => { getView(): { delete(): void }; delete(): void } };
  processor: {
    status(): { ToString(): string; delete?: () => void };
    PieceToId(view: unknown): number;
  };
  load(path: string): Promise<void>;
  encodeIds(text: string): number[];
  decodeIds(ids: number[]): string;
};

export async function loadSentencePiece(path: string): Promise<SentencePieceModel> {
  let bytes: Buffer;
  try {
    bytes = await readFile(path);
  } catch (err) {
    throw new TokenizerError(`cannot read ${path}: ${(err as NodeJS.ErrnoException).code ?? String(err)}`);
  }
  const pieceCount = countPieces(bytes, path);
  const sp = new spjs.SentencePieceProcessor() as unknown as Processor;
  await sp.load(path);
  const status = sp.processor.status();
  const statusText = status.ToString();
  status.delete?.();
  if (statusText !== 'OK') throw new TokenizerError(`sentencepiece could not load ${path}: ${statusText}`);
  return {
    pieceCount,
    encode: (text) => sp.encodeIds(text),
    decode: (ids) => sp.decodeIds([...ids]),
    pieceToId(piece) {
      const sv = new sp.sentencepiece.StringView(piece);
      const view = sv.getView();
      try {
        return sp.processor.PieceToId(view);
      } finally {
        view.delete();
        sv.delete();
      }
    },
  };
}
