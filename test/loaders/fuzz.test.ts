// Hundreds of corrupted and hostile variants of the fixture checkpoints: every one must be refused with a
// CheckpointError (never another exception, a crash or a hang), except byte flips that leave the file's
// meaning intact, which must then load exactly what the untouched file holds.
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { copyFile, readFile, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { test } from 'node:test';
import { CheckpointError, openCheckpoint } from '../../native/loaders/index';
import { unpickleStateDict } from '../../native/loaders/unpickle';
import {
  loadAll,
  op,
  rng,
  type Snapshot,
  sameSnapshot,
  stateDictPickle,
  torchZip,
  withTempDir,
  writeStoredZip,
  zipEntries,
  zipLayout,
} from './helpers';

const fixtures = join(import.meta.dirname, '..', 'fixtures');
const GPT2 = join(fixtures, 'gpt2-tiny-a');
const GLM = join(fixtures, 'chatglm2-tiny-a');
const SHARD1 = 'pytorch_model-00001-of-00002.bin';
const SHARD2 = 'pytorch_model-00002-of-00002.bin';
const VARIANT_TIMEOUT_MS = 10_000;

type Outcome = 'refused' | 'identical';

/** Loads `dir` fully; a refusal must be a CheckpointError, an acceptance must equal `original`. */
async function outcome(
  dir: string,
  original: Snapshot[] | null,
  label: string,
): Promise<{ kind: Outcome; message?: string }> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(
      () => reject(new Error(`${label}: loader hung for ${VARIANT_TIMEOUT_MS} ms`)),
      VARIANT_TIMEOUT_MS,
    );
  });
  try {
    const snap = await Promise.race([loadAll(dir), timeout]);
    assert.ok(original, `${label}: a corrupted checkpoint was accepted`);
    assert.ok(sameSnapshot(snap, original), `${label}: accepted, but loaded something other than the original`);
    return { kind: 'identical' };
  } catch (err) {
    if (err instanceof assert.AssertionError) throw err;
    assert.ok(
      err instanceof CheckpointError,
      `${label}: failed with ${(err as Error)?.name}: ${(err as Error)?.message} instead of a CheckpointError`,
    );
    assert.match(err.message, /\S+: .+/, `${label}: error message does not name the file`);
    return { kind: 'refused', message: err.message };
  } finally {
    clearTimeout(timer);
  }
}

async function mustRefuse(dir: string, label: string, pattern?: RegExp): Promise<string> {
  const r = await outcome(dir, null, label);
  if (pattern) assert.match(r.message ?? '', pattern, `${label}: message '${r.message}' does not explain the problem`);
  return r.message ?? '';
}

// ------------------------------------------------------------------------------------------ safetensors

async function gpt2Dir(dir: string): Promise<Buffer> {
  await copyFile(join(GPT2, 'config.json'), join(dir, 'config.json'));
  return readFile(join(GPT2, 'model.safetensors'));
}

function splitSafetensors(buf: Buffer): {
  header: Record<string, { dtype: unknown; shape: unknown; data_offsets: unknown }>;
  data: Buffer;
} {
  const n = Number(buf.readBigUInt64LE(0));
  return { header: JSON.parse(buf.subarray(8, 8 + n).toString('utf8')), data: buf.subarray(8 + n) };
}

function joinSafetensors(header: unknown, data: Buffer): Buffer {
  const json = typeof header === 'string' ? Buffer.from(header, 'utf8') : Buffer.from(JSON.stringify(header), 'utf8');
  const len = Buffer.alloc(8);
  len.writeBigUInt64LE(BigInt(json.length));
  return Buffer.concat([len, json, data]);
}

test('safetensors: truncations, header-length values and random header byte flips', async (t) => {
  await withTempDir(async (dir) => {
    const orig = await gpt2Dir(dir);
    const file = join(dir, 'model.safetensors');
    await writeFile(file, orig);
    const original = await loadAll(dir);
    const headerLen = Number(orig.readBigUInt64LE(0));
    const r = rng(1234);
    let refused = 0;
    let identical = 0;

    const cuts = [0, 1, 7, 8, 9, 8 + headerLen - 1, 8 + headerLen, 8 + headerLen + 1, orig.length - 1];
    for (let i = 0; i < 80; i++) cuts.push(r.int(orig.length));
    for (const cut of cuts) {
      await writeFile(file, orig.subarray(0, cut));
      await mustRefuse(dir, `truncated at ${cut}`);
      refused++;
    }

    const lengths = [
      0n,
      1n,
      2n,
      BigInt(headerLen - 1),
      BigInt(headerLen + 1),
      BigInt(headerLen + 8),
      BigInt(orig.length - 8),
      BigInt(orig.length),
      100_000_001n,
      2n ** 32n,
      2n ** 63n,
      2n ** 64n - 1n,
    ];
    for (const len of lengths) {
      const v = Buffer.from(orig);
      v.writeBigUInt64LE(len);
      await writeFile(file, v);
      await mustRefuse(dir, `header length ${len}`);
      refused++;
    }

    for (let i = 0; i < 150; i++) {
      const v = Buffer.from(orig);
      const at = r.int(8 + headerLen);
      v[at] ^= 1 + r.int(255);
      await writeFile(file, v);
      const o = await outcome(dir, original, `header byte ${at} flipped`);
      if (o.kind === 'refused') refused++;
      else identical++;
    }
    // Most header bytes carry meaning (names, dtypes, digits, structure); a flip that was not refused must
    // have hit padding or metadata, and was checked above to load the original tensors.
    t.diagnostic(`safetensors: ${refused} variants refused, ${identical} harmless flips loaded the original`);
    assert.ok(refused > 200, `only ${refused} variants refused`);
    assert.ok(identical < 50, `${identical} flips were harmless: the header checks are too lax`);
  });
});

test('safetensors: structured header corruptions are each refused with a reason', async () => {
  await withTempDir(async (dir) => {
    const orig = await gpt2Dir(dir);
    const file = join(dir, 'model.safetensors');
    const { header, data } = splitSafetensors(orig);
    const names = Object.keys(header).filter((k) => k !== '__metadata__');
    const clone = () => JSON.parse(JSON.stringify(header)) as Record<string, Record<string, unknown>>;
    const cAttn = 'transformer.h.0.attn.c_attn.weight';
    const ln1w = 'transformer.h.0.ln_1.weight';
    const ln1b = 'transformer.h.0.ln_1.bias';
    const last = names.reduce((a, b) =>
      (header[a].data_offsets as number[])[1] > (header[b].data_offsets as number[])[1] ? a : b,
    );

    const cases: Array<[string, Buffer, RegExp]> = [];
    const edit = (
      label: string,
      fn: (h: Record<string, Record<string, unknown>>) => void,
      re: RegExp,
      d: Buffer = data,
    ) => {
      const h = clone();
      fn(h);
      cases.push([label, joinSafetensors(h, d), re]);
    };
    edit(
      'offsets past the end',
      (h) => {
        (h[last].data_offsets as number[])[1] += 4;
      },
      /past|needs/,
    );
    edit(
      'end before begin',
      (h) => {
        h[cAttn].data_offsets = [(h[cAttn].data_offsets as number[])[1], (h[cAttn].data_offsets as number[])[0]];
      },
      /end before/,
    );
    edit(
      'two tensors on one range',
      (h) => {
        h[ln1w].data_offsets = h[ln1b].data_offsets;
      },
      /overlap|gap/,
    );
    edit(
      'offsets shifted by 4',
      (h) => {
        for (const n of names) (h[n].data_offsets as number[])[0] += 4;
      },
      /needs|past/,
    );
    edit(
      'offsets not integers',
      (h) => {
        h[cAttn].data_offsets = [0.5, 49152.5];
      },
      /data_offsets/,
    );
    edit(
      'offsets negative',
      (h) => {
        h[cAttn].data_offsets = [-4, 49148];
      },
      /data_offsets/,
    );
    edit(
      'offsets as strings',
      (h) => {
        h[cAttn].data_offsets = ['768', '49920'];
      },
      /data_offsets/,
    );
    edit(
      'three offsets',
      (h) => {
        h[cAttn].data_offsets = [768, 49920, 1];
      },
      /data_offsets/,
    );
    edit(
      'offsets missing',
      (h) => {
        delete h[cAttn].data_offsets;
      },
      /data_offsets/,
    );
    for (const dt of ['F33', 'f32', '', 'FLOAT', '../F32'])
      edit(
        `dtype '${dt}'`,
        (h) => {
          h[cAttn].dtype = dt;
        },
        /dtype/,
      );
    edit(
      'dtype number',
      (h) => {
        h[cAttn].dtype = 32;
      },
      /dtype/,
    );
    edit(
      'dtype null',
      (h) => {
        h[cAttn].dtype = null;
      },
      /dtype/,
    );
    edit(
      'dtype I32 (same size, not a float)',
      (h) => {
        h[cAttn].dtype = 'I32';
      },
      /only F32, F16 and BF16/,
    );
    edit(
      'dtype F64 (size mismatch)',
      (h) => {
        h[cAttn].dtype = 'F64';
      },
      /needs/,
    );
    edit(
      'dtype F16 with doubled shape',
      (h) => {
        h[cAttn].dtype = 'F16';
        h[cAttn].shape = [128, 192];
      },
      /config\.json implies/,
    );
    edit(
      'shape one larger',
      (h) => {
        h[ln1w].shape = [65];
      },
      /needs/,
    );
    edit(
      'shape negative',
      (h) => {
        h[ln1w].shape = [-64];
      },
      /invalid dimension/,
    );
    edit(
      'shape fractional',
      (h) => {
        h[ln1w].shape = [64.5];
      },
      /invalid dimension/,
    );
    edit(
      'shape string dims',
      (h) => {
        h[ln1w].shape = ['64'];
      },
      /invalid dimension/,
    );
    edit(
      'shape not an array',
      (h) => {
        h[ln1w].shape = 64;
      },
      /not an array/,
    );
    edit(
      'shape overflowing',
      (h) => {
        h[ln1w].shape = [2 ** 52, 2 ** 52, 16];
      },
      /too large/,
    );
    edit(
      'shape scalar',
      (h) => {
        h[ln1w].shape = [];
      },
      /needs/,
    );
    edit(
      'shape transposed (bytes consistent)',
      (h) => {
        h[cAttn].shape = [192, 64];
      },
      /config\.json implies/,
    );
    edit(
      'entry not an object',
      (h) => {
        (h as Record<string, unknown>)[cAttn] = [1, 2, 3];
      },
      /not an object/,
    );
    edit(
      'metadata not strings',
      (h) => {
        (h as Record<string, unknown>).__metadata__ = { format: 1 };
      },
      /__metadata__/,
    );
    edit(
      'renamed tensor',
      (h) => {
        h['transformer.h.0.attn.c_attn.weights'] = h[cAttn];
        delete h[cAttn];
      },
      /not a tensor of a gpt2|missing/,
    );
    edit(
      'foreign tensor name',
      (h) => {
        h['../../etc/passwd'] = h[cAttn];
        delete h[cAttn];
      },
      /not a tensor/,
    );
    // variants whose bytes stay consistent, so only the name/shape checks can catch them
    {
      const h = clone();
      const [b, e] = h[cAttn].data_offsets as number[];
      const shift = e - b;
      delete h[cAttn];
      for (const n of names) {
        if (n === cAttn) continue;
        const o = h[n].data_offsets as number[];
        if (o[0] >= e) h[n].data_offsets = [o[0] - shift, o[1] - shift];
      }
      cases.push([
        'tensor removed with its bytes',
        joinSafetensors(h, Buffer.concat([data.subarray(0, b), data.subarray(e)])),
        /missing/,
      ]);
    }
    edit(
      'unknown extra tensor',
      (h) => {
        h['transformer.h.9.ln_1.weight'] = {
          dtype: 'F32',
          shape: [64],
          data_offsets: [data.length, data.length + 256],
        };
      },
      /not a tensor of a gpt2/,
      Buffer.concat([data, Buffer.alloc(256)]),
    );
    edit(
      'same tensor with and without prefix',
      (h) => {
        h['wte.weight'] = { ...h['transformer.wte.weight'], data_offsets: [data.length, data.length + 256000] };
      },
      /twice/,
      Buffer.concat([data, Buffer.alloc(256000)]),
    );
    edit('unindexed trailing bytes', () => {}, /not indexed/, Buffer.concat([data, Buffer.alloc(4)]));
    edit('missing data bytes', () => {}, /past|needs/, data.subarray(0, data.length - 4));
    edit(
      'gap inside data',
      (h) => {
        for (const n of names) {
          const o = h[n].data_offsets as number[];
          if (o[0] >= 768) h[n].data_offsets = [o[0] + 4, o[1] + 4];
        }
      },
      /gap/,
      Buffer.concat([data.subarray(0, 768), Buffer.alloc(4), data.subarray(768)]),
    );
    cases.push(['header is an array', joinSafetensors([1, 2], data), /not a JSON object/]);
    cases.push(['header is a string', joinSafetensors('"x"', data), /not a JSON object/]);
    cases.push(['header is null', joinSafetensors('null', data), /not a JSON object/]);
    cases.push(['header is not JSON', joinSafetensors('{"a": ', data), /not valid JSON/]);
    cases.push([
      'header is not UTF-8',
      Buffer.concat([
        joinSafetensors('{"\xff":1}', Buffer.alloc(0)).subarray(0, 8),
        Buffer.from([0x7b, 0x22, 0xff, 0xfe, 0x22, 0x3a, 0x31, 0x7d]),
        data,
      ]),
      /UTF-8|JSON/,
    ]);
    cases.push(['empty file', Buffer.alloc(0), /too short/]);
    cases.push([
      'random bytes',
      Buffer.from(Array.from({ length: 4096 }, (_, i) => (i * 7919) & 0xff)),
      /header length|JSON|UTF-8/,
    ]);

    assert.ok(cases.length >= 40);
    for (const [label, bytes, re] of cases) {
      await writeFile(file, bytes);
      await mustRefuse(dir, label, re);
    }
  });
});

test('safetensors: sharded checkpoints with broken index files are refused', async () => {
  await withTempDir(async (dir) => {
    const orig = await gpt2Dir(dir);
    const { header, data } = splitSafetensors(orig);
    const names = Object.keys(header)
      .filter((k) => k !== '__metadata__')
      .sort();
    const halves = [names.slice(0, 10), names.slice(10)];
    const weightMap: Record<string, string> = {};
    const shardFiles: Array<[string, Buffer]> = [];
    halves.forEach((ns, i) => {
      const file = `model-0000${i + 1}-of-00002.safetensors`;
      const h: Record<string, unknown> = {};
      const parts: Buffer[] = [];
      let off = 0;
      for (const n of ns) {
        const [b, e] = header[n].data_offsets as number[];
        h[n] = { ...header[n], data_offsets: [off, off + e - b] };
        parts.push(data.subarray(b, e));
        off += e - b;
        weightMap[n] = file;
      }
      shardFiles.push([file, joinSafetensors(h, Buffer.concat(parts))]);
    });
    for (const [f, b] of shardFiles) await writeFile(join(dir, f), b);
    await rm(join(dir, 'model.safetensors'), { force: true });
    const indexFile = join(dir, 'model.safetensors.index.json');
    const writeIndex = (v: unknown) => writeFile(indexFile, typeof v === 'string' ? v : JSON.stringify(v));

    await writeIndex({ metadata: {}, weight_map: weightMap });
    const sharded = await loadAll(dir);
    // the sharded copy holds exactly what the single file holds
    await withTempDir(async (single) => {
      await gpt2Dir(single);
      await writeFile(join(single, 'model.safetensors'), orig);
      const want = await loadAll(single);
      const byName = (s: Snapshot[]) => [...s].sort((a, b) => a.name.localeCompare(b.name));
      assert.ok(sameSnapshot(byName(sharded), byName(want)));
    });

    const bad: Array<[string, unknown, RegExp]> = [];
    const without = (n: string) => Object.fromEntries(Object.entries(weightMap).filter(([k]) => k !== n));
    bad.push(['tensor missing from the index', { weight_map: without(names[3]) }, /not in the index/]);
    bad.push([
      'tensor assigned to the other shard',
      { weight_map: { ...weightMap, [names[0]]: 'model-00002-of-00002.safetensors' } },
      /assigns it/,
    ]);
    bad.push([
      'index names a tensor no shard has',
      { weight_map: { ...weightMap, 'transformer.h.7.ln_1.weight': 'model-00001-of-00002.safetensors' } },
      /missing from the shard/,
    ]);
    bad.push([
      'index names a missing shard',
      { weight_map: { ...weightMap, [names[0]]: 'model-00003-of-00003.safetensors' } },
      /does not exist/,
    ]);
    bad.push([
      'index path traversal',
      { weight_map: { ...weightMap, [names[0]]: '../gpt2-tiny-a/model.safetensors' } },
      /not a file name/,
    ]);
    bad.push(['index absolute path', { weight_map: { ...weightMap, [names[0]]: '/etc/passwd' } }, /not a file name/]);
    bad.push(['index names a directory', { weight_map: { ...weightMap, [names[0]]: '..' } }, /not a file name/]);
    bad.push(['index file name not a string', { weight_map: { ...weightMap, [names[0]]: 7 } }, /not a file name/]);
    bad.push(['weight_map is an array', { weight_map: [] }, /weight_map/]);
    bad.push(['weight_map missing', { metadata: {} }, /weight_map/]);
    bad.push(['weight_map empty', { weight_map: {} }, /empty/]);
    bad.push(['index not JSON', '{"weight_map": {', /not valid JSON/]);
    bad.push(['index is an array', '[]', /not a JSON object/]);
    for (const [label, idx, re] of bad) {
      await writeIndex(idx);
      await mustRefuse(dir, label, re);
    }
    await writeIndex({ weight_map: weightMap });
    await rm(join(dir, shardFiles[1][0]));
    await mustRefuse(dir, 'shard file deleted', /does not exist/);
  });
});

// ------------------------------------------------------------------------------------------ config.json

test('config.json: missing, malformed or unsupported configs are refused', async () => {
  await withTempDir(async (dir) => {
    const orig = await gpt2Dir(dir);
    await writeFile(join(dir, 'model.safetensors'), orig);
    const cfg = JSON.parse(await readFile(join(GPT2, 'config.json'), 'utf8'));
    const variants: Array<[string, unknown, RegExp]> = [
      ['n_layer 3 (checkpoint has 2)', { ...cfg, n_layer: 3 }, /missing/],
      ['vocab 999', { ...cfg, vocab_size: 999 }, /config\.json implies/],
      ['n_head not dividing n_embd', { ...cfg, n_head: 5 }, /divisible/],
      ['n_layer zero', { ...cfg, n_layer: 0 }, /n_layer/],
      ['n_embd string', { ...cfg, n_embd: '64' }, /n_embd/],
      ['eps negative', { ...cfg, layer_norm_epsilon: -1 }, /layer_norm_epsilon/],
      ['model_type llama', { ...cfg, model_type: 'llama' }, /model_type/],
      ['model_type missing', { ...cfg, model_type: undefined }, /model_type/],
      ['relu activation', { ...cfg, activation_function: 'relu' }, /activation_function/],
      ['untied output layer', { ...cfg, tie_word_embeddings: false }, /tie_word_embeddings/],
      [
        'inverse-layer-idx scaling',
        { ...cfg, scale_attn_by_inverse_layer_idx: true },
        /scale_attn_by_inverse_layer_idx/,
      ],
      ['config is an array', [], /not a JSON object/],
      ['config not JSON', '{', /not valid JSON/],
    ];
    for (const [label, v, re] of variants) {
      await writeFile(join(dir, 'config.json'), typeof v === 'string' ? v : JSON.stringify(v));
      await mustRefuse(dir, label, re);
    }
    await rm(join(dir, 'config.json'));
    await mustRefuse(dir, 'config.json missing', /cannot read/);
  });
  await withTempDir(async (dir) => {
    const glm = join(GLM, 'safetensors');
    await copyFile(join(glm, 'model.safetensors'), join(dir, 'model.safetensors'));
    const cfg = JSON.parse(await readFile(join(glm, 'config.json'), 'utf8'));
    const variants: Array<[string, unknown, RegExp]> = [
      ['LayerNorm instead of RMSNorm', { ...cfg, rmsnorm: false }, /rmsnorm/],
      ['biased linear layers', { ...cfg, add_bias_linear: true }, /add_bias_linear/],
      ['32K rotary stretch', { ...cfg, rope_ratio: 16 }, /rope_ratio/],
      ['KV groups not dividing heads', { ...cfg, multi_query_group_num: 3 }, /multiple of multi_query_group_num/],
      ['head dim not a multiple of 4', { ...cfg, kv_channels: 18 }, /kv_channels/],
      ['seq_length missing', { ...cfg, seq_length: undefined }, /seq_length/],
      [
        'one KV group more (shapes no longer match)',
        { ...cfg, num_attention_heads: 6, multi_query_group_num: 3 },
        /config\.json implies/,
      ],
    ];
    for (const [label, v, re] of variants) {
      await writeFile(join(dir, 'config.json'), JSON.stringify(v));
      await mustRefuse(dir, label, re);
    }
    await writeFile(join(dir, 'config.json'), JSON.stringify(cfg));
    assert.equal((await loadAll(dir)).length, 17);
    await mustRefuse(join(dir, 'nope'), 'directory missing', /does not exist/);
  });
});

// ------------------------------------------------------------------------------------------ PyTorch .bin

async function glmDir(dir: string): Promise<void> {
  for (const f of ['config.json', 'pytorch_model.bin.index.json', SHARD1, SHARD2])
    await copyFile(join(GLM, f), join(dir, f));
}

test('.bin: truncations and byte flips in zip structures and in the pickle', async (t) => {
  await withTempDir(async (dir) => {
    await glmDir(dir);
    const original = await loadAll(dir);
    const orig = await readFile(join(GLM, SHARD1));
    const file = join(dir, SHARD1);
    const layout = zipLayout(orig);
    const pkl = layout.entries.find((e) => e.name.endsWith('/data.pkl'));
    assert.ok(pkl);
    // bytes that are zip bookkeeping (headers, central directory, end records), not entry contents
    const structural: number[] = [];
    const inData = (i: number) => layout.entries.some((e) => i >= e.dataAt && i < e.dataAt + e.size);
    for (let i = 0; i < orig.length; i++) if (!inData(i)) structural.push(i);
    const r = rng(99);
    let refused = 0;
    let identical = 0;

    for (let i = 0; i < 80; i++) {
      const cut = r.int(orig.length);
      await writeFile(file, orig.subarray(0, cut));
      await mustRefuse(dir, `shard truncated at ${cut}`);
      refused++;
    }
    for (let i = 0; i < 150; i++) {
      const v = Buffer.from(orig);
      const at = structural[r.int(structural.length)];
      v[at] ^= 1 + r.int(255);
      await writeFile(file, v);
      const o = await outcome(dir, original, `zip byte ${at} flipped`);
      if (o.kind === 'refused') refused++;
      else identical++;
    }
    // flips inside data.pkl without fixing the CRC: the checksum alone must catch every one
    for (let i = 0; i < 30; i++) {
      const v = Buffer.from(orig);
      v[pkl.dataAt + r.int(pkl.size)] ^= 1 + r.int(255);
      await writeFile(file, v);
      await mustRefuse(dir, 'data.pkl flipped, CRC stale', /CRC/);
      refused++;
    }
    // flips inside tensor bytes: headers stay valid, the storages' CRC-32 catches them when the tensor is read
    const storages = layout.entries.filter((e) => e.name.includes('/data/') && e.size > 16);
    for (let i = 0; i < 40; i++) {
      const v = Buffer.from(orig);
      const e = storages[r.int(storages.length)];
      v[e.dataAt + r.int(e.size)] ^= 1 + r.int(255);
      await writeFile(file, v);
      await mustRefuse(dir, `tensor byte flipped in ${e.name}`, /CRC-32/);
      refused++;
    }
    // ...unless checking is turned off, when the flipped bytes are what is read
    {
      const ck = await openCheckpoint(dir, { verifyChecksums: false });
      for await (const t of ck.tensors()) await t.data();
      await ck.close();
    }
    // flips inside data.pkl with a recomputed CRC: now the unpickler itself must cope
    const entries = zipEntries(orig);
    const pickle = entries.find((e) => e.name.endsWith('/data.pkl'))?.data as Buffer;
    for (let i = 0; i < 150; i++) {
      const p = Buffer.from(pickle);
      p[r.int(p.length)] ^= 1 + r.int(255);
      await writeFile(file, writeStoredZip(entries.map((e) => (e.data === pickle ? { ...e, data: p } : e))));
      const o = await outcome(dir, original, `pickle byte flipped (CRC fixed)`);
      if (o.kind === 'refused') refused++;
      else identical++;
    }
    t.diagnostic(`.bin: ${refused} variants refused, ${identical} harmless flips loaded the original`);
    assert.ok(refused >= 300, `only ${refused} refused`);
    // harmless flips exist (timestamps, version fields, unused memo slots) but must stay a minority
    assert.ok(identical < 150, `${identical} of 300 flips were accepted`);
  });
});

test('.bin: the unpickler alone survives 2000 random mutations of a real state-dict pickle', (t) => {
  const orig = zipEntries(readFileSync(join(GLM, SHARD2))).find((e) => e.name.endsWith('/data.pkl'))?.data as Buffer;
  const reference = unpickleStateDict(orig, 'x.bin');
  const r = rng(7);
  let refused = 0;
  for (let i = 0; i < 2000; i++) {
    const p = Buffer.from(orig);
    const flips = 1 + r.int(3);
    for (let j = 0; j < flips; j++) p[r.int(p.length)] = r.int(256);
    if (r.next() < 0.2) p.copyWithin(r.int(p.length), r.int(p.length), r.int(p.length));
    try {
      const got = unpickleStateDict(r.next() < 0.1 ? p.subarray(0, r.int(p.length)) : p, 'x.bin');
      // accepted: it must still be a well-formed state dict (the engine's shape checks come later)
      for (const t of got.values()) {
        assert.ok(t.shape.every((d) => Number.isSafeInteger(d) && d >= 0));
        assert.ok(t.storageOffset + t.shape.reduce((a, b) => a * b, 1) <= t.storage.numel);
      }
      assert.ok(got.size <= reference.size);
    } catch (err) {
      assert.ok(err instanceof CheckpointError, `mutation ${i}: ${(err as Error).name}: ${(err as Error).message}`);
      refused++;
    }
  }
  t.diagnostic(`unpickler: ${refused} of 2000 mutations refused`);
  assert.ok(refused > 1500, `only ${refused} of 2000 mutations refused`);
});

test('.bin: hostile and malformed pickles are refused by name', async () => {
  await withTempDir(async (dir) => {
    await glmDir(dir);
    const orig = await readFile(join(GLM, SHARD2));
    const entries = zipEntries(orig);
    const prefix = entries[0].name.split('/')[0];
    const storages = new Map(
      entries.filter((e) => e.name.includes('/data/')).map((e) => [e.name.split('/').pop() as string, e.data]),
    );
    const pkl = entries.find((e) => e.name.endsWith('/data.pkl'))?.data as Buffer;
    const file = join(dir, SHARD2);
    const reference = unpickleStateDict(pkl, 'x');
    const items = [...reference].map(([name, t]) => ({
      name,
      key: t.storage.key,
      storageNumel: t.storage.numel,
      offset: t.storageOffset,
      shape: t.shape,
    }));
    const first = items[0];

    // a rebuilt, valid shard first: the writers used below produce what the loader accepts
    await writeFile(file, torchZip(prefix, stateDictPickle(items), storages));
    const good = await loadAll(dir);
    // shard 1's 8 weights + shard 2's 9 (layer 1, final norm, output layer; rotary inv_freq is skipped)
    assert.equal(good.length, 17);

    const attack = (...parts: Buffer[]) => Buffer.concat([op.proto(), ...parts]);
    const shellCall = (module: string, name: string) =>
      attack(op.global(module, name), op.mark(), op.str('touch /tmp/pwned'), op.tuple(), op.reduce(), op.stop());
    const cases: Array<[string, Buffer, RegExp, Map<string, Buffer>?, string?]> = [
      ['os.system', shellCall('os', 'system'), /refusing pickle global 'os\.system'/],
      ['posix.system', shellCall('posix', 'system'), /'posix\.system'/],
      ['builtins.eval', shellCall('builtins', 'eval'), /'builtins\.eval'/],
      ['__builtin__.exec', shellCall('__builtin__', 'exec'), /'__builtin__\.exec'/],
      ['subprocess.Popen', shellCall('subprocess', 'Popen'), /'subprocess\.Popen'/],
      ['torch.load', shellCall('torch', 'load'), /'torch\.load'/],
      ['numpy reconstruct', shellCall('numpy.core.multiarray', '_reconstruct'), /numpy/],
      ['torch.cuda storage', shellCall('torch.cuda', 'FloatStorage'), /torch\.cuda\.FloatStorage/],
      [
        'STACK_GLOBAL os.system',
        attack(op.str('os'), op.str('system'), Buffer.from([0x93]), op.str('id'), op.tuple1(), op.reduce(), op.stop()),
        /'os\.system'/,
      ],
      ['INST opcode', attack(op.mark(), Buffer.from('ios\nsystem\n'), op.stop()), /INST/],
      ['OBJ opcode', attack(op.mark(), op.global('collections', 'OrderedDict'), Buffer.from('o'), op.stop()), /OBJ/],
      [
        'NEWOBJ opcode',
        attack(op.global('collections', 'OrderedDict'), op.emptyTuple(), Buffer.from([0x81]), op.stop()),
        /NEWOBJ/,
      ],
      ['list opcodes', attack(Buffer.from(']'), op.mark(), op.int(1), Buffer.from('e'), op.stop()), /EMPTY_LIST/],
      ['BINBYTES', attack(Buffer.from([0x43, 1, 0x41]), op.stop()), /SHORT_BINBYTES/],
      ['EXT1', attack(Buffer.from([0x82, 1]), op.stop()), /EXT1/],
      ['PERSID text form', attack(Buffer.from('P0\n'), op.stop()), /PERSID/],
      ['protocol 9', Buffer.concat([op.proto(9), op.emptyDict(), op.stop()]), /protocol 9/],
      [
        'OrderedDict with arguments',
        attack(op.global('collections', 'OrderedDict'), op.mark(), op.int(1), op.tuple(), op.reduce(), op.stop()),
        /arguments/,
      ],
      [
        'calling a storage class',
        attack(op.global('torch', 'FloatStorage'), op.emptyTuple(), op.reduce(), op.stop()),
        /not callable/,
      ],
      [
        'persistent id not a storage',
        attack(
          op.emptyDict(),
          op.mark(),
          op.str('a'),
          op.mark(),
          op.str('module'),
          op.tuple(),
          Buffer.from('Q'),
          op.setitems(),
          op.stop(),
        ),
        /persistent id/,
      ],
      ['storage key path traversal', stateDictPickle([{ ...first, key: '../../../etc/passwd' }]), /not a plain name/],
      ['storage key with no entry', stateDictPickle([{ ...first, key: '999' }]), /no zip entry/],
      ['storage smaller than tensor', stateDictPickle([{ ...first, storageNumel: 3 }]), /does not fit|should hold/],
      [
        'storage size differs from entry',
        stateDictPickle([{ ...first, storageNumel: first.storageNumel + 1, shape: first.shape }]),
        /should hold/,
      ],
      ['tensor past its storage', stateDictPickle([{ ...first, offset: 5 }]), /does not fit/],
      ['negative storage offset', stateDictPickle([{ ...first, offset: -1 }]), /does not fit/],
      [
        'non-contiguous stride',
        stateDictPickle([{ ...(items.find((t) => t.shape.length === 2) as typeof first), stride: [1, 0] }]),
        /not contiguous/,
      ],
      ['stride rank differs', stateDictPickle([{ ...first, stride: [1, 1, 1, 1] }]), /rank/],
      [
        'value not a tensor',
        attack(op.emptyDict(), op.mark(), op.str('transformer.x'), op.int(5), op.setitems(), op.stop()),
        /not a tensor/,
      ],
      ['root not a dict', attack(op.mark(), op.int(1), op.tuple(), op.stop()), /not a dict/],
      [
        'key not a string',
        attack(op.emptyDict(), op.mark(), op.int(1), op.int(2), op.setitems(), op.stop()),
        /key is not a string/,
      ],
      ['duplicate key', stateDictPickle([first, first]), /duplicate key/],
      ['odd SETITEMS', attack(op.emptyDict(), op.mark(), op.str('a'), op.setitems(), op.stop()), /odd/],
      ['no STOP', stateDictPickle(items).subarray(0, -1), /without STOP/],
      ['bytes after STOP', Buffer.concat([stateDictPickle(items), Buffer.from('N')]), /after STOP/],
      ['empty pickle', Buffer.alloc(0), /without STOP/],
      ['stack underflow', Buffer.from('R.'), /underflow/],
      ['memo miss', attack(Buffer.from([0x68, 42]), op.stop()), /memo entry 42/],
      ['string past the end', attack(Buffer.from([0x58, 0xff, 0xff, 0xff, 0x7f]), Buffer.from('abc')), /truncated/],
      ['huge LONG1', attack(Buffer.from([0x8a, 9, 1, 2, 3, 4, 5, 6, 7, 8, 9]), op.stop()), /LONG1/],
      [
        'non-empty backward hooks',
        stateDictPickle([
          {
            ...first,
            hooks: Buffer.concat([
              op.global('collections', 'OrderedDict'),
              op.emptyTuple(),
              op.reduce(),
              op.mark(),
              op.int(0),
              op.str('hook'),
              op.setitems(),
            ]),
          },
        ]),
        /key is not a string|backward hooks/,
      ],
      ['big-endian storages', stateDictPickle(items), /big.*little-endian/, storages, 'big'],
      [
        'same storage as two dtypes',
        stateDictPickle([
          ...items,
          {
            ...first,
            name: `${first.name}.copy`,
            storageClass: 'HalfStorage',
            storageNumel: first.storageNumel * 2,
            shape: [first.storageNumel * 2],
          },
        ]),
        /both F32 and F16/,
      ],
      [
        'LongStorage weight',
        stateDictPickle([
          {
            ...first,
            storageClass: 'LongStorage',
            storageNumel: first.storageNumel / 2,
            shape: [first.storageNumel / 2],
          },
          ...items.slice(1),
        ]),
        /has dtype I64/,
      ],
    ];
    for (const [label, pickle, re, st, order] of cases) {
      await writeFile(file, torchZip(prefix, pickle, st ?? storages, order));
      const message = await mustRefuse(dir, label, re);
      assert.ok(message.includes(SHARD2), `${label}: message does not name the file: ${message}`);
    }
  });
});

test('.bin: malformed zip archives are refused', async () => {
  await withTempDir(async (dir) => {
    await glmDir(dir);
    const orig = await readFile(join(GLM, SHARD1));
    const file = join(dir, SHARD1);
    // Rebuild without torch's zip64 tail so every field sits where zipLayout expects it.
    const entries = zipEntries(orig);
    const base = writeStoredZip(entries);
    await writeFile(file, base);
    await loadAll(dir);
    const L = zipLayout(base);
    const pkl = L.entries.find((e) => e.name.endsWith('/data.pkl')) as (typeof L.entries)[number];
    const storage = L.entries.find((e) => e.name.endsWith('/data/0')) as (typeof L.entries)[number];
    const mutate = (fn: (b: Buffer) => void): Buffer => {
      const b = Buffer.from(base);
      fn(b);
      return b;
    };
    const cases: Array<[string, Buffer, RegExp]> = [
      [
        'central directory offset past the end',
        mutate((b) => b.writeUInt32LE(b.length, L.eocdAt + 16)),
        /central directory/,
      ],
      ['central directory size huge', mutate((b) => b.writeUInt32LE(0x7fffffff, L.eocdAt + 12)), /central directory/],
      [
        'one entry more than present',
        mutate((b) => {
          b.writeUInt16LE(L.entries.length + 1, L.eocdAt + 10);
        }),
        /entry \d+ of \d+/,
      ],
      ['zip64 count without locator', mutate((b) => b.writeUInt16LE(0xffff, L.eocdAt + 10)), /zip64/],
      ['multi-disk', mutate((b) => b.writeUInt16LE(1, L.eocdAt + 4)), /multi-disk/],
      ['deflated entry', mutate((b) => b.writeUInt16LE(8, storage.cdAt + 10)), /compressed/],
      ['encrypted entry', mutate((b) => b.writeUInt16LE(1, storage.cdAt + 8)), /encrypted/],
      ['sizes differ', mutate((b) => b.writeUInt32LE(storage.size + 1, storage.cdAt + 20)), /sizes differ/],
      [
        'entry larger than its data',
        mutate((b) => {
          b.writeUInt32LE(storage.size + 4, storage.cdAt + 20);
          b.writeUInt32LE(storage.size + 4, storage.cdAt + 24);
        }),
        /local header CRC or sizes disagree/,
      ],
      [
        'local header offset into the central directory',
        mutate((b) => b.writeUInt32LE(L.cdOffset, storage.cdAt + 42)),
        /past the data area/,
      ],
      [
        'local header offset past the file',
        mutate((b) => b.writeUInt32LE(0xfffffff0, storage.cdAt + 42)),
        /past the data area/,
      ],
      [
        'local header bad signature',
        mutate((b) => b.writeUInt32LE(0x12345678, storage.localAt)),
        /local header signature/,
      ],
      [
        'local header names another entry',
        mutate((b) => {
          b[storage.localAt + 30 + 2] ^= 0x20;
        }),
        /local header names/,
      ],
      [
        'two entries on one local header',
        mutate((b) => b.writeUInt32LE(pkl.localAt, storage.cdAt + 42)),
        /local header names|overlap/,
      ],
      ['EOCD signature destroyed', mutate((b) => b.writeUInt32LE(0, L.eocdAt)), /not a zip archive/],
      ['central directory signature destroyed', mutate((b) => b.writeUInt32LE(0, L.cdOffset)), /malformed or missing/],
      [
        'name length past the directory',
        mutate((b) => b.writeUInt16LE(0xffff, L.entries[L.entries.length - 1].cdAt + 28)),
        /runs past the directory/,
      ],
      ['data.pkl CRC wrong', mutate((b) => b.writeUInt32LE(0, pkl.cdAt + 16)), /CRC/],
      ['local flags differ', mutate((b) => b.writeUInt16LE(0x8, storage.localAt + 6)), /flags differ/],
      ['local size differs', mutate((b) => b.writeUInt32LE(storage.size - 1, storage.localAt + 22)), /disagree/],
      ['duplicate entry names', writeStoredZip([...entries, entries[entries.length - 1]]), /two entries named/],
      ['no data.pkl', writeStoredZip(entries.filter((e) => !e.name.endsWith('data.pkl'))), /no <archive>\/data\.pkl/],
      ['two data.pkl', writeStoredZip([...entries, { name: 'other/data.pkl', data: entries[0].data }]), /2 data\.pkl/],
      ['storage entry missing', writeStoredZip(entries.filter((e) => !e.name.endsWith('/data/3'))), /no zip entry/],
      [
        'legacy (non-zip) torch file',
        Buffer.concat([Buffer.from([0x80, 0x02, 0x8a, 0x0a]), Buffer.alloc(64)]),
        /not a zip archive/,
      ],
      ['empty file', Buffer.alloc(0), /too short/],
    ];
    // torch's own layout: sizes in data descriptors, zip64 end records alongside the classic ones
    const torchLayout = zipLayout(orig);
    const torchPkl = torchLayout.entries.find((e) => e.name.endsWith('/data.pkl')) as (typeof L.entries)[number];
    const z64At = orig.indexOf(Buffer.from([0x50, 0x4b, 0x06, 0x06]), torchLayout.cdOffset);
    const onTorch = (fn: (b: Buffer) => void): Buffer => {
      const b = Buffer.from(orig);
      fn(b);
      return b;
    };
    cases.push(
      [
        'data descriptor CRC wrong',
        onTorch((b) => b.writeUInt32LE(0x12345678, torchPkl.dataAt + torchPkl.size + 4)),
        /data descriptor/,
      ],
      [
        'data descriptor size wrong',
        onTorch((b) => b.writeUInt32LE(7, torchPkl.dataAt + torchPkl.size + 8)),
        /data descriptor/,
      ],
      ['zip64 record disagrees', onTorch((b) => b.writeBigUInt64LE(3n, z64At + 32)), /disagree/],
    );
    for (const [label, bytes, re] of cases) {
      await writeFile(file, bytes);
      await mustRefuse(dir, label, re);
    }
  });
});
