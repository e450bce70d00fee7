// A started job always ends with exactly one report: complete, fail or give-back; none when its lease was lost.
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { TRPCClientError } from '@trpc/client';
import type { AgentApi } from '../../agent/connection';
import { isRetryableEngineError, type JobRunner, RunningJob } from '../../agent/job';
import type { LeasedJob } from '../../contracts';
import { fakeEnvironment, oneRepeatResult, tinyConfig } from './helpers';

const job: LeasedJob = {
  jobId: 'job-1',
  attempt: 2,
  experimentId: 'exp-1',
  leaseExpiresAt: new Date().toISOString(),
  config: tinyConfig({ promptLength: 8, newTokens: 4 }),
};
const environment = fakeEnvironment();
const result = oneRepeatResult(job.config, environment);

const serverError = (code: string, message: string) =>
  new TRPCClientError(message, {
    result: { error: { code: -32600, message, data: { code, httpStatus: 409 } } } as never,
  });
const closedError = () => new TRPCClientError('WebSocket closed');

function fakeApi(overrides: Partial<AgentApi> = {}) {
  const calls: Array<[string, unknown[]]> = [];
  const rec =
    (name: string) =>
    async (...args: unknown[]) => {
      calls.push([name, args]);
    };
  const api = {
    hello: async () => ({ agentId: 'x', leaseMs: 1000, renewEveryMs: 100 }),
    lease: async () => null,
    renew: async (...args: unknown[]) => {
      calls.push(['renew', args]);
      return { cancelRequested: false };
    },
    progress: rec('progress'),
    log: rec('log'),
    complete: rec('complete'),
    fail: rec('fail'),
    giveBack: rec('giveBack'),
    chatDelta: rec('chatDelta'),
    chatEnd: rec('chatEnd'),
    events: () => ({ unsubscribe() {} }),
    ...overrides,
  } as AgentApi;
  const reports = () => calls.filter(([n]) => n === 'complete' || n === 'fail' || n === 'giveBack');
  return { api, calls, reports };
}

const quietLogger = { log() {} };
/** A runner that works until its signal aborts (as the engine does), or returns after ms. */
const slowRunner =
  (ms: number): JobRunner =>
  (_config, ctx) =>
    new Promise((resolve, reject) => {
      ctx.progress(0.25, 'a quarter');
      setTimeout(() => ctx.progress(0.5, 'half way'), 20);
      const t = setTimeout(() => resolve(result), ms);
      ctx.signal.addEventListener('abort', () => {
        clearTimeout(t);
        reject(Object.assign(new Error('aborted'), { name: 'AbortError' }));
      });
    });

const deps = (api: AgentApi, runner: JobRunner, extra = {}) => ({
  api,
  runner,
  environment: async () => environment,
  renewEveryMs: 20,
  logger: quietLogger,
  ...extra,
});

describe('RunningJob', () => {
  it('completes with the runner result and sends the job-tagged log lines first', async () => {
    const { api, calls, reports } = fakeApi();
    const outcome = await new RunningJob(
      job,
      deps(api, async (_c, ctx) => {
        ctx.log('info', 'hello from the runner');
        return result;
      }),
    ).run();
    assert.equal(outcome, 'completed');
    assert.deepEqual(
      reports().map(([n]) => n),
      ['complete'],
    );
    assert.deepEqual(reports()[0][1], [{ jobId: 'job-1', attempt: 2 }, result]);
    const logged = calls.filter(([n]) => n === 'log').flatMap(([, a]) => a[1] as Array<{ text: string }>);
    assert.ok(logged.length >= 2);
    assert.ok(
      logged.every((l) => l.text.startsWith('[job job-1#2] ')),
      'every line carries the job id',
    );
    assert.ok(calls.findIndex(([n]) => n === 'log') < calls.findIndex(([n]) => n === 'complete'));
  });

  it('fails with the engine message; out-of-memory is retryable, a bad shape is not', async () => {
    const { api, reports } = fakeApi();
    const outcome = await new RunningJob(
      job,
      deps(api, async () => {
        throw new Error('CUDA error: out of memory allocating 4 GiB');
      }),
    ).run();
    assert.equal(outcome, 'failed');
    assert.deepEqual(reports(), [
      ['fail', [{ jobId: 'job-1', attempt: 2 }, 'CUDA error: out of memory allocating 4 GiB', true]],
    ]);
    assert.equal(isRetryableEngineError(new Error('inputIds: row 0 has 0 tokens')), false);
  });

  it('aborts the engine and reports a cancel when a renewal says cancelRequested', async () => {
    let renewals = 0;
    const { api, reports } = fakeApi({
      renew: async () => ({ cancelRequested: ++renewals >= 2 }),
    });
    const started = Date.now();
    const outcome = await new RunningJob(job, deps(api, slowRunner(10_000))).run();
    assert.equal(outcome, 'cancelled');
    assert.ok(Date.now() - started < 5_000, 'the runner was aborted, not waited for');
    assert.deepEqual(reports(), [['fail', [{ jobId: 'job-1', attempt: 2 }, 'cancelled by request', false]]]);
  });

  it('stops without any report when the dashboard refuses a renewal (the attempt went to someone else)', async () => {
    const { api, reports } = fakeApi({
      renew: async () => {
        throw serverError('CONFLICT', 'stale attempt 2 of job-1');
      },
    });
    const outcome = await new RunningJob(job, deps(api, slowRunner(10_000))).run();
    assert.equal(outcome, 'lease-lost');
    assert.deepEqual(reports(), []);
  });

  it('keeps running through renewals lost to a closed socket', async () => {
    const { api, reports } = fakeApi({
      renew: async () => {
        throw closedError();
      },
    });
    const outcome = await new RunningJob(job, deps(api, slowRunner(150))).run();
    assert.equal(outcome, 'completed');
    assert.equal(reports().length, 1);
  });

  it('retries the final report across a reconnect, and gives up on a refusal', async () => {
    let tries = 0;
    const { api, reports } = fakeApi({
      complete: async () => {
        tries++;
        if (tries < 3) throw closedError();
      },
    });
    assert.equal(
      await new RunningJob(
        job,
        deps(api, async () => result),
      ).run(),
      'completed',
    );
    assert.equal(tries, 3);
    assert.equal(reports().length, 0, 'complete was overridden and counted above');

    let refusals = 0;
    const refused = fakeApi({
      complete: async () => {
        refusals++;
        throw serverError('CONFLICT', 'stale');
      },
    });
    assert.equal(
      await new RunningJob(
        job,
        deps(refused.api, async () => result),
      ).run(),
      'unreported',
    );
    assert.equal(refusals, 1, 'a refused report is not retried');
  });

  it('gives the job back when stopped for shutdown, and estimates the time left from progress', async () => {
    const { api, reports } = fakeApi();
    const running = new RunningJob(job, deps(api, slowRunner(10_000)));
    assert.equal(running.estimatedRemainingMs(), Number.POSITIVE_INFINITY);
    const done = running.run();
    await new Promise((r) => setTimeout(r, 50));
    assert.equal(running.progress, 0.5);
    assert.ok(running.estimatedRemainingMs() > 0 && running.estimatedRemainingMs() < 1000);
    running.stop({ kind: 'give-back', reason: 'agent shutting down' });
    assert.equal(await done, 'given-back');
    assert.deepEqual(reports(), [['giveBack', [{ jobId: 'job-1', attempt: 2 }, 'agent shutting down']]]);
  });
});
