// The lean recipe's Adam/AdamW (optim/recipe.ts): bf16 weights with no f32 master, bf16 moments,
// one multi-tensor pass per gradient dtype (Backend.adamLeanMulti). The parameters that keep an
// f32 master (optim/recipe.ts leanKeepsMaster: the router, the norm gains) are updated by the
// default Adam beside it.
//
// Why stochastic rounding rather than a compensated (Kahan) bf16 term: a Kahan term is one more
// bf16 array per parameter (10 bytes instead of 8) and it compensates only the weights, not the
// moments; stochastic rounding costs no memory, makes every stored quantity (weights, m, v)
// unbiased, and keeps v moving, whose per-step change (1 − β2 of itself) is below half a bf16
// spacing and would stall under round-to-nearest. Its bits are a hash of (seed, step, tensor,
// element) (backend/cpu/stochastic_round.ts), not a generator's state, so runs are reproducible
// and a resumed run continues bit for bit from the bf16 values in its checkpoint.
//
// v is stored as bf16 itself, not √v: bf16 keeps f32's exponent range, so g² neither overflows
// nor underflows where f32 would not, and with unbiased rounding its 8-bit mantissa adds a
// zero-mean relative error of at most 2^-8 to v, 2^-9 to √v, in the update's denominator.
import { backendOf, type AdamHyper, type Backend, type GradsAfter, type LeanAdamHyper } from '../backend/backend.js';
import { TensorList, type LeanAdamSlot } from '../backend/tensor_list.js';
import type { Param } from '../nn/param.js';
import { ParamArena } from '../nn/param_arena.js';
import type { Tensor } from '../tensor/tensor.js';
import { Adam, type AdamConfig } from './adam.js';
import type { Optimizer } from './recipe.js';

export class LeanAdam implements Optimizer {
  step = 0;
  /** One list per gradient dtype (the kernels take one dtype per launch). */
  private readonly lists: TensorList<LeanAdamSlot>[];
  private readonly firstStreams: number[];
  private readonly momentsOf = new Map<Param, { m: Tensor; v: Tensor }>();
  /** The default update of the parameters that keep an f32 master. */
  private readonly wide: Adam | null;
  private readonly owned: Tensor[] = [];

  /** params: lean parameters (bf16 weights) and ones with f32 masters; seed: the run's seed, hashed by the rounding. */
  constructor(params: readonly Param[], readonly config: AdamConfig, backend: Backend, readonly seed: number) {
    const lean = params.filter((p) => p.lean), wide = params.filter((p) => !p.lean);
    // Each lean parameter's m then v, carved from slabs (nn/param_arena.ts: no per-tensor rounding of GPU blocks).
    const arena = new ParamArena(backend, lean.flatMap((p) => [p, p]).map((p) => ({ shape: p.shape, dtype: 'bf16' as const })));
    const zeros = (p: Param): Tensor => { const t = arena.take(p.shape, 'bf16'); backend.fill(t, 0); this.owned.push(t); return t; };
    const byDtype = new Map<string, LeanAdamSlot[]>();
    for (const p of lean) {
      const mv = { m: zeros(p), v: zeros(p) };
      this.momentsOf.set(p, mv);
      const slots = byDtype.get(p.grad.dtype) ?? [];
      slots.push({ weights: p.value, grad: p.grad, m: mv.m, v: mv.v, decay: p.shape.length >= 2 });
      byDtype.set(p.grad.dtype, slots);
    }
    arena.close();
    this.lists = [];
    this.firstStreams = [];
    let stream = 0;
    for (const dtype of ['bf16', 'f32']) {
      const slots = byDtype.get(dtype);
      if (!slots) continue;
      this.lists.push(new TensorList(slots));
      this.firstStreams.push(stream);
      stream += slots.length;
    }
    this.wide = wide.length > 0 ? new Adam(wide, config, backend) : null;
  }

  /** The first and second moments of p (bf16 for a lean parameter, f32 for one with a master). */
  moments(p: Param): { m: Tensor; v: Tensor } {
    const mv = this.momentsOf.get(p);
    if (mv) return mv;
    if (this.wide) return this.wide.moments(p);
    throw new Error('internal: LeanAdam.moments of a parameter this optimizer does not update');
  }

  update(lr: number, gradScale: number, grads: GradsAfter = 'zero'): void {
    this.step++;
    const c = this.config;
    const h: AdamHyper = { lr, beta1: c.beta1, beta2: c.beta2, eps: c.eps, weightDecay: c.weight_decay, decoupled: c.type === 'adamw', step: this.step, gradScale };
    this.lists.forEach((list, i) => {
      const lh: LeanAdamHyper = { ...h, seed: this.seed >>> 0, firstStream: this.firstStreams[i]! };
      backendOf(list.entries[0]!.weights).adamLeanMulti(list, lh, grads);
    });
    if (this.wide) {
      this.wide.step = this.step - 1;
      this.wide.update(lr, gradScale, grads);
    }
  }

  dispose(): void {
    for (const l of this.lists) l.dispose();
    this.wide?.dispose();
    for (const t of this.owned) t.dispose();
  }
}
