// A trainable parameter: f32 master weights, the copy used for compute (bf16 in mixed
// precision; the master itself when compute is f32), and an f32 gradient accumulated across
// micro-batches. All three live outside any scope for the whole run. A parameter has no name:
// the model's structure says what it is, and checkpoints name it (models/deepseek_v2_names.ts).
//
// A whole parameter's gradient starts marked logically zero (autograd/lazy_grad_zero.ts: its
// first write overwrites it), as the trainer marks it again after every optimizer step; it is
// also filled with zeros once here, so code that reads it without settling it first (tests,
// tools) sees zeros until the first optimizer step.
//
// A lean parameter (the lean recipe, optim/lean_adam.ts) has no f32 master: its bf16 compute
// tensor is the weights, updated in place with stochastic rounding, and its gradient is bf16 or
// f32 as the recipe decides.
//
// A sharded parameter (parallel/fsdp.ts) holds no master of its own: its compute tensor and
// gradient are views into its unit's gathered buffers, which hold memory only while the unit
// runs, and the master, moments and gradient it keeps between steps are this rank's slices of
// flat per-unit shards, owned by the sharded layout.
import { backendOf, type Backend } from '../backend/backend.js';
import { markGradZero } from '../autograd/lazy_grad_zero.js';
import { f32ArrayToBf16, type DType } from '../tensor/dtype.js';
import { keep } from '../tensor/scope.js';
import { emptyTensor, type Tensor } from '../tensor/tensor.js';
import type { ParamArena } from './param_arena.js';

/** What a sharded layout gives a parameter: its views and how to load full values into its shard. */
export interface ParamShardViews {
  /** The compute tensor: a view into the unit's gathered weights. */
  value: Tensor;
  /** The f32 gradient: a view into the unit's full gradient buffer (resident during its backward). */
  grad: Tensor;
  /** Takes the parameter's full f32 values and stores the part this rank holds (master and compute shards). */
  load(values: Float32Array): void;
}

/**
 * How a model makes each parameter: its shape, its index in the whole model's order (the key a
 * sharded layout places it by) and its compute dtype.
 */
export type ParamMaker = (spec: { readonly shape: readonly number[]; readonly index: number }, computeDtype: DType) => Param;

export class Param {
  /** The leaf the forward pass reads; requiresGrad, with `grad` pointing at the gradient (f32; bf16 in the lean recipe where it says so). */
  readonly value: Tensor;
  readonly grad: Tensor;
  /** The f32 master of a whole default-recipe parameter; null for a lean or sharded one. */
  private readonly whole: Tensor | null;
  private readonly shardLoad: ((values: Float32Array) => void) | null;
  /** True for a lean parameter: bf16 weights without a master (`value` holds them). */
  readonly lean: boolean;

  /**
   * A whole parameter with its own master, compute copy and gradient (lean: bf16 weights and a
   * gradient of lean.gradDtype, no master), carved from `arena` when given; or a sharded one's views.
   */
  constructor(shape: readonly number[], backend: Backend, computeDtype: DType, opts?: { arena?: ParamArena; lean?: { gradDtype: DType } });
  constructor(shape: readonly number[], shard: ParamShardViews);
  constructor(readonly shape: readonly number[], from: Backend | ParamShardViews, computeDtype?: DType, opts: { arena?: ParamArena; lean?: { gradDtype: DType } } = {}) {
    const { arena, lean } = opts;
    this.lean = lean !== undefined;
    if (computeDtype === undefined) {
      const shard = from as ParamShardViews;
      this.whole = null;
      this.shardLoad = shard.load;
      this.value = shard.value;
      this.grad = shard.grad;
    } else if (lean) {
      const backend = from as Backend;
      if (computeDtype !== 'bf16') throw new Error(`internal: a lean parameter computes in bf16, not ${computeDtype}`);
      this.whole = null;
      this.shardLoad = null;
      this.value = arena ? arena.take(shape, 'bf16') : keep(emptyTensor(backend, shape, 'bf16'));
      this.grad = arena ? arena.take(shape, lean.gradDtype) : keep(emptyTensor(backend, shape, lean.gradDtype));
      backend.fill(this.grad, 0);
      markGradZero(this.grad);
    } else {
      const backend = from as Backend;
      // From an arena (param_arena.ts: no per-tensor rounding of GPU blocks) or allocations of their own.
      const make = (dtype: DType) => (arena ? arena.take(shape, dtype) : keep(emptyTensor(backend, shape, dtype)));
      this.whole = make('f32');
      this.shardLoad = null;
      this.value = computeDtype === 'f32' ? this.whole : make(computeDtype);
      this.grad = make('f32');
      backend.fill(this.grad, 0);
      markGradZero(this.grad);
    }
    this.value.requiresGrad = true;
    this.value.grad = this.grad;
  }

  /** False for a sharded parameter (its master is a slice of a flat shard). */
  get isWhole(): boolean { return this.shardLoad === null; }

  /** The f32 master weights of a whole default-recipe parameter. */
  get master(): Tensor {
    if (this.lean) throw new Error('internal: a lean parameter has no f32 master; its weights are `value` (Param.weights)');
    if (!this.whole) throw new Error('internal: the master of a sharded parameter is a slice of its unit\'s shard (parallel/fsdp.ts shardEntries)');
    return this.whole;
  }

  /** The tensor that holds a whole parameter's values between steps: the f32 master, or a lean parameter's bf16 weights. */
  get weights(): Tensor { return this.lean ? this.value : this.master; }

  get size(): number { return this.value.size; }

  /** Sets the weights from host f32 values (the full tensor): the master and the compute copy, or a lean parameter's bf16 weights (rounded to nearest). */
  load(values: Float32Array): void {
    if (this.shardLoad) { this.shardLoad(values); return; }
    if (this.lean) { backendOf(this.value).write(this.value, f32ArrayToBf16(values)); return; }
    backendOf(this.master).write(this.master, values);
    this.syncValue();
  }

  /** Refreshes the compute copy from the master (a whole parameter; nothing to do for a lean one). */
  syncValue(): void {
    if (this.lean) return;
    if (this.value !== this.master) backendOf(this.master).copy(this.value, this.master);
  }

  /**
   * Writes zeros into a whole parameter's gradient at once (a sharded layout zeroes its gradient
   * shards itself). A mark of logical zero (autograd/lazy_grad_zero.ts) may stay: the memory then
   * agrees with it.
   */
  zeroGrad(): void {
    if (this.shardLoad) throw new Error('internal: zeroGrad of a sharded parameter; the sharded layout zeroes its gradient shards');
    backendOf(this.grad).fill(this.grad, 0);
  }

  dispose(): void {
    this.grad.dispose();
    this.value.dispose();
    this.whole?.dispose();
  }
}
