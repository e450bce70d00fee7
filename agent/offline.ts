// Offline runs: a plan's experiment expanded and run here with the same measurement code as online jobs — the
// configurations of one engine interleaved repeat by repeat — into a results file for `flashlab import`.
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
import { runInterleaved } from './runners/benchmark';

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

/** Configurations that one loaded engine serves, in the plan's order of first appearance. */
function byEngine(jobs: JobConfig[]): JobConfig[][] {
  const groups = new Map<string, JobConfig[]>();
  for (const c of jobs) {
    const key = JSON.stringify([c.model, c.weights, c.dtype, c.device, c.tp]);
    const g = groups.get(key);
    if (g) g.push(c);
    else groups.set(key, [c]);
  }
  return [...groups.values()];
}

/** A TP run's median all-reduce share of a decode token, for the progress line. */
function tpDetail(r: RunResult): string {
  const ar = r.summary.tpAllReduceMs?.median;
  const step = r.summary.tpStepMs?.median;
  if (ar === undefined || step === undefined || step <= 0) return '';
  return `, all-reduce ${ar.toFixed(3)} of ${step.toFixed(3)} ms per token (${((100 * ar) / step).toFixed(0)} %)`;
}

export async function runOffline(experiment: ExperimentSpec, opts: OfflineRunOptions = {}): Promise<OfflineResults> {
  const jobs = expandExperiment(experiment);
  const inventory = await collectInventory(opts.agentName ?? `${os.hostname()} (offline)`, Engine.buildInfo());
  const engines = new EngineCache();
  const runs: RunResult[] = [];
  const failures: OfflineResults['failures'] = [];
  const signal = opts.signal ?? new AbortController().signal;
  let done = 0;
  try {
    for (const group of byEngine(jobs)) {
      if (signal.aborted) break;
      const first = done;
      group.forEach((config, i) => opts.onJob?.(first + i, jobs.length, config, 'start'));
      let outcomes: Awaited<ReturnType<typeof runInterleaved>>;
      try {
        outcomes = await runInterleaved(group, {
          engines,
          signal,
          environment: () => environmentRecord(inventory, group[0].device),
          log: (level, text) => opts.log?.(level, text),
        });
      } catch (err) {
        if (signal.aborted) break;
        throw err;
      }
      for (const o of outcomes) {
        const index = first + group.indexOf(o.config);
        if ('result' in o) {
          runs.push(o.result);
          opts.onJob?.(
            index,
            jobs.length,
            o.config,
            'done',
            `median tpot ${o.result.summary.tpotMs?.median.toFixed(2)} ms${tpDetail(o.result)}`,
          );
        } else {
          failures.push({ config: o.config, error: o.error });
          opts.onJob?.(index, jobs.length, o.config, 'failed', o.error);
        }
      }
      // A failure may have left the engine in doubt: the next group starts from a fresh one.
      if (outcomes.some((o) => 'error' in o)) engines.dispose();
      done += group.length;
    }
  } finally {
    engines.dispose();
  }
  return { format: 'flashlab-results/1', experiment, runs, failures };
}
