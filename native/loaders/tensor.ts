// What the loaders hand out for each tensor, and the size arithmetic every format validates against.
import { CheckpointError } from './errors';

export type TensorDtype = 'F32' | 'F16' | 'BF16';
export const DTYPE_BYTES: Record<TensorDtype, number> = { F32: 4, F16: 2, BF16: 2 };

/** Where one tensor's bytes lie: a contiguous, row-major, little-endian range of one file. */
export interface TensorLocation {
  name: string;
  dtype: TensorDtype;
  shape: number[];
  file: string;
  offset: number;
  byteLength: number;
  /** CRC-32 the bytes must have, where the format records one (a .bin tensor spanning its whole storage) */
  crc32?: number;
}

/** Element count of a shape, refusing negative, fractional or overflowing dimensions. */
export function elementCount(shape: readonly unknown[], file: string, tensor: string): number {
  let n = 1;
  for (const d of shape) {
    if (typeof d !== 'number' || !Number.isSafeInteger(d) || d < 0) {
      throw new CheckpointError(
        file,
        `shape ${JSON.stringify(shape)} has an invalid dimension ${JSON.stringify(d)}`,
        tensor,
      );
    }
    n *= d;
    if (!Number.isSafeInteger(n))
      throw new CheckpointError(file, `shape ${JSON.stringify(shape)} is too large`, tensor);
  }
  return n;
}
