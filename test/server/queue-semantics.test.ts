// The job queue's promises, on SQLite and on PostgreSQL: leases go only to agents that can run the job, reports of
// stale attempts are refused, expired leases requeue up to the attempt limit, cancel and retry, and many agents
// racing for work never run one attempt twice.
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { promisify } from 'node:util';
import type { AgentEvent } from '../../contracts';
import { QueueError } from '../../server/queue/queue';
import { freshDatabase, providersUnderTest, type TestDatabase } from './databases';
import { makeAgent, resultFor, testQueue, tinySpec } from './fixtures';

const worker = path.join(import.meta.dirname, 'race-worker.ts');
async function runWorker(url: string, agents: unknown[]): Promise<{ agent: string; jobId: string; attempt: number }[]> {
  const { stdout } = await promisify(execFile)(
    process.execPath,
    ['--import', 'tsx', worker, url, JSON.stringify(agents)],
    {
      cwd: path.join(import.meta.dirname, '..', '..'),
      maxBuffer: 16 << 20,
    },
  );
  return JSON.parse(stdout);
}

/** The value, asserted to be there (a lease the test expects to get). */
function must<T>(v: T | null | undefined): T {
  assert.ok(v, 'expected a value');
  return v;
}

const rejectsWith = (p: Promise<unknown>, code: string, re: RegExp) =>
  assert.rejects(p, (e: unknown) => e instanceof QueueError && e.code === code && re.test(e.message));

for (const provider of providersUnderTest()) {
  describe(`queue on ${provider}`, () => {
    let t: TestDatabase;
    before(async () => {
      t = await freshDatabase(provider);
    });
    after(async () => {
      await t?.drop();
    });

    test('an experiment expands into queued jobs; an impossible one is refused naming the field', async () => {
      const { queue } = testQueue(t.db, provider);
      const { experiment, jobCount } = await queue.createExperiment(
        tinySpec({ name: 'expand', promptLengths: [8, 16] }),
      );
      assert.equal(jobCount, 4);
      const jobs = await t.db.job.findMany({ where: { experimentId: experiment.id }, orderBy: { index: 'asc' } });
      assert.deepEqual(
        jobs.map((j) => [j.state, j.attention, j.promptLength]),
        [
          ['queued', 'naive', 8],
          ['queued', 'naive', 16],
          ['queued', 'fa2', 8],
          ['queued', 'fa2', 16],
        ],
      );
      await rejectsWith(
        queue.createExperiment(tinySpec({ tp: [3] })),
        'INVALID',
        /tp\.0: tensor-parallel degree 3 does not divide/,
      );
      await rejectsWith(
        queue.createExperiment(tinySpec({ promptLengths: [510] })),
        'INVALID',
        /promptLengths\.0: .*512 positions/,
      );
      await rejectsWith(queue.createExperiment(tinySpec({ model: 'gpt5' })), 'INVALID', /model:/);
      assert.equal(
        await t.db.experiment.count({ where: { name: 'tiny sweep' } }),
        0,
        'nothing stored for a refused spec',
      );
      // Leave nothing queued for the next tests.
      await queue.cancelExperiment(experiment.id);
    });

    test('lease honours backend, GPU count and target agent; renew, progress, log, complete store one run', async () => {
      const { queue } = testQueue(t.db, provider);
      const cpu = await makeAgent(t.db, 'cpu-1');
      const gpu1 = await makeAgent(t.db, 'gpu-1', { backend: 'cuda', gpus: 1 });
      const gpu2 = await makeAgent(t.db, 'gpu-2', { backend: 'cuda', gpus: 2 });
      const cuda = await queue.createExperiment(
        tinySpec({ name: 'cuda tp2', model: 'gpt2', device: 'cuda', dtype: ['fp16'], attention: ['fa2'], tp: [2] }),
      );
      assert.equal(await queue.lease(cpu), null, 'a CPU agent gets no CUDA job');
      assert.equal(await queue.lease(gpu1), null, 'one GPU is not enough for TP 2');
      const l = await queue.lease(gpu2);
      assert.ok(l);
      assert.equal(l.experimentId, cuda.experiment.id);
      assert.equal(l.attempt, 1);
      assert.equal(l.config.tp, 2);

      await rejectsWith(
        queue.createExperiment(tinySpec({ targetAgent: 'cpu-2' })),
        'INVALID',
        /targetAgent: no agent named 'cpu-2'/,
      );
      await rejectsWith(
        queue.createExperiment(
          tinySpec({ model: 'gpt2', device: 'cuda', dtype: ['fp16'], tp: [2], targetAgent: 'gpu-1' }),
        ),
        'INVALID',
        /tp: TP 2 needs 2 GPUs; agent 'gpu-1' has 1/,
      );
      await rejectsWith(
        queue.createExperiment(
          tinySpec({
            model: 'chatglm2-6b',
            device: 'cuda',
            dtype: ['fp16'],
            targetAgent: 'gpu-1',
            promptLengths: [32000],
          }),
        ),
        'INVALID',
        /needs about .* GB per device; agent 'gpu-1' has 80\.0 GB/,
      );
      const cpu2 = await makeAgent(t.db, 'cpu-2');
      const pinned = await queue.createExperiment(
        tinySpec({ name: 'pinned', attention: ['fa1'], targetAgent: 'cpu-2' }),
      );
      assert.equal(await queue.lease(cpu), null, 'a job pinned to cpu-2 is not for cpu-1');
      const p = must(await queue.lease(cpu2));
      assert.equal(p?.experimentId, pinned.experiment.id);

      // ChatGLM2-6B in fp16 needs ~12.5 GB of weights: not for an 8 GB card, fine on an 80 GB one.
      const big = await queue.createExperiment(
        tinySpec({
          name: 'big',
          model: 'chatglm2-6b',
          device: 'cuda',
          dtype: ['fp16'],
          attention: ['fa2'],
          promptLengths: [128],
          newTokens: [16],
        }),
      );
      const small = await makeAgent(t.db, 'gpu-8g', { backend: 'cuda', gpus: 1, gpuMemoryBytes: 8e9 });
      assert.equal(await queue.lease(small), null, 'an 8 GB GPU gets no job that needs more');
      const bigJob = await t.db.job.findFirstOrThrow({ where: { experimentId: big.experiment.id } });
      assert.ok(
        bigJob.memoryBytes && bigJob.memoryBytes > 12.4e9 && bigJob.memoryBytes < 20e9,
        `estimate ${bigJob.memoryBytes}`,
      );
      const b = must(await queue.lease(gpu1));
      assert.equal(b?.experimentId, big.experiment.id);
      await queue.complete(gpu1.id, { ...b, result: resultFor(b.config) });

      const renewed = await queue.renew(gpu2.id, l);
      assert.equal(renewed.cancelRequested, false);
      await queue.progress(gpu2.id, { ...l, progress: 0.5, message: 'repeat 1 of 2' });
      await queue.log(gpu2.id, { ...l, lines: [{ ts: new Date().toISOString(), level: 'info', text: 'warming up' }] });
      const mid = await t.db.job.findUniqueOrThrow({ where: { id: l.jobId } });
      assert.equal(mid.state, 'running');
      assert.equal(mid.progress, 0.5);
      await rejectsWith(queue.renew(cpu.id, l), 'STALE_ATTEMPT', /not leased to this agent/);

      await queue.complete(gpu2.id, { ...l, result: resultFor(l.config, 'gpu-2') });
      const done = await t.db.job.findUniqueOrThrow({ where: { id: l.jobId }, include: { runs: true, logs: true } });
      assert.equal(done.state, 'succeeded');
      assert.equal(done.leaseHolderId, null);
      assert.equal(done.runs.length, 1);
      assert.equal(done.logs.length, 1);
      const run = done.runs[0];
      assert.equal(run.attempt, 1);
      assert.equal(run.tp, 2);
      assert.equal(run.prefillMsMedian, 10.5);
      assert.equal(run.peakMemBytes, 1e6 + 1);
      assert.deepEqual(run.tags, ['t']);
      // A second report of the same attempt stores nothing.
      await rejectsWith(
        queue.complete(gpu2.id, { ...l, result: resultFor(l.config) }),
        'STALE_ATTEMPT',
        /no longer active/,
      );
      assert.equal(await t.db.run.count({ where: { jobId: l.jobId } }), 1);
      // A result for another configuration is refused and leaves the job as it was.
      await rejectsWith(
        queue.complete(cpu2.id, { ...p, result: resultFor({ ...p.config, promptLength: 9 }) }),
        'INVALID',
        /is for configuration/,
      );
      assert.equal((await t.db.job.findUniqueOrThrow({ where: { id: p.jobId } })).state, 'leased');
      await queue.complete(cpu2.id, { ...p, result: resultFor(p.config) });
    });

    test('an expired lease requeues with the next attempt; the stale attempt is refused; the limit fails it with the reason', async () => {
      const { queue, advance } = testQueue(t.db, provider, { leaseMs: 1000, maxAttempts: 2 });
      const a = await makeAgent(t.db, 'exp-a');
      const b = await makeAgent(t.db, 'exp-b');
      const { experiment } = await queue.createExperiment(tinySpec({ name: 'expiry', attention: ['naive'] }), {
        maxAttempts: 2,
      });
      const first = must(await queue.lease(a));
      assert.equal(first?.experimentId, experiment.id);
      advance(600);
      await queue.renew(a.id, first); // renewed: good until 1600
      advance(900);
      assert.deepEqual(
        await queue.expireLeases(),
        { requeued: 0, failed: 0, cancelled: 0 },
        'a renewed lease is not expired',
      );
      advance(200);
      assert.deepEqual(await queue.expireLeases(), { requeued: 1, failed: 0, cancelled: 0 });
      const requeued = await t.db.job.findUniqueOrThrow({ where: { id: first.jobId } });
      assert.equal(requeued.state, 'queued');
      assert.match(requeued.error ?? '', /attempt 1: lease expired .*agent 'exp-a' stopped renewing/);

      const second = must(await queue.lease(b));
      assert.equal(second?.jobId, first.jobId);
      assert.equal(second?.attempt, 2);
      // The first agent wakes up and reports: every kind of report of attempt 1 is refused.
      await rejectsWith(queue.renew(a.id, first), 'STALE_ATTEMPT', /attempt 1 is stale \(the job is on attempt 2/);
      await rejectsWith(queue.progress(a.id, { ...first, progress: 1 }), 'STALE_ATTEMPT', /stale/);
      await rejectsWith(queue.complete(a.id, { ...first, result: resultFor(first.config) }), 'STALE_ATTEMPT', /stale/);
      await rejectsWith(queue.fail(a.id, { ...first, error: 'late', retryable: true }), 'STALE_ATTEMPT', /stale/);
      assert.equal(await t.db.run.count({ where: { jobId: first.jobId } }), 0);

      advance(1500);
      assert.deepEqual(await queue.expireLeases(), { requeued: 0, failed: 1, cancelled: 0 });
      const failed = await t.db.job.findUniqueOrThrow({ where: { id: first.jobId } });
      assert.equal(failed.state, 'failed');
      assert.match(failed.error ?? '', /attempt 2: lease expired .*gave up after 2 of 2 attempts/);
      await rejectsWith(queue.renew(b.id, second), 'STALE_ATTEMPT', /no longer active \(state failed\)/);

      // Retry gives it a fresh budget; the next lease is attempt 3.
      await queue.retry(first.jobId);
      const third = must(await queue.lease(a));
      assert.equal(third?.attempt, 3);
      await queue.complete(a.id, { ...third, result: resultFor(third.config) });
      const runs = await t.db.run.findMany({ where: { jobId: first.jobId } });
      assert.deepEqual(
        runs.map((r) => r.attempt),
        [3],
      );
    });

    test('fail retries while attempts remain; give-back requeues without counting a failure', async () => {
      const { queue } = testQueue(t.db, provider, { maxAttempts: 2 });
      const a = await makeAgent(t.db, 'fail-a');
      await queue.createExperiment(tinySpec({ name: 'failing', attention: ['fa1'] }), { maxAttempts: 2 });
      const l1 = must(await queue.lease(a));
      await queue.giveBack(a.id, { ...l1, reason: 'shutting down' });
      let j = await t.db.job.findUniqueOrThrow({ where: { id: l1.jobId } });
      assert.deepEqual([j.state, j.failedAttempts, j.leaseHolderId], ['queued', 0, null]);
      const l2 = must(await queue.lease(a));
      assert.equal(l2?.attempt, 2);
      await queue.fail(a.id, { ...l2, error: 'CUDA out of memory', retryable: true });
      j = await t.db.job.findUniqueOrThrow({ where: { id: l1.jobId } });
      assert.deepEqual([j.state, j.failedAttempts], ['queued', 1]);
      const l3 = must(await queue.lease(a));
      await queue.fail(a.id, { ...l3, error: 'CUDA out of memory', retryable: true });
      j = await t.db.job.findUniqueOrThrow({ where: { id: l1.jobId } });
      assert.equal(j.state, 'failed');
      assert.match(j.error ?? '', /CUDA out of memory \(gave up after 2 failed attempts\)/);

      await queue.retry(j.id);
      const l4 = must(await queue.lease(a));
      await queue.fail(a.id, { ...l4, error: 'bad checkpoint file', retryable: false });
      j = await t.db.job.findUniqueOrThrow({ where: { id: l1.jobId } });
      assert.deepEqual([j.state, j.error], ['failed', 'bad checkpoint file']);
      await rejectsWith(queue.retry('no-such-job'), 'NOT_FOUND', /does not exist/);
    });

    test('cancel: a queued job at once; a running one through its agent, which is told', async () => {
      const { queue, bus, advance } = testQueue(t.db, provider, { leaseMs: 1000 });
      const a = await makeAgent(t.db, 'cancel-a');
      const events: { agentId: string; event: AgentEvent }[] = [];
      bus.onEvent('agent', (e) => events.push(e));
      const { experiment } = await queue.createExperiment(
        tinySpec({ name: 'cancels', attention: ['naive', 'fa1', 'fa2'] }),
      );
      const jobs = await t.db.job.findMany({ where: { experimentId: experiment.id }, orderBy: { index: 'asc' } });
      const running = must(await queue.lease(a));
      assert.equal(running?.jobId, jobs[0].id);

      assert.deepEqual(await queue.cancel(jobs[1].id), { state: 'cancelled', cancelRequested: true });
      assert.deepEqual(await queue.cancel(jobs[0].id), { state: 'leased', cancelRequested: true });
      assert.deepEqual(events, [{ agentId: a.id, event: { type: 'cancel', jobId: jobs[0].id, attempt: 1 } }]);
      assert.equal((await queue.renew(a.id, running)).cancelRequested, true);
      // The agent aborts its engine and hands the job back: it ends cancelled, not requeued.
      await queue.giveBack(a.id, { ...running, reason: 'cancelled by user' });
      assert.equal((await t.db.job.findUniqueOrThrow({ where: { id: jobs[0].id } })).state, 'cancelled');
      await rejectsWith(queue.cancel(jobs[0].id), 'BAD_STATE', /already cancelled/);

      // A cancel of a job whose agent died ends it at lease expiry.
      const third = must(await queue.lease(a));
      assert.equal(third?.jobId, jobs[2].id);
      await queue.cancel(jobs[2].id);
      advance(2000);
      assert.deepEqual(await queue.expireLeases(), { requeued: 0, failed: 0, cancelled: 1 });
      // Retry puts a cancelled job back.
      await queue.retry(jobs[1].id);
      assert.equal((await t.db.job.findUniqueOrThrow({ where: { id: jobs[1].id } })).state, 'queued');
      await queue.cancelExperiment(experiment.id);
    });

    test('many agents in several processes racing for jobs: every job is run once, no attempt twice', async () => {
      const PROCESSES = 3;
      const AGENTS_EACH = 3;
      const { queue } = testQueue(t.db, provider);
      const { experiment, jobCount } = await queue.createExperiment(
        tinySpec({
          name: 'race',
          attention: ['naive', 'fa1', 'fa2'],
          batchSizes: [1, 2],
          promptLengths: [4, 8, 12, 16],
        }),
      );
      const agents: Awaited<ReturnType<typeof makeAgent>>[] = [];
      for (let i = 0; i < PROCESSES * AGENTS_EACH; i++) agents.push(await makeAgent(t.db, `racer-${i}`));
      // Separate processes: separate SQLite connections / PostgreSQL pools, as agents' dashboard workers would be.
      const outputs = await Promise.all(
        Array.from({ length: PROCESSES }, (_, p) =>
          runWorker(t.url, agents.slice(p * AGENTS_EACH, (p + 1) * AGENTS_EACH)),
        ),
      );
      const claims = outputs.flat();
      const keys = claims.map((c) => `${c.jobId}#${c.attempt}`);
      assert.equal(new Set(keys).size, keys.length, 'no (job, attempt) was leased twice');
      const jobs = await t.db.job.findMany({ where: { experimentId: experiment.id }, include: { runs: true } });
      assert.equal(jobs.length, jobCount);
      for (const j of jobs) {
        assert.equal(j.state, 'succeeded');
        assert.equal(j.runs.length, 1, `job ${j.index} has exactly one run`);
      }
      assert.ok(claims.length > jobCount, 'some attempts were handed back and raced again');
      assert.ok(new Set(claims.map((c) => c.agent.split('-')[1])).size > 1, 'the work was spread over several agents');
    });
  });
}
