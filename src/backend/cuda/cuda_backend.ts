// The CUDA backend: the Backend contract on one GPU. Memory comes from the caching allocator,
// matmul from cuBLASLt, attention from mla_attention.ts, and every other method is one or a few
// launches of the kernels in kernels/*.cu on the context's single compute stream (so results are
// ordered without events, and a freed block may serve the next op at once).
//
// Kernel names: a kernel templated on element types is exported as `<name>_<dtype>...` (dtype
// names as in tensor/dtype.ts), so the name is built from the tensors' dtypes. Each call site
// owns one KernelArgs, reset per call: launching copies the values, so reuse is safe.
import { bytesPerElement, f32ToBf16, type DType, type HostArray } from '../../tensor/dtype.js';
import { contiguousStrides, type Shape, type Tensor } from '../../tensor/tensor.js';
import type { AdamHyper, AttentionOptions, Backend, BinaryOp, DeviceBuffer, MatmulOptions, MemoryStats, UnaryOp } from '../backend.js';
import { CachingAllocator, type GpuBlock } from './allocator.js';
import type { CudaContext } from './context.js';
import { CublasLt } from './cublaslt.js';
import { mlaAttentionBackward as mlaAttentionBackwardCuda, mlaAttentionForward } from './mla_attention.js';
import { mlaAttentionGenericBackward, mlaAttentionGenericForward } from './mla_attention_generic.js';

/** DeepSeek-V2's head widths in bf16 take the tensor-core kernels; anything else the generic ones. */
function tensorCoreAttention(qNope: Tensor, qPe: Tensor, v: Tensor): boolean {
  return qNope.dtype === 'bf16' && qNope.shape[3] === 128 && qPe.shape[3] === 64 && v.shape[3] === 128;
}
import { KernelArgs, loadModule, type CudaKernel } from './module.js';

/** Device memory handed out by CudaBackend.alloc. */
export class CudaDeviceBuffer implements DeviceBuffer {
  constructor(readonly block: GpuBlock) {}
  get bytes(): number { return this.block.bytes; }
  get ptr(): bigint { return this.block.ptr; }
}

/** Device address of a tensor's first element. */
export function devicePtr(t: Tensor): bigint {
  const buf = t.storage.buffer;
  if (!(buf instanceof CudaDeviceBuffer)) throw new Error(`internal: ${t} is not CUDA memory`);
  return buf.ptr + BigInt(t.offset * bytesPerElement(t.dtype));
}

// Op codes shared with unary.cu and binary.cu.
function unaryCode(op: UnaryOp): number {
  switch (op) {
    case 'neg': return 0;
    case 'exp': return 1;
    case 'log': return 2;
    case 'sqrt': return 3;
    case 'rsqrt': return 4;
    case 'square': return 5;
    case 'silu': return 6;
    case 'scale': return 7;
    case 'addScalar': return 8;
    default: return op satisfies never;
  }
}

function binaryCode(op: BinaryOp): number {
  switch (op) {
    case 'add': return 0;
    case 'sub': return 1;
    case 'mul': return 2;
    case 'div': return 3;
    default: return op satisfies never;
  }
}

/** Kernels take MT_MAX_RANK (common.cuh) sizes and strides per view. */
const MAX_RANK = 6;
/** Element counts are 32-bit inside the view-indexing kernels. */
const MAX_ELEMENTS = 2 ** 31 - 1;
const THREADS = 256;
/** Threads of the cross-entropy kernels (CE_THREADS in cross_entropy.cu, a launch bound). */
const CE_THREADS = 512;
/** topk keeps 8 values per lane (TOPK_PER_LANE in topk.cu). */
const TOPK_MAX_E = 256;
/** Default dynamic shared memory limit; above it a kernel must opt in. */
const DEFAULT_SHARED = 48 * 1024;

/**
 * One shape shared by several views, with dimensions of size 1 dropped and neighbours merged
 * wherever every view is contiguous across them; padded at the front to MAX_RANK.
 */
interface CollapsedViews { rank: number; dims: number[]; strides: number[][] }

function collapseViews(shape: Shape, views: readonly (readonly number[])[], what: string): CollapsedViews {
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
function setViewArgs(args: KernelArgs, first: number, v: CollapsedViews): number {
  let i = first;
  args.i32(i++, v.rank);
  for (const d of v.dims) args.i32(i++, d);
  for (const s of v.strides) for (const x of s) args.i64(i++, BigInt(x));
  return i;
}

function assertContiguous(t: Tensor, what: string): void {
  if (!t.isContiguous()) throw new Error(`internal: ${what} must be contiguous for the CUDA backend, got ${t} with strides [${t.strides}]`);
}

function assertFloat(t: Tensor, what: string): void {
  if (t.dtype === 'i32') throw new Error(`internal: ${what} is i32, expected f32 or bf16`);
}

function assertSameDType(a: Tensor, b: Tensor, what: string): void {
  if (a.dtype !== b.dtype) throw new Error(`internal: ${what} have different dtypes (${a.dtype}, ${b.dtype}); the CUDA kernel takes one`);
}

function assertCount(n: number, what: string): void {
  if (n > MAX_ELEMENTS) throw new Error(`internal: ${what} has ${n} elements; the CUDA kernels index at most 2^31 − 1 per launch`);
}

function lastDim(t: Tensor): number { return t.rank === 0 ? 1 : t.shape[t.rank - 1]!; }

function roundUp(x: number, m: number): number { return Math.ceil(x / m) * m; }

/** Threads for a block that walks one row of D elements: ~8 elements each, 64..1024. */
function rowThreads(D: number): number {
  return Math.min(1024, Math.max(64, roundUp(Math.ceil(D / 8), 32)));
}

/** Vectors of 8 a thread keeps in registers on rms_norm.cu's register path (RMS_VPT there). */
const RMS_VPT = 4;

/** Block size limit of the backward (RMS_BWD_THREADS in rms_norm.cu: its register budget). */
const RMS_BWD_THREADS = 256;

/** Whether rms_norm.cu takes its register path: rows of whole 16-byte vectors, aligned, that fit. */
function rmsRegisterPath(D: number, tensors: readonly Tensor[], maxThreads: number): boolean {
  return D % 8 === 0 && Math.ceil(D / 8 / RMS_VPT) <= maxThreads && tensors.every((t) => (devicePtr(t) & 15n) === 0n);
}

function rmsRegisterThreads(D: number): number {
  return roundUp(Math.ceil(D / 8 / RMS_VPT), 32);
}

function hostArrayFor(dtype: DType, n: number): HostArray {
  switch (dtype) {
    case 'f32': return new Float32Array(n);
    case 'bf16': return new Uint16Array(n);
    case 'i32': return new Int32Array(n);
    default: return dtype satisfies never;
  }
}

export class CudaBackend implements Backend {
  readonly kind = 'cuda' as const;
  readonly description: string;
  readonly allocator: CachingAllocator;
  private lt: CublasLt | undefined;
  private readonly kernels = new Map<string, CudaKernel>();
  /** Dynamic shared memory each kernel has been allowed beyond the default. */
  private readonly sharedLimit = new Map<CudaKernel, number>();
  /** Blocks for grid-stride kernels: enough to fill the GPU several times over. */
  private readonly maxGridBlocks: number;

  // One argument buffer per call site (see the header).
  private readonly copyArgs = new KernelArgs(3 + 1 + MAX_RANK * 3);
  private readonly fillArgs = new KernelArgs(3 + 1 + MAX_RANK * 2);
  private readonly unaryArgs = new KernelArgs(5 + 1 + MAX_RANK * 2);
  private readonly binaryArgs = new KernelArgs(5 + 1 + MAX_RANK * 3);
  private readonly sumRowsArgs = new KernelArgs(4);
  private readonly sumSquaresArgs = new KernelArgs(3);
  private readonly rmsFwdArgs = new KernelArgs(6);
  private readonly rmsBwdArgs = new KernelArgs(8);
  private readonly rmsReduceArgs = new KernelArgs(4);
  private readonly ropeArgs = new KernelArgs(8);
  private readonly swigluArgs = new KernelArgs(4);
  private readonly swigluBwdArgs = new KernelArgs(6);
  private readonly embeddingArgs = new KernelArgs(6);
  private readonly embeddingBwdArgs = new KernelArgs(6);
  private readonly ceArgs = new KernelArgs(5);
  private readonly ceBwdArgs = new KernelArgs(7);
  private readonly softmaxArgs = new KernelArgs(4);
  private readonly softmaxBwdArgs = new KernelArgs(5);
  private readonly topkArgs = new KernelArgs(6);
  private readonly bincountArgs = new KernelArgs(4);
  private readonly orderHistArgs = new KernelArgs(5);
  private readonly orderScanArgs = new KernelArgs(4);
  private readonly orderPlaceArgs = new KernelArgs(6);
  private readonly gatherArgs = new KernelArgs(6);
  private readonly scatterArgs = new KernelArgs(6);
  private readonly adamArgs = new KernelArgs(15);

  constructor(readonly ctx: CudaContext) {
    this.description = ctx.description;
    this.allocator = new CachingAllocator(ctx);
    this.maxGridBlocks = ctx.smCount * 16;
  }

  private kernel(file: string, name: string): CudaKernel {
    const key = `${file}:${name}`;
    let k = this.kernels.get(key);
    if (!k) {
      k = loadModule(this.ctx, file).kernel(name);
      this.kernels.set(key, k);
    }
    return k;
  }

  /** Raises a kernel's dynamic shared memory limit when a launch needs more than 48 KiB. */
  private allowShared(k: CudaKernel, bytes: number, what: string): void {
    if (bytes <= DEFAULT_SHARED || (this.sharedLimit.get(k) ?? DEFAULT_SHARED) >= bytes) return;
    if (bytes > this.ctx.maxSharedBytesOptin) {
      throw new Error(`${what} needs ${bytes} bytes of shared memory; ${this.ctx.name} has ${this.ctx.maxSharedBytesOptin} per block`);
    }
    k.setMaxDynamicShared(bytes);
    this.sharedLimit.set(k, bytes);
  }

  private gridFor(n: number, threads = THREADS): number {
    return Math.max(1, Math.min(Math.ceil(n / threads), this.maxGridBlocks));
  }

  private get cublasLt(): CublasLt {
    this.lt ??= new CublasLt(this.ctx, this.allocator);
    return this.lt;
  }

  // ---- memory ----

  alloc(bytes: number): DeviceBuffer { return new CudaDeviceBuffer(this.allocator.alloc(bytes)); }

  free(buffer: DeviceBuffer): void {
    if (!(buffer instanceof CudaDeviceBuffer)) throw new Error('internal: freeing a buffer that CudaBackend did not allocate');
    this.allocator.free(buffer.block);
  }

  memoryStats(): MemoryStats {
    const st = this.allocator.stats();
    return { liveBytes: st.liveBytes, peakBytes: st.peakBytes, reservedBytes: st.reservedBytes, systemAllocations: st.deviceAllocations };
  }

  resetPeak(): void { this.allocator.resetPeak(); }

  write(dst: Tensor, src: HostArray): void {
    assertContiguous(dst, 'write destination');
    const expected = hostArrayFor(dst.dtype, 0).constructor;
    if (src.constructor !== expected || src.length !== dst.size) {
      throw new Error(`internal: write of ${src.constructor.name}[${src.length}] into ${dst}`);
    }
    if (dst.size > 0) this.ctx.upload(devicePtr(dst), src, dst.bytes);
  }

  read(src: Tensor): HostArray {
    const out = hostArrayFor(src.dtype, src.size);
    if (src.size === 0) return out;
    if (src.isContiguous()) {
      this.ctx.download(out, devicePtr(src), src.bytes);
      return out;
    }
    const tmp = this.allocator.alloc(src.bytes);
    try {
      this.copyStrided(tmp.ptr, src.dtype, contiguousStrides(src.shape), devicePtr(src), src.dtype, src.strides, src.shape);
      this.ctx.download(out, tmp.ptr, src.bytes);
    } finally {
      this.allocator.free(tmp);
    }
    return out;
  }

  synchronize(): void { this.ctx.synchronize(); }

  // ---- element movement ----

  copy(dst: Tensor, src: Tensor): void {
    if (dst.size !== src.size) throw new Error(`internal: copy ${src} into ${dst}`);
    if (dst.size === 0) return;
    // Equal sizes with different shapes (a reshape): both views are walked in row-major order,
    // through a contiguous staging copy of src when src is not contiguous itself.
    if (dst.shape.length !== src.shape.length || dst.shape.some((d, i) => d !== src.shape[i])) {
      if (src.isContiguous()) {
        this.copyStrided(devicePtr(dst), dst.dtype, dst.strides, devicePtr(src), src.dtype, contiguousStrides(dst.shape), dst.shape);
        return;
      }
      const staged = this.allocator.alloc(src.bytes);
      try {
        this.copyStrided(staged.ptr, src.dtype, contiguousStrides(src.shape), devicePtr(src), src.dtype, src.strides, src.shape);
        this.copyStrided(devicePtr(dst), dst.dtype, dst.strides, staged.ptr, src.dtype, contiguousStrides(dst.shape), dst.shape);
      } finally {
        this.allocator.free(staged);
      }
      return;
    }
    this.copyStrided(devicePtr(dst), dst.dtype, dst.strides, devicePtr(src), src.dtype, src.strides, dst.shape);
  }

  private copyStrided(dst: bigint, dstType: DType, dstStrides: readonly number[], src: bigint, srcType: DType,
                      srcStrides: readonly number[], shape: Shape): void {
    let n = 1;
    for (const d of shape) n *= d;
    if (n === 0) return;
    assertCount(n, 'copy');
    const v = collapseViews(shape, [dstStrides, srcStrides], 'copy');
    const args = this.copyArgs.ptr(0, dst).ptr(1, src).i64(2, BigInt(n));
    setViewArgs(args, 3, v);
    this.kernel('copy.cu', `copy_${dstType}_${srcType}`).launch([this.gridFor(n), 1, 1], [THREADS, 1, 1], 0, args);
  }

  fill(dst: Tensor, value: number): void {
    const n = dst.size;
    if (n === 0) return;
    assertCount(n, 'fill');
    let bits: number;
    switch (dst.dtype) {
      case 'f32': bits = new Uint32Array(new Float32Array([value]).buffer)[0]!; break;
      case 'bf16': bits = f32ToBf16(Math.fround(value)); break;
      case 'i32': bits = value | 0; break;
      default: return dst.dtype satisfies never;
    }
    const v = collapseViews(dst.shape, [dst.strides], 'fill');
    const args = this.fillArgs.ptr(0, devicePtr(dst)).i64(1, BigInt(n)).u32(2, bits >>> 0);
    setViewArgs(args, 3, v);
    const name = dst.dtype === 'bf16' ? 'fill_b16' : 'fill_b32';
    this.kernel('fill.cu', name).launch([this.gridFor(n), 1, 1], [THREADS, 1, 1], 0, args);
  }

  // ---- elementwise and reductions ----

  unary(op: UnaryOp, out: Tensor, x: Tensor, scalar = 0): void {
    assertContiguous(out, 'unary output');
    const n = out.size;
    if (n === 0) return;
    assertCount(n, 'unary');
    const v = collapseViews(out.shape, [x.strides], `unary ${op}`);
    const args = this.unaryArgs.ptr(0, devicePtr(out)).ptr(1, devicePtr(x)).i64(2, BigInt(n)).i32(3, unaryCode(op)).f32(4, scalar);
    setViewArgs(args, 5, v);
    this.kernel('unary.cu', `unary_${out.dtype}_${x.dtype}`).launch([this.gridFor(n), 1, 1], [THREADS, 1, 1], 0, args);
  }

  binary(op: BinaryOp, out: Tensor, a: Tensor, b: Tensor): void {
    assertContiguous(out, 'binary output');
    const n = out.size;
    if (n === 0) return;
    assertCount(n, 'binary');
    const ints = [out, a, b].filter((t) => t.dtype === 'i32').length;
    if (ints !== 0 && ints !== 3) throw new Error(`internal: binary ${op} mixes i32 with floats (${out.dtype} = ${a.dtype} ${op} ${b.dtype})`);
    const v = collapseViews(out.shape, [a.strides, b.strides], `binary ${op}`);
    const args = this.binaryArgs.ptr(0, devicePtr(out)).ptr(1, devicePtr(a)).ptr(2, devicePtr(b)).i64(3, BigInt(n)).i32(4, binaryCode(op));
    setViewArgs(args, 5, v);
    this.kernel('binary.cu', `binary_${out.dtype}_${a.dtype}_${b.dtype}`).launch([this.gridFor(n), 1, 1], [THREADS, 1, 1], 0, args);
  }

  sumLastDim(out: Tensor, x: Tensor): void {
    assertContiguous(out, 'sumLastDim output');
    assertContiguous(x, 'sumLastDim input');
    assertFloat(x, 'sumLastDim input');
    assertFloat(out, 'sumLastDim output');
    const C = lastDim(x), R = C === 0 ? out.size : x.size / C;
    if (R === 0) return;
    if (C === 0) { this.fill(out, 0); return; }
    assertCount(x.size, 'sumLastDim');
    const args = this.sumRowsArgs.ptr(0, devicePtr(out)).ptr(1, devicePtr(x)).i32(2, R).i32(3, C);
    if (C <= 1024) {
      const rowsPerBlock = THREADS / 32;
      this.kernel('sum_last_dim.cu', `sum_rows_warp_${out.dtype}_${x.dtype}`).launch([Math.ceil(R / rowsPerBlock), 1, 1], [THREADS, 1, 1], 0, args);
    } else {
      this.kernel('sum_last_dim.cu', `sum_rows_block_${out.dtype}_${x.dtype}`).launch([R, 1, 1], [512, 1, 1], 0, args);
    }
  }

  sumSquaresInto(out: Tensor, x: Tensor): void {
    if (out.dtype !== 'f32') throw new Error(`internal: sumSquaresInto output is ${out.dtype}, expected f32`);
    assertContiguous(x, 'sumSquaresInto input');
    assertFloat(x, 'sumSquaresInto input');
    const n = x.size;
    if (n === 0) return;
    const args = this.sumSquaresArgs.ptr(0, devicePtr(out)).ptr(1, devicePtr(x)).i64(2, BigInt(n));
    // Four elements per thread before the first reduction; at most a few hundred partials.
    const blocks = Math.max(1, Math.min(Math.ceil(n / (THREADS * 4)), this.ctx.smCount * 4));
    this.kernel('sum_squares.cu', `sum_squares_${x.dtype}`).launch([blocks, 1, 1], [THREADS, 1, 1], 0, args);
  }

  // ---- dense algebra ----

  matmul(out: Tensor, a: Tensor, b: Tensor, opts: MatmulOptions): void {
    assertContiguous(out, 'matmul output');
    assertContiguous(a, 'matmul a');
    assertContiguous(b, 'matmul b');
    assertSameDType(a, b, 'matmul operands');
    assertFloat(a, 'matmul operand');
    const transA = opts.transA ?? false, transB = opts.transB ?? false;
    const alpha = opts.alpha ?? 1, beta = opts.beta ?? 0;
    if ((a.rank !== 2 && a.rank !== 3) || (b.rank !== 2 && b.rank !== 3) || (out.rank !== 2 && out.rank !== 3)) {
      throw new Error(`internal: matmul ranks a ${a.rank}, b ${b.rank}, out ${out.rank} (2 or 3 each)`);
    }
    const aRows = a.shape[a.rank - 2]!, aCols = a.shape[a.rank - 1]!;
    const bRows = b.shape[b.rank - 2]!, bCols = b.shape[b.rank - 1]!;
    const M = transA ? aCols : aRows, K = transA ? aRows : aCols;
    const N = transB ? bRows : bCols, Kb = transB ? bCols : bRows;
    if (Kb !== K) throw new Error(`internal: matmul inner dims ${K} vs ${Kb}`);
    const aBatch = a.rank === 3 ? a.shape[0]! : 1, bBatch = b.rank === 3 ? b.shape[0]! : 1;
    const batch = Math.max(aBatch, bBatch, out.rank === 3 ? out.shape[0]! : 1);
    if ((a.rank === 3 && aBatch !== batch) || (b.rank === 3 && bBatch !== batch) || out.size !== batch * M * N) {
      throw new Error(`internal: matmul out [${out.shape}] for a [${a.shape}] b [${b.shape}] (batch ${batch}, ${M}x${N})`);
    }
    if (out.size === 0) return;
    if (K === 0) {
      // op(a)·op(b) is zero: out = beta·out.
      if (beta === 0) this.fill(out, 0);
      else this.unary('scale', out, out, beta);
      return;
    }
    const dtypeIn = a.dtype as 'f32' | 'bf16';
    const dtypeOut = out.dtype;
    assertFloat(out, 'matmul output');
    if (batch > 1 && a.rank === 3 && b.rank === 2 && !transA) {
      // A shared right operand: the batch is one [batch·M, K] × [K, N] product.
      this.cublasLt.gemm(devicePtr(out), devicePtr(a), devicePtr(b), {
        m: batch * M, n: N, k: K, transA: false, transB, alpha, beta, dtypeIn, dtypeOut: dtypeOut as 'f32' | 'bf16',
      });
      return;
    }
    this.cublasLt.gemm(devicePtr(out), devicePtr(a), devicePtr(b), {
      m: M, n: N, k: K, transA, transB, alpha, beta, batch,
      strideA: a.rank === 3 ? M * K : 0,
      strideB: b.rank === 3 ? K * N : 0,
      strideOut: M * N,
      dtypeIn, dtypeOut: dtypeOut as 'f32' | 'bf16',
    });
  }

  // ---- model pieces ----

  rmsNorm(y: Tensor, rstd: Tensor, x: Tensor, w: Tensor, eps: number): void {
    for (const [t, what] of [[y, 'y'], [rstd, 'rstd'], [x, 'x'], [w, 'w']] as const) assertContiguous(t, `rmsNorm ${what}`);
    assertSameDType(x, y, 'rmsNorm x and y');
    assertFloat(x, 'rmsNorm x');
    assertFloat(w, 'rmsNorm w');
    if (rstd.dtype !== 'f32') throw new Error(`internal: rmsNorm rstd is ${rstd.dtype}, expected f32`);
    const D = lastDim(x), R = D === 0 ? 0 : x.size / D;
    if (R === 0) return;
    assertCount(x.size, 'rmsNorm');
    const threads = rmsRegisterPath(D, [x, y, w], 1024) ? rmsRegisterThreads(D) : rowThreads(D);
    const args = this.rmsFwdArgs.ptr(0, devicePtr(y)).ptr(1, devicePtr(rstd)).ptr(2, devicePtr(x)).ptr(3, devicePtr(w)).i32(4, D).f32(5, eps);
    this.kernel('rms_norm.cu', `rms_norm_fwd_${x.dtype}_${w.dtype}`).launch([R, 1, 1], [threads, 1, 1], 0, args);
  }

  rmsNormBackward(dx: Tensor, dw: Tensor, dy: Tensor, x: Tensor, w: Tensor, rstd: Tensor): void {
    for (const [t, what] of [[dx, 'dx'], [dw, 'dw'], [dy, 'dy'], [x, 'x'], [w, 'w'], [rstd, 'rstd']] as const) assertContiguous(t, `rmsNormBackward ${what}`);
    assertSameDType(dx, x, 'rmsNormBackward dx and x');
    assertSameDType(dy, x, 'rmsNormBackward dy and x');
    assertFloat(x, 'rmsNormBackward x');
    assertFloat(w, 'rmsNormBackward w');
    if (dw.dtype !== 'f32' || rstd.dtype !== 'f32') throw new Error(`internal: rmsNormBackward dw and rstd must be f32 (got ${dw.dtype}, ${rstd.dtype})`);
    const D = lastDim(x), R = D === 0 ? 0 : x.size / D;
    if (R === 0) return;
    assertCount(x.size, 'rmsNormBackward');
    const k = this.kernel('rms_norm.cu', `rms_norm_bwd_${x.dtype}_${w.dtype}`);
    const registers = rmsRegisterPath(D, [dx, dy, x, w], RMS_BWD_THREADS);
    const threads = registers ? rmsRegisterThreads(D) : Math.min(RMS_BWD_THREADS, rowThreads(D));
    // Register path: ~160 registers a thread, so as many blocks as fit an SM's 64K registers.
    const blocksPerSm = registers ? Math.max(1, Math.min(16, Math.floor(65536 / (160 * threads)))) : 2;
    const G = Math.min(R, this.ctx.smCount * blocksPerSm);
    const shared = registers ? 0 : D * 4;
    this.allowShared(k, shared, `rmsNormBackward over width ${D}`);
    const partial = this.allocator.alloc(G * D * 4);
    try {
      const args = this.rmsBwdArgs.ptr(0, devicePtr(dx)).ptr(1, partial.ptr).ptr(2, devicePtr(dy)).ptr(3, devicePtr(x))
        .ptr(4, devicePtr(w)).ptr(5, devicePtr(rstd)).i32(6, R).i32(7, D);
      k.launch([G, 1, 1], [threads, 1, 1], shared, args);
      const red = this.rmsReduceArgs.ptr(0, devicePtr(dw)).ptr(1, partial.ptr).i32(2, G).i32(3, D);
      this.kernel('rms_norm.cu', 'rms_norm_dw_reduce').launch([Math.ceil(D / 32), 1, 1], [32, 32, 1], 0, red);
    } finally {
      this.allocator.free(partial); // stream order: the next user of the block runs after the reduce
    }
  }

  rope(out: Tensor, x: Tensor, cos: Tensor, sin: Tensor): void { this.ropeLaunch('rope_fwd', out, x, cos, sin); }

  ropeBackward(dx: Tensor, dout: Tensor, cos: Tensor, sin: Tensor): void { this.ropeLaunch('rope_bwd', dx, dout, cos, sin); }

  private ropeLaunch(name: 'rope_fwd' | 'rope_bwd', out: Tensor, x: Tensor, cos: Tensor, sin: Tensor): void {
    for (const [t, what] of [[out, 'output'], [x, 'input'], [cos, 'cos'], [sin, 'sin']] as const) assertContiguous(t, `rope ${what}`);
    if (x.rank !== 4) throw new Error(`internal: rope input [${x.shape}] must be [B,S,H,D]`);
    if (cos.dtype !== 'f32' || sin.dtype !== 'f32') throw new Error('internal: rope tables must be f32');
    assertFloat(x, 'rope input');
    assertFloat(out, 'rope output');
    const [, S, H, D] = x.shape as [number, number, number, number];
    if (D % 2 !== 0) throw new Error(`internal: rope width ${D} is odd`);
    const pairs = x.size / 2;
    if (pairs === 0) return;
    assertCount(x.size, 'rope');
    const args = this.ropeArgs.ptr(0, devicePtr(out)).ptr(1, devicePtr(x)).ptr(2, devicePtr(cos)).ptr(3, devicePtr(sin))
      .i64(4, BigInt(pairs)).i32(5, S).i32(6, H).i32(7, D / 2);
    this.kernel('rope.cu', `${name}_${out.dtype}_${x.dtype}`).launch([this.gridFor(pairs), 1, 1], [THREADS, 1, 1], 0, args);
  }

  swiglu(out: Tensor, gate: Tensor, up: Tensor): void {
    for (const [t, what] of [[out, 'out'], [gate, 'gate'], [up, 'up']] as const) assertContiguous(t, `swiglu ${what}`);
    assertSameDType(gate, up, 'swiglu gate and up');
    assertFloat(gate, 'swiglu gate');
    assertFloat(out, 'swiglu output');
    const n = out.size;
    if (n === 0) return;
    const args = this.swigluArgs.ptr(0, devicePtr(out)).ptr(1, devicePtr(gate)).ptr(2, devicePtr(up)).i64(3, BigInt(n));
    this.kernel('swiglu.cu', `swiglu_fwd_${out.dtype}_${gate.dtype}`).launch([this.gridFor(n), 1, 1], [THREADS, 1, 1], 0, args);
  }

  swigluBackward(dgate: Tensor, dup: Tensor, dout: Tensor, gate: Tensor, up: Tensor): void {
    for (const [t, what] of [[dgate, 'dgate'], [dup, 'dup'], [dout, 'dout'], [gate, 'gate'], [up, 'up']] as const) assertContiguous(t, `swigluBackward ${what}`);
    assertSameDType(gate, up, 'swigluBackward gate and up');
    assertSameDType(dgate, dup, 'swigluBackward dgate and dup');
    assertFloat(gate, 'swigluBackward gate');
    assertFloat(dgate, 'swigluBackward dgate');
    assertFloat(dout, 'swigluBackward dout');
    const n = gate.size;
    if (n === 0) return;
    const args = this.swigluBwdArgs.ptr(0, devicePtr(dgate)).ptr(1, devicePtr(dup)).ptr(2, devicePtr(dout)).ptr(3, devicePtr(gate))
      .ptr(4, devicePtr(up)).i64(5, BigInt(n));
    this.kernel('swiglu.cu', `swiglu_bwd_${dgate.dtype}_${dout.dtype}_${gate.dtype}`).launch([this.gridFor(n), 1, 1], [THREADS, 1, 1], 0, args);
  }

  embedding(out: Tensor, ids: Tensor, weight: Tensor): void {
    for (const [t, what] of [[out, 'out'], [ids, 'ids'], [weight, 'weight']] as const) assertContiguous(t, `embedding ${what}`);
    if (ids.dtype !== 'i32') throw new Error(`internal: embedding ids are ${ids.dtype}, expected i32`);
    assertFloat(weight, 'embedding weight');
    assertFloat(out, 'embedding output');
    const [V, D] = weight.shape as [number, number];
    const total = ids.size * D;
    if (total === 0) return;
    assertCount(total, 'embedding');
    const args = this.embeddingArgs.ptr(0, devicePtr(out)).ptr(1, devicePtr(ids)).ptr(2, devicePtr(weight)).i64(3, BigInt(total)).i32(4, D).i32(5, V);
    this.kernel('embedding.cu', `embedding_fwd_${out.dtype}_${weight.dtype}`).launch([this.gridFor(total), 1, 1], [THREADS, 1, 1], 0, args);
  }

  embeddingBackward(dweight: Tensor, ids: Tensor, dout: Tensor): void {
    for (const [t, what] of [[dweight, 'dweight'], [ids, 'ids'], [dout, 'dout']] as const) assertContiguous(t, `embeddingBackward ${what}`);
    if (dweight.dtype !== 'f32') throw new Error(`internal: embeddingBackward dweight is ${dweight.dtype}, expected f32`);
    if (ids.dtype !== 'i32') throw new Error(`internal: embeddingBackward ids are ${ids.dtype}, expected i32`);
    assertFloat(dout, 'embeddingBackward dout');
    const [V, D] = dweight.shape as [number, number];
    const total = ids.size * D;
    if (total === 0) return;
    assertCount(total, 'embeddingBackward');
    const args = this.embeddingBwdArgs.ptr(0, devicePtr(dweight)).ptr(1, devicePtr(ids)).ptr(2, devicePtr(dout)).i64(3, BigInt(total)).i32(4, D).i32(5, V);
    this.kernel('embedding.cu', `embedding_bwd_${dout.dtype}`).launch([this.gridFor(total), 1, 1], [THREADS, 1, 1], 0, args);
  }

  crossEntropy(loss: Tensor, lse: Tensor, logits: Tensor, labels: Tensor): void {
    for (const [t, what] of [[loss, 'loss'], [lse, 'lse'], [logits, 'logits'], [labels, 'labels']] as const) assertContiguous(t, `crossEntropy ${what}`);
    if (loss.dtype !== 'f32' || lse.dtype !== 'f32' || labels.dtype !== 'i32') throw new Error('internal: crossEntropy loss/lse must be f32 and labels i32');
    assertFloat(logits, 'crossEntropy logits');
    const V = lastDim(logits), N = V === 0 ? 0 : logits.size / V;
    if (N === 0) return;
    const args = this.ceArgs.ptr(0, devicePtr(loss)).ptr(1, devicePtr(lse)).ptr(2, devicePtr(logits)).ptr(3, devicePtr(labels)).i32(4, V);
    this.kernel('cross_entropy.cu', `cross_entropy_fwd_${logits.dtype}`).launch([N, 1, 1], [CE_THREADS, 1, 1], 0, args);
  }

  crossEntropyBackward(dlogits: Tensor, logits: Tensor, labels: Tensor, lse: Tensor, dloss: Tensor, scale: number): void {
    for (const [t, what] of [[dlogits, 'dlogits'], [logits, 'logits'], [labels, 'labels'], [lse, 'lse'], [dloss, 'dloss']] as const) {
      assertContiguous(t, `crossEntropyBackward ${what}`);
    }
    if (lse.dtype !== 'f32' || dloss.dtype !== 'f32' || labels.dtype !== 'i32') throw new Error('internal: crossEntropyBackward lse/dloss must be f32 and labels i32');
    assertFloat(logits, 'crossEntropyBackward logits');
    assertFloat(dlogits, 'crossEntropyBackward dlogits');
    const V = lastDim(logits), N = V === 0 ? 0 : logits.size / V;
    if (N === 0) return;
    const args = this.ceBwdArgs.ptr(0, devicePtr(dlogits)).ptr(1, devicePtr(logits)).ptr(2, devicePtr(labels)).ptr(3, devicePtr(lse))
      .ptr(4, devicePtr(dloss)).f32(5, scale).i32(6, V);
    this.kernel('cross_entropy.cu', `cross_entropy_bwd_${dlogits.dtype}_${logits.dtype}`).launch([N, 1, 1], [CE_THREADS, 1, 1], 0, args);
  }

  softmax(out: Tensor, x: Tensor): void {
    assertContiguous(out, 'softmax output');
    assertContiguous(x, 'softmax input');
    if (out.dtype !== 'f32' || x.dtype !== 'f32') throw new Error(`internal: softmax takes f32 (got ${x.dtype} → ${out.dtype})`);
    const C = lastDim(x), R = C === 0 ? 0 : x.size / C;
    if (R === 0) return;
    const args = this.softmaxArgs.ptr(0, devicePtr(out)).ptr(1, devicePtr(x)).i32(2, R).i32(3, C);
    this.kernel('softmax.cu', 'softmax_fwd').launch([Math.ceil(R / (THREADS / 32)), 1, 1], [THREADS, 1, 1], 0, args);
  }

  softmaxBackward(dx: Tensor, dy: Tensor, y: Tensor): void {
    for (const [t, what] of [[dx, 'dx'], [dy, 'dy'], [y, 'y']] as const) {
      assertContiguous(t, `softmaxBackward ${what}`);
      if (t.dtype !== 'f32') throw new Error(`internal: softmaxBackward ${what} is ${t.dtype}, expected f32`);
    }
    const C = lastDim(y), R = C === 0 ? 0 : y.size / C;
    if (R === 0) return;
    const args = this.softmaxBwdArgs.ptr(0, devicePtr(dx)).ptr(1, devicePtr(dy)).ptr(2, devicePtr(y)).i32(3, R).i32(4, C);
    this.kernel('softmax.cu', 'softmax_bwd').launch([Math.ceil(R / (THREADS / 32)), 1, 1], [THREADS, 1, 1], 0, args);
  }

  topk(values: Tensor, indices: Tensor, x: Tensor, k: number): void {
    for (const [t, what] of [[values, 'values'], [indices, 'indices'], [x, 'x']] as const) assertContiguous(t, `topk ${what}`);
    if (x.dtype !== 'f32' || values.dtype !== 'f32' || indices.dtype !== 'i32') throw new Error('internal: topk takes f32 x and values, i32 indices');
    const E = lastDim(x), N = E === 0 ? 0 : x.size / E;
    if (E > TOPK_MAX_E) throw new Error(`topk over ${E} experts: the CUDA router kernel handles at most ${TOPK_MAX_E}; use fewer routed experts`);
    if (!Number.isInteger(k) || k < 1 || k > E) throw new Error(`internal: topk k=${k} for ${E} entries`);
    if (N === 0) return;
    const args = this.topkArgs.ptr(0, devicePtr(values)).ptr(1, devicePtr(indices)).ptr(2, devicePtr(x)).i32(3, N).i32(4, E).i32(5, k);
    this.kernel('topk.cu', 'topk_rows').launch([Math.ceil(N / (THREADS / 32)), 1, 1], [THREADS, 1, 1], 0, args);
  }

  bincount(counts: Tensor, idx: Tensor): void {
    assertContiguous(counts, 'bincount counts');
    assertContiguous(idx, 'bincount idx');
    if (counts.dtype !== 'i32' || idx.dtype !== 'i32') throw new Error('internal: bincount takes i32 idx and counts');
    const G = idx.rank === 1 ? 1 : idx.shape[0]!, M = G === 0 ? 0 : idx.size / G, E = G === 0 ? 0 : counts.size / G;
    if (counts.size === 0) return;
    this.ctx.fillWords(devicePtr(counts), 0, counts.size);
    if (M === 0) return;
    if (G > 65535) throw new Error(`internal: bincount over ${G} groups (grid y ≤ 65535)`);
    const k = this.kernel('bincount.cu', 'bincount_rows');
    this.allowShared(k, E * 4, `bincount over ${E} bins`);
    const blocksPerGroup = Math.max(1, Math.min(Math.ceil(M / (THREADS * 4)), Math.ceil(this.ctx.smCount * 2 / G)));
    const args = this.bincountArgs.ptr(0, devicePtr(counts)).ptr(1, devicePtr(idx)).i32(2, M).i32(3, E);
    k.launch([blocksPerGroup, G, 1], [THREADS, 1, 1], E * 4, args);
  }

  expertOrder(order: Tensor, offsets: Tensor, expertOfSlot: Tensor, numExperts: number): void {
    for (const [t, what] of [[order, 'order'], [offsets, 'offsets'], [expertOfSlot, 'expertOfSlot']] as const) {
      assertContiguous(t, `expertOrder ${what}`);
      if (t.dtype !== 'i32') throw new Error(`internal: expertOrder ${what} is ${t.dtype}, expected i32`);
    }
    const M = expertOfSlot.size, E = numExperts;
    if (offsets.size !== E + 1) throw new Error(`internal: expertOrder offsets has ${offsets.size} entries for ${E} experts`);
    if (M === 0) { this.ctx.fillWords(devicePtr(offsets), 0, E + 1); return; }
    // At most ~128 chunks so the per-expert scan over chunks stays short; 32-slot steps inside one.
    const chunk = roundUp(Math.max(1024, Math.ceil(M / 128)), 32);
    const B = Math.ceil(M / chunk);
    const shared = E * 4;
    const hist = this.kernel('expert_order.cu', 'expert_order_hist');
    const scan = this.kernel('expert_order.cu', 'expert_order_scan');
    const place = this.kernel('expert_order.cu', 'expert_order_place');
    for (const k of [hist, scan, place]) this.allowShared(k, shared, `expertOrder over ${E} experts`);
    const work = this.allocator.alloc(B * E * 4);
    try {
      const slots = devicePtr(expertOfSlot);
      hist.launch([B, 1, 1], [THREADS, 1, 1], shared, this.orderHistArgs.ptr(0, work.ptr).ptr(1, slots).i32(2, M).i32(3, E).i32(4, chunk));
      scan.launch([1, 1, 1], [Math.min(1024, roundUp(Math.max(E, 32), 32)), 1, 1], shared,
        this.orderScanArgs.ptr(0, work.ptr).ptr(1, devicePtr(offsets)).i32(2, B).i32(3, E));
      place.launch([B, 1, 1], [32, 1, 1], shared,
        this.orderPlaceArgs.ptr(0, devicePtr(order)).ptr(1, slots).ptr(2, work.ptr).i32(3, M).i32(4, E).i32(5, chunk));
    } finally {
      this.allocator.free(work);
    }
  }

  gatherRows(out: Tensor, x: Tensor, idx: Tensor, weights: Tensor | null): void {
    for (const [t, what] of [[out, 'out'], [x, 'x'], [idx, 'idx']] as const) assertContiguous(t, `gatherRows ${what}`);
    if (weights) { assertContiguous(weights, 'gatherRows weights'); assertFloat(weights, 'gatherRows weights'); }
    if (idx.dtype !== 'i32') throw new Error(`internal: gatherRows idx is ${idx.dtype}, expected i32`);
    assertFloat(x, 'gatherRows x');
    assertFloat(out, 'gatherRows output');
    const D = lastDim(x), N = D === 0 ? 0 : x.size / D, M = idx.size;
    if (M === 0 || D === 0) return;
    assertCount(M * D, 'gatherRows');
    const args = this.gatherArgs.ptr(0, devicePtr(out)).ptr(1, devicePtr(x)).ptr(2, devicePtr(idx)).ptr(3, weights ? devicePtr(weights) : 0n)
      .i32(4, N).i32(5, D);
    this.kernel('gather_rows.cu', `gather_rows_${out.dtype}_${x.dtype}_${weights?.dtype ?? 'f32'}`)
      .launch([M, 1, 1], [Math.min(THREADS, roundUp(D, 32)), 1, 1], 0, args);
  }

  scatterAddRows(out: Tensor, src: Tensor, idx: Tensor, weights: Tensor | null): void {
    for (const [t, what] of [[out, 'out'], [src, 'src'], [idx, 'idx']] as const) assertContiguous(t, `scatterAddRows ${what}`);
    if (weights) { assertContiguous(weights, 'scatterAddRows weights'); assertFloat(weights, 'scatterAddRows weights'); }
    if (idx.dtype !== 'i32') throw new Error(`internal: scatterAddRows idx is ${idx.dtype}, expected i32`);
    assertFloat(src, 'scatterAddRows src');
    assertFloat(out, 'scatterAddRows output');
    const D = lastDim(src), N = D === 0 ? 0 : out.size / D, M = idx.size;
    if (M === 0 || D === 0) return;
    assertCount(Math.max(M, N) * D, 'scatterAddRows');
    // A bf16 destination accumulates in an f32 copy and is rounded once at the end.
    const wide = out.dtype === 'bf16' ? this.allocator.alloc(out.size * 4) : null;
    try {
      const outPtr = wide ? wide.ptr : devicePtr(out);
      if (wide) this.copyStrided(wide.ptr, 'f32', [1], devicePtr(out), 'bf16', [1], [out.size]);
      const args = this.scatterArgs.ptr(0, outPtr).ptr(1, devicePtr(src)).ptr(2, devicePtr(idx)).ptr(3, weights ? devicePtr(weights) : 0n)
        .i32(4, N).i32(5, D);
      this.kernel('scatter_add_rows.cu', `scatter_add_rows_${src.dtype}_${weights?.dtype ?? 'f32'}`)
        .launch([M, 1, 1], [Math.min(THREADS, roundUp(D, 32)), 1, 1], 0, args);
      if (wide) this.copyStrided(devicePtr(out), 'bf16', [1], wide.ptr, 'f32', [1], [out.size]);
    } finally {
      if (wide) this.allocator.free(wide);
    }
  }

  mlaAttention(o: Tensor, lse: Tensor, qNope: Tensor, qPe: Tensor, kNope: Tensor, kPe: Tensor, v: Tensor, opts: AttentionOptions): void {
    if (tensorCoreAttention(qNope, qPe, v)) mlaAttentionForward(this.ctx, o, lse, qNope, qPe, kNope, kPe, v, opts);
    else mlaAttentionGenericForward(this.ctx, o, lse, qNope, qPe, kNope, kPe, v, opts);
  }

  mlaAttentionBackward(
    grads: { dqNope: Tensor; dqPe: Tensor; dkNope: Tensor; dkPe: Tensor; dv: Tensor },
    dout: Tensor, qNope: Tensor, qPe: Tensor, kNope: Tensor, kPe: Tensor, v: Tensor, o: Tensor, lse: Tensor, opts: AttentionOptions,
  ): void {
    if (tensorCoreAttention(qNope, qPe, v)) {
      mlaAttentionBackwardCuda(this.ctx, this.allocator, grads, dout, qNope, qPe, kNope, kPe, v, o, lse, opts);
      return;
    }
    const toOut = (dst: Tensor, src: bigint) => this.copyStrided(devicePtr(dst), dst.dtype, contiguousStrides(dst.shape), src, 'f32', contiguousStrides(dst.shape), dst.shape);
    mlaAttentionGenericBackward(this.ctx, this.allocator, toOut, grads, dout, qNope, qPe, kNope, kPe, v, o, lse, opts);
  }

  // ---- optimizer ----

  adam(param: Tensor, grad: Tensor, m: Tensor, v: Tensor, lowp: Tensor | null, h: AdamHyper): void {
    for (const [t, what] of [[param, 'param'], [grad, 'grad'], [m, 'm'], [v, 'v']] as const) assertContiguous(t, `adam ${what}`);
    if (param.dtype !== 'f32' || m.dtype !== 'f32' || v.dtype !== 'f32') throw new Error('internal: adam param, m and v must be f32');
    assertFloat(grad, 'adam grad');
    if (lowp) { assertContiguous(lowp, 'adam lowp'); assertFloat(lowp, 'adam lowp'); }
    const n = param.size;
    if (n === 0) return;
    const bc1 = 1 - h.beta1 ** h.step, bc2 = 1 - h.beta2 ** h.step;
    const args = this.adamArgs.ptr(0, devicePtr(param)).ptr(1, devicePtr(grad)).ptr(2, devicePtr(m)).ptr(3, devicePtr(v))
      .ptr(4, lowp ? devicePtr(lowp) : 0n).i64(5, BigInt(n)).f32(6, h.lr).f32(7, h.beta1).f32(8, h.beta2).f32(9, h.eps)
      .f32(10, h.weightDecay).i32(11, h.decoupled ? 1 : 0).f32(12, bc1).f32(13, bc2).f32(14, h.gradScale);
    this.kernel('adam.cu', `adam_${grad.dtype}_${lowp?.dtype ?? 'bf16'}`).launch([this.gridFor(n), 1, 1], [THREADS, 1, 1], 0, args);
  }
}
