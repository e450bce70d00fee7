// The work loop: lease a job whenever a slot is free (at start, on 'work-available', and on a slow poll as a
// fallback for missed events), run it, and stop leasing on shutdown.
import type { LeasedJob } from '../contracts/agent';
import { backoffDelay, sleep } from './backoff';
import { type AgentApi, isTransportError } from './connection';
import { type JobDeps, type JobOutcome, RunningJob, type StopReason } from './job';
import { jobTag, type Logger } from './log';

export interface WorkerOptions {
  api: AgentApi;
  maxJobs: number;
  pollMs: number;
  logger: Logger;
  /** The dependencies of each job; one per slot so that slots do not share an engine. */
  jobDeps: (slot: number) => Omit<JobDeps, 'api' | 'logger'>;
  onJobEnd?: (ref: LeasedJob, outcome: JobOutcome) => void;
}

export class Worker {
  private readonly running = new Map<number, RunningJob>();
  private readonly finished = new Map<number, Promise<unknown>>();
  private wake: (() => void) | undefined;
  private taking = true;
  private loop: Promise<void> | undefined;

  constructor(private readonly opts: WorkerOptions) {}

  get activeJobs(): RunningJob[] {
    return [...this.running.values()];
  }

  start(): void {
    this.loop ??= this.leaseLoop();
  }

  /** There may be work: try to lease now instead of at the next poll. */
  poke(): void {
    this.wake?.();
  }

  cancel(jobId: string, attempt: number): void {
    for (const job of this.running.values())
      if (job.ref.jobId === jobId && job.ref.attempt === attempt) job.stop({ kind: 'cancel' });
  }

  /** Stops leasing; running jobs go on until they end or are stopped. A lease call still in flight (say, waiting
   *  for a reconnect) is not waited for long: whatever it brings is handed straight back. */
  async stopTaking(): Promise<void> {
    this.taking = false;
    this.poke();
    await Promise.race([this.loop, sleep(1_000)]);
  }

  stopAll(reason: StopReason): void {
    for (const job of this.running.values()) job.stop(reason);
  }

  /** Resolves when every running job has been reported (or could not be). */
  async idle(): Promise<void> {
    while (this.finished.size > 0) await Promise.allSettled([...this.finished.values()]);
  }

  private freeSlot(): number | undefined {
    for (let slot = 0; slot < this.opts.maxJobs; slot++) if (!this.running.has(slot)) return slot;
    return undefined;
  }

  private waitForWake(ms: number): Promise<void> {
    return new Promise((resolve) => {
      const timer = setTimeout(done, ms);
      function done() {
        clearTimeout(timer);
        resolve();
      }
      this.wake = () => {
        this.wake = undefined;
        done();
      };
    });
  }

  private async leaseLoop(): Promise<void> {
    const { api, logger } = this.opts;
    let failures = 0;
    while (this.taking) {
      const slot = this.freeSlot();
      if (slot === undefined) {
        await this.waitForWake(this.opts.pollMs);
        continue;
      }
      let leased: Awaited<ReturnType<AgentApi['lease']>>;
      try {
        leased = await api.lease();
        failures = 0;
      } catch (err) {
        if (!isTransportError(err)) logger.log('warn', `lease refused: ${(err as Error).message}`);
        await sleep(backoffDelay(failures++, { baseMs: 500, maxMs: this.opts.pollMs }));
        continue;
      }
      if (!this.taking) {
        // Shutdown began while the lease was in flight: hand the job straight back.
        if (leased && 'config' in leased)
          await api
            .giveBack({ jobId: leased.jobId, attempt: leased.attempt }, 'agent shutting down')
            .catch(() => undefined);
        break;
      }
      if (leased === null) {
        await this.waitForWake(this.opts.pollMs);
        continue;
      }
      if (!('config' in leased)) {
        logger.log('error', `[${jobTag(leased.ref)}] cannot read the job's config: ${leased.problem}`);
        await api
          .fail(leased.ref, `the agent cannot read this job's config: ${leased.problem}`, false)
          .catch(() => undefined);
        continue;
      }
      this.launch(slot, leased);
    }
  }

  private launch(slot: number, job: LeasedJob): void {
    const running = new RunningJob(job, { ...this.opts.jobDeps(slot), api: this.opts.api, logger: this.opts.logger });
    this.running.set(slot, running);
    const done = running
      .run()
      .catch((err: unknown) => {
        this.opts.logger.log('error', `[${jobTag(running.ref)}] ${(err as Error).stack ?? String(err)}`);
        return 'unreported' as const;
      })
      .then((outcome) => {
        this.opts.onJobEnd?.(job, outcome);
      })
      .finally(() => {
        this.running.delete(slot);
        this.finished.delete(slot);
        this.poke();
      });
    this.finished.set(slot, done);
  }
}
