// `flashlab generate` end to end through bin/flashlab: reference checkpoints reproduce Hugging Face's greedy
// tokens and logits, text streams, sampling is reproducible, and bad command lines fail naming the flag.
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { test } from 'node:test';

const root = join(import.meta.dirname, '..', '..');
const bin = join(root, 'bin', 'flashlab');
const fixtures = join(root, 'test', 'fixtures');

interface Run {
  code: number | null;
  stdout: string;
  stderr: string;
}

function flashlab(args: string[], timeoutMs = 120_000): Promise<Run> {
  return new Promise((resolve, reject) => {
    const child = spawn(bin, ['generate', ...args], { cwd: root, env: { ...process.env, FORCE_COLOR: '0' } });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d) => {
      stdout += d;
    });
    child.stderr.on('data', (d) => {
      stderr += d;
    });
    const timer = setTimeout(() => {
      child.kill('SIGKILL');
      reject(new Error(`flashlab generate ${args.join(' ')} did not finish in ${timeoutMs} ms`));
    }, timeoutMs);
    child.on('error', reject);
    child.on('close', (code) => {
      clearTimeout(timer);
      resolve({ code, stdout, stderr });
    });
  });
}

async function json(args: string[]): Promise<Record<string, unknown> & { tokens: number[][]; newTokens: number[][] }> {
  const r = await flashlab([...args, '--json']);
  assert.equal(r.code, 0, `exit ${r.code}: ${r.stderr}`);
  const lines = r.stdout.trim().split('\n');
  assert.equal(lines.length, 1, 'one JSON object on stdout');
  return JSON.parse(lines[0]);
}

function relativeError(got: number[], want: number[]): number {
  assert.equal(got.length, want.length);
  let err = 0;
  let scale = 0;
  for (let i = 0; i < want.length; i++) {
    err = Math.max(err, Math.abs(got[i] - want[i]));
    scale = Math.max(scale, Math.abs(want[i]));
  }
  return err / scale;
}

interface Reference {
  cases: Array<{ inputIds: number[]; greedy: number[]; logitsLast: number[]; logitsSteps: number[][] }>;
}

for (const [name, dir] of [
  ['GPT-2 safetensors', 'gpt2-tiny-b'],
  ['ChatGLM2 .bin shards', 'chatglm2-tiny-a'],
] as const) {
  test(`${name}: greedy tokens and logits match the reference written by PyTorch`, async () => {
    const ref = JSON.parse(readFileSync(join(fixtures, dir, 'reference.json'), 'utf8')) as Reference;
    const c = ref.cases[1]; // 7 prompt tokens
    const out = await json([
      '--model-dir',
      join(fixtures, dir),
      '--input-ids',
      c.inputIds.join(','),
      '--max-new-tokens',
      String(c.greedy.length),
      '--greedy',
      '--attention',
      'fa2',
      '--kv-cache',
      'on',
      '--dump-logits',
    ]);
    assert.deepEqual(out.tokens, [[...c.inputIds, ...c.greedy]]);
    assert.deepEqual(out.newTokens, [c.greedy]);
    const logitsLast = out.logitsLast as number[][];
    assert.ok(relativeError(logitsLast[0], c.logitsLast) <= 1e-4, 'logits at the last prompt position');
    const steps = out.logitsSteps as number[][][];
    assert.equal(steps[0].length, c.logitsSteps.length);
    steps[0].forEach((s, i) => {
      assert.ok(relativeError(s, c.logitsSteps[i]) <= 1e-4, `logits of step ${i + 1}`);
    });
    const timings = out.timings as Record<string, number>;
    assert.ok(timings.prefillMs > 0 && timings.totalMs >= timings.prefillMs);
    assert.ok((out.peakMemBytes as number) > 0);
  });
}

test('text streams to stdout, followed by a line of figures', async () => {
  const r = await flashlab([
    '--model',
    'gpt2-tiny',
    '--weights',
    'random',
    '--seed',
    '3',
    '--prompt',
    'The attention',
    '--max-new-tokens',
    '6',
  ]);
  assert.equal(r.code, 0, r.stderr);
  const [text, figures] = r.stdout.trimEnd().split('\n').slice(-2);
  assert.ok(text.startsWith('The attention'), text);
  assert.ok(text.length > 'The attention'.length);
  assert.match(figures, /prefill [\d.]+ ms · decode [\d.]+ ms\/token · .* tokens\/s · peak [\d.]+ MiB/);
  // the same run as JSON carries the same text for the generated ids
  const out = await json(['--model', 'gpt2-tiny', '--seed', '3', '--prompt', 'The attention', '--max-new-tokens', '6']);
  assert.equal(`The attention${(out.text as string[])[0]}`, text);
});

test('sampling is reproducible for a seed, batches run row by row, stop tokens end a row', async () => {
  const args = [
    '--model',
    'gpt2-tiny',
    '--input-ids',
    '464,3139,286;15496,11,314',
    '--max-new-tokens',
    '8',
    '--temperature',
    '0.9',
    '--top-k',
    '50',
    '--top-p',
    '0.95',
    '--repetition-penalty',
    '1.1',
    '--seed',
    '11',
    '--attention',
    'naive',
    '--kv-cache',
    'off',
  ];
  const a = await json(args);
  const b = await json(args);
  assert.deepEqual(a.tokens, b.tokens);
  assert.equal(a.tokens.length, 2);
  assert.deepEqual(a.tokens[1].slice(0, 3), [15496, 11, 314]);
  const greedy = await json(['--model', 'gpt2-tiny', '--input-ids', '464,3139,286', '--max-new-tokens', '8']);
  const third = greedy.newTokens[0][2];
  const firstAt = greedy.newTokens[0].indexOf(third);
  const stopped = await json([
    '--model',
    'gpt2-tiny',
    '--input-ids',
    '464,3139,286',
    '--max-new-tokens',
    '8',
    '--stop-token',
    String(third),
  ]);
  assert.equal(stopped.stoppedBy, 'stop');
  assert.deepEqual(stopped.newTokens[0], greedy.newTokens[0].slice(0, firstAt + 1));
});

test('ChatGLM2 with random weights has no real tokenizer: a note says so and --json carries no text', async () => {
  const r = await flashlab(['--model', 'chatglm2-tiny', '--prompt', '你好', '--max-new-tokens', '3', '--json']);
  assert.equal(r.code, 0, r.stderr);
  assert.match(r.stderr, /no tokenizer\.model/);
  const out = JSON.parse(r.stdout);
  assert.equal(out.text, undefined);
  // [gMASK] sop (numbered after the stand-in's 259 ids, as THUDM numbers them after SentencePiece's), then bytes
  assert.deepEqual(out.tokens[0].slice(0, 2), [260, 262]);
  assert.equal(out.tokens[0].length, 2 + Buffer.byteLength('你好') + 3);
  const chat = JSON.parse(
    (await flashlab(['--model', 'chatglm2-tiny', '--prompt', '你好', '--chat', '--max-new-tokens', '1', '--json']))
      .stdout,
  );
  const text = Buffer.from(chat.tokens[0].slice(2, -1).map((id: number) => id - 3)).toString('utf8');
  assert.equal(text, '[Round 1]\n\n问：你好\n\n答：');
});

test('bad command lines fail with a message naming the flag', async () => {
  const cases: Array<[string[], RegExp, number]> = [
    [['--model', 'gpt2-tiny', '--prompt', 'x', '--max-new-tokens', '2', '--frobnicate'], /--frobnicate/, 2],
    [
      ['--model', 'gpt2-tiny', '--prompt', 'x', '--max-new-tokens', '2', '--attention', 'fa3'],
      /--attention: expected one of naive, fa1, fa2/,
      2,
    ],
    [['--model', 'gpt2-tiny', '--prompt', 'x', '--max-new-tokens', '2', '--kv-cache', 'maybe'], /--kv-cache/, 2],
    [
      ['--model', 'gpt2-tiny', '--prompt', 'x', '--max-new-tokens', '0'],
      /--max-new-tokens: expected an integer >= 1/,
      2,
    ],
    [['--model', 'gpt2-tiny', '--prompt', 'x'], /--max-new-tokens is required/, 2],
    [['--model', 'gpt2-huge', '--prompt', 'x', '--max-new-tokens', '2'], /--model: unknown model 'gpt2-huge'/, 2],
    [['--prompt', 'x', '--max-new-tokens', '2'], /--model or --model-dir is required/, 2],
    [['--model', 'gpt2-tiny', '--model-dir', '.', '--prompt', 'x', '--max-new-tokens', '2'], /exclude each other/, 2],
    [['--model', 'gpt2-tiny', '--input-ids', '1,x', '--max-new-tokens', '2'], /--input-ids: 'x' in row 1/, 2],
    [['--model', 'gpt2-tiny', '--input-ids', '1,2;', '--max-new-tokens', '2'], /--input-ids: row 2 is empty/, 2],
    [
      ['--model', 'gpt2-tiny', '--input-ids', '1,2;3', '--max-new-tokens', '2'],
      /--input-ids: rows have different lengths/,
      2,
    ],
    [['--model', 'gpt2-tiny', '--input-ids', '1', '--prompt', 'x', '--max-new-tokens', '2'], /exclude each other/, 2],
    [
      ['--model', 'gpt2-tiny', '--input-ids', '1', '--chat', '--max-new-tokens', '2'],
      /--chat formats --prompt text/,
      2,
    ],
    [
      ['--model', 'gpt2-tiny', '--prompt', 'x', '--max-new-tokens', '2', '--top-p', '0'],
      /--top-p: expected a number in \(0, 1\]/,
      2,
    ],
    [
      ['--model', 'gpt2-tiny', '--prompt', 'x', '--max-new-tokens', '2', '--greedy', '--temperature', '0.7'],
      /--greedy contradicts --temperature/,
      2,
    ],
    [
      ['--model', 'gpt2-tiny', '--input-ids', '60000', '--max-new-tokens', '2'],
      /--input-ids: token id 60000 .* vocabulary of 50257/,
      2,
    ],
    [['--model', 'gpt2-tiny', '--input-ids', '1', '--max-new-tokens', '600'], /exceed gpt2-tiny's 512 positions/, 2],
    [
      ['--model-dir', join(fixtures, 'gpt2-tiny-a'), '--prompt', 'Hello world', '--max-new-tokens', '2'],
      /--prompt: token id \d+ .* vocabulary of 1000.*--input-ids/,
      2,
    ],
    [
      ['--model-dir', join(fixtures, 'nope'), '--input-ids', '1', '--max-new-tokens', '2'],
      /checkpoint directory does not exist/,
      1,
    ],
    [
      [
        '--model',
        'chatglm2-tiny',
        '--weights',
        join(fixtures, 'gpt2-tiny-a'),
        '--input-ids',
        '1',
        '--max-new-tokens',
        '2',
      ],
      /holds a gpt2 checkpoint/,
      2,
    ],
    [['--model', 'gpt2-tiny', '--input-ids', '1', '--max-new-tokens', '2', '--tp', '3'], /tensor-parallel degree 3/, 1],
  ];
  for (const [args, re, code] of cases) {
    const r = await flashlab(args);
    assert.equal(r.code, code, `${args.join(' ')}: exit ${r.code}, stderr ${r.stderr}`);
    assert.match(r.stderr, re, args.join(' '));
    assert.equal(r.stdout, '', `${args.join(' ')} printed to stdout`);
  }
  const help = await flashlab(['--help']);
  assert.equal(help.code, 0);
  assert.match(help.stdout, /--max-new-tokens N/);
});

test('Ctrl-C stops a generation mid-way: exit 130, no figures line', async () => {
  const child = spawn(
    bin,
    [
      'generate',
      '--model',
      'gpt2-tiny',
      '--prompt',
      'The',
      '--max-new-tokens',
      '500',
      '--kv-cache',
      'off',
      '--attention',
      'naive',
      '--threads',
      '1',
    ],
    { cwd: root },
  );
  let stdout = '';
  let stderr = '';
  child.stderr.on('data', (d) => {
    stderr += d;
  });
  const started = Date.now();
  const done = new Promise<number | null>((resolve) => child.on('close', resolve));
  await new Promise<void>((resolve) => {
    child.stdout.on('data', (d) => {
      stdout += d;
      // the prompt is echoed first; a longer stdout means generated text is streaming
      if (stdout.length > 'The'.length + 3) resolve();
    });
  });
  child.kill('SIGINT');
  const code = await done;
  assert.equal(code, 130, stderr);
  assert.match(stderr, /interrupted/);
  assert.doesNotMatch(stdout, /tokens\/s/);
  assert.ok(Date.now() - started < 60_000);
});

test('a ChatGLM2 checkpoint with tokenizer.model: prompts are SentencePiece ids after [gMASK] sop, text comes back', async () => {
  const { mkdtemp, rm, writeFile, copyFile } = await import('node:fs/promises');
  const { tmpdir } = await import('node:os');
  const { writeSafetensors, rng } = await import('../loaders/helpers');
  const dir = await mkdtemp(join(tmpdir(), 'flashlab-cli-'));
  try {
    // chatglm2-tiny-a's architecture with a vocabulary large enough for the 705-id fixture tokenizer
    const cfg = {
      ...JSON.parse(readFileSync(join(fixtures, 'chatglm2-tiny-a', 'config.json'), 'utf8')),
      padded_vocab_size: 720,
    };
    await writeFile(join(dir, 'config.json'), JSON.stringify(cfg));
    await copyFile(join(fixtures, 'tokenizers', 'tokenizer.model'), join(dir, 'tokenizer.model'));
    const H = cfg.hidden_size;
    const qkv = (cfg.num_attention_heads + 2 * cfg.multi_query_group_num) * cfg.kv_channels;
    const shapes: Record<string, number[]> = {
      'transformer.embedding.word_embeddings.weight': [720, H],
      'transformer.encoder.final_layernorm.weight': [H],
      'transformer.output_layer.weight': [720, H],
    };
    for (let i = 0; i < cfg.num_layers; i++) {
      const p = `transformer.encoder.layers.${i}.`;
      Object.assign(shapes, {
        [`${p}input_layernorm.weight`]: [H],
        [`${p}self_attention.query_key_value.weight`]: [qkv, H],
        [`${p}self_attention.query_key_value.bias`]: [qkv],
        [`${p}self_attention.dense.weight`]: [H, cfg.num_attention_heads * cfg.kv_channels],
        [`${p}post_attention_layernorm.weight`]: [H],
        [`${p}mlp.dense_h_to_4h.weight`]: [2 * cfg.ffn_hidden_size, H],
        [`${p}mlp.dense_4h_to_h.weight`]: [H, cfg.ffn_hidden_size],
      });
    }
    const r = rng(5);
    const tensors = Object.entries(shapes).map(([name, shape]) => {
      const values = Float32Array.from({ length: shape.reduce((a, b) => a * b, 1) }, () =>
        name.endsWith('layernorm.weight') ? 1 : (r.next() - 0.5) * 0.3,
      );
      return { name, dtype: 'F32', shape, bytes: Buffer.from(values.buffer) };
    });
    await writeFile(join(dir, 'model.safetensors'), writeSafetensors(tensors));

    const ref = JSON.parse(readFileSync(join(fixtures, 'tokenizers', 'reference.json'), 'utf8'));
    const hello = ref.sentencepiece[0] as { text: string; ids: number[] };
    const out = await json(['--model-dir', dir, '--prompt', hello.text, '--max-new-tokens', '4']);
    assert.deepEqual(out.tokens[0].slice(0, -4), [701, 703, ...hello.ids]);
    assert.equal(out.newTokens[0].length, 4);
    assert.equal(typeof (out.text as string[])[0], 'string');
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});

test('a reader that goes away (| head) stops the run quietly with status 141', async () => {
  const child = spawn(
    bin,
    [
      'generate',
      '--model',
      'gpt2-tiny',
      '--prompt',
      'The',
      '--max-new-tokens',
      '500',
      '--kv-cache',
      'off',
      '--threads',
      '1',
    ],
    { cwd: root },
  );
  let stderr = '';
  child.stderr.on('data', (d) => {
    stderr += d;
  });
  const done = new Promise<number | null>((resolve) => child.on('close', resolve));
  await new Promise<void>((resolve) => child.stdout.once('data', () => resolve()));
  child.stdout.destroy();
  assert.equal(await done, 141, stderr);
  assert.equal(stderr, '');
});
