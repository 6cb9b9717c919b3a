// Where the model's attention meets context parallelism: with a hook set, each rank holds a
// share of every sequence (parallel/context_parallel.ts implements it with ring attention over
// the zigzag layout); without one the model attends over the tokens it has, as one process.
import type { AttentionOptions } from '../backend/backend.js';
import type { Tensor } from '../tensor/tensor.js';

export interface AttentionHook {
  /** Ranks one sequence is split over (the whole sequence has cp·S tokens for S local ones). */
  readonly cp: number;
  /** The global position in its sequence of each of the S local tokens (the RoPE rows). */
  positions(S: number): readonly number[];
  /**
   * Causal attention of the whole sequences this rank's tokens belong to: the local qNope
   * [B,S,H,Dn], qPe [B,S,H,Dr], kNope [B,S,H,Dn], kPe [B,S,1,Dr], v [B,S,H,Dv]; returns o
   * [B,S,H,Dv] (differentiable).
   */
  attention(qNope: Tensor, qPe: Tensor, kNope: Tensor, kPe: Tensor, v: Tensor, opts: AttentionOptions): Tensor;
  /**
   * Sums per-sequence expert counts i32 [B, E] in place over the ranks holding the other parts
   * of the same sequences (the "sequence" load-balance form).
   */
  sumSequenceCounts(counts: Tensor): void;
}
