// Deterministic byte-token batches for tests that train the tiny model without a data folder:
// the tokens of (step, micro-batch) are a fixed arithmetic pattern, so every run and every rank
// sees the same batches.
import type { BatchSource } from '../../src/train/trainer.js';

export function fixedBatches(vocabSize: number, microBatchSize: number, seqLen: number): BatchSource {
  const n = microBatchSize * seqLen;
  return {
    vocabSize,
    batch: (step, micro) => {
      const tok = (i: number) => (step * 7919 + micro * 104729 + i * 31) % 256;
      return { inputs: Int32Array.from({ length: n }, (_, i) => tok(i)), labels: Int32Array.from({ length: n }, (_, i) => tok(i + 1)) };
    },
  };
}
