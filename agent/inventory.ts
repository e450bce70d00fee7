// What this machine is: the inventory an agent announces, and the environment record every run carries.
import { execFile } from 'node:child_process';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import type { AgentInventory } from '../contracts/agent';
import type { DeviceKind } from '../contracts/engine';
import type { EnvironmentRecord, GpuInfo } from '../contracts/experiment';

const run = promisify(execFile);
export const AGENT_VERSION = '0.1.0';
const repoRoot = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');

export const NVIDIA_SMI_QUERY = 'index,name,uuid,memory.total,driver_version,clocks.sm,clocks.mem,temperature.gpu';

/** nvidia-smi prints "[N/A]" or "N/A" for what a card does not report. */
function optionalNumber(field: string | undefined): number | undefined {
  if (field === undefined) return undefined;
  const v = Number(field.trim());
  return field.trim() !== '' && Number.isFinite(v) ? v : undefined;
}
function optionalText(field: string | undefined): string | undefined {
  const t = field?.trim();
  return t && !/^\[?N\/A\]?$/i.test(t) ? t : undefined;
}

/** Parses `nvidia-smi --query-gpu=<NVIDIA_SMI_QUERY> --format=csv,noheader,nounits` (memory in MiB). */
export function parseNvidiaSmi(csv: string): GpuInfo[] {
  const gpus: GpuInfo[] = [];
  for (const line of csv.split('\n')) {
    if (!line.trim()) continue;
    const f = line.split(',').map((s) => s.trim());
    if (f.length < 4) throw new Error(`unexpected nvidia-smi line (want ${NVIDIA_SMI_QUERY}): ${line}`);
    const index = optionalNumber(f[0]);
    const memMiB = optionalNumber(f[3]);
    if (index === undefined || !Number.isInteger(index))
      throw new Error(`nvidia-smi line without a GPU index: ${line}`);
    gpus.push({
      index,
      name: f[1],
      uuid: optionalText(f[2]),
      memoryBytes: (memMiB ?? 0) * 1024 * 1024,
      driver: optionalText(f[4]),
      smClockMHz: optionalNumber(f[5]),
      memClockMHz: optionalNumber(f[6]),
      temperatureC: optionalNumber(f[7]),
    });
  }
  return gpus;
}

/** The GPUs nvidia-smi sees, with clocks and temperature as of now; [] where there is no NVIDIA driver. */
export async function readGpus(): Promise<GpuInfo[]> {
  try {
    const { stdout } = await run('nvidia-smi', [`--query-gpu=${NVIDIA_SMI_QUERY}`, '--format=csv,noheader,nounits'], {
      timeout: 15_000,
    });
    return parseNvidiaSmi(stdout);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === 'ENOENT') return [];
    // A driver that is installed but broken must not stop the agent: it then runs CPU jobs only.
    process.stderr.write(`agent: nvidia-smi failed, assuming no GPUs: ${(err as Error).message}\n`);
    return [];
  }
}

/** The CUDA version the driver supports, from nvidia-smi's banner; undefined without a driver. */
export async function readCudaVersion(): Promise<string | undefined> {
  try {
    const { stdout } = await run('nvidia-smi', [], { timeout: 15_000 });
    return /CUDA Version:\s*([\d.]+)/.exec(stdout)?.[1];
  } catch {
    return undefined;
  }
}

let gitCommitCache: Promise<string | undefined> | undefined;
/** The checkout's commit (with "-dirty" when it has local changes), or undefined outside a git checkout. */
export function gitCommit(): Promise<string | undefined> {
  gitCommitCache ??= (async () => {
    try {
      const { stdout } = await run('git', ['rev-parse', 'HEAD'], { cwd: repoRoot, timeout: 10_000 });
      const { stdout: status } = await run('git', ['status', '--porcelain', '--untracked-files=no'], {
        cwd: repoRoot,
        timeout: 10_000,
      });
      return stdout.trim() + (status.trim() ? '-dirty' : '');
    } catch {
      return undefined;
    }
  })();
  return gitCommitCache;
}

export interface EngineBuild {
  version: string;
  build: string;
  backends: DeviceKind[];
}

export async function collectInventory(name: string, engine: EngineBuild): Promise<AgentInventory> {
  const cpus = os.cpus();
  const gpus = await readGpus();
  return {
    name,
    hostname: os.hostname(),
    backend: engine.backends.includes('cuda') && gpus.length > 0 ? 'cuda' : 'cpu',
    cpu: { model: cpus[0]?.model.trim() || 'unknown', cores: Math.max(1, cpus.length) },
    memoryBytes: os.totalmem(),
    gpus,
    engine: { version: engine.version, build: engine.build, backends: engine.backends },
    nodeVersion: process.version,
    agentVersion: AGENT_VERSION,
  };
}

/** Where a run runs, taken at its start (GPU clocks and temperature are read afresh). */
export async function environmentRecord(
  inventory: AgentInventory,
  backend: DeviceKind,
  startedAt = new Date(),
): Promise<EnvironmentRecord> {
  const [gpus, cudaVersion, commit] = await Promise.all([
    backend === 'cuda' ? readGpus() : Promise.resolve(inventory.gpus),
    backend === 'cuda' ? readCudaVersion() : Promise.resolve(undefined),
    gitCommit(),
  ]);
  return {
    agentName: inventory.name,
    hostname: inventory.hostname,
    backend,
    cpuModel: inventory.cpu.model,
    cpuCores: inventory.cpu.cores,
    memoryBytes: inventory.memoryBytes,
    gpus,
    ...(cudaVersion ? { cudaVersion } : {}),
    engineBuild: inventory.engine.build,
    ...(commit ? { gitCommit: commit } : {}),
    nodeVersion: inventory.nodeVersion,
    startedAt: startedAt.toISOString(),
  };
}
