// Test-side writers for the formats the loaders read: stored zip archives, torch-style state-dict pickles,
// safetensors files. They let tests build valid variants (fp16 storages, shared storages, shards) and
// precisely broken ones, independent of the readers under test.
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { crc32 } from 'node:zlib';
import { openCheckpoint } from '../../native/loaders/index';

/** Small deterministic PRNG (mulberry32) so every fuzz run feeds the same variants. */
export function rng(seed: number): { next(): number; int(n: number): number } {
  let a = seed >>> 0;
  const next = () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
  return { next, int: (n: number) => Math.floor(next() * n) };
}

export interface ZipInput {
  name: string;
  data: Buffer;
}

/** Writes a zip of stored (uncompressed) entries, the way torch.save does, with correct CRCs. */
export function writeStoredZip(entries: ZipInput[]): Buffer {
  const parts: Buffer[] = [];
  const central: Buffer[] = [];
  let offset = 0;
  for (const e of entries) {
    const name = Buffer.from(e.name, 'utf8');
    const crc = crc32(e.data) >>> 0;
    const local = Buffer.alloc(30);
    local.writeUInt32LE(0x04034b50, 0);
    local.writeUInt16LE(20, 4);
    local.writeUInt32LE(crc, 14);
    local.writeUInt32LE(e.data.length, 18);
    local.writeUInt32LE(e.data.length, 22);
    local.writeUInt16LE(name.length, 26);
    const cd = Buffer.alloc(46);
    cd.writeUInt32LE(0x02014b50, 0);
    cd.writeUInt16LE(20, 4);
    cd.writeUInt16LE(20, 6);
    cd.writeUInt32LE(crc, 16);
    cd.writeUInt32LE(e.data.length, 20);
    cd.writeUInt32LE(e.data.length, 24);
    cd.writeUInt16LE(name.length, 28);
    cd.writeUInt32LE(offset, 42);
    central.push(cd, name);
    parts.push(local, name, e.data);
    offset += 30 + name.length + e.data.length;
  }
  const cdBuf = Buffer.concat(central);
  const eocd = Buffer.alloc(22);
  eocd.writeUInt32LE(0x06054b50, 0);
  eocd.writeUInt16LE(entries.length, 8);
  eocd.writeUInt16LE(entries.length, 10);
  eocd.writeUInt32LE(cdBuf.length, 12);
  eocd.writeUInt32LE(offset, 16);
  return Buffer.concat([...parts, cdBuf, eocd]);
}

/** Pickle opcodes as torch.save (protocol 2) emits them. */
export const op = {
  proto: (v = 2) => Buffer.from([0x80, v]),
  emptyDict: () => Buffer.from('}'),
  emptyTuple: () => Buffer.from(')'),
  mark: () => Buffer.from('('),
  tuple: () => Buffer.from('t'),
  tuple1: () => Buffer.from([0x85]),
  tuple2: () => Buffer.from([0x86]),
  newFalse: () => Buffer.from([0x89]),
  none: () => Buffer.from('N'),
  reduce: () => Buffer.from('R'),
  build: () => Buffer.from('b'),
  setitems: () => Buffer.from('u'),
  setitem: () => Buffer.from('s'),
  binpersid: () => Buffer.from('Q'),
  stop: () => Buffer.from('.'),
  str: (s: string) => {
    const b = Buffer.from(s, 'utf8');
    const h = Buffer.alloc(5);
    h[0] = 0x58;
    h.writeUInt32LE(b.length, 1);
    return Buffer.concat([h, b]);
  },
  int: (n: number) => {
    const h = Buffer.alloc(5);
    h[0] = 0x4a;
    h.writeInt32LE(n, 1);
    return h;
  },
  global: (module: string, name: string) => Buffer.from(`c${module}\n${name}\n`, 'latin1'),
  intTuple: (xs: number[]) => Buffer.concat([op.mark(), ...xs.map(op.int), op.tuple()]),
};

export interface PickledTensor {
  name: string;
  storageClass?: string;
  key: string;
  storageNumel: number;
  offset?: number;
  shape: number[];
  stride?: number[];
  /** pickled backward-hooks value; an empty OrderedDict when absent, as torch writes */
  hooks?: Buffer;
}

function contiguousStride(shape: number[]): number[] {
  const s = new Array<number>(shape.length);
  let acc = 1;
  for (let i = shape.length - 1; i >= 0; i--) {
    s[i] = acc;
    acc *= shape[i];
  }
  return s;
}

/** One `name: _rebuild_tensor_v2(...)` pair of a state dict, exactly as torch writes it. */
export function tensorItem(t: PickledTensor): Buffer {
  return Buffer.concat([
    op.str(t.name),
    op.global('torch._utils', '_rebuild_tensor_v2'),
    op.mark(),
    op.mark(),
    op.str('storage'),
    op.global('torch', t.storageClass ?? 'FloatStorage'),
    op.str(t.key),
    op.str('cpu'),
    op.int(t.storageNumel),
    op.tuple(),
    op.binpersid(),
    op.int(t.offset ?? 0),
    op.intTuple(t.shape),
    op.intTuple(t.stride ?? contiguousStride(t.shape)),
    op.newFalse(),
    t.hooks ?? Buffer.concat([op.global('collections', 'OrderedDict'), op.emptyTuple(), op.reduce()]),
    op.tuple(),
    op.reduce(),
  ]);
}

/** A state-dict pickle: a plain dict, or (ordered) an OrderedDict carrying a `_metadata` attribute like state_dict(). */
export function stateDictPickle(tensors: PickledTensor[], ordered = false): Buffer {
  const items = Buffer.concat([op.mark(), ...tensors.map(tensorItem), op.setitems()]);
  if (!ordered) return Buffer.concat([op.proto(), op.emptyDict(), items, op.stop()]);
  const metadata = Buffer.concat([
    op.global('collections', 'OrderedDict'),
    op.emptyTuple(),
    op.reduce(),
    op.mark(),
    op.str(''),
    op.emptyDict(),
    op.mark(),
    op.str('version'),
    op.int(1),
    op.setitems(),
    op.setitems(),
  ]);
  return Buffer.concat([
    op.proto(),
    op.global('collections', 'OrderedDict'),
    op.emptyTuple(),
    op.reduce(),
    items,
    op.emptyDict(),
    op.mark(),
    op.str('_metadata'),
    metadata,
    op.setitems(),
    op.build(),
    op.stop(),
  ]);
}

/** A torch.save archive around a pickle and its storages. */
export function torchZip(prefix: string, pickle: Buffer, storages: Map<string, Buffer>, byteorder = 'little'): Buffer {
  return writeStoredZip([
    { name: `${prefix}/data.pkl`, data: pickle },
    { name: `${prefix}/byteorder`, data: Buffer.from(byteorder) },
    ...[...storages].map(([k, data]) => ({ name: `${prefix}/data/${k}`, data })),
    { name: `${prefix}/version`, data: Buffer.from('3\n') },
  ]);
}

export interface StTensor {
  name: string;
  dtype: string;
  shape: number[];
  bytes: Buffer;
}

/** Writes a safetensors file: optional header override, data laid out in the given order. */
export function writeSafetensors(tensors: StTensor[], header?: Record<string, unknown>): Buffer {
  const h: Record<string, unknown> = { __metadata__: { format: 'pt' } };
  let off = 0;
  for (const t of tensors) {
    h[t.name] = { dtype: t.dtype, shape: t.shape, data_offsets: [off, off + t.bytes.length] };
    off += t.bytes.length;
  }
  let json = Buffer.from(JSON.stringify(header ?? h), 'utf8');
  const pad = (8 - (json.length % 8)) % 8;
  json = Buffer.concat([json, Buffer.alloc(pad, 0x20)]);
  const len = Buffer.alloc(8);
  len.writeBigUInt64LE(BigInt(json.length));
  return Buffer.concat([len, json, ...tensors.map((t) => t.bytes)]);
}

export interface Snapshot {
  name: string;
  dtype: string;
  shape: number[];
  bytes: Buffer;
}

/** Loads a checkpoint completely (config + every tensor's bytes). */
export async function loadAll(dir: string): Promise<Snapshot[]> {
  const ck = await openCheckpoint(dir);
  try {
    const out: Snapshot[] = [];
    for await (const t of ck.tensors())
      out.push({ name: t.name, dtype: t.dtype, shape: t.shape, bytes: await t.data() });
    return out;
  } finally {
    await ck.close();
  }
}

export function sameSnapshot(a: Snapshot[], b: Snapshot[]): boolean {
  if (a.length !== b.length) return false;
  return a.every((x, i) => {
    const y = b[i];
    return x.name === y.name && x.dtype === y.dtype && x.shape.join() === y.shape.join() && x.bytes.equals(y.bytes);
  });
}

export async function withTempDir<T>(fn: (dir: string) => Promise<T>): Promise<T> {
  const dir = await mkdtemp(join(tmpdir(), 'flashlab-loaders-'));
  try {
    return await fn(dir);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

export interface ZipLayoutEntry {
  name: string;
  /** offset of the central-directory record, the local header, and the entry's data */
  cdAt: number;
  localAt: number;
  dataAt: number;
  size: number;
}

/** Reads a (non-zip64, comment-free) archive's layout so tests can corrupt precise fields. */
export function zipLayout(buf: Buffer): {
  eocdAt: number;
  cdOffset: number;
  cdSize: number;
  entries: ZipLayoutEntry[];
} {
  const eocdAt = buf.length - 22;
  if (buf.readUInt32LE(eocdAt) !== 0x06054b50) throw new Error('test fixture: no EOCD at the end');
  const count = buf.readUInt16LE(eocdAt + 10);
  const cdSize = buf.readUInt32LE(eocdAt + 12);
  const cdOffset = buf.readUInt32LE(eocdAt + 16);
  const entries: ZipLayoutEntry[] = [];
  let p = cdOffset;
  for (let i = 0; i < count; i++) {
    const nameLen = buf.readUInt16LE(p + 28);
    const extraLen = buf.readUInt16LE(p + 30);
    const commentLen = buf.readUInt16LE(p + 32);
    const name = buf.subarray(p + 46, p + 46 + nameLen).toString('utf8');
    const localAt = buf.readUInt32LE(p + 42);
    const dataAt = localAt + 30 + buf.readUInt16LE(localAt + 26) + buf.readUInt16LE(localAt + 28);
    entries.push({ name, cdAt: p, localAt, dataAt, size: buf.readUInt32LE(p + 24) });
    p += 46 + nameLen + extraLen + commentLen;
  }
  return { eocdAt, cdOffset, cdSize, entries };
}

/** The entries of an archive, to rebuild it with some of them replaced. */
export function zipEntries(buf: Buffer): ZipInput[] {
  return zipLayout(buf).entries.map((e) => ({
    name: e.name,
    data: Buffer.from(buf.subarray(e.dataAt, e.dataAt + e.size)),
  }));
}

/** The same archive in zip64 form, as torch writes shards over 4 GiB: every size and offset saturated in the
 *  classic fields and carried by zip64 extra fields and the zip64 end records. */
export function writeStoredZip64(entries: ZipInput[]): Buffer {
  const parts: Buffer[] = [];
  const central: Buffer[] = [];
  let offset = 0;
  for (const e of entries) {
    const name = Buffer.from(e.name, 'utf8');
    const crc = crc32(e.data) >>> 0;
    const local = Buffer.alloc(30);
    local.writeUInt32LE(0x04034b50, 0);
    local.writeUInt16LE(45, 4);
    local.writeUInt32LE(crc, 14);
    local.writeUInt32LE(0xffffffff, 18);
    local.writeUInt32LE(0xffffffff, 22);
    local.writeUInt16LE(name.length, 26);
    local.writeUInt16LE(20, 28);
    const localExtra = Buffer.alloc(20);
    localExtra.writeUInt16LE(0x0001, 0);
    localExtra.writeUInt16LE(16, 2);
    localExtra.writeBigUInt64LE(BigInt(e.data.length), 4);
    localExtra.writeBigUInt64LE(BigInt(e.data.length), 12);
    const cd = Buffer.alloc(46);
    cd.writeUInt32LE(0x02014b50, 0);
    cd.writeUInt16LE(45, 4);
    cd.writeUInt16LE(45, 6);
    cd.writeUInt32LE(crc, 16);
    cd.writeUInt32LE(0xffffffff, 20);
    cd.writeUInt32LE(0xffffffff, 24);
    cd.writeUInt16LE(name.length, 28);
    cd.writeUInt16LE(28, 30);
    cd.writeUInt32LE(0xffffffff, 42);
    const extra = Buffer.alloc(28);
    extra.writeUInt16LE(0x0001, 0);
    extra.writeUInt16LE(24, 2);
    extra.writeBigUInt64LE(BigInt(e.data.length), 4);
    extra.writeBigUInt64LE(BigInt(e.data.length), 12);
    extra.writeBigUInt64LE(BigInt(offset), 20);
    central.push(cd, name, extra);
    parts.push(local, name, localExtra, e.data);
    offset += 30 + name.length + 20 + e.data.length;
  }
  const cdBuf = Buffer.concat(central);
  const z64 = Buffer.alloc(56);
  z64.writeUInt32LE(0x06064b50, 0);
  z64.writeBigUInt64LE(44n, 4);
  z64.writeUInt16LE(45, 12);
  z64.writeUInt16LE(45, 14);
  z64.writeBigUInt64LE(BigInt(entries.length), 24);
  z64.writeBigUInt64LE(BigInt(entries.length), 32);
  z64.writeBigUInt64LE(BigInt(cdBuf.length), 40);
  z64.writeBigUInt64LE(BigInt(offset), 48);
  const locator = Buffer.alloc(20);
  locator.writeUInt32LE(0x07064b50, 0);
  locator.writeBigUInt64LE(BigInt(offset + cdBuf.length), 8);
  locator.writeUInt32LE(1, 16);
  const eocd = Buffer.alloc(22);
  eocd.writeUInt32LE(0x06054b50, 0);
  eocd.writeUInt16LE(0xffff, 8);
  eocd.writeUInt16LE(0xffff, 10);
  eocd.writeUInt32LE(0xffffffff, 12);
  eocd.writeUInt32LE(0xffffffff, 16);
  return Buffer.concat([...parts, cdBuf, z64, locator, eocd]);
}
