// Online, with real processes: an agent runs a TP=1/TP=2 experiment queued on a dashboard, and the TP=2 run's
// repeats reach the history with the engine's compute / all-reduce breakdown unchanged — through the agent's report,
// the queue's checks, the repeats JSON column and the compare and run queries the pages read.
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import type { TpBreakdown } from '../../contracts';
import { Dashboard, type Proc, startAgent, tempDatabase, waitFor } from '../e2e/harness';
import { tinySpec } from './helpers';

interface CompareRunOut {
  id: string;
  config: { tp: number };
  repeats: { tpotMs: number; tpBreakdown?: TpBreakdown }[];
}

describe('TP breakdown through the queue into the history', { timeout: 240_000 }, () => {
  const database = tempDatabase();
  let dash: Dashboard;
  let agent: Proc | undefined;

  before(async () => {
    dash = await Dashboard.start({ dbUrl: database.url });
  });
  after(async () => {
    await agent?.stop(5_000);
    await dash?.stop();
    database.cleanup();
  });

  it('stores every measured TP=2 repeat with its breakdown and serves it to the compare and run pages', async () => {
    const trpc = dash.trpc();
    const { token } = (await trpc.mutation('agents.createToken', { name: 'tpb-agent' })) as { token: string };
    agent = startAgent(dash.baseUrl, token, 'tpb-agent', ['--poll-ms', '500']);
    await agent.waitForOutput(/connected to ws:\/\/127\.0\.0\.1:\d+\/api\/agent-ws as agent/, 60_000);
    const spec = tinySpec({
      name: 'tp breakdown online',
      model: 'chatglm2-tiny',
      weights: { kind: 'random', seed: 3 },
      tp: [1, 2],
      promptLengths: [6],
      newTokens: [4],
      warmup: 1,
      repeats: 3,
    });
    const { id: experimentId } = (await trpc.mutation('experiments.create', spec)) as { id: string };
    const { runs } = await waitFor(
      'both runs of the experiment in the history',
      async () => {
        const r = (await trpc.query('compare.runs', { experimentIds: [experimentId] })) as { runs: CompareRunOut[] };
        return r.runs.length === 2 ? r : undefined;
      },
      180_000,
      500,
    );
    const tp1 = runs.find((r) => r.config.tp === 1);
    const tp2 = runs.find((r) => r.config.tp === 2);
    assert.ok(tp1 && tp2);
    assert.ok(
      tp1.repeats.every((r) => r.tpBreakdown === undefined),
      'TP=1 has no all-reduce to time',
    );
    assert.equal(tp2.repeats.length, 3);
    for (const r of tp2.repeats) {
      const b = r.tpBreakdown;
      assert.ok(b, 'every measured TP=2 repeat carries its breakdown');
      assert.equal(
        b.allReduceCount,
        5,
        'two all-reduces in each of chatglm2-tiny’s two layers, then the logits exchange',
      );
      assert.equal(b.allReducePerLayerMs.length, 2);
      assert.ok(b.stepMs > 0 && b.allReduceMs > 0 && b.computeMs >= 0 && b.allReduceMs <= b.stepMs);
    }
    // The run page reads the same repeats, and the summary the agent sent is stored beside them.
    const run = (await trpc.query('runs.get', { id: tp2.id })) as {
      repeats: { tpBreakdown?: TpBreakdown }[];
      summary: Record<string, { median: number }>;
    };
    assert.deepEqual(
      run.repeats.map((r) => r.tpBreakdown),
      tp2.repeats.map((r) => r.tpBreakdown),
    );
    const medianAllReduce = [...tp2.repeats.map((r) => r.tpBreakdown?.allReduceMs ?? 0)].sort((a, b) => a - b)[1];
    assert.equal(run.summary.tpAllReduceMs?.median, medianAllReduce);
  });
});
