// The optimizer pass as one backend call: every parameter's Adam/AdamW step, its compute copy
// and its zeroed gradient (unless the caller keeps it) in one multi-tensor pass
// (Backend.adamMulti), over a list of slots built once from the parameters and their moments.
// The weight-decay rule lives here: matrices are decayed, norm weights (rank 1) are not, as is
// usual for transformer training.
import { backendOf, type AdamHyper, type GradsAfter } from '../backend/backend.js';
import { TensorList, type AdamSlot } from '../backend/tensor_list.js';
import type { Param } from '../nn/param.js';
import type { Tensor } from '../tensor/tensor.js';

/** The slots of params with their moments m[i], v[i]; no compute copy where compute is f32 (value is the master). */
export function adamSlotList(params: readonly Param[], m: readonly Tensor[], v: readonly Tensor[]): TensorList<AdamSlot> {
  return new TensorList(params.map((p, i): AdamSlot => ({
    param: p.master, grad: p.grad, m: m[i]!, v: v[i]!, lowp: p.value === p.master ? null : p.value, decay: p.shape.length >= 2,
  })));
}

/** One step over every slot (h.weightDecay where a slot decays); every gradient is 0 afterwards unless grads is 'keep'. */
export function fusedAdamStep(list: TensorList<AdamSlot>, h: AdamHyper, grads: GradsAfter): void {
  const first = list.entries[0];
  if (first) backendOf(first.param).adamMulti(list, h, grads);
}
