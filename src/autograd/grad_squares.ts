// Gradient squares left by the op that wrote the gradients. The step's gradient norm adds up the
// squares of every gradient: a pass over all of them (sum_squares_multi, 9 GB on the bench model,
// at its byte floor). The expert weight product can add up the squares of what it writes while
// the values are still in registers, for almost nothing (kernels/grouped_gemm_tma_dw.cuh, "Gradient
// norm"), so when it overwrites a group of gradients (beta 0) it records here the group and one
// f32 [1] holding their Σ g². At the norm the trainer takes the records and sums the squares of
// the other gradients only.
//
// A record is true only while nothing has written its gradients since. Every write of a whole
// gradient goes through claimGradBeta or settleGrad's fill (lazy_grad_zero.ts), both of which
// forget the gradient's record, or through the grouped product itself, which replaces it; and
// forgetting one gradient drops its whole group (their one sum no longer holds). Marking a
// gradient zero forgets it too. So a second micro-batch, which accumulates (beta 1), leaves no
// record behind, and the norm reads those gradients as before.
//
// Who records: only while the trainer has turned recording on, which it does for runs whose norm
// reads whole gradients. Under FSDP the products write gathered full gradients and the norm reads
// the reduced shards, so a record there would name tensors the norm never sees.
import type { Tensor } from '../tensor/tensor.js';
import { keep } from '../tensor/scope.js';

export interface GradSquaresRecord {
  readonly grads: readonly Tensor[];
  /** f32 [1]: Σ of the squares of every element of grads; owned by the ledger. */
  readonly squares: Tensor;
}

const groupOf = new WeakMap<Tensor, GradSquaresRecord>();
const live = new Set<GradSquaresRecord>();
let recording = false;

/** Turns recording on or off, dropping every record (a step that threw may have left some). */
export function setGradSquaresRecording(on: boolean): void {
  recording = on;
  for (const g of takeGradSquares()) g.squares.dispose();
}

/** Whether a gradient writer should ask for the squares of what it writes. */
export function isRecordingGradSquares(): boolean {
  return recording;
}

/**
 * Records that squares (f32 [1], which the ledger now owns) holds Σ g² over every element of
 * grads, just written. Replaces the gradients' earlier records.
 */
export function recordGradSquares(grads: readonly Tensor[], squares: Tensor): void {
  for (const g of grads) forgetGradSquares(g);
  if (!recording) { squares.dispose(); return; }
  const group: GradSquaresRecord = { grads: [...grads], squares: keep(squares) };
  for (const g of grads) groupOf.set(g, group);
  live.add(group);
}

/** Drops grad's record (and its group's): about to be written, or marked zero. */
export function forgetGradSquares(grad: Tensor): void {
  const group = groupOf.get(grad);
  if (!group) return;
  for (const g of group.grads) groupOf.delete(g);
  live.delete(group);
  group.squares.dispose();
}

/**
 * Takes every record (no gradient is in two); their sums are the caller's now, to dispose. The
 * ledger is empty afterwards.
 */
export function takeGradSquares(): GradSquaresRecord[] {
  const groups = [...live];
  live.clear();
  for (const group of groups) for (const g of group.grads) groupOf.delete(g);
  return groups;
}
