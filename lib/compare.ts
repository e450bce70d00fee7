// What the compare page computes from the runs it was given: series per method, speedups with bootstrap
// intervals, TP scaling, roofline points, study-vs-ours figures and environment differences. Pure, client-safe.
import type { JobConfig, TpBreakdown } from '../contracts/experiment';
import { KNOWN_MODELS, type ModelConfig } from '../contracts/models';
import { methodLabel } from './format';
import { bootstrapSpeedup, mean, median, type SpeedupInterval, type Statistic, std } from './stats';

/** The figures of one repeat the charts use. */
export interface RepeatPoint {
  prefillMs: number;
  tpotMs: number;
  totalMs: number;
  tokensPerSec: number;
  peakMemBytes: number;
  /** Tensor-parallel runs measured with it: one decode token's compute / all-reduce split. */
  tpBreakdown?: TpBreakdown;
}

/** One run as the compare router returns it. */
export interface CompareRun {
  id: string;
  config: Pick<
    JobConfig,
    'model' | 'attention' | 'kvCache' | 'tp' | 'dtype' | 'device' | 'batchSize' | 'promptLength' | 'newTokens'
  >;
  repeats: RepeatPoint[];
  peakMemBytes: number;
  agentName: string;
  gpuName: string | null;
  driver: string | null;
  cudaVersion: string | null;
  engineBuild: string;
  backend: string;
  createdAt: Date | string;
  /** The card's measured ceilings, when the environment record carries them. */
  ceilings: { tflops: number; gbps: number } | null;
}

export const METRICS = {
  totalMs: { label: 'End-to-end time', unit: 'ms', lowerIsBetter: true },
  prefillMs: { label: 'Time to first token (TTFT)', unit: 'ms', lowerIsBetter: true },
  tpotMs: { label: 'Time per output token (TPOT)', unit: 'ms', lowerIsBetter: true },
  tokensPerSec: { label: 'Throughput', unit: 'tokens/s', lowerIsBetter: false },
  peakMemBytes: { label: 'Peak device memory', unit: 'bytes', lowerIsBetter: true },
} as const;
export type Metric = keyof typeof METRICS;
export type TimeMetric = 'totalMs' | 'prefillMs' | 'tpotMs';

/** The dimensions that make a "method" (what the study compares) and those that make a "point" (a shape). */
export const METHOD_DIMS = ['attention', 'kvCache', 'tp', 'dtype'] as const;
export const SHAPE_DIMS = ['model', 'device', 'batchSize', 'promptLength', 'newTokens'] as const;
type Dim = (typeof METHOD_DIMS)[number] | (typeof SHAPE_DIMS)[number];

export function methodKey(c: CompareRun['config']): string {
  return `${c.attention}|${c.kvCache ? 'kv' : 'nokv'}|tp${c.tp}|${c.dtype}`;
}

/** Dimensions whose value differs between the given runs: the only ones worth naming in a label. */
export function varyingDims(runs: readonly CompareRun[]): Set<Dim> {
  const out = new Set<Dim>();
  for (const d of [...METHOD_DIMS, ...SHAPE_DIMS]) {
    const seen = new Set(runs.map((r) => String(r.config[d])));
    if (seen.size > 1) out.add(d);
  }
  return out;
}

const DIM_LABEL: Record<Dim, (v: CompareRun['config']) => string> = {
  attention: (c) => (c.attention === 'naive' ? 'naive' : c.attention.toUpperCase()),
  kvCache: (c) => (c.kvCache ? 'KV cache' : 'no KV cache'),
  tp: (c) => `TP=${c.tp}`,
  dtype: (c) => c.dtype,
  model: (c) => c.model,
  device: (c) => c.device,
  batchSize: (c) => `batch ${c.batchSize}`,
  promptLength: (c) => `prompt ${c.promptLength}`,
  newTokens: (c) => `${c.newTokens} new`,
};

export function labelOf(c: CompareRun['config'], dims: Iterable<Dim>): string {
  const parts = [...dims].map((d) => DIM_LABEL[d](c));
  return parts.length ? parts.join(', ') : methodLabel(c);
}

/** Every repeat's value of one figure, pooled over the runs given (repeats of one configuration). */
export function pooled(runs: readonly CompareRun[], m: Metric): number[] {
  if (m === 'peakMemBytes') return runs.map((r) => r.peakMemBytes);
  return runs.flatMap((r) => r.repeats.map((p) => p[m])).filter((v) => Number.isFinite(v));
}

export interface SeriesChart {
  series: { key: string; label: string }[];
  /** One row per x value: x, then per series `${key}` (the statistic) and `${key}:std`. */
  rows: Record<string, number | null>[];
  xLabel: string;
}

/** Lines of `metric` against one configuration field, one line per combination of the other varying fields. */
export function seriesBy(
  runs: readonly CompareRun[],
  x: 'promptLength' | 'batchSize' | 'newTokens' | 'tp' | 'seqLength',
  metric: Metric,
  stat: Statistic = 'median',
): SeriesChart {
  const vary = varyingDims(runs);
  const xDims: Dim[] = x === 'seqLength' ? ['promptLength', 'newTokens'] : [x];
  for (const d of xDims) vary.delete(d);
  const xOf = (c: CompareRun['config']) => (x === 'seqLength' ? c.promptLength + c.newTokens : c[x]);
  const bySeries = new Map<string, { label: string; byX: Map<number, CompareRun[]> }>();
  for (const r of runs) {
    const label = labelOf(r.config, vary);
    let s = bySeries.get(label);
    if (!s) {
      s = { label, byX: new Map() };
      bySeries.set(label, s);
    }
    const xv = xOf(r.config);
    s.byX.set(xv, [...(s.byX.get(xv) ?? []), r]);
  }
  const series = [...bySeries.values()].map((s, i) => ({ key: `s${i}`, label: s.label }));
  const xs = [...new Set(runs.map((r) => xOf(r.config)))].sort((a, b) => a - b);
  const rows = xs.map((xv) => {
    const row: Record<string, number | null> = { x: xv };
    [...bySeries.values()].forEach((s, i) => {
      const vals = pooled(s.byX.get(xv) ?? [], metric);
      row[`s${i}`] = vals.length
        ? metric === 'peakMemBytes'
          ? Math.max(...vals)
          : stat === 'mean'
            ? mean(vals)
            : median(vals)
        : null;
      row[`s${i}:std`] = vals.length ? std(vals) : null;
    });
    return row;
  });
  const xLabel = {
    promptLength: 'Prompt length (tokens)',
    batchSize: 'Batch size',
    newTokens: 'New tokens',
    tp: 'Tensor-parallel degree',
    seqLength: 'Sequence length: prompt + new (tokens)',
  }[x];
  return { series, rows, xLabel };
}

/** Runs grouped by their shape (everything but the method), then by method within it. */
function byShapeThenMethod(runs: readonly CompareRun[]) {
  const shapes = new Map<string, { config: CompareRun['config']; methods: Map<string, CompareRun[]> }>();
  for (const r of runs) {
    const sk = SHAPE_DIMS.map((d) => String(r.config[d])).join('|');
    let s = shapes.get(sk);
    if (!s) {
      s = { config: r.config, methods: new Map() };
      shapes.set(sk, s);
    }
    const mk = methodKey(r.config);
    s.methods.set(mk, [...(s.methods.get(mk) ?? []), r]);
  }
  return shapes;
}

export interface SpeedupRow extends SpeedupInterval {
  shape: string;
  method: string;
  methodKey: string;
}

/** Speedup of every method over the baseline method at every shape both were measured at. */
export function speedups(
  runs: readonly CompareRun[],
  baselineKey: string,
  metric: TimeMetric,
  opts: { statistic?: Statistic; seed?: number; iterations?: number } = {},
): SpeedupRow[] {
  const vary = varyingDims(runs);
  const shapeDims = SHAPE_DIMS.filter((d) => vary.has(d));
  const methodDims = METHOD_DIMS.filter((d) => vary.has(d));
  const out: SpeedupRow[] = [];
  for (const s of byShapeThenMethod(runs).values()) {
    const base = s.methods.get(baselineKey);
    if (!base) continue;
    const baseVals = pooled(base, metric).filter((v) => v > 0);
    for (const [mk, group] of s.methods) {
      if (mk === baselineKey) continue;
      const vals = pooled(group, metric).filter((v) => v > 0);
      if (!baseVals.length || !vals.length) continue;
      const ci = bootstrapSpeedup(baseVals, vals, {
        statistic: opts.statistic ?? 'median',
        seed: opts.seed ?? 1,
        iterations: opts.iterations ?? 4000,
      });
      out.push({
        ...ci,
        shape: shapeDims.length ? labelOf(s.config, shapeDims) : 'all',
        method: labelOf(group[0].config, methodDims.length ? methodDims : ['attention']),
        methodKey: mk,
      });
    }
  }
  return out;
}

export function methodsOf(runs: readonly CompareRun[]): { key: string; label: string }[] {
  const vary = varyingDims(runs);
  const dims = METHOD_DIMS.filter((d) => vary.has(d));
  const seen = new Map<string, string>();
  for (const r of runs) seen.set(methodKey(r.config), labelOf(r.config, dims.length ? dims : ['attention']));
  return [...seen].map(([key, label]) => ({ key, label }));
}

export interface TpPoint {
  shape: string;
  tp: number;
  speedup: number;
  efficiency: number;
}

/** Speedup of each TP degree over TP=1 at the same shape and attention/KV/dtype, and its parallel efficiency. */
export function tpScaling(runs: readonly CompareRun[], metric: TimeMetric = 'totalMs'): TpPoint[] {
  const groups = new Map<string, Map<number, number[]>>();
  const labels = new Map<string, string>();
  const vary = varyingDims(runs);
  vary.delete('tp');
  for (const r of runs) {
    const k = [...SHAPE_DIMS, 'attention', 'kvCache', 'dtype'].map((d) => String(r.config[d as Dim])).join('|');
    labels.set(k, labelOf(r.config, vary));
    let g = groups.get(k);
    if (!g) {
      g = new Map();
      groups.set(k, g);
    }
    g.set(r.config.tp, [...(g.get(r.config.tp) ?? []), ...pooled([r], metric)]);
  }
  const out: TpPoint[] = [];
  for (const [k, g] of groups) {
    const one = g.get(1);
    if (!one?.length || g.size < 2) continue;
    const t1 = median(one);
    for (const [tp, vals] of [...g].sort((a, b) => a[0] - b[0])) {
      if (!vals.length) continue;
      const s = t1 / median(vals);
      out.push({ shape: labels.get(k) ?? k, tp, speedup: s, efficiency: s / tp });
    }
  }
  return out;
}

const BYTES_PER: Record<string, number> = { fp32: 4, fp16: 2, bf16: 2 };

/** Floating-point work and memory traffic of a forward pass, from the model's shape: matmuls of the weights
 *  (2 FLOPs per multiply-add) plus attention's QKᵀ and PV over the causal context. */
export function workOf(model: ModelConfig, c: CompareRun['config']) {
  const layerWeights =
    (model.numHeads + 2 * model.numKvHeads) * model.headDim * model.hiddenSize +
    model.numHeads * model.headDim * model.hiddenSize +
    (model.family === 'gpt2' ? 2 : 3) * model.hiddenSize * model.ffnHiddenSize;
  const matmulParams = model.numLayers * layerWeights + model.vocabSize * model.hiddenSize;
  const bytes = BYTES_PER[c.dtype] ?? 4;
  const attnDim = model.numHeads * model.headDim;
  const P = c.promptLength;
  const B = c.batchSize;
  // Prefill: every prompt token through every weight; causal attention touches P(P+1)/2 pairs, twice (QKᵀ, PV).
  const prefillFlops = 2 * matmulParams * B * P + (2 * 2 * model.numLayers * B * attnDim * (P * (P + 1))) / 2;
  const prefillBytes = matmulParams * bytes + 2 * model.numLayers * B * P * model.numKvHeads * model.headDim * bytes;
  // One decode step at the middle of generation with the KV cache: weights read once, the cache read once.
  const ctx = P + c.newTokens / 2;
  const decodeFlops = 2 * matmulParams * B + 2 * 2 * model.numLayers * B * attnDim * ctx;
  const decodeBytes = matmulParams * bytes + 2 * model.numLayers * B * ctx * model.numKvHeads * model.headDim * bytes;
  return { prefillFlops, prefillBytes, decodeFlops, decodeBytes };
}

/** A card's published peaks: dense tensor-core fp16/bf16 TFLOP/s, fp32 TFLOP/s without tensor cores (the engine
 *  keeps fp32 GEMMs in fp32, no TF32), and device-memory bandwidth. From NVIDIA's datasheets; matched on the name
 *  nvidia-smi reports. A variant that the name does not pin down (a bare "H100": SXM or PCIe?) gets no entry. */
export const DATASHEET_PEAKS: readonly {
  card: string;
  match: RegExp;
  tflops16: number;
  tflops32: number;
  gbps: number;
}[] = [
  {
    card: 'H100 SXM',
    match: /\bH100\b(?!.*\b(PCIe|NVL)\b).*\b(HBM3|SXM\d?)\b/i,
    tflops16: 989,
    tflops32: 67,
    gbps: 3350,
  },
  { card: 'H100 PCIe', match: /\bH100\b.*\bPCIe\b/i, tflops16: 756, tflops32: 51, gbps: 2000 },
  { card: 'H200', match: /\bH200\b(?!.*\bNVL\b)/i, tflops16: 989, tflops32: 67, gbps: 4800 },
  { card: 'A100 SXM 80GB', match: /\bA100\b.*SXM.*80\s?GB/i, tflops16: 312, tflops32: 19.5, gbps: 2039 },
  { card: 'A100 SXM 40GB', match: /\bA100\b.*SXM.*40\s?GB/i, tflops16: 312, tflops32: 19.5, gbps: 1555 },
  {
    card: 'A100 PCIe 80GB',
    match: /\bA100\b.*(80\s?GB.*PCIe|PCIe.*80\s?GB)/i,
    tflops16: 312,
    tflops32: 19.5,
    gbps: 1935,
  },
  {
    card: 'A100 PCIe 40GB',
    match: /\bA100\b.*(40\s?GB.*PCIe|PCIe.*40\s?GB)/i,
    tflops16: 312,
    tflops32: 19.5,
    gbps: 1555,
  },
];

/** The ceilings a run is held against: what the card measured (the environment record's `ceilings`), else its
 *  datasheet peaks for a known GPU. Per run, so for TP the roof is the sum over its GPUs. */
export interface Roof {
  source: 'measured' | 'datasheet';
  /** The card as named in the chart (the datasheet's name, or the GPU name the run recorded). */
  card: string;
  gpus: number;
  tflops: number;
  gbps: number;
}

export function datasheetPeak(gpuName: string | null, dtype: string) {
  const entry = gpuName ? DATASHEET_PEAKS.find((e) => e.match.test(gpuName)) : undefined;
  if (!entry) return null;
  return { card: entry.card, tflops: dtype === 'fp32' ? entry.tflops32 : entry.tflops16, gbps: entry.gbps };
}

export function roofOf(r: CompareRun): Roof | null {
  const gpus = r.config.tp;
  if (r.ceilings)
    return {
      source: 'measured',
      card: r.gpuName ?? 'this card',
      gpus,
      tflops: r.ceilings.tflops * gpus,
      gbps: r.ceilings.gbps * gpus,
    };
  if (r.config.device !== 'cuda') return null;
  const peak = datasheetPeak(r.gpuName, r.config.dtype);
  return peak
    ? { source: 'datasheet', card: peak.card, gpus, tflops: peak.tflops * gpus, gbps: peak.gbps * gpus }
    : null;
}

export interface RoofGroup extends Roof {
  key: string;
  /** The runs' dtypes this roof is for (fp16 and bf16 share one). */
  dtypes: string[];
  runIds: string[];
  /** Where compute stops being bound by memory: FLOP/byte at which the slanted roof meets the flat one. */
  ridge: number;
}

/** The distinct roofs of the runs given (one per card, source, GPU count and peak), and the runs that have none. */
export function rooflineRoofs(runs: readonly CompareRun[]): { roofs: RoofGroup[]; without: CompareRun[] } {
  const roofs = new Map<string, RoofGroup>();
  const without: CompareRun[] = [];
  for (const r of runs) {
    const roof = roofOf(r);
    if (!roof) {
      without.push(r);
      continue;
    }
    const key = `${roof.source}|${roof.card}|${roof.gpus}|${roof.tflops}|${roof.gbps}`;
    let g = roofs.get(key);
    if (!g) {
      g = { ...roof, key, dtypes: [], runIds: [], ridge: (roof.tflops * 1000) / roof.gbps };
      roofs.set(key, g);
    }
    if (!g.dtypes.includes(r.config.dtype)) g.dtypes.push(r.config.dtype);
    g.runIds.push(r.id);
  }
  return { roofs: [...roofs.values()], without };
}

/** The roof's name in a legend or caption: "H100 SXM ×2 · fp16 · datasheet". */
export function roofLabel(g: Pick<RoofGroup, 'card' | 'gpus' | 'dtypes' | 'source'>): string {
  return `${g.card}${g.gpus > 1 ? ` ×${g.gpus}` : ''} · ${[...g.dtypes].sort().join('/')} · ${g.source}`;
}

/** What a roof allows at an arithmetic intensity: the lower of the compute roof and bandwidth × intensity. */
export const attainableTflops = (roof: Pick<Roof, 'tflops' | 'gbps'>, intensity: number) =>
  Math.min(roof.tflops, (roof.gbps * intensity) / 1000);

export interface RooflinePoint {
  runId: string;
  label: string;
  /** The method alone (what the chart's legend groups by); `label` adds the shape. */
  method: string;
  phase: 'prefill' | 'decode';
  intensity: number; // FLOP per byte
  tflops: number; // achieved
  gbps: number; // achieved
  /** The run's roof, when it has one, and the share of it reached at this intensity. */
  roof: Roof | null;
  fractionOfRoof: number | null;
}

/** Achieved compute and bandwidth of each run's prefill and (cached) decode, for the roofline view. */
export function rooflinePoints(runs: readonly CompareRun[]): RooflinePoint[] {
  const vary = varyingDims(runs);
  const methodDims = METHOD_DIMS.filter((d) => vary.has(d));
  const out: RooflinePoint[] = [];
  for (const r of runs) {
    const model = KNOWN_MODELS[r.config.model];
    if (!model) continue;
    const w = workOf(model, r.config);
    const prefill = median(pooled([r], 'prefillMs'));
    const tpot = median(pooled([r], 'tpotMs'));
    const label = labelOf(r.config, vary);
    const method = labelOf(r.config, methodDims.length ? methodDims : ['attention']);
    const roof = roofOf(r);
    const point = (phase: RooflinePoint['phase'], flops: number, bytes: number, ms: number): RooflinePoint => {
      const intensity = flops / bytes;
      const tflops = flops / (ms / 1000) / 1e12;
      return {
        runId: r.id,
        label,
        method,
        phase,
        intensity,
        tflops,
        gbps: bytes / (ms / 1000) / 1e9,
        roof,
        fractionOfRoof: roof ? tflops / attainableTflops(roof, intensity) : null,
      };
    };
    if (prefill > 0) out.push(point('prefill', w.prefillFlops, w.prefillBytes, prefill));
    if (r.config.kvCache && tpot > 0 && r.config.newTokens > 1)
      out.push(point('decode', w.decodeFlops, w.decodeBytes, tpot));
  }
  return out;
}

export interface EnvDifference {
  field: 'GPU' | 'driver' | 'CUDA' | 'engine build' | 'backend';
  values: string[];
}

/** Where the compared runs ran differently: a difference in numbers may be the machine's, not the method's. */
export function environmentDifferences(runs: readonly CompareRun[]): EnvDifference[] {
  const fields: [EnvDifference['field'], (r: CompareRun) => string | null][] = [
    ['GPU', (r) => r.gpuName ?? (r.backend === 'cpu' ? 'CPU' : null)],
    ['driver', (r) => r.driver],
    ['CUDA', (r) => r.cudaVersion],
    ['engine build', (r) => r.engineBuild],
    ['backend', (r) => r.backend],
  ];
  const out: EnvDifference[] = [];
  for (const [field, get] of fields) {
    const values = [...new Set(runs.map(get).filter((v): v is string => v != null && v !== ''))].sort();
    if (values.length > 1) out.push({ field, values });
  }
  return out;
}

export interface StudyComparison {
  id: string;
  label: string;
  study: string;
  ours: string | null;
  oursValue: number | null;
  points: number;
}

/** Our figure for each of the study's claims, from pairs of runs that differ only in the dimension it names.
 *  The median over matched shapes, so one odd shape does not decide it. */
export function studyComparison(runs: readonly CompareRun[]): StudyComparison[] {
  const pairs = (
    differ: (a: CompareRun['config'], b: CompareRun['config']) => boolean,
    metric: Metric,
    ratio: (b: number, m: number) => number,
  ) => {
    const vals: number[] = [];
    for (const a of runs)
      for (const b of runs) {
        if (!differ(a.config, b.config)) continue;
        const va = pooled([a], metric);
        const vb = pooled([b], metric);
        if (va.length && vb.length) vals.push(ratio(median(va), median(vb)));
      }
    return vals;
  };
  const sameExcept = (a: CompareRun['config'], b: CompareRun['config'], except: Dim[]) =>
    ([...METHOD_DIMS, ...SHAPE_DIMS] as Dim[]).every((d) => except.includes(d) || a[d] === b[d]);
  const attn = (from: string, to: string) => (a: CompareRun['config'], b: CompareRun['config']) =>
    a.attention === from && b.attention === to && sameExcept(a, b, ['attention']);
  const speed = (base: number, m: number) => base / m;
  const rows: [string, string, string, number[], (v: number) => string][] = [
    ['fa', 'FlashAttention vs naive: speed', '+14 %', pairs(attn('naive', 'fa1'), 'totalMs', speed), (v) => pct(v - 1)],
    [
      'fa2-time',
      'FlashAttention-2 vs naive: time',
      '−60 %',
      pairs(attn('naive', 'fa2'), 'totalMs', (b, m) => m / b),
      (v) => pct(v - 1),
    ],
    [
      'fa2-mem',
      'FlashAttention-2 vs naive: peak memory',
      '−35 %',
      pairs(attn('naive', 'fa2'), 'peakMemBytes', (b, m) => m / b),
      (v) => pct(v - 1),
    ],
    [
      'kv',
      'KV cache on vs off: time',
      '−78 % (54.9 s → 12.3 s)',
      pairs(
        (a, b) => !a.kvCache && b.kvCache && sameExcept(a, b, ['kvCache']),
        'totalMs',
        (b, m) => m / b,
      ),
      (v) => pct(v - 1),
    ],
    [
      'tp',
      'TP=2 vs TP=1: time',
      '−16 %',
      pairs(
        (a, b) => a.tp === 1 && b.tp === 2 && sameExcept(a, b, ['tp']),
        'totalMs',
        (b, m) => m / b,
      ),
      (v) => pct(v - 1),
    ],
  ];
  return rows.map(([id, label, study, vals, fmt]) => {
    const v = vals.length ? median(vals) : null;
    return { id, label, study, ours: v == null ? null : fmt(v), oursValue: v, points: vals.length };
  });
}

function pct(f: number): string {
  const p = f * 100;
  return `${p > 0 ? '+' : p < 0 ? '−' : ''}${Math.abs(p).toFixed(Math.abs(p) >= 10 ? 0 : 1)} %`;
}
