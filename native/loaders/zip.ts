// Central-directory zip reader for torch.save archives: only what PyTorch writes (stored, unencrypted
// entries, zip64 where needed), every size and offset checked against the file. Entry data is located,
// not read, so multi-GB storages stay on disk until a tensor is asked for.
import { crc32 } from 'node:zlib';
import { CheckpointError } from './errors';
import type { CheckedFile } from './file';

const EOCD_SIG = 0x06054b50;
const ZIP64_LOCATOR_SIG = 0x07064b50;
const ZIP64_EOCD_SIG = 0x06064b50;
const CENTRAL_SIG = 0x02014b50;
const LOCAL_SIG = 0x04034b50;
const EOCD_SIZE = 22;
const MAX_COMMENT = 0xffff;
// A state dict has a few thousand entries at most; a larger directory is a zip bomb, not a checkpoint.
const MAX_ENTRIES = 1_000_000;
const MAX_CENTRAL_DIR_BYTES = 256 * 1024 * 1024;

export interface ZipEntry {
  name: string;
  /** where the entry's (uncompressed, stored) bytes begin in the file */
  dataOffset: number;
  size: number;
  /** CRC-32 from the central directory; checked for entries read whole (data.pkl), not for multi-GB storages */
  crc32: number;
}

function u64(buf: Buffer, at: number, file: string, what: string): number {
  const v = buf.readBigUInt64LE(at);
  if (v > BigInt(Number.MAX_SAFE_INTEGER)) throw new CheckpointError(file, `zip ${what} ${v} is too large`);
  return Number(v);
}

/** Finds the end-of-central-directory record, scanning back over a possible archive comment. */
async function findEocd(file: CheckedFile): Promise<{ at: number; record: Buffer }> {
  if (file.size < EOCD_SIZE)
    throw new CheckpointError(file.path, `file of ${file.size} bytes is too short to be a zip archive`);
  const tailLen = Math.min(file.size, EOCD_SIZE + MAX_COMMENT);
  const tailStart = file.size - tailLen;
  const tail = await file.read(tailStart, tailLen, 'zip end-of-central-directory');
  for (let i = tailLen - EOCD_SIZE; i >= 0; i--) {
    if (tail.readUInt32LE(i) !== EOCD_SIG) continue;
    const commentLen = tail.readUInt16LE(i + 20);
    // The comment must end exactly at the end of the file; otherwise these four bytes are a coincidence.
    if (i + EOCD_SIZE + commentLen === tailLen) return { at: tailStart + i, record: tail.subarray(i, i + EOCD_SIZE) };
  }
  throw new CheckpointError(
    file.path,
    'is not a zip archive (no end-of-central-directory record); a PyTorch .bin must be a torch.save zip',
  );
}

export async function readZipDirectory(file: CheckedFile): Promise<Map<string, ZipEntry>> {
  const path = file.path;
  const { at: eocdAt, record } = await findEocd(file);
  if (record.readUInt16LE(4) !== 0 || record.readUInt16LE(6) !== 0) {
    throw new CheckpointError(path, 'multi-disk zip archives are not supported');
  }
  let count = record.readUInt16LE(10);
  let cdSize = record.readUInt32LE(12);
  let cdOffset = record.readUInt32LE(16);
  let cdEndLimit = eocdAt;
  if (count === 0xffff || cdSize === 0xffffffff || cdOffset === 0xffffffff) {
    if (eocdAt < 20) throw new CheckpointError(path, 'zip64 end-of-central-directory locator is missing');
    const loc = await file.read(eocdAt - 20, 20, 'zip64 locator');
    if (loc.readUInt32LE(0) !== ZIP64_LOCATOR_SIG)
      throw new CheckpointError(path, 'zip64 end-of-central-directory locator is missing');
    const z64At = u64(loc, 8, path, 'zip64 record offset');
    if (z64At + 56 > eocdAt - 20)
      throw new CheckpointError(path, `zip64 end-of-central-directory offset ${z64At} is out of place`);
    const z64 = await file.read(z64At, 56, 'zip64 end-of-central-directory');
    if (z64.readUInt32LE(0) !== ZIP64_EOCD_SIG)
      throw new CheckpointError(path, 'zip64 end-of-central-directory record has a bad signature');
    count = u64(z64, 32, path, 'entry count');
    cdSize = u64(z64, 40, path, 'central directory size');
    cdOffset = u64(z64, 48, path, 'central directory offset');
    cdEndLimit = z64At;
  }
  if (count > MAX_ENTRIES) throw new CheckpointError(path, `zip claims ${count} entries, more than any checkpoint has`);
  if (cdSize > MAX_CENTRAL_DIR_BYTES)
    throw new CheckpointError(path, `zip central directory of ${cdSize} bytes is implausibly large`);
  if (cdOffset + cdSize > cdEndLimit) {
    throw new CheckpointError(
      path,
      `zip central directory (offset ${cdOffset}, ${cdSize} bytes) runs past its end record at ${cdEndLimit}`,
    );
  }
  const cd = await file.read(cdOffset, cdSize, 'zip central directory');

  const entries = new Map<string, ZipEntry>();
  const ranges: Array<{ start: number; end: number; name: string }> = [];
  let p = 0;
  for (let i = 0; i < count; i++) {
    if (p + 46 > cd.length || cd.readUInt32LE(p) !== CENTRAL_SIG) {
      throw new CheckpointError(path, `zip central directory entry ${i} of ${count} is malformed or missing`);
    }
    const flags = cd.readUInt16LE(p + 8);
    const method = cd.readUInt16LE(p + 10);
    const crc32 = cd.readUInt32LE(p + 16);
    let compSize = cd.readUInt32LE(p + 20);
    let size = cd.readUInt32LE(p + 24);
    const nameLen = cd.readUInt16LE(p + 28);
    const extraLen = cd.readUInt16LE(p + 30);
    const commentLen = cd.readUInt16LE(p + 32);
    let localOffset = cd.readUInt32LE(p + 42);
    const end = p + 46 + nameLen + extraLen + commentLen;
    if (end > cd.length) throw new CheckpointError(path, `zip central directory entry ${i} runs past the directory`);
    const nameBytes = cd.subarray(p + 46, p + 46 + nameLen);
    let name: string;
    try {
      name = new TextDecoder('utf-8', { fatal: true }).decode(nameBytes);
    } catch {
      throw new CheckpointError(path, `zip entry ${i} has a name that is not UTF-8`);
    }
    // Fields saturated at 0xffffffff are in the zip64 extra field, in this fixed order.
    const extra = cd.subarray(p + 46 + nameLen, p + 46 + nameLen + extraLen);
    if (size === 0xffffffff || compSize === 0xffffffff || localOffset === 0xffffffff) {
      let q = 0;
      let found = false;
      while (q + 4 <= extra.length) {
        const id = extra.readUInt16LE(q);
        const len = extra.readUInt16LE(q + 2);
        if (q + 4 + len > extra.length) break;
        if (id === 0x0001) {
          let r = q + 4;
          const take = (what: string): number => {
            if (r + 8 > q + 4 + len)
              throw new CheckpointError(path, `zip64 extra field of '${name}' lacks its ${what}`);
            const v = u64(extra, r, path, what);
            r += 8;
            return v;
          };
          if (size === 0xffffffff) size = take('size');
          if (compSize === 0xffffffff) compSize = take('compressed size');
          if (localOffset === 0xffffffff) localOffset = take('local header offset');
          found = true;
          break;
        }
        q += 4 + len;
      }
      if (!found) throw new CheckpointError(path, `zip entry '${name}' needs a zip64 extra field but has none`);
    }
    if (flags & 0x1) throw new CheckpointError(path, `zip entry '${name}' is encrypted`);
    if (method !== 0) {
      throw new CheckpointError(
        path,
        `zip entry '${name}' is compressed (method ${method}); torch.save writes stored entries only`,
      );
    }
    if (compSize !== size)
      throw new CheckpointError(path, `zip entry '${name}' is stored but its sizes differ (${compSize} vs ${size})`);
    if (entries.has(name)) throw new CheckpointError(path, `zip holds two entries named '${name}'`);
    entries.set(name, { name, dataOffset: localOffset, size, crc32 });
    p = end;
  }

  // Resolve each local header: the data follows it, and must lie before the central directory.
  for (const e of entries.values()) {
    const headerAt = e.dataOffset;
    if (headerAt + 30 > cdOffset)
      throw new CheckpointError(path, `zip entry '${e.name}' has its local header at ${headerAt}, past the data area`);
    const lh = await file.read(headerAt, 30, `local header of zip entry '${e.name}'`);
    if (lh.readUInt32LE(0) !== LOCAL_SIG)
      throw new CheckpointError(path, `zip entry '${e.name}' has a bad local header signature`);
    if (lh.readUInt16LE(8) !== 0)
      throw new CheckpointError(path, `zip entry '${e.name}' local header says it is compressed`);
    const nameLen = lh.readUInt16LE(26);
    const extraLen = lh.readUInt16LE(28);
    const localName = await file.read(headerAt + 30, nameLen, `local name of zip entry '${e.name}'`);
    if (localName.toString('utf8') !== e.name) {
      throw new CheckpointError(path, `zip entry '${e.name}' local header names '${localName.toString('utf8')}'`);
    }
    const start = headerAt + 30 + nameLen + extraLen;
    if (start + e.size > cdOffset) {
      throw new CheckpointError(
        path,
        `zip entry '${e.name}' (${e.size} bytes at ${start}) runs past the data area into the central directory`,
      );
    }
    e.dataOffset = start;
    ranges.push({ start: headerAt, end: start + e.size, name: e.name });
  }
  ranges.sort((a, b) => a.start - b.start);
  for (let i = 1; i < ranges.length; i++) {
    if (ranges[i].start < ranges[i - 1].end) {
      throw new CheckpointError(path, `zip entries '${ranges[i - 1].name}' and '${ranges[i].name}' overlap`);
    }
  }
  return entries;
}

/** Reads a whole (small) entry and checks its CRC-32, so a corrupted pickle is caught before it is parsed. */
export async function readZipEntryChecked(file: CheckedFile, entry: ZipEntry): Promise<Buffer> {
  const data = await file.read(entry.dataOffset, entry.size, `zip entry '${entry.name}'`);
  const actual = crc32(data) >>> 0;
  if (actual !== entry.crc32 >>> 0) {
    throw new CheckpointError(file.path, `zip entry '${entry.name}' fails its CRC-32 check (corrupted)`);
  }
  return data;
}
