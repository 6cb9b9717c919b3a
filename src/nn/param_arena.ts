// Parameters carved out of a few large buffers instead of one allocation each. The GPU's caching
// allocator rounds every block over 1 MiB up to a multiple of 2 MiB (the driver's large page):
// a DeepSeek-V2-Lite expert matrix [1408, 2048] is 5.5 MiB in bf16 and 11 MiB in f32, so each of
// its master, compute copy and gradient would waste 0.5–1 MiB, about 1.4 GiB over the 576 expert
// matrices of the bench's 4-layer slice. An arena hands out views of slabs instead; the waste is
// what is left at the end of each slab, and the 256-byte alignment of every view (cuBLASLt's
// preferred operand alignment, and more than any vector load needs).
//
// A view holds its slab's storage like any view does: a slab is freed when the last parameter
// carved from it is disposed. The arena itself keeps a reference to its current slab of each
// dtype until close().
import type { Backend } from '../backend/backend.js';
import { bytesPerElement, type DType } from '../tensor/dtype.js';
import { keep } from '../tensor/scope.js';
import { contiguousStrides, emptyTensor, type Tensor } from '../tensor/tensor.js';

/** Slab size: large next to any layer's matrices, small next to the model (and within any host array limit). */
export const PARAM_SLAB_BYTES = 512 * 2 ** 20;
const ALIGN_BYTES = 256;

/** Elements a tensor of n elements takes in a slab of dtype: n rounded up to the alignment. */
function aligned(n: number, dtype: DType): number {
  const align = ALIGN_BYTES / bytesPerElement(dtype);
  return Math.ceil(n / align) * align;
}

export class ParamArena {
  private readonly slabs = new Map<DType, { t: Tensor; used: number }>();
  /** Elements still to be taken per dtype: the last slab of a dtype is cut to what is left. */
  private readonly remaining = new Map<DType, number>();

  /**
   * An arena for parameters of the given shapes and compute dtypes: each takes an f32 master and
   * an f32 gradient, and a compute copy when its compute dtype is not f32 (nn/param.ts).
   */
  constructor(private readonly backend: Backend, params: readonly { shape: readonly number[]; dtype: DType }[], private readonly slabBytes = PARAM_SLAB_BYTES) {
    const need = (dtype: DType, n: number) => this.remaining.set(dtype, (this.remaining.get(dtype) ?? 0) + aligned(n, dtype));
    for (const p of params) {
      const n = p.shape.reduce((a, b) => a * b, 1);
      need('f32', n); need('f32', n);
      if (p.dtype !== 'f32') need(p.dtype, n);
    }
  }

  /** A kept, contiguous, uninitialised tensor of shape and dtype carved from a slab. */
  take(shape: readonly number[], dtype: DType): Tensor {
    const n = shape.reduce((a, b) => a * b, 1), size = aligned(n, dtype);
    const left = this.remaining.get(dtype) ?? 0;
    if (size > left) throw new Error(`internal: the parameter arena was not sized for another [${shape}] ${dtype}`);
    let slab = this.slabs.get(dtype);
    if (!slab || slab.used + size > slab.t.size) {
      slab?.t.dispose();
      // A full slab, or what is left when that is less; a tensor larger than a slab gets its own.
      const elements = Math.max(Math.min(Math.floor(this.slabBytes / bytesPerElement(dtype)), left), size);
      slab = { t: keep(emptyTensor(this.backend, [elements], dtype)), used: 0 };
      this.slabs.set(dtype, slab);
    }
    const out = keep(slab.t.view(shape, contiguousStrides(shape), slab.used));
    slab.used += size;
    this.remaining.set(dtype, left - size);
    return out;
  }

  /** Lets go of the current slabs (the parameters' views keep them alive). */
  close(): void {
    for (const s of this.slabs.values()) s.t.dispose();
    this.slabs.clear();
  }
}
