// Turns a measured RunResult (online or imported) into the Run row: the configuration and the headline figures
// as columns, so that the dashboard filters, sorts and groups in the database.
import type { FigureSummary, RepeatFigures, RunResult } from '../../contracts/experiment';
import { summarize } from '../../lib/stats';
import { configKey } from './config-key';

/** The agent's summary of a figure when it sent one, else ours from the repeats (same definitions). */
function figure(result: RunResult, key: keyof RepeatFigures & string): FigureSummary {
  const given = result.summary[key];
  if (given) return given;
  const values = result.repeats.map((r) => r[key]).filter((v): v is number => typeof v === 'number');
  if (values.length === 0) throw new Error(`run result has no '${key}' figures`);
  return summarize(values);
}

function finiteOrThrow(result: RunResult) {
  result.repeats.forEach((r, i) => {
    for (const [k, v] of Object.entries(r))
      if (typeof v === 'number' && !Number.isFinite(v))
        throw new Error(`result.repeats.${i}.${k} is not a finite number`);
  });
}

export interface RunRowSource {
  experimentId: string;
  jobId?: string;
  attempt?: number;
  tags: string[];
  notes: string;
  source: 'online' | 'import';
}

export function tagList(tags: string[]): string {
  return tags.length ? `,${tags.join(',')},` : '';
}

/** The `data` of a Run create. */
export function runRow(result: RunResult, src: RunRowSource) {
  finiteOrThrow(result);
  const c = result.config;
  const env = result.environment;
  const prefill = figure(result, 'prefillMs');
  const tpot = figure(result, 'tpotMs');
  const total = figure(result, 'totalMs');
  const tps = figure(result, 'tokensPerSec');
  const maxOf = (k: 'kvCacheBytes' | 'weightsBytes') => {
    const v = result.repeats.map((r) => r[k]).filter((x): x is number => typeof x === 'number');
    return v.length ? Math.max(...v) : null;
  };
  return {
    jobId: src.jobId ?? null,
    attempt: src.attempt ?? null,
    experimentId: src.experimentId,
    model: c.model,
    weightsKind: c.weights.kind,
    attention: c.attention,
    kvCache: c.kvCache,
    tp: c.tp,
    dtype: c.dtype,
    device: c.device,
    batchSize: c.batchSize,
    promptLength: c.promptLength,
    newTokens: c.newTokens,
    warmup: c.warmup,
    repeatCount: result.repeats.length,
    configKey: configKey(c),
    prefillMsMedian: prefill.median,
    prefillMsMean: prefill.mean,
    prefillMsStd: prefill.std,
    prefillMsP90: prefill.p90,
    tpotMsMedian: tpot.median,
    tpotMsMean: tpot.mean,
    tpotMsStd: tpot.std,
    tpotMsP90: tpot.p90,
    totalMsMedian: total.median,
    totalMsMean: total.mean,
    totalMsStd: total.std,
    tokensPerSecMedian: tps.median,
    tokensPerSecMean: tps.mean,
    peakMemBytes: Math.max(...result.repeats.map((r) => r.peakMemBytes)),
    kvCacheBytes: maxOf('kvCacheBytes'),
    weightsBytes: maxOf('weightsBytes'),
    repeats: result.repeats,
    summary: result.summary,
    environment: env,
    sampleTokens: result.sampleTokens ?? undefined,
    gpuName: c.device === 'cuda' ? (env.gpus[0]?.name ?? null) : null,
    gpuCount: env.gpus.length,
    agentName: env.agentName,
    hostname: env.hostname,
    engineBuild: env.engineBuild,
    gitCommit: env.gitCommit ?? null,
    tags: src.tags,
    tagList: tagList(src.tags),
    notes: src.notes,
    source: src.source,
    startedAt: Number.isNaN(Date.parse(env.startedAt)) ? null : new Date(env.startedAt),
  };
}
