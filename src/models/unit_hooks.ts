// Where a parallel layout enters the model's forward pass, declared here so that models/ need
// not import parallel/ (the trainer sets the hooks; parallel/fsdp.ts implements them):
//   - UnitHooks.runUnit wraps each unit's forward (the embedding, each decoder layer, the final
//     norm with lm_head), so a sharded layout can gather the unit's weights before it runs,
//     release them after, and hook the unit's backward boundaries;
//   - ExpertCountsHook sums the global-batch load-balance loss's expert counts over the ranks
//     that read different data.
import type { Tensor } from '../tensor/tensor.js';

/** A unit of the model: its parameters are gathered and released together. */
export type ModelUnit =
  | { readonly kind: 'embed' }
  | { readonly kind: 'layer'; readonly index: number }
  | { readonly kind: 'head' };

export interface UnitHooks {
  /**
   * Runs `forward`, the forward pass of `unit`, on `inputs` (the hidden states entering it;
   * none for the embedding, whose token ids need no gradient) and returns its outputs. The hook
   * may pass forward other tensors than `inputs` and return other tensors than forward's, as
   * long as they hold the same values (identities whose backward rules do the layout's work).
   */
  runUnit(unit: ModelUnit, inputs: readonly Tensor[], forward: (inputs: readonly Tensor[]) => Tensor[]): Tensor[];
}

export interface ExpertCountsHook {
  /**
   * Sums counts, f32 [E] routed slots per expert of this rank's micro-batch, in place over the
   * ranks that read different data; returns how many ranks were summed (the slots they saw
   * scale by it).
   */
  sumExpertCounts(counts: Tensor): number;
}
