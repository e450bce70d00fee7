// Loading a model costs far more than one benchmark repeat: consecutive jobs of the same model, weights, dtype,
// device and TP degree share one engine. A different key disposes the old engine before the new one loads
// (two 6B models do not fit one card side by side).
import type { DeviceKind, Dtype } from '../contracts/engine';
import type { WeightsSpec } from '../contracts/experiment';
import { Engine } from '../native/engine';

export interface EngineSpec {
  model: string;
  weights: WeightsSpec;
  dtype: Dtype;
  device: DeviceKind;
  tp: number;
  /** Capacity this use needs; an engine built with less is rebuilt. */
  maxBatch: number;
  maxSeqLen: number;
}

const keyOf = (s: EngineSpec) =>
  JSON.stringify([
    s.model,
    s.weights.kind === 'random' ? ['random', s.weights.seed] : ['checkpoint', s.weights.path],
    s.dtype,
    s.device,
    s.tp,
  ]);

export class EngineCache {
  private current: { key: string; engine: Engine; maxBatch: number; maxSeqLen: number } | undefined;

  /** The cached engine when it fits the spec, else a new one (the old one disposed first). */
  async get(spec: EngineSpec): Promise<{ engine: Engine; reused: boolean }> {
    const key = keyOf(spec);
    const c = this.current;
    if (c && c.key === key && c.maxBatch >= spec.maxBatch && c.maxSeqLen >= spec.maxSeqLen)
      return { engine: c.engine, reused: true };
    this.dispose();
    // Grow rather than shrink when the same model comes back bigger, so that alternating shapes do not reload.
    const maxBatch = Math.max(spec.maxBatch, c?.key === key ? c.maxBatch : 0);
    const maxSeqLen = Math.max(spec.maxSeqLen, c?.key === key ? c.maxSeqLen : 0);
    const engine = await Engine.create({
      model: spec.model,
      weights: spec.weights.kind === 'random' ? 'random' : spec.weights.path,
      ...(spec.weights.kind === 'random' ? { seed: spec.weights.seed } : {}),
      dtype: spec.dtype,
      device: spec.device,
      tp: spec.tp,
      maxBatch,
      maxSeqLen,
    });
    this.current = { key, engine, maxBatch, maxSeqLen };
    return { engine, reused: false };
  }

  /** Frees the engine's memory, e.g. after an engine error left it in doubt. */
  dispose(): void {
    const c = this.current;
    this.current = undefined;
    if (c) {
      try {
        c.engine.dispose();
      } catch {
        // already disposed by the engine itself after a fatal error
      }
    }
  }
}
