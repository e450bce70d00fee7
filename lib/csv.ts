// CSV export (RFC 4180): fields with a comma, quote or line break are quoted, quotes doubled. Client-safe.

export type CsvValue = string | number | boolean | null | undefined | Date;

function cell(v: CsvValue): string {
  if (v == null) return '';
  const s = v instanceof Date ? v.toISOString() : typeof v === 'number' && !Number.isFinite(v) ? '' : String(v);
  // A leading =, +, - or @ makes spreadsheets evaluate the cell; runs carry user-written tags and notes.
  const safe = /^[=+@]/.test(s) || (/^-/.test(s) && Number.isNaN(Number(s))) ? `'${s}` : s;
  return /[",\r\n]/.test(safe) ? `"${safe.replace(/"/g, '""')}"` : safe;
}

export function toCsv(header: readonly string[], rows: readonly (readonly CsvValue[])[]): string {
  for (const [i, r] of rows.entries()) {
    if (r.length !== header.length)
      throw new Error(`CSV row ${i + 1} has ${r.length} fields, the header has ${header.length}`);
  }
  return `${[header, ...rows].map((r) => r.map(cell).join(',')).join('\r\n')}\r\n`;
}

/** Objects to CSV with the given columns in order. */
export function objectsToCsv<T>(
  columns: readonly { header: string; value: (row: T) => CsvValue }[],
  rows: readonly T[],
): string {
  return toCsv(
    columns.map((c) => c.header),
    rows.map((r) => columns.map((c) => c.value(r))),
  );
}
