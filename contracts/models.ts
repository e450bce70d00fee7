// Model architectures flashlab runs, their named configurations, and the checks an experiment must pass.
import { z } from 'zod';

export const ModelFamily = z.enum(['gpt2', 'chatglm2']);
export type ModelFamily = z.infer<typeof ModelFamily>;

/** One architecture's sizes. GPT-2: numKvHeads = numHeads, ffnHiddenSize = 4 * hiddenSize, learned positions.
 *  ChatGLM2: multi-query attention (numKvHeads groups), SwiGLU MLP of ffnHiddenSize, rotary on headDim/2 dims. */
export const ModelConfig = z.object({
  family: ModelFamily,
  name: z.string().min(1),
  vocabSize: z.number().int().positive(),
  hiddenSize: z.number().int().positive(),
  numLayers: z.number().int().positive(),
  numHeads: z.number().int().positive(),
  numKvHeads: z.number().int().positive(),
  headDim: z.number().int().positive(),
  ffnHiddenSize: z.number().int().positive(),
  maxPositions: z.number().int().positive(),
  normEps: z.number().positive(),
});
export type ModelConfig = z.infer<typeof ModelConfig>;

function gpt2(name: string, numLayers: number, hiddenSize: number, numHeads: number): ModelConfig {
  return {
    family: 'gpt2', name, vocabSize: 50257, hiddenSize, numLayers, numHeads, numKvHeads: numHeads,
    headDim: hiddenSize / numHeads, ffnHiddenSize: 4 * hiddenSize, maxPositions: 1024, normEps: 1e-5,
  };
}

/** Named models. The tiny ones exist so that CI and the embedded CPU agent finish in seconds. */
export const KNOWN_MODELS: Record<string, ModelConfig> = {
  gpt2: gpt2('gpt2', 12, 768, 12),
  'gpt2-medium': gpt2('gpt2-medium', 24, 1024, 16),
  'gpt2-large': gpt2('gpt2-large', 36, 1280, 20),
  'gpt2-xl': gpt2('gpt2-xl', 48, 1600, 25),
  'chatglm2-6b': {
    family: 'chatglm2', name: 'chatglm2-6b', vocabSize: 65024, hiddenSize: 4096, numLayers: 28, numHeads: 32,
    numKvHeads: 2, headDim: 128, ffnHiddenSize: 13696, maxPositions: 32768, normEps: 1e-5,
  },
  'gpt2-tiny': {
    family: 'gpt2', name: 'gpt2-tiny', vocabSize: 50257, hiddenSize: 64, numLayers: 2, numHeads: 4,
    numKvHeads: 4, headDim: 16, ffnHiddenSize: 256, maxPositions: 512, normEps: 1e-5,
  },
  'chatglm2-tiny': {
    family: 'chatglm2', name: 'chatglm2-tiny', vocabSize: 65024, hiddenSize: 64, numLayers: 2, numHeads: 4,
    numKvHeads: 2, headDim: 16, ffnHiddenSize: 128, maxPositions: 2048, normEps: 1e-5,
  },
};
export const KnownModelName = z.enum(Object.keys(KNOWN_MODELS) as [string, ...string[]]);

export function parameterCount(c: ModelConfig): number {
  const H = c.hiddenSize;
  const qkv = H * (c.numHeads + 2 * c.numKvHeads) * c.headDim;
  if (c.family === 'gpt2') {
    const layer = qkv + 3 * H + H * H + H + 2 * H * c.ffnHiddenSize + c.ffnHiddenSize + H + 4 * H;
    return c.numLayers * layer + c.vocabSize * H + c.maxPositions * H + 2 * H;
  }
  const layer = qkv + (c.numHeads + 2 * c.numKvHeads) * c.headDim + c.numHeads * c.headDim * H
    + 3 * H * c.ffnHiddenSize + 2 * H;
  return c.numLayers * layer + 2 * c.vocabSize * H + H;
}

/** Why a tensor-parallel degree cannot shard this model, or null when it can.
 *  KV heads are replicated when tp > numKvHeads (ChatGLM2's 2 groups at TP 4 and 8), which needs tp % numKvHeads == 0. */
export function tpProblem(c: ModelConfig, tp: number): string | null {
  if (!Number.isInteger(tp) || tp < 1) return `tensor-parallel degree must be a positive integer, got ${tp}`;
  if (c.numHeads % tp !== 0) return `tensor-parallel degree ${tp} does not divide ${c.name}'s ${c.numHeads} attention heads`;
  if (c.numKvHeads % tp !== 0 && tp % c.numKvHeads !== 0)
    return `tensor-parallel degree ${tp} neither divides nor is a multiple of ${c.name}'s ${c.numKvHeads} KV heads`;
  if (c.ffnHiddenSize % tp !== 0) return `tensor-parallel degree ${tp} does not divide ${c.name}'s MLP width ${c.ffnHiddenSize}`;
  return null;
}
