// A trainable parameter: f32 master weights, the copy used for compute (bf16 in mixed
// precision; the master itself when compute is f32), and an f32 gradient accumulated across
// micro-batches. All three live outside any scope for the whole run. A parameter has no name:
// the model's structure says what it is, and checkpoints name it (models/deepseek_v2_names.ts).
import { backendOf, type Backend } from '../backend/backend.js';
import type { DType } from '../tensor/dtype.js';
import { keep } from '../tensor/scope.js';
import { emptyTensor, type Tensor } from '../tensor/tensor.js';

export class Param {
  readonly master: Tensor;
  /** The leaf the forward pass reads; requiresGrad, with `grad` pointing at the f32 gradient. */
  readonly value: Tensor;
  readonly grad: Tensor;

  constructor(readonly shape: readonly number[], backend: Backend, computeDtype: DType) {
    this.master = keep(emptyTensor(backend, shape, 'f32'));
    this.value = computeDtype === 'f32' ? this.master : keep(emptyTensor(backend, shape, computeDtype));
    this.grad = keep(emptyTensor(backend, shape, 'f32'));
    backend.fill(this.grad, 0);
    this.value.requiresGrad = true;
    this.value.grad = this.grad;
  }

  get size(): number { return this.master.size; }

  /** Sets the master weights from host f32 values and refreshes the compute copy. */
  load(values: Float32Array): void {
    backendOf(this.master).write(this.master, values);
    this.syncValue();
  }

  syncValue(): void {
    if (this.value !== this.master) backendOf(this.master).copy(this.value, this.master);
  }

  zeroGrad(): void { backendOf(this.grad).fill(this.grad, 0); }

  dispose(): void {
    this.grad.dispose();
    if (this.value !== this.master) this.value.dispose();
    this.master.dispose();
  }
}

