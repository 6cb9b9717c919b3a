// CPU GEMM for the oracle backend: f32 arithmetic over widened inputs. Loop orders keep the
// innermost loop on contiguous memory (i-k-j for A·B, row-by-row dot products for A·Bᵀ).
import type { Tensor } from '../../tensor/tensor.js';
import type { MatmulOptions } from '../backend.js';
import { readF32, writeF32 } from './host.js';

function dims(t: Tensor, trans: boolean): { batch: number; rows: number; cols: number } {
  const r = t.rank;
  if (r !== 2 && r !== 3) throw new Error(`internal: matmul operand of rank ${r}`);
  const batch = r === 3 ? t.shape[0]! : 1;
  const a = t.shape[r - 2]!, b = t.shape[r - 1]!;
  return trans ? { batch, rows: b, cols: a } : { batch, rows: a, cols: b };
}

/** Materialises op(x) for one batch entry as a row-major [rows, cols] f32 array. */
function slice(all: Float32Array, t: Tensor, bi: number, trans: boolean): Float32Array {
  const r = t.rank;
  const a = t.shape[r - 2]!, b = t.shape[r - 1]!;
  const base = r === 3 ? bi * a * b : 0;
  if (!trans) return all.subarray(base, base + a * b);
  const out = new Float32Array(a * b);
  for (let i = 0; i < a; i++) for (let j = 0; j < b; j++) out[j * a + i] = all[base + i * b + j]!;
  return out;
}

/**
 * C[i,j] = Σ_k A[i,k]·Bt[j,k] over row-major A [M,K] and Bt [N,K], written as alpha·sum + beta·C.
 * Blocked 2 rows × 4 columns so each loaded element feeds several multiply-adds.
 */
function gemmRowDot(A: Float32Array, Bt: Float32Array, C: Float32Array, cBase: number, M: number, N: number, K: number, alpha: number, beta: number): void {
  const store = (i: number, j: number, v: number) => { const c = cBase + i * N + j; C[c] = alpha * v + (beta === 0 ? 0 : beta * C[c]!); };
  let i = 0;
  for (; i + 1 < M; i += 2) {
    const a0 = i * K, a1 = a0 + K;
    let j = 0;
    for (; j + 3 < N; j += 4) {
      const b0 = j * K, b1 = b0 + K, b2 = b1 + K, b3 = b2 + K;
      let s00 = 0, s01 = 0, s02 = 0, s03 = 0, s10 = 0, s11 = 0, s12 = 0, s13 = 0;
      for (let k = 0; k < K; k++) {
        const x0 = A[a0 + k]!, x1 = A[a1 + k]!;
        const y0 = Bt[b0 + k]!, y1 = Bt[b1 + k]!, y2 = Bt[b2 + k]!, y3 = Bt[b3 + k]!;
        s00 += x0 * y0; s01 += x0 * y1; s02 += x0 * y2; s03 += x0 * y3;
        s10 += x1 * y0; s11 += x1 * y1; s12 += x1 * y2; s13 += x1 * y3;
      }
      store(i, j, s00); store(i, j + 1, s01); store(i, j + 2, s02); store(i, j + 3, s03);
      store(i + 1, j, s10); store(i + 1, j + 1, s11); store(i + 1, j + 2, s12); store(i + 1, j + 3, s13);
    }
    for (; j < N; j++) {
      const b0 = j * K;
      let s0 = 0, s1 = 0;
      for (let k = 0; k < K; k++) { const y = Bt[b0 + k]!; s0 += A[a0 + k]! * y; s1 += A[a1 + k]! * y; }
      store(i, j, s0); store(i + 1, j, s1);
    }
  }
  for (; i < M; i++) {
    const a0 = i * K;
    for (let j = 0; j < N; j++) {
      const b0 = j * K;
      let s = 0;
      for (let k = 0; k < K; k++) s += A[a0 + k]! * Bt[b0 + k]!;
      store(i, j, s);
    }
  }
}

export function cpuMatmul(out: Tensor, a: Tensor, b: Tensor, opts: MatmulOptions): void {
  const transA = opts.transA ?? false, transB = opts.transB ?? false;
  const alpha = opts.alpha ?? 1, beta = opts.beta ?? 0;
  const da = dims(a, transA), db = dims(b, transB);
  const M = da.rows, K = da.cols, N = db.cols;
  if (db.rows !== K) throw new Error(`internal: matmul inner dims ${K} vs ${db.rows}`);
  const batch = Math.max(da.batch, db.batch, out.rank === 3 ? out.shape[0]! : 1);
  if (out.size !== batch * M * N) throw new Error(`internal: matmul out [${out.shape}] for ${batch}x${M}x${N}`);
  const A = readF32(a), B = readF32(b);
  const C = beta !== 0 ? readF32(out) : new Float32Array(batch * M * N);
  let sharedBt: Float32Array | null = null;
  for (let bi = 0; bi < batch; bi++) {
    const As = slice(A, a, a.rank === 3 ? bi : 0, transA);
    // The kernel wants op(b) as [N, K] rows: that is b itself when transposed, else its transpose.
    let Bt: Float32Array;
    if (b.rank === 3) Bt = slice(B, b, bi, !transB);
    else Bt = sharedBt ??= slice(B, b, 0, !transB);
    gemmRowDot(As, Bt, C, bi * M * N, M, N, K, alpha, beta);
  }
  writeF32(out, C);
}
