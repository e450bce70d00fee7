// The compare page's TP breakdown from the runs it was given: medians per configuration pooled over its runs'
// repeats, per-layer medians per run, TP=1 runs left out, and TP runs without a breakdown listed, not drawn.
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import type { TpBreakdown } from '../../contracts';
import type { CompareRun, RepeatPoint } from '../../lib/compare';
import { summarizeTpBreakdowns, tpBreakdownView } from '../../lib/tp-breakdown';

const b = (stepMs: number, allReduceMs: number, perLayer: number[]): TpBreakdown => ({
  stepMs,
  computeMs: stepMs - allReduceMs,
  allReduceMs,
  allReduceCount: 2 * perLayer.length,
  allReducePerLayerMs: perLayer,
});

const repeat = (tpBreakdown?: TpBreakdown): RepeatPoint => ({
  prefillMs: 1,
  tpotMs: 2,
  totalMs: 3,
  tokensPerSec: 4,
  peakMemBytes: 5,
  ...(tpBreakdown ? { tpBreakdown } : {}),
});

function run(id: string, tp: number, promptLength: number, repeats: RepeatPoint[]): CompareRun {
  return {
    id,
    config: {
      model: 'chatglm2-6b',
      attention: 'fa2',
      kvCache: true,
      tp,
      dtype: 'fp16',
      device: 'cuda',
      batchSize: 1,
      promptLength,
      newTokens: 64,
    },
    repeats,
    peakMemBytes: 5,
    agentName: 'a',
    gpuName: 'H100',
    driver: null,
    cudaVersion: null,
    engineBuild: 'e',
    backend: 'cuda',
    createdAt: '2026-01-01',
    ceilings: null,
  };
}

describe('summarizeTpBreakdowns', () => {
  it('takes the median of each figure and of each layer, and the share from the medians', () => {
    const s = summarizeTpBreakdowns([b(10, 3, [1, 2]), b(12, 4, [1.5, 2.5]), b(20, 5, [2, 3])]);
    assert.ok(s);
    assert.equal(s.repeats, 3);
    assert.equal(s.stepMs, 12);
    assert.equal(s.allReduceMs, 4);
    assert.equal(s.computeMs, 8);
    assert.equal(s.allReduceShare, 4 / 12);
    assert.equal(s.allReduceCount, 4);
    assert.deepEqual(s.perLayerMs, [1.5, 2.5]);
    assert.equal(s.outputExchangeMs, null, 'no repeat reports the logits exchange');
    assert.equal(summarizeTpBreakdowns([]), null);
  });

  it('takes the logits exchange from the repeats that report it', () => {
    const withExchange = (ms: number): TpBreakdown => ({ ...b(10, 3, [1, 1.5]), outputExchangeMs: ms });
    const s = summarizeTpBreakdowns([withExchange(0.5), b(12, 4, [1, 2]), withExchange(0.25), withExchange(0.75)]);
    assert.equal(s?.outputExchangeMs, 0.5);
  });
});

describe('tpBreakdownView', () => {
  it('pools runs of one configuration, names each by its degree, leaves TP=1 out and lists runs without one', () => {
    const view = tpBreakdownView([
      run('r-tp1', 1, 512, [repeat(), repeat()]),
      run('tp2aaa', 2, 512, [repeat(b(10, 2, [1, 1]))]),
      run('tp2bbb', 2, 512, [repeat(b(14, 4, [2, 2])), repeat()]),
      run('r-tp4', 4, 512, [repeat(b(8, 4, [2, 2])), repeat(b(9, 5, [2.5, 2.5]))]),
      run('r-tp2-old', 2, 256, [repeat(), repeat()]),
    ]);
    assert.deepEqual(
      view.configs.map((c) => [c.label, c.tp, c.runIds, c.summary.repeats, c.summary.stepMs, c.summary.allReduceMs]),
      [
        ['TP=2, prompt 512', 2, ['tp2aaa', 'tp2bbb'], 2, 12, 3],
        ['TP=4, prompt 512', 4, ['r-tp4'], 2, 8.5, 4.5],
      ],
    );
    assert.deepEqual(view.without, [{ runId: 'r-tp2-old', label: 'TP=2, prompt 256' }]);
    // Two runs of one configuration: the picker tells them apart by id.
    assert.deepEqual(
      view.runs.map((r) => r.label),
      ['TP=2, prompt 512 · run tp2aaa', 'TP=2, prompt 512 · run tp2bbb', 'TP=4, prompt 512'],
    );
    assert.deepEqual(view.runs[2].summary.perLayerMs, [2.25, 2.25]);
  });

  it('names the degree even when nothing else differs', () => {
    const view = tpBreakdownView([run('x', 2, 512, [repeat(b(1, 0.5, [0.25]))])]);
    assert.equal(view.configs[0].label, 'TP=2');
    assert.deepEqual(tpBreakdownView([run('y', 1, 512, [repeat()])]), { configs: [], runs: [], without: [] });
  });
});
