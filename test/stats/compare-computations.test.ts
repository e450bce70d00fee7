// The compare page's derived figures, on runs whose answers are known by construction.
import assert from 'node:assert/strict';
import { it } from 'node:test';
import { KNOWN_MODELS } from '../../contracts/models';
import {
  type CompareRun,
  environmentDifferences,
  methodKey,
  methodsOf,
  rooflinePoints,
  seriesBy,
  speedups,
  studyComparison,
  tpScaling,
  workOf,
} from '../../lib/compare';

let n = 0;
function run(config: Partial<CompareRun['config']>, totals: number[], extra: Partial<CompareRun> = {}): CompareRun {
  const c = {
    model: 'gpt2',
    attention: 'naive',
    kvCache: true,
    tp: 1,
    dtype: 'fp16',
    device: 'cuda',
    batchSize: 1,
    promptLength: 128,
    newTokens: 64,
    ...config,
  } as CompareRun['config'];
  return {
    id: `r${n++}`,
    config: c,
    peakMemBytes: extra.peakMemBytes ?? 1000,
    repeats: totals.map((t) => ({
      totalMs: t,
      prefillMs: t / 10,
      tpotMs: t / 100,
      tokensPerSec: 1000 / t,
      peakMemBytes: extra.peakMemBytes ?? 1000,
    })),
    agentName: 'a',
    gpuName: 'NVIDIA H100',
    driver: '550.1',
    cudaVersion: '12.4',
    engineBuild: 'abc',
    backend: 'cuda',
    createdAt: new Date(0),
    ceilings: null,
    ...extra,
  };
}

it('draws one line per method against prompt length, at the median of the pooled repeats', () => {
  const runs = [
    run({ attention: 'naive', promptLength: 128 }, [10, 12, 14]),
    run({ attention: 'naive', promptLength: 256 }, [20, 22]),
    run({ attention: 'fa2', promptLength: 128 }, [5, 6, 7]),
    run({ attention: 'fa2', promptLength: 128 }, [8]), // a repeat of the same configuration in another run
  ];
  const chart = seriesBy(runs, 'promptLength', 'totalMs');
  assert.deepEqual(
    chart.series.map((s) => s.label),
    ['naive', 'FA2'],
  );
  assert.deepEqual(
    chart.rows.map((r) => r.x),
    [128, 256],
  );
  assert.equal(chart.rows[0].s0, 12);
  assert.equal(chart.rows[0].s1, 6.5); // median of 5 6 7 8
  assert.equal(chart.rows[1].s0, 21);
  assert.equal(chart.rows[1].s1, null); // fa2 never ran at 256
});

it('computes the speedup over the chosen baseline per shape, flagging overlap with 1x', () => {
  const runs = [
    run({ attention: 'naive', promptLength: 128 }, [10, 10, 10]),
    run({ attention: 'fa2', promptLength: 128 }, [4, 5, 6]),
    run({ attention: 'naive', promptLength: 512 }, [10, 11, 9]),
    run({ attention: 'fa2', promptLength: 512 }, [9, 11, 10]),
  ];
  const base = methodKey(runs[0].config);
  const rows = speedups(runs, base, 'totalMs', { seed: 5 });
  assert.equal(rows.length, 2);
  const [a, b] = rows;
  assert.equal(a.shape, 'prompt 128');
  assert.equal(a.method, 'FA2');
  assert.equal(a.speedup, 2); // 10 / median(4,5,6)
  assert.equal(a.includesOne, false);
  assert.ok(a.lower >= 10 / 6 - 1e-9 && a.upper <= 10 / 4 + 1e-9);
  assert.equal(b.shape, 'prompt 512');
  assert.equal(b.speedup, 1);
  assert.equal(b.includesOne, true);
  assert.deepEqual(
    methodsOf(runs).map((m) => m.label),
    ['naive', 'FA2'],
  );
});

it('measures tensor-parallel scaling against TP=1', () => {
  const runs = [run({ tp: 1, attention: 'fa2' }, [100]), run({ tp: 2, attention: 'fa2' }, [80])];
  const pts = tpScaling(runs);
  assert.deepEqual(
    pts.map((p) => [p.tp, p.speedup, p.efficiency]),
    [
      [1, 1, 1],
      [2, 1.25, 0.625],
    ],
  );
});

it('puts our figures beside the study’s', () => {
  const runs = [
    run({ attention: 'naive' }, [100], { peakMemBytes: 2000 }),
    run({ attention: 'fa1' }, [80]),
    run({ attention: 'fa2' }, [40], { peakMemBytes: 1300 }),
    run({ attention: 'naive', kvCache: false }, [500]),
  ];
  const byId = Object.fromEntries(studyComparison(runs).map((r) => [r.id, r]));
  assert.equal(byId.fa.ours, '+25 %'); // 100 / 80
  assert.equal(byId['fa2-time'].ours, '−60 %'); // 40 / 100
  assert.equal(byId['fa2-mem'].ours, '−35 %'); // 1300 / 2000
  assert.equal(byId.kv.ours, '−80 %'); // 100 / 500
  assert.equal(byId.tp.ours, null);
  assert.equal(byId.tp.points, 0);
});

it('warns when runs come from different GPUs, drivers or engine builds', () => {
  const runs = [run({}, [1]), run({}, [1], { gpuName: 'NVIDIA A100', engineBuild: 'def' })];
  assert.deepEqual(environmentDifferences(runs), [
    { field: 'GPU', values: ['NVIDIA A100', 'NVIDIA H100'] },
    { field: 'engine build', values: ['abc', 'def'] },
  ]);
  assert.deepEqual(environmentDifferences([run({}, [1]), run({}, [2])]), []);
});

it('counts the work of a forward pass from the model shape', () => {
  // gpt2-tiny, batch 1, prompt 2, fp32: weights per layer (4+8)*16*64 + 4*16*64 + 2*64*256 = 12288 + 4096 + 32768 = 49152
  // matmul params 2*49152 + 50257*64 = 98304 + 3216448 = 3314752; prefill flops 2*3314752*2 + 4*2*1*64*(2*3/2) = 13259008 + 1536
  const w = workOf(KNOWN_MODELS['gpt2-tiny'], {
    model: 'gpt2-tiny',
    attention: 'fa2',
    kvCache: true,
    tp: 1,
    dtype: 'fp32',
    device: 'cpu',
    batchSize: 1,
    promptLength: 2,
    newTokens: 2,
  });
  assert.equal(w.prefillFlops, 13259008 + 1536);
  const pts = rooflinePoints([run({ model: 'gpt2-tiny', attention: 'fa2' }, [10])]);
  assert.deepEqual(
    pts.map((p) => p.phase),
    ['prefill', 'decode'],
  );
  assert.ok(pts.every((p) => p.tflops > 0 && p.intensity > 0));
});
