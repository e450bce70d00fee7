// The work loop leases only while a slot is free, at once on a poke ('work-available'), on its poll otherwise, runs up
// to --max-jobs jobs side by side, and on shutdown hands back a job whose lease arrived too late.
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import type { AgentApi } from '../../agent/connection';
import type { JobRunner } from '../../agent/job';
import { Worker } from '../../agent/worker';
import type { LeasedJob, RunResult } from '../../contracts';
import { fakeEnvironment, oneRepeatResult, tinyConfig } from './helpers';

const config = tinyConfig();
const leased = (n: number): LeasedJob => ({
  jobId: `j${n}`,
  attempt: 1,
  experimentId: 'e',
  config,
  leaseExpiresAt: '',
});
const environment = fakeEnvironment();
const result = (): RunResult => oneRepeatResult(config, environment);
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

function setup(queue: LeasedJob[], maxJobs: number, pollMs: number, runMs = 200) {
  const calls: string[] = [];
  let running = 0;
  let maxRunning = 0;
  let leaseGate: Promise<void> | undefined;
  const api = {
    lease: async () => {
      calls.push('lease');
      await leaseGate;
      return queue.shift() ?? null;
    },
    renew: async () => ({ cancelRequested: false }),
    progress: async () => {},
    log: async () => {},
    complete: async (ref: { jobId: string }) => {
      calls.push(`complete ${ref.jobId}`);
    },
    fail: async () => {},
    giveBack: async (ref: { jobId: string }) => {
      calls.push(`giveBack ${ref.jobId}`);
    },
  } as unknown as AgentApi;
  const runner: JobRunner = async () => {
    running++;
    maxRunning = Math.max(maxRunning, running);
    await sleep(runMs);
    running--;
    return result();
  };
  const worker = new Worker({
    api,
    maxJobs,
    pollMs,
    logger: { log() {} },
    jobDeps: () => ({ runner, environment: async () => environment, renewEveryMs: 50 }),
  });
  return {
    worker,
    calls,
    maxRunning: () => maxRunning,
    holdLeases: (p: Promise<void>) => {
      leaseGate = p;
    },
  };
}

describe('Worker', () => {
  it('runs up to maxJobs side by side and does not lease while every slot is busy', async () => {
    const t = setup([leased(1), leased(2), leased(3)], 2, 10_000);
    t.worker.start();
    await sleep(100);
    assert.equal(t.worker.activeJobs.length, 2);
    assert.equal(t.calls.filter((c) => c === 'lease').length, 2, 'no lease while both slots are busy');
    await sleep(400);
    await t.worker.idle();
    await t.worker.stopTaking();
    assert.equal(t.maxRunning(), 2);
    assert.deepEqual(t.calls.filter((c) => c.startsWith('complete')).sort(), [
      'complete j1',
      'complete j2',
      'complete j3',
    ]);
  });

  it('leases at once when poked, and on its poll otherwise', async () => {
    const queue: LeasedJob[] = [];
    const t = setup(queue, 1, 300, 10);
    t.worker.start();
    await sleep(50);
    assert.equal(t.calls.filter((c) => c === 'lease').length, 1, 'one lease at start, then waiting');
    queue.push(leased(7));
    t.worker.poke();
    await sleep(50);
    assert.ok(t.calls.includes('complete j7'), 'leased and ran on the poke, well before the 300 ms poll');
    const before = t.calls.filter((c) => c === 'lease').length;
    await sleep(450);
    assert.ok(t.calls.filter((c) => c === 'lease').length > before, 'the poll leases again by itself');
    await t.worker.stopTaking();
  });

  it('hands back a job whose lease arrives after shutdown began', async () => {
    let release!: () => void;
    const t = setup([leased(9)], 1, 10_000);
    t.holdLeases(
      new Promise<void>((r) => {
        release = r;
      }),
    );
    t.worker.start();
    await sleep(20);
    const stopping = t.worker.stopTaking();
    release();
    await stopping;
    await sleep(20);
    assert.ok(t.calls.includes('giveBack j9'));
    assert.ok(!t.calls.includes('complete j9'));
    assert.equal(t.worker.activeJobs.length, 0);
  });
});
