// Adam / AdamW over f32 master weights: one fused backend call per slot updates the master,
// both moments and the compute (bf16) copy. Clipping and micro-batch averaging arrive as one
// gradient scale, so the gradients are never rewritten. A slot is a whole parameter (a single
// process) or a contiguous run of a sharded flat buffer (parallel/fsdp.ts): the update is
// element-wise, so how the elements are cut into slots does not change the numbers.
import { backendOf, type Backend } from '../backend/backend.js';
import type { Param } from '../nn/param.js';
import { keep } from '../tensor/scope.js';
import { emptyTensor, type Tensor } from '../tensor/tensor.js';

export interface AdamConfig {
  /** "adamw": decoupled weight decay; "adam": decay added to the gradient (L2). */
  type: 'adamw' | 'adam';
  lr: number;
  beta1: number;
  beta2: number;
  eps: number;
  weight_decay: number;
}

/** Tensors of equal size that one update call covers. */
export interface AdamSlot {
  /** f32 master weights, updated in place. */
  master: Tensor;
  /** f32 gradient. */
  grad: Tensor;
  /** f32 first and second moments. */
  m: Tensor;
  v: Tensor;
  /** Receives the new weights in the compute dtype; null when compute reads the master itself. */
  compute: Tensor | null;
  /** Whether weight decay applies (matrices yes; norm weights, rank 1, no). */
  decay: boolean;
}

export class Adam {
  readonly slots: readonly AdamSlot[];
  /** Number of updates taken so far (the bias correction uses step + 1). */
  step = 0;

  private readonly indexOf: Map<Param, number>;
  /** Moments this optimizer allocated (whole parameters), disposed with it. */
  private readonly owned: Tensor[] = [];

  /** Over whole parameters, with moments allocated here; or over slots whose tensors the caller owns. */
  constructor(params: readonly Param[], config: AdamConfig, backend: Backend);
  constructor(slots: readonly AdamSlot[], config: AdamConfig);
  constructor(from: readonly Param[] | readonly AdamSlot[], readonly config: AdamConfig, backend?: Backend) {
    if (backend === undefined) {
      this.slots = from as readonly AdamSlot[];
      this.indexOf = new Map();
      return;
    }
    const params = from as readonly Param[];
    const zeros = (p: Param) => { const t = keep(emptyTensor(backend, p.shape, 'f32')); backend.fill(t, 0); this.owned.push(t); return t; };
    this.slots = params.map((p) => ({
      master: p.master, grad: p.grad, m: zeros(p), v: zeros(p), compute: p.value === p.master ? null : p.value,
      // Norm weights (rank 1) are not decayed, as is usual for transformer training.
      decay: p.shape.length >= 2,
    }));
    this.indexOf = new Map(params.map((p, i) => [p, i]));
  }

  /** The first and second moments of whole parameter p (one of the constructor's params). */
  moments(p: Param): { m: Tensor; v: Tensor } {
    const i = this.indexOf.get(p);
    if (i === undefined) throw new Error('internal: Adam.moments of a parameter this optimizer does not update whole');
    return { m: this.slots[i]!.m, v: this.slots[i]!.v };
  }

  /** One update with learning rate lr; gradScale multiplies every gradient (clipping, 1/replicas). */
  update(lr: number, gradScale: number): void {
    this.step++;
    for (const s of this.slots) {
      backendOf(s.master).adam(s.master, s.grad, s.m, s.v, s.compute, {
        lr, beta1: this.config.beta1, beta2: this.config.beta2, eps: this.config.eps, weightDecay: s.decay ? this.config.weight_decay : 0,
        decoupled: this.config.type === 'adamw', step: this.step, gradScale,
      });
    }
  }

  dispose(): void { for (const t of this.owned) t.dispose(); }
}
