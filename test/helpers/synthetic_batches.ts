// A BatchSource for training tests that need no data folder: sequence q of step `step`'s global
// batch (micro-batch `micro` holds q = micro·B … micro·B + B − 1) is a pure function of (seed,
// step, q), whatever the micro-batch size; labels are the inputs shifted by one, and odd
// sequences ignore their last label (so label counts differ between sequences).
import type { BatchSource } from '../../src/train/trainer.js';

export function syntheticBatches(opts: { vocab: number; seqLen: number; microBatch: number; seed?: number }): BatchSource {
  const { vocab, seqLen: S, microBatch: B } = opts;
  const seed = opts.seed ?? 1;
  const token = (step: number, q: number, i: number): number => {
    let h = Math.imul(i + 0x9e3779b9, 0x85ebca6b) ^ Math.imul(step + 1, 0xc2b2ae35) ^ Math.imul(q + 7, 0x27d4eb2f) ^ seed;
    h = Math.imul(h ^ (h >>> 15), 0x2c1b3c6d);
    h ^= h >>> 13;
    // Small token ids repeat more often, as in text.
    return (h >>> 0) % (1 + ((h >>> 8) % vocab));
  };
  return {
    vocabSize: vocab,
    batch: (step, micro) => {
      const inputs = new Int32Array(B * S), labels = new Int32Array(B * S);
      for (let b = 0; b < B; b++) {
        const q = micro * B + b;
        const seq = Array.from({ length: S + 1 }, (_, i) => token(step, q, i));
        for (let i = 0; i < S; i++) {
          inputs[b * S + i] = seq[i]!;
          labels[b * S + i] = i === S - 1 && q % 2 === 1 ? -100 : seq[i + 1]!;
        }
      }
      return { inputs, labels };
    },
  };
}
