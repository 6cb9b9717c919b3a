// Parameters (and their optimizer state) carved out of a few large buffers instead of one
// allocation each. The GPU's caching allocator rounds every block over 1 MiB up to a multiple of
// 2 MiB (the driver's large page): a DeepSeek-V2-Lite expert matrix [1408, 2048] is 5.5 MiB in
// bf16 and 11 MiB in f32, so each of its master, compute copy and gradient would waste 0.5–1 MiB,
// about 1.4 GiB over the 576 expert matrices of the bench's 4-layer slice, and Adam's two f32
// moments 1.1 GiB more. An arena hands out views of slabs instead; the waste is the 256-byte
// alignment of every view (cuBLASLt's preferred operand alignment, and more than any vector load
// needs): each slab is cut to the requests it will hold.
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

/** One tensor an arena will hand out. */
export interface ArenaTensor { shape: readonly number[]; dtype: DType }

/**
 * What whole default-recipe parameters of these shapes and compute dtypes take, in order
 * (nn/param.ts): each an f32 master, a compute copy when its compute dtype is not f32, and an f32
 * gradient.
 */
export function wholeParamTensors(params: readonly ArenaTensor[]): ArenaTensor[] {
  return params.flatMap((p) => [{ shape: p.shape, dtype: 'f32' as DType }, ...(p.dtype !== 'f32' ? [p] : []), { shape: p.shape, dtype: 'f32' as DType }]);
}

export class ParamArena {
  private readonly slabs = new Map<DType, { t: Tensor; used: number }>();
  /** Per dtype, the aligned sizes still to be taken, in the order they will be taken. */
  private readonly queue = new Map<DType, { sizes: number[]; next: number }>();

  /**
   * An arena for exactly these tensors, taken in this order (per dtype); wholeParamTensors lists a
   * model's. Knowing every request up front, each slab is cut to the requests it will hold.
   */
  constructor(private readonly backend: Backend, tensors: readonly ArenaTensor[], private readonly slabBytes = PARAM_SLAB_BYTES) {
    for (const t of tensors) {
      let q = this.queue.get(t.dtype);
      if (!q) this.queue.set(t.dtype, (q = { sizes: [], next: 0 }));
      q.sizes.push(aligned(t.shape.reduce((a, b) => a * b, 1), t.dtype));
    }
  }

  /** A kept, contiguous, uninitialised tensor of shape and dtype carved from a slab. */
  take(shape: readonly number[], dtype: DType): Tensor {
    const size = aligned(shape.reduce((a, b) => a * b, 1), dtype);
    const q = this.queue.get(dtype);
    if (!q || q.sizes[q.next] !== size) throw new Error(`internal: the parameter arena was not planned for a [${shape}] ${dtype} here`);
    let slab = this.slabs.get(dtype);
    if (!slab || slab.used + size > slab.t.size) {
      slab?.t.dispose();
      // The next requests up to a slab's bytes (at least one request: a larger tensor gets its own).
      const limit = Math.floor(this.slabBytes / bytesPerElement(dtype));
      let elements = 0;
      for (let i = q.next; i < q.sizes.length && (elements === 0 || elements + q.sizes[i]! <= limit); i++) elements += q.sizes[i]!;
      slab = { t: keep(emptyTensor(this.backend, [elements], dtype)), used: 0 };
      this.slabs.set(dtype, slab);
    }
    const out = keep(slab.t.view(shape, contiguousStrides(shape), slab.used));
    slab.used += size;
    q.next++;
    return out;
  }

  /** Lets go of the current slabs (the parameters' views keep them alive). */
  close(): void {
    for (const s of this.slabs.values()) s.t.dispose();
    this.slabs.clear();
  }
}
