// The agent process's parts put together: connection (with hello after every (re)connect), the work loop,
// chat sessions, and an orderly or immediate shutdown.
import { AGENT_CLOSE_CODES, type AgentEvent, type AgentInventory } from '../contracts/agent';
import { Engine } from '../native/engine';
import { sleep } from './backoff';
import { ChatSessions } from './chats';
import {
  type AgentApi,
  AgentConnection,
  type HelloAnswer,
  isAuthError,
  isTransportError,
  NotConnectedError,
} from './connection';
import { EngineCache } from './engine-cache';
import { collectInventory, environmentRecord } from './inventory';
import type { Logger } from './log';
import { runBenchmark } from './runners/benchmark';
import { Worker } from './worker';

export interface AgentOptions {
  url: string;
  token: string;
  name: string;
  maxJobs: number;
  /** Fallback lease poll when no 'work-available' event arrives. */
  pollMs: number;
  /** On SIGTERM, how long running jobs may take to finish before they are given back. */
  shutdownGraceMs: number;
  logger: Logger;
}

/** Exit codes of `flashlab agent`. */
export const EXIT = { ok: 0, forced: 1, authRefused: 3, refused: 4 } as const;

export class Agent {
  /** Resolves with the process exit code once the agent has stopped. */
  readonly exited: Promise<number>;
  private resolveExit!: (code: number) => void;
  private readonly conn: AgentConnection;
  private readonly worker: Worker;
  private readonly chats: ChatSessions;
  private readonly engines: EngineCache[] = [];
  private readonly exitController = new AbortController();
  private hello: HelloAnswer | undefined;
  private readyWaiters: Array<() => void> = [];
  private stopping: Promise<void> | undefined;
  private everConnected = false;
  private readonly api: AgentApi;
  private events: { unsubscribe(): void } | undefined;

  private constructor(
    private readonly opts: AgentOptions,
    private readonly inventory: AgentInventory,
  ) {
    this.exited = new Promise((resolve) => {
      this.resolveExit = resolve;
    });
    const log = opts.logger;
    this.conn = new AgentConnection({
      url: opts.url,
      token: opts.token,
      onOpen: () => void this.sayHello(),
      onClose: (code) => {
        if (this.closed) return;
        if (code === AGENT_CLOSE_CODES.revoked || code === AGENT_CLOSE_CODES.unauthorized) {
          this.fatal(
            EXIT.authRefused,
            `the dashboard closed the connection: this agent's token is ${code === AGENT_CLOSE_CODES.revoked ? 'revoked' : 'not accepted'}`,
          );
          return;
        }
        if (this.hello) log.log('warn', `connection to the dashboard lost (code ${code ?? '-'}); reconnecting`);
        this.hello = undefined;
      },
      onAuthRefused: (message) => this.fatal(EXIT.authRefused, `the dashboard refused this agent's token: ${message}`),
    });
    const api = this.gatedApi(this.conn.api);
    this.worker = new Worker({
      api,
      maxJobs: opts.maxJobs,
      pollMs: opts.pollMs,
      logger: log,
      jobDeps: (slot) => {
        this.engines[slot] ??= new EngineCache();
        const engines = this.engines[slot];
        return {
          runner: async (config, ctx) => {
            try {
              return await runBenchmark(config, { ...ctx, engines });
            } catch (err) {
              // After an engine error (not a cancel) its state is in doubt: the next job loads a fresh one.
              if (!ctx.signal.aborted) engines.dispose();
              throw err;
            }
          },
          environment: (config) => environmentRecord(this.inventory, config.device),
          renewEveryMs: this.hello?.renewEveryMs ?? 5_000,
          exitSignal: this.exitController.signal,
        };
      },
      onJobEnd: (job, outcome) => log.log('info', `job ${job.jobId}#${job.attempt} ended: ${outcome}`),
    });
    this.chats = new ChatSessions(api, log);
    this.api = api;
  }

  static async start(opts: AgentOptions): Promise<Agent> {
    const inventory = await collectInventory(opts.name, Engine.buildInfo());
    const gpus =
      inventory.gpus.map((g) => `${g.name} (${(g.memoryBytes / 2 ** 30).toFixed(0)} GiB)`).join(', ') || 'no GPUs';
    opts.logger.log(
      'info',
      `${inventory.name} on ${inventory.hostname}: ${inventory.cpu.model} x${inventory.cpu.cores}, ${gpus}, engine ${inventory.engine.version} (${inventory.engine.build}), backend ${inventory.backend}`,
    );
    const agent = new Agent(opts, inventory);
    agent.worker.start();
    return agent;
  }

  private async sayHello(): Promise<void> {
    const log = this.opts.logger;
    try {
      const answer = await this.conn.api.hello({ inventory: this.inventory });
      this.hello = answer;
      log.log(
        'info',
        `${this.everConnected ? 'reconnected' : 'connected'} to ${this.conn.url} as agent ${answer.agentId} (lease ${answer.leaseMs} ms)`,
      );
      this.everConnected = true;
      for (const wake of this.readyWaiters.splice(0)) wake();
      this.subscribeEvents();
      this.worker.poke();
    } catch (err) {
      // The socket closed under the hello: the next open says hello again.
      if (isTransportError(err)) return;
      if (isAuthError(err))
        this.fatal(EXIT.authRefused, `the dashboard refused this agent's token: ${(err as Error).message}`);
      else this.fatal(EXIT.refused, `the dashboard refused this agent's hello: ${(err as Error).message}`);
    }
  }

  /** One agent.events stream, opened after hello. tRPC re-sends it by itself after a reconnect; should the
   *  server end it with an error instead (e.g. it arrived before the new hello), it is opened again. */
  private subscribeEvents(): void {
    if (this.events || this.exitController.signal.aborted) return;
    const log = this.opts.logger;
    this.events = this.conn.api.events(
      (event) => this.onEvent(event),
      (err) => {
        this.events = undefined;
        if (isAuthError(err)) {
          this.fatal(EXIT.authRefused, `the dashboard refused this agent's token: ${(err as Error).message}`);
          return;
        }
        log.log('warn', `event stream ended: ${(err as Error).message}; reopening`);
        setTimeout(() => {
          if (this.hello) this.subscribeEvents();
        }, 1_000).unref();
      },
    );
  }

  private onEvent(event: AgentEvent): void {
    switch (event.type) {
      case 'work-available':
        this.worker.poke();
        break;
      case 'cancel':
        this.worker.cancel(event.jobId, event.attempt);
        break;
      case 'chat':
        if (this.stopping)
          void this.api
            .chatEnd({
              requestId: event.request.requestId,
              ok: false,
              error: 'the agent is shutting down',
              stoppedBy: 'error',
            })
            .catch(() => undefined);
        else this.chats.start(event.request);
        break;
      case 'chat-cancel':
        this.chats.cancel(event.requestId);
        break;
    }
  }

  /** Every call but hello waits until hello has been answered on the current connection. */
  private gatedApi(raw: AgentApi): AgentApi {
    const ready = async () => {
      if (this.hello) return;
      let timer: NodeJS.Timeout | undefined;
      await new Promise<void>((resolve, reject) => {
        this.readyWaiters.push(resolve);
        timer = setTimeout(() => reject(new NotConnectedError()), 10_000);
      }).finally(() => clearTimeout(timer));
    };
    const gated = {} as Record<string, unknown>;
    for (const [name, fn] of Object.entries(raw) as Array<[keyof AgentApi, (...args: unknown[]) => unknown]>) {
      gated[name] =
        name === 'events'
          ? fn
          : async (...args: unknown[]) => {
              await ready();
              return fn(...args);
            };
    }
    return gated as unknown as AgentApi;
  }

  /** SIGTERM: take no more work, let running jobs finish within the grace period (jobs that would take longer
   *  go back at once), then disconnect. */
  shutdown(graceMs = this.opts.shutdownGraceMs): Promise<void> {
    this.stopping ??= (async () => {
      const log = this.opts.logger;
      log.log('info', `shutting down: taking no more work (grace period ${Math.round(graceMs / 1000)} s)`);
      await this.worker.stopTaking();
      this.chats.cancelAll();
      for (const job of this.worker.activeJobs) {
        const left = job.estimatedRemainingMs();
        if (left > graceMs)
          job.stop({
            kind: 'give-back',
            reason: `agent shutting down; about ${Number.isFinite(left) ? `${Math.round(left / 1000)} s` : 'unknown time'} of work left`,
          });
        else
          log.log(
            'info',
            `[job ${job.ref.jobId}#${job.ref.attempt}] letting it finish (about ${Math.round(left / 1000)} s left)`,
          );
      }
      const timer = setTimeout(
        () => this.worker.stopAll({ kind: 'give-back', reason: 'agent shutting down; grace period over' }),
        graceMs,
      );
      await this.worker.idle();
      clearTimeout(timer);
      await this.chats.idle();
      await this.close(EXIT.ok);
    })();
    return this.stopping;
  }

  /** Second signal: give back what runs (if the dashboard answers within a moment) and stop now. */
  async forceStop(): Promise<void> {
    this.forced = true;
    this.opts.logger.log('warn', 'stopping now');
    this.worker.stopAll({ kind: 'give-back', reason: 'agent stopped' });
    this.chats.cancelAll();
    void this.worker.stopTaking();
    await Promise.race([this.worker.idle(), sleep(3_000)]);
    this.exitController.abort();
    await this.close(EXIT.forced);
  }

  private fatal(code: number, message: string): void {
    if (this.exitController.signal.aborted) return;
    this.opts.logger.log('error', message);
    this.exitController.abort();
    this.worker.stopAll({ kind: 'lease-lost', reason: message });
    this.chats.cancelAll();
    void (async () => {
      await this.worker.stopTaking();
      await Promise.race([this.worker.idle(), sleep(3_000)]);
      await this.close(code);
    })();
  }

  private closed = false;
  private forced = false;
  private async close(code: number): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    // The orderly shutdown may reach its end first once a second signal gave the jobs back: still a forced stop.
    if (this.forced && code === EXIT.ok) code = EXIT.forced;
    for (const cache of this.engines) cache?.dispose();
    this.chats.dispose();
    this.events?.unsubscribe();
    await this.conn.close().catch(() => undefined);
    this.resolveExit(code);
  }
}
