// Lazily zeroed gradients: "the first gradient write of a step overwrites". A whole parameter's
// gradient is accumulated over a step's micro-batches and must start each step at zero. Rather
// than writing zeros after the optimizer (4 of the 34 bytes per parameter of the default recipe's
// fused Adam pass) and then having every weight-gradient product read those zeros back
// (beta = 1, 4 bytes more), the gradient is marked here as logically zero: its memory may hold
// anything (last step's values). The first op that writes it this step asks claimGradBeta and
// writes with beta = 0, which clears the mark; later writes accumulate.
//
// The mark belongs to the gradient tensor object (Param.grad, which is also its leaf's `grad`),
// not to its storage: whole parameters' gradients are views of shared slabs (nn/param_arena.ts).
// A WeakSet, so a disposed parameter leaves nothing behind. Who marks: the trainer after the
// optimizer (which it then asks to leave the gradients alone) and Param at construction. Who
// reads a gradient other than through the writers (the trainer's gradient norm, the optimizer)
// calls settleGrad first (the trainer, for every whole gradient before the norm, which the
// optimizer follows): a gradient no op wrote this step (an unused parameter) is then filled with
// zeros, once. A sharded parameter's gradient (parallel/fsdp.ts) is never marked: the sharded
// layout zeroes its own buffers.
import { backendOf } from '../backend/backend.js';
import type { Tensor } from '../tensor/tensor.js';
import { forgetGradSquares } from './grad_squares.js';

const pending = new WeakSet<Tensor>();

/** Marks grad as logically zero: its next write overwrites it (see the file header). */
export function markGradZero(grad: Tensor): void {
  forgetGradSquares(grad);
  pending.add(grad);
}

/** Whether grad is logically zero and not yet written since it was marked. */
export function isGradZeroPending(grad: Tensor): boolean {
  return pending.has(grad);
}

/**
 * The beta of a write into grad that covers every element of it: 0 (overwrite) when grad is
 * pending, which clears the mark, so the caller must then write; 1 (accumulate) otherwise.
 * Either way the write to come makes any record of grad's squares stale (grad_squares.ts).
 */
export function claimGradBeta(grad: Tensor): 0 | 1 {
  forgetGradSquares(grad);
  return pending.delete(grad) ? 0 : 1;
}

/** Makes a pending gradient's memory hold its logical zeros (for writers that can only add, and for readers). */
export function settleGrad(grad: Tensor): void {
  if (!pending.delete(grad)) return;
  forgetGradSquares(grad);
  backendOf(grad).fill(grad, 0);
}
