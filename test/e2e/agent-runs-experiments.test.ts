// End to end with real processes: a dashboard, agents started as `bin/flashlab agent`, experiments and a chat
// submitted over tRPC, an offline results file imported, and the faults an operator meets — an agent killed
// mid-job, a dashboard restarted mid-run, an agent told to stop (SIGTERM, twice), a job cancelled while it runs.
// The history must stay exact: one run per job.
import assert from 'node:assert/strict';
import { writeFileSync } from 'node:fs';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import Database from 'better-sqlite3';
import type { ExperimentSpecInput } from '../../contracts';
import { ADMIN_TOKEN, Dashboard, flashlab, type Proc, startAgent, tempDatabase, waitFor, within } from './harness';

interface JobRow {
  id: string;
  state: string;
  attempt: number;
  failedAttempts: number;
  leaseHolderId: string | null;
  progress: number;
  error: string | null;
}
interface RunRow {
  id: string;
  jobId: string;
  attempt: number;
  agentName: string;
  prefillMsMedian: number;
  tpotMsMedian: number;
  tokensPerSecMedian: number;
  peakMemBytes: number;
  repeats: string;
  environment: string;
}

// A job of a few seconds on the CPU engine (400 tokens without KV cache), long enough to be hit mid-run.
const slow = (name: string, repeats = 3): ExperimentSpecInput => ({
  name,
  model: 'gpt2-tiny',
  weights: { kind: 'random', seed: 11 },
  attention: ['naive'],
  kvCache: [false],
  tp: [1],
  dtype: ['fp32'],
  device: 'cpu',
  batchSizes: [1],
  promptLengths: [32],
  newTokens: [400],
  warmup: 0,
  repeats,
});

describe('dashboard, agents and the queue, end to end', { timeout: 600_000 }, () => {
  const database = tempDatabase();
  let dash: Dashboard;
  let sql: Database.Database;
  const agents: Proc[] = [];

  const trpc = () => dash.trpc();
  const jobsOf = (experimentId: string) =>
    sql.prepare('SELECT * FROM "Job" WHERE "experimentId" = ? ORDER BY "index"').all(experimentId) as JobRow[];
  const runsOfJob = (jobId: string) => sql.prepare('SELECT * FROM "Run" WHERE "jobId" = ?').all(jobId) as RunRow[];
  const runsOfExperiment = (experimentId: string) =>
    sql.prepare('SELECT * FROM "Run" WHERE "experimentId" = ?').all(experimentId) as RunRow[];

  async function newAgent(name: string, args: string[] = []): Promise<{ proc: Proc; agentId: string; token: string }> {
    const { token, agentId } = (await trpc().mutation('agents.createToken', { name })) as {
      token: string;
      agentId: string;
    };
    const proc = startAgent(dash.baseUrl, token, name, ['--poll-ms', '500', ...args]);
    agents.push(proc);
    await proc.waitForOutput(/connected to ws:\/\/127\.0\.0\.1:\d+\/api\/agent-ws as agent/, 60_000);
    return { proc, agentId, token };
  }

  async function submit(spec: ExperimentSpecInput): Promise<string> {
    const { id } = (await trpc().mutation('experiments.create', spec)) as { id: string };
    return id;
  }

  /** The single job of an experiment, once it is running on some agent with progress made. */
  const runningJob = (experimentId: string, timeoutMs = 60_000) =>
    waitFor(
      `a job of ${experimentId} to be running with progress`,
      () => {
        const [job] = jobsOf(experimentId);
        return job && ['leased', 'running'].includes(job.state) && job.progress > 0 ? job : undefined;
      },
      timeoutMs,
      100,
    );

  const finishedJob = (experimentId: string, timeoutMs = 120_000) =>
    waitFor(
      `the job of ${experimentId} to finish`,
      () => {
        const [job] = jobsOf(experimentId);
        return job && ['succeeded', 'failed', 'cancelled'].includes(job.state) ? job : undefined;
      },
      timeoutMs,
      200,
    );

  before(async () => {
    // Short leases and a fast sweeper so that a dead agent's job comes back within seconds.
    dash = await Dashboard.start({ dbUrl: database.url, env: { LEASE_MS: '4000', SWEEP_EVERY_MS: '300' } });
    sql = new Database(database.url.slice('file:'.length), { readonly: true, fileMustExist: true });
  });

  after(async () => {
    await Promise.all(agents.map((a) => a.stop(5_000)));
    sql?.close();
    await dash?.stop();
    database.cleanup();
  });

  it('runs an experiment submitted over tRPC and stores every run with its figures, and answers a chat', async () => {
    const { proc } = await newAgent('e2e-a');
    const health = await dash.health();
    const me = health.agents.find((a) => a.name === 'e2e-a');
    assert.ok(me?.online, `the agent is online in /api/health: ${JSON.stringify(health)}`);
    assert.equal(me?.backend, 'cpu');

    const experimentId = await submit({
      name: 'e2e sweep',
      model: 'gpt2-tiny',
      weights: { kind: 'random', seed: 5 },
      attention: ['naive', 'fa1', 'fa2'],
      kvCache: [true],
      tp: [1, 2],
      dtype: ['fp32'],
      device: 'cpu',
      batchSizes: [2],
      promptLengths: [12],
      newTokens: [6],
      warmup: 1,
      repeats: 3,
    });
    await waitFor('6 runs to be stored', () => runsOfExperiment(experimentId).length === 6, 120_000);
    const jobs = jobsOf(experimentId);
    assert.deepEqual(
      jobs.map((j) => j.state),
      Array(6).fill('succeeded'),
    );
    for (const job of jobs) {
      const runs = runsOfJob(job.id);
      assert.equal(runs.length, 1, 'one run per job');
      const run = runs[0];
      assert.equal(run.agentName, 'e2e-a');
      assert.ok(run.prefillMsMedian > 0 && run.tpotMsMedian > 0 && run.tokensPerSecMedian > 0 && run.peakMemBytes > 0);
      assert.equal(JSON.parse(run.repeats).length, 3);
      const env = JSON.parse(run.environment);
      assert.equal(env.backend, 'cpu');
      assert.match(env.engineBuild, /flashlab/);
    }
    const logs = sql.prepare('SELECT "text" FROM "JobLog" WHERE "jobId" = ?').all(jobs[0].id) as Array<{
      text: string;
    }>;
    assert.ok(
      logs.some((l) => /repeat 3\/3/.test(l.text)),
      'the job log reached the dashboard',
    );
    assert.ok(
      logs.every((l) => l.text.includes(`[job ${jobs[0].id}#1]`)),
      'every log line names its job',
    );

    // The same agent answers a chat from the playground: streamed through the dashboard, stored with its figures.
    const session = (await trpc().mutation('chat.create', {
      title: 'e2e chat',
      settings: {
        model: 'gpt2-tiny',
        weights: { kind: 'random', seed: 1 },
        attention: 'fa1',
        kvCache: true,
        maxNewTokens: 12,
      },
    })) as { id: string };
    await trpc().mutation('chat.send', {
      sessionId: session.id,
      content: 'What does FlashAttention-2 change? 它快吗？',
    });
    const answer = await waitFor(
      'the chat answer to be stored',
      () => {
        const m = sql
          .prepare(`SELECT * FROM "ChatMessage" WHERE "sessionId" = ? AND "role" = 'assistant'`)
          .get(session.id) as
          | {
              status: string;
              content: string;
              agentName: string;
              prefillMs: number;
              tokensPerSec: number;
              newTokens: number;
              error: string | null;
            }
          | undefined;
        return m && m.status !== 'streaming' ? m : undefined;
      },
      60_000,
    );
    assert.equal(answer.status, 'done', answer.error ?? '');
    assert.equal(answer.agentName, 'e2e-a');
    assert.equal(answer.newTokens, 12);
    assert.ok(answer.prefillMs > 0 && answer.tokensPerSec > 0 && answer.content.length > 0);

    await proc.stop();
    assert.equal(proc.child.exitCode, 0, proc.tail());
  });

  it('requeues the job of an agent killed with SIGKILL; a second agent completes it and one run is stored', async () => {
    const first = await newAgent('e2e-killed');
    const experimentId = await submit(slow('killed mid-job'));
    const job = await runningJob(experimentId);
    assert.equal(job.leaseHolderId, first.agentId);
    first.proc.kill('SIGKILL');
    await first.proc.exited;

    await newAgent('e2e-rescuer');
    const done = await finishedJob(experimentId);
    assert.equal(done.state, 'succeeded', done.error ?? '');
    assert.equal(done.attempt, 2, 'the expired lease was requeued as attempt 2');
    const runs = runsOfJob(done.id);
    assert.equal(runs.length, 1, 'nothing counted twice');
    assert.equal(runs[0].agentName, 'e2e-rescuer');
    assert.equal(runs[0].attempt, 2);
  });

  it('SIGTERM hands back a job that would outlast the grace period, exits 0, and the job completes elsewhere', async () => {
    // The rescuer from the previous test is still connected: stop it so that the new agent takes the job.
    for (const a of agents) if (a.running) await a.stop();
    const leaving = await newAgent('e2e-leaving', ['--grace-ms', '1000']);
    const experimentId = await submit(slow('handed back'));
    const job = await runningJob(experimentId);
    assert.equal(job.leaseHolderId, leaving.agentId);
    leaving.proc.kill('SIGTERM');
    const exit = await leaving.proc.exited;
    assert.equal(exit.code, 0, leaving.proc.tail());
    assert.match(leaving.proc.output, /giving the job back/);
    const back = jobsOf(experimentId)[0];
    assert.equal(back.state, 'queued', 'given back, not left to expire');
    assert.equal(back.failedAttempts, 0, 'a give-back is not a failure');

    await newAgent('e2e-taker');
    const done = await finishedJob(experimentId);
    assert.equal(done.state, 'succeeded');
    assert.equal(runsOfJob(done.id).length, 1);
  });

  it('SIGTERM lets a job that ends within the grace period finish before the agent exits', async () => {
    for (const a of agents) if (a.running) await a.stop();
    const staying = await newAgent('e2e-finisher', ['--grace-ms', '60000']);
    const experimentId = await submit(slow('finished on SIGTERM', 2));
    await runningJob(experimentId);
    staying.proc.kill('SIGTERM');
    const exit = await staying.proc.exited;
    assert.equal(exit.code, 0, staying.proc.tail());
    const [job] = jobsOf(experimentId);
    assert.equal(job.state, 'succeeded', 'finished, not handed back');
    assert.equal(runsOfJob(job.id)[0]?.agentName, 'e2e-finisher');
  });

  it('cancelling a running job aborts the engine on the agent', async () => {
    const { proc } = await newAgent('e2e-cancelled');
    const experimentId = await submit(slow('cancelled', 50));
    const job = await runningJob(experimentId);
    const started = Date.now();
    await trpc().mutation('jobs.cancel', { id: job.id });
    const done = await finishedJob(experimentId, 30_000);
    assert.equal(done.state, 'cancelled');
    assert.ok(Date.now() - started < 15_000, 'aborted, not run to the end (50 repeats take minutes)');
    assert.equal(runsOfJob(job.id).length, 0);
    await proc.waitForOutput(new RegExp(`\\[job ${job.id}#1\\] cancelled`), 10_000);
    assert.ok(proc.running, 'the agent goes on after a cancel');
  });

  it('a second SIGTERM stops the agent at once, handing its job back', async () => {
    for (const a of agents) if (a.running) await a.stop();
    const impatient = await newAgent('e2e-impatient', ['--grace-ms', '600000']);
    const experimentId = await submit(slow('stopped twice', 50));
    try {
      // Far enough in for the agent to know its pace: it then means to finish within the long grace period.
      await waitFor('a few tokens of progress', () => (jobsOf(experimentId)[0]?.progress ?? 0) > 0.005, 60_000, 100);
      impatient.proc.kill('SIGTERM');
      await impatient.proc.waitForOutput(/letting it finish/, 10_000);
      impatient.proc.kill('SIGTERM');
      const exit = await within(
        impatient.proc.exited,
        15_000,
        () => `the agent did not stop:\n${impatient.proc.tail()}`,
      );
      assert.equal(exit.code, 1, impatient.proc.tail());
      const [job] = jobsOf(experimentId);
      assert.equal(job.state, 'queued', 'handed back on the way out');
    } finally {
      // Its 50 repeats must not hold up the agents of the tests that follow.
      await trpc().mutation('experiments.cancel', { id: experimentId });
    }
  });

  it('imports an offline results file through the dashboard, with the admin token only', async () => {
    const plan = path.join(database.dir, 'plan.json');
    const results = path.join(database.dir, 'results.json');
    writeFileSync(
      plan,
      JSON.stringify({ experiment: { ...slow('offline then imported', 1), newTokens: [4], kvCache: [true, false] } }),
    );
    const run = await flashlab(['run', plan, '--out', results]);
    assert.equal(run.code, 0, run.stderr);
    const refused = await flashlab(['import', results, '--url', dash.baseUrl], { FLASHLAB_ADMIN_TOKEN: '' });
    assert.notEqual(refused.code, 0);
    assert.match(refused.stderr, /refused the import \(UNAUTHORIZED\)/);
    const ok = await flashlab(['import', results, '--url', dash.baseUrl, '--admin-token', ADMIN_TOKEN]);
    assert.equal(ok.code, 0, ok.stderr);
    const { experimentId } = JSON.parse(ok.stdout) as { experimentId: string };
    const experiment = sql.prepare('SELECT "source", "name" FROM "Experiment" WHERE "id" = ?').get(experimentId) as {
      source: string;
      name: string;
    };
    assert.deepEqual(experiment, { source: 'import', name: 'offline then imported' });
    assert.equal(runsOfExperiment(experimentId).length, 2);
  });
});

describe('a dashboard restarted mid-run', { timeout: 300_000 }, () => {
  const database = tempDatabase();
  let dash: Dashboard;
  let agent: Proc | undefined;
  let sql: Database.Database;

  before(async () => {
    // Leases that outlast a restart: the agent must carry on with its attempt, not lose it and start over.
    dash = await Dashboard.start({ dbUrl: database.url, env: { LEASE_MS: '30000', SWEEP_EVERY_MS: '300' } });
    sql = new Database(database.url.slice('file:'.length), { readonly: true, fileMustExist: true });
  });
  after(async () => {
    await agent?.stop(5_000);
    sql?.close();
    await dash?.stop();
    database.cleanup();
  });

  it('the agent reconnects, keeps its job and lease, and the run is stored once', async () => {
    const trpc = dash.trpc();
    const { token } = (await trpc.mutation('agents.createToken', { name: 'e2e-survivor' })) as { token: string };
    const proc = startAgent(dash.baseUrl, token, 'e2e-survivor', ['--poll-ms', '500']);
    agent = proc;
    await proc.waitForOutput(/connected to ws:/, 60_000);
    const { id: experimentId } = (await trpc.mutation('experiments.create', slow('dashboard restarted'))) as {
      id: string;
    };
    const job = () =>
      sql.prepare('SELECT * FROM "Job" WHERE "experimentId" = ?').get(experimentId) as JobRow | undefined;
    await waitFor('the job to be running', () => (job()?.progress ?? 0) > 0, 60_000, 100);

    await dash.restart('SIGKILL');
    await proc.waitForOutput(/reconnected to ws:/, 60_000);
    const done = await waitFor(
      'the job to finish',
      () => {
        const j = job();
        return j && ['succeeded', 'failed', 'cancelled'].includes(j.state) ? j : undefined;
      },
      120_000,
    );
    assert.equal(done.state, 'succeeded', done.error ?? '');
    assert.equal(done.attempt, 1, 'the same attempt went on through the restart');
    assert.doesNotMatch(proc.output, /lease renewal refused|ended: lease-lost/);
    const runs = sql.prepare('SELECT * FROM "Run" WHERE "jobId" = ?').all(done.id) as RunRow[];
    assert.equal(runs.length, 1);
    assert.equal(runs[0].agentName, 'e2e-survivor');
    assert.ok(
      (await dash.health()).agents.find((a) => a.name === 'e2e-survivor')?.online,
      'online again after the restart',
    );
  });
});
