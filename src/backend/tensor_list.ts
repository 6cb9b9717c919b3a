// Fixed lists of tensors for the multi-tensor ops (Backend.adamMulti, Backend.sumSquaresMulti):
// one backend call walks every tensor of a list, so the optimizer pass over thousands of
// parameters costs one or two launches instead of one per parameter. A list is built once and
// reused while the parameter set does not change; a backend may keep a device-side table of its
// addresses and sizes with it (`table`), built on first use. The tensors must stay alive and in
// place for as long as the list is used; dispose() frees the table.
import type { Tensor } from '../tensor/tensor.js';

/** One parameter's tensors for Backend.adamMulti. */
export interface AdamSlot {
  /** f32 master weights, updated in place. */
  readonly param: Tensor;
  /** The gradient (f32 or bf16, the same dtype in every slot of a list): read, then set to 0. */
  readonly grad: Tensor;
  /** f32 first and second moments, updated in place. */
  readonly m: Tensor;
  readonly v: Tensor;
  /** Receives the new weights rounded to its dtype (the compute copy); null when there is none. */
  readonly lowp: Tensor | null;
  /** Whether AdamHyper.weightDecay applies to this parameter (norm weights are not decayed). */
  readonly decay: boolean;
}

/** One parameter's tensors for Backend.adamLeanMulti (the lean recipe: no f32 master, optim/lean_adam.ts). */
export interface LeanAdamSlot {
  /** bf16 weights, the tensor the forward pass reads, updated in place with stochastic rounding. */
  readonly weights: Tensor;
  /** The gradient (bf16 or f32, the same dtype in every slot of a list): read, then set to 0. */
  readonly grad: Tensor;
  /** bf16 first and second moments, updated in place with stochastic rounding. */
  readonly m: Tensor;
  readonly v: Tensor;
  /** Whether AdamHyper.weightDecay applies to this parameter. */
  readonly decay: boolean;
}

/** What a backend keeps with a list between calls: its device-side table. */
export interface TensorListTable {
  dispose(): void;
}

export class TensorList<E> {
  readonly entries: readonly E[];
  /** The table the backend that first used this list built for it (null before that, and on the CPU). */
  table: TensorListTable | null = null;

  constructor(entries: readonly E[]) {
    this.entries = Object.freeze([...entries]);
  }

  get length(): number { return this.entries.length; }

  dispose(): void {
    this.table?.dispose();
    this.table = null;
  }
}
