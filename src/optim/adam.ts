// Adam / AdamW over f32 master weights: one multi-tensor backend call (fused_adam.ts) updates
// every master, both moments and the compute (bf16) copy, and zeroes the gradients (or leaves
// them, for a caller that marks them logically zero: autograd/lazy_grad_zero.ts). Clipping and
// micro-batch averaging arrive as one gradient scale, so the gradients are never rewritten
// before the update. A slot is a whole parameter (a single process) or a contiguous run of a
// sharded flat buffer (parallel/fsdp.ts): the update is element-wise, so how the elements are
// cut into slots does not change the numbers.
import { backendOf, type AdamHyper, type Backend, type GradsAfter } from '../backend/backend.js';
import { TensorList, type AdamSlot } from '../backend/tensor_list.js';
import type { Param } from '../nn/param.js';
import { ParamArena } from '../nn/param_arena.js';
import type { Tensor } from '../tensor/tensor.js';
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
  /** Number of updates taken so far (the bias correction uses step + 1). */
  step = 0;
  /** What one update walks: every parameter's slot, or the runs of a sharded layout's shards. */
  readonly slots: TensorList<AdamSlot>;
  /** The first and second moments of each slot (of params[i] when built over whole parameters). */
  readonly m: readonly Tensor[];
  readonly v: readonly Tensor[];

  private readonly indexOf: Map<Param, number>;
  /** Moments this optimizer allocated (whole parameters), disposed with it. */
  private readonly owned: Tensor[] = [];

  /** Over whole parameters, with moments allocated here; or over slots whose tensors the caller owns. */
  constructor(params: readonly Param[], config: AdamConfig, backend: Backend);
  constructor(slots: readonly AdamSlot[], config: AdamConfig);
  constructor(from: readonly Param[] | readonly AdamSlot[], readonly config: AdamConfig, backend?: Backend) {
    if (backend === undefined) {
      this.slots = new TensorList(from as readonly AdamSlot[]);
      this.m = this.slots.entries.map((s) => s.m);
      this.v = this.slots.entries.map((s) => s.v);
      this.indexOf = new Map();
      return;
    }
    const params = from as readonly Param[];
    // All m, then all v, carved from slabs (nn/param_arena.ts: no per-tensor rounding of GPU blocks).
    const arena = new ParamArena(backend, [...params, ...params].map((p) => ({ shape: p.shape, dtype: 'f32' as const })));
    const zeros = (p: Param) => { const t = arena.take(p.shape, 'f32'); backend.fill(t, 0); this.owned.push(t); return t; };
    this.m = params.map(zeros);
    this.v = params.map(zeros);
    arena.close();
    this.slots = adamSlotList(params, this.m, this.v);
    this.indexOf = new Map(params.map((p, i) => [p, i]));
  }

  /** The first and second moments of whole parameter p (one of the constructor's params). */
  moments(p: Param): { m: Tensor; v: Tensor } {
    const i = this.indexOf.get(p);
    if (i === undefined) throw new Error('internal: Adam.moments of a parameter this optimizer does not update whole');
    return { m: this.m[i]!, v: this.v[i]! };
  }

  /**
   * One update with learning rate lr; gradScale multiplies every gradient (clipping, 1/replicas).
   * With grads 'zero' (the default) every gradient the slots cover is 0 afterwards, ready for the
   * next step's accumulation; with 'keep' the gradients are left as they are.
   */
  update(lr: number, gradScale: number, grads: GradsAfter = 'zero'): void {
    this.step++;
    fusedAdamStep(this.slots, this.hyper(lr, gradScale), grads);
  }

  /** The same update as `update`, one backend call per slot: the reference the fused pass is checked against. */
  updateEach(lr: number, gradScale: number, grads: GradsAfter = 'zero'): void {
    this.step++;
    const h = this.hyper(lr, gradScale), undecayed = { ...h, weightDecay: 0 };
    for (const s of this.slots.entries) {
      const backend = backendOf(s.param);
      backend.adam(s.param, s.grad, s.m, s.v, s.lowp, s.decay ? h : undecayed);
      if (grads === 'zero') backend.fill(s.grad, 0);
    }
  }

  private hyper(lr: number, gradScale: number): AdamHyper {
    const c = this.config;
    return { lr, beta1: c.beta1, beta2: c.beta2, eps: c.eps, weightDecay: c.weight_decay, decoupled: c.type === 'adamw', step: this.step, gradScale };
  }

  dispose(): void {
    this.slots.dispose();
    for (const t of this.owned) t.dispose();
  }
}
