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
  const acc = new Float32Array(N);
  for (let bi = 0; bi < batch; bi++) {
    const As = slice(A, a, a.rank === 3 ? bi : 0, transA);
    const cBase = bi * M * N;
    if (transB) {
      // B is stored [N,K]: out[i,j] = Σ_k A[i,k]·B[j,k], both rows contiguous.
      const Bs = b.rank === 3 ? B.subarray(bi * N * K, (bi + 1) * N * K) : B;
      for (let i = 0; i < M; i++) {
        const ai = i * K;
        for (let j = 0; j < N; j++) {
          const bj = j * K;
          let s0 = 0, s1 = 0, s2 = 0, s3 = 0, k = 0;
          for (; k + 3 < K; k += 4) {
            s0 += As[ai + k]! * Bs[bj + k]!; s1 += As[ai + k + 1]! * Bs[bj + k + 1]!;
            s2 += As[ai + k + 2]! * Bs[bj + k + 2]!; s3 += As[ai + k + 3]! * Bs[bj + k + 3]!;
          }
          for (; k < K; k++) s0 += As[ai + k]! * Bs[bj + k]!;
          const c = cBase + i * N + j;
          C[c] = alpha * (s0 + s1 + s2 + s3) + beta * C[c]!;
        }
      }
    } else {
      const Bs = slice(B, b, b.rank === 3 ? bi : 0, false);
      for (let i = 0; i < M; i++) {
        acc.fill(0);
        const ai = i * K;
        for (let k = 0; k < K; k++) {
          const x = As[ai + k]!;
          const bk = k * N;
          for (let j = 0; j < N; j++) acc[j] += x * Bs[bk + j]!;
        }
        const c = cBase + i * N;
        for (let j = 0; j < N; j++) C[c + j] = alpha * acc[j]! + beta * C[c + j]!;
      }
    }
  }
  writeF32(out, C);
}
