// Where expert parallelism enters the MoE block. A model whose part owns some of the routed
// experts computes, without a hook, only those experts' share of the routed output; with an
// ExpertDispatchHook set (parallel/expert_dispatch.ts implements it over the expert-parallel
// group), the hook sends each token to the ranks that own its experts and returns the whole
// routed output. Declared here so that models/ need not import parallel/.
import type { Tensor } from '../tensor/tensor.js';

/** The routed experts this model part owns in one MoE block, as a dispatcher sees them. */
export interface LocalExperts {
  /** Global id of the first owned expert; the owned experts are [first, first + count). */
  readonly first: number;
  readonly count: number;
  /**
   * The owned experts on their rows: xs [M, D] holds counts[i] rows for expert first + i, in
   * that order; returns their outputs [M, D] in the same order (differentiable).
   */
  run(xs: Tensor, counts: readonly number[]): Tensor;
}

export interface ExpertDispatchHook {
  /**
   * The routed output for x [N, D]: out[n] = Σ_j weights[n, j]·expert_{indices[n, j]}(x[n]), with
   * indices i32 [N, k] global expert ids over all routed experts and weights f32 [N, k]; out is
   * [N, D] in x's dtype, differentiable in x, weights and the experts' parameters. Every rank of
   * the group calls it for the same layers in the same order (it runs collectives, forward and
   * backward).
   */
  routedOutput(x: Tensor, indices: Tensor, weights: Tensor, local: LocalExperts): Tensor;
}
