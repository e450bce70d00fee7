// The shape of the compiled addon (native/build/Release/flashlab_engine.node). Only native/engine.ts uses it;
// everything else goes through the Engine class there.
import type { MemoryFigures } from '../contracts/engine';
import type { ModelConfig } from '../contracts/models';

export interface NativeEngineOptions {
  config: ModelConfig;
  /** 'random': seeded initialisation now; 'load': tensors follow through setWeight, then finishLoading */
  weights: 'random' | 'load';
  seed: number;
  dtype: 'fp32' | 'fp16' | 'bf16';
  device: 'cpu' | 'cuda';
  tp: number;
  maxBatch: number;
  maxSeqLen: number;
  threads: number;
}

export interface NativeGenerateRequest {
  inputIds: number[][];
  maxNewTokens: number;
  attention: 'naive' | 'fa1' | 'fa2';
  kvCache: boolean;
  sampling: {
    greedy: boolean;
    temperature: number;
    topK: number;
    topP: number;
    repetitionPenalty: number;
    seed: number;
    stopTokens: number[];
  };
  dumpLogits: boolean;
  cudaGraphs?: boolean;
  /** tp > 1: time the last step's pass and each of its all-reduces on shard 0 (result.stepTiming) */
  stepBreakdown?: boolean;
}

export interface NativeGenerateResult {
  tokens: number[][];
  newTokens: number[][];
  timings: { prefillMs: number; decodeMs: number[]; totalMs: number; tpotMs: number; tokensPerSec: number };
  memory: MemoryFigures;
  peakMemBytes: number;
  stoppedBy: 'maxTokens' | 'stop';
  decodeGraphs: boolean;
  decodeOneLaunch: boolean;
  /** present when stepBreakdown was asked for and tp > 1: the last step on shard 0, its all-reduces in order
   *  (two per layer: after attention, after the MLP) */
  stepTiming?: { stepMs: number; allReduceMs: number[] };
  logitsLast?: Float32Array[];
  logitsSteps?: Float32Array[][];
}

export interface NativeEngine {
  /** Converts (F16/BF16 -> engine dtype), transposes and shards one checkpoint tensor; false when it is a known
   *  buffer the engine ignores. Rejects naming the tensor when the name or shape is unexpected. */
  setWeight(name: string, dtype: 'F32' | 'F16' | 'BF16', shape: number[], data: Buffer): Promise<boolean>;
  /** Throws listing the missing tensors. */
  finishLoading(): void;
  generate(
    request: NativeGenerateRequest,
    onTokens: (step: number, tokens: number[]) => void,
  ): Promise<NativeGenerateResult>;
  /** Makes the running generate reject with an AbortError at its next step. */
  cancel(): void;
  memory(): MemoryFigures;
  dispose(): void;
  readonly disposed: boolean;
}

export interface NativeBinding {
  createEngine(options: NativeEngineOptions): Promise<NativeEngine>;
  buildInfo(): { version: string; build: string; backends: Array<'cpu' | 'cuda'> };
  /** Host copy bandwidth in bytes/s (bytes read + written), best of `repeats`. */
  measureCopyBandwidth(bytes: number, repeats: number, threads: number): number;
  /** Host read bandwidth in bytes/s (a streaming sum), best of `repeats`. */
  measureReadBandwidth(bytes: number, repeats: number, threads: number): number;
}
