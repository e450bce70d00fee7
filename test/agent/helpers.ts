// Shared by the agent and server tests: a small CPU configuration and experiment, a stand-in environment and a
// one-repeat result.
import type { EnvironmentRecord, ExperimentSpecInput, JobConfig, RunResult } from '../../contracts';
import type { GenerateRequest, GenerateResult } from '../../native/engine';

/** gpt2-tiny with random weights on the CPU, one repeat, no warm-up; each test overrides what it measures. */
export function tinyConfig(overrides: Partial<JobConfig> = {}): JobConfig {
  return {
    model: 'gpt2-tiny',
    weights: { kind: 'random', seed: 1 },
    attention: 'fa2',
    kvCache: true,
    tp: 1,
    dtype: 'fp32',
    device: 'cpu',
    batchSize: 1,
    promptLength: 4,
    newTokens: 2,
    warmup: 0,
    repeats: 1,
    ...overrides,
  };
}

/** An experiment of gpt2-tiny on the CPU, one repeat of each configuration, no warm-up; the weights are the spec's
 *  default. Each test overrides what it measures. */
export function tinySpec(overrides: Partial<ExperimentSpecInput> = {}): ExperimentSpecInput {
  return {
    name: 'tiny',
    model: 'gpt2-tiny',
    attention: ['fa2'],
    kvCache: [true],
    tp: [1],
    dtype: ['fp32'],
    device: 'cpu',
    batchSizes: [1],
    promptLengths: [4],
    newTokens: [2],
    warmup: 0,
    repeats: 1,
    ...overrides,
  };
}

/** An environment record whose values no test reads: only its presence in a result matters. */
export function fakeEnvironment(overrides: Partial<EnvironmentRecord> = {}): EnvironmentRecord {
  return {
    agentName: 'a',
    hostname: 'h',
    backend: 'cpu',
    cpuModel: 'c',
    cpuCores: 1,
    memoryBytes: 1,
    gpus: [],
    engineBuild: 'b',
    nodeVersion: 'v',
    startedAt: 't',
    ...overrides,
  };
}

/** What a runner hands back for `config`: one repeat of unit figures. */
export function oneRepeatResult(config: JobConfig, environment: EnvironmentRecord = fakeEnvironment()): RunResult {
  return {
    config,
    repeats: [{ prefillMs: 1, tpotMs: 1, totalMs: 1, tokensPerSec: 1, peakMemBytes: 1 }],
    summary: {},
    environment,
  };
}

/** What a stand-in engine's generate answers to `r`: two new tokens and fixed unit-ish figures, decoded eagerly;
 *  `overrides` replace whole fields. */
export function fakeGenerateResult(r: GenerateRequest, overrides: Partial<GenerateResult> = {}): GenerateResult {
  return {
    tokens: [[...r.inputIds[0], 1, 2]],
    newTokens: [[1, 2]],
    timings: { prefillMs: 1, decodeMs: [2], totalMs: 3, tpotMs: 2, tokensPerSec: 666 },
    memory: { peakBytes: 10, weightsBytes: 5, kvCacheBytes: 1, activationsPeakBytes: 4 },
    peakMemBytes: 10,
    stoppedBy: 'maxTokens',
    decodeGraphs: false,
    decodeOneLaunch: false,
    ...overrides,
  };
}
