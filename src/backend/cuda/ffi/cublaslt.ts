// GEMM through cuBLASLt: bf16 or f32 operands, f32 accumulation (CUBLAS_COMPUTE_32F), f32 or
// bf16 output, transposes, alpha/beta, strided batches. The caller thinks in row-major
// matrices; cuBLASLt is column-major, and a row-major [R,C] matrix is the column-major [C,R]
// matrix with the same bytes, so out = op(a)·op(b) is computed as outᵀ = op(b)ᵀ·op(a)ᵀ with
// b passed as cuBLASLt's "A" and a as its "B".
//
// Everything but the cublasLtMatmul call itself (descriptors, layouts, the heuristic's chosen
// algorithm) is built once per shape (algorithms per size bucket) and cached, so the hot path is one FFI call.
import koffi from 'koffi';
import type { CachingAllocator, GpuBlock } from '../runtime/allocator.js';
import type { CudaContext } from '../runtime/context.js';
import { loadLibrary } from './library.js';

type Fn = (...args: unknown[]) => number;

// cuBLAS / CUDA enum values (cublasLt.h, library_types.h).
const CUBLAS_COMPUTE_32F = 68;
const CUDA_R_32F = 0;
const CUDA_R_16BF = 14;
const CUBLAS_OP_N = 0;
const CUBLAS_OP_T = 1;
const CUBLASLT_MATMUL_DESC_TRANSA = 3;
const CUBLASLT_MATMUL_DESC_TRANSB = 4;
const CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT = 5;
const CUBLASLT_MATRIX_LAYOUT_STRIDED_BATCH_OFFSET = 6;
const CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES = 1;
const CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES = 5;
const CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES = 6;
const CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES = 7;
const CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES = 8;
/** sizeof(cublasLtMatmulHeuristicResult_t): algo (64) + workspaceSize (8) + state, wavesCount (8) + reserved (16). */
const HEURISTIC_RESULT_BYTES = 96;

/** Cached shapes before the cache is emptied (a plan is a few hundred bytes of host memory). */
const MAX_PLANS = 4096;

/** 32 MiB: what cuBLAS recommends on Hopper for its fastest kernels (split-K, stream-K). */
export const CUBLASLT_WORKSPACE_BYTES = 32 << 20;

export type GemmDType = 'bf16' | 'f32';

export interface GemmOptions {
  /** out is [m, n]; op(a) is [m, k]; op(b) is [k, n] (all row-major). */
  m: number;
  n: number;
  k: number;
  /** a is stored [k, m] and used transposed (default false: stored [m, k]). */
  transA?: boolean;
  /** b is stored [n, k] and used transposed (default false: stored [k, n]). */
  transB?: boolean;
  /** out = alpha·op(a)·op(b) + beta·out (defaults 1 and 0). */
  alpha?: number;
  beta?: number;
  /** Number of products (default 1). */
  batch?: number;
  /** Elements between consecutive batch entries; 0 shares one matrix across the batch. Defaults: m·k, k·n, m·n. */
  strideA?: number;
  strideB?: number;
  strideOut?: number;
  dtypeIn: GemmDType;
  dtypeOut: GemmDType;
}

interface RawLt {
  cublasLtCreate: Fn;
  cublasLtMatmulDescCreate: Fn;
  cublasLtMatmulDescSetAttribute: Fn;
  cublasLtMatmulDescDestroy: Fn;
  cublasLtMatrixLayoutDestroy: Fn;
  cublasLtMatrixLayoutCreate: Fn;
  cublasLtMatrixLayoutSetAttribute: Fn;
  cublasLtMatmulPreferenceCreate: Fn;
  cublasLtMatmulPreferenceSetAttribute: Fn;
  cublasLtMatmulPreferenceDestroy: Fn;
  cublasLtMatmulAlgoGetHeuristic: Fn;
  cublasLtMatmul: Fn;
  cublasLtGetStatusString: (status: number) => string;
  cublasLtGetVersion: () => number;
}

function bind(): RawLt {
  const lib = loadLibrary('cublasLt');
  const f = (name: string, args: string[]): Fn => lib.func(name, 'int', args) as Fn;
  return {
    cublasLtCreate: f('cublasLtCreate', ['void *']),
    cublasLtMatmulDescCreate: f('cublasLtMatmulDescCreate', ['void *', 'int', 'int']),
    cublasLtMatmulDescSetAttribute: f('cublasLtMatmulDescSetAttribute', ['void *', 'int', 'void *', 'size_t']),
    cublasLtMatmulDescDestroy: f('cublasLtMatmulDescDestroy', ['void *']),
    cublasLtMatrixLayoutDestroy: f('cublasLtMatrixLayoutDestroy', ['void *']),
    cublasLtMatrixLayoutCreate: f('cublasLtMatrixLayoutCreate', ['void *', 'int', 'uint64_t', 'uint64_t', 'int64_t']),
    cublasLtMatrixLayoutSetAttribute: f('cublasLtMatrixLayoutSetAttribute', ['void *', 'int', 'void *', 'size_t']),
    cublasLtMatmulPreferenceCreate: f('cublasLtMatmulPreferenceCreate', ['void *']),
    cublasLtMatmulPreferenceSetAttribute: f('cublasLtMatmulPreferenceSetAttribute', ['void *', 'int', 'void *', 'size_t']),
    cublasLtMatmulPreferenceDestroy: f('cublasLtMatmulPreferenceDestroy', ['void *']),
    cublasLtMatmulAlgoGetHeuristic: f('cublasLtMatmulAlgoGetHeuristic', ['void *', 'void *', 'void *', 'void *', 'void *', 'void *', 'void *', 'int', 'void *', 'void *']),
    cublasLtMatmul: f('cublasLtMatmul', [
      'void *', 'void *', 'void *', // handle, desc, alpha
      'uint64_t', 'void *', 'uint64_t', 'void *', // A, Adesc, B, Bdesc
      'void *', 'uint64_t', 'void *', 'uint64_t', 'void *', // beta, C, Cdesc, D, Ddesc
      'void *', 'uint64_t', 'size_t', 'void *', // algo, workspace, workspaceBytes, stream
    ]),
    cublasLtGetStatusString: lib.func('cublasLtGetStatusString', 'const char *', ['int']) as (status: number) => string,
    cublasLtGetVersion: lib.func('cublasLtGetVersion', 'size_t', []) as () => number,
  };
}

function cudaType(d: GemmDType): number {
  switch (d) {
    case 'bf16': return CUDA_R_16BF;
    case 'f32': return CUDA_R_32F;
    default: return d satisfies never;
  }
}

/** Largest power of two ≤ 256 dividing the address: what cuBLASLt may assume about a pointer. */
function alignmentOf(ptr: bigint): number {
  const low = Number(ptr & 255n);
  return low === 0 ? 256 : low & -low;
}

/** The matmul descriptor and chosen algorithm, shared by shapes of one size bucket. */
interface Algo {
  desc: bigint;
  /** Address of the heuristic result; its first 64 bytes are the algorithm. */
  algo: bigint;
}

/** The matrix layouts of one exact shape (cheap to build, unlike the heuristic). */
interface Layouts {
  layoutA: bigint; // cuBLASLt's A = our b
  layoutB: bigint; // cuBLASLt's B = our a
  layoutC: bigint; // C and D: out
}

/**
 * Sizes in the algorithm cache's key: multiples of 64 as they are (every fixed model width),
 * anything else rounded up to one. Routed-token counts change every step, so per-expert GEMMs
 * would otherwise ask the heuristic (tens of µs) for a new shape on nearly every call; an
 * algorithm chosen for one size in a bucket serves the others (if cuBLASLt refuses it for a
 * shape, that shape gets its own heuristic result).
 */
function bucket(x: number): number { return Math.ceil(x / 64) * 64; }

const CUBLAS_STATUS_NOT_SUPPORTED = 15;
const CUBLAS_STATUS_INVALID_VALUE = 7;

export class CublasLt {
  private readonly lt: RawLt;
  readonly handle: bigint;
  private readonly workspace: GpuBlock;
  private readonly algos = new Map<string, Algo>();
  /** Algorithms chosen for one exact shape after the bucket's was refused. */
  private readonly exactAlgos = new Map<string, Algo>();
  private readonly layouts = new Map<string, Layouts>();
  private readonly alpha = new Float32Array(1);
  private readonly beta = new Float32Array(1);
  private readonly u64 = new BigUint64Array(1);

  constructor(private readonly ctx: CudaContext, allocator: CachingAllocator) {
    this.lt = bind();
    check(this.lt, 'cublasLtCreate', this.lt.cublasLtCreate(this.u64));
    this.handle = this.u64[0]!;
    this.workspace = allocator.alloc(CUBLASLT_WORKSPACE_BYTES);
  }

  /** cuBLASLt's version number (e.g. 130000 for 13.0.0). */
  version(): number { return Number(this.lt.cublasLtGetVersion()); }

  /**
   * out[m,n] = alpha·op(a)·op(b) + beta·out for each batch entry, with device pointers a, b,
   * out (row-major). Queued on the context's compute stream.
   */
  gemm(out: bigint, a: bigint, b: bigint, o: GemmOptions): void {
    const batch = o.batch ?? 1;
    const transA = o.transA ?? false;
    const transB = o.transB ?? false;
    const strideA = o.strideA ?? o.m * o.k;
    const strideB = o.strideB ?? o.k * o.n;
    const strideOut = o.strideOut ?? o.m * o.n;
    const what = () => describe(o, batch);
    for (const [name, v] of [['m', o.m], ['n', o.n], ['k', o.k], ['batch', batch]] as const) {
      if (!Number.isInteger(v) || v < 1) throw new Error(`gemm: ${name}=${v} must be a positive integer (${what()})`);
    }
    if (o.dtypeIn === 'f32' && o.dtypeOut !== 'f32') throw new Error(`gemm: f32 operands need an f32 output, got ${o.dtypeOut} (${what()})`);
    const common = `${+transA},${+transB},${batch},${o.dtypeIn},${o.dtypeOut},${alignmentOf(a)},${alignmentOf(b)},${alignmentOf(out)}`;
    const strides = batch > 1 ? `,${strideA},${strideB},${strideOut}` : '';
    const exactKey = `${o.m},${o.n},${o.k},${common}${strides}`;
    let lay = this.layouts.get(exactKey);
    if (!lay) {
      if (this.layouts.size >= MAX_PLANS) this.clearPlans();
      lay = this.makeLayouts(o, transA, transB, batch, strideA, strideB, strideOut);
      this.layouts.set(exactKey, lay);
    }
    const bucketKey = batch > 1 ? exactKey : `${bucket(o.m)},${bucket(o.n)},${bucket(o.k)},${common}`;
    let algo = this.exactAlgos.get(exactKey) ?? this.algos.get(bucketKey);
    if (!algo) {
      algo = this.makeAlgo(transA, transB, lay, a, b, out, what);
      this.algos.set(bucketKey, algo);
    }
    this.alpha[0] = o.alpha ?? 1;
    this.beta[0] = o.beta ?? 0;
    let status = this.matmul(algo, lay, a, b, out);
    if ((status === CUBLAS_STATUS_NOT_SUPPORTED || status === CUBLAS_STATUS_INVALID_VALUE) && !this.exactAlgos.has(exactKey)) {
      algo = this.makeAlgo(transA, transB, lay, a, b, out, what);
      this.exactAlgos.set(exactKey, algo);
      status = this.matmul(algo, lay, a, b, out);
    }
    if (status !== 0) check(this.lt, 'cublasLtMatmul', status, what());
  }

  private matmul(algo: Algo, lay: Layouts, a: bigint, b: bigint, out: bigint): number {
    return this.lt.cublasLtMatmul(
      this.handle, algo.desc, this.alpha,
      b, lay.layoutA, a, lay.layoutB,
      this.beta, out, lay.layoutC, out, lay.layoutC,
      algo.algo, this.workspace.ptr, CUBLASLT_WORKSPACE_BYTES, this.ctx.stream,
    );
  }

  /** Drops every cached layout and algorithm (the matmuls already queued have read theirs). */
  clearPlans(): void {
    for (const l of this.layouts.values()) {
      this.lt.cublasLtMatrixLayoutDestroy(l.layoutA);
      this.lt.cublasLtMatrixLayoutDestroy(l.layoutB);
      this.lt.cublasLtMatrixLayoutDestroy(l.layoutC);
    }
    this.layouts.clear();
    for (const a of [...this.algos.values(), ...this.exactAlgos.values()]) {
      this.lt.cublasLtMatmulDescDestroy(a.desc);
      koffi.free(a.algo);
    }
    this.algos.clear();
    this.exactAlgos.clear();
  }

  private makeLayouts(o: GemmOptions, transA: boolean, transB: boolean, batch: number, strideA: number, strideB: number, strideOut: number): Layouts {
    const lt = this.lt, what = describe(o, batch);
    const i32 = new Int32Array(1);
    const i64 = new BigInt64Array(1);
    const u64 = new BigUint64Array(1);
    const layout = (type: number, rows: number, cols: number, ld: number, stride: number): bigint => {
      check(lt, 'cublasLtMatrixLayoutCreate', lt.cublasLtMatrixLayoutCreate(u64, type, rows, cols, ld), what);
      const l = u64[0]!;
      if (batch > 1) {
        i32[0] = batch;
        check(lt, 'cublasLtMatrixLayoutSetAttribute', lt.cublasLtMatrixLayoutSetAttribute(l, CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT, i32, 4), what);
        i64[0] = BigInt(stride);
        check(lt, 'cublasLtMatrixLayoutSetAttribute', lt.cublasLtMatrixLayoutSetAttribute(l, CUBLASLT_MATRIX_LAYOUT_STRIDED_BATCH_OFFSET, i64, 8), what);
      }
      return l;
    };
    const tin = cudaType(o.dtypeIn);
    // Column-major views of the row-major buffers (rows, cols, leading dimension):
    // b stored [k,n] is col-major [n,k] (ld n), used as is; stored [n,k] is [k,n] (ld k), transposed.
    const layoutA = transB ? layout(tin, o.k, o.n, o.k, strideB) : layout(tin, o.n, o.k, o.n, strideB);
    // a stored [m,k] is col-major [k,m] (ld k), used as is; stored [k,m] is [m,k] (ld m), transposed.
    const layoutB = transA ? layout(tin, o.m, o.k, o.m, strideA) : layout(tin, o.k, o.m, o.k, strideA);
    const layoutC = layout(cudaType(o.dtypeOut), o.n, o.m, o.n, strideOut);
    return { layoutA, layoutB, layoutC };
  }

  private makeAlgo(transA: boolean, transB: boolean, lay: Layouts, a: bigint, b: bigint, out: bigint, what: () => string): Algo {
    const lt = this.lt;
    const i32 = new Int32Array(1);
    const u64 = new BigUint64Array(1);
    check(lt, 'cublasLtMatmulDescCreate', lt.cublasLtMatmulDescCreate(u64, CUBLAS_COMPUTE_32F, CUDA_R_32F));
    const desc = u64[0]!;
    i32[0] = transB ? CUBLAS_OP_T : CUBLAS_OP_N; // cuBLASLt's A is our b
    check(lt, 'cublasLtMatmulDescSetAttribute', lt.cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_TRANSA, i32, 4));
    i32[0] = transA ? CUBLAS_OP_T : CUBLAS_OP_N;
    check(lt, 'cublasLtMatmulDescSetAttribute', lt.cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_TRANSB, i32, 4));
    check(lt, 'cublasLtMatmulPreferenceCreate', lt.cublasLtMatmulPreferenceCreate(u64));
    const pref = u64[0]!;
    try {
      u64[0] = BigInt(CUBLASLT_WORKSPACE_BYTES);
      check(lt, 'cublasLtMatmulPreferenceSetAttribute', lt.cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, u64, 8));
      // Offset views (an expert's slice of a stacked weight) may be less aligned than a block start.
      const u32 = new Uint32Array(1);
      for (const [attr, ptr] of [
        [CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, b],
        [CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, a],
        [CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, out],
        [CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, out],
      ] as const) {
        u32[0] = alignmentOf(ptr);
        check(lt, 'cublasLtMatmulPreferenceSetAttribute', lt.cublasLtMatmulPreferenceSetAttribute(pref, attr, u32, 4));
      }
      // The result lives in koffi memory that never moves: cublasLtMatmul reads the algorithm from it on every call.
      const result = koffi.alloc('uint8_t', HEURISTIC_RESULT_BYTES) as bigint;
      const count = new Int32Array(1);
      check(lt, 'cublasLtMatmulAlgoGetHeuristic',
        lt.cublasLtMatmulAlgoGetHeuristic(this.handle, desc, lay.layoutA, lay.layoutB, lay.layoutC, lay.layoutC, pref, 1, result, count), what());
      if (count[0] === 0) throw new Error(`cuBLASLt has no algorithm for ${what()}`);
      return { desc, algo: result };
    } finally {
      lt.cublasLtMatmulPreferenceDestroy(pref);
    }
  }
}

function check(lt: RawLt, call: string, status: number, detail = ''): void {
  if (status !== 0) throw new Error(`${call} failed: ${lt.cublasLtGetStatusString(status)} (cublasStatus ${status})${detail ? `; ${detail}` : ''}`);
}

function describe(o: GemmOptions, batch: number): string {
  return `gemm m=${o.m} n=${o.n} k=${o.k}${o.transA ? ' transA' : ''}${o.transB ? ' transB' : ''}${batch > 1 ? ` batch=${batch} strides a=${o.strideA ?? o.m * o.k} b=${o.strideB ?? o.k * o.n} out=${o.strideOut ?? o.m * o.n}` : ''} ${o.dtypeIn}→${o.dtypeOut}`;
}
