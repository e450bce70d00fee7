// Engine benchmark bundles (bench/results/*.json, written by bench/engine-gpu.cpp, bench/tp-gpu.cpp and
// bench/cpu-engine.ts) into the run history: every timed configuration of a bundle becomes a RunResult with its
// repeats, grouped into experiments named after the bundle. Pure conversion and validation: no database here.
import type { z } from 'zod';
import {
  type BenchMeasurement,
  type BenchTarget,
  CpuEngineBenchBundle,
  EngineBenchBundle,
  EngineBenchEnvironment,
  type EngineBenchGpu,
  targetMet,
} from '../contracts/bench';
import {
  type EnvironmentRecord,
  ExperimentSpec,
  type GpuInfo,
  type RepeatFigures,
  RunResult,
} from '../contracts/experiment';
import { summarize, summarizeRepeats } from '../lib/stats';

/** A bundle the history cannot take, with a message that says which file, what is wrong and what to do. */
export class BenchImportError extends Error {}

/** What regenerates a bundle of each kind (from the repository root). */
const REGENERATE: Record<string, string> = {
  'cuda-engine':
    "on a GPU host: 'bash bench/engine-gpu.sh --single' (or 'scripts/gpu-host.sh --engine-bench'), which rewrites bench/results/engine-gpu-<card>.json",
  'cuda-tensor-parallel':
    "on a host with 2 or 4 GPUs: 'bash bench/engine-gpu.sh --tp' (or 'scripts/gpu-host.sh --tp-bench'), which rewrites bench/results/tp-gpu-<card>x<N>.json",
  'cpu-engine':
    "'node --import ./node_modules/tsx/dist/loader.mjs bench/cpu-engine.ts', which rewrites bench/results/cpu-engine.json",
};

/** True when a parsed JSON document is a benchmark bundle (of any edition) rather than a `flashlab run` results file. */
export function isBenchBundle(json: unknown): boolean {
  if (!json || typeof json !== 'object') return false;
  const { format, kind } = json as { format?: unknown; kind?: unknown };
  return (
    (typeof format === 'string' && /^flashlab-(engine|kernel)-bench\//.test(format)) ||
    kind === 'flashlab.bench.cpu-engine'
  );
}

export interface BenchImportRun {
  result: RunResult;
  /** Where in the bundle the run came from (its section and label). */
  notes: string;
}

export interface BenchImportExperiment {
  spec: ExperimentSpec;
  runs: BenchImportRun[];
}

export interface BenchImport {
  kind: string;
  card: string;
  experiments: BenchImportExperiment[];
  /** Configurations of the bundle that are not imported, each with why. */
  skipped: string[];
  targets: BenchTarget[];
  partial: boolean;
}

function issues(error: z.ZodError, prefix: (string | number)[] = []): string {
  const lines = error.issues.slice(0, 20).map((i) => `  ${[...prefix, ...i.path].join('.') || '(file)'}: ${i.message}`);
  if (error.issues.length > 20) lines.push(`  … and ${error.issues.length - 20} more`);
  return lines.join('\n');
}

function slug(name: string): string {
  return name
    .toLowerCase()
    .replace(/^nvidia\s+/, '')
    .replace(/[^a-z0-9]+/g, '-')
    .replace(/^-|-$/g, '');
}

/** "Build cuda_13.0.r13.0/compiler.…" or "Cuda compilation tools, release 13.0, V13.0.88" -> "13.0". */
function cudaVersionOf(text: string | undefined): string | undefined {
  if (!text) return undefined;
  return /cuda_(\d+\.\d+)/i.exec(text)?.[1] ?? /release (\d+\.\d+)/i.exec(text)?.[1] ?? text;
}

function formatNumber(v: number): string {
  return Math.abs(v) >= 100 ? v.toFixed(0) : Math.abs(v) >= 1 ? v.toFixed(2) : v.toPrecision(3);
}

function targetLine(t: BenchTarget): string {
  return `${t.met ? 'met' : 'missed'}: ${t.name} = ${formatNumber(t.value)} ${t.unit} (target ${t.better === 'lower' ? '<=' : '>='} ${t.target} ${t.unit})`;
}

/** Names of the targets a driver could not compute in its run (bench/engine-gpu-common.h targetsNotMeasured). */
function notMeasured(bundle: Record<string, unknown>): string[] {
  const list = bundle.targetsNotMeasured;
  if (!Array.isArray(list)) return [];
  return list.flatMap((t) => (t && typeof t === 'object' && typeof t.name === 'string' ? [t.name] : []));
}

/** The GPUs a configuration of tensor-parallel degree `tp` ran on: GPUs 0..tp-1 of the host. */
function gpusOf(env: EngineBenchEnvironment, tp: number): GpuInfo[] {
  const gpu0: EngineBenchGpu = {
    index: 0,
    name: env.gpu,
    uuid: env.uuid,
    memoryBytes: env.memoryBytes ?? 0,
    driver: env.driver,
    smClockMHz: env.smClockMHz,
    memClockMHz: env.memClockMHz,
    temperatureC: env.temperatureC,
  };
  return Array.from({ length: tp }, (_, i) => {
    const detail = env.gpuDetails?.find((g) => g.index === i);
    if (detail) return detail;
    if (i === 0) return gpu0;
    const name = env.gpus?.[i] ?? env.gpu;
    // Without the probe's per-GPU details (first-edition bundles), a card of GPU 0's model has GPU 0's memory.
    return { index: i, name, memoryBytes: name === env.gpu ? (env.memoryBytes ?? 0) : 0, driver: env.driver };
  }).map((g) => Object.fromEntries(Object.entries(g).filter(([, v]) => v !== undefined)) as GpuInfo);
}

type AnyEngineBundle =
  | { kind: 'cuda'; bundle: EngineBenchBundle; env: EngineBenchEnvironment }
  | { kind: 'cpu'; bundle: CpuEngineBenchBundle };

function parseBundle(json: Record<string, unknown>, file: string): AnyEngineBundle {
  const { format, kind } = json;
  if (format === 'flashlab-kernel-bench/1' || kind === 'cuda-attention')
    throw new BenchImportError(
      `${file} is an attention kernel benchmark (format ${String(format)}, kind ${String(kind)}), not engine runs: ` +
        'its rows time single attention calls (prefill and decode kernels on synthetic Q/K/V) by TFLOP/s and GB/s, ' +
        'while a run of the history is a whole generate of a model configuration (model, method, KV cache, TP, ' +
        'dtype, batch, prompt and new tokens) with its prefill, TPOT and tokens/s. Nothing in it can become a run; ' +
        'its targets and measurements stay in the bundle (CI checks them: test/cuda/bench-results-bundles.test.ts). ' +
        'Import the engine bundles (bench/results/engine-gpu-*.json, tp-gpu-*.json, cpu-engine.json) instead.',
    );
  if (kind === 'flashlab.bench.cpu-engine')
    throw new BenchImportError(
      `${file} is a CPU engine bundle of the first edition (kind flashlab.bench.cpu-engine): it has no per-repeat ` +
        `data ('measurements') and no configurations to import. Regenerate it with ${REGENERATE['cpu-engine']}.`,
    );
  if (format !== 'flashlab-engine-bench/1')
    throw new BenchImportError(
      `${file}: unknown benchmark format '${String(format)}' (this flashlab reads flashlab-engine-bench/1)`,
    );
  if (kind === 'cpu-engine') {
    const parsed = CpuEngineBenchBundle.safeParse(json);
    if (!parsed.success)
      throw new BenchImportError(`${file} is not a valid CPU engine bench bundle:\n${issues(parsed.error)}`);
    return { kind: 'cpu', bundle: parsed.data };
  }
  const parsed = EngineBenchBundle.safeParse(json);
  if (!parsed.success)
    throw new BenchImportError(`${file} is not a valid engine bench bundle:\n${issues(parsed.error)}`);
  const env = EngineBenchEnvironment.safeParse(parsed.data.environment);
  if (!env.success)
    throw new BenchImportError(`${file} has a malformed environment record:\n${issues(env.error, ['environment'])}`);
  return { kind: 'cuda', bundle: parsed.data, env: env.data };
}

/** What every configuration of the bundle must agree with: the bundle's own header. */
function checkMeasurement(m: BenchMeasurement, i: number, b: AnyEngineBundle, file: string) {
  const where = `${file}: measurements.${i} (${m.section} · ${m.label})`;
  const bundle = b.bundle;
  const problems: string[] = [];
  const device = b.kind === 'cuda' ? 'cuda' : 'cpu';
  if (m.config.device !== device) problems.push(`config.device is '${m.config.device}' in a ${bundle.kind} bundle`);
  if (m.config.dtype !== bundle.dtype)
    problems.push(`config.dtype is '${m.config.dtype}' but the bundle ran in ${bundle.dtype}`);
  if (m.config.weights.kind !== bundle.weights)
    problems.push(`config.weights.kind is '${m.config.weights.kind}' but the bundle used ${bundle.weights} weights`);
  if (m.config.batchSize !== bundle.batch)
    problems.push(`config.batchSize is ${m.config.batchSize} but the bundle ran batch ${bundle.batch}`);
  if (b.kind === 'cuda') {
    const gpus = typeof bundle.gpus === 'number' ? bundle.gpus : 1;
    if (m.config.tp > gpus) problems.push(`config.tp is ${m.config.tp} but the bundle's host has ${gpus} GPU(s)`);
  }
  if (problems.length) throw new BenchImportError(`${where}: ${problems.join('; ')}`);
}

/** The summary object a measurement's `section` and index point at in a GPU driver's bundle, or a reason why not. */
function summaryAt(bundle: Record<string, unknown>, section: string, index: number): Record<string, unknown> | string {
  let node: unknown = bundle;
  for (const part of section.split('.')) {
    if (node === null || typeof node !== 'object') return `section '${section}' does not exist in the bundle`;
    node = (node as Record<string, unknown>)[part];
  }
  if (node === undefined) return `section '${section}' does not exist in the bundle`;
  const candidates = Array.isArray(node) ? node : [node];
  const found = candidates.find(
    (x): x is Record<string, unknown> =>
      !!x && typeof x === 'object' && (x as Record<string, unknown>).measurement === index,
  );
  return found ?? `section '${section}' has no summary with "measurement": ${index}`;
}

/** A GPU bundle's summaries are written from the same repeats as its measurements: they must agree (the drivers
 *  print 6 significant digits), so a hand-edited or spliced bundle is caught. */
function checkSummary(bundle: Record<string, unknown>, m: BenchMeasurement, i: number, file: string) {
  const where = `${file}: measurements.${i} (${m.section} · ${m.label})`;
  const summary = summaryAt(bundle, m.section, i);
  if (typeof summary === 'string') throw new BenchImportError(`${where}: ${summary}`);
  if (summary.label !== m.label)
    throw new BenchImportError(`${where}: its summary in ${m.section} is labelled '${String(summary.label)}'`);
  if (summary.reps !== m.repeats.length)
    throw new BenchImportError(
      `${where}: its summary counts ${String(summary.reps)} repeats, the measurement ${m.repeats.length}`,
    );
  const checks: [string, (r: RepeatFigures) => number][] = [
    ['ttftMs', (r) => r.prefillMs],
    ['totalMs', (r) => r.totalMs],
  ];
  for (const [key, figure] of checks) {
    const given = (summary[key] as { median?: unknown } | undefined)?.median;
    const expected = summarize(m.repeats.map(figure)).median;
    if (typeof given !== 'number' || Math.abs(given - expected) > 1e-5 * Math.abs(expected) + 1e-9)
      throw new BenchImportError(
        `${where}: ${m.section} says ${key} median ${String(given)} but its repeats give ${expected}`,
      );
  }
}

function environmentOf(b: AnyEngineBundle, m: BenchMeasurement): EnvironmentRecord {
  if (b.kind === 'cpu') {
    const e = b.bundle.environment;
    return {
      agentName: `bench:${b.bundle.kind}`,
      hostname: e.hostname,
      backend: 'cpu',
      cpuModel: e.cpu,
      cpuCores: e.cores,
      memoryBytes: e.memoryBytes,
      gpus: [],
      engineBuild: b.bundle.engineBuild,
      ...(e.gitCommit ? { gitCommit: e.gitCommit } : {}),
      nodeVersion: e.nodeVersion,
      startedAt: e.startedAt,
    };
  }
  const e = b.env;
  const ceilings = b.bundle.ceilings as { copyGBps?: unknown; fp16MatmulTflops?: unknown } | undefined;
  const gbps = typeof ceilings?.copyGBps === 'number' ? ceilings.copyGBps : undefined;
  const tflops = typeof ceilings?.fp16MatmulTflops === 'number' ? ceilings.fp16MatmulTflops : undefined;
  const cudaVersion = cudaVersionOf(e.cuda);
  return {
    agentName: `bench:${b.bundle.kind}`,
    hostname: e.host || 'unknown',
    backend: 'cuda',
    cpuModel: e.cpu || 'unknown',
    cpuCores: e.cpus ?? 0,
    memoryBytes: e.hostMemoryBytes ?? 0,
    gpus: gpusOf(e, m.config.tp),
    ...(cudaVersion ? { cudaVersion } : {}),
    engineBuild: b.bundle.engineBuild,
    ...(e.gitCommit ? { gitCommit: e.gitCommit } : {}),
    nodeVersion: 'n/a (C++ bench driver)',
    startedAt: e.startedAt,
    // The roofline needs both roofs; the engine drivers measure the copy bandwidth only.
    ...(gbps && tflops && gbps > 0 && tflops > 0 ? { ceilings: { tflops, gbps } } : {}),
  };
}

function unique<T>(values: T[]): T[] {
  return [...new Set(values)];
}

function specOf(
  name: string,
  tags: string[],
  notes: string,
  runs: readonly BenchImportRun[],
): ReturnType<typeof ExperimentSpec.safeParse> {
  const configs = runs.map((r) => r.result.config);
  const byNumber = (a: number, b: number) => a - b;
  return ExperimentSpec.safeParse({
    name,
    model: configs[0].model,
    weights: configs[0].weights,
    attention: unique(configs.map((c) => c.attention)).sort(),
    kvCache: unique(configs.map((c) => c.kvCache)),
    tp: unique(configs.map((c) => c.tp)).sort(byNumber),
    dtype: unique(configs.map((c) => c.dtype)),
    device: configs[0].device,
    batchSizes: unique(configs.map((c) => c.batchSize)).sort(byNumber),
    promptLengths: unique(configs.map((c) => c.promptLength)).sort(byNumber),
    newTokens: unique(configs.map((c) => c.newTokens)).sort(byNumber),
    warmup: Math.min(20, Math.max(...configs.map((c) => c.warmup))),
    repeats: Math.min(100, Math.max(...configs.map((c) => c.repeats))),
    tags,
    notes,
  });
}

/**
 * Validates an engine bench bundle and turns it into experiments and runs for the history. Throws a
 * BenchImportError naming the file and the problem for anything that cannot be imported.
 */
export function benchBundleToImport(json: unknown, file: string): BenchImport {
  if (!json || typeof json !== 'object' || Array.isArray(json))
    throw new BenchImportError(`${file} is not a benchmark bundle (not a JSON object)`);
  const b = parseBundle(json as Record<string, unknown>, file);
  const bundle = b.bundle;
  const regenerate = REGENERATE[bundle.kind] ?? 'its bench driver';
  if (!bundle.measurements)
    throw new BenchImportError(
      `${file} has no per-repeat data: the 'measurements' list (every timed configuration with its JobConfig and ` +
        "each repeat's figures) is missing, so its summaries cannot become runs of the history. The bundle was " +
        `written by a driver older than the importer. Regenerate it with ${regenerate}.`,
    );
  if (bundle.measurements.length === 0)
    throw new BenchImportError(
      `${file} has an empty 'measurements' list: nothing was timed. Regenerate it with ${regenerate}.`,
    );
  bundle.targets.forEach((t, i) => {
    if (t.met !== targetMet(t))
      throw new BenchImportError(
        `${file}: targets.${i}.met is ${t.met}, but "${t.name}" measured ${t.value} against ${t.better === 'lower' ? '<=' : '>='} ${t.target}`,
      );
  });

  const startedAt = b.kind === 'cuda' ? b.env.startedAt : b.bundle.environment.startedAt;
  const date = new Date(startedAt).toISOString().slice(0, 10);
  const gpus = b.kind === 'cuda' && typeof bundle.gpus === 'number' && bundle.gpus > 1 ? ` x${bundle.gpus}` : '';
  const baseName = `${bundle.kind} · ${bundle.card}${gpus} · ${date}`;
  const tags = unique([
    'bench',
    `bench:${bundle.kind}`,
    slug(bundle.card).slice(0, 50),
    ...(bundle.partial ? ['partial'] : []),
  ]);
  const commit = b.kind === 'cuda' ? b.env.gitCommit : b.bundle.environment.gitCommit;
  const notes = [
    `Imported from ${file}: ${bundle.kind} benchmark on ${bundle.card}${gpus}, ${bundle.dtype}, ${bundle.weights} weights, batch ${bundle.batch}; engine ${bundle.engineBuild}${commit ? `; git ${commit}` : ''}.`,
    bundle.partial ? 'PARTIAL: the benchmark was cut short; only what it measured is here.' : '',
    `Targets: ${bundle.targets.map(targetLine).join('; ')}.`,
    notMeasured(bundle).length ? `Not measured in this run: ${notMeasured(bundle).join('; ')}.` : '',
  ]
    .filter(Boolean)
    .join(' ')
    .slice(0, 5000);

  const skipped: string[] = [];
  // Grouped by what one experiment spec can hold (one model, one weights spec, one device), in bundle order.
  const groups = new Map<string, BenchImportRun[]>();
  bundle.measurements.forEach((m, i) => {
    checkMeasurement(m, i, b, file);
    if (b.kind === 'cuda') checkSummary(b.bundle, m, i, file);
    if (!m.cudaGraphs) {
      skipped.push(
        `measurements.${i} (${m.section} · ${m.label}): CUDA-graph decode was turned off; a run of the history has ` +
          'no CUDA-graphs switch (jobs decode with graphs on), so it would be counted as a repeat of the graphs-on ' +
          'configuration. It stays in the bundle.',
      );
      return;
    }
    const candidate = {
      config: m.config,
      repeats: m.repeats,
      summary: summarizeRepeats(m.repeats),
      environment: environmentOf(b, m),
      ...(m.sampleTokens?.length ? { sampleTokens: m.sampleTokens } : {}),
    };
    const result = RunResult.safeParse(candidate);
    if (!result.success)
      throw new BenchImportError(
        `${file}: measurements.${i} (${m.section} · ${m.label}) does not make a valid run:\n${issues(result.error, ['measurements', i])}`,
      );
    const key = JSON.stringify([m.config.model, m.config.weights, m.config.device]);
    groups.set(key, [...(groups.get(key) ?? []), { result: result.data, notes: `bench ${m.section} · ${m.label}` }]);
  });
  if (groups.size === 0)
    throw new BenchImportError(
      `${file}: every configuration was skipped, nothing to import:\n  ${skipped.join('\n  ')}`,
    );

  // One experiment per model. An experiment spec is a cross product of its lists and must pass the same checks as
  // one from the dashboard (e.g. every prompt length plus the longest new-token count within the model's
  // positions), so a model's runs that cannot share one spec are split into parts that can.
  const experiments: BenchImportExperiment[] = [];
  for (const runs of groups.values()) {
    const model = runs[0].result.config.model;
    const parts: BenchImportRun[][] = [];
    for (const run of runs) {
      const fits = parts.find((p) => specOf('check', tags, '', [...p, run]).success);
      if (fits) fits.push(run);
      else {
        const alone = specOf('check', tags, '', [run]);
        if (alone.success) parts.push([run]);
        // E.g. GPT-2 prefill of 1,024 tokens and 1 new token: the engine needs prompt + new - 1 positions, the
        // experiment spec asks for prompt + new; such a run has no experiment the dashboard would accept.
        else
          skipped.push(
            `${run.notes.replace(/^bench /, '')}: no dashboard experiment can hold it (${alone.error.issues.map((x) => x.message).join('; ')}). It stays in the bundle.`,
          );
      }
    }
    if (parts.length === 0) continue;
    parts.forEach((part, k) => {
      const name = `${baseName} · ${model}${parts.length > 1 ? ` (part ${k + 1} of ${parts.length})` : ''}`;
      const spec = specOf(name, tags, notes, part);
      if (!spec.success) throw new BenchImportError(`${file}: experiment '${name}':\n${issues(spec.error)}`);
      experiments.push({ spec: spec.data, runs: part });
    });
  }
  if (experiments.length === 0)
    throw new BenchImportError(`${file}: no configuration can be imported:\n  ${skipped.join('\n  ')}`);
  return {
    kind: bundle.kind,
    card: bundle.card,
    experiments,
    skipped,
    targets: bundle.targets,
    partial: bundle.partial,
  };
}
