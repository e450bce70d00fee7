// Kernel benchmark bundles (bench/results/cuda-*.json): what bench/attention.py writes on a GPU host and the
// dashboard can import beside end-to-end runs. Every bundle lists its targets with honest met/missed flags.
import { z } from 'zod';
import { FigureSummary } from './experiment';

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
    dtype: z.string(),
    weights: z.string(),
    batch: z.number().int().positive(),
    quick: z.boolean().optional(),
    partial: z.boolean(),
    targets: z.array(BenchTarget).min(1),
  })
  .passthrough();
export type EngineBenchBundle = z.infer<typeof EngineBenchBundle>;
