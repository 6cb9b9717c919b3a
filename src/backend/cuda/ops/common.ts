// What the launchers share: the checks every launch makes on its tensors and the launch
// geometry of the grid-stride kernels. A launcher (ops/<op>.ts) owns the rest: its kernel file,
// the -D defines that file is compiled with, its KernelArgs and its grid.
//
// Kernel names: a kernel templated on element types is exported as `<name>_<dtype>...` (dtype
// names as in tensor/dtype.ts), so a launcher builds the name from its tensors' dtypes. Each
// call site owns one KernelArgs, reset per call: launching copies the values, so reuse is safe.
import type { Tensor } from '../../../tensor/tensor.js';
import type { CudaContext } from '../runtime/context.js';

/** Block size of the elementwise and grid-stride kernels. */
export const THREADS = 256;
/** Rows narrower than this (a warp) are gathered and scattered one thread per element, not one block per row. */
export const NARROW_ROW = 32;

/** Element counts are 32-bit inside the view-indexing kernels. */
const MAX_ELEMENTS = 2 ** 31 - 1;

/** Blocks for a grid-stride kernel over n elements: enough to fill the GPU several times over. */
export function gridFor(ctx: CudaContext, n: number, threads = THREADS): number {
  return Math.max(1, Math.min(Math.ceil(n / threads), ctx.smCount * 16));
}

export function assertContiguous(t: Tensor, what: string): void {
  if (!t.isContiguous()) throw new Error(`internal: ${what} must be contiguous for the CUDA backend, got ${t} with strides [${t.strides}]`);
}

export function assertFloat(t: Tensor, what: string): void {
  if (t.dtype === 'i32') throw new Error(`internal: ${what} is i32, expected f32 or bf16`);
}

export function assertSameDType(a: Tensor, b: Tensor, what: string): void {
  if (a.dtype !== b.dtype) throw new Error(`internal: ${what} have different dtypes (${a.dtype}, ${b.dtype}); the CUDA kernel takes one`);
}

export function assertCount(n: number, what: string): void {
  if (n > MAX_ELEMENTS) throw new Error(`internal: ${what} has ${n} elements; the CUDA kernels index at most 2^31 − 1 per launch`);
}

export function lastDim(t: Tensor): number { return t.rank === 0 ? 1 : t.shape[t.rank - 1]!; }

export function roundUp(x: number, m: number): number { return Math.ceil(x / m) * m; }
