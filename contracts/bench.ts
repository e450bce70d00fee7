// Kernel benchmark bundles (bench/results/cuda-*.json): what bench/attention.py writes on a GPU host and the
// dashboard can import beside end-to-end runs. Every bundle lists its targets with honest met/missed flags.
import { z } from 'zod';
import { FigureSummary, JobConfig, RepeatFigures } from './experiment';

export const BenchTarget = z.object({
  name: z.string().min(1),
  value: z.number(),
  target: z.number(),
  unit: z.string(),
  met: z.boolean(),
  /** Which way is better; absent means higher (as for every kernel bundle target). */
  better: z.enum(['higher', 'lower']).optional(),
});
export type BenchTarget = z.infer<typeof BenchTarget>;

/**
 * One engine configuration a bench driver timed, with every repeat's figures and the JobConfig it corresponds to:
 * what `flashlab import` turns into a run of the history. `section` is the bundle's JSON path of the summary it
 * belongs to (e.g. "gpt2Decode.runs", "chatglm2.1.decode") and `label` the summary's label there.
 */
export const BenchMeasurement = z
  .object({
    section: z.string().min(1),
    label: z.string().min(1),
    /** CUDA-graph decode as requested (the engine's default, and what a dashboard job asks for, is on). */
    cudaGraphs: z.boolean(),
    /** Whether decode steps were replays of a captured step in the last repeat. */
    cudaGraphsUsed: z.boolean(),
    config: JobConfig,
    repeats: z.array(RepeatFigures).min(1),
    sampleTokens: z.array(z.number().int().nonnegative()).optional(),
  })
  .superRefine((m, ctx) => {
    if (m.repeats.length !== m.config.repeats)
      ctx.addIssue({
        code: 'custom',
        path: ['repeats'],
        message: `${m.repeats.length} repeats recorded but config.repeats says ${m.config.repeats}`,
      });
    m.repeats.forEach((r, i) => {
      if (r.decodeMs && r.decodeMs.length !== m.config.newTokens - 1)
        ctx.addIssue({
          code: 'custom',
          path: ['repeats', i, 'decodeMs'],
          message: `${r.decodeMs.length} decode times for ${m.config.newTokens} new tokens (expected one per token after the first)`,
        });
    });
  });
export type BenchMeasurement = z.infer<typeof BenchMeasurement>;

export const KernelBenchEnvironment = z
  .object({
    gpu: z.string().min(1),
    uuid: z.string().optional(),
    memoryBytes: z.number().positive(),
    multiprocessors: z.number().int().positive(),
    torch: z.string(),
    torchCuda: z.string().nullable().optional(),
    driver: z.string().optional(),
    smClockMHz: z.number().optional(),
    memClockMHz: z.number().optional(),
    temperatureC: z.number().optional(),
    gitCommit: z.string().optional(),
    startedAt: z.string(),
  })
  .passthrough();

export const AttentionBenchRow = z
  .object({
    shape: z.string(),
    batch: z.number().int().positive(),
    seqLen: z.number().int().positive(),
    heads: z.number().int().positive(),
    kvHeads: z.number().int().positive(),
    headDim: z.number().int().positive(),
    causal: z.boolean(),
    dtype: z.string(),
    /** naive | fa1 | fa2 | sdpa_flash (PyTorch's FlashAttention-2 backend) | a labelled fa2 build variant */
    method: z.string(),
    ms: FigureSummary,
    reps: z.number().int().positive(),
    tflops: z.number().nonnegative(),
    peakBytes: z.number().nonnegative(),
    nonFinite: z.number().int().nonnegative(),
    relErrVsSdpa: z.number().nonnegative(),
  })
  .passthrough();
export type AttentionBenchRow = z.infer<typeof AttentionBenchRow>;

export const DecodeBenchRow = z
  .object({
    shape: z.string(),
    batch: z.number().int().positive(),
    heads: z.number().int().positive(),
    kvHeads: z.number().int().positive(),
    headDim: z.number().int().positive(),
    context: z.number().int().positive(),
    dtype: z.string(),
    method: z.string(),
    ms: FigureSummary,
    reps: z.number().int().positive(),
    gbps: z.number().nonnegative(),
    relErrVsSdpa: z.number().nonnegative(),
  })
  .passthrough();

export const KernelBenchBundle = z.object({
  format: z.literal('flashlab-kernel-bench/1'),
  kind: z.literal('cuda-attention'),
  card: z.string().min(1),
  environment: KernelBenchEnvironment,
  ceilings: z.object({ copyGBps: z.number().positive(), fp16MatmulTflops: z.number().positive() }),
  quick: z.boolean(),
  prefill: z.array(AttentionBenchRow).min(1),
  decode: z.array(DecodeBenchRow),
  peakMemory: z.array(
    z.object({
      seqLen: z.number().int().positive(),
      naivePeakBytes: z.number().nullable(),
      fa2PeakBytes: z.number(),
      naiveRan: z.boolean(),
    }),
  ),
  checks: z.object({ worstRelErrVsSdpa: z.number(), nonFiniteOutputs: z.number().int() }),
  targets: z.array(BenchTarget).min(1),
});
export type KernelBenchBundle = z.infer<typeof KernelBenchBundle>;

/** Summary of one configuration's repeats in an engine bundle (bench/engine-gpu.cpp, bench/tp-gpu.cpp). */
export const EngineBenchRun = z
  .object({
    label: z.string(),
    reps: z.number().int().positive(),
    newTokens: z.number().int().nonnegative(),
    cudaGraphs: z.boolean(),
    ttftMs: FigureSummary,
    tpotMs: FigureSummary,
    totalMs: FigureSummary,
    decodeTokPerSec: FigureSummary,
    e2eTokPerSec: FigureSummary,
    peakBytes: FigureSummary,
  })
  .passthrough();
export type EngineBenchRun = z.infer<typeof EngineBenchRun>;

/** What an engine bundle of either backend records after its header: how it ran, its targets and its timings. */
const engineBundleRun = {
  dtype: z.string(),
  weights: z.string(),
  batch: z.number().int().positive(),
  quick: z.boolean().optional(),
  partial: z.boolean(),
  targets: z.array(BenchTarget).min(1),
  /** Every timed configuration with its repeats (drivers from this format's second edition on). */
  measurements: z.array(BenchMeasurement).optional(),
};

/** When a bench run started: any string Date.parse reads. */
const startedAt = z.string().refine((s) => !Number.isNaN(Date.parse(s)), 'not a date');

/** What the environment probe reads of a GPU besides its name, identity and memory. */
const gpuReadings = {
  driver: z.string().optional(),
  smClockMHz: z.number().optional(),
  memClockMHz: z.number().optional(),
  temperatureC: z.number().optional(),
};

/**
 * Engine benchmark bundles from a GPU host (bench/results/engine-gpu-<card>.json and tp-gpu-<card>x<N>.json):
 * whole-model generate runs with random weights, each section with its runs, and the targets of issues 5 and 6.
 */
export const EngineBenchBundle = z
  .object({
    format: z.literal('flashlab-engine-bench/1'),
    kind: z.enum(['cuda-engine', 'cuda-tensor-parallel']),
    card: z.string().min(1),
    environment: z.object({ gpu: z.string().min(1), startedAt: z.string() }).passthrough(),
    engineBuild: z.string(),
    ...engineBundleRun,
  })
  .passthrough();
export type EngineBenchBundle = z.infer<typeof EngineBenchBundle>;

/** One GPU of the host a CUDA bundle ran on (bench/engine-gpu.sh's environment probe). */
export const EngineBenchGpu = z.object({
  index: z.number().int().nonnegative(),
  name: z.string().min(1),
  uuid: z.string().optional(),
  memoryBytes: z.number().nonnegative(),
  ...gpuReadings,
});
export type EngineBenchGpu = z.infer<typeof EngineBenchGpu>;

/** The environment record of a CUDA engine bundle, field by field (GPU 0's figures at the top level). */
export const EngineBenchEnvironment = z
  .object({
    gpu: z.string().min(1),
    uuid: z.string().optional(),
    ...gpuReadings,
    /** GPU 0's memory. */
    memoryBytes: z.number().nonnegative().optional(),
    /** Names of every GPU of the host. */
    gpus: z.array(z.string()).optional(),
    gpuDetails: z.array(EngineBenchGpu).optional(),
    cuda: z.string().optional(),
    host: z.string().optional(),
    cpu: z.string().optional(),
    cpus: z.number().int().positive().optional(),
    hostMemoryBytes: z.number().nonnegative().optional(),
    gitCommit: z.string().optional(),
    startedAt,
  })
  .passthrough();
export type EngineBenchEnvironment = z.infer<typeof EngineBenchEnvironment>;

/**
 * The CPU engine benchmark (bench/cpu-engine.ts -> bench/results/cpu-engine.json): GPT-2 on this machine's CPU,
 * decode with and without KV cache, prefill peak memory per method, against the machine's copy bandwidth.
 */
export const CpuEngineBenchBundle = z
  .object({
    format: z.literal('flashlab-engine-bench/1'),
    kind: z.literal('cpu-engine'),
    /** The CPU's model name. */
    card: z.string().min(1),
    environment: z
      .object({
        cpu: z.string().min(1),
        cores: z.number().int().positive(),
        threads: z.number().int().positive(),
        memoryBytes: z.number().nonnegative(),
        hostname: z.string().min(1),
        nodeVersion: z.string().min(1),
        gitCommit: z.string().optional(),
        startedAt,
      })
      .passthrough(),
    engineBuild: z.string().min(1),
    ...engineBundleRun,
  })
  .passthrough();
export type CpuEngineBenchBundle = z.infer<typeof CpuEngineBenchBundle>;

/** Whether a target is met, in its direction: the one rule every bench writer and check uses. */
export function targetMet(t: Pick<BenchTarget, 'value' | 'target' | 'better'>): boolean {
  return Number.isFinite(t.value) && (t.better === 'lower' ? t.value <= t.target : t.value >= t.target);
}
