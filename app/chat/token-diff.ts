// Side-by-side chat compares two answers token by token. The agent streams ids in batches (one delta per ~50 ms)
// with the text they add, so the browser knows a token's text exactly only where a delta ends; elsewhere it knows
// the span of the batch that holds it. Two answers that agree on their first k ids have the same text up to where
// token k starts (the detokeniser is a function of the ids so far), which lets either side's delta ends, and the
// first differing character, place the first differing token in both texts. Pure, client-safe.

/** After `tokens` ids, the answer's text was `chars` long (a delta's end, as streamed). */
export interface TextMark {
  tokens: number;
  chars: number;
}

/** What the browser holds of one streamed answer. */
export interface StreamedTokens {
  text: string;
  /** Ids by their index in the answer. */
  tokenIds: number[];
  /** Delta ends, sorted by `tokens`, starting with { tokens: 0, chars: 0 }. */
  marks: TextMark[];
}

export const EMPTY_STREAM: StreamedTokens = { text: '', tokenIds: [], marks: [{ tokens: 0, chars: 0 }] };

/** Folds one streamed item (a delta, or the first item of a late subscription that carries everything so far) in.
 *  An item seen twice (a reconnect re-sends the answer so far) changes nothing. */
export function addDelta(
  s: StreamedTokens,
  item: { text: string; tokenIds?: readonly number[]; tokenStart?: number },
): StreamedTokens {
  if (!item.tokenIds) return { ...s, text: item.text };
  const start = item.tokenStart ?? s.tokenIds.length;
  const tokenIds = s.tokenIds.slice();
  item.tokenIds.forEach((id, i) => {
    tokenIds[start + i] = id;
  });
  const end = start + item.tokenIds.length;
  const marks = s.marks.filter((m) => m.tokens !== end);
  marks.push({ tokens: end, chars: item.text.length });
  marks.sort((x, y) => x.tokens - y.tokens);
  return { text: item.text, tokenIds, marks };
}

/** Index of the first token at which the id lists differ, or null when they do not (yet). While both still stream,
 *  a shorter list that is a prefix of the longer one is not a difference; once both have ended, stopping early is. */
export function firstDifferentToken(a: readonly number[], b: readonly number[], bothEnded = false): number | null {
  const n = Math.min(a.length, b.length);
  for (let i = 0; i < n; i++) if (a[i] !== b[i]) return i;
  return bothEnded && a.length !== b.length ? n : null;
}

/** A character range of an answer's text; `exact` when delta ends pin both of its edges. */
export interface TextSpan {
  start: number;
  end: number;
  exact: boolean;
}

export interface TokenDifference {
  /** Index (0-based) of the first token that differs; for an answer that stopped early, its token count. */
  index: number;
  /** The two ids there; undefined on the side that had already stopped. */
  idA: number | undefined;
  idB: number | undefined;
  spanA: TextSpan;
  spanB: TextSpan;
}

const lastAtOrBefore = (marks: readonly TextMark[], k: number) =>
  marks.reduce<TextMark | undefined>((best, m) => (m.tokens <= k ? m : best), undefined);
const firstAfter = (marks: readonly TextMark[], k: number) => marks.find((m) => m.tokens > k);

/** The first token where two streamed answers part, placed in both texts. `charDiff` is the first differing
 *  character (lib/text-diff), which lies at or after that token's start; it places the start when no delta end
 *  does. Null when the ids agree so far, or when a side is missing ids below the difference. */
export function tokenDifference(
  a: StreamedTokens,
  b: StreamedTokens,
  bothEnded: boolean,
  charDiff: number | null,
): TokenDifference | null {
  const k = firstDifferentToken(a.tokenIds, b.tokenIds, bothEnded);
  if (k == null) return null;
  for (let i = 0; i < k; i++) if (a.tokenIds[i] === undefined) return null;

  // Where token k starts: the same offset in both texts, pinned by a delta end at k on either side, else bounded
  // by the delta ends around it.
  const before = [lastAtOrBefore(a.marks, k), lastAtOrBefore(b.marks, k)];
  const pinned = before.find((m) => m?.tokens === k);
  let start: number;
  if (pinned) start = pinned.chars;
  else {
    const lo = Math.max(...before.map((m) => m?.chars ?? 0));
    const hi = Math.min(
      ...[firstAfter(a.marks, k)?.chars ?? a.text.length, firstAfter(b.marks, k)?.chars ?? b.text.length],
    );
    start = Math.min(Math.max(charDiff ?? lo, lo), Math.max(lo, hi));
  }

  const spanOf = (s: StreamedTokens): TextSpan => {
    const from = Math.min(start, s.text.length);
    const after = firstAfter(s.marks, k);
    if (!after) return { start: from, end: from, exact: !!pinned };
    const exact = !!pinned && after.tokens === k + 1;
    if (exact) return { start: from, end: Math.max(from, after.chars), exact };
    // The token arrived in a batch: mark from its start to the end of the word there, within the batch.
    const word = s.text.slice(from + 1, after.chars).search(/\s/);
    const end = word < 0 ? after.chars : from + 1 + word;
    return { start: from, end: Math.max(from, end), exact };
  };
  return { index: k, idA: a.tokenIds[k], idB: b.tokenIds[k], spanA: spanOf(a), spanB: spanOf(b) };
}
