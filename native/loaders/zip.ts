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
const MAX_CENTRAL_DIR_BYTES = 64 * 1024 * 1024;

export interface ZipEntry {
  name: string;
  /** where the entry's (uncompressed, stored) bytes begin in the file */
  dataOffset: number;
  size: number;
  /** CRC-32 from the central directory; checked for entries read whole (data.pkl), not for multi-GB storages */
  crc32: number;
  /** general-purpose flags (bit 3: sizes and CRC in a data descriptor after the data) */
  flags: number;
}

const DESCRIPTOR_SIG = 0x08074b50;

/** The data descriptor after an entry's data: optional signature, CRC, then 4- or 8-byte sizes. Returns its end. */
async function checkDataDescriptor(file: CheckedFile, e: ZipEntry, at: number, limit: number): Promise<number> {
  const avail = Math.min(24, limit - at);
  const d = avail > 0 ? await file.read(at, avail, `data descriptor of zip entry '${e.name}'`) : Buffer.alloc(0);
  const skip = d.length >= 4 && d.readUInt32LE(0) === DESCRIPTOR_SIG ? 4 : 0;
  if (d.length >= skip + 12 && d.readUInt32LE(skip) === e.crc32) {
    if (
      d.length >= skip + 20 &&
      u64(d, skip + 4, file.path, 'descriptor size') === e.size &&
      u64(d, skip + 12, file.path, 'descriptor size') === e.size
    ) {
      return at + skip + 20;
    }
    if (d.readUInt32LE(skip + 4) === e.size && d.readUInt32LE(skip + 8) === e.size) return at + skip + 12;
  }
  throw new CheckpointError(file.path, `zip entry '${e.name}' has a missing or inconsistent data descriptor`);
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
  const saturated = count === 0xffff || cdSize === 0xffffffff || cdOffset === 0xffffffff;
  // torch writes zip64 end records even for small archives: when present they must agree with the classic ones.
  const loc = eocdAt >= 20 ? await file.read(eocdAt - 20, 20, 'zip64 locator') : null;
  const hasLocator = loc !== null && loc.readUInt32LE(0) === ZIP64_LOCATOR_SIG;
  if (saturated && !hasLocator) throw new CheckpointError(path, 'zip64 end-of-central-directory locator is missing');
  if (hasLocator && loc) {
    const z64At = u64(loc, 8, path, 'zip64 record offset');
    if (z64At + 56 > eocdAt - 20)
      throw new CheckpointError(path, `zip64 end-of-central-directory offset ${z64At} is out of place`);
    const z64 = await file.read(z64At, 56, 'zip64 end-of-central-directory');
    if (z64.readUInt32LE(0) !== ZIP64_EOCD_SIG)
      throw new CheckpointError(path, 'zip64 end-of-central-directory record has a bad signature');
    const z64Count = u64(z64, 32, path, 'entry count');
    const z64Size = u64(z64, 40, path, 'central directory size');
    const z64Offset = u64(z64, 48, path, 'central directory offset');
    const agrees = (classic: number, max: number, wide: number) => classic === max || classic === wide;
    if (
      !agrees(count, 0xffff, z64Count) ||
      !agrees(cdSize, 0xffffffff, z64Size) ||
      !agrees(cdOffset, 0xffffffff, z64Offset)
    ) {
      throw new CheckpointError(path, 'zip64 and classic end-of-central-directory records disagree');
    }
    count = z64Count;
    cdSize = z64Size;
    cdOffset = z64Offset;
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
    entries.set(name, { name, dataOffset: localOffset, size, crc32, flags });
    p = end;
  }

  // Resolve each local header: the data follows it, and must lie before the central directory. The local
  // header repeats the central record's flags, CRC and sizes (or zeroes them and puts them in a data
  // descriptor after the data, as torch does): any disagreement is corruption, and a classic zip confusion.
  for (const e of entries.values()) {
    const headerAt = e.dataOffset;
    if (headerAt + 30 > cdOffset)
      throw new CheckpointError(path, `zip entry '${e.name}' has its local header at ${headerAt}, past the data area`);
    const lh = await file.read(headerAt, 30, `local header of zip entry '${e.name}'`);
    if (lh.readUInt32LE(0) !== LOCAL_SIG)
      throw new CheckpointError(path, `zip entry '${e.name}' has a bad local header signature`);
    if (lh.readUInt16LE(6) !== e.flags)
      throw new CheckpointError(path, `zip entry '${e.name}' local header flags differ from the directory's`);
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
    const [crc, compSize, size] = [lh.readUInt32LE(14), lh.readUInt32LE(18), lh.readUInt32LE(22)];
    const zeroed = crc === 0 && compSize === 0 && size === 0;
    const sizeOk = (v: number) => v === e.size || v === 0xffffffff;
    let end = start + e.size;
    if (e.flags & 0x8) {
      if (!zeroed && !(crc === e.crc32 && sizeOk(compSize) && sizeOk(size))) {
        throw new CheckpointError(path, `zip entry '${e.name}' local header disagrees with the directory`);
      }
      end = await checkDataDescriptor(file, e, end, cdOffset);
    } else if (!(crc === e.crc32 && sizeOk(compSize) && sizeOk(size))) {
      throw new CheckpointError(path, `zip entry '${e.name}' local header CRC or sizes disagree with the directory`);
    }
    e.dataOffset = start;
    ranges.push({ start: headerAt, end, name: e.name });
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
