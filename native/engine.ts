// The engine's public API: a small async wrapper around the native addon. Resolves model names and checkpoint
// directories, validates options against the shared contracts, feeds checkpoint tensors to the native loader,
// and turns AbortSignals and token callbacks into what the native side expects.
import { createRequire } from 'node:module';
import { availableParallelism } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { AttentionMethod, DeviceKind, Dtype, GenerateTimings, MemoryFigures } from '../contracts/engine';
import { Sampling } from '../contracts/engine';
import type { TpBreakdown } from '../contracts/experiment';
import { KNOWN_MODELS, ModelConfig, tpProblem } from '../contracts/models';
import type { NativeBinding, NativeEngine } from './binding';

export interface EngineOptions {
  model: string | ModelConfig;
  weights?: 'random' | string /* HF checkpoint dir */;
  seed?: number;
  dtype?: Dtype;
  device?: DeviceKind;
  tp?: number;
  maxBatch?: number;
  maxSeqLen?: number;
  threads?: number;
}

export interface GenerateRequest {
  inputIds: number[][];
  maxNewTokens: number;
  attention: AttentionMethod;
  kvCache: boolean;
  sampling?: Partial<Sampling>;
  signal?: AbortSignal;
  /** one new token per row, streamed after every step (step 0 is the token after prefill) */
  onTokens?: (step: number, tokens: number[]) => void;
  dumpLogits?: boolean;
  /** CUDA backend: replay one captured decode step per token (default true; greedy fp16/bf16 with KV cache).
   *  Off measures the same work with a kernel launch per op. */
  cudaGraphs?: boolean;
  /** tp > 1: measure where the last step's time goes on shard 0 (compute vs each all-reduce) and return it as
   *  `timings.tpBreakdown`. Adds timing events around every all-reduce: leave it off where only speed counts. */
  tpBreakdown?: boolean;
}

export interface GenerateResult {
  /** prompt + new, per row */
  tokens: number[][];
  newTokens: number[][];
  /** `tpBreakdown` only when asked for and tp > 1 */
  timings: GenerateTimings & { tpBreakdown?: TpBreakdown };
  memory: MemoryFigures;
  peakMemBytes: number;
  stoppedBy: 'maxTokens' | 'stop';
  /** whether decode steps were replays of a captured CUDA graph */
  decodeGraphs: boolean;
  /** whether each replayed decode step was one persistent kernel (CUDA, GPT-2, batch 1) */
  decodeOneLaunch: boolean;
  /** per row, at the last prompt position */
  logitsLast?: Float32Array[];
  /** per row, per generated step after the first */
  logitsSteps?: Float32Array[][];
}

/** The last step's breakdown on shard 0 as the dashboard reads it: compute is the step minus its collectives; layer
 *  l's figure is its two all-reduces (after attention, after the MLP) summed, and a step's odd last collective is
 *  the output layer's logits exchange (vocabulary-parallel). */
export function tpBreakdownOf(t: { stepMs: number; allReduceMs: number[] }): TpBreakdown {
  const allReduceMs = t.allReduceMs.reduce((a, b) => a + b, 0);
  const layers = Math.floor(t.allReduceMs.length / 2);
  const allReducePerLayerMs: number[] = [];
  for (let l = 0; l < layers; ++l) allReducePerLayerMs.push(t.allReduceMs[2 * l] + t.allReduceMs[2 * l + 1]);
  return {
    stepMs: t.stepMs,
    // Clock granularity can make the parts sum past the whole by a hair: compute is never negative.
    computeMs: Math.max(0, t.stepMs - allReduceMs),
    allReduceMs,
    allReduceCount: t.allReduceMs.length,
    allReducePerLayerMs,
    ...(t.allReduceMs.length % 2 === 1 ? { outputExchangeMs: t.allReduceMs[t.allReduceMs.length - 1] } : {}),
  };
}

export type ResolvedEngineOptions = Required<Omit<EngineOptions, 'model'>> & { model: ModelConfig };

let binding: NativeBinding | undefined;

/** The compiled addon; FLASHLAB_ENGINE_PATH overrides where it is (bundles, GPU hosts). */
export function loadBinding(): NativeBinding {
  if (binding) return binding;
  const path =
    process.env.FLASHLAB_ENGINE_PATH ??
    join(dirname(fileURLToPath(import.meta.url)), 'build', 'Release', 'flashlab_engine.node');
  const require = createRequire(import.meta.url);
  try {
    binding = require(path) as NativeBinding;
  } catch (err) {
    throw new Error(
      `the native engine is not built or cannot load (${path}): run 'npm run build:native' (${(err as Error).message})`,
    );
  }
  return binding;
}

/** Why `device: 'cuda'` cannot run on an engine built without the CUDA backend, and how to get one. */
export const CUDA_NOT_BUILT_MESSAGE =
  "device 'cuda' is not available: this engine was built without the CUDA backend (CPU only). " +
  'A CUDA build needs an NVIDIA GPU with its driver, the CUDA toolkit (nvcc and cudart, CUDA 12.4 or newer), ' +
  "cuBLAS (cuBLASLt) and NCCL, headers and libraries (Debian/Ubuntu with NVIDIA's repository: " +
  "apt-get install cuda-toolkit libnccl-dev); then rebuild with 'FLASHLAB_CUDA=on npm run build:native' " +
  "(or 'FLASHLAB_CUDA=on node scripts/build-native.mjs --direct' where npm is absent), which names anything " +
  "still missing. Use device 'cpu' meanwhile.";

/** The native side's CUDA messages are exact but terse: add what the user can do about the common ones. */
export function explainCudaError(err: unknown, o: { tp: number; maxBatch: number; maxSeqLen: number }): unknown {
  if (!(err instanceof Error) || err.name === 'AbortError') return err;
  const m = err.message;
  let hint = '';
  if (/out of memory/i.test(m))
    hint =
      `; the GPU memory does not hold this model at maxBatch ${o.maxBatch} and maxSeqLen ${o.maxSeqLen}: ` +
      `lower them, use fp16/bf16, or spread the model over more GPUs (tp ${o.tp} now)`;
  else if (/no CUDA device is visible/i.test(m))
    hint = '; check that the NVIDIA driver is loaded (nvidia-smi) and that CUDA_VISIBLE_DEVICES names a GPU';
  else if (/is not supported/i.test(m) && /head dim/i.test(m))
    hint = '; the CUDA kernels take head dims 64 and 128 (the CPU backend takes any)';
  if (!hint) return err;
  return new Error(`${m}${hint}`, { cause: err });
}

export function abortError(message = 'generation was aborted'): Error {
  const e = new Error(message);
  e.name = 'AbortError';
  return e;
}

function positiveInt(name: string, v: number | undefined, fallback: number): number {
  if (v === undefined) return fallback;
  if (!Number.isInteger(v) || v < 1) throw new Error(`${name} must be a positive integer, got ${v}`);
  return v;
}

function resolveModel(model: string | ModelConfig): ModelConfig {
  if (typeof model === 'string') {
    const known = KNOWN_MODELS[model];
    if (!known) throw new Error(`unknown model '${model}' (known: ${Object.keys(KNOWN_MODELS).join(', ')})`);
    return known;
  }
  const parsed = ModelConfig.safeParse(model);
  if (!parsed.success)
    throw new Error(
      `invalid model config: ${parsed.error.issues.map((i) => `${i.path.join('.')}: ${i.message}`).join('; ')}`,
    );
  return parsed.data;
}

const SIZE_FIELDS = [
  'vocabSize',
  'hiddenSize',
  'numLayers',
  'numHeads',
  'numKvHeads',
  'headDim',
  'ffnHiddenSize',
] as const;

export class Engine {
  readonly config: ModelConfig;
  readonly options: ResolvedEngineOptions;
  #native: NativeEngine | undefined;
  #busy = false;

  private constructor(native: NativeEngine, options: ResolvedEngineOptions) {
    this.#native = native;
    this.options = options;
    this.config = options.model;
  }

  static buildInfo(): { version: string; build: string; backends: DeviceKind[] } {
    return loadBinding().buildInfo();
  }

  static async create(o: EngineOptions): Promise<Engine> {
    const native = loadBinding();
    const weights = o.weights ?? 'random';
    let config = resolveModel(o.model);
    type Ckpt = Awaited<ReturnType<typeof import('./loaders').openCheckpoint>>;
    let checkpoint: Ckpt | undefined;
    if (weights !== 'random') {
      const { openCheckpoint } = await import('./loaders');
      checkpoint = await openCheckpoint(weights);
      const fromFile = checkpoint.config;
      if (fromFile.family !== config.family)
        throw new Error(
          `checkpoint ${weights} holds a ${fromFile.family} model, but model '${config.name}' is ${config.family}`,
        );
      if (typeof o.model !== 'string') {
        for (const f of SIZE_FIELDS)
          if (o.model[f] !== fromFile[f])
            throw new Error(
              `checkpoint ${weights} has ${f} ${fromFile[f]}, but the given model config says ${o.model[f]}`,
            );
      }
      config = fromFile;
    }
    const tp = o.tp ?? 1;
    const problem = tpProblem(config, tp);
    if (problem) {
      await checkpoint?.close();
      throw new Error(problem);
    }
    const options: ResolvedEngineOptions = {
      model: config,
      weights,
      seed: o.seed ?? 0,
      dtype: o.dtype ?? 'fp32',
      device: o.device ?? 'cpu',
      tp,
      maxBatch: positiveInt('maxBatch', o.maxBatch, 8),
      maxSeqLen: positiveInt('maxSeqLen', o.maxSeqLen, config.maxPositions),
      threads: positiveInt('threads', o.threads, availableParallelism()),
    };
    if (!Number.isSafeInteger(options.seed) || options.seed < 0)
      throw new Error(`seed must be a non-negative integer, got ${options.seed}`);
    if (options.maxSeqLen > config.maxPositions)
      throw new Error(`maxSeqLen ${options.maxSeqLen} exceeds ${config.name}'s ${config.maxPositions} positions`);
    if (options.device === 'cuda' && !native.buildInfo().backends.includes('cuda'))
      throw new Error(CUDA_NOT_BUILT_MESSAGE);
    let engine: NativeEngine | undefined;
    try {
      engine = await native.createEngine({
        config,
        weights: checkpoint ? 'load' : 'random',
        seed: options.seed,
        dtype: options.dtype,
        device: options.device,
        tp: options.tp,
        maxBatch: options.maxBatch,
        maxSeqLen: options.maxSeqLen,
        threads: options.threads,
      });
      if (checkpoint) {
        for await (const t of checkpoint.tensors()) {
          await engine.setWeight(t.name, t.dtype, t.shape, await t.data());
        }
        engine.finishLoading();
      }
    } catch (err) {
      engine?.dispose();
      throw options.device === 'cuda' ? explainCudaError(err, options) : err;
    } finally {
      await checkpoint?.close();
    }
    return new Engine(engine, options);
  }

  get disposed(): boolean {
    return this.#native === undefined;
  }

  memory(): MemoryFigures {
    if (!this.#native) throw new Error('engine is disposed: cannot report memory');
    return this.#native.memory();
  }

  async generate(r: GenerateRequest): Promise<GenerateResult> {
    const native = this.#native;
    if (!native) throw new Error('engine is disposed: cannot generate');
    if (this.#busy) throw new Error('engine is busy with another generate (one at a time per engine)');
    if (r.signal?.aborted) throw abortError();
    const parsed = Sampling.safeParse(r.sampling ?? {});
    if (!parsed.success)
      throw new Error(
        `invalid sampling: ${parsed.error.issues.map((i) => `${i.path.join('.')}: ${i.message}`).join('; ')}`,
      );
    this.#busy = true;
    let callbackError: unknown;
    const onAbort = () => native.cancel();
    r.signal?.addEventListener('abort', onAbort, { once: true });
    try {
      const out = await native.generate(
        {
          inputIds: r.inputIds,
          maxNewTokens: r.maxNewTokens,
          attention: r.attention,
          kvCache: r.kvCache,
          sampling: parsed.data,
          dumpLogits: r.dumpLogits ?? false,
          cudaGraphs: r.cudaGraphs ?? true,
          stepBreakdown: r.tpBreakdown ?? false,
        },
        (step, tokens) => {
          if (!r.onTokens || callbackError !== undefined) return;
          try {
            r.onTokens(step, tokens);
          } catch (err) {
            // A failing consumer stops the generation; its error is what the caller sees.
            callbackError = err;
            native.cancel();
          }
        },
      );
      if (callbackError !== undefined) throw callbackError;
      const { stepTiming, ...result } = out;
      if (!stepTiming) return result;
      return { ...result, timings: { ...result.timings, tpBreakdown: tpBreakdownOf(stepTiming) } };
    } catch (err) {
      if (callbackError !== undefined) throw callbackError;
      throw this.options.device === 'cuda' ? explainCudaError(err, this.options) : err;
    } finally {
      r.signal?.removeEventListener('abort', onAbort);
      this.#busy = false;
    }
  }

  dispose(): void {
    this.#native?.dispose();
    this.#native = undefined;
  }
}

/** Host memory copy bandwidth in bytes/s (read + write), measured by the engine: the CPU decode roofline. */
export function measureCopyBandwidth(bytes = 512 * 2 ** 20, repeats = 5, threads = 0): number {
  return loadBinding().measureCopyBandwidth(bytes, repeats, threads);
}

/** Host memory read bandwidth in bytes/s: the most a decode step that streams its weights can reach. */
export function measureReadBandwidth(bytes = 512 * 2 ** 20, repeats = 5, threads = 0): number {
  return loadBinding().measureReadBandwidth(bytes, repeats, threads);
}
