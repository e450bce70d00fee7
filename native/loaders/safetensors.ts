// safetensors reader: an 8-byte little-endian header length, a JSON header, then one flat byte buffer.
// Everything the header claims is checked against the file before a single tensor byte is read.
import { CheckpointError } from './errors';
import type { CheckedFile } from './file';
import { DTYPE_BYTES, elementCount, type TensorDtype, type TensorLocation } from './tensor';

// The reference implementation refuses headers over 100 MB; a larger one is corrupt or hostile.
const MAX_HEADER_BYTES = 100_000_000;
const KNOWN_DTYPES = new Set([
  'BOOL',
  'U8',
  'I8',
  'I16',
  'U16',
  'F16',
  'BF16',
  'I32',
  'U32',
  'F32',
  'F64',
  'I64',
  'U64',
  'F8_E4M3',
  'F8_E5M2',
  'F8_E8M0',
  'F4',
  'F6_E2M3',
  'F6_E3M2',
  'C64',
]);

export interface SafetensorsEntry extends Omit<TensorLocation, 'dtype'> {
  /** The file's dtype string; only F32/F16/BF16 are loadable, other tensors may only be skipped buffers. */
  dtype: string;
}

export interface SafetensorsHeader {
  entries: SafetensorsEntry[];
  metadata: Record<string, string>;
}

export function isLoadableDtype(dtype: string): dtype is TensorDtype {
  return dtype === 'F32' || dtype === 'F16' || dtype === 'BF16';
}

function dtypeBytes(dtype: string): number | null {
  if (isLoadableDtype(dtype)) return DTYPE_BYTES[dtype];
  switch (dtype) {
    case 'BOOL':
    case 'U8':
    case 'I8':
    case 'F8_E4M3':
    case 'F8_E5M2':
    case 'F8_E8M0':
      return 1;
    case 'I16':
    case 'U16':
      return 2;
    case 'I32':
    case 'U32':
      return 4;
    case 'F64':
    case 'I64':
    case 'U64':
    case 'C64':
      return 8;
    default:
      return null; // sub-byte types: never a weight this engine can use
  }
}

export async function readSafetensorsHeader(file: CheckedFile): Promise<SafetensorsHeader> {
  const path = file.path;
  if (file.size < 8)
    throw new CheckpointError(path, `file of ${file.size} bytes is too short for a safetensors header`);
  const lenBuf = await file.read(0, 8, 'header length');
  const headerLen64 = lenBuf.readBigUInt64LE(0);
  if (headerLen64 < 2n || headerLen64 > BigInt(MAX_HEADER_BYTES)) {
    throw new CheckpointError(path, `header length ${headerLen64} is outside 2..${MAX_HEADER_BYTES} bytes`);
  }
  const headerLen = Number(headerLen64);
  if (8 + headerLen > file.size) {
    throw new CheckpointError(path, `header length ${headerLen} runs past the end of the ${file.size}-byte file`);
  }
  const raw = await file.read(8, headerLen, 'header');
  let text: string;
  try {
    text = new TextDecoder('utf-8', { fatal: true }).decode(raw);
  } catch {
    throw new CheckpointError(path, 'header is not valid UTF-8');
  }
  let header: unknown;
  try {
    header = JSON.parse(text);
  } catch (err) {
    throw new CheckpointError(path, `header is not valid JSON (${(err as Error).message})`);
  }
  if (typeof header !== 'object' || header === null || Array.isArray(header)) {
    throw new CheckpointError(path, 'header is not a JSON object');
  }

  const dataStart = 8 + headerLen;
  const dataSize = file.size - dataStart;
  const entries: SafetensorsEntry[] = [];
  let metadata: Record<string, string> = {};
  for (const [name, value] of Object.entries(header as Record<string, unknown>)) {
    if (name === '__metadata__') {
      if (
        typeof value !== 'object' ||
        value === null ||
        Array.isArray(value) ||
        Object.values(value).some((v) => typeof v !== 'string')
      ) {
        throw new CheckpointError(path, '__metadata__ must be an object of strings');
      }
      metadata = value as Record<string, string>;
      continue;
    }
    if (typeof value !== 'object' || value === null || Array.isArray(value)) {
      throw new CheckpointError(path, 'header entry is not an object', name);
    }
    const { dtype, shape, data_offsets: offsets } = value as Record<string, unknown>;
    if (typeof dtype !== 'string' || !KNOWN_DTYPES.has(dtype)) {
      throw new CheckpointError(path, `unknown dtype ${JSON.stringify(dtype)}`, name);
    }
    if (!Array.isArray(shape)) throw new CheckpointError(path, `shape ${JSON.stringify(shape)} is not an array`, name);
    const numel = elementCount(shape, path, name);
    if (
      !Array.isArray(offsets) ||
      offsets.length !== 2 ||
      !offsets.every((o) => typeof o === 'number' && Number.isSafeInteger(o) && o >= 0)
    ) {
      throw new CheckpointError(
        path,
        `data_offsets ${JSON.stringify(offsets)} must be two non-negative integers`,
        name,
      );
    }
    const [begin, end] = offsets as [number, number];
    if (end < begin) throw new CheckpointError(path, `data_offsets [${begin}, ${end}] end before they begin`, name);
    if (end > dataSize) {
      throw new CheckpointError(
        path,
        `data_offsets [${begin}, ${end}] run past the ${dataSize}-byte data section`,
        name,
      );
    }
    const itemBytes = dtypeBytes(dtype);
    if (itemBytes === null) throw new CheckpointError(path, `dtype ${dtype} is not supported`, name);
    if (numel * itemBytes !== end - begin) {
      throw new CheckpointError(
        path,
        `${dtype} ${JSON.stringify(shape)} needs ${numel * itemBytes} bytes but data_offsets [${begin}, ${end}] hold ${end - begin}`,
        name,
      );
    }
    entries.push({
      name,
      dtype,
      shape: shape as number[],
      file: path,
      offset: dataStart + begin,
      byteLength: end - begin,
    });
  }

  // The format requires the tensors to tile the data section exactly: overlaps or holes mean corruption.
  const sorted = [...entries].sort((a, b) => a.offset - b.offset || a.byteLength - b.byteLength);
  let cursor = dataStart;
  for (const e of sorted) {
    if (e.offset < cursor) throw new CheckpointError(path, "overlaps the previous tensor's bytes", e.name);
    if (e.offset > cursor)
      throw new CheckpointError(path, `leaves a gap of ${e.offset - cursor} unindexed bytes before it`, e.name);
    cursor = e.offset + e.byteLength;
  }
  if (cursor !== file.size) {
    throw new CheckpointError(path, `${file.size - cursor} bytes after the last tensor are not indexed by the header`);
  }
  return { entries, metadata };
}
