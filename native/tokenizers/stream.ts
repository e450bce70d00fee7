// Incremental detokenisation: turning generated ids into text as they arrive without emitting a character
// before all of its bytes are there (a token may end in the middle of a UTF-8 sequence).
import type { StreamDecoder } from './types';

/** For tokenizers whose tokens are byte strings (byte-level BPE, the byte stand-in): a streaming UTF-8
 *  decoder over the tokens' bytes, exact by construction. */
export function byteStreamDecoder(decodeBytes: (ids: readonly number[]) => Uint8Array): StreamDecoder {
  const utf8 = new TextDecoder('utf-8');
  return {
    push: (ids) => utf8.decode(decodeBytes(typeof ids === 'number' ? [ids] : ids), { stream: true }),
    flush: () => utf8.decode(),
  };
}

const REPLACEMENT = '\uFFFD';
// SentencePiece pieces are whole characters except byte-fallback pieces, at most 4 per character: a longer
// wait means the bytes are invalid and will not complete.
const MAX_PENDING = 8;

/** For tokenizers that only decode whole id lists (SentencePiece, which also drops the leading space of the
 *  first piece it decodes): decode a window that starts at the last emitted boundary and emit what it adds;
 *  a window ending in U+FFFD waits for the rest of its character. */
export function windowStreamDecoder(decode: (ids: readonly number[]) => string): StreamDecoder {
  const ids: number[] = [];
  let prefixOffset = 0; // start of the context window
  let readOffset = 0; // ids before this are already emitted
  const step = (final: boolean): string => {
    const prefixText = decode(ids.slice(prefixOffset, readOffset));
    const text = decode(ids.slice(prefixOffset));
    const stalled = ids.length - readOffset > MAX_PENDING;
    if (text.length > prefixText.length && (final || stalled || !text.endsWith(REPLACEMENT))) {
      prefixOffset = readOffset;
      readOffset = ids.length;
      return text.slice(prefixText.length);
    }
    return '';
  };
  return {
    push(next) {
      if (typeof next === 'number') ids.push(next);
      else ids.push(...next);
      return step(false);
    },
    flush: () => step(true),
  };
}
