// Where a forward pass splits into the parts a profiler reports by layer kind (bench train
// --profile): the model calls section() around each part. Without hooks the model runs the
// parts directly; an implementation lives above models/ (bench/train_profile.ts).
import type { Tensor } from '../tensor/tensor.js';

/**
 * The parts of a step by layer kind: MLA attention, a dense SwiGLU MLP, the MoE router with the
 * dispatch and combine of routed rows (and the load-balance loss), the experts (routed and
 * shared), and lm_head with the cross-entropy.
 */
export type ModelSection = 'attention' | 'mlp' | 'router' | 'experts' | 'head';

export interface SectionHooks {
  /**
   * Runs one part, fn on input x, and returns its output. An implementation may time it, and may
   * hand fn an alias of x and return an alias of the output, marked so that the backward pass
   * can be timed between them; fn reads x only through its argument.
   */
  section(kind: ModelSection, x: Tensor, fn: (x: Tensor) => Tensor): Tensor;
}
