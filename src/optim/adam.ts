// Adam / AdamW over f32 master weights: one fused backend call per parameter updates the
// master, both moments and the compute (bf16) copy. Clipping and micro-batch averaging arrive
// as one gradient scale, so the gradients are never rewritten.
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

export class Adam {
  readonly m: Tensor[];
  readonly v: Tensor[];
  /** Number of updates taken so far (the bias correction uses step + 1). */
  step = 0;

  private readonly indexOf: Map<Param, number>;

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

  /** One update with learning rate lr; gradScale multiplies every gradient (clipping). */
  update(lr: number, gradScale: number): void {
    this.step++;
    this.params.forEach((p, i) => {
      // Norm weights (rank 1) are not decayed, as is usual for transformer training.
      const wd = p.shape.length >= 2 ? this.config.weight_decay : 0;
      backendOf(p.master).adam(p.master, p.grad, this.m[i]!, this.v[i]!, p.value === p.master ? null : p.value, {
        lr, beta1: this.config.beta1, beta2: this.config.beta2, eps: this.config.eps, weightDecay: wd,
        decoupled: this.config.type === 'adamw', step: this.step, gradScale,
      });
    });
  }

  dispose(): void { for (const t of [...this.m, ...this.v]) t.dispose(); }
}
