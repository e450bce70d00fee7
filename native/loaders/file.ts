// A checkpoint file opened for positioned reads: every read is bounds-checked against the size taken at open,
// so a corrupt offset becomes a CheckpointError instead of a short read or a read past the end.
import { type FileHandle, open } from 'node:fs/promises';
import { CheckpointError } from './errors';

// One read(2) may move at most ~2 GiB; larger tensors are read in pieces.
const MAX_READ_CHUNK = 1 << 30;

export class CheckedFile {
  private constructor(
    readonly path: string,
    readonly size: number,
    private handle: FileHandle | null,
  ) {}

  static async open(path: string): Promise<CheckedFile> {
    let handle: FileHandle;
    try {
      handle = await open(path, 'r');
    } catch (err) {
      throw new CheckpointError(path, `cannot open: ${(err as NodeJS.ErrnoException).code ?? String(err)}`);
    }
    try {
      const st = await handle.stat();
      if (!st.isFile()) throw new CheckpointError(path, 'is not a regular file');
      return new CheckedFile(path, st.size, handle);
    } catch (err) {
      await handle.close();
      throw err;
    }
  }

  /** Reads exactly `length` bytes at `offset` (into `into` when given), refusing any range outside the file. */
  async read(offset: number, length: number, what: string, tensor?: string, into?: Uint8Array): Promise<Buffer> {
    if (!this.handle) throw new CheckpointError(this.path, `read of ${what} after the checkpoint was closed`, tensor);
    if (!Number.isSafeInteger(offset) || !Number.isSafeInteger(length) || offset < 0 || length < 0) {
      throw new CheckpointError(
        this.path,
        `invalid byte range for ${what}: offset ${offset}, length ${length}`,
        tensor,
      );
    }
    if (offset + length > this.size) {
      throw new CheckpointError(
        this.path,
        `${what} spans bytes ${offset}..${offset + length} but the file has only ${this.size} bytes (truncated?)`,
        tensor,
      );
    }
    let buf: Buffer;
    if (into) {
      if (into.byteLength < length) {
        throw new CheckpointError(
          this.path,
          `target buffer of ${into.byteLength} bytes is smaller than ${what} (${length} bytes)`,
          tensor,
        );
      }
      buf = Buffer.from(into.buffer, into.byteOffset, length);
    } else {
      buf = Buffer.allocUnsafe(length);
    }
    let done = 0;
    while (done < length) {
      const want = Math.min(length - done, MAX_READ_CHUNK);
      const { bytesRead } = await this.handle.read(buf, done, want, offset + done);
      // The file shrank after we measured it (someone is rewriting it): refuse rather than hand out stale bytes.
      if (bytesRead === 0) throw new CheckpointError(this.path, `unexpected end of file while reading ${what}`, tensor);
      done += bytesRead;
    }
    return buf;
  }

  async close(): Promise<void> {
    const h = this.handle;
    this.handle = null;
    if (h) await h.close();
  }
}
