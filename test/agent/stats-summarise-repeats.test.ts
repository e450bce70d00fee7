import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { summarize, summarizeRepeats } from '../../agent/stats';

const close = (a: number, b: number, eps = 1e-9) =>
  assert.ok(Math.abs(a - b) <= eps * Math.max(1, Math.abs(b)), `${a} != ${b}`);

describe('summarize', () => {
  it('matches numpy (median, mean, sample std, p90 type 7, min, max) on an unsorted list', () => {
    // numpy: np.median, np.mean, np.std(ddof=1), np.percentile(x, 90) of [4, 1, 3, 10, 2]
    const s = summarize([4, 1, 3, 10, 2]);
    assert.equal(s.median, 3);
    assert.equal(s.mean, 4);
    close(s.std, Math.sqrt(12.5)); // squared deviations 0+9+1+36+4 = 50, / (5 - 1)
    close(s.p90, 7.6); // position 3.6 between 4 and 10
    assert.equal(s.min, 1);
    assert.equal(s.max, 10);
  });

  it('interpolates the median of an even count and gives one value no spread', () => {
    assert.equal(summarize([1, 2, 3, 4]).median, 2.5);
    const one = summarize([7.25]);
    assert.deepEqual(one, { median: 7.25, mean: 7.25, std: 0, p90: 7.25, min: 7.25, max: 7.25 });
  });

  it('keeps precision for large, close values (bytes)', () => {
    const base = 2 ** 40;
    const s = summarize([base + 1, base + 2, base + 3]);
    close(s.std, 1, 1e-6);
    assert.equal(s.mean, base + 2);
  });

  it('refuses no values and non-finite values', () => {
    assert.throws(() => summarize([]), /no values/);
    assert.throws(() => summarize([1, Number.NaN]), /finite/);
    assert.throws(() => summarize([1, Number.POSITIVE_INFINITY]), /finite/);
  });
});

describe('summarizeRepeats', () => {
  const rep = (prefillMs: number, extra: object = {}) => ({
    prefillMs,
    tpotMs: prefillMs / 10,
    totalMs: prefillMs * 3,
    tokensPerSec: 1000 / prefillMs,
    peakMemBytes: 1e6,
    ...extra,
  });

  it('summarises every scalar figure, and optional ones only when every repeat has them', () => {
    const s = summarizeRepeats([rep(10, { kvCacheBytes: 5 }), rep(20, { kvCacheBytes: 7 }), rep(30)]);
    assert.deepEqual(Object.keys(s).sort(), ['peakMemBytes', 'prefillMs', 'tokensPerSec', 'totalMs', 'tpotMs']);
    assert.equal(s.prefillMs.median, 20);
    assert.equal(s.totalMs.max, 90);
    assert.equal(s.peakMemBytes.std, 0);
    const all = summarizeRepeats([
      rep(10, { kvCacheBytes: 5, weightsBytes: 9 }),
      rep(20, { kvCacheBytes: 7, weightsBytes: 9 }),
    ]);
    assert.equal(all.kvCacheBytes.mean, 6);
    assert.equal(all.weightsBytes.median, 9);
    assert.equal(
      (all as Record<string, unknown>).decodeMs,
      undefined,
      'per-token lists are kept per repeat, not summarised',
    );
  });

  it('refuses a run without repeats', () => {
    assert.throws(() => summarizeRepeats([]), /at least one repeat/);
  });
});
