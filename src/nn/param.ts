// A trainable parameter: f32 master weights, the copy used for compute (bf16 in mixed
// precision; the master itself when compute is f32), and an f32 gradient accumulated across
// micro-batches. All three live outside any scope for the whole run. A parameter has no name:
// the model's structure says what it is, and checkpoints name it (models/deepseek_v2_names.ts).
//
// A sharded parameter (parallel/fsdp.ts) holds no master of its own: its compute tensor and
// gradient are views into its unit's gathered buffers, which hold memory only while the unit
// runs, and the master, moments and gradient it keeps between steps are this rank's slices of
// flat per-unit shards, owned by the sharded layout.
import { backendOf, type Backend } from '../backend/backend.js';
import type { DType } from '../tensor/dtype.js';
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
  /** The leaf the forward pass reads; requiresGrad, with `grad` pointing at the f32 gradient. */
  readonly value: Tensor;
  readonly grad: Tensor;
  private readonly whole: Tensor | null;
  private readonly shardLoad: ((values: Float32Array) => void) | null;

  /** A whole parameter with its own master, compute copy and gradient; or a sharded one's views. */
  constructor(shape: readonly number[], backend: Backend, computeDtype: DType, arena?: ParamArena);
  constructor(shape: readonly number[], shard: ParamShardViews);
  constructor(readonly shape: readonly number[], from: Backend | ParamShardViews, computeDtype?: DType, arena?: ParamArena) {
    if (computeDtype === undefined) {
      const shard = from as ParamShardViews;
      this.whole = null;
      this.shardLoad = shard.load;
      this.value = shard.value;
      this.grad = shard.grad;
    } else {
      const backend = from as Backend;
      // From an arena (param_arena.ts: no per-tensor rounding of GPU blocks) or allocations of their own.
      const make = (dtype: DType) => (arena ? arena.take(shape, dtype) : keep(emptyTensor(backend, shape, dtype)));
      this.whole = make('f32');
      this.shardLoad = null;
      this.value = computeDtype === 'f32' ? this.whole : make(computeDtype);
      this.grad = make('f32');
      backend.fill(this.grad, 0);
    }
    this.value.requiresGrad = true;
    this.value.grad = this.grad;
  }

  /** False for a sharded parameter (its master is a slice of a flat shard). */
  get isWhole(): boolean { return this.whole !== null; }

  /** The f32 master weights of a whole parameter. */
  get master(): Tensor {
    if (!this.whole) throw new Error('internal: the master of a sharded parameter is a slice of its unit\'s shard (parallel/fsdp.ts shardEntries)');
    return this.whole;
  }

  get size(): number { return this.value.size; }

  /** Sets the master weights from host f32 values (the full tensor) and refreshes the compute copy. */
  load(values: Float32Array): void {
    if (this.shardLoad) { this.shardLoad(values); return; }
    backendOf(this.master).write(this.master, values);
    this.syncValue();
  }

  /** Refreshes the compute copy from the master (a whole parameter). */
  syncValue(): void {
    if (this.value !== this.master) backendOf(this.master).copy(this.value, this.master);
  }

  /** Zeroes a whole parameter's gradient (a sharded layout zeroes its gradient shards itself). */
  zeroGrad(): void {
    if (!this.whole) throw new Error('internal: zeroGrad of a sharded parameter; the sharded layout zeroes its gradient shards');
    backendOf(this.grad).fill(this.grad, 0);
  }

  dispose(): void {
    this.grad.dispose();
    this.value.dispose();
    this.whole?.dispose();
  }
}
