// A job's peak memory per device, estimated from its configuration, so that the queue does not hand a job to an
// agent that cannot hold it (ChatGLM2-6B in fp16 needs ~12.5 GB of weights alone). Deliberately generous: it
// decides where a job may go, not how fast it runs; the engine's own out-of-memory error remains the last word.
import type { JobConfig } from '../../contracts/experiment';
import { KNOWN_MODELS, parameterCount } from '../../contracts/models';

const BYTES = { fp32: 4, fp16: 2, bf16: 2 } as const;
/** CUDA context, cuBLAS workspace and allocator slack. */
export const DEVICE_OVERHEAD = 512 * 2 ** 20;

export function estimateJobMemoryBytes(c: JobConfig): number | null {
  const m = KNOWN_MODELS[c.model];
  if (!m) return null;
  const b = BYTES[c.dtype];
  const tp = c.tp;
  const VH = m.vocabSize * m.hiddenSize;
  // The embedding tables are replicated on every device; the blocks are split. The output layer is split by
  // vocabulary rows with several devices: ChatGLM2's own (untied) one is held only as each device's slice, and
  // GPT-2's (tied to the token table) adds each device's slice beside the replicated table.
  const embedding = VH + (m.family === 'gpt2' ? m.maxPositions * m.hiddenSize : 0);
  const untiedOutput = m.family === 'chatglm2' ? VH : 0;
  const outputSlice = tp > 1 ? Math.ceil(m.vocabSize / tp) * m.hiddenSize : untiedOutput;
  const weights = (embedding + outputSlice + (parameterCount(m) - embedding - untiedOutput) / tp) * b;
  const seq = c.promptLength + c.newTokens;
  const kvHeadsPerDevice = Math.max(1, m.numKvHeads / tp);
  const kv = c.kvCache ? 2 * m.numLayers * kvHeadsPerDevice * m.headDim * seq * c.batchSize * b : 0;
  // Prefill activations: hidden states and the MLP's widest layer, the last position's fp32 logits, and for
  // naive attention the materialised score matrix of one layer.
  const activations =
    c.batchSize * seq * (m.hiddenSize * 6 + (m.ffnHiddenSize / tp) * 2) * b +
    c.batchSize * m.vocabSize * 4 +
    (c.attention === 'naive' ? c.batchSize * (m.numHeads / tp) * seq * seq * 4 : 0);
  return Math.ceil((weights + kv + activations) * 1.1 + (c.device === 'cuda' ? DEVICE_OVERHEAD : 0));
}
