// The real CPU engine at TP=2 reports each measured repeat's compute / all-reduce split, and it flows unchanged
// through the agent's runner and `flashlab run` into a results file that `flashlab import` accepts.
import assert from 'node:assert/strict';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { EngineCache } from '../../agent/engine-cache';
import { runBenchmark } from '../../agent/runners/benchmark';
import { main as runCli } from '../../cli/run';
import { OfflineResults } from '../../contracts';
import { KNOWN_MODELS } from '../../contracts/models';
import { fakeEnvironment, tinyConfig, tinySpec } from './helpers';

const close = (a: number, b: number, what: string) =>
  assert.ok(Math.abs(a - b) <= 1e-6 * Math.max(1, Math.abs(b)), `${what}: ${a} vs ${b}`);

describe('TP breakdown from the real CPU engine', () => {
  it('the agent runner puts a breakdown into every measured repeat at TP=2', async () => {
    const engines = new EngineCache();
    const model = KNOWN_MODELS['chatglm2-tiny'];
    try {
      const result = await runBenchmark(
        tinyConfig({ model: 'chatglm2-tiny', tp: 2, promptLength: 6, newTokens: 4, warmup: 1, repeats: 2 }),
        {
          engines,
          signal: new AbortController().signal,
          environment: async () => fakeEnvironment(),
          log: () => {},
          progress: () => {},
        },
      );
      assert.equal(result.repeats.length, 2);
      for (const r of result.repeats) {
        const b = r.tpBreakdown;
        assert.ok(b, 'every measured repeat has one');
        assert.equal(b.allReducePerLayerMs.length, model.numLayers);
        assert.equal(b.allReduceCount, 2 * model.numLayers + 1, 'two per layer and the output logits exchange');
        assert.ok(b.stepMs > 0 && b.allReduceMs > 0 && b.computeMs > 0);
        assert.ok(b.allReduceMs <= b.stepMs && b.computeMs <= b.stepMs);
        close(
          b.allReducePerLayerMs.reduce((s, v) => s + v, 0) + (b.outputExchangeMs ?? Number.NaN),
          b.allReduceMs,
          'the layers and the output exchange add up to the all-reduce time',
        );
      }
      assert.ok(result.summary.tpAllReduceMs && result.summary.tpComputeMs);
    } finally {
      engines.dispose();
    }
  });

  it('flashlab run writes it for TP=2 runs only, in a file import accepts', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'flashlab-tpb-'));
    try {
      const plan = join(dir, 'plan.json');
      const out = join(dir, 'results.json');
      await writeFile(
        plan,
        JSON.stringify({
          experiment: tinySpec({ name: 'tp breakdown', tp: [1, 2], promptLengths: [5], newTokens: [3], repeats: 2 }),
        }),
      );
      assert.equal(await runCli([plan, '--out', out]), 0);
      const results = OfflineResults.parse(JSON.parse(await readFile(out, 'utf8')));
      const byTp = new Map(results.runs.map((r) => [r.config.tp, r]));
      assert.ok(
        byTp.get(1)?.repeats.every((r) => r.tpBreakdown === undefined),
        'TP=1 has no all-reduce to time',
      );
      const tp2 = byTp.get(2);
      assert.ok(tp2?.repeats.length === 2 && tp2.repeats.every((r) => r.tpBreakdown?.allReducePerLayerMs.length === 2));
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });
});
