// One-click experiments: the study's four experiments at full model size (for GPU agents), and tiny twins of each
// that finish in seconds on the embedded CPU agent. Client-safe: the builder loads them; the server may list them.
import type { ExperimentSpecInput } from '../contracts/experiment';

export interface Preset {
  id: string;
  title: string;
  /** What the study reported, which this preset reproduces. */
  study: string;
  description: string;
  size: 'full' | 'tiny';
  spec: ExperimentSpecInput;
}

const GPU = () => ({ device: 'cuda' as const, dtype: ['fp16' as const], warmup: 2, repeats: 5 });
const CPU = () => ({ device: 'cpu' as const, dtype: ['fp32' as const], warmup: 1, repeats: 3 });

export const PRESETS: Preset[] = [
  {
    id: 'fa-vs-naive-gpt2',
    title: 'FlashAttention vs naive — GPT-2',
    study: 'FlashAttention: +14 % speed',
    description: 'Naive attention against FlashAttention-1, KV cache on, over prompt lengths up to the full context.',
    size: 'full',
    spec: {
      name: 'FlashAttention vs naive (GPT-2)',
      model: 'gpt2',
      ...GPU(),
      attention: ['naive', 'fa1'],
      kvCache: [true],
      tp: [1],
      batchSizes: [1, 8],
      promptLengths: [128, 256, 512, 768],
      newTokens: [128],
      tags: ['study', 'fa-vs-naive'],
    },
  },
  {
    id: 'fa-vs-naive-chatglm2',
    title: 'FlashAttention vs naive — ChatGLM2-6B',
    study: 'FlashAttention: +14 % speed',
    description: 'The same comparison on ChatGLM2-6B, with long prompts where attention dominates.',
    size: 'full',
    spec: {
      name: 'FlashAttention vs naive (ChatGLM2-6B)',
      model: 'chatglm2-6b',
      ...GPU(),
      attention: ['naive', 'fa1'],
      kvCache: [true],
      tp: [1],
      batchSizes: [1],
      promptLengths: [512, 1024, 2048, 4096],
      newTokens: [128],
      tags: ['study', 'fa-vs-naive'],
    },
  },
  {
    id: 'fa2-fa1-naive-memory',
    title: 'FlashAttention-2 vs FA1 vs naive, with memory',
    study: 'FlashAttention-2: −60 % inference time, −35 % memory',
    description:
      'All three attention kernels on ChatGLM2-6B at growing sequence lengths; every run records peak memory.',
    size: 'full',
    spec: {
      name: 'FA2 vs FA1 vs naive with memory (ChatGLM2-6B)',
      model: 'chatglm2-6b',
      ...GPU(),
      attention: ['naive', 'fa1', 'fa2'],
      kvCache: [true],
      tp: [1],
      batchSizes: [1],
      promptLengths: [1024, 2048, 4096, 8192],
      newTokens: [128],
      tags: ['study', 'fa2-memory'],
    },
  },
  {
    id: 'kv-cache-gpt2',
    title: 'KV cache on vs off — GPT-2',
    study: 'KV cache: −78 % time (54.9 s → 12.3 s)',
    description:
      '256 new tokens after a 128-token prompt, and after a 768-token one: 768 + 256 fills GPT-2’s 1024 positions ' +
      '(a 1024-token prompt leaves no room for new tokens; the builder refuses it and says why).',
    size: 'full',
    spec: {
      name: 'KV cache on vs off (GPT-2)',
      model: 'gpt2',
      ...GPU(),
      attention: ['naive'],
      kvCache: [false, true],
      tp: [1],
      batchSizes: [1],
      promptLengths: [128, 768],
      newTokens: [256],
      tags: ['study', 'kv-cache'],
    },
  },
  {
    id: 'tp-chatglm2',
    title: 'Tensor parallelism 1 vs 2 — ChatGLM2-6B',
    study: 'Tensor parallelism: −16 % time',
    description: 'ChatGLM2-6B on one GPU and split over two (needs an agent with 2 GPUs).',
    size: 'full',
    spec: {
      name: 'TP 1 vs 2 (ChatGLM2-6B)',
      model: 'chatglm2-6b',
      ...GPU(),
      attention: ['fa2'],
      kvCache: [true],
      tp: [1, 2],
      batchSizes: [1, 8],
      promptLengths: [512, 2048],
      newTokens: [128],
      tags: ['study', 'tensor-parallel'],
    },
  },
  {
    id: 'tiny-fa-vs-naive',
    title: 'Tiny: FlashAttention vs naive',
    study: 'FlashAttention: +14 % speed',
    description: 'gpt2-tiny on the CPU backend: finishes in seconds on the embedded agent.',
    size: 'tiny',
    spec: {
      name: 'Tiny FlashAttention vs naive',
      model: 'gpt2-tiny',
      ...CPU(),
      attention: ['naive', 'fa1'],
      kvCache: [true],
      tp: [1],
      batchSizes: [1],
      promptLengths: [16, 64],
      newTokens: [8],
      tags: ['tiny', 'fa-vs-naive'],
    },
  },
  {
    id: 'tiny-fa2-fa1-naive',
    title: 'Tiny: FA2 vs FA1 vs naive, with memory',
    study: 'FlashAttention-2: −60 % inference time, −35 % memory',
    description: 'chatglm2-tiny, three kernels, growing prompts, on the CPU backend.',
    size: 'tiny',
    spec: {
      name: 'Tiny FA2 vs FA1 vs naive',
      model: 'chatglm2-tiny',
      ...CPU(),
      attention: ['naive', 'fa1', 'fa2'],
      kvCache: [true],
      tp: [1],
      batchSizes: [1],
      promptLengths: [32, 128],
      newTokens: [4],
      tags: ['tiny', 'fa2-memory'],
    },
  },
  {
    id: 'tiny-kv-cache',
    title: 'Tiny: KV cache on vs off',
    study: 'KV cache: −78 % time (54.9 s → 12.3 s)',
    description: 'gpt2-tiny, 32 new tokens after 16 and after 128 prompt tokens, cache on and off.',
    size: 'tiny',
    spec: {
      name: 'Tiny KV cache on vs off',
      model: 'gpt2-tiny',
      ...CPU(),
      attention: ['naive'],
      kvCache: [false, true],
      tp: [1],
      batchSizes: [1],
      promptLengths: [16, 128],
      newTokens: [32],
      tags: ['tiny', 'kv-cache'],
    },
  },
  {
    id: 'tiny-tp',
    title: 'Tiny: tensor parallelism 1 vs 2',
    study: 'Tensor parallelism: −16 % time',
    description: 'chatglm2-tiny sharded over 2 CPU shards (the same sharded computation the GPUs run).',
    size: 'tiny',
    spec: {
      name: 'Tiny TP 1 vs 2',
      model: 'chatglm2-tiny',
      ...CPU(),
      attention: ['fa2'],
      kvCache: [true],
      tp: [1, 2],
      batchSizes: [1],
      promptLengths: [32],
      newTokens: [8],
      tags: ['tiny', 'tensor-parallel'],
    },
  },
];

/** The study's published figures, drawn beside ours. `speedup` is baseline time / method time. */
export const STUDY_FIGURES = [
  { id: 'fa', label: 'FlashAttention +14 % speed', baseline: 'naive', method: 'fa1', speedup: 1.14 },
  { id: 'fa2-time', label: 'FlashAttention-2 −60 % time', baseline: 'naive', method: 'fa2', speedup: 1 / 0.4 },
  { id: 'fa2-mem', label: 'FlashAttention-2 −35 % memory', baseline: 'naive', method: 'fa2', memoryRatio: 0.65 },
  {
    id: 'kv',
    label: 'KV cache −78 % time (54.9 s → 12.3 s)',
    baseline: 'no KV cache',
    method: 'KV cache',
    speedup: 54.9 / 12.3,
  },
  { id: 'tp', label: 'Tensor parallelism −16 % time', baseline: 'TP=1', method: 'TP=2', speedup: 1 / 0.84 },
] as const;
