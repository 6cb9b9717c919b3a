// The all-to-all of rows as a differentiable op, for expert dispatch and combine: forward sends
// x's row blocks to the group's ranks; backward sends the output's gradient back along the same
// routes (the reverse all-to-all: the counts swapped), so every rank's input rows get the
// gradients of their copies wherever those went.
//
// Both directions are collectives: every rank of the group must record the op and run its
// backward in the same order, with any row count (zero included). A rank that receives no rows
// still records the node, so its backward still takes part in the reverse exchange.
import { backendOf } from '../backend/backend.js';
import { beginNode, linkOutputs } from '../autograd/tape.js';
import { emptyTensor, type Tensor } from '../tensor/tensor.js';
import type { Communicator } from './communicator.js';

/**
 * x [R, D] (contiguous, any float dtype) → out [Σ recvCounts, D] of x's dtype: x's first
 * sendCounts[0] rows go to rank 0, the next sendCounts[1] to rank 1, …; out holds recvCounts[p]
 * rows from each rank p in rank order. recvCounts[p] must equal rank p's sendCounts[this rank].
 */
export function allToAllRows(x: Tensor, sendCounts: readonly number[], recvCounts: readonly number[], comm: Communicator): Tensor {
  if (x.rank !== 2) throw new Error(`internal: allToAllRows of ${x} (rows [R, D] expected)`);
  const D = x.shape[1]!;
  const out = emptyTensor(backendOf(x), [recvCounts.reduce((a, b) => a + b, 0), D], x.dtype);
  comm.allToAll(out, x, sendCounts, recvCounts);
  const node = beginNode('allToAllRows', [x], 1);
  if (node) {
    const send = [...sendCounts], recv = [...recvCounts];
    node.rule = ([g]) => {
      // Gradients travel in x's dtype whatever dtype reached this node, so every rank sends
      // what its peers expect.
      let gs = g!;
      if (gs.dtype !== x.dtype) {
        gs = emptyTensor(backendOf(g!), g!.shape, x.dtype);
        backendOf(g!).copy(gs, g!);
      }
      const dx = emptyTensor(backendOf(gs), [x.shape[0]!, D], x.dtype);
      try {
        comm.allToAll(dx, gs, recv, send);
      } finally {
        if (gs !== g) gs.dispose();
      }
      return [dx];
    };
  }
  linkOutputs(node, [out]);
  return out;
}
