// One chat answer: build the prompt from the messages in the model's format, generate with the requested
// method, stream the text back in small batches, and report the measured TTFT and tokens/s.
import type { ChatDelta, ChatEnd, ChatRequest } from '../../contracts/agent';
import { KNOWN_MODELS } from '../../contracts/models';
import { chatglm2Prompt, loadTokenizer } from '../../native/tokenizers';
import type { EngineCache } from '../engine-cache';

export interface ChatContext {
  engines: EngineCache;
  signal: AbortSignal;
  send: (delta: ChatDelta) => Promise<void>;
  /** How often streamed text is sent; tokens in between travel together. */
  flushMs?: number;
}

/** GPT-2 is no chat model: a plain transcript it can continue. */
function transcript(messages: ChatRequest['messages']): string {
  const label = { system: 'System', user: 'User', assistant: 'Assistant' } as const;
  return `${messages.map((m) => `${label[m.role]}: ${m.content}`).join('\n')}\n${label.assistant}:`;
}

export async function runChat(req: ChatRequest, ctx: ChatContext): Promise<ChatEnd> {
  const model = KNOWN_MODELS[req.model];
  if (!model) throw new Error(`request.model: unknown model '${req.model}'`);
  const dir = req.weights.kind === 'checkpoint' ? req.weights.path : undefined;
  const tokenizer = await loadTokenizer({ family: model.family, ...(dir ? { dir } : {}) });
  const prompt = model.family === 'chatglm2' ? chatglm2Prompt(req.messages) : transcript(req.messages);
  let inputIds = tokenizer.encode(prompt);
  // Keep the newest context when the conversation outgrows the model: the answer needs room too.
  const room = model.maxPositions - req.maxNewTokens;
  if (room < 1)
    throw new Error(
      `request.maxNewTokens: ${req.maxNewTokens} leaves no room for a prompt in ${model.name}'s ${model.maxPositions} positions`,
    );
  if (inputIds.length > room) inputIds = inputIds.slice(inputIds.length - room);

  const { engine } = await ctx.engines.get({
    model: req.model,
    weights: req.weights,
    dtype: req.dtype,
    device: req.device,
    tp: req.tp,
    maxBatch: 1,
    maxSeqLen: inputIds.length + req.maxNewTokens,
  });

  const stream = tokenizer.createStreamDecoder();
  let pendingIds: number[] = [];
  let pendingText = '';
  let sending: Promise<void> = Promise.resolve();
  const flush = () => {
    if (pendingIds.length === 0) return sending;
    const delta: ChatDelta = { requestId: req.requestId, tokenIds: pendingIds, text: pendingText };
    pendingIds = [];
    pendingText = '';
    // In order, one at a time; a lost delta must not stop the generation (chatEnd tells the outcome).
    sending = sending.then(() => ctx.send(delta)).catch(() => undefined);
    return sending;
  };
  const timer = setInterval(() => void flush(), ctx.flushMs ?? 50);
  const stopTokens = [
    ...new Set([...req.sampling.stopTokens, ...(tokenizer.eosTokenId !== undefined ? [tokenizer.eosTokenId] : [])]),
  ];
  try {
    const out = await engine.generate({
      inputIds: [inputIds],
      maxNewTokens: req.maxNewTokens,
      attention: req.attention,
      kvCache: req.kvCache,
      sampling: { ...req.sampling, stopTokens },
      signal: ctx.signal,
      onTokens: (_step, tokensPerRow) => {
        const id = tokensPerRow[0];
        if (id === undefined || stopTokens.includes(id)) return;
        pendingIds.push(id);
        pendingText += stream.push(id);
      },
    });
    pendingText += stream.flush();
    clearInterval(timer);
    await flush();
    const generated = out.newTokens[0]?.length ?? 0;
    return {
      requestId: req.requestId,
      ok: true,
      stoppedBy: out.stoppedBy === 'stop' ? 'eos' : 'maxTokens',
      prefillMs: out.timings.prefillMs,
      tokensPerSec: out.timings.tokensPerSec,
      tpotMs: out.timings.tpotMs,
      newTokens: generated,
    };
  } finally {
    clearInterval(timer);
    await flush();
  }
}
