// `flashlab generate`: one run of the engine from the command line — a prompt (text or ids) in, tokens, text,
// timings and memory out; with --json one machine-readable object (what the reference tests compare).
import { parseArgs } from 'node:util';
import { AttentionMethod, DeviceKind, Dtype, type Sampling } from '../contracts/engine';
import { KNOWN_MODELS, type ModelConfig } from '../contracts/models';
import type { Engine, GenerateResult } from '../native/engine';
import { openCheckpoint } from '../native/loaders/index';
import { chatInputIds, encodePrompt, loadTokenizer, type Tokenizer } from '../native/tokenizers/index';

const USAGE = `usage: flashlab generate (--model NAME [--weights random|DIR] [--seed N] | --model-dir DIR)
                         (--prompt TEXT ... | --input-ids "1,2,3;4,5,6") --max-new-tokens N [options]

model
  --model NAME             ${Object.keys(KNOWN_MODELS).join(' | ')}
  --weights random|DIR     seeded random weights (default) or a Hugging Face checkpoint directory
  --seed N                 seed of the random weights and of sampling (default 0)
  --model-dir DIR          a checkpoint directory (config.json + safetensors or pytorch_model*.bin); its
                           config decides the model
input
  --prompt TEXT            text, encoded with the model's tokenizer (ChatGLM2: after [gMASK] sop, as THUDM's
                           tokenizer does); repeat for a batch of rows
  --chat                   wrap each prompt as one chat turn (ChatGLM2's [Round 1] format, GPT-2 a transcript)
  --input-ids IDS          token ids: comma-separated, rows separated by ';'
  --max-new-tokens N       tokens to generate per row (required)
sampling (greedy unless --temperature, --top-k or --top-p is given)
  --greedy                 always take the most likely token
  --temperature T  --top-k K (0 = off)  --top-p P  --repetition-penalty R
  --stop-token ID          stop a row when it generates ID (repeatable); --stop-at-eos adds the tokenizer's EOS
method
  --attention naive|fa1|fa2   (default fa2)      --kv-cache on|off   (default on)
  --tp N                      (default 1)        --device cpu|cuda   (default cpu)
  --dtype fp32|fp16|bf16      (default fp32)     --threads N         (CPU threads, default all)
output
  --json                   print one JSON object: tokens (prompt + new ids per row), newTokens, text (generated
                           text per row, when the model has a real tokenizer), timings, peakMemBytes, memory,
                           stoppedBy, and with --dump-logits logitsLast (vocabulary logits at the last prompt
                           position, per row) and logitsSteps (logits of each later generated step, per row)
  --dump-logits            include logits in the JSON
Without --json the text streams as it is generated, followed by a line of figures.`;

/** A bad command line: the message names the flag; exit status 2. */
class UsageError extends Error {}

const options = {
  model: { type: 'string' },
  weights: { type: 'string' },
  seed: { type: 'string' },
  'model-dir': { type: 'string' },
  prompt: { type: 'string', multiple: true },
  'input-ids': { type: 'string' },
  chat: { type: 'boolean' },
  'max-new-tokens': { type: 'string' },
  greedy: { type: 'boolean' },
  temperature: { type: 'string' },
  'top-k': { type: 'string' },
  'top-p': { type: 'string' },
  'repetition-penalty': { type: 'string' },
  'stop-token': { type: 'string', multiple: true },
  'stop-at-eos': { type: 'boolean' },
  attention: { type: 'string' },
  'kv-cache': { type: 'string' },
  tp: { type: 'string' },
  device: { type: 'string' },
  dtype: { type: 'string' },
  threads: { type: 'string' },
  'dump-logits': { type: 'boolean' },
  json: { type: 'boolean' },
  help: { type: 'boolean', short: 'h' },
} as const;

function integer(flag: string, raw: string | undefined, min: number): number | undefined {
  if (raw === undefined) return undefined;
  const v = Number(raw);
  if (raw.trim() === '' || !Number.isSafeInteger(v) || v < min)
    throw new UsageError(`--${flag}: expected an integer >= ${min}, got '${raw}'`);
  return v;
}

function real(flag: string, raw: string | undefined, ok: (v: number) => boolean, range: string): number | undefined {
  if (raw === undefined) return undefined;
  const v = Number(raw);
  if (raw.trim() === '' || !Number.isFinite(v) || !ok(v))
    throw new UsageError(`--${flag}: expected a number ${range}, got '${raw}'`);
  return v;
}

function choice<T extends string>(flag: string, raw: string | undefined, allowed: readonly T[], fallback: T): T {
  if (raw === undefined) return fallback;
  if (!(allowed as readonly string[]).includes(raw))
    throw new UsageError(`--${flag}: expected one of ${allowed.join(', ')}, got '${raw}'`);
  return raw as T;
}

function parseInputIds(raw: string): number[][] {
  const rows = raw.split(';').map((r) => r.trim());
  return rows.map((row, i) => {
    if (row === '') throw new UsageError(`--input-ids: row ${i + 1} is empty`);
    return row.split(',').map((tok) => {
      const t = tok.trim();
      const v = Number(t);
      if (t === '' || !Number.isSafeInteger(v) || v < 0)
        throw new UsageError(`--input-ids: '${t}' in row ${i + 1} is not a token id`);
      return v;
    });
  });
}

interface Plan {
  model: string | ModelConfig;
  weights: string;
  checkpointDir: string | undefined;
  config: ModelConfig;
  seed: number;
  prompts: string[] | undefined;
  chat: boolean;
  inputIds: number[][] | undefined;
  maxNewTokens: number;
  sampling: Partial<Sampling>;
  stopAtEos: boolean;
  attention: AttentionMethod;
  kvCache: boolean;
  tp: number;
  device: DeviceKind;
  dtype: Dtype;
  threads: number | undefined;
  json: boolean;
  dumpLogits: boolean;
}

async function plan(argv: string[]): Promise<Plan | 'help'> {
  let values: ReturnType<
    typeof parseArgs<{ options: typeof options; args: string[]; strict: true; allowPositionals: false }>
  >['values'];
  try {
    ({ values } = parseArgs({ args: argv, options, strict: true, allowPositionals: false }));
  } catch (err) {
    throw new UsageError((err as Error).message);
  }
  if (values.help) return 'help';

  const modelName = values.model;
  const modelDir = values['model-dir'];
  if (modelName && modelDir)
    throw new UsageError(
      '--model and --model-dir exclude each other: --model-dir takes the model from its config.json',
    );
  if (!modelName && !modelDir) throw new UsageError('--model or --model-dir is required');
  if (modelDir && values.weights)
    throw new UsageError('--weights goes with --model; --model-dir already names the weights');
  let config: ModelConfig | undefined;
  let weights = 'random';
  let checkpointDir: string | undefined;
  if (modelName) {
    const known = KNOWN_MODELS[modelName];
    if (!known)
      throw new UsageError(`--model: unknown model '${modelName}' (known: ${Object.keys(KNOWN_MODELS).join(', ')})`);
    config = known;
    weights = values.weights ?? 'random';
    if (weights === '') throw new UsageError('--weights: expected random or a checkpoint directory');
    checkpointDir = weights === 'random' ? undefined : weights;
  }
  if (modelDir) checkpointDir = modelDir;
  if (checkpointDir) {
    // The checkpoint's own config decides the sizes; it is validated (and its files checked) here, before any work.
    const ck = await openCheckpoint(checkpointDir);
    await ck.close();
    if (modelName && ck.family !== KNOWN_MODELS[modelName].family) {
      throw new UsageError(
        `--weights: ${checkpointDir} holds a ${ck.family} checkpoint, but --model ${modelName} is ${KNOWN_MODELS[modelName].family}`,
      );
    }
    config = ck.config;
    weights = checkpointDir;
  }
  if (!config) throw new UsageError('--model or --model-dir is required');

  const prompts = values.prompt;
  const idsRaw = values['input-ids'];
  if (prompts && idsRaw !== undefined) throw new UsageError('--prompt and --input-ids exclude each other');
  if (!prompts && idsRaw === undefined) throw new UsageError('--prompt or --input-ids is required');
  if (values.chat && !prompts) throw new UsageError('--chat formats --prompt text; it does not apply to --input-ids');
  const maxNewTokens = integer('max-new-tokens', values['max-new-tokens'], 1);
  if (maxNewTokens === undefined) throw new UsageError('--max-new-tokens is required');

  const temperature = real('temperature', values.temperature, (v) => v >= 0 && v <= 10, 'in [0, 10]');
  const topK = integer('top-k', values['top-k'], 0);
  const topP = real('top-p', values['top-p'], (v) => v > 0 && v <= 1, 'in (0, 1]');
  const repetitionPenalty = real(
    'repetition-penalty',
    values['repetition-penalty'],
    (v) => v >= 0.01 && v <= 10,
    'in [0.01, 10]',
  );
  const samplingFlags = [
    temperature !== undefined && '--temperature',
    topK !== undefined && '--top-k',
    topP !== undefined && '--top-p',
  ].filter(Boolean);
  if (values.greedy && samplingFlags.length) throw new UsageError(`--greedy contradicts ${samplingFlags.join(', ')}`);
  const seed = integer('seed', values.seed, 0) ?? 0;
  const stopTokens = (values['stop-token'] ?? []).map((s) => integer('stop-token', s, 0) as number);
  const sampling: Partial<Sampling> = {
    greedy: samplingFlags.length === 0,
    seed,
    stopTokens,
    ...(temperature !== undefined ? { temperature } : {}),
    ...(topK !== undefined ? { topK } : {}),
    ...(topP !== undefined ? { topP } : {}),
    ...(repetitionPenalty !== undefined ? { repetitionPenalty } : {}),
  };
  for (const id of stopTokens) {
    if (id >= config.vocabSize)
      throw new UsageError(`--stop-token: ${id} is outside ${config.name}'s vocabulary of ${config.vocabSize}`);
  }

  return {
    model: modelName && !checkpointDir ? modelName : config,
    weights,
    checkpointDir,
    config,
    seed,
    prompts,
    chat: values.chat ?? false,
    inputIds: idsRaw !== undefined ? parseInputIds(idsRaw) : undefined,
    maxNewTokens,
    sampling,
    stopAtEos: values['stop-at-eos'] ?? false,
    attention: choice('attention', values.attention, AttentionMethod.options, 'fa2'),
    kvCache: choice('kv-cache', values['kv-cache'], ['on', 'off'] as const, 'on') === 'on',
    tp: integer('tp', values.tp, 1) ?? 1,
    device: choice('device', values.device, DeviceKind.options, 'cpu'),
    dtype: choice('dtype', values.dtype, Dtype.options, 'fp32'),
    threads: integer('threads', values.threads, 1),
    json: values.json ?? false,
    dumpLogits: values['dump-logits'] ?? false,
  };
}

/** The prompt rows as ids, checked against the model's vocabulary and positions. */
function promptRows(p: Plan, tokenizer: Tokenizer): number[][] {
  const flag = p.prompts ? '--prompt' : '--input-ids';
  const rows = p.prompts
    ? p.prompts.map((t) =>
        p.chat ? chatInputIds(tokenizer, [{ role: 'user', content: t }]) : encodePrompt(tokenizer, t),
      )
    : (p.inputIds as number[][]);
  for (const [i, row] of rows.entries()) {
    if (row.length === 0) throw new UsageError(`${flag}: row ${i + 1} encodes to no tokens`);
    const bad = row.find((id) => id >= p.config.vocabSize);
    if (bad !== undefined) {
      const hint = p.prompts ? ` (the tokenizer is ${tokenizer.source}; pass --input-ids instead)` : '';
      throw new UsageError(
        `${flag}: token id ${bad} in row ${i + 1} is outside ${p.config.name}'s vocabulary of ${p.config.vocabSize}${hint}`,
      );
    }
    if (row.length + p.maxNewTokens > p.config.maxPositions) {
      throw new UsageError(
        `${flag} + --max-new-tokens: ${row.length} prompt tokens + ${p.maxNewTokens} new ones exceed ${p.config.name}'s ${p.config.maxPositions} positions`,
      );
    }
  }
  // The engine runs rectangular batches (no padding or attention masks): every row must have one length.
  const lengths = [...new Set(rows.map((r) => r.length))];
  if (lengths.length > 1) {
    throw new UsageError(
      `${flag}: rows have different lengths in tokens (${lengths.join(', ')}); a batch needs rows of one length`,
    );
  }
  return rows;
}

function figuresLine(out: GenerateResult): string {
  const t = out.timings;
  const mib = (b: number) => `${(b / 2 ** 20).toFixed(1)} MiB`;
  return [
    `prefill ${t.prefillMs.toFixed(1)} ms`,
    `decode ${t.tpotMs.toFixed(2)} ms/token`,
    `total ${t.totalMs.toFixed(1)} ms`,
    `${t.tokensPerSec.toFixed(1)} tokens/s`,
    `peak ${mib(out.peakMemBytes)} (weights ${mib(out.memory.weightsBytes)}, KV cache ${mib(out.memory.kvCacheBytes)})`,
    `stopped by ${out.stoppedBy}`,
  ].join(' · ');
}

export async function main(argv: string[]): Promise<number> {
  let p: Plan | 'help';
  try {
    p = await plan(argv);
  } catch (err) {
    process.stderr.write(`flashlab generate: ${(err as Error).message}\n`);
    if (err instanceof UsageError) process.stderr.write("run 'flashlab generate --help' for the options\n");
    return err instanceof UsageError ? 2 : 1;
  }
  if (p === 'help') {
    process.stdout.write(`${USAGE}\n`);
    return 0;
  }

  const abort = new AbortController();
  const onSignal = () => abort.abort();
  process.once('SIGINT', onSignal);
  process.once('SIGTERM', onSignal);
  // A reader that goes away (`| head`) ends the run quietly instead of crashing on EPIPE; the handler stays
  // installed because the last write may fail after main has returned.
  let stdoutClosed = false;
  const onStdoutError = (err: NodeJS.ErrnoException) => {
    if (err.code !== 'EPIPE') return;
    stdoutClosed = true;
    abort.abort();
  };
  process.stdout.on('error', onStdoutError);
  let engine: Engine | undefined;
  try {
    const tokenizer = await loadTokenizer({
      family: p.config.family,
      ...(p.checkpointDir ? { dir: p.checkpointDir } : {}),
    });
    const realTokenizer = tokenizer.kind !== 'bytes';
    if (!realTokenizer && (p.prompts || !p.json)) {
      process.stderr.write(`flashlab generate: note: ${tokenizer.source}\n`);
    }
    let rows: number[][];
    try {
      rows = promptRows(p, tokenizer);
    } catch (err) {
      if (!(err instanceof UsageError)) throw err;
      process.stderr.write(`flashlab generate: ${err.message}\n`);
      return 2;
    }
    const stopTokens = [...new Set([...(p.sampling.stopTokens ?? []), ...(p.stopAtEos ? [tokenizer.eosTokenId] : [])])];
    const longest = Math.max(...rows.map((r) => r.length));

    const { Engine } = await import('../native/engine');
    engine = await Engine.create({
      model: p.model,
      weights: p.weights,
      seed: p.seed,
      dtype: p.dtype,
      device: p.device,
      tp: p.tp,
      maxBatch: rows.length,
      maxSeqLen: longest + p.maxNewTokens,
      ...(p.threads ? { threads: p.threads } : {}),
    });

    // Streaming text is shown for a single row; a batch prints each row's text at the end.
    const streaming = !p.json && rows.length === 1;
    const stream = tokenizer.createStreamDecoder();
    // The prompt goes through the stream decoder too, so the first new token is decoded in its context
    // (SentencePiece drops the leading space of a piece that starts a decode).
    if (streaming) process.stdout.write(stream.push(rows[0]));
    const out = await engine.generate({
      inputIds: rows,
      maxNewTokens: p.maxNewTokens,
      attention: p.attention,
      kvCache: p.kvCache,
      sampling: { ...p.sampling, stopTokens },
      signal: abort.signal,
      dumpLogits: p.dumpLogits,
      ...(streaming
        ? { onTokens: (_step: number, tokens: number[]) => process.stdout.write(stream.push(tokens[0])) }
        : {}),
    });

    if (p.json) {
      const result: Record<string, unknown> = {
        model: p.config.name,
        tokens: out.tokens,
        newTokens: out.newTokens,
        ...(realTokenizer ? { text: out.newTokens.map((ids) => tokenizer.decode(ids)) } : {}),
        timings: out.timings,
        peakMemBytes: out.peakMemBytes,
        memory: out.memory,
        stoppedBy: out.stoppedBy,
        ...(out.logitsLast ? { logitsLast: out.logitsLast.map((l) => Array.from(l)) } : {}),
        ...(out.logitsSteps ? { logitsSteps: out.logitsSteps.map((row) => row.map((l) => Array.from(l))) } : {}),
      };
      process.stdout.write(`${JSON.stringify(result)}\n`);
    } else {
      if (streaming) process.stdout.write(`${stream.flush()}\n`);
      else
        for (const [i, ids] of out.tokens.entries()) process.stdout.write(`[row ${i + 1}] ${tokenizer.decode(ids)}\n`);
      process.stdout.write(`${figuresLine(out)}\n`);
    }
    return 0;
  } catch (err) {
    const e = err as Error;
    // like any Unix filter whose reader went away: stop quietly with SIGPIPE's status
    if (stdoutClosed) return 141;
    process.stderr.write(`flashlab generate: ${e.name === 'AbortError' ? 'interrupted' : e.message}\n`);
    return e.name === 'AbortError' ? 130 : 1;
  } finally {
    engine?.dispose();
    process.off('SIGINT', onSignal);
    process.off('SIGTERM', onSignal);
  }
}
