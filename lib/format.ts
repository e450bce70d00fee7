// Number formatting for figures: one place decides units and precision, so tables, tooltips and exports agree.

export function formatMs(ms: number | null | undefined): string {
  if (ms == null || !Number.isFinite(ms)) return '—';
  if (ms >= 10_000) return `${(ms / 1000).toFixed(1)} s`;
  if (ms >= 1000) return `${(ms / 1000).toFixed(2)} s`;
  if (ms >= 100) return `${ms.toFixed(0)} ms`;
  if (ms >= 10) return `${ms.toFixed(1)} ms`;
  if (ms >= 1) return `${ms.toFixed(2)} ms`;
  return `${(ms * 1000).toFixed(0)} µs`;
}

const BYTE_UNITS = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
export function formatBytes(bytes: number | null | undefined): string {
  if (bytes == null || !Number.isFinite(bytes)) return '—';
  let v = bytes;
  let u = 0;
  while (Math.abs(v) >= 1024 && u < BYTE_UNITS.length - 1) {
    v /= 1024;
    u++;
  }
  return `${v.toFixed(u === 0 ? 0 : v >= 100 ? 0 : v >= 10 ? 1 : 2)} ${BYTE_UNITS[u]}`;
}

export function formatRate(tokensPerSec: number | null | undefined): string {
  if (tokensPerSec == null || !Number.isFinite(tokensPerSec)) return '—';
  if (tokensPerSec >= 1000) return `${(tokensPerSec / 1000).toFixed(2)}k tok/s`;
  return `${tokensPerSec.toFixed(tokensPerSec >= 100 ? 0 : 1)} tok/s`;
}

export function formatNumber(v: number | null | undefined, digits = 3): string {
  if (v == null || !Number.isFinite(v)) return '—';
  return Number(v.toPrecision(digits)).toLocaleString('en-US');
}

export function formatSpeedup(x: number | null | undefined): string {
  if (x == null || !Number.isFinite(x)) return '—';
  return `${x.toFixed(2)}×`;
}

export function formatPercent(fraction: number | null | undefined, signed = true): string {
  if (fraction == null || !Number.isFinite(fraction)) return '—';
  const p = fraction * 100;
  return `${signed && p > 0 ? '+' : ''}${p.toFixed(Math.abs(p) >= 10 ? 0 : 1)} %`;
}

export function formatDate(d: Date | string | null | undefined): string {
  if (d == null) return '—';
  const date = typeof d === 'string' ? new Date(d) : d;
  if (Number.isNaN(date.getTime())) return '—';
  return date.toISOString().replace('T', ' ').slice(0, 16);
}

/** "3 s ago", "5 min ago": for last-seen and queue times. */
export function formatAgo(d: Date | string | null | undefined, now: number = Date.now()): string {
  if (d == null) return 'never';
  const t = typeof d === 'string' ? Date.parse(d) : d.getTime();
  if (Number.isNaN(t)) return 'never';
  const s = Math.max(0, Math.round((now - t) / 1000));
  if (s < 60) return `${s} s ago`;
  if (s < 3600) return `${Math.floor(s / 60)} min ago`;
  if (s < 86400) return `${Math.floor(s / 3600)} h ago`;
  return `${Math.floor(s / 86400)} d ago`;
}

export const METHOD_LABEL: Record<string, string> = {
  naive: 'naive',
  fa1: 'FlashAttention-1',
  fa2: 'FlashAttention-2',
};

/** A configuration's method in the field's words: "FA2 + KV cache, TP=2, fp16". */
export function methodLabel(c: { attention: string; kvCache: boolean; tp: number; dtype?: string }): string {
  const att = c.attention === 'naive' ? 'naive' : c.attention.toUpperCase();
  const parts = [`${att}${c.kvCache ? ' + KV cache' : ''}`];
  if (c.tp > 1) parts.push(`TP=${c.tp}`);
  if (c.dtype) parts.push(c.dtype);
  return parts.join(', ');
}
