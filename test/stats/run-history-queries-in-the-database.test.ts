// The history's queries run in the database (SQLite, and PostgreSQL when TEST_POSTGRES_URL is set): filters,
// sorts, pages, groups of repeats with pooled mean ± std, tags, export, import, and the compare data.
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import type { JobConfig, RunResult } from '../../contracts/experiment';
import { bootstrapSpeedup, groupRepeats } from '../../lib/stats';
import { EventBus } from '../../server/events';
import { Queue } from '../../server/queue/queue';
import { runRow } from '../../server/queue/run-row';
import { compareRouter } from '../../server/routers/compare';
import { runsRouter } from '../../server/routers/runs';
import { createCallerFactory, router } from '../../server/trpc';
import { freshDatabase, providersUnderTest, type TestDatabase } from '../server/databases';

const appForTest = router({ runs: runsRouter, compare: compareRouter });
const createCaller = createCallerFactory(appForTest);

function config(o: Partial<JobConfig>): JobConfig {
  return {
    model: 'gpt2',
    weights: { kind: 'random', seed: 0 },
    attention: 'naive',
    kvCache: true,
    tp: 1,
    dtype: 'fp16',
    device: 'cuda',
    batchSize: 1,
    promptLength: 128,
    newTokens: 32,
    warmup: 1,
    repeats: 3,
    ...o,
  };
}

function result(c: JobConfig, totals: number[], gpu = 'NVIDIA H100 80GB HBM3', agentName = 'gpu-a'): RunResult {
  return {
    config: { ...c, repeats: totals.length },
    repeats: totals.map((t) => ({
      prefillMs: t / 4,
      tpotMs: t / 40,
      totalMs: t,
      tokensPerSec: 1000 / t,
      peakMemBytes: 1e9 + t,
    })),
    summary: {},
    environment: {
      agentName,
      hostname: 'h',
      backend: c.device,
      cpuModel: 'cpu',
      cpuCores: 8,
      memoryBytes: 1e11,
      gpus: [{ index: 0, name: gpu, memoryBytes: 8e10, driver: '550.54' }],
      engineBuild: 'b1',
      nodeVersion: 'v20',
      startedAt: '2026-01-01T00:00:00.000Z',
    },
  };
}

for (const provider of providersUnderTest()) {
  describe(`run history on ${provider}`, () => {
    let t: TestDatabase;
    let caller: ReturnType<typeof createCaller>;
    let experimentId = '';
    const ids: Record<string, string> = {};

    before(async () => {
      t = await freshDatabase(provider);
      const bus = new EventBus();
      const queue = new Queue({ db: t.db, provider, bus, leaseMs: 10_000, maxAttempts: 3 });
      caller = createCaller({ db: t.db, queue, bus, isAdmin: true, agent: null, transport: 'internal' });
      const exp = await t.db.experiment.create({
        data: { name: 'study', spec: {}, model: 'gpt2', device: 'cuda', tags: ['study'], tagList: ',study,' },
      });
      experimentId = exp.id;
      // Two runs of naive at 128 (repeats of one configuration), one fa2 at 128, one naive at 512, one on another GPU.
      const rows: [string, RunResult][] = [
        ['naive128a', result(config({}), [10, 12, 14])],
        ['naive128b', result(config({}), [16])],
        ['fa2128', result(config({ attention: 'fa2' }), [4, 5, 6])],
        ['naive512', result(config({ promptLength: 512 }), [40, 42])],
        ['fa2a100', result(config({ attention: 'fa2', promptLength: 512 }), [20, 22], 'NVIDIA A100', 'gpu-b')],
      ];
      let at = Date.parse('2026-01-02T00:00:00Z');
      for (const [key, r] of rows) {
        at += 60_000;
        const row = await t.db.run.create({
          data: {
            ...runRow(r, { experimentId, tags: ['study'], notes: '', source: 'online' }),
            createdAt: new Date(at),
          },
        });
        ids[key] = row.id;
      }
    });
    after(async () => t?.drop());

    it('filters, sorts and pages in the database', async () => {
      const all = await caller.runs.list({
        filter: {},
        sort: { field: 'totalMsMedian', dir: 'asc' },
        page: 0,
        pageSize: 2,
      });
      assert.equal(all.total, 5);
      // medians: fa2128 5, naive128a 12, naive128b 16, fa2a100 21, naive512 41
      assert.deepEqual(
        all.items.map((r) => r.id),
        [ids.fa2128, ids.naive128a],
      );
      const p2 = await caller.runs.list({
        filter: {},
        sort: { field: 'totalMsMedian', dir: 'asc' },
        page: 2,
        pageSize: 2,
      });
      assert.deepEqual(
        p2.items.map((r) => r.id),
        [ids.naive512],
      );

      const naive = await caller.runs.list({
        filter: { attention: ['naive'] },
        sort: { field: 'createdAt', dir: 'asc' },
        page: 0,
        pageSize: 50,
      });
      assert.deepEqual(
        naive.items.map((r) => r.id),
        [ids.naive128a, ids.naive128b, ids.naive512],
      );
      const gpu = await caller.runs.list({
        filter: { gpuName: ['NVIDIA A100'] },
        sort: { field: 'createdAt', dir: 'desc' },
        page: 0,
        pageSize: 50,
      });
      assert.deepEqual(
        gpu.items.map((r) => r.id),
        [ids.fa2a100],
      );
      const agent = await caller.runs.list({
        filter: { agentName: ['gpu-b'] },
        sort: { field: 'createdAt', dir: 'desc' },
        page: 0,
        pageSize: 50,
      });
      assert.equal(agent.total, 1);
      const dated = await caller.runs.list({
        filter: { from: new Date('2026-01-02T00:02:30Z'), to: new Date('2026-01-02T00:04:30Z') },
        sort: { field: 'createdAt', dir: 'asc' },
        page: 0,
        pageSize: 50,
      });
      assert.deepEqual(
        dated.items.map((r) => r.id),
        [ids.fa2128, ids.naive512],
      );
      const facets = await caller.runs.facets();
      assert.deepEqual(facets.gpuName, ['NVIDIA A100', 'NVIDIA H100 80GB HBM3']);
      assert.deepEqual(facets.tags, ['study']);
    });

    it('groups repeats of one configuration with mean ± std over every repeat', async () => {
      const g = await caller.runs.groups({ filter: {}, sort: { field: 'totalMs', dir: 'asc' }, page: 0, pageSize: 10 });
      assert.equal(g.total, 4);
      const naive128 = g.items.find((i) => i.config.attention === 'naive' && i.config.promptLength === 128);
      assert.ok(naive128);
      assert.equal(naive128.runCount, 2);
      assert.equal(naive128.repeatCount, 4);
      // Repeats 10 12 14 16: mean 13, squared deviations 9+1+1+9 = 20, / 3
      assert.ok(Math.abs(naive128.totalMs.mean - 13) < 1e-9);
      assert.ok(Math.abs(naive128.totalMs.std - Math.sqrt(20 / 3)) < 1e-9);
      // The same as pooling in JavaScript.
      const [js] = groupRepeats([
        { id: 'a', config: config({}), values: [10, 12, 14] },
        { id: 'b', config: config({}), values: [16] },
      ]);
      assert.ok(Math.abs(naive128.totalMs.std - js.std) < 1e-9);
      assert.deepEqual(
        g.items.map((i) => i.totalMs.mean),
        [5, 13, 21, 41],
      );
    });

    it('tags runs and filters by tag', async () => {
      await caller.runs.annotate({ ids: [ids.fa2128, ids.naive128a], addTags: ['keep'], notes: 'checked' });
      const tagged = await caller.runs.list({
        filter: { tag: 'keep' },
        sort: { field: 'createdAt', dir: 'asc' },
        page: 0,
        pageSize: 50,
      });
      assert.deepEqual(
        tagged.items.map((r) => r.id),
        [ids.naive128a, ids.fa2128],
      );
      assert.deepEqual(tagged.items[0].tags, ['study', 'keep']);
      assert.equal(tagged.items[0].notes, 'checked');
      // A tag is matched whole: "kee" is not "keep".
      assert.equal(
        (
          await caller.runs.list({
            filter: { tag: 'kee' },
            sort: { field: 'createdAt', dir: 'asc' },
            page: 0,
            pageSize: 50,
          })
        ).total,
        0,
      );
      await assert.rejects(caller.runs.annotate({ ids: ['nope'], addTags: ['x'] }), /no run with id nope/);
      await assert.rejects(caller.runs.annotate({ ids: [ids.fa2128], addTags: ['a,b'] }), /cannot contain a comma/);
    });

    it('exports every matching run', async () => {
      const csv = await caller.runs.export({
        filter: { model: ['gpt2'] },
        sort: { field: 'createdAt', dir: 'asc' },
        format: 'csv',
      });
      assert.equal(csv.rows.length, 5);
      const col = (n: string) => csv.header.indexOf(n);
      assert.equal(csv.rows[0][col('id')], ids.naive128a);
      assert.equal(csv.rows[0][col('totalMsMedian')], 12);
      assert.equal(csv.rows[0][col('gpu')], 'NVIDIA H100 80GB HBM3');
      const json = await caller.runs.export({
        filter: { attention: ['fa2'] },
        sort: { field: 'createdAt', dir: 'asc' },
        format: 'json',
      });
      assert.equal(json.runs.length, 2);
    });

    it('imports a results file in one transaction, and refuses a malformed one with the reason', async () => {
      const c = config({ attention: 'fa1' });
      const file = {
        format: 'flashlab-results/1',
        experiment: {
          name: 'offline',
          model: 'gpt2',
          attention: ['fa1'],
          kvCache: [true],
          tp: [1],
          dtype: ['fp16'],
          device: 'cuda',
          batchSizes: [1],
          promptLengths: [128],
          newTokens: [32],
        },
        runs: [result(c, [8, 9])],
      };
      const r = await caller.runs.import({ fileName: 'r.json', content: JSON.stringify(file) });
      assert.equal(r.runs, 1);
      const imported = await caller.runs.list({
        filter: { source: 'import' },
        sort: { field: 'createdAt', dir: 'asc' },
        page: 0,
        pageSize: 50,
      });
      assert.equal(imported.total, 1);
      assert.equal(imported.items[0].experimentId, r.experimentId);
      await assert.rejects(
        caller.runs.import({ content: '{"format":"flashlab-results/1"}' }),
        /not a flashlab results file — experiment/,
      );
      await assert.rejects(caller.runs.import({ fileName: 'x.json', content: 'not json' }), /x\.json is not JSON/);
      const bad = {
        ...file,
        runs: [
          { ...result(c, [1]), repeats: [{ prefillMs: 1, tpotMs: 1, totalMs: 'x', tokensPerSec: 1, peakMemBytes: 1 }] },
        ],
      };
      await assert.rejects(caller.runs.import({ content: JSON.stringify(bad) }), /runs\.0\.repeats\.0\.totalMs/);
      assert.equal(
        (
          await caller.runs.list({
            filter: { source: 'import' },
            sort: { field: 'createdAt', dir: 'asc' },
            page: 0,
            pageSize: 50,
          })
        ).total,
        1,
      );
    });

    it('gives the compare page every repeat, and finds the best speedups by grouping', async () => {
      const data = await caller.compare.runs({ runIds: [ids.naive128a, ids.fa2128, 'gone'], experimentIds: [] });
      assert.equal(data.runs.length, 2);
      assert.deepEqual(data.missing, ['gone']);
      const naive = data.runs.find((r) => r.id === ids.naive128a);
      assert.deepEqual(
        naive?.repeats.map((p) => p.totalMs),
        [10, 12, 14],
      );
      assert.equal(naive?.driver, '550.54');
      const byExperiment = await caller.compare.runs({ runIds: [], experimentIds: [experimentId] });
      assert.equal(byExperiment.runs.length, 5);
      await assert.rejects(
        caller.compare.runs({ runIds: [], experimentIds: [] }),
        /name at least one run or experiment/,
      );

      const best = await caller.compare.bestSpeedups();
      const fa2 = best.find((b) => b.id === 'fa2');
      // Same shape and machine only: naive128 (medians 12 and 16 -> mean 14) over fa2128 (5). The A100 run has no
      // naive twin on its own GPU, so it does not count.
      assert.ok(fa2?.best);
      assert.ok(Math.abs(fa2.best.speedup - 14 / 5) < 1e-9);
      assert.equal(fa2.best.promptLength, 128);
      assert.equal(best.find((b) => b.id === 'kv')?.best, null);
      // The interval the page draws for the same pair.
      const ci = bootstrapSpeedup([10, 12, 14, 16], [4, 5, 6], { statistic: 'median' });
      assert.equal(ci.includesOne, false);
    });
  });
}
