// PyTorch .bin reader: a torch.save zip archive holding <prefix>/data.pkl (the state dict's pickle) and one
// <prefix>/data/<key> entry per storage. Tensors become byte ranges inside those entries.
import { basename } from 'node:path';
import { CheckpointError } from './errors';
import type { CheckedFile } from './file';
import { isLoadableDtype } from './safetensors';
import type { TensorLocation } from './tensor';
import { unpickleStateDict } from './unpickle';
import { readZipDirectory, readZipEntryChecked } from './zip';

export async function readTorchZipCheckpoint(
  file: CheckedFile,
): Promise<{ locations: TensorLocation[]; unloadable: Map<string, string> }> {
  const path = file.path;
  const entries = await readZipDirectory(file);
  const pkls = [...entries.keys()].filter((n) => /^[^/]+\/data\.pkl$/.test(n));
  if (pkls.length !== 1) {
    throw new CheckpointError(
      path,
      pkls.length === 0
        ? 'zip has no <archive>/data.pkl: not a torch.save checkpoint (legacy non-zip .bin files are not supported)'
        : `zip has ${pkls.length} data.pkl entries`,
    );
  }
  const prefix = pkls[0].slice(0, -'data.pkl'.length);
  const byteorder = entries.get(`${prefix}byteorder`);
  if (byteorder) {
    const order = (await file.read(byteorder.dataOffset, Math.min(byteorder.size, 16), 'byteorder entry')).toString(
      'latin1',
    );
    if (order !== 'little')
      throw new CheckpointError(path, `storages are ${JSON.stringify(order)}-endian; only little-endian is supported`);
  }
  const pkl = entries.get(pkls[0]);
  if (!pkl) throw new CheckpointError(path, 'data.pkl vanished');
  const pickle = await readZipEntryChecked(file, pkl);
  const tensors = unpickleStateDict(pickle, path);

  const locations: TensorLocation[] = [];
  const unloadable = new Map<string, string>();
  const storageDtype = new Map<string, string>();
  for (const [name, t] of tensors) {
    const entryName = `${prefix}data/${t.storage.key}`;
    const entry = entries.get(entryName);
    if (!entry) throw new CheckpointError(path, `its storage '${t.storage.key}' has no zip entry ${entryName}`, name);
    const storageBytes = t.storage.numel * t.storage.itemBytes;
    if (entry.size !== storageBytes) {
      throw new CheckpointError(
        path,
        `storage '${t.storage.key}' should hold ${t.storage.numel} x ${t.storage.itemBytes} = ${storageBytes} bytes but its zip entry has ${entry.size}`,
        name,
      );
    }
    // Two tensors may view one storage (tied weights), but never as two different types.
    const seenDtype = storageDtype.get(t.storage.key);
    if (seenDtype !== undefined && seenDtype !== t.storage.dtype) {
      throw new CheckpointError(
        path,
        `storage '${t.storage.key}' is used as both ${seenDtype} and ${t.storage.dtype}`,
        name,
      );
    }
    storageDtype.set(t.storage.key, t.storage.dtype);
    const numel = t.shape.reduce((a, b) => a * b, 1);
    const loc: TensorLocation = {
      name,
      dtype: isLoadableDtype(t.storage.dtype) ? t.storage.dtype : 'F32',
      shape: t.shape,
      file: path,
      offset: entry.dataOffset + t.storageOffset * t.storage.itemBytes,
      byteLength: numel * t.storage.itemBytes,
      // The zip's CRC covers the whole storage: checkable when the tensor is all of it (the usual case).
      ...(t.storageOffset === 0 && numel * t.storage.itemBytes === entry.size ? { crc32: entry.crc32 } : {}),
    };
    if (!isLoadableDtype(t.storage.dtype)) unloadable.set(name, t.storage.dtype);
    locations.push(loc);
  }
  if (locations.length === 0) throw new CheckpointError(path, `${basename(path)} holds no tensors`);
  return { locations, unloadable };
}
