// Where two streamed answers part ways. While both still stream, a shorter text that is a prefix of the longer one
// is not a difference yet; once both have ended, the shorter one stopping early is.

/** Index of the first character at which the texts differ, or null when they do not (yet). */
export function firstDifference(a: string, b: string, bothEnded = false): number | null {
  const n = Math.min(a.length, b.length);
  for (let i = 0; i < n; i++) if (a[i] !== b[i]) return i;
  return bothEnded && a.length !== b.length ? n : null;
}
