// Engine bench bundles go into the run history: the CPU bench (bench/cpu-engine.ts --tiny, the real writer end to
// end) and the GPU drivers' JSON writer (bench/engine-gpu-common.h, driven without a GPU by bundle-writer.cpp)
// write per-repeat measurements that `flashlab import` and the dashboard's runs.import store as runs with their
// configuration key and figures; bundles without per-repeat data, kernel bundles and corrupted bundles are refused
// with a message that names the problem, and nothing is written.
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { promisify } from 'node:util';
import Database from 'better-sqlite3';
import { type BenchMeasurement, CpuEngineBenchBundle, EngineBenchBundle, targetMet } from '../../contracts/bench';
import { configKey, type EnvironmentRecord, type RepeatFigures } from '../../contracts/experiment';
import { summarize } from '../../lib/stats';
import { runsRouter } from '../../server/routers/runs';
import { createCallerFactory } from '../../server/trpc';
import { ROOT } from '../e2e/harness';
import { freshSqlite } from '../server/databases';
import { testQueue } from '../server/fixtures';

const exec = promisify(execFile);
const flashlab = path.join(ROOT, 'bin', 'flashlab');
const tsx = path.join(ROOT, 'node_modules', 'tsx', 'dist', 'loader.mjs');

async function run(cmd: string, args: string[], env: Record<string, string> = {}) {
  try {
    const { stdout, stderr } = await exec(cmd, args, { cwd: ROOT, env: { ...process.env, ...env }, timeout: 120_000 });
    return { code: 0, stdout, stderr };
  } catch (err) {
    const e = err as { code?: number; stdout?: string; stderr?: string };
    return { code: e.code ?? -1, stdout: e.stdout ?? '', stderr: e.stderr ?? '' };
  }
}

type Row = Record<string, unknown>;

function rows(dbFile: string, sql: string): Row[] {
  if (!existsSync(dbFile)) return [];
  const db = new Database(dbFile, { readonly: true });
  try {
    return db.prepare(sql).all() as Row[];
  } finally {
    db.close();
  }
}

const median = (xs: number[]) => summarize(xs).median;
/** Stored figures go through the database adapter, which keeps 15 significant digits. */
function close(actual: unknown, expected: number, what: string) {
  assert.equal(typeof actual, 'number', what);
  assert.ok(Math.abs((actual as number) - expected) <= 1e-13 * Math.abs(expected), `${what}: ${actual} != ${expected}`);
}

describe('engine bench bundles import into the history', () => {
  let dir: string;
  let cpuFile: string;
  let engineFile: string;
  let tpFile: string;
  let dbCount = 0;
  const freshDb = () => path.join(dir, `history-${dbCount++}.db`);
  const importInto = (file: string, dbFile: string) =>
    run(flashlab, ['import', file], { DATABASE_URL: `file:${dbFile}` });
  const readJson = (file: string) => JSON.parse(readFileSync(file, 'utf8'));
  const variant = (name: string, from: string, change: (b: Record<string, any>) => void) => {
    const b = readJson(from);
    change(b);
    const file = path.join(dir, name);
    writeFileSync(file, JSON.stringify(b));
    return file;
  };

  before(async () => {
    dir = mkdtempSync(path.join(os.tmpdir(), 'flashlab-bench-import-'));
    cpuFile = path.join(dir, 'cpu-engine.json');
    const cpu = await run(process.execPath, ['--import', tsx, 'bench/cpu-engine.ts', '--tiny', '--out', cpuFile]);
    assert.equal(cpu.code, 0, `bench/cpu-engine.ts --tiny failed:\n${cpu.stderr}`);
    const writer = path.join(dir, 'bundle-writer');
    const nvcc = process.env.NVCC || 'nvcc';
    const build = await run(nvcc, ['-std=c++17', '-O1', 'test/bench/bundle-writer.cpp', '-o', writer]);
    assert.equal(build.code, 0, `compiling the GPU drivers' bundle writer failed:\n${build.stderr}`);
    engineFile = path.join(dir, 'engine-gpu-h100-80gb-hbm3.json');
    tpFile = path.join(dir, 'tp-gpu-h100-80gb-hbm3x4.json');
    for (const [what, file] of [
      ['engine', engineFile],
      ['tp', tpFile],
    ]) {
      const w = await run(writer, [what, file]);
      assert.equal(w.code, 0, w.stderr);
    }
  });
  after(() => rmSync(dir, { recursive: true, force: true }));

  it('the GPU drivers compile (host C++ with the CUDA headers, as bench/engine-gpu.sh builds them)', async () => {
    const nvcc = process.env.NVCC || 'nvcc';
    for (const driver of ['engine-gpu', 'tp-gpu']) {
      const r = await run(nvcc, [
        '-std=c++17',
        '-c',
        '-DFLASHLAB_WITH_CUDA',
        '-Xcompiler',
        '-Wall,-Werror',
        `bench/${driver}.cpp`,
        '-o',
        path.join(dir, `${driver}.o`),
      ]);
      assert.equal(r.code, 0, `bench/${driver}.cpp does not compile:\n${r.stderr}`);
    }
  });

  it('the CPU bench writes every configuration with its repeats, and targets that follow from them', () => {
    const bundle = CpuEngineBenchBundle.parse(readJson(cpuFile));
    const ms = bundle.measurements ?? [];
    assert.deepEqual(
      ms.map((m) => `${m.config.attention}|${m.config.kvCache}|${m.config.promptLength}+${m.config.newTokens}`),
      ['fa2|true|16+8', 'fa2|false|16+8', 'naive|false|64+1', 'fa1|false|64+1', 'fa2|false|64+1'],
    );
    for (const m of ms) {
      assert.equal(m.config.model, 'gpt2-tiny');
      assert.equal(m.repeats.length, 2, 'two repeats in --tiny');
      for (const r of m.repeats) {
        assert.equal(r.decodeMs?.length, m.config.newTokens - 1);
        assert.ok(r.prefillMs > 0 && r.totalMs >= r.prefillMs && r.peakMemBytes > 0);
      }
    }
    assert.equal(bundle.targets.length, 3);
    for (const t of bundle.targets) assert.equal(t.met, targetMet(t), `"${t.name}" met flag`);
    // The KV-cache target from the repeats: time to the 8th token with and without the cache.
    const timeTo = (r: RepeatFigures) => r.prefillMs + (r.decodeMs ?? []).reduce((a, b) => a + b, 0);
    const kv = median(ms[0].repeats.map(timeTo));
    const noKv = median(ms[1].repeats.map(timeTo));
    const t = bundle.targets.find((x) => x.name.startsWith('KV cache on vs off'));
    assert.ok(t);
    assert.ok(Math.abs(t.value - (kv / noKv - 1)) < 1e-9, `KV target ${t.value} != ${kv / noKv - 1}`);
    const peak = (m: BenchMeasurement) => median(m.repeats.map((r) => r.peakMemBytes));
    const mem = bundle.targets.find((x) => x.name.includes('peak memory'));
    assert.ok(mem && Math.abs(mem.value - (peak(ms[4]) / peak(ms[2]) - 1)) < 1e-12);
  });

  it('flashlab import stores every configuration of the CPU bundle as a run, with its key and figures', async () => {
    const bundle = CpuEngineBenchBundle.parse(readJson(cpuFile));
    const dbFile = freshDb();
    const r = await importInto(cpuFile, dbFile);
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stderr, /imported 5 runs of the cpu-engine bundle/);
    const experiments = rows(dbFile, 'SELECT * FROM "Experiment"');
    assert.equal(experiments.length, 1);
    const date = bundle.environment.startedAt.slice(0, 10);
    assert.equal(experiments[0].name, `cpu-engine · ${bundle.card} · ${date} · gpt2-tiny`);
    assert.equal(experiments[0].source, 'import');
    assert.match(String(experiments[0].notes), /Targets: (met|missed): KV cache on vs off/);
    const runs = rows(dbFile, 'SELECT * FROM "Run"');
    assert.equal(runs.length, 5);
    for (const m of bundle.measurements ?? []) {
      const key = configKey(m.config);
      const row = runs.find((x) => x.configKey === key && x.notes === `bench ${m.section} · ${m.label}`);
      assert.ok(row, `no run of ${key}`);
      assert.equal(row.experimentId, experiments[0].id);
      assert.equal(row.repeatCount, m.repeats.length);
      close(row.prefillMsMedian, median(m.repeats.map((x) => x.prefillMs)), `${key} prefillMs`);
      close(row.tpotMsMedian, median(m.repeats.map((x) => x.tpotMs)), `${key} tpotMs`);
      close(row.tokensPerSecMedian, median(m.repeats.map((x) => x.tokensPerSec)), `${key} tokensPerSec`);
      close(row.peakMemBytes, Math.max(...m.repeats.map((x) => x.peakMemBytes)), `${key} peak memory`);
      assert.equal(row.agentName, 'bench:cpu-engine');
      assert.equal(row.source, 'import');
      const stored = JSON.parse(String(row.repeats)) as RepeatFigures[];
      assert.equal(stored.length, m.repeats.length);
      stored.forEach((r, i) => {
        assert.deepEqual(Object.keys(r).sort(), Object.keys(m.repeats[i]).sort());
        for (const k of ['prefillMs', 'tpotMs', 'totalMs', 'tokensPerSec', 'peakMemBytes'] as const)
          close(r[k], m.repeats[i][k], `${key} repeat ${i} ${k}`);
        assert.equal(r.decodeMs?.length, m.repeats[i].decodeMs?.length);
      });
      const env = JSON.parse(String(row.environment)) as EnvironmentRecord;
      assert.equal(env.backend, 'cpu');
      assert.equal(env.cpuModel, bundle.card);
      assert.equal(env.startedAt, bundle.environment.startedAt);
    }
  });

  it('leaves out, and says so, a configuration no dashboard experiment can hold', async () => {
    // gpt2-tiny has 512 positions: a 512-token prefill with 1 new token runs (the engine needs prompt + new - 1
    // positions), but an experiment spec asks for prompt + new.
    const file = variant('long-prefill.json', cpuFile, (b) => {
      for (const m of b.measurements.slice(2)) m.config.promptLength = 512;
    });
    const dbFile = freshDb();
    const r = await importInto(file, dbFile);
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stderr, /imported 2 runs/);
    assert.match(
      r.stderr,
      /skipped prefill64 · naive: no dashboard experiment can hold it \(prompt of 512 tokens \+ 1 new tokens exceeds gpt2-tiny's 512 positions\)/,
    );
    assert.equal(rows(dbFile, 'SELECT id FROM "Run"').length, 2);
  });

  it("imports what the GPU drivers' writer produces: graphs-off runs stay in the bundle, TP runs name their GPUs", async () => {
    const engine = EngineBenchBundle.parse(readJson(engineFile));
    assert.equal(engine.measurements?.length, 4);
    assert.deepEqual(
      engine.targets.map((t) => [t.met, targetMet(t)]),
      engine.targets.map((t) => [targetMet(t), targetMet(t)]),
    );
    assert.equal(readJson(engineFile).targetsNotMeasured[0].name, 'GPT-2 124M decode over Hugging Face generate');

    const dbFile = freshDb();
    const r = await importInto(engineFile, dbFile);
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stderr, /skipped measurements\.1 \(gpt2Decode\.runs · eager\): CUDA-graph decode was turned off/);
    const experiments = rows(dbFile, 'SELECT name, model FROM "Experiment" ORDER BY name');
    assert.deepEqual(
      experiments.map((e) => e.name),
      [
        'cuda-engine · NVIDIA H100 80GB HBM3 · 2026-11-26 · chatglm2-6b',
        'cuda-engine · NVIDIA H100 80GB HBM3 · 2026-11-26 · gpt2',
      ],
    );
    const runs = rows(dbFile, 'SELECT * FROM "Run"');
    assert.equal(runs.length, 3, 'the eager run is not imported');
    const graphs = engine.measurements?.[0];
    assert.ok(graphs);
    const gpt2 = runs.find((x) => x.configKey === configKey(graphs.config));
    assert.ok(gpt2);
    assert.equal(gpt2.configKey, 'gpt2|random:1|fa2|kv|tp1|fp16|cuda|b1|p128|n16');
    close(gpt2.prefillMsMedian, median(graphs.repeats.map((x) => x.prefillMs)), 'gpt2 prefill');
    assert.equal(gpt2.gpuName, 'NVIDIA H100 80GB HBM3');
    assert.equal(gpt2.agentName, 'bench:cuda-engine');
    assert.equal(gpt2.hostname, 'gpu-host');
    assert.equal(gpt2.gitCommit, '0123456789abcdef0123456789abcdef01234567');
    const env = JSON.parse(String(gpt2.environment)) as EnvironmentRecord;
    assert.equal(env.cudaVersion, '13.0');
    assert.equal(env.memoryBytes, 549755813888, 'host memory');
    assert.deepEqual(
      env.gpus.map((g) => [g.index, g.uuid]),
      [[0, 'GPU-0000']],
    );
    assert.equal(env.ceilings, undefined, 'no matmul roof measured: no ceilings');

    const tpDb = freshDb();
    const t = await importInto(tpFile, tpDb);
    assert.equal(t.code, 0, t.stderr);
    const tpRuns = rows(tpDb, 'SELECT tp, "gpuCount", environment FROM "Run" ORDER BY tp');
    assert.deepEqual(
      tpRuns.map((x) => [x.tp, x.gpuCount]),
      [
        [1, 1],
        [2, 2],
      ],
    );
    const tp2 = JSON.parse(String(tpRuns[1].environment)) as EnvironmentRecord;
    assert.deepEqual(
      tp2.gpus.map((g) => g.uuid),
      ['GPU-0000', 'GPU-1111'],
    );
    assert.match(String(rows(tpDb, 'SELECT name FROM "Experiment"')[0].name), /H100 80GB HBM3 x4/);
  });

  it("the dashboard's runs.import takes the same bundle, and writes nothing for a refused one", async () => {
    const t = await freshSqlite();
    try {
      const { queue, bus } = testQueue(t.db, t.provider);
      const caller = createCallerFactory(runsRouter)({
        db: t.db,
        queue,
        bus,
        isAdmin: true,
        agent: null,
        transport: 'internal',
      });
      const bad = readJson(engineFile);
      bad.measurements[2].config.tp = 3;
      await assert.rejects(
        caller.import({ fileName: 'bad.json', content: JSON.stringify(bad) }),
        /bad\.json: measurements\.2 \(chatglm2Ttft2048 · fa2\): config\.tp is 3 but the bundle's host has 1 GPU/,
      );
      assert.equal(await t.db.experiment.count(), 0);
      assert.equal(await t.db.run.count(), 0);
      const answer = await caller.import({ fileName: 'engine.json', content: readFileSync(engineFile, 'utf8') });
      assert.equal(answer.runs, 3);
      assert.ok('experimentIds' in answer && answer.experimentIds.length === 2);
      assert.equal(await t.db.run.count(), 3);
    } finally {
      await t.drop();
    }
  });

  it('refuses a bundle without per-repeat data, naming the file, the missing part and how to regenerate it', async () => {
    const dbFile = freshDb();
    const cpu = variant('old-cpu.json', cpuFile, (b) => delete b.measurements);
    const r = await importInto(cpu, dbFile);
    assert.notEqual(r.code, 0);
    assert.match(r.stderr, /old-cpu\.json has no per-repeat data: the 'measurements' list/);
    assert.match(
      r.stderr,
      /Regenerate it with 'node --import \.\/node_modules\/tsx\/dist\/loader\.mjs bench\/cpu-engine\.ts'/,
    );
    const engine = variant('old-engine.json', engineFile, (b) => delete b.measurements);
    const e = await importInto(engine, dbFile);
    assert.notEqual(e.code, 0);
    assert.match(e.stderr, /old-engine\.json has no per-repeat data.*\n?.*bash bench\/engine-gpu\.sh --single/);
    const tp = variant('old-tp.json', tpFile, (b) => delete b.measurements);
    assert.match((await importInto(tp, dbFile)).stderr, /bash bench\/engine-gpu\.sh --tp/);
    const firstEdition = path.join(dir, 'first-edition-cpu.json');
    writeFileSync(firstEdition, JSON.stringify({ kind: 'flashlab.bench.cpu-engine', kvCache: {} }));
    assert.match((await importInto(firstEdition, dbFile)).stderr, /first edition.*no per-repeat data/);
    assert.equal(rows(dbFile, 'SELECT id FROM "Experiment"').length, 0);
  });

  it('refuses an attention kernel bundle: its rows are kernel calls, not engine runs', async () => {
    const kernel = readdirSync(path.join(ROOT, 'bench', 'results')).find((f) => /^cuda-attention-.*\.json$/.test(f));
    assert.ok(kernel, 'a committed kernel bundle');
    const dbFile = freshDb();
    const r = await importInto(path.join(ROOT, 'bench', 'results', kernel), dbFile);
    assert.notEqual(r.code, 0);
    assert.match(
      r.stderr,
      new RegExp(`${kernel.replace('.', '\\.')} is an attention kernel benchmark .* not engine runs`),
    );
    assert.match(r.stderr, /Import the engine bundles/);
    assert.equal(rows(dbFile, 'SELECT id FROM "Run"').length, 0);
  });

  it('refuses a corrupted bundle naming the bad field, and writes nothing', async () => {
    const dbFile = freshDb();
    const cases: [string, (b: Record<string, any>) => void, RegExp][] = [
      [
        'figure.json',
        (b) => (b.measurements[1].repeats[0].prefillMs = 'fast'),
        /measurements\.1\.repeats\.0\.prefillMs/,
      ],
      [
        'count.json',
        (b) => b.measurements[0].repeats.pop(),
        /measurements\.0\.repeats: 1 repeats recorded but config\.repeats says 2/,
      ],
      [
        'steps.json',
        (b) => b.measurements[0].repeats[1].decodeMs.pop(),
        /measurements\.0\.repeats\.1\.decodeMs: 6 decode times for 8 new tokens/,
      ],
      ['model.json', (b) => (b.measurements[3].config.model = 'gpt5'), /measurements\.3\.config\.model/],
      ['device.json', (b) => (b.measurements[0].config.device = 'cuda'), /measurements\.0 .*config\.device is 'cuda'/],
      ['met.json', (b) => (b.targets[0].met = !b.targets[0].met), /targets\.0\.met is (true|false), but "KV cache/],
      ['env.json', (b) => delete b.environment.startedAt, /environment\.startedAt/],
    ];
    for (const [name, change, message] of cases) {
      const file = variant(name, cpuFile, change);
      const r = await importInto(file, dbFile);
      assert.notEqual(r.code, 0, `${name} was imported`);
      assert.match(r.stderr, new RegExp(name.replace('.', '\\.')), `${name}: the message names the file`);
      assert.match(r.stderr, message, name);
    }
    const summary = variant('summary.json', engineFile, (b) => (b.gpt2Decode.runs[0].ttftMs.median *= 2));
    assert.match(
      (await importInto(summary, dbFile)).stderr,
      /summary\.json: measurements\.0 \(gpt2Decode\.runs · cuda-graphs\): gpt2Decode\.runs says ttftMs median 4\.04 but its repeats give 2\.02/,
    );
    const section = variant('section.json', engineFile, (b) => (b.measurements[2].section = 'chatglm2Ttft4096'));
    assert.match((await importInto(section, dbFile)).stderr, /section 'chatglm2Ttft4096' does not exist in the bundle/);
    const gpu = variant('gpu-env.json', engineFile, (b) => (b.environment.gpuDetails[1].memoryBytes = -1));
    assert.match((await importInto(gpu, dbFile)).stderr, /environment\.gpuDetails\.1\.memoryBytes/);
    assert.equal(rows(dbFile, 'SELECT id FROM "Experiment"').length, 0);
    assert.equal(rows(dbFile, 'SELECT id FROM "Run"').length, 0);
  });
});
