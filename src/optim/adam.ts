// Adam / AdamW over f32 master weights: one multi-tensor backend call (fused_adam.ts) updates
// every master, both moments and the compute (bf16) copy, and zeroes the gradients. Clipping and
// micro-batch averaging arrive as one gradient scale, so the gradients are never rewritten
// before the update.
import { backendOf, type AdamHyper, type Backend } from '../backend/backend.js';
import type { AdamSlot, TensorList } from '../backend/tensor_list.js';
import type { Param } from '../nn/param.js';
import { keep } from '../tensor/scope.js';
import { emptyTensor, type Tensor } from '../tensor/tensor.js';
import { adamSlotList, fusedAdamStep } from './fused_adam.js';

export interface AdamConfig {
  /** "adamw": decoupled weight decay; "adam": decay added to the gradient (L2). */
  type: 'adamw' | 'adam';
  lr: number;
  beta1: number;
  beta2: number;
  eps: number;
  weight_decay: number;
}

export class Adam {
  readonly m: Tensor[];
  readonly v: Tensor[];
  /** Number of updates taken so far (the bias correction uses step + 1). */
  step = 0;

  private readonly indexOf: Map<Param, number>;
  /** Every parameter's slot for the fused pass, built on the first update. */
  private slotList: TensorList<AdamSlot> | null = null;

  constructor(readonly params: readonly Param[], readonly config: AdamConfig, backend: Backend) {
    const make = (p: Param) => { const t = keep(emptyTensor(backend, p.shape, 'f32')); backend.fill(t, 0); return t; };
    this.m = params.map(make);
    this.v = params.map(make);
    this.indexOf = new Map(params.map((p, i) => [p, i]));
  }

  /** The first and second moments of parameter p (one of `params`). */
  moments(p: Param): { m: Tensor; v: Tensor } {
    const i = this.indexOf.get(p);
    if (i === undefined) throw new Error('internal: Adam.moments of a parameter this optimizer does not update');
    return { m: this.m[i]!, v: this.v[i]! };
  }

  /**
   * One update with learning rate lr; gradScale multiplies every gradient (clipping). Every
   * gradient is 0 afterwards, ready for the next step's accumulation.
   */
  update(lr: number, gradScale: number): void {
    this.step++;
    fusedAdamStep(this.slots(), this.hyper(lr, gradScale));
  }

  /** The same update as `update`, one backend call per parameter: the reference the fused pass is checked against. */
  updateEach(lr: number, gradScale: number): void {
    this.step++;
    const h = this.hyper(lr, gradScale), undecayed = { ...h, weightDecay: 0 };
    for (const s of this.slots().entries) {
      const backend = backendOf(s.param);
      backend.adam(s.param, s.grad, s.m, s.v, s.lowp, s.decay ? h : undecayed);
      backend.fill(s.grad, 0);
    }
  }

  private slots(): TensorList<AdamSlot> {
    this.slotList ??= adamSlotList(this.params, this.m, this.v);
    return this.slotList;
  }

  private hyper(lr: number, gradScale: number): AdamHyper {
    const c = this.config;
    return { lr, beta1: c.beta1, beta2: c.beta2, eps: c.eps, weightDecay: c.weight_decay, decoupled: c.type === 'adamw', step: this.step, gradScale };
  }

  dispose(): void {
    this.slotList?.dispose();
    for (const t of [...this.m, ...this.v]) t.dispose();
  }
}
