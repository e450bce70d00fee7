// The job queue, in the database. Every state change is a compare-and-set (an UPDATE whose WHERE names the state,
// attempt and lease holder it expects), so a report from a stale attempt or a foreign agent changes nothing and is
// refused. Leasing picks and claims a job in one statement: on PostgreSQL the candidate row is locked with
// FOR UPDATE SKIP LOCKED, on SQLite the statement itself holds the single writer lock. Either way two agents never
// get the same attempt.

import {
  type DeviceKind,
  ExperimentSpec,
  type ExperimentSpecInput,
  expandExperiment,
  JobConfig,
  type LeasedJob,
  type LogLine,
  RunResult,
} from '../../contracts';
import { type AgentEvent, AgentInventory } from '../../contracts/agent';
import type { Db, Tx } from '../db';
import type { EventBus } from '../events';
import type { DbProvider } from '../migrate';
import { configKey } from './config-key';
import { estimateJobMemoryBytes } from './memory';
import { runRow, tagList } from './run-row';

export type QueueErrorCode = 'INVALID' | 'NOT_FOUND' | 'STALE_ATTEMPT' | 'BAD_STATE';

/** Where a job goes after a failed attempt (an error report or an expired lease): cancelled when a cancel was
 *  asked for, back in the queue while it is retryable and attempts remain, else failed. The lease is released. */
function afterFailedAttempt(
  job: { failedAttempts: number; maxAttempts: number; cancelRequested: boolean },
  retryable: boolean,
  now: Date,
) {
  const failedAttempts = job.failedAttempts + 1;
  const state: JobState = job.cancelRequested
    ? 'cancelled'
    : retryable && failedAttempts < job.maxAttempts
      ? 'queued'
      : 'failed';
  return {
    state,
    failedAttempts,
    leaseHolderId: null,
    leaseExpiresAt: null,
    finishedAt: state === 'queued' ? null : now,
  };
}

export class QueueError extends Error {
  constructor(
    readonly code: QueueErrorCode,
    message: string,
  ) {
    super(message);
    this.name = 'QueueError';
  }
}

export const ACTIVE_STATES = ['leased', 'running'] as const;
export const TERMINAL_STATES = ['succeeded', 'failed', 'cancelled'] as const;
export const JOB_STATES = ['queued', ...ACTIVE_STATES, ...TERMINAL_STATES] as const;
export type JobState = (typeof JOB_STATES)[number];

/** What the queue needs to know about an agent to hand it work. */
export interface AgentCapabilities {
  id: string;
  name: string;
  /** Engine backends it can run (a CUDA agent usually also runs CPU jobs). */
  backends: DeviceKind[];
  gpuCount: number;
  /** The smallest GPU's memory, and the host's: jobs estimated to need more are not handed out. */
  gpuMemoryBytes?: number | null;
  hostMemoryBytes?: number | null;
}

export interface QueueOptions {
  db: Db;
  provider: DbProvider;
  bus: EventBus;
  leaseMs: number;
  maxAttempts: number;
  now?: () => Date;
}

/** Interactive transactions wait behind each other on SQLite (one writer), so allow for a queue of them. */
const TX = { maxWait: 30_000, timeout: 30_000 } as const;

export function formatIssues(issues: readonly { path: readonly PropertyKey[]; message: string }[]): string {
  return issues.map((i) => `${i.path.map(String).join('.') || '(root)'}: ${i.message}`).join('; ');
}

export class Queue {
  readonly db: Db;
  readonly provider: DbProvider;
  readonly bus: EventBus;
  readonly leaseMs: number;
  readonly maxAttempts: number;
  private readonly now: () => Date;

  constructor(o: QueueOptions) {
    this.db = o.db;
    this.provider = o.provider;
    this.bus = o.bus;
    this.leaseMs = o.leaseMs;
    this.maxAttempts = o.maxAttempts;
    this.now = o.now ?? (() => new Date());
  }

  /** All writes go through here. On SQLite this also matters for correctness: the driver has one connection,
   *  and only a transaction keeps a concurrent write from landing inside another request's transaction. */
  tx<T>(fn: (tx: Tx) => Promise<T>): Promise<T> {
    return this.db.$transaction(fn, TX);
  }

  // ---- experiments -------------------------------------------------------------------------------------------

  /** Validates a spec, expands it and stores the experiment with all its jobs, queued, in one transaction. */
  async createExperiment(
    input: ExperimentSpecInput | unknown,
    opts: { createdBy?: string; maxAttempts?: number } = {},
  ) {
    const parsed = ExperimentSpec.safeParse(input);
    if (!parsed.success) throw new QueueError('INVALID', `invalid experiment: ${formatIssues(parsed.error.issues)}`);
    const spec = parsed.data;
    const configs = expandExperiment(spec);
    if (spec.targetAgent) await this.checkTarget(spec.targetAgent, configs);
    const maxAttempts = opts.maxAttempts ?? this.maxAttempts;
    const experiment = await this.tx(async (tx) => {
      const e = await tx.experiment.create({
        data: {
          name: spec.name,
          spec,
          model: spec.model,
          device: spec.device,
          targetAgent: spec.targetAgent ?? null,
          tags: spec.tags,
          tagList: tagList(spec.tags),
          notes: spec.notes,
          createdBy: opts.createdBy ?? null,
        },
      });
      await tx.job.createMany({
        data: configs.map((config, index) => ({
          experimentId: e.id,
          index,
          config,
          configKey: configKey(config),
          targetAgent: spec.targetAgent ?? null,
          maxAttempts,
          model: config.model,
          attention: config.attention,
          kvCache: config.kvCache,
          tp: config.tp,
          dtype: config.dtype,
          device: config.device,
          batchSize: config.batchSize,
          promptLength: config.promptLength,
          newTokens: config.newTokens,
          createdAt: e.createdAt,
          memoryBytes: estimateJobMemoryBytes(config),
        })),
      });
      return e;
    });
    this.bus.emit('job', { jobId: '', experimentId: experiment.id, state: 'queued', attempt: 0 });
    this.bus.emit('work');
    return { experiment, jobCount: configs.length };
  }

  /** A sweep pinned to one agent must be runnable there, or its jobs would wait forever. */
  private async checkTarget(name: string, configs: JobConfig[]) {
    const agent = await this.db.agent.findUnique({
      where: { name },
      select: { id: true, name: true, inventory: true, revokedAt: true },
    });
    if (!agent || agent.revokedAt)
      throw new QueueError('INVALID', `invalid experiment: targetAgent: no agent named '${name}'`);
    const inv = AgentInventory.safeParse(agent.inventory);
    // An agent that never said hello has no known hardware yet: nothing to check against.
    if (!inv.success) return;
    const gpus = inv.data.gpus;
    const smallestGpu = gpus.length ? Math.min(...gpus.map((g) => g.memoryBytes)) : 0;
    for (const c of configs) {
      if (!inv.data.engine.backends.includes(c.device) || (c.device === 'cuda' && gpus.length === 0))
        throw new QueueError('INVALID', `invalid experiment: device: agent '${name}' has no ${c.device} backend`);
      if (c.device === 'cuda' && c.tp > gpus.length)
        throw new QueueError(
          'INVALID',
          `invalid experiment: tp: TP ${c.tp} needs ${c.tp} GPUs; agent '${name}' has ${gpus.length}`,
        );
      const need = estimateJobMemoryBytes(c);
      const have = c.device === 'cuda' ? smallestGpu : inv.data.memoryBytes;
      if (need !== null && have > 0 && need > have) {
        const gb = (n: number) => `${(n / 1e9).toFixed(1)} GB`;
        throw new QueueError(
          'INVALID',
          `invalid experiment: ${c.model} ${c.dtype} batch ${c.batchSize} × ${c.promptLength + c.newTokens} tokens needs about ${gb(need)} per device; agent '${name}' has ${gb(have)}`,
        );
      }
    }
  }

  // ---- agent side ----------------------------------------------------------------------------------------------

  /** Claims the oldest queued job this agent can run, or returns null. */
  async lease(agent: AgentCapabilities): Promise<LeasedJob | null> {
    const backends = [...new Set(agent.backends)];
    if (backends.length === 0) return null;
    const pg = this.provider === 'postgresql';
    const args: unknown[] = [];
    const p = (v: unknown) => {
      args.push(v);
      return pg ? `$${args.length}` : '?';
    };
    const holder = p(agent.id);
    const devices = backends.map((b) => p(b)).join(', ');
    const gpus = p(agent.gpuCount);
    const name = p(agent.name);
    const real = pg ? '::double precision' : '';
    const gpuMem = `${p(agent.gpuMemoryBytes ?? Number.MAX_SAFE_INTEGER)}${real}`;
    const hostMem = `${p(agent.hostMemoryBytes ?? Number.MAX_SAFE_INTEGER)}${real}`;
    const sql = `UPDATE "Job" SET "state" = 'leased', "attempt" = "attempt" + 1, "leaseHolderId" = ${holder},
        "progress" = 0, "progressMessage" = NULL, "cancelRequested" = ${pg ? 'false' : '0'}
      WHERE "id" = (
        SELECT "id" FROM "Job"
        WHERE "state" = 'queued' AND "device" IN (${devices}) AND ("device" <> 'cuda' OR "tp" <= ${gpus})
          AND ("targetAgent" IS NULL OR "targetAgent" = ${name})
          AND ("memoryBytes" IS NULL OR "memoryBytes" <= CASE WHEN "device" = 'cuda' THEN ${gpuMem} ELSE ${hostMem} END)
        ORDER BY "createdAt", "experimentId", "index"
        LIMIT 1${pg ? ' FOR UPDATE SKIP LOCKED' : ''}
      ) AND "state" = 'queued'
      RETURNING "id", "attempt"`;
    const now = this.now();
    const leaseExpiresAt = new Date(now.getTime() + this.leaseMs);
    const job = await this.tx(async (tx) => {
      const rows = await tx.$queryRawUnsafe<{ id: string; attempt: number | bigint }[]>(sql, ...args);
      const row = rows[0];
      if (!row) return null;
      return tx.job.update({
        where: { id: row.id },
        data: { leaseExpiresAt, startedAt: now, finishedAt: null },
      });
    });
    if (!job) return null;
    this.bus.emit('job', { jobId: job.id, experimentId: job.experimentId, state: job.state, attempt: job.attempt });
    const config = JobConfig.parse(job.config);
    return {
      jobId: job.id,
      attempt: job.attempt,
      experimentId: job.experimentId,
      config,
      leaseExpiresAt: leaseExpiresAt.toISOString(),
    };
  }

  /** The CAS every report starts with: the job must be active under this attempt and held by this agent. */
  private async claimActive(
    tx: Tx,
    agentId: string,
    ref: { jobId: string; attempt: number },
    data: Record<string, unknown>,
    what: string,
  ) {
    const { count } = await tx.job.updateMany({
      where: { id: ref.jobId, attempt: ref.attempt, leaseHolderId: agentId, state: { in: [...ACTIVE_STATES] } },
      data,
    });
    if (count === 1) return;
    const job = await tx.job.findUnique({
      where: { id: ref.jobId },
      select: { state: true, attempt: true, leaseHolderId: true },
    });
    if (!job) throw new QueueError('NOT_FOUND', `${what}: job ${ref.jobId} does not exist`);
    let why: string;
    if (job.attempt !== ref.attempt)
      why = `attempt ${ref.attempt} is stale (the job is on attempt ${job.attempt}, state ${job.state})`;
    else if (!(ACTIVE_STATES as readonly string[]).includes(job.state))
      why = `attempt ${ref.attempt} is no longer active (state ${job.state})`;
    else why = `attempt ${ref.attempt} is not leased to this agent (state ${job.state})`;
    throw new QueueError('STALE_ATTEMPT', `${what} refused for job ${ref.jobId}: ${why}`);
  }

  private emitJob(j: { id: string; experimentId: string; state: string; attempt: number; progress?: number }) {
    this.bus.emit('job', {
      jobId: j.id,
      experimentId: j.experimentId,
      state: j.state,
      attempt: j.attempt,
      progress: j.progress,
    });
  }

  /** Extends the lease; the answer tells the agent whether the user asked to cancel. */
  async renew(agentId: string, ref: { jobId: string; attempt: number }) {
    const leaseExpiresAt = new Date(this.now().getTime() + this.leaseMs);
    const job = await this.tx(async (tx) => {
      await this.claimActive(tx, agentId, ref, { leaseExpiresAt }, 'renew');
      return tx.job.findUniqueOrThrow({ where: { id: ref.jobId }, select: { cancelRequested: true } });
    });
    return { leaseExpiresAt: leaseExpiresAt.toISOString(), cancelRequested: job.cancelRequested };
  }

  async progress(agentId: string, r: { jobId: string; attempt: number; progress: number; message?: string }) {
    const job = await this.tx(async (tx) => {
      await this.claimActive(
        tx,
        agentId,
        r,
        { state: 'running', progress: r.progress, progressMessage: r.message ?? null },
        'progress',
      );
      return tx.job.findUniqueOrThrow({ where: { id: r.jobId } });
    });
    this.emitJob(job);
    return { ok: true as const };
  }

  async log(agentId: string, r: { jobId: string; attempt: number; lines: LogLine[] }) {
    await this.tx(async (tx) => {
      await this.claimActive(tx, agentId, r, { state: 'running' }, 'log');
      await tx.jobLog.createMany({
        data: r.lines.map((l) => {
          const ts = new Date(l.ts);
          return {
            jobId: r.jobId,
            attempt: r.attempt,
            ts: Number.isNaN(ts.getTime()) ? this.now() : ts,
            level: l.level,
            text: l.text,
          };
        }),
      });
    });
    return { ok: true as const };
  }

  /** Stores the run and ends the job in one transaction; a stale attempt stores nothing. */
  async complete(agentId: string, r: { jobId: string; attempt: number; result: unknown }) {
    const parsed = RunResult.safeParse(r.result);
    if (!parsed.success)
      throw new QueueError('INVALID', `complete: invalid result: ${formatIssues(parsed.error.issues)}`);
    const result = parsed.data;
    const run = await this.tx(async (tx) => {
      await this.claimActive(
        tx,
        agentId,
        r,
        {
          state: 'succeeded',
          progress: 1,
          finishedAt: this.now(),
          leaseHolderId: null,
          leaseExpiresAt: null,
          error: null,
        },
        'complete',
      );
      const job = await tx.job.findUniqueOrThrow({ where: { id: r.jobId }, include: { experiment: true } });
      if (configKey(result.config) !== job.configKey)
        throw new QueueError(
          'INVALID',
          `complete: result is for configuration ${configKey(result.config)}, but job ${job.id} runs ${job.configKey}`,
        );
      const created = await tx.run.create({
        data: runRow(result, {
          experimentId: job.experimentId,
          jobId: job.id,
          attempt: r.attempt,
          tags: job.experiment.tags as string[],
          notes: job.experiment.notes,
          source: 'online',
        }),
      });
      return { run: created, job };
    });
    this.emitJob(run.job);
    return { ok: true as const, runId: run.run.id };
  }

  /** A failed attempt: retried while attempts remain if the agent says it may help, else the job fails. */
  async fail(agentId: string, r: { jobId: string; attempt: number; error: string; retryable: boolean }) {
    const job = await this.tx(async (tx) => {
      // Claim first (this also takes SQLite's write lock before anything is read), then decide where it goes.
      await this.claimActive(tx, agentId, r, { updatedAt: this.now() }, 'fail');
      const cur = await tx.job.findUniqueOrThrow({ where: { id: r.jobId } });
      const end = afterFailedAttempt(cur, r.retryable, this.now());
      const error =
        end.state === 'failed' && r.retryable
          ? `${r.error} (gave up after ${end.failedAttempts} failed attempts)`
          : r.error;
      return tx.job.update({ where: { id: r.jobId }, data: { ...end, error } });
    });
    this.emitJob(job);
    if (job.state === 'queued') this.bus.emit('work');
    return { ok: true as const };
  }

  /** The agent hands the job back (shutting down, not enough memory right now): requeued, not counted as failed. */
  async giveBack(agentId: string, r: { jobId: string; attempt: number; reason: string }) {
    const job = await this.tx(async (tx) => {
      await this.claimActive(tx, agentId, r, { updatedAt: this.now() }, 'giveBack');
      const cur = await tx.job.findUniqueOrThrow({ where: { id: r.jobId }, select: { cancelRequested: true } });
      const cancelled = cur.cancelRequested;
      return tx.job.update({
        where: { id: r.jobId },
        data: {
          state: cancelled ? 'cancelled' : 'queued',
          leaseHolderId: null,
          leaseExpiresAt: null,
          progress: 0,
          progressMessage: r.reason ? `given back: ${r.reason}` : null,
          finishedAt: cancelled ? this.now() : null,
        },
      });
    });
    this.emitJob(job);
    if (job.state === 'queued') this.bus.emit('work');
    return { ok: true as const };
  }

  /** An agent lost its right to report (token revoked): its leases go back to the queue now rather than at expiry,
   *  without counting a failed attempt. Returns how many jobs it held. */
  async releaseAgent(agentId: string, reason: string): Promise<number> {
    const held = await this.db.job.findMany({ where: { leaseHolderId: agentId, state: { in: [...ACTIVE_STATES] } } });
    let released = 0;
    for (const j of held) {
      const next: JobState = j.cancelRequested ? 'cancelled' : 'queued';
      const { count } = await this.tx((tx) =>
        tx.job.updateMany({
          where: { id: j.id, attempt: j.attempt, leaseHolderId: agentId, state: { in: [...ACTIVE_STATES] } },
          data: {
            state: next,
            leaseHolderId: null,
            leaseExpiresAt: null,
            progress: 0,
            progressMessage: reason,
            finishedAt: next === 'cancelled' ? this.now() : null,
          },
        }),
      );
      if (count !== 1) continue;
      released++;
      this.emitJob({ id: j.id, experimentId: j.experimentId, state: next, attempt: j.attempt });
    }
    if (released) this.bus.emit('work');
    return released;
  }

  // ---- user side -----------------------------------------------------------------------------------------------

  /** Queued → cancelled at once; leased/running → cancelRequested, and its agent is told to abort. */
  async cancel(jobId: string) {
    const result = await this.tx(async (tx) => {
      // Writes first, reads after: the CAS decides, and on SQLite the first write takes the writer lock.
      const queued = await tx.job.updateMany({
        where: { id: jobId, state: 'queued' },
        data: { state: 'cancelled', finishedAt: this.now(), cancelRequested: true },
      });
      if (queued.count === 1) return { job: await tx.job.findUniqueOrThrow({ where: { id: jobId } }), notify: null };
      const { count } = await tx.job.updateMany({
        where: { id: jobId, state: { in: [...ACTIVE_STATES] } },
        data: { cancelRequested: true },
      });
      if (count === 1) {
        const j = await tx.job.findUniqueOrThrow({ where: { id: jobId } });
        return { job: j, notify: j.leaseHolderId ? { agentId: j.leaseHolderId, attempt: j.attempt } : null };
      }
      const now = await tx.job.findUnique({ where: { id: jobId } });
      if (!now) throw new QueueError('NOT_FOUND', `job ${jobId} does not exist`);
      throw new QueueError('BAD_STATE', `job ${jobId} is already ${now.state}; nothing to cancel`);
    });
    this.emitJob(result.job);
    if (result.notify) {
      const event: AgentEvent = { type: 'cancel', jobId, attempt: result.notify.attempt };
      this.bus.emit('agent', { agentId: result.notify.agentId, event });
    }
    return { state: result.job.state, cancelRequested: result.job.cancelRequested };
  }

  /** Cancels every unfinished job of an experiment; returns how many were touched. */
  async cancelExperiment(experimentId: string) {
    const jobs = await this.db.job.findMany({
      where: { experimentId, state: { in: ['queued', ...ACTIVE_STATES] } },
      select: { id: true },
    });
    if (jobs.length === 0) {
      const e = await this.db.experiment.findUnique({ where: { id: experimentId }, select: { id: true } });
      if (!e) throw new QueueError('NOT_FOUND', `experiment ${experimentId} does not exist`);
    }
    let touched = 0;
    for (const j of jobs) {
      try {
        await this.cancel(j.id);
        touched++;
      } catch (err) {
        // Finished between the listing and the cancel: nothing left to do for it.
        if (!(err instanceof QueueError && err.code === 'BAD_STATE')) throw err;
      }
    }
    return { cancelled: touched };
  }

  /** A failed or cancelled job goes back to the queue with a fresh attempt budget. */
  async retry(jobId: string) {
    const job = await this.tx(async (tx) => {
      const { count } = await tx.job.updateMany({
        where: { id: jobId, state: { in: ['failed', 'cancelled'] } },
        data: {
          state: 'queued',
          failedAttempts: 0,
          error: null,
          cancelRequested: false,
          progress: 0,
          progressMessage: null,
          finishedAt: null,
          leaseHolderId: null,
          leaseExpiresAt: null,
        },
      });
      const j = await tx.job.findUnique({ where: { id: jobId } });
      if (!j) throw new QueueError('NOT_FOUND', `job ${jobId} does not exist`);
      if (count !== 1)
        throw new QueueError('BAD_STATE', `job ${jobId} is ${j.state}; only failed or cancelled jobs can be retried`);
      return j;
    });
    this.emitJob(job);
    this.bus.emit('work');
    return { state: job.state };
  }

  /** The sweeper: every lease past its expiry is requeued (attempt + 1 on the next lease) or, when the attempts
   *  are used up, failed with the reason. Returns the jobs it touched. */
  async expireLeases(): Promise<{ requeued: number; failed: number; cancelled: number }> {
    const now = this.now();
    const expired = await this.db.job.findMany({
      where: { state: { in: [...ACTIVE_STATES] }, leaseExpiresAt: { lt: now } },
      include: { leaseHolder: { select: { name: true } } },
      orderBy: { leaseExpiresAt: 'asc' },
      take: 500,
    });
    const out = { requeued: 0, failed: 0, cancelled: 0 };
    for (const j of expired) {
      const who = j.leaseHolder?.name ? `agent '${j.leaseHolder.name}'` : 'its agent';
      const reason = `attempt ${j.attempt}: lease expired at ${j.leaseExpiresAt?.toISOString()} (${who} stopped renewing)`;
      // An expired lease counts as a failed attempt that may be retried.
      const end = afterFailedAttempt(j, true, now);
      const next = end.state;
      const error =
        next === 'failed' ? `${reason}; gave up after ${end.failedAttempts} of ${j.maxAttempts} attempts` : reason;
      const changed = await this.tx(async (tx) => {
        const { count } = await tx.job.updateMany({
          // The same attempt, still active and still expired: a renewal or a report in between wins.
          where: { id: j.id, attempt: j.attempt, state: { in: [...ACTIVE_STATES] }, leaseExpiresAt: { lt: now } },
          data: { ...end, error },
        });
        return count === 1;
      });
      if (!changed) continue;
      out[next === 'queued' ? 'requeued' : next === 'failed' ? 'failed' : 'cancelled']++;
      this.emitJob({ id: j.id, experimentId: j.experimentId, state: next, attempt: j.attempt });
    }
    if (out.requeued) this.bus.emit('work');
    return out;
  }

  /** Whether any queued job exists (an agent that just connected is told to try a lease). */
  async hasQueued(): Promise<boolean> {
    return (await this.db.job.count({ where: { state: 'queued' } })) > 0;
  }
}
