// Where two streamed answers part ways. While both still stream, a shorter text that is a prefix of the longer one
// is not a difference yet: only a differing character is.

/** Index of the first character at which both texts have a character and differ, or null. */
export function firstDifference(a: string, b: string): number | null {
  const n = Math.min(a.length, b.length);
  for (let i = 0; i < n; i++) if (a[i] !== b[i]) return i;
  return null;
}
