// Strided views for the kernels that take any view (copy, fill, unary, binary): a shape shared
// by several views is collapsed to at most MT_MAX_RANK dimensions and passed as scalar kernel
// parameters: rank, sizes, then each view's strides (kernels/strided_views.cuh reads them).
import type { Shape } from '../../../tensor/tensor.js';
import type { KernelArgs } from '../runtime/kernel_args.js';

/** Dimensions of a collapsed view (MT_MAX_RANK in kernels/strided_views.cuh). */
const MAX_RANK = 6;

/** The -D defines of every kernel file that includes strided_views.cuh. */
export const STRIDED_VIEWS_DEFINES = { MT_MAX_RANK: MAX_RANK } as const;

/** KernelArgs slots of one collapsed view set: rank, MAX_RANK sizes, MAX_RANK strides per view. */
export function viewArgCount(views: number): number { return 1 + MAX_RANK * (1 + views); }

/**
 * One shape shared by several views, with dimensions of size 1 dropped and neighbours merged
 * wherever every view is contiguous across them; padded at the front to MAX_RANK.
 */
export interface CollapsedViews { rank: number; dims: number[]; strides: number[][] }

export function collapseViews(shape: Shape, views: readonly (readonly number[])[], what: string): CollapsedViews {
  const dims: number[] = [];
  const strides: number[][] = views.map(() => []);
  for (let d = 0; d < shape.length; d++) {
    const size = shape[d]!;
    if (size === 1) continue;
    const last = dims.length - 1;
    if (last >= 0 && views.every((v, i) => strides[i]![last] === v[d]! * size)) {
      dims[last] = dims[last]! * size;
      views.forEach((v, i) => { strides[i]![last] = v[d]!; });
    } else {
      dims.push(size);
      views.forEach((v, i) => strides[i]!.push(v[d]!));
    }
  }
  if (dims.length === 0) { dims.push(1); strides.forEach((s) => s.push(0)); }
  const rank = dims.length;
  if (rank > MAX_RANK) throw new Error(`internal: ${what} needs ${rank} dimensions after merging contiguous ones; the CUDA kernels take ${MAX_RANK}`);
  while (dims.length < MAX_RANK) { dims.unshift(1); strides.forEach((s) => s.unshift(0)); }
  return { rank, dims, strides };
}

/** Writes rank, sizes and each view's strides into args from index `first`; returns the next index. */
export function setViewArgs(args: KernelArgs, first: number, v: CollapsedViews): number {
  let i = first;
  args.i32(i++, v.rank);
  for (const d of v.dims) args.i32(i++, d);
  for (const s of v.strides) for (const x of s) args.i64(i++, BigInt(x));
  return i;
}

/** Elements per vector of the kernels' 8-wide paths (load8/store8 of common.cuh: 16 bytes of bf16, 32 of f32). */
export const VEC = 8;

/**
 * The same views in units of VEC elements, when every view moves in whole 16-byte-aligned
 * vectors: innermost stride 1 on every view, the innermost size and every other stride
 * multiples of VEC, and every base address 16-byte aligned. null otherwise (the kernels then
 * walk single elements). Why: one element per thread moves 2 or 4 bytes per access, which keeps
 * too few bytes in flight to reach the memory's bandwidth; 8 per thread move 16 or 32.
 */
export function vectorViews(v: CollapsedViews, bases: readonly bigint[]): CollapsedViews | null {
  const inner = MAX_RANK - 1;
  if (v.dims[inner]! % VEC !== 0 || bases.some((b) => b % 16n !== 0n)) return null;
  if (v.strides.some((s) => s[inner] !== 1 || s.some((x, k) => k !== inner && x % VEC !== 0))) return null;
  return {
    rank: v.rank,
    dims: v.dims.map((d, k) => (k === inner ? d / VEC : d)),
    strides: v.strides.map((s) => s.map((x, k) => (k === inner ? 1 : x / VEC))),
  };
}
