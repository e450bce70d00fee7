// The roofline view's roofs: a run's measured ceilings when its environment record has them, else the published
// peaks of a known card (labelled datasheet), scaled by the GPUs a TP run uses; none for the CPU or an unknown
// card. Values against NVIDIA's datasheet figures and hand-computed roofline arithmetic.
import assert from 'node:assert/strict';
import { it } from 'node:test';
import { KNOWN_MODELS } from '../../contracts/models';
import {
  attainableTflops,
  type CompareRun,
  datasheetPeak,
  roofLabel,
  rooflinePoints,
  rooflineRoofs,
  roofOf,
  workOf,
} from '../../lib/compare';

let n = 0;
function run(config: Partial<CompareRun['config']>, extra: Partial<CompareRun> = {}): CompareRun {
  return {
    id: `r${n++}`,
    config: {
      model: 'gpt2',
      attention: 'fa2',
      kvCache: true,
      tp: 1,
      dtype: 'fp16',
      device: 'cuda',
      batchSize: 1,
      promptLength: 512,
      newTokens: 64,
      ...config,
    } as CompareRun['config'],
    repeats: [{ totalMs: 100, prefillMs: 4, tpotMs: 1.5, tokensPerSec: 640, peakMemBytes: 1e9 }],
    peakMemBytes: 1e9,
    agentName: 'gpu-host',
    gpuName: 'NVIDIA H100 80GB HBM3',
    driver: '550.54',
    cudaVersion: '12.4',
    engineBuild: 'abc',
    backend: 'cuda',
    createdAt: new Date(0),
    ceilings: null,
    ...extra,
  };
}

it('knows the published peaks of the cards nvidia-smi names, and only those it can tell apart', () => {
  assert.deepEqual(datasheetPeak('NVIDIA H100 80GB HBM3', 'bf16'), { card: 'H100 SXM', tflops: 989, gbps: 3350 });
  assert.deepEqual(datasheetPeak('NVIDIA H200', 'fp16'), { card: 'H200', tflops: 989, gbps: 4800 });
  // fp32 GEMMs stay fp32 (no TF32): the roof is the card's fp32 peak, not its tensor-core one.
  assert.deepEqual(datasheetPeak('NVIDIA H100 80GB HBM3', 'fp32'), { card: 'H100 SXM', tflops: 67, gbps: 3350 });
  assert.deepEqual(datasheetPeak('NVIDIA H100 PCIe', 'fp16'), { card: 'H100 PCIe', tflops: 756, gbps: 2000 });
  assert.equal(datasheetPeak('NVIDIA A100-SXM4-80GB', 'fp16')?.gbps, 2039);
  // A bare "H100" could be SXM or PCIe (25 % apart): no guess. NVL and GH200 parts are not in the table.
  for (const name of ['NVIDIA H100', 'NVIDIA H100 NVL', 'NVIDIA H200 NVL', 'NVIDIA GH200 480GB', 'NVIDIA L40S'])
    assert.equal(datasheetPeak(name, 'fp16'), null, name);
  assert.equal(datasheetPeak(null, 'fp16'), null);
});

it('measured ceilings win over the datasheet; TP multiplies the roof by its GPUs; the CPU has none', () => {
  assert.deepEqual(roofOf(run({})), { source: 'datasheet', card: 'H100 SXM', gpus: 1, tflops: 989, gbps: 3350 });
  assert.deepEqual(roofOf(run({ tp: 2 }, { gpuName: 'NVIDIA H200' })), {
    source: 'datasheet',
    card: 'H200',
    gpus: 2,
    tflops: 1978,
    gbps: 9600,
  });
  assert.deepEqual(roofOf(run({}, { ceilings: { tflops: 700, gbps: 3000 } })), {
    source: 'measured',
    card: 'NVIDIA H100 80GB HBM3',
    gpus: 1,
    tflops: 700,
    gbps: 3000,
  });
  assert.equal(roofOf(run({ device: 'cpu' }, { gpuName: null, backend: 'cpu' })), null);
  assert.equal(roofOf(run({}, { gpuName: 'NVIDIA H100' })), null);
});

it('groups runs under distinct roofs, fp16 and bf16 sharing one, and lists the runs without one', () => {
  const runs = [
    run({ dtype: 'fp16' }),
    run({ dtype: 'bf16' }),
    run({ dtype: 'fp32' }),
    run({}, { gpuName: 'NVIDIA H200', ceilings: { tflops: 760, gbps: 4300 } }),
    run({ device: 'cpu', model: 'gpt2-tiny' }, { gpuName: null, backend: 'cpu' }),
  ];
  const { roofs, without } = rooflineRoofs(runs);
  assert.deepEqual(
    roofs.map((r) => [roofLabel(r), r.tflops, r.gbps, r.runIds.length]),
    [
      ['H100 SXM · bf16/fp16 · datasheet', 989, 3350, 2],
      ['H100 SXM · fp32 · datasheet', 67, 3350, 1],
      ['NVIDIA H200 · fp16 · measured', 760, 4300, 1],
    ],
  );
  assert.deepEqual(
    without.map((r) => r.id),
    [runs[4].id],
  );
  // The ridge: 989 TFLOP/s over 3350 GB/s = 295.2 FLOP/byte.
  assert.ok(Math.abs(roofs[0].ridge - 989_000 / 3350) < 1e-9);
});

it('attainable compute is the lower roof, and each point says what share of it it reached', () => {
  const roof = { tflops: 989, gbps: 3350 };
  assert.equal(attainableTflops(roof, 1), 3.35); // memory-bound: 3350 GB/s × 1 FLOP/byte
  assert.equal(attainableTflops(roof, 1000), 989); // compute-bound
  const r = run({});
  const [prefill, decode] = rooflinePoints([r]);
  const w = workOf(KNOWN_MODELS.gpt2, r.config);
  // prefill: 4 ms for its FLOPs; decode: 1.5 ms per token.
  const prefillTflops = w.prefillFlops / 0.004 / 1e12;
  const decodeTflops = w.decodeFlops / 0.0015 / 1e12;
  assert.equal(prefill.roof?.source, 'datasheet');
  assert.ok(Math.abs(prefill.tflops - prefillTflops) < 1e-9);
  const expectPrefill = prefillTflops / Math.min(989, (3350 * (w.prefillFlops / w.prefillBytes)) / 1000);
  const expectDecode = decodeTflops / Math.min(989, (3350 * (w.decodeFlops / w.decodeBytes)) / 1000);
  assert.ok(Math.abs((prefill.fractionOfRoof ?? Number.NaN) - expectPrefill) < 1e-12);
  assert.ok(Math.abs((decode.fractionOfRoof ?? Number.NaN) - expectDecode) < 1e-12);
  // Decode of GPT-2 at batch 1 is memory-bound: well under the ridge.
  assert.ok(decode.intensity < 295);
  const cpu = rooflinePoints([run({ device: 'cpu' }, { gpuName: null, backend: 'cpu' })]);
  assert.ok(cpu.every((p) => p.roof === null && p.fractionOfRoof === null));
});
