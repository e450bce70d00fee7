// An experiment is a sweep; it expands into jobs, one per configuration. Every network input passes through here.
import { z } from 'zod';
import { AttentionMethod, DeviceKind, Dtype, GenerateTimings } from './engine';
import { KNOWN_MODELS, KnownModelName, tpProblem } from './models';

export const WeightsSpec = z.discriminatedUnion('kind', [
  z.object({ kind: z.literal('random'), seed: z.number().int().min(0).default(0) }),
  z.object({ kind: z.literal('checkpoint'), path: z.string().min(1) }),
]);
export type WeightsSpec = z.infer<typeof WeightsSpec>;

/** Head dims the CUDA attention kernels are built for (native/cuda/attention_params.h). */
export const CUDA_HEAD_DIMS: readonly number[] = [64, 128];

const nonEmpty = <T extends z.ZodTypeAny>(t: T) => z.array(t).min(1);

export const ExperimentSpec = z
  .object({
    name: z.string().min(1).max(200),
    model: KnownModelName,
    weights: WeightsSpec.default({ kind: 'random', seed: 0 }),
    attention: nonEmpty(AttentionMethod),
    kvCache: nonEmpty(z.boolean()),
    tp: nonEmpty(z.number().int().min(1).max(8)),
    dtype: nonEmpty(Dtype),
    device: DeviceKind.default('cpu'),
    batchSizes: nonEmpty(z.number().int().min(1).max(256)),
    promptLengths: nonEmpty(z.number().int().min(1)),
    newTokens: nonEmpty(z.number().int().min(1)),
    warmup: z.number().int().min(0).max(20).default(1),
    repeats: z.number().int().min(1).max(100).default(3),
    targetAgent: z.string().min(1).optional(),
    tags: z.array(z.string().min(1).max(50)).max(20).default([]),
    notes: z.string().max(5000).default(''),
  })
  .superRefine((s, ctx) => {
    const cfg = KNOWN_MODELS[s.model];
    if (!cfg) return;
    s.tp.forEach((tp, i) => {
      const why = tpProblem(cfg, tp);
      if (why) ctx.addIssue({ code: 'custom', path: ['tp', i], message: why });
    });
    const longestNew = Math.max(...s.newTokens);
    s.promptLengths.forEach((p, i) => {
      if (p + longestNew > cfg.maxPositions)
        ctx.addIssue({
          code: 'custom',
          path: ['promptLengths', i],
          message: `prompt of ${p} tokens + ${longestNew} new tokens exceeds ${cfg.name}'s ${cfg.maxPositions} positions`,
        });
    });
    if (s.device === 'cuda' && !CUDA_HEAD_DIMS.includes(cfg.headDim))
      ctx.addIssue({
        code: 'custom',
        path: ['device'],
        message: `the CUDA kernels take head dims ${CUDA_HEAD_DIMS.join(' or ')}; ${cfg.name} has ${cfg.headDim} (run it on the CPU)`,
      });
    if (s.device === 'cpu' && s.dtype.some((d) => d !== 'fp32'))
      ctx.addIssue({ code: 'custom', path: ['dtype'], message: 'the CPU backend computes in fp32 only' });
    if (expandedCount(s) > 2000)
      ctx.addIssue({
        code: 'custom',
        path: ['attention'],
        message: `sweep expands to ${expandedCount(s)} jobs; at most 2000`,
      });
  });
export type ExperimentSpec = z.infer<typeof ExperimentSpec>;
export type ExperimentSpecInput = z.input<typeof ExperimentSpec>;

/** One configuration: what a job runs and what a run measured. */
export const JobConfig = z.object({
  model: KnownModelName,
  weights: WeightsSpec,
  attention: AttentionMethod,
  kvCache: z.boolean(),
  tp: z.number().int().min(1).max(8),
  dtype: Dtype,
  device: DeviceKind,
  batchSize: z.number().int().min(1),
  promptLength: z.number().int().min(1),
  newTokens: z.number().int().min(1),
  warmup: z.number().int().min(0),
  repeats: z.number().int().min(1),
});
export type JobConfig = z.infer<typeof JobConfig>;

function expandedCount(
  s: Pick<ExperimentSpec, 'attention' | 'kvCache' | 'tp' | 'dtype' | 'batchSizes' | 'promptLengths' | 'newTokens'>,
) {
  return (
    s.attention.length *
    s.kvCache.length *
    s.tp.length *
    s.dtype.length *
    s.batchSizes.length *
    s.promptLengths.length *
    s.newTokens.length
  );
}

export function expandExperiment(s: ExperimentSpec): JobConfig[] {
  const jobs: JobConfig[] = [];
  for (const attention of s.attention)
    for (const kvCache of s.kvCache)
      for (const tp of s.tp)
        for (const dtype of s.dtype)
          for (const batchSize of s.batchSizes)
            for (const promptLength of s.promptLengths)
              for (const newTokens of s.newTokens)
                jobs.push({
                  model: s.model,
                  weights: s.weights,
                  attention,
                  kvCache,
                  tp,
                  dtype,
                  device: s.device,
                  batchSize,
                  promptLength,
                  newTokens,
                  warmup: s.warmup,
                  repeats: s.repeats,
                });
  return jobs;
}

/** The canonical string of a measured configuration: runs that share it are repeats of one another, whichever
 *  experiment or agent produced them. How it was measured (warm-up, repeat count) is not part of it. The database's
 *  `Run.configKey` column and the dashboard's grouping both use this one function. */
export function configKey(c: Omit<JobConfig, 'warmup' | 'repeats'>): string {
  const weights = c.weights.kind === 'random' ? `random:${c.weights.seed}` : `checkpoint:${c.weights.path}`;
  return [
    c.model,
    weights,
    c.attention,
    c.kvCache ? 'kv' : 'nokv',
    `tp${c.tp}`,
    c.dtype,
    c.device,
    `b${c.batchSize}`,
    `p${c.promptLength}`,
    `n${c.newTokens}`,
  ].join('|');
}

const nonNegativeMs = z.number().nonnegative();

/** Where one decode token's time goes under tensor parallelism (tp > 1): the last decode step of a generate, timed
 *  on shard 0 (host clocks on the CPU backend, device events on CUDA). computeMs is the step less its all-reduces;
 *  allReducePerLayerMs[l] is layer l's two all-reduces (after attention and after the MLP) summed. */
export const TpBreakdown = z.object({
  stepMs: nonNegativeMs,
  computeMs: nonNegativeMs,
  allReduceMs: nonNegativeMs,
  allReduceCount: z.number().int().nonnegative(),
  allReducePerLayerMs: z.array(nonNegativeMs).min(1),
  /** The exchange of the vocabulary-parallel output layer's logits slices (one more collective a step, after the
   *  last layer); absent in runs measured before the output layer was split. Part of allReduceMs. */
  outputExchangeMs: nonNegativeMs.optional(),
});
export type TpBreakdown = z.infer<typeof TpBreakdown>;

/** How a run's decode steps were launched: op by op from the host ('eager'), as replays of one recorded CUDA graph
 *  a step ('graph'), or as one persistent kernel a step inside that graph ('one-kernel': GPT-2, one row, one GPU). */
export const DecodeLaunch = z.enum(['eager', 'graph', 'one-kernel']);
export type DecodeLaunch = z.infer<typeof DecodeLaunch>;

/** Figures of one repeat. */
export const RepeatFigures = z.object({
  prefillMs: z.number(),
  tpotMs: z.number(),
  totalMs: z.number(),
  tokensPerSec: z.number(),
  peakMemBytes: z.number(),
  kvCacheBytes: z.number().optional(),
  weightsBytes: z.number().optional(),
  decodeMs: z.array(z.number()).optional(),
  /** Tensor-parallel runs only: the compute / all-reduce split of one decode token. */
  tpBreakdown: TpBreakdown.optional(),
  /** How the decode steps were launched (absent on runs recorded before agents reported it, and on imports). */
  decodeLaunch: DecodeLaunch.optional(),
});
export type RepeatFigures = z.infer<typeof RepeatFigures>;

export const FigureSummary = z.object({
  median: z.number(),
  mean: z.number(),
  std: z.number(),
  p90: z.number(),
  min: z.number(),
  max: z.number(),
});
export type FigureSummary = z.infer<typeof FigureSummary>;
export const RunSummary = z.record(z.string(), FigureSummary);
export type RunSummary = z.infer<typeof RunSummary>;

export const GpuInfo = z.object({
  index: z.number().int(),
  name: z.string(),
  uuid: z.string().optional(),
  memoryBytes: z.number(),
  driver: z.string().optional(),
  smClockMHz: z.number().optional(),
  memClockMHz: z.number().optional(),
  temperatureC: z.number().optional(),
});
export type GpuInfo = z.infer<typeof GpuInfo>;

/** Where a run ran: enough to tell two runs apart when their numbers differ. */
export const EnvironmentRecord = z.object({
  agentName: z.string(),
  hostname: z.string(),
  backend: DeviceKind,
  cpuModel: z.string(),
  cpuCores: z.number().int(),
  memoryBytes: z.number(),
  gpus: z.array(GpuInfo),
  cudaVersion: z.string().optional(),
  engineBuild: z.string(),
  gitCommit: z.string().optional(),
  nodeVersion: z.string(),
  startedAt: z.string(),
  /** The card's measured ceilings (dense matmul TFLOP/s at the run's dtype, device-memory GB/s) when the agent or a
   *  bench measured them; the dashboard's roofline view draws its roofs from these. */
  ceilings: z.object({ tflops: z.number().positive(), gbps: z.number().positive() }).optional(),
});
export type EnvironmentRecord = z.infer<typeof EnvironmentRecord>;

/** One measured configuration: every repeat, its summary and where it ran. Online and offline runs share it. */
export const RunResult = z.object({
  config: JobConfig,
  repeats: z.array(RepeatFigures).min(1),
  summary: RunSummary,
  environment: EnvironmentRecord,
  sampleTokens: z.array(z.number().int()).optional(),
});
export type RunResult = z.infer<typeof RunResult>;

/** What `flashlab run plan.json` reads and `flashlab import` writes into the history. */
export const OfflinePlan = z.object({ experiment: ExperimentSpec });
export const OfflineResults = z.object({
  format: z.literal('flashlab-results/1'),
  experiment: ExperimentSpec,
  runs: z.array(RunResult),
  failures: z.array(z.object({ config: JobConfig, error: z.string() })).default([]),
});
export type OfflineResults = z.infer<typeof OfflineResults>;

export { GenerateTimings };
