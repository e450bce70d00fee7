// `flashlab run plan.json --out results.json`: run an experiment plan on this machine without a dashboard.
import { readFile, rename, writeFile } from 'node:fs/promises';
import { parseArgs } from 'node:util';
import { parsePlan, runOffline } from '../agent/offline';
import { OfflineResults } from '../contracts/experiment';

const HELP = `usage: flashlab run PLAN.json --out RESULTS.json [--name NAME]

Runs every configuration of the plan's experiment here, with the same runner as an agent, and writes the
measurements to RESULTS.json ('flashlab import RESULTS.json' puts them into a dashboard's history). Each measured
repeat of a tensor-parallel configuration (tp > 1) also carries where its last decode token's time went: compute,
all-reduce, and all-reduce per layer ("tpBreakdown").

PLAN.json: {"experiment": {"name": "...", "model": "gpt2", "attention": ["naive", "fa2"], "kvCache": [true],
            "tp": [1], "dtype": ["fp32"], "device": "cpu", "batchSizes": [1], "promptLengths": [128],
            "newTokens": [64], "warmup": 1, "repeats": 3}}

  --out FILE     where to write the results (required)
  --name NAME    the machine's name in the results' environment records (default: host name + " (offline)")

Exits 0 when every configuration ran, 1 when some failed (they are listed in the file's "failures").`;

export async function main(argv: string[]): Promise<number> {
  const { values, positionals } = parseArgs({
    args: argv,
    options: { out: { type: 'string', short: 'o' }, name: { type: 'string' }, help: { type: 'boolean', short: 'h' } },
    allowPositionals: true,
    strict: true,
  });
  if (values.help) {
    process.stdout.write(`${HELP}\n`);
    return 0;
  }
  if (positionals.length !== 1)
    throw new Error('give exactly one plan file: flashlab run plan.json --out results.json');
  if (!values.out) throw new Error('--out is required: where to write the results');
  const planPath = positionals[0];
  let json: unknown;
  try {
    json = JSON.parse(await readFile(planPath, 'utf8'));
  } catch (err) {
    throw new Error(`cannot read the plan ${planPath}: ${(err as Error).message}`);
  }
  const experiment = parsePlan(json);

  const controller = new AbortController();
  const onSignal = () => controller.abort();
  process.once('SIGINT', onSignal);
  process.once('SIGTERM', onSignal);
  const say = (text: string) => process.stderr.write(`${text}\n`);
  const results = await runOffline(experiment, {
    signal: controller.signal,
    ...(values.name ? { agentName: values.name } : {}),
    onJob: (i, total, c, state, detail) => {
      const what = `${c.model} ${c.attention} kv=${c.kvCache ? 'on' : 'off'} tp=${c.tp} ${c.dtype} batch=${c.batchSize} prompt=${c.promptLength} new=${c.newTokens}`;
      say(`[${i + 1}/${total}] ${state === 'start' ? 'measuring' : state} ${what}${detail ? `: ${detail}` : ''}`);
    },
    log: (_level, text) => say(`  ${text}`),
  });
  process.off('SIGINT', onSignal);
  process.off('SIGTERM', onSignal);
  // The file we write must be one that import accepts.
  OfflineResults.parse(results);
  const tmp = `${values.out}.partial`;
  await writeFile(tmp, `${JSON.stringify(results, null, 2)}\n`);
  await rename(tmp, values.out);
  const total = results.runs.length + results.failures.length;
  say(
    `wrote ${values.out}: ${results.runs.length} runs, ${results.failures.length} failures${controller.signal.aborted ? ` (interrupted; ${total} of the plan's jobs ran)` : ''}`,
  );
  if (controller.signal.aborted) return 130;
  return results.failures.length > 0 ? 1 : 0;
}
