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

/** The visible stand-in for an id a tokenizer has no text for. */
export const unknownIdMarker = (id: number, name?: string): string => (name ? `⟨${name}⟩` : `⟨id ${id}⟩`);

/** For a byte-level vocabulary where only ids byteBase..byteBase+255 are bytes: bytes decode as streaming UTF-8,
 *  every other id becomes a marker (its name, if it has one, else its number). A character left incomplete by
 *  the bytes before a marker can never complete, so it is released as U+FFFD right there, ahead of the marker,
 *  exactly as decoding the whole list at once does. */
export function markerStreamDecoder(byteBase: number, names: ReadonlyMap<number, string>): StreamDecoder {
  // ignoreBOM: a U+FEFF after a marker is text, not a byte-order mark to drop.
  const utf8 = new TextDecoder('utf-8', { ignoreBOM: true });
  const one = (id: number): string => {
    if (Number.isInteger(id) && id >= byteBase && id < byteBase + 256)
      return utf8.decode(Uint8Array.of(id - byteBase), { stream: true });
    // A non-streaming call ends the pending sequence (U+FFFD) and leaves the decoder ready for the next bytes.
    return utf8.decode() + unknownIdMarker(id, names.get(id));
  };
  return {
    push: (ids) => (typeof ids === 'number' ? one(ids) : ids.map(one).join('')),
    flush: () => utf8.decode(),
  };
}
