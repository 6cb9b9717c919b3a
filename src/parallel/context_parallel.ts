// Context parallelism's side of the model's AttentionHook: the rank's tokens are its zigzag
// share of each sequence (zigzag.ts), attention is the ring over the cp group
// (ring_attention.ts), and per-sequence expert counts are summed over the same group.
// The trainer sets `model.attentionHook = new ContextParallelAttention(groups.cp)` when cp > 1
// and feeds each rank zigzagSplit of its micro-batch (ids and labels), with the label count of
// the whole micro-batch so that the cross-entropy summed over cp is the whole sequence's mean.
import type { AttentionOptions } from '../backend/backend.js';
import type { AttentionHook } from '../models/attention_hook.js';
import type { Tensor } from '../tensor/tensor.js';
import type { Communicator } from './communicator.js';
import { ringMlaAttention, ringOptions } from './ring_attention.js';
import { zigzagPositions } from './zigzag.js';

export class ContextParallelAttention implements AttentionHook {
  constructor(readonly comm: Communicator) {}

  get cp(): number { return this.comm.size; }

  positions(S: number): readonly number[] {
    return zigzagPositions(S * this.comm.size, this.comm.size, this.comm.rank);
  }

  attention(qNope: Tensor, qPe: Tensor, kNope: Tensor, kPe: Tensor, v: Tensor, opts: AttentionOptions): Tensor {
    return ringMlaAttention(qNope, qPe, kNope, kPe, v, ringOptions(opts), this.comm).o;
  }

  sumSequenceCounts(counts: Tensor): void {
    this.comm.allReduce(counts, 'sum');
  }
}
