// Reductions of a few host numbers over a group (losses, token counts, peak memory for the log
// line), carried in one small f32 tensor of the run's backend: exact for integers up to 2^24,
// relative error below 1e-7 beyond.
import type { Backend } from '../backend/backend.js';
import { emptyTensor } from '../tensor/tensor.js';
import type { Communicator, ReduceOp } from './communicator.js';

export function allReduceValues(comm: Communicator, backend: Backend, values: readonly number[], op: ReduceOp): number[] {
  if (comm.size === 1 || values.length === 0) return [...values];
  const t = emptyTensor(backend, [values.length], 'f32');
  try {
    backend.write(t, Float32Array.from(values));
    comm.allReduce(t, op);
    return Array.from(backend.read(t));
  } finally {
    t.dispose();
  }
}
