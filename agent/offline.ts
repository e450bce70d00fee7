// Offline runs: a plan's experiment expanded and run here, one job after another on the same runner as online
// jobs, into a results file that `flashlab import` later puts into the history.
import os from 'node:os';
import {
  type ExperimentSpec,
  expandExperiment,
  type JobConfig,
  OfflinePlan,
  type OfflineResults,
  type RunResult,
} from '../contracts/experiment';
import { Engine } from '../native/engine';
import { EngineCache } from './engine-cache';
import { collectInventory, environmentRecord } from './inventory';
import { runBenchmark } from './runners/benchmark';

export interface OfflineRunOptions {
  agentName?: string;
  signal?: AbortSignal;
  /** Called as each job starts and ends, for a progress display. */
  onJob?: (
    index: number,
    total: number,
    config: JobConfig,
    state: 'start' | 'done' | 'failed',
    detail?: string,
  ) => void;
  log?: (level: 'info' | 'warn', text: string) => void;
}

/** Parses a plan file's JSON; a bad plan is refused with the field and the reason. */
export function parsePlan(json: unknown): ExperimentSpec {
  const parsed = OfflinePlan.safeParse(json);
  if (!parsed.success) {
    const problems = parsed.error.issues.map((i) => `  ${i.path.join('.') || '(plan)'}: ${i.message}`).join('\n');
    throw new Error(`the plan is not valid:\n${problems}`);
  }
  return parsed.data.experiment;
}

export async function runOffline(experiment: ExperimentSpec, opts: OfflineRunOptions = {}): Promise<OfflineResults> {
  const jobs = expandExperiment(experiment);
  const inventory = await collectInventory(opts.agentName ?? `${os.hostname()} (offline)`, Engine.buildInfo());
  const engines = new EngineCache();
  const runs: RunResult[] = [];
  const failures: OfflineResults['failures'] = [];
  try {
    for (const [i, config] of jobs.entries()) {
      if (opts.signal?.aborted) break;
      opts.onJob?.(i, jobs.length, config, 'start');
      try {
        const result = await runBenchmark(config, {
          engines,
          signal: opts.signal ?? new AbortController().signal,
          environment: () => environmentRecord(inventory, config.device),
          log: (level, text) => opts.log?.(level, `[${i + 1}/${jobs.length}] ${text}`),
          progress: () => undefined,
        });
        runs.push(result);
        opts.onJob?.(i, jobs.length, config, 'done', `median tpot ${result.summary.tpotMs?.median.toFixed(2)} ms`);
      } catch (err) {
        if (opts.signal?.aborted) break;
        engines.dispose();
        const message = err instanceof Error ? err.message : String(err);
        failures.push({ config, error: message });
        opts.onJob?.(i, jobs.length, config, 'failed', message);
      }
    }
  } finally {
    engines.dispose();
  }
  return { format: 'flashlab-results/1', experiment, runs, failures };
}
