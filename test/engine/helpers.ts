// Shared by the engine tests: fixture references and fp32 comparison.
import { readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const here = dirname(fileURLToPath(import.meta.url));

export const FIXTURES = join(here, '..', 'fixtures');

export interface ReferenceCase {
  inputIds: number[];
  greedy: number[];
  logitsLast: number[];
  logitsSteps: number[][];
}
export interface Reference {
  kind: 'gpt2' | 'chatglm2';
  maxNewTokens: number;
  cases: ReferenceCase[];
}

export function readReference(name: string): Reference {
  return JSON.parse(readFileSync(join(FIXTURES, name, 'reference.json'), 'utf8')) as Reference;
}

/** max |a - b| / max |b|: the relative error of a whole logits vector. */
export function relErr(a: ArrayLike<number>, b: ArrayLike<number>): number {
  if (a.length !== b.length) throw new Error(`length ${a.length} vs ${b.length}`);
  let err = 0;
  let scale = 0;
  for (let i = 0; i < b.length; i++) {
    err = Math.max(err, Math.abs(a[i] - b[i]));
    scale = Math.max(scale, Math.abs(b[i]));
  }
  return err / scale;
}

/** Deterministic token ids in [0, vocab). */
export function randomIds(n: number, vocab: number, seed: number): number[] {
  let x = seed >>> 0;
  return Array.from({ length: n }, () => {
    x = (Math.imul(x, 1664525) + 1013904223) >>> 0;
    return x % vocab;
  });
}
