// openCheckpoint: a Hugging Face checkpoint directory (GPT-2 or ChatGLM2; safetensors or PyTorch .bin, single
// or sharded) -> its ModelConfig and a validated list of tensors whose bytes are read on demand.
// Every header, offset and index is checked before any tensor byte is handed out; problems become a
// CheckpointError that names the file and the tensor.
import { readFile, stat } from 'node:fs/promises';
import { basename, join, resolve } from 'node:path';
import { crc32 } from 'node:zlib';
import type { ModelConfig } from '../../contracts/models';
import { modelConfigFromJson } from './config';
import { CheckpointError } from './errors';
import { tensorPlan } from './families';
import { CheckedFile } from './file';
import { isLoadableDtype, readSafetensorsHeader } from './safetensors';
import type { TensorLocation } from './tensor';
import { readTorchZipCheckpoint } from './torch';

export { CheckpointError } from './errors';
export type { TensorDtype } from './tensor';

/** One tensor of a checkpoint: where its bytes lie (its name canonical: GPT-2's always with the 'transformer.' prefix;
 *  its file an absolute path) and how to read them. */
export interface CheckpointTensor extends Omit<TensorLocation, 'crc32'> {
  /** reads the tensor's bytes (into `into` when given, which must hold byteLength bytes); for .bin tensors that
   *  span their whole storage the zip's CRC-32 is checked */
  data(into?: Uint8Array): Promise<Buffer>;
}

export interface Checkpoint {
  family: 'gpt2' | 'chatglm2';
  config: ModelConfig;
  /** the directory, and the weight files used (absolute paths) */
  dir: string;
  format: 'safetensors' | 'pytorch';
  files: string[];
  /** every tensor the engine needs, each exactly once, in file order */
  tensors(): AsyncIterable<CheckpointTensor>;
  close(): Promise<void>;
}

interface WeightIndex {
  /** tensor name -> file basename */
  weightMap: Map<string, string>;
  files: string[];
}

async function exists(path: string): Promise<boolean> {
  try {
    await stat(path);
    return true;
  } catch {
    return false;
  }
}

async function readJson(path: string): Promise<Record<string, unknown>> {
  let text: string;
  try {
    text = await readFile(path, 'utf8');
  } catch (err) {
    throw new CheckpointError(path, `cannot read: ${(err as NodeJS.ErrnoException).code ?? String(err)}`);
  }
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch (err) {
    throw new CheckpointError(path, `is not valid JSON (${(err as Error).message})`);
  }
  if (typeof value !== 'object' || value === null || Array.isArray(value)) {
    throw new CheckpointError(path, 'is not a JSON object');
  }
  return value as Record<string, unknown>;
}

async function readWeightIndex(dir: string, indexPath: string): Promise<WeightIndex> {
  const index = await readJson(indexPath);
  const map = index.weight_map;
  if (typeof map !== 'object' || map === null || Array.isArray(map)) {
    throw new CheckpointError(indexPath, "has no 'weight_map' object");
  }
  const weightMap = new Map<string, string>();
  const files: string[] = [];
  for (const [tensor, file] of Object.entries(map as Record<string, unknown>)) {
    // Only plain file names in the checkpoint directory: an index must not steer reads elsewhere.
    if (typeof file !== 'string' || file === '' || file !== basename(file) || file === '.' || file === '..') {
      throw new CheckpointError(
        indexPath,
        `weight_map names ${JSON.stringify(file)}, which is not a file name in the checkpoint directory`,
        tensor,
      );
    }
    weightMap.set(tensor, file);
    if (!files.includes(file)) files.push(file);
  }
  if (weightMap.size === 0) throw new CheckpointError(indexPath, 'weight_map is empty');
  for (const f of files) {
    if (!(await exists(join(dir, f)))) {
      throw new CheckpointError(
        indexPath,
        `names shard '${f}', which does not exist in ${dir}`,
        [...weightMap].find(([, v]) => v === f)?.[0],
      );
    }
  }
  return { weightMap, files };
}

/** Checks that the tensors found in the shards are exactly the ones the index assigns to them. */
function checkAgainstIndex(indexPath: string, index: WeightIndex, found: TensorLocation[]): void {
  const seen = new Set<string>();
  for (const t of found) {
    const assigned = index.weightMap.get(t.name);
    if (assigned === undefined) throw new CheckpointError(t.file, 'is in this shard but not in the index', t.name);
    if (assigned !== basename(t.file)) {
      throw new CheckpointError(t.file, `is in this shard but the index assigns it to '${assigned}'`, t.name);
    }
    seen.add(t.name);
  }
  for (const [name, file] of index.weightMap) {
    if (!seen.has(name))
      throw new CheckpointError(
        join(indexPath, '..', file),
        `is listed in ${basename(indexPath)} but missing from the shard`,
        name,
      );
  }
}

async function safetensorsLocations(
  files: CheckedFile[],
): Promise<{ locations: TensorLocation[]; unloadable: Map<string, string> }> {
  const locations: TensorLocation[] = [];
  // tensors of dtypes the engine cannot use: fine only if they turn out to be skipped buffers
  const unloadable = new Map<string, string>();
  for (const f of files) {
    const { entries } = await readSafetensorsHeader(f);
    for (const e of entries) {
      if (isLoadableDtype(e.dtype)) locations.push({ ...e, dtype: e.dtype });
      else {
        unloadable.set(e.name, e.dtype);
        locations.push({ ...e, dtype: 'F32' });
      }
    }
  }
  return { locations, unloadable };
}

export interface OpenOptions {
  /** check .bin tensors against the zip's CRC-32 as they are read (default true; costs ~0.5 s per GB) */
  verifyChecksums?: boolean;
}

export async function openCheckpoint(dirArg: string, opts: OpenOptions = {}): Promise<Checkpoint> {
  const verify = opts.verifyChecksums ?? true;
  const dir = resolve(dirArg);
  let dirStat: Awaited<ReturnType<typeof stat>>;
  try {
    dirStat = await stat(dir);
  } catch {
    throw new CheckpointError(dir, 'checkpoint directory does not exist');
  }
  if (!dirStat.isDirectory()) throw new CheckpointError(dir, 'is not a directory');

  const configPath = join(dir, 'config.json');
  const config = modelConfigFromJson(await readJson(configPath), configPath, basename(dir));

  const p = (f: string) => join(dir, f);
  let format: Checkpoint['format'];
  let index: WeightIndex | null = null;
  let indexPath = '';
  let fileNames: string[];
  if (await exists(p('model.safetensors.index.json'))) {
    format = 'safetensors';
    indexPath = p('model.safetensors.index.json');
    index = await readWeightIndex(dir, indexPath);
    fileNames = index.files;
  } else if (await exists(p('model.safetensors'))) {
    format = 'safetensors';
    fileNames = ['model.safetensors'];
  } else if (await exists(p('pytorch_model.bin.index.json'))) {
    format = 'pytorch';
    indexPath = p('pytorch_model.bin.index.json');
    index = await readWeightIndex(dir, indexPath);
    fileNames = index.files;
  } else if (await exists(p('pytorch_model.bin'))) {
    format = 'pytorch';
    fileNames = ['pytorch_model.bin'];
  } else {
    throw new CheckpointError(
      dir,
      'holds no weights: expected model.safetensors, model.safetensors.index.json, pytorch_model.bin or pytorch_model.bin.index.json',
    );
  }

  const opened: CheckedFile[] = [];
  try {
    for (const f of fileNames) opened.push(await CheckedFile.open(p(f)));
    let locations: TensorLocation[];
    let unloadable = new Map<string, string>();
    if (format === 'safetensors') ({ locations, unloadable } = await safetensorsLocations(opened));
    else {
      locations = [];
      for (const f of opened) {
        const r = await readTorchZipCheckpoint(f);
        locations.push(...r.locations);
        for (const [k, v] of r.unloadable) unloadable.set(k, v);
      }
    }
    if (index) checkAgainstIndex(indexPath, index, locations);

    const plan = tensorPlan(config);
    const chosen = new Map<string, TensorLocation>();
    const rawNames = new Map<string, string>();
    for (const loc of locations) {
      const name = plan.canonical(loc.name);
      const previous = rawNames.get(name);
      if (previous !== undefined) {
        throw new CheckpointError(loc.file, `appears twice (also as '${previous}')`, loc.name);
      }
      rawNames.set(name, loc.name);
      if (plan.skipped(name)) continue;
      const want = plan.expected.get(name);
      if (!want) throw new CheckpointError(loc.file, `is not a tensor of a ${config.family} model`, loc.name);
      const badDtype = unloadable.get(loc.name);
      if (badDtype !== undefined) {
        throw new CheckpointError(
          loc.file,
          `has dtype ${badDtype}; only F32, F16 and BF16 weights are supported`,
          loc.name,
        );
      }
      if (want.length !== loc.shape.length || want.some((d, i) => d !== loc.shape[i])) {
        throw new CheckpointError(
          loc.file,
          `has shape ${JSON.stringify(loc.shape)} but config.json implies ${JSON.stringify(want)}`,
          loc.name,
        );
      }
      chosen.set(name, { ...loc, name });
    }
    for (const name of plan.expected.keys()) {
      if (!chosen.has(name)) {
        throw new CheckpointError(
          index ? indexPath : opened[0].path,
          `a ${config.family} checkpoint needs this tensor but it is missing`,
          name,
        );
      }
    }

    const byPath = new Map(opened.map((f) => [f.path, f]));
    const ordered = [...chosen.values()].sort((a, b) =>
      a.file === b.file
        ? a.offset - b.offset
        : fileNames.indexOf(basename(a.file)) - fileNames.indexOf(basename(b.file)),
    );
    let closed = false;
    return {
      family: config.family,
      config,
      dir,
      format,
      files: opened.map((f) => f.path),
      async *tensors() {
        for (const t of ordered) {
          if (closed) throw new CheckpointError(t.file, 'checkpoint was closed', t.name);
          const f = byPath.get(t.file) as CheckedFile;
          yield {
            ...t,
            shape: [...t.shape],
            data: async (into?: Uint8Array) => {
              const bytes = await f.read(t.offset, t.byteLength, 'tensor data', t.name, into);
              if (verify && t.crc32 !== undefined && crc32(bytes) >>> 0 !== t.crc32 >>> 0) {
                throw new CheckpointError(
                  t.file,
                  'bytes fail the CRC-32 recorded in the archive (corrupted file)',
                  t.name,
                );
              }
              return bytes;
            },
          };
        }
      },
      async close() {
        closed = true;
        await Promise.all(opened.map((f) => f.close()));
      },
    };
  } catch (err) {
    await Promise.all(opened.map((f) => f.close()));
    throw err;
  }
}
