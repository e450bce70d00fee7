// The engine's vocabulary, shared by the native wrapper, the agent, the CLI and the dashboard.
import { z } from 'zod';

export const AttentionMethod = z.enum(['naive', 'fa1', 'fa2']);
export type AttentionMethod = z.infer<typeof AttentionMethod>;
export const Dtype = z.enum(['fp32', 'fp16', 'bf16']);
export type Dtype = z.infer<typeof Dtype>;
export const DeviceKind = z.enum(['cpu', 'cuda']);
export type DeviceKind = z.infer<typeof DeviceKind>;

export const Sampling = z.object({
  greedy: z.boolean().default(true),
  temperature: z.number().min(0).max(10).default(1),
  topK: z.number().int().min(0).default(0), // 0 = off
  topP: z.number().gt(0).max(1).default(1),
  repetitionPenalty: z.number().min(0.01).max(10).default(1),
  seed: z.number().int().min(0).default(0),
  stopTokens: z.array(z.number().int().min(0)).default([]),
});
export type Sampling = z.infer<typeof Sampling>;

/** Figures of one generate call. All times in milliseconds, measured by the engine itself. */
export const GenerateTimings = z.object({
  prefillMs: z.number(), // time to first token (prefill + first sample)
  decodeMs: z.array(z.number()), // one entry per generated token after the first
  totalMs: z.number(),
  tpotMs: z.number(), // mean of decodeMs (0 when only one token was generated)
  tokensPerSec: z.number(), // generated tokens (all rows) / totalMs
});
export type GenerateTimings = z.infer<typeof GenerateTimings>;

export const MemoryFigures = z.object({
  peakBytes: z.number(),
  weightsBytes: z.number(),
  kvCacheBytes: z.number(),
  activationsPeakBytes: z.number(),
});
export type MemoryFigures = z.infer<typeof MemoryFigures>;
