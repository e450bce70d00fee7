// Signals: the first SIGTERM/SIGINT asks for an orderly stop, a second one for an immediate one.
export interface Stoppable {
  shutdown(): Promise<void>;
  forceStop(): Promise<void>;
}

export function handleSignals(target: Stoppable, log: (text: string) => void): () => void {
  let signals = 0;
  const onSignal = (signal: NodeJS.Signals) => {
    signals++;
    if (signals === 1) {
      log(`${signal}: finishing or handing back running work, then exiting (send it again to stop now)`);
      void target.shutdown();
    } else if (signals === 2) {
      log(`${signal} again: stopping now`);
      void target.forceStop();
    }
  };
  process.on('SIGTERM', onSignal);
  process.on('SIGINT', onSignal);
  return () => {
    process.off('SIGTERM', onSignal);
    process.off('SIGINT', onSignal);
  };
}
