// The canonical string of a measured configuration: runs that share it are repeats of one another, whichever
// experiment or agent produced them. Measurement settings (warm-up, repeat count) are not part of it.
import type { JobConfig } from '../../contracts/experiment';

export function configKey(c: JobConfig): string {
  const weights = c.weights.kind === 'random' ? `random:${c.weights.seed}` : `checkpoint:${c.weights.path}`;
  return [
    c.model,
    weights,
    c.attention,
    c.kvCache ? 'kv' : 'nokv',
    `tp${c.tp}`,
    c.dtype,
    c.device,
    `b${c.batchSize}`,
    `p${c.promptLength}`,
    `n${c.newTokens}`,
  ].join('|');
}
