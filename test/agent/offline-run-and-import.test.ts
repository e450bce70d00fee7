// `flashlab run` on the tiny models writes a results file that `flashlab import` puts into the history; bad plans
// and bad files are refused with the field that is wrong.
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { promisify } from 'node:util';
import Database from 'better-sqlite3';
import { OfflineResults } from '../../contracts';
import { ROOT } from '../e2e/harness';

const exec = promisify(execFile);
const flashlab = path.join(ROOT, 'bin', 'flashlab');

async function cli(args: string[], env: Record<string, string> = {}) {
  try {
    const { stdout, stderr } = await exec(flashlab, args, {
      cwd: ROOT,
      env: { ...process.env, ...env },
      timeout: 240_000,
    });
    return { code: 0, stdout, stderr };
  } catch (err) {
    const e = err as { code?: number; stdout?: string; stderr?: string };
    return { code: e.code ?? -1, stdout: e.stdout ?? '', stderr: e.stderr ?? '' };
  }
}

describe('flashlab run and import', () => {
  let dir: string;
  before(() => {
    dir = mkdtempSync(path.join(os.tmpdir(), 'flashlab-offline-'));
  });
  after(() => rmSync(dir, { recursive: true, force: true }));

  const plan = {
    experiment: {
      name: 'offline tiny sweep',
      model: 'gpt2-tiny',
      weights: { kind: 'random', seed: 3 },
      attention: ['naive', 'fa2'],
      kvCache: [true, false],
      tp: [1, 2],
      dtype: ['fp32'],
      device: 'cpu',
      batchSizes: [2],
      promptLengths: [9],
      newTokens: [5],
      warmup: 1,
      repeats: 3,
      tags: ['offline-test'],
    },
  };

  it('runs every configuration of a plan and writes a valid results file', async () => {
    const planPath = path.join(dir, 'plan.json');
    const outPath = path.join(dir, 'results.json');
    writeFileSync(planPath, JSON.stringify(plan));
    const r = await cli(['run', planPath, '--out', outPath, '--name', 'offline-box']);
    assert.equal(r.code, 0, r.stderr);
    const results = OfflineResults.parse(JSON.parse(readFileSync(outPath, 'utf8')));
    assert.equal(results.format, 'flashlab-results/1');
    assert.equal(results.failures.length, 0);
    assert.equal(results.runs.length, 8, '2 methods x 2 cache settings x 2 TP degrees');
    for (const run of results.runs) {
      assert.equal(run.repeats.length, 3);
      assert.equal(run.environment.agentName, 'offline-box');
      assert.equal(run.environment.backend, 'cpu');
      assert.ok(run.summary.prefillMs.median > 0 && run.summary.tokensPerSec.median > 0);
      assert.equal(run.repeats[0].decodeMs?.length, 4, 'one decode time per token after the first');
      assert.equal(run.sampleTokens?.length, 5);
    }
    // Greedy decoding of the same weights and prompt: every method, cache setting and TP degree agrees.
    const samples = new Set(results.runs.map((r) => JSON.stringify(r.sampleTokens)));
    assert.equal(samples.size, 1, `methods disagree on the greedy tokens: ${[...samples].join(' | ')}`);
  });

  it('imports the results file into the database of DATABASE_URL', async () => {
    const dbFile = path.join(dir, 'history.db');
    const r = await cli(['import', path.join(dir, 'results.json')], { DATABASE_URL: `file:${dbFile}` });
    assert.equal(r.code, 0, r.stderr);
    const db = new Database(dbFile, { readonly: true });
    try {
      const experiments = db.prepare('SELECT id, name FROM "Experiment"').all() as Array<{ id: string; name: string }>;
      assert.equal(experiments.length, 1);
      assert.equal(experiments[0].name, 'offline tiny sweep');
      const runs = db.prepare('SELECT * FROM "Run" WHERE "experimentId" = ?').all(experiments[0].id) as Array<
        Record<string, unknown>
      >;
      assert.equal(runs.length, 8);
      assert.ok(runs.every((row) => (row.prefillMsMedian as number) > 0 && row.model === 'gpt2-tiny'));
      assert.deepEqual(new Set(runs.map((row) => row.attention)), new Set(['naive', 'fa2']));
    } finally {
      db.close();
    }
  });

  it('runs ChatGLM2 (multi-query attention) offline as well', async () => {
    const planPath = path.join(dir, 'glm.json');
    const outPath = path.join(dir, 'glm-results.json');
    writeFileSync(
      planPath,
      JSON.stringify({
        experiment: {
          ...plan.experiment,
          name: 'glm',
          model: 'chatglm2-tiny',
          attention: ['fa1'],
          kvCache: [true],
          tp: [2],
          repeats: 1,
        },
      }),
    );
    const r = await cli(['run', planPath, '--out', outPath]);
    assert.equal(r.code, 0, r.stderr);
    const results = OfflineResults.parse(JSON.parse(readFileSync(outPath, 'utf8')));
    assert.equal(results.runs.length, 1);
    assert.equal(results.runs[0].config.model, 'chatglm2-tiny');
  });

  it('runs on a Hugging Face checkpoint directory, drawing prompt ids from its own vocabulary', async () => {
    const planPath = path.join(dir, 'ckpt.json');
    const outPath = path.join(dir, 'ckpt-results.json');
    const checkpoint = path.join(ROOT, 'test', 'fixtures', 'gpt2-tiny-a'); // vocabulary 1000, 160 positions
    writeFileSync(
      planPath,
      JSON.stringify({
        experiment: {
          ...plan.experiment,
          name: 'ckpt',
          weights: { kind: 'checkpoint', path: checkpoint },
          tp: [1],
          kvCache: [true],
          repeats: 1,
        },
      }),
    );
    const r = await cli(['run', planPath, '--out', outPath]);
    assert.equal(r.code, 0, r.stderr);
    const results = OfflineResults.parse(JSON.parse(readFileSync(outPath, 'utf8')));
    assert.equal(results.runs.length, 2);
    assert.ok(
      results.runs.every((run) => run.sampleTokens?.every((id) => id < 1000)),
      'tokens of the checkpoint vocabulary',
    );
  });

  it('refuses an impossible plan, naming the field', async () => {
    const planPath = path.join(dir, 'bad-plan.json');
    writeFileSync(planPath, JSON.stringify({ experiment: { ...plan.experiment, tp: [3], promptLengths: [600] } }));
    const r = await cli(['run', planPath, '--out', path.join(dir, 'never.json')]);
    assert.notEqual(r.code, 0);
    assert.match(r.stderr, /experiment\.tp\.0: tensor-parallel degree 3 does not divide/);
    assert.match(r.stderr, /experiment\.promptLengths\.0: prompt of 600 tokens/);
  });

  it('refuses a file that is not a results file, naming the field, and stores nothing', async () => {
    const bad = path.join(dir, 'bad-results.json');
    const good = JSON.parse(readFileSync(path.join(dir, 'results.json'), 'utf8'));
    good.runs[0].repeats = [];
    writeFileSync(bad, JSON.stringify(good));
    const dbFile = path.join(dir, 'untouched.db');
    const r = await cli(['import', bad], { DATABASE_URL: `file:${dbFile}` });
    assert.notEqual(r.code, 0);
    assert.match(r.stderr, /runs\.0\.repeats/);
    const notJson = path.join(dir, 'not.json');
    writeFileSync(notJson, '{"format":');
    const r2 = await cli(['import', notJson], { DATABASE_URL: `file:${dbFile}` });
    assert.notEqual(r2.code, 0);
    assert.match(r2.stderr, /cannot read .*not\.json/);
  });
});
