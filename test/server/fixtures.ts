// Builders for server tests: agents with a given inventory, specs and a plausible RunResult for a leased job.
import type { AgentInventory, ExperimentSpecInput, JobConfig, RunResult } from '../../contracts';
import type { Db } from '../../server/db';
import { EventBus } from '../../server/events';
import type { DbProvider } from '../../server/migrate';
import { type AgentCapabilities, Queue } from '../../server/queue/queue';
import { capabilitiesOf } from '../../server/routers/agent';
import { hashToken } from '../../server/trpc';

export function inventory(
  name: string,
  o: { backend?: 'cpu' | 'cuda'; gpus?: number; gpuMemoryBytes?: number } = {},
): AgentInventory {
  const backend = o.backend ?? 'cpu';
  const gpus = Array.from({ length: o.gpus ?? 0 }, (_, index) => ({
    index,
    name: 'NVIDIA H100 80GB HBM3',
    memoryBytes: o.gpuMemoryBytes ?? 80e9,
  }));
  return {
    name,
    hostname: `${name}.test`,
    backend,
    cpu: { model: 'Test CPU', cores: 4 },
    memoryBytes: 16e9,
    gpus,
    engine: { version: '0.1.0', build: 'test', backends: backend === 'cuda' ? ['cpu', 'cuda'] : ['cpu'] },
    nodeVersion: process.version,
    agentVersion: '0.1.0',
  };
}

export async function makeAgent(
  db: Db,
  name: string,
  o: { backend?: 'cpu' | 'cuda'; gpus?: number; gpuMemoryBytes?: number; token?: string } = {},
) {
  const inv = inventory(name, o);
  const a = await db.agent.create({
    data: {
      name,
      tokenHash: hashToken(o.token ?? `token-of-${name}-${'x'.repeat(16)}`),
      inventory: inv,
      backend: inv.backend,
      gpuCount: inv.gpus.length,
    },
  });
  return capabilitiesOf(a) as AgentCapabilities;
}

export function tinySpec(over: Record<string, unknown> = {}): ExperimentSpecInput {
  return {
    name: 'tiny sweep',
    model: 'gpt2-tiny',
    attention: ['naive', 'fa2'],
    kvCache: [true],
    tp: [1],
    dtype: ['fp32'],
    batchSizes: [1],
    promptLengths: [8],
    newTokens: [4],
    warmup: 0,
    repeats: 2,
    tags: ['t'],
    ...over,
  } as ExperimentSpecInput;
}

export function resultFor(config: JobConfig, agentName = 'a'): RunResult {
  const repeats = Array.from({ length: config.repeats }, (_, i) => ({
    prefillMs: 10 + i,
    tpotMs: 2 + i / 10,
    totalMs: 20 + i,
    tokensPerSec: 100 - i,
    peakMemBytes: 1e6 + i,
  }));
  return {
    config,
    repeats,
    summary: {},
    environment: {
      agentName,
      hostname: `${agentName}.test`,
      backend: config.device,
      cpuModel: 'Test CPU',
      cpuCores: 4,
      memoryBytes: 16e9,
      gpus: [],
      engineBuild: 'test',
      nodeVersion: process.version,
      startedAt: new Date().toISOString(),
    },
  };
}

/** A queue over a test database with a clock the test moves. */
export function testQueue(db: Db, provider: DbProvider, o: { leaseMs?: number; maxAttempts?: number } = {}) {
  let t = Date.parse('2026-01-01T00:00:00Z');
  const bus = new EventBus();
  const queue = new Queue({
    db,
    provider,
    bus,
    leaseMs: o.leaseMs ?? 10_000,
    maxAttempts: o.maxAttempts ?? 3,
    now: () => new Date(t),
  });
  return {
    queue,
    bus,
    advance: (ms: number) => {
      t += ms;
    },
  };
}
