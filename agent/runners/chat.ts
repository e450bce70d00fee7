// One chat answer: build the prompt from the messages in the model's format, generate with the requested
// method, stream the text back in small batches, and report the measured TTFT and tokens/s.
import type { ChatDelta, ChatEnd, ChatRequest } from '../../contracts/agent';
import { KNOWN_MODELS } from '../../contracts/models';
import { chatInputIds, loadTokenizer } from '../../native/tokenizers';
import type { EngineCache } from '../engine-cache';

export interface ChatContext {
  engines: EngineCache;
  signal: AbortSignal;
  send: (delta: ChatDelta) => Promise<void>;
  /** How often streamed text is sent; tokens in between travel together. */
  flushMs?: number;
}

export async function runChat(req: ChatRequest, ctx: ChatContext): Promise<ChatEnd> {
  const model = KNOWN_MODELS[req.model];
  if (!model) throw new Error(`request.model: unknown model '${req.model}'`);
  const dir = req.weights.kind === 'checkpoint' ? req.weights.path : undefined;
  const tokenizer = await loadTokenizer({ family: model.family, ...(dir ? { dir } : {}) });
  let inputIds = chatInputIds(tokenizer, req.messages);
  // Keep the newest context when the conversation outgrows the model (the answer needs room too), and
  // ChatGLM2's [gMASK] sop prefix, without which it does not answer.
  const room = model.maxPositions - req.maxNewTokens;
  const keepHead = model.family === 'chatglm2' ? 2 : 0;
  if (room <= keepHead)
    throw new Error(
      `request.maxNewTokens: ${req.maxNewTokens} leaves no room for a prompt in ${model.name}'s ${model.maxPositions} positions`,
    );
  if (inputIds.length > room)
    inputIds = [...inputIds.slice(0, keepHead), ...inputIds.slice(inputIds.length - (room - keepHead))];

  const { engine } = await ctx.engines.get({
    model: req.model,
    weights: req.weights,
    dtype: req.dtype,
    device: req.device,
    tp: req.tp,
    maxBatch: 1,
    // Room for a growing conversation up front, so that the next turn does not reload the model.
    maxSeqLen: Math.min(model.maxPositions, Math.max(2048, inputIds.length + req.maxNewTokens)),
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
