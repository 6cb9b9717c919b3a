// Tensor: a typed view (shape, strides, offset, dtype) onto a reference-counted Storage that
// belongs to one backend. Device memory never waits for the garbage collector: a tensor is
// released by dispose(), by the scope that created it (scope.ts), or by autograd once its
// gradient rule has run. An op reaches the tensor's backend through backendOf (backend/backend.ts).
import { bytesPerElement, type DType } from './dtype.js';
import { trackInScope, type Releasable } from './scope.js';
import { Storage, type StorageOwner } from './storage.js';

export type Shape = readonly number[];

export function numel(shape: Shape): number {
  let n = 1;
  for (const d of shape) n *= d;
  return n;
}

export function contiguousStrides(shape: Shape): number[] {
  const s = new Array<number>(shape.length);
  let acc = 1;
  for (let i = shape.length - 1; i >= 0; i--) { s[i] = acc; acc *= shape[i]!; }
  return s;
}

/** Maps the gradients of a node's outputs to the gradients of its inputs (null: none). */
export type BackwardRule = (gradOutputs: readonly (Tensor | null)[]) => readonly (Tensor | null)[];

/**
 * A node of the gradient graph as tensors and backward() see it. Declared here, below autograd,
 * so that Tensor need not import autograd; autograd/tape.ts's GradNode implements it.
 */
export interface GradGraphNode extends Releasable {
  readonly name: string;
  /** The op's differentiable inputs, in the order the rule returns their gradients. */
  readonly inputs: readonly Tensor[];
  readonly outputCount: number;
  /** null once the rule has run (or before the op has set it). */
  readonly rule: BackwardRule | null;
  /** Makes what the rule saved resident again (recomputed activations); call right before the rule. */
  prepare(): void;
}

/** Which node produced a tensor, and which of that node's outputs it is. */
export interface GradLink { readonly node: GradGraphNode; readonly index: number }

let nextId = 1;
/** Tensors created and not yet disposed (views included), for leak tests. */
let liveTensors = 0;

/** How many tensor handles exist that have not been disposed. */
export function liveTensorCount(): number { return liveTensors; }

export class Tensor {
  readonly id = nextId++;
  /** Set on leaves whose gradient the caller wants (parameters); see autograd/tape.ts. */
  requiresGrad = false;
  /** Accumulated gradient of a leaf (f32 for parameters, preallocated by the optimizer). */
  grad: Tensor | null = null;
  /** Set by an op that recorded this tensor as one of its outputs. */
  gradLink: GradLink | null = null;
  private disposed = false;

  constructor(
    readonly storage: Storage,
    readonly shape: Shape,
    readonly strides: readonly number[],
    /** Offset into the storage, in elements. */
    readonly offset: number,
    readonly dtype: DType,
  ) {
    liveTensors++;
    trackInScope(this);
  }

  get size(): number { return numel(this.shape); }
  get rank(): number { return this.shape.length; }
  get isDisposed(): boolean { return this.disposed; }
  get bytes(): number { return this.size * bytesPerElement(this.dtype); }

  isContiguous(): boolean {
    let acc = 1;
    for (let i = this.shape.length - 1; i >= 0; i--) {
      if (this.shape[i] !== 1 && this.strides[i] !== acc) return false;
      acc *= this.shape[i]!;
    }
    return true;
  }

  /** Releases this view's hold on its storage. Safe to call more than once. */
  dispose(): void {
    if (this.disposed) return;
    this.disposed = true;
    liveTensors--;
    this.storage.release();
  }

  [Symbol.dispose](): void { this.dispose(); }

  assertLive(what: string): void {
    if (this.disposed) throw new Error(`internal: ${what} used a disposed tensor (id ${this.id}, shape [${this.shape}])`);
  }

  /** A new view onto the same storage. */
  view(shape: Shape, strides: readonly number[], offset: number): Tensor {
    this.assertLive('view');
    this.storage.retain();
    return new Tensor(this.storage, shape, strides, offset, this.dtype);
  }

  toString(): string { return `Tensor(${this.dtype}[${this.shape.join(',')}] on ${this.storage.owner.kind})`; }
}

/** A new contiguous tensor in fresh memory of owner (a Backend), elements unset. */
export function emptyTensor(owner: StorageOwner, shape: Shape, dtype: DType): Tensor {
  for (const d of shape) if (!Number.isInteger(d) || d < 0) throw new Error(`internal: bad shape [${shape}]`);
  const bytes = numel(shape) * bytesPerElement(dtype);
  const storage = new Storage(owner, owner.alloc(bytes), bytes);
  return new Tensor(storage, shape, contiguousStrides(shape), 0, dtype);
}

/** A contiguous tensor whose storage starts evicted: no memory until `storage.restore()`. */
export function evictedTensor(owner: StorageOwner, shape: Shape, dtype: DType): Tensor {
  for (const d of shape) if (!Number.isInteger(d) || d < 0) throw new Error(`internal: bad shape [${shape}]`);
  return new Tensor(new Storage(owner, null, numel(shape) * bytesPerElement(dtype)), shape, contiguousStrides(shape), 0, dtype);
}
