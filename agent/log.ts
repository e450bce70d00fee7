// The agent's own log (stderr, one line per event, job id in every job line) and the batched job log that
// goes to the dashboard with the job's lines.
import type { JobAttemptRef, LogLine } from '../contracts/agent';
import { isTransportError } from './connection';

export type Level = LogLine['level'];

export interface Logger {
  log(level: Level, text: string): void;
}

export function stderrLogger(prefix = 'agent'): Logger {
  return {
    log(level, text) {
      process.stderr.write(`${new Date().toISOString()} ${level.padEnd(5)} ${prefix}: ${text}\n`);
    },
  };
}

export const jobTag = (ref: JobAttemptRef) => `job ${ref.jobId}#${ref.attempt}`;

const MAX_LINE = 4000;
const MAX_BATCH = 200;
// Lines kept while the dashboard is unreachable; beyond this the oldest go, and the gap is said in the log.
const MAX_BUFFERED = 2000;

/** Collects a job's log lines and sends them in batches (every flushMs, or at once when a batch is full). */
export class JobLog {
  private buffer: LogLine[] = [];
  private dropped = 0;
  private timer: NodeJS.Timeout | undefined;
  private sending: Promise<void> = Promise.resolve();

  constructor(
    private readonly ref: JobAttemptRef,
    private readonly send: (lines: LogLine[]) => Promise<void>,
    private readonly local: Logger,
    private readonly flushMs = 1000,
  ) {}

  line(level: Level, text: string): void {
    const tagged = `[${jobTag(this.ref)}] ${text}`;
    this.local.log(level, tagged);
    this.buffer.push({ ts: new Date().toISOString(), level, text: tagged.slice(0, MAX_LINE) });
    if (this.buffer.length > MAX_BUFFERED) {
      this.dropped += this.buffer.length - MAX_BUFFERED;
      this.buffer.splice(0, this.buffer.length - MAX_BUFFERED);
    }
    if (this.buffer.length >= MAX_BATCH) void this.flush();
    else this.timer ??= setTimeout(() => void this.flush(), this.flushMs);
  }

  info(text: string) {
    this.line('info', text);
  }
  warn(text: string) {
    this.line('warn', text);
  }
  error(text: string) {
    this.line('error', text);
  }

  /** Sends what is buffered; lines that could not be sent because the connection is down stay for the next try. */
  flush(): Promise<void> {
    clearTimeout(this.timer);
    this.timer = undefined;
    this.sending = this.sending.then(async () => {
      while (this.buffer.length > 0) {
        if (this.dropped > 0) {
          this.buffer.unshift({
            ts: new Date().toISOString(),
            level: 'warn',
            text: `[${jobTag(this.ref)}] ${this.dropped} log lines dropped while the dashboard was unreachable`,
          });
          this.dropped = 0;
        }
        const batch = this.buffer.slice(0, MAX_BATCH);
        try {
          await this.send(batch);
          this.buffer.splice(0, batch.length);
        } catch (err) {
          if (isTransportError(err)) {
            this.timer ??= setTimeout(() => void this.flush(), this.flushMs * 2);
          } else {
            // Refused (stale attempt, job gone): these lines have nowhere to go.
            this.local.log('warn', `[${jobTag(this.ref)}] the dashboard refused log lines: ${(err as Error).message}`);
            this.buffer = [];
          }
          return;
        }
      }
    });
    return this.sending;
  }

  close(): void {
    clearTimeout(this.timer);
    this.timer = undefined;
  }
}
