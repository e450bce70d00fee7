// Configurations that share an engine are measured interleaved (repeat r of each before repeat r + 1 of any), on one
// engine load, and a configuration that fails does not take the others down.
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { EngineCache } from '../../agent/engine-cache';
import { runInterleaved } from '../../agent/runners/benchmark';
import type { JobConfig } from '../../contracts';
import { fakeEnvironment, tinyConfig } from './helpers';

const base: JobConfig = tinyConfig({
  weights: { kind: 'random', seed: 4 },
  attention: 'naive',
  promptLength: 6,
  newTokens: 3,
  warmup: 1,
  repeats: 2,
});
const environment = async () =>
  fakeEnvironment({ agentName: 't', nodeVersion: process.version, startedAt: new Date().toISOString() });

describe('runInterleaved', () => {
  it('runs warm-ups first, then repeat r of every configuration before repeat r + 1, on one engine load', async () => {
    const lines: string[] = [];
    const engines = new EngineCache();
    const configs = [
      base,
      { ...base, attention: 'fa2' as const },
      { ...base, kvCache: false, batchSize: 2, promptLength: 9 },
    ];
    try {
      const outcomes = await runInterleaved(configs, {
        engines,
        signal: new AbortController().signal,
        environment,
        log: (_l, text) => lines.push(text),
      });
      assert.equal(outcomes.length, 3);
      for (const [i, o] of outcomes.entries()) {
        assert.ok('result' in o, 'error' in o ? o.error : '');
        assert.deepEqual(o.config, configs[i]);
        assert.equal(o.result.repeats.length, 2);
      }
      assert.equal(lines.filter((l) => /engine loaded/.test(l)).length, 1, 'one engine for all three');
      const order = lines
        .filter((l) => /warm-up|repeat/.test(l))
        .map((l) => {
          const m = /^(\w+) kv=(\w+) b(\d).*?(warm-up|repeat) (\d)/.exec(l);
          return m ? `${m[1]}/${m[2]}/${m[4]}${m[5]}` : l;
        });
      assert.deepEqual(order, [
        'naive/on/warm-up1',
        'fa2/on/warm-up1',
        'naive/off/warm-up1',
        'naive/on/repeat1',
        'fa2/on/repeat1',
        'naive/off/repeat1',
        'naive/on/repeat2',
        'fa2/on/repeat2',
        'naive/off/repeat2',
      ]);
    } finally {
      engines.dispose();
    }
  });

  it('reports a configuration that cannot run and measures the rest', async () => {
    const engines = new EngineCache();
    try {
      const outcomes = await runInterleaved([{ ...base, promptLength: 510, newTokens: 5 }, base], {
        engines,
        signal: new AbortController().signal,
        environment,
        log: () => {},
      });
      assert.ok('error' in outcomes[0] && /exceeds gpt2-tiny's 512 positions/.test(outcomes[0].error));
      assert.ok('result' in outcomes[1]);
    } finally {
      engines.dispose();
    }
  });
});
