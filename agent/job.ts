// One leased job from start to end. Whatever happens, the job is finished exactly once: completed, failed or
// given back (in the `finally`), its lease renewed meanwhile, and the engine aborted through an AbortSignal
// when the user cancels, the lease is lost or the agent is shutting down.
import type { JobAttemptRef, LeasedJob } from '../contracts/agent';
import type { EnvironmentRecord, JobConfig, RunResult } from '../contracts/experiment';
import { backoffDelay, sleep } from './backoff';
import { type AgentApi, isTransportError, serverErrorCode } from './connection';
import { JobLog, jobTag, type Logger } from './log';

/** Why a running job was stopped from outside; it decides how the job is reported. */
export type StopReason =
  | { kind: 'cancel' }
  | { kind: 'give-back'; reason: string }
  | { kind: 'lease-lost'; reason: string };

export type JobOutcome = 'completed' | 'failed' | 'cancelled' | 'given-back' | 'lease-lost' | 'unreported';

export type JobRunner = (
  config: JobConfig,
  ctx: {
    signal: AbortSignal;
    environment: () => Promise<EnvironmentRecord>;
    log: (level: 'info' | 'warn', text: string) => void;
    progress: (fraction: number, message: string) => void;
  },
) => Promise<RunResult>;

export interface JobDeps {
  api: AgentApi;
  runner: JobRunner;
  environment: (config: JobConfig) => Promise<EnvironmentRecord>;
  renewEveryMs: number;
  logger: Logger;
  /** How long a final report keeps being retried while the dashboard is unreachable. */
  reportDeadlineMs?: number;
  /** Aborted when the agent must exit now: reports are no longer retried. */
  exitSignal?: AbortSignal;
}

/** Transient failures are worth another attempt, perhaps on another agent; the rest would fail again. */
export function isRetryableEngineError(err: unknown): boolean {
  const msg = err instanceof Error ? err.message : String(err);
  return /out of memory|cudaErrorMemoryAllocation|ECONNRESET|EAGAIN|temporar/i.test(msg);
}

export class RunningJob {
  readonly ref: JobAttemptRef;
  readonly startedAt = Date.now();
  progress = 0;
  private readonly controller = new AbortController();
  private readonly log: JobLog;

  constructor(
    readonly job: LeasedJob,
    private readonly deps: JobDeps,
  ) {
    this.ref = { jobId: job.jobId, attempt: job.attempt };
    this.log = new JobLog(this.ref, (lines) => deps.api.log(this.ref, lines), deps.logger);
  }

  stop(reason: StopReason): void {
    if (!this.controller.signal.aborted) this.controller.abort(reason);
  }

  /** Where the measured part began (first progress past 0): loading the engine says nothing about the pace. */
  private paceFrom: { at: number; progress: number } | undefined;

  private setProgress(fraction: number): void {
    this.progress = Math.min(1, Math.max(0, fraction));
    if (this.progress > 0) this.paceFrom ??= { at: Date.now(), progress: this.progress };
  }

  /** Time left at the pace since the measured part began, or Infinity while there is no pace yet. */
  estimatedRemainingMs(): number {
    const from = this.paceFrom;
    if (!from || this.progress <= from.progress) return Number.POSITIVE_INFINITY;
    return ((Date.now() - from.at) * (1 - this.progress)) / (this.progress - from.progress);
  }

  async run(): Promise<JobOutcome> {
    const { api, runner } = this.deps;
    const signal = this.controller.signal;
    const c = this.job.config;
    this.log.info(
      `started: ${c.model} ${c.attention} kv=${c.kvCache ? 'on' : 'off'} tp=${c.tp} ${c.dtype} ${c.device} batch=${c.batchSize} prompt=${c.promptLength} new=${c.newTokens} (warm-up ${c.warmup}, repeats ${c.repeats})`,
    );
    const renewTimer = setInterval(() => void this.renew(), this.deps.renewEveryMs);
    let lastProgressSent = 0;
    let report: (() => Promise<void>) | undefined;
    let outcome: JobOutcome = 'unreported';
    try {
      const result = await runner(c, {
        signal,
        environment: () => this.deps.environment(c),
        log: (level, text) => this.log.line(level, text),
        progress: (fraction, message) => {
          this.setProgress(fraction);
          // Progress is a display: a few updates a second are plenty, and the last one is never skipped.
          const now = Date.now();
          if (now - lastProgressSent < 500 && fraction < 1) return;
          lastProgressSent = now;
          api.progress(this.ref, this.progress, message).catch(() => undefined);
        },
      });
      if (signal.aborted) throw signal.reason;
      this.log.info(
        `done: ${result.repeats.length} repeats, median tpot ${result.summary.tpotMs?.median.toFixed(2) ?? '-'} ms`,
      );
      report = () => api.complete(this.ref, result);
      outcome = 'completed';
    } catch (err) {
      const stop = signal.aborted ? (signal.reason as StopReason) : undefined;
      if (stop?.kind === 'give-back') {
        this.log.warn(`giving the job back: ${stop.reason}`);
        report = () => api.giveBack(this.ref, stop.reason);
        outcome = 'given-back';
      } else if (stop?.kind === 'cancel') {
        this.log.warn('cancelled');
        report = () => api.fail(this.ref, 'cancelled by request', false);
        outcome = 'cancelled';
      } else if (stop?.kind === 'lease-lost') {
        // The dashboard gave this attempt to someone else: any report would be refused as stale.
        this.log.warn(`stopped: ${stop.reason}`);
        outcome = 'lease-lost';
      } else {
        const message = err instanceof Error ? err.message : String(err);
        const retryable = isRetryableEngineError(err);
        this.log.error(`failed${retryable ? ' (retryable)' : ''}: ${message}`);
        report = () => api.fail(this.ref, message, retryable);
        outcome = 'failed';
      }
    } finally {
      clearInterval(renewTimer);
      await this.log.flush();
      this.log.close();
      if (report && !(await this.deliver(report))) outcome = 'unreported';
    }
    return outcome;
  }

  private renewing = false;
  private async renew(): Promise<void> {
    // While the dashboard is away a renewal waits for the reconnect; ticks meanwhile would pile up behind it.
    if (this.renewing || this.controller.signal.aborted) return;
    this.renewing = true;
    try {
      const { cancelRequested } = await this.deps.api.renew(this.ref);
      if (cancelRequested) this.stop({ kind: 'cancel' });
    } catch (err) {
      // Down connection: the next tick tries again; the lease outlives a few missed renewals.
      if (isTransportError(err)) return;
      this.deps.logger.log(
        'warn',
        `[${jobTag(this.ref)}] lease renewal refused (${serverErrorCode(err) ?? 'error'}): ${(err as Error).message}`,
      );
      this.stop({ kind: 'lease-lost', reason: `lease renewal refused: ${(err as Error).message}` });
    } finally {
      this.renewing = false;
    }
  }

  /** Sends the job's end, retrying across reconnects; false when it could not be delivered or was refused. */
  private async deliver(report: () => Promise<void>): Promise<boolean> {
    const deadline = Date.now() + (this.deps.reportDeadlineMs ?? 10 * 60_000);
    for (let attempt = 0; ; attempt++) {
      try {
        await report();
        return true;
      } catch (err) {
        if (!isTransportError(err)) {
          this.deps.logger.log(
            'warn',
            `[${jobTag(this.ref)}] the dashboard refused the job's end (${serverErrorCode(err) ?? 'error'}): ${(err as Error).message}`,
          );
          return false;
        }
        if (Date.now() > deadline || this.deps.exitSignal?.aborted) {
          this.deps.logger.log(
            'error',
            `[${jobTag(this.ref)}] could not reach the dashboard to report the job's end; its lease will expire and it will be requeued`,
          );
          return false;
        }
        try {
          await sleep(backoffDelay(attempt, { maxMs: 5000 }), this.deps.exitSignal);
        } catch {
          return false;
        }
      }
    }
  }
}
