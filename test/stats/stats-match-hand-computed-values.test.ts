// The dashboard's statistics against values worked out by hand (in the comments), so a wrong formula fails here.
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { configKey } from '../../contracts/experiment';
import {
  bootstrapSpeedup,
  groupRepeats,
  mean,
  median,
  p90,
  quantile,
  relativeChange,
  seededRandom,
  std,
  summarize,
} from '../../lib/stats';

const close = (actual: number, expected: number, tol = 1e-9) =>
  assert.ok(Math.abs(actual - expected) <= tol, `expected ${expected}, got ${actual}`);

describe('summaries of repeats', () => {
  it('summarises [4, 1, 3, 2]', () => {
    const s = summarize([4, 1, 3, 2]);
    // sorted 1 2 3 4: median (2+3)/2; mean 10/4; squares of deviations 2.25+0.25+0.25+2.25 = 5, / (n-1) = 5/3
    close(s.median, 2.5);
    close(s.mean, 2.5);
    close(s.std, Math.sqrt(5 / 3));
    // p90: position 0.9 * 3 = 2.7 between 3 and 4 -> 3.7
    close(s.p90, 3.7);
    assert.equal(s.min, 1);
    assert.equal(s.max, 4);
  });

  it('gives a single repeat no spread', () => {
    assert.deepEqual(summarize([7]), { median: 7, mean: 7, std: 0, p90: 7, min: 7, max: 7 });
  });

  it('computes the helpers on odd counts', () => {
    // 2 4 4 4 5 5 7 9: mean 5, squared deviations 9+1+1+1+0+0+4+16 = 32, /7
    close(std([2, 4, 4, 4, 5, 5, 7, 9]), Math.sqrt(32 / 7));
    close(mean([2, 4, 4, 4, 5, 5, 7, 9]), 5);
    close(median([5, 1, 9]), 5);
    // 10 values 1..10: p90 position 8.1 -> 9 + 0.1
    close(p90([1, 2, 3, 4, 5, 6, 7, 8, 9, 10]), 9.1);
    close(quantile([10, 20], 0.25), 12.5);
  });

  it('refuses what has no meaning', () => {
    assert.throws(() => summarize([]), /no values/);
    assert.throws(() => summarize([1, Number.NaN]), /finite/);
    assert.throws(() => quantile([1], 1.5), /within \[0, 1\]/);
  });
});

describe('bootstrap interval of a speedup', () => {
  it('brackets the speedup by the resampled candidate means', () => {
    // Baseline always 10. Candidate [4, 6] resamples to mean 4 (p 1/4), 5 (p 1/2) or 6 (p 1/4):
    // ratios 2.5, 2, 5/3. The 2.5 % and 97.5 % percentiles fall inside the outer quarters: [5/3, 2.5].
    const ci = bootstrapSpeedup([10, 10], [4, 6], { seed: 7 });
    close(ci.speedup, 2);
    close(ci.lower, 5 / 3);
    close(ci.upper, 2.5);
    assert.equal(ci.includesOne, false);
    assert.equal(ci.confidence, 0.95);
    assert.equal(ci.baselineCount, 2);
    assert.equal(ci.candidateCount, 2);
  });

  it('flags an interval that includes 1x', () => {
    // Baseline [1, 3] resamples to 1, 2, 3 (p 1/4, 1/2, 1/4) over a constant 2: ratios 0.5, 1, 1.5.
    const ci = bootstrapSpeedup([1, 3], [2, 2], { seed: 3 });
    close(ci.speedup, 1);
    close(ci.lower, 0.5);
    close(ci.upper, 1.5);
    assert.equal(ci.includesOne, true);
  });

  it('uses the median when asked', () => {
    // Candidate [1, 1, 100]: its median is 1 unless two or three draws are 100 (p = 7/27 ≈ 0.26), so the
    // 2.5 % percentile of 100/median is 1 and the 97.5 % is 100; the point estimate is 100/1.
    const ci = bootstrapSpeedup([100, 100, 100], [1, 1, 100], { statistic: 'median', seed: 11 });
    close(ci.speedup, 100);
    close(ci.lower, 1);
    close(ci.upper, 100);
    assert.equal(ci.includesOne, true);
  });

  it('is reproducible for a seed, and the seed matters', () => {
    const base = [10.2, 11.9, 10.7, 12.4, 9.8, 11.1];
    const cand = [8.1, 9.4, 7.7, 8.8, 9.9, 8.3];
    const a = bootstrapSpeedup(base, cand, { seed: 42 });
    const b = bootstrapSpeedup(base, cand, { seed: 42 });
    const c = bootstrapSpeedup(base, cand, { seed: 43 });
    assert.deepEqual(a, b);
    assert.notEqual(a.lower, c.lower);
    assert.ok(a.lower < a.speedup && a.speedup < a.upper);
    // A 99 % interval contains the 95 % one.
    const wide = bootstrapSpeedup(base, cand, { seed: 42, confidence: 0.99 });
    assert.ok(wide.lower <= a.lower && wide.upper >= a.upper);
  });

  it('refuses inputs that cannot form a ratio', () => {
    assert.throws(() => bootstrapSpeedup([], [1]), /baseline has no repeats/);
    assert.throws(() => bootstrapSpeedup([1], []), /candidate has no repeats/);
    assert.throws(() => bootstrapSpeedup([1], [0]), /positive/);
    assert.throws(() => bootstrapSpeedup([1], [1], { iterations: 5 }), /at least 100/);
    assert.throws(() => bootstrapSpeedup([1], [1], { confidence: 1 }), /confidence/);
  });

  it('draws uniform numbers from the seeded generator', () => {
    const r = seededRandom(5);
    let sum = 0;
    for (let i = 0; i < 20000; i++) {
      const x = r();
      assert.ok(x >= 0 && x < 1);
      sum += x;
    }
    close(sum / 20000, 0.5, 0.01);
  });
});

describe('grouping repeats of one configuration', () => {
  const cfg = {
    model: 'gpt2',
    attention: 'fa2',
    kvCache: true,
    tp: 1,
    dtype: 'fp16',
    device: 'cuda',
    batchSize: 1,
    promptLength: 128,
    newTokens: 256,
    weights: { kind: 'random', seed: 0 },
  } as const;

  it('pools the repeats of runs with the same configuration', () => {
    const groups = groupRepeats([
      { id: 'a', config: cfg, values: [1, 2] },
      { id: 'b', config: { ...cfg, attention: 'naive' }, values: [5] },
      { id: 'c', config: cfg, values: [3] },
    ]);
    assert.equal(groups.length, 2);
    // fa2: values 1 2 3 -> mean 2, std sqrt((1+0+1)/2) = 1
    assert.deepEqual(groups[0].runIds, ['a', 'c']);
    assert.equal(groups[0].count, 3);
    close(groups[0].mean, 2);
    close(groups[0].std, 1);
    close(groups[0].median, 2);
    assert.deepEqual(groups[1].runIds, ['b']);
    close(groups[1].mean, 5);
    close(groups[1].std, 0);
  });

  it('treats every measured field as part of the configuration', () => {
    assert.notEqual(configKey(cfg), configKey({ ...cfg, kvCache: false }));
    assert.notEqual(configKey(cfg), configKey({ ...cfg, promptLength: 1024 }));
    assert.equal(configKey(cfg), configKey({ ...cfg }));
    // Different weights are different configurations, even with every method setting equal.
    assert.notEqual(configKey(cfg), configKey({ ...cfg, weights: { kind: 'random', seed: 1 } }));
  });

  it('states relative changes as the study does', () => {
    // KV cache: 54.9 s -> 12.3 s is -77.6 %, the study's "-78 %"
    close(relativeChange(54.9, 12.3), -0.77595628, 1e-6);
  });
});
