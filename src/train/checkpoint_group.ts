// What checkpoints and the stop signal need of the ranks that share a run: their number, a
// barrier, and an all-reduce to agree on a few host numbers. parallel/'s Communicator has these
// members, so the world communicator is passed as it is; a single process uses SINGLE_PROCESS.
import type { Backend } from '../backend/backend.js';
import { emptyTensor, type Tensor } from '../tensor/tensor.js';

export interface CheckpointGroup {
  readonly rank: number;
  readonly size: number;
  /** Returns once every rank has called it. */
  barrier(): void;
  /** t = op over the ranks of t, in place; every rank gets the same bits. */
  allReduce(t: Tensor, op: 'sum' | 'max'): void;
}

/** The group of a run without a launcher. */
export const SINGLE_PROCESS: CheckpointGroup = {
  rank: 0,
  size: 1,
  barrier: () => {},
  allReduce: () => {},
};

/**
 * The element-wise maximum of `values` over the group, in one small f32 tensor of `backend`
 * (exact for integers up to 2^24, which is all that is carried: flags, codes, process ids).
 */
export function agreeMax(group: CheckpointGroup, backend: Backend, values: readonly number[]): number[] {
  if (group.size === 1 || values.length === 0) return [...values];
  const t = emptyTensor(backend, [values.length], 'f32');
  try {
    backend.write(t, Float32Array.from(values));
    group.allReduce(t, 'max');
    return Array.from(backend.read(t) as Float32Array);
  } finally {
    t.dispose();
  }
}
