// Chat requests from the playground: one answer at a time on a dedicated engine (a benchmark may be running on
// its own), each cancellable, each ended with agent.chatEnd whatever happens.
import type { ChatEnd, ChatRequest } from '../contracts/agent';
import type { AgentApi } from './connection';
import { EngineCache } from './engine-cache';
import type { Logger } from './log';
import { runChat } from './runners/chat';

const MAX_WAITING = 8;

export class ChatSessions {
  private readonly engines = new EngineCache();
  private readonly controllers = new Map<string, AbortController>();
  private chain: Promise<void> = Promise.resolve();

  constructor(
    private readonly api: AgentApi,
    private readonly logger: Logger,
  ) {}

  start(req: ChatRequest): void {
    if (this.controllers.has(req.requestId)) return; // the same request delivered twice (event replay)
    if (this.controllers.size >= MAX_WAITING) {
      void this.end({
        requestId: req.requestId,
        ok: false,
        error: `the agent has ${MAX_WAITING} chat requests waiting; try again shortly`,
        stoppedBy: 'error',
      });
      return;
    }
    const controller = new AbortController();
    this.controllers.set(req.requestId, controller);
    this.chain = this.chain
      .then(() => this.answer(req, controller.signal))
      .finally(() => this.controllers.delete(req.requestId));
  }

  cancel(requestId: string): void {
    this.controllers.get(requestId)?.abort();
  }

  cancelAll(): void {
    for (const c of this.controllers.values()) c.abort();
  }

  idle(): Promise<void> {
    return this.chain;
  }

  dispose(): void {
    this.engines.dispose();
  }

  private async answer(req: ChatRequest, signal: AbortSignal): Promise<void> {
    const tag = `[chat ${req.requestId}]`;
    let end: ChatEnd;
    try {
      if (signal.aborted) throw Object.assign(new Error('cancelled'), { name: 'AbortError' });
      this.logger.log(
        'info',
        `${tag} ${req.model} ${req.attention} kv=${req.kvCache ? 'on' : 'off'} tp=${req.tp}, up to ${req.maxNewTokens} tokens`,
      );
      end = await runChat(req, { engines: this.engines, signal, send: (d) => this.api.chatDelta(d) });
      this.logger.log('info', `${tag} ${end.newTokens} tokens, ${end.tokensPerSec?.toFixed(1)} tok/s`);
    } catch (err) {
      const aborted = signal.aborted || (err as Error).name === 'AbortError';
      if (!aborted) {
        this.logger.log('warn', `${tag} failed: ${(err as Error).message}`);
        // An engine error may leave the engine unusable; the next chat loads a fresh one.
        this.engines.dispose();
      }
      end = aborted
        ? { requestId: req.requestId, ok: false, stoppedBy: 'cancelled', error: 'cancelled' }
        : { requestId: req.requestId, ok: false, stoppedBy: 'error', error: (err as Error).message };
    }
    await this.end(end);
  }

  private async end(end: ChatEnd): Promise<void> {
    await this.api
      .chatEnd(end)
      .catch((err: unknown) =>
        this.logger.log('warn', `[chat ${end.requestId}] could not send its end: ${(err as Error).message}`),
      );
  }
}
