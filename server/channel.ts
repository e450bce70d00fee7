// A push-to-pull queue for subscriptions: event handlers push, the async generator behind a tRPC subscription
// pulls. Listeners are attached before the first await so nothing emitted in between is lost.
export class Channel<T> {
  private readonly items: T[] = [];
  private wake: (() => void) | null = null;
  private closed = false;

  constructor(private readonly signal?: AbortSignal) {
    signal?.addEventListener('abort', () => this.close(), { once: true });
  }

  push(item: T): void {
    if (this.closed) return;
    this.items.push(item);
    this.wake?.();
  }

  /** Pushes unless an equal item is already waiting (coalesces "something changed" notices). */
  pushOnce(item: T, same: (a: T) => boolean): void {
    if (!this.items.some(same)) this.push(item);
  }

  close(): void {
    this.closed = true;
    this.wake?.();
  }

  async *[Symbol.asyncIterator](): AsyncGenerator<T> {
    while (true) {
      while (this.items.length) yield this.items.shift() as T;
      if (this.closed || this.signal?.aborted) return;
      await new Promise<void>((resolve) => {
        this.wake = resolve;
      });
      this.wake = null;
    }
  }
}
