// What the routers read of jobs and runs, and how they filter them: one definition each, so that a field added to
// a configuration or a change to tag matching reaches every page at once.
import { z } from 'zod';
import { DecodeLaunch, EnvironmentRecord, RepeatFigures, TpBreakdown } from '../../contracts/experiment';
import type { PrismaNs } from '../db';

/** The columns that make up one benchmark configuration, on both Job and Run (and the groupBy keys for them). */
export const CONFIG_FIELDS = [
  'model',
  'attention',
  'kvCache',
  'tp',
  'dtype',
  'device',
  'batchSize',
  'promptLength',
  'newTokens',
] as const;
export type ConfigField = (typeof CONFIG_FIELDS)[number];

// Literal `true` per key so that Prisma's result types still see each selected column.
export const configSelect = Object.fromEntries(CONFIG_FIELDS.map((k) => [k, true])) as { [K in ConfigField]: true };

/** A configuration's columns picked out of a row that has them (a run, a job, a groupBy row). */
export function configOf<T extends { [K in ConfigField]: unknown }>(r: T): Pick<T, ConfigField> {
  return {
    model: r.model,
    attention: r.attention,
    kvCache: r.kvCache,
    tp: r.tp,
    dtype: r.dtype,
    device: r.device,
    batchSize: r.batchSize,
    promptLength: r.promptLength,
    newTokens: r.newTokens,
  };
}

/** A job as the queue and the experiment pages show it: state, progress, configuration, lease. */
export const jobSelect = {
  id: true,
  index: true,
  state: true,
  attempt: true,
  failedAttempts: true,
  maxAttempts: true,
  progress: true,
  progressMessage: true,
  error: true,
  cancelRequested: true,
  ...configSelect,
  startedAt: true,
  finishedAt: true,
  leaseExpiresAt: true,
  leaseHolder: { select: { id: true, name: true } },
} as const satisfies PrismaNs.JobSelect;

/** A run's configuration and the columns every run view shows beside its figures. */
export const runBaseSelect = {
  id: true,
  experimentId: true,
  ...configSelect,
  peakMemBytes: true,
  agentName: true,
  gpuName: true,
  engineBuild: true,
  createdAt: true,
} as const satisfies PrismaNs.RunSelect;

/** A whole-tag match on the denormalised `tagList` (",a,b,"): a LIKE that both databases index the same way. */
export function tagWhere(tag: string): { tagList: { contains: string } } {
  return { tagList: { contains: `,${tag},` } };
}

// A run's JSON columns were written by whichever engine and server version stored it: a view reads what it can
// and shows the rest as missing rather than failing the whole page.
// A breakdown (or a decode-launch value) that does not parse costs only itself, not the repeat's timings.
const StoredRepeats = z
  .array(
    RepeatFigures.extend({
      tpBreakdown: TpBreakdown.optional().catch(undefined),
      decodeLaunch: DecodeLaunch.optional().catch(undefined),
    }),
  )
  .catch([]);
const StoredEnvironment = EnvironmentRecord.partial().catch({});

/** A run's `repeats` column, or no repeats when it does not parse. */
export function storedRepeats(v: unknown): RepeatFigures[] {
  return StoredRepeats.parse(v);
}

/** A run's `environment` column, every field optional; empty when it does not parse. */
export function storedEnvironment(v: unknown): Partial<EnvironmentRecord> {
  return StoredEnvironment.parse(v);
}
