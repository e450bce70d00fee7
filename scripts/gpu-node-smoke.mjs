// The GPU smoke test's driver: the Node addon with its CUDA backend, through the engine's JavaScript API (the
// path the agent and `flashlab generate --device cuda` take), against the CPU backend, Hugging Face references
// and the errors a user can meet. scripts/gpu-node-smoke.sh runs each step in a process of its own (its own
// time limit, a crash kills one step) and prints the table; this file is bundled with native/engine.ts by
// esbuild so that it runs on hosts without npm.
//   node gpu-node-smoke.mjs --step NAME --results DIR [--device cuda|cpu] [--hf DIR] [--gpus N]
//   node gpu-node-smoke.mjs --report DIR      the table of every step's results; exit 1 on any failure
import { existsSync, mkdirSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { KNOWN_MODELS } from '../contracts/models.ts';
import { Engine } from '../native/engine.ts';

const argv = process.argv.slice(2);
const opt = (name, fallback) => {
  const i = argv.indexOf(`--${name}`);
  return i >= 0 && i + 1 < argv.length ? argv[i + 1] : fallback;
};

const METHODS = ['naive', 'fa1', 'fa2'];
// Bounds of the C++ engine_cuda_vs_cpu test: fp32 naive is exact fp32 on both sides; fa1/fa2 on fp32 tensors
// run on fp16 copies of q/k/v; fp16 is fp16 throughout (fp32 accumulation).
const TOL = { exact: 1e-4, fp32: 5e-3, fp16: 2e-2, bf16: 8e-2 };

// Head dims the CUDA kernels take (64, 128): sizes of the study's models, small enough to start in a second.
const GPT2_SMOKE = {
  family: 'gpt2',
  name: 'gpt2-smoke',
  vocabSize: 1031,
  hiddenSize: 256,
  numLayers: 2,
  numHeads: 4,
  numKvHeads: 4,
  headDim: 64,
  ffnHiddenSize: 1024,
  maxPositions: 256,
  normEps: 1e-5,
};
const GLM_SMOKE = {
  family: 'chatglm2',
  name: 'chatglm2-smoke',
  vocabSize: 1031,
  hiddenSize: 512,
  numLayers: 2,
  numHeads: 4,
  numKvHeads: 2,
  headDim: 128,
  ffnHiddenSize: 1376,
  maxPositions: 256,
  normEps: 1e-5,
};
// For the tp refusal: heads enough for any tp up to 16.
const GPT2_WIDE = { ...GPT2_SMOKE, name: 'gpt2-wide', hiddenSize: 1024, numHeads: 16, numKvHeads: 16 };

const results = [];
function record(check, ok, detail) {
  results.push({ check, ok, detail });
  process.stdout.write(`${ok ? 'ok  ' : 'FAIL'} ${check}: ${detail}\n`);
}

function ids(rows, n, vocab, seed) {
  let x = seed >>> 0;
  return Array.from({ length: rows }, () =>
    Array.from({ length: n }, () => {
      x = (Math.imul(x, 1664525) + 1013904223) >>> 0;
      return x % vocab;
    }),
  );
}

/** ||a - ref|| / ||ref|| */
function relErr(a, ref) {
  let num = 0;
  let den = 0;
  for (let i = 0; i < ref.length; i++) {
    if (!Number.isFinite(a[i])) return Number.POSITIVE_INFINITY;
    num += (a[i] - ref[i]) ** 2;
    den += ref[i] ** 2;
  }
  return Math.sqrt(num / den);
}

function argmax(v) {
  let best = 0;
  for (let i = 1; i < v.length; i++) if (v[i] > v[best]) best = i;
  return best;
}

/**
 * Greedy tokens of `got` against `ref`, row by row. A row may part from the reference only where the
 * reference's own logits put the two tokens within `tieBound` of each other (relative to the largest logit):
 * a near-tie that any rounding decides. refLogits(row, step) gives the reference logits of that step.
 */
function compareTokens(got, ref, refLogits, tieBound) {
  let same = 0;
  let total = 0;
  const ties = [];
  const diverged = [];
  for (let r = 0; r < ref.length; r++) {
    total += ref[r].length;
    let s = 0;
    while (s < ref[r].length && got[r]?.[s] === ref[r][s]) s++;
    same += s;
    if (s === ref[r].length) continue;
    const logits = refLogits(r, s);
    if (logits && got[r]?.[s] !== undefined) {
      let scale = 0;
      for (const x of logits) scale = Math.max(scale, Math.abs(x));
      const gap = (logits[ref[r][s]] - logits[got[r][s]]) / scale;
      if (gap <= tieBound) {
        ties.push(`row ${r} step ${s} (gap ${gap.toExponential(1)})`);
        continue;
      }
      diverged.push(`row ${r} step ${s}: ${got[r][s]} vs ${ref[r][s]} (gap ${gap.toExponential(1)})`);
    } else diverged.push(`row ${r} step ${s}`);
  }
  return { same, total, ties, diverged };
}

function tokensDetail(c) {
  return `tokens ${c.same}/${c.total}${c.ties.length ? `, near-ties: ${c.ties.join('; ')}` : ''}${c.diverged.length ? `, DIVERGED: ${c.diverged.join('; ')}` : ''}`;
}

function errText(err) {
  return err instanceof Error ? err.message : String(err);
}

async function tryCreate(o) {
  try {
    return { engine: await Engine.create(o) };
  } catch (err) {
    return { error: err };
  }
}

const HEAD_DIM_ERROR = /head dim \d+ is not supported \(64 or 128\)/;

/** Every method x KV cache on `device` at each dtype, against the CPU engine (fp32) with the same weights. */
async function agreement(config, label, device, dtypes) {
  const prompt = ids(2, 37, config.vocabSize, 5);
  const maxNewTokens = 12;
  const cpu = await Engine.create({ model: config, seed: 11, maxBatch: 2, threads: 8 });
  const reference = {};
  for (const m of METHODS)
    for (const kv of [true, false])
      reference[`${m}/${kv}`] = await cpu.generate({
        inputIds: prompt,
        maxNewTokens,
        attention: m,
        kvCache: kv,
        dumpLogits: true,
      });
  cpu.dispose();
  for (const dtype of dtypes) {
    const { engine, error } = await tryCreate({ model: config, seed: 11, maxBatch: 2, device, dtype, threads: 8 });
    if (error) {
      const unsupported = HEAD_DIM_ERROR.test(errText(error));
      record(
        `${label} ${device} ${dtype} create`,
        unsupported,
        `${unsupported ? 'refused clearly: ' : ''}${errText(error)}`,
      );
      continue;
    }
    for (const m of METHODS)
      for (const kv of [true, false]) {
        const check = `${label} ${device} ${dtype} ${m} ${kv ? '+kv' : 'no-kv'} vs cpu`;
        const ref = reference[`${m}/${kv}`];
        let out;
        try {
          out = await engine.generate({ inputIds: prompt, maxNewTokens, attention: m, kvCache: kv, dumpLogits: true });
        } catch (err) {
          // A head dim the kernels do not take must be said so; anything else is a failure.
          const unsupported = config.headDim !== 64 && config.headDim !== 128 && HEAD_DIM_ERROR.test(errText(err));
          record(check, unsupported, `${unsupported ? 'refused clearly: ' : ''}${errText(err)}`);
          continue;
        }
        let worst = 0;
        for (let r = 0; r < ref.logitsLast.length; r++)
          worst = Math.max(worst, relErr(out.logitsLast[r], ref.logitsLast[r]));
        const exact = dtype === 'fp32' && m === 'naive';
        const tol = exact ? TOL.exact : TOL[dtype];
        const cmp = compareTokens(
          out.newTokens,
          ref.newTokens,
          (r, s) => (s === 0 ? ref.logitsLast[r] : ref.logitsSteps?.[r]?.[s - 1]),
          // fp32 must give the CPU's greedy tokens (but for near-ties fa1/fa2's fp16 q/k/v can decide); fp16
          // is reported, its logits held to the bound.
          exact ? 0 : 2 * tol,
        );
        const tokensOk = dtype === 'fp32' ? cmp.diverged.length === 0 : true;
        record(
          check,
          worst <= tol && tokensOk,
          `logits err ${worst.toExponential(2)} (tol ${tol}), ${tokensDetail(cmp)}`,
        );
      }
    engine.dispose();
  }
}

const steps = {
  async info({ device }) {
    const info = Engine.buildInfo();
    const ok = device === 'cpu' || info.backends.includes('cuda');
    record('addon built with CUDA', ok, `${info.build}; backends ${info.backends.join(', ')}`);
  },

  async 'gpt2-methods'({ device, dtypes }) {
    await agreement(GPT2_SMOKE, 'gpt2 hd64', device, dtypes);
  },

  async 'chatglm2-methods'({ device, dtypes }) {
    await agreement(GLM_SMOKE, 'chatglm2 hd128', device, dtypes);
  },

  // The named tiny models (head dim 16): run and agree if the kernels take them, else a clear refusal.
  async 'tiny-models'({ device, dtypes }) {
    await agreement(KNOWN_MODELS['gpt2-tiny'], 'gpt2-tiny hd16', device, dtypes);
    await agreement(KNOWN_MODELS['chatglm2-tiny'], 'chatglm2-tiny hd16', device, dtypes);
  },

  // Hugging Face checkpoints (safetensors written by transformers) and their float64 greedy references.
  async fixtures({ device, hf }) {
    const dirs = [join('test', 'fixtures', 'gpt2-tiny-a')];
    if (hf && existsSync(hf))
      for (const d of readdirSync(hf).sort()) if (existsSync(join(hf, d, 'reference.json'))) dirs.push(join(hf, d));
    for (const dir of dirs) {
      const ref = JSON.parse(readFileSync(join(dir, 'reference.json'), 'utf8'));
      const { engine, error } = await tryCreate({
        model: ref.kind === 'gpt2' ? 'gpt2' : 'chatglm2-6b',
        weights: dir,
        device,
        dtype: 'fp32',
        maxBatch: 1,
        threads: 8,
      });
      if (error) {
        record(`${dir} ${device} fp32 load`, false, errText(error));
        continue;
      }
      for (const m of METHODS)
        for (const kv of [true, false]) {
          const check = `${dir} ${device} fp32 ${m} ${kv ? '+kv' : 'no-kv'} vs HF`;
          const got = [];
          const want = [];
          try {
            for (const c of ref.cases) {
              const out = await engine.generate({
                inputIds: [c.inputIds],
                maxNewTokens: ref.maxNewTokens,
                attention: m,
                kvCache: kv,
              });
              got.push(out.newTokens[0]);
              want.push(c.greedy);
            }
          } catch (err) {
            const unsupported =
              engine.config.headDim !== 64 && engine.config.headDim !== 128 && HEAD_DIM_ERROR.test(errText(err));
            record(check, unsupported, `${unsupported ? 'refused clearly: ' : ''}${errText(err)}`);
            continue;
          }
          const cmp = compareTokens(
            got,
            want,
            (r, s) => (s === 0 ? ref.cases[r].logitsLast : ref.cases[r].logitsSteps?.[s - 1]),
            // float64 against fp32: a near-tie within fp32's error may go either way.
            m === 'naive' ? TOL.exact : 2 * TOL.fp32,
          );
          record(check, cmp.diverged.length === 0, tokensDetail(cmp));
        }
      engine.dispose();
    }
  },

  async tp({ device, gpus }) {
    if (device === 'cpu' || gpus < 2) {
      record('tp 2', true, `not run: ${gpus} GPU(s) visible`);
      return;
    }
    for (const config of [GPT2_SMOKE, GLM_SMOKE]) {
      const prompt = ids(2, 37, config.vocabSize, 9);
      const cpu = await Engine.create({ model: config, seed: 11, maxBatch: 2, threads: 8 });
      const ref = await cpu.generate({
        inputIds: prompt,
        maxNewTokens: 12,
        attention: 'naive',
        kvCache: true,
        dumpLogits: true,
      });
      cpu.dispose();
      for (const [dtype, m] of [
        ['fp32', 'naive'],
        ['fp16', 'fa2'],
        ['fp16', 'fa1'],
      ])
        for (const kv of [true, false]) {
          const check = `${config.name} cuda tp 2 ${dtype} ${m} ${kv ? '+kv' : 'no-kv'} vs cpu tp 1`;
          try {
            const e = await Engine.create({ model: config, seed: 11, maxBatch: 2, device, dtype, tp: 2, threads: 8 });
            const out = await e.generate({
              inputIds: prompt,
              maxNewTokens: 12,
              attention: m,
              kvCache: kv,
              dumpLogits: true,
            });
            e.dispose();
            let worst = 0;
            for (let r = 0; r < 2; r++) worst = Math.max(worst, relErr(out.logitsLast[r], ref.logitsLast[r]));
            // The all-reduce sums shards in another order than one GPU: fp32 is held to the fp32 bound.
            const tol = TOL[dtype];
            const cmp = compareTokens(
              out.newTokens,
              ref.newTokens,
              (r, s) => (s === 0 ? ref.logitsLast[r] : ref.logitsSteps[r][s - 1]),
              2 * tol,
            );
            record(
              check,
              worst <= tol && (dtype !== 'fp32' || cmp.diverged.length === 0),
              `logits err ${worst.toExponential(2)} (tol ${tol}), ${tokensDetail(cmp)}`,
            );
          } catch (err) {
            record(check, false, errText(err));
          }
        }
    }
  },

  // Errors a user meets on a GPU host, each a clear Error, after which the process (and the GPU) still works.
  async errors({ device, gpus }) {
    if (device === 'cpu') {
      record('errors', true, 'not run on the CPU');
      return;
    }
    let tp = 2;
    while (tp <= gpus) tp *= 2;
    const tooMany = await tryCreate({ model: GPT2_WIDE, device, dtype: 'fp16', tp, maxBatch: 1 });
    tooMany.engine?.dispose();
    record(
      `tp ${tp} on ${gpus} GPU(s)`,
      !!tooMany.error && /tensor parallelism of \d+ needs \d+ GPUs, but \d+ are visible/.test(errText(tooMany.error)),
      tooMany.error ? errText(tooMany.error) : 'created without error',
    );

    // gpt2-xl's weights fit any card; its KV cache for 512 rows of 1,000 tokens (about 157 GB in fp16) does not.
    const xl = await tryCreate({ model: 'gpt2-xl', device, dtype: 'fp16', maxBatch: 512, maxSeqLen: 1024, threads: 8 });
    if (xl.error)
      record('out of memory (gpt2-xl, 512 x 1000 tokens)', false, `creating gpt2-xl failed: ${errText(xl.error)}`);
    else {
      let err;
      try {
        await xl.engine.generate({
          inputIds: ids(512, 1000, 50257, 3),
          maxNewTokens: 2,
          attention: 'fa2',
          kvCache: true,
        });
      } catch (e) {
        err = e;
      }
      record(
        'out of memory (gpt2-xl, 512 x 1000 tokens)',
        !!err && /out of memory/i.test(errText(err)),
        err ? errText(err) : 'generated without error',
      );
      // The same engine serves a request that fits: the failure left the device usable.
      try {
        const out = await xl.engine.generate({
          inputIds: ids(1, 16, 50257, 4),
          maxNewTokens: 4,
          attention: 'fa2',
          kvCache: true,
        });
        record(
          'after out of memory: same engine generates',
          out.newTokens[0].length === 4,
          `${out.newTokens[0].length} tokens`,
        );
      } catch (e) {
        record('after out of memory: same engine generates', false, errText(e));
      }
      xl.engine.dispose();
    }

    const tiny = await tryCreate({ model: 'gpt2-tiny', device, dtype: 'fp16', maxBatch: 1 });
    if (tiny.error) record('unsupported head dim (gpt2-tiny, hd 16)', false, errText(tiny.error));
    else {
      try {
        await tiny.engine.generate({ inputIds: [[1, 2, 3]], maxNewTokens: 2, attention: 'fa2', kvCache: true });
        record('unsupported head dim (gpt2-tiny, hd 16)', true, 'the kernels take head dim 16 now: generated');
      } catch (e) {
        record('unsupported head dim (gpt2-tiny, hd 16)', HEAD_DIM_ERROR.test(errText(e)), errText(e));
      }
      tiny.engine.dispose();
    }
  },

  // Run by the shell script with CUDA_VISIBLE_DEVICES='' (no GPU visible to this process).
  async 'no-gpu'({ device }) {
    if (device === 'cpu') {
      record('no GPU visible', true, 'not run on the CPU');
      return;
    }
    const r = await tryCreate({ model: GPT2_SMOKE, device, dtype: 'fp16', maxBatch: 1 });
    r.engine?.dispose();
    record(
      'no GPU visible',
      !!r.error && /no CUDA device is visible/.test(errText(r.error)),
      r.error ? errText(r.error) : 'created without error',
    );
    const cpu = await Engine.create({ model: GPT2_SMOKE, seed: 1, maxBatch: 1, threads: 4 });
    const out = await cpu.generate({ inputIds: [[1, 2, 3]], maxNewTokens: 2, attention: 'fa2', kvCache: true });
    cpu.dispose();
    record(
      'no GPU visible: the CPU engine still runs',
      out.newTokens[0].length === 2,
      `${out.newTokens[0].length} tokens`,
    );
  },
};

function report(dir) {
  const order = readFileSync(join(dir, 'steps.txt'), 'utf8').trim().split('\n').filter(Boolean);
  let failed = 0;
  const rows = [];
  for (const line of order) {
    const [step, rc] = line.split(' ');
    const file = join(dir, `${step}.json`);
    const list = existsSync(file) ? JSON.parse(readFileSync(file, 'utf8')) : [];
    // A step's own rows say what failed; the exit status adds to them only when they cannot (a crash, a
    // time limit, or an exit that disagrees with them).
    if (list.length === 0 || !['0', '1'].includes(rc) || (rc === '1') === list.every((r) => r.ok)) {
      failed++;
      rows.push([step, 'FAIL', `exit ${rc}${rc === '124' ? ' (timed out)' : ''}; see ${step}.log`]);
    }
    for (const r of list) {
      if (!r.ok) failed++;
      rows.push([step, r.ok ? 'ok' : 'FAIL', `${r.check}: ${r.detail}`]);
    }
  }
  const w = Math.max(4, ...rows.map((r) => r[0].length));
  process.stdout.write(`${'step'.padEnd(w)}  result  check\n${'-'.repeat(w)}  ------  -----\n`);
  for (const [s, ok, text] of rows) process.stdout.write(`${s.padEnd(w)}  ${ok.padEnd(6)}  ${text}\n`);
  process.stdout.write(`\n${failed ? `${failed} FAILED` : 'all passed'} (${rows.length} checks)\n`);
  writeFileSync(join(dir, 'summary.json'), JSON.stringify({ failed, rows }, null, 1));
  process.exit(failed ? 1 : 0);
}

async function main() {
  const reportDir = opt('report');
  if (reportDir) return report(reportDir);
  const name = opt('step');
  const dir = opt('results');
  const device = opt('device', 'cuda');
  if (!name || !steps[name] || !dir || !['cuda', 'cpu'].includes(device)) {
    process.stderr.write(
      `usage: --step (${Object.keys(steps).join('|')}) --results DIR [--device cuda|cpu] [--hf DIR] [--gpus N]\n`,
    );
    process.exit(2);
  }
  mkdirSync(dir, { recursive: true });
  const ctx = {
    device,
    dtypes: device === 'cpu' ? ['fp32'] : ['fp32', 'fp16'],
    hf: opt('hf'),
    gpus: Number(opt('gpus', '1')) || 0,
  };
  const save = () => writeFileSync(join(dir, `${name}.json`), JSON.stringify(results, null, 1));
  try {
    await steps[name](ctx);
  } catch (err) {
    record(`${name} (uncaught)`, false, err instanceof Error ? (err.stack ?? err.message) : String(err));
  }
  save();
  process.exit(results.every((r) => r.ok) ? 0 : 1);
}

await main();
