// Tensor parallelism runs one host thread per shard (the CPU shards take turns on the shared backend and meet at
// a host rendezvous before every all-reduce). This proves, on the CPU twin of the GPU engine: the answer does not
// depend on how the shard threads interleave (bit for bit), a cancel during a TP prefill stops every shard with an
// AbortError, a failing shard stops the others with an error naming it and no hang, the engine works normally
// after both, and the step breakdown (compute vs each all-reduce) is there when asked for and adds up.
import assert from 'node:assert/strict';
import { afterEach, describe, it } from 'node:test';
import { TpBreakdown } from '../../contracts/experiment';
import { KNOWN_MODELS, type ModelConfig, tpProblem } from '../../contracts/models';
import { Engine, type GenerateRequest, type GenerateResult } from '../../native/engine';
import { randomIds } from './helpers';

// A hang is a failure, not a stuck CI job. A test timeout alone would leave the process alive (a native call
// that never returns keeps the event loop busy), and so would process.exit (the addon's clean-up waits for the
// stuck shard threads): a check that can hang kills the test process instead, which fails this file.
const NO_HANG = { timeout: 60_000 };
async function noHang<T>(what: string, work: () => Promise<T>, ms = 45_000): Promise<T> {
  const watchdog = setTimeout(() => {
    console.error(`${what}: no answer after ${ms} ms (a hang); killing the test process`);
    process.kill(process.pid, 'SIGKILL');
  }, ms);
  try {
    return await work();
  } finally {
    clearTimeout(watchdog);
  }
}

function sameBits(a: GenerateResult, b: GenerateResult, what: string) {
  assert.deepEqual(a.tokens, b.tokens, `tokens, ${what}`);
  const bytes = (r: GenerateResult) => [
    ...(r.logitsLast ?? []).map((row) => Buffer.from(row.buffer, row.byteOffset, row.byteLength)),
    ...(r.logitsSteps ?? []).flat().map((row) => Buffer.from(row.buffer, row.byteOffset, row.byteLength)),
  ];
  const x = bytes(a);
  const y = bytes(b);
  assert.equal(x.length, y.length, `logit rows, ${what}`);
  x.forEach((buf, i) => assert.ok(buf.equals(y[i]), `logits row ${i} differ in some bit, ${what}`));
}

function degreesOf(config: ModelConfig): number[] {
  return [2, 3, 4].filter((tp) => tpProblem(config, tp) === null);
}

describe('shard threads: the answer does not depend on how they interleave', () => {
  for (const name of ['gpt2-tiny', 'chatglm2-tiny']) {
    const config = KNOWN_MODELS[name];
    it(
      `${name}: two engines generating at once give each other's and a lone run's logits, bit for bit`,
      NO_HANG,
      async () => {
        const req: GenerateRequest = {
          inputIds: [randomIds(23, config.vocabSize, 3), randomIds(23, config.vocabSize, 4)],
          maxNewTokens: 5,
          attention: 'fa2',
          kvCache: true,
          dumpLogits: true,
        };
        for (const tp of degreesOf(config)) {
          const a = await Engine.create({ model: name, seed: 9, tp, threads: 2 });
          const b = await Engine.create({ model: name, seed: 9, tp, threads: 1 });
          try {
            const alone = await a.generate(req);
            // Two engines' shard threads compete for the cores and take their turns in whatever order they get.
            const [x, y] = await Promise.all([a.generate(req), b.generate(req)]);
            sameBits(x, alone, `tp ${tp}, concurrent run vs lone run`);
            // Another thread count splits the kernels' loops differently but sums every value in the same order.
            sameBits(y, alone, `tp ${tp}, 1 vs 2 compute threads`);
          } finally {
            a.dispose();
            b.dispose();
          }
        }
      },
    );
  }
});

// Twelve layers and a prompt of 1,024 tokens: a prefill long enough (~1 s on two cores) to cancel inside it.
const LONG: ModelConfig = {
  family: 'chatglm2',
  name: 'chatglm2-long-prefill',
  vocabSize: 1000,
  hiddenSize: 256,
  numLayers: 12,
  numHeads: 8,
  numKvHeads: 2,
  headDim: 32,
  ffnHiddenSize: 1024,
  maxPositions: 1100,
  normEps: 1e-5,
};

describe('cancelling a tensor-parallel prefill', () => {
  for (const tp of [2, 4]) {
    it(
      `tp ${tp}: every shard stops with an AbortError, and the engine generates normally afterwards`,
      NO_HANG,
      async () => {
        const engine = await Engine.create({ model: LONG, seed: 2, tp, maxSeqLen: 1100 });
        try {
          const prefill: GenerateRequest = {
            inputIds: [randomIds(1024, LONG.vocabSize, 7)],
            maxNewTokens: 1,
            attention: 'naive',
            kvCache: true,
            dumpLogits: true,
          };
          let t0 = performance.now();
          const reference = await engine.generate(prefill);
          const fullMs = performance.now() - t0;

          const controller = new AbortController();
          let tokens = 0;
          setTimeout(() => controller.abort(), fullMs * 0.15);
          t0 = performance.now();
          await noHang(`tp ${tp} cancelled prefill`, () =>
            assert.rejects(
              engine.generate({ ...prefill, signal: controller.signal, onTokens: () => tokens++ }),
              (err: Error) => err.name === 'AbortError',
            ),
          );
          const cancelledMs = performance.now() - t0;
          assert.equal(tokens, 0, 'no token came out of a cancelled prefill');
          // Cancelled at the next all-reduce (two per layer), not at the end of the prefill.
          assert.ok(
            cancelledMs < fullMs * 0.75,
            `the cancelled prefill took ${cancelledMs.toFixed(0)} ms of a full ${fullMs.toFixed(0)} ms`,
          );

          sameBits(await engine.generate(prefill), reference, `tp ${tp}, after the cancel`);
          const after = await engine.generate({
            ...prefill,
            inputIds: [randomIds(40, LONG.vocabSize, 8)],
            maxNewTokens: 4,
          });
          assert.equal(after.newTokens[0].length, 4);
        } finally {
          engine.dispose();
        }
      },
    );
  }
});

describe('a shard that fails', () => {
  afterEach(() => {
    delete process.env.FLASHLAB_FAULT_INJECT;
  });
  const cases = [
    { name: 'chatglm2-tiny', tp: 2, fault: '1:1' },
    { name: 'gpt2-tiny', tp: 2, fault: '0:0' },
    { name: 'chatglm2-tiny', tp: 4, fault: '3:1' },
    { name: 'gpt2-tiny', tp: 4, fault: '2:0' },
  ];
  for (const { name, tp, fault } of cases) {
    const [shard, layer] = fault.split(':');
    it(
      `${name} tp ${tp}: shard ${shard} failing at layer ${layer} stops every shard with an error naming it`,
      NO_HANG,
      async () => {
        const config = KNOWN_MODELS[name];
        const engine = await Engine.create({ model: name, seed: 4, tp, threads: 2 });
        try {
          const req: GenerateRequest = {
            inputIds: [randomIds(17, config.vocabSize, 1)],
            maxNewTokens: 4,
            attention: 'fa1',
            kvCache: true,
            dumpLogits: true,
          };
          const reference = await engine.generate(req);
          process.env.FLASHLAB_FAULT_INJECT = fault;
          await noHang(`tp ${tp}, shard ${shard} failing`, () =>
            assert.rejects(engine.generate(req), (err: Error) => {
              assert.notEqual(err.name, 'AbortError');
              assert.match(
                err.message,
                new RegExp(
                  `^tensor-parallel shard ${shard} of ${tp} \\(cpu\\) failed: injected fault at layer ${layer}\\b`,
                ),
              );
              return true;
            }),
          );
          delete process.env.FLASHLAB_FAULT_INJECT;
          sameBits(await engine.generate(req), reference, `tp ${tp}, after shard ${shard} failed`);
        } finally {
          engine.dispose();
        }
      },
    );
  }

  it('at tp 1 the error is the shard’s own, and a malformed hook is refused by name', NO_HANG, async () => {
    const engine = await Engine.create({ model: 'gpt2-tiny', seed: 4, tp: 1 });
    try {
      const req: GenerateRequest = { inputIds: [[1, 2, 3]], maxNewTokens: 2, attention: 'fa2', kvCache: true };
      process.env.FLASHLAB_FAULT_INJECT = '0:1';
      await assert.rejects(engine.generate(req), /^Error: injected fault at layer 1 \(FLASHLAB_FAULT_INJECT\)$/);
      process.env.FLASHLAB_FAULT_INJECT = 'shard one';
      await assert.rejects(engine.generate(req), /FLASHLAB_FAULT_INJECT must be '<shard>:<layer>', got 'shard one'/);
      delete process.env.FLASHLAB_FAULT_INJECT;
      assert.equal((await engine.generate(req)).newTokens[0].length, 2);
    } finally {
      engine.dispose();
    }
  });
});

describe('the tensor-parallel step breakdown', () => {
  for (const name of ['gpt2-tiny', 'chatglm2-tiny']) {
    const config = KNOWN_MODELS[name];
    for (const tp of [2, 4]) {
      it(`${name} tp ${tp}: the last step's all-reduces, two per layer, inside its step time`, NO_HANG, async () => {
        const engine = await Engine.create({ model: name, seed: 6, tp, threads: 2 });
        try {
          const req: GenerateRequest = {
            inputIds: [randomIds(31, config.vocabSize, 2)],
            maxNewTokens: 5,
            attention: 'fa2',
            kvCache: true,
          };
          const plain = await engine.generate(req);
          assert.equal(plain.timings.tpBreakdown, undefined, 'not there unless asked for');
          const timed = await engine.generate({ ...req, tpBreakdown: true });
          assert.deepEqual(timed.tokens, plain.tokens, 'timing changes no token');
          const b = timed.timings.tpBreakdown;
          assert.ok(b, 'there when asked for');
          assert.deepEqual(TpBreakdown.parse(b), b, 'the shape the dashboard reads');
          // two per layer, then the output layer's logits exchange
          assert.equal(b.allReduceCount, 2 * config.numLayers + 1);
          assert.equal(b.allReducePerLayerMs.length, config.numLayers);
          assert.ok(b.outputExchangeMs !== undefined && b.outputExchangeMs > 0, JSON.stringify(b));
          const perLayer = b.allReducePerLayerMs.reduce((x, y) => x + y, 0) + b.outputExchangeMs;
          assert.ok(
            Math.abs(perLayer - b.allReduceMs) <= 1e-9 * Math.max(1, b.allReduceMs),
            'layers and the exchange sum to the total',
          );
          assert.ok(b.stepMs > 0 && b.allReduceMs > 0, JSON.stringify(b));
          assert.ok(b.allReduceMs <= b.stepMs, `all-reduces ${b.allReduceMs} ms within the step's ${b.stepMs} ms`);
          assert.ok(Math.abs(b.computeMs + b.allReduceMs - b.stepMs) <= 1e-9 * b.stepMs, 'compute is the rest');
          // It is the last step's pass: no longer than that step's wall time (which adds sampling).
          const lastStep = timed.timings.decodeMs.at(-1) ?? Number.NaN;
          assert.ok(b.stepMs <= lastStep, `pass ${b.stepMs} ms within the last step's ${lastStep} ms`);
          // Off again for the next request that does not ask.
          assert.equal((await engine.generate(req)).timings.tpBreakdown, undefined);
        } finally {
          engine.dispose();
        }
      });
    }
  }

  it('of a generate that a stop token ends early is that of its last step', NO_HANG, async () => {
    const config = KNOWN_MODELS['gpt2-tiny'];
    const engine = await Engine.create({ model: 'gpt2-tiny', seed: 6, tp: 2, threads: 2 });
    try {
      const req: GenerateRequest = {
        inputIds: [randomIds(12, config.vocabSize, 9)],
        maxNewTokens: 8,
        attention: 'fa2',
        kvCache: true,
        // Seeded sampling: varied tokens (a random-weight model's greedy choice tends to repeat one), the same
        // ones in both runs.
        sampling: { greedy: false, temperature: 1, seed: 3 },
      };
      const free = (await engine.generate(req)).newTokens[0];
      // A token first generated at a decode step, so that the stop comes after at least one of them.
      const at = free.findIndex((t, i) => i >= 2 && !free.slice(0, i).includes(t));
      assert.ok(at > 0, `a token that first appears at step 2 or later in ${free}`);
      const stop = free[at];
      const out = await engine.generate({
        ...req,
        sampling: { ...req.sampling, stopTokens: [stop] },
        tpBreakdown: true,
      });
      assert.equal(out.stoppedBy, 'stop');
      assert.equal(out.newTokens[0].length, at + 1, 'ended at the stop token');
      const b = out.timings.tpBreakdown;
      assert.ok(b && b.allReduceCount === 2 * config.numLayers + 1, JSON.stringify(b));
      const lastStep = out.timings.decodeMs.at(-1) ?? Number.NaN;
      assert.ok(b.stepMs <= lastStep, `pass ${b.stepMs} ms within the last step's ${lastStep} ms`);
    } finally {
      engine.dispose();
    }
  });

  it('is absent at tp 1 even when asked for (there is no all-reduce to time)', async () => {
    const engine = await Engine.create({ model: 'gpt2-tiny', seed: 6, tp: 1 });
    try {
      const out = await engine.generate({
        inputIds: [[5, 6, 7]],
        maxNewTokens: 3,
        attention: 'fa2',
        kvCache: true,
        tpBreakdown: true,
      });
      assert.equal(out.timings.tpBreakdown, undefined);
    } finally {
      engine.dispose();
    }
  });

  it('of a prefill-only generate is the prefill pass', async () => {
    const engine = await Engine.create({ model: 'chatglm2-tiny', seed: 6, tp: 2, threads: 2 });
    try {
      const out = await engine.generate({
        inputIds: [randomIds(64, 65024, 5)],
        maxNewTokens: 1,
        attention: 'naive',
        kvCache: false,
        tpBreakdown: true,
      });
      const b = out.timings.tpBreakdown;
      assert.ok(
        b && b.allReduceCount === 5 && b.outputExchangeMs !== undefined && b.stepMs <= out.timings.prefillMs,
        JSON.stringify(b),
      );
    } finally {
      engine.dispose();
    }
  });
});
