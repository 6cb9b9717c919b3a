// The global-batch load-balance loss under data or expert parallelism: each micro-batch's
// expert counts are summed over the ranks that read different data (dp·ep), so every rank
// balances against the counts of the whole global batch (the models/ hook ExpertCountsHook).
import type { Tensor } from '../tensor/tensor.js';
import type { ExpertCountsHook } from '../models/unit_hooks.js';
import type { Communicator } from './communicator.js';

export class DataGroupExpertCounts implements ExpertCountsHook {
  /** `data`: the dp·ep group. */
  constructor(private readonly data: Communicator) {}

  sumExpertCounts(counts: Tensor): number {
    this.data.allReduce(counts, 'sum');
    return this.data.size;
  }
}
