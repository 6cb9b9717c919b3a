// The generic CUDA MLA attention (kernels/mla_attention_generic.cu: any head widths, f32 or
// bf16; what the tiny model and non-DeepSeek widths use) against the CPU backend, through the
// Backend interface, causal (q and kv of one length) and unmasked with q and kv of equal and of
// different lengths (ring attention's blocks). Outputs poisoned with NaN first.
// Tolerance: f32 1e-4 relative (same math, different summation order; atomics in backward);
// bf16 2e-2 (inputs identical, outputs rounded once to bf16, ~4e-3, plus the CPU's own rounding).
import assert from 'node:assert/strict';
import { test } from 'node:test';
import type { Backend } from '../src/backend/backend.js';
import { CpuBackend } from '../src/backend/cpu/cpu_backend.js';
import { cudaAvailable } from '../src/backend/cuda/ffi/library.js';
import { Rng } from '../src/nn/rng.js';
import { fromHost, toHostF32 } from '../src/ops/create.js';
import type { DType } from '../src/tensor/dtype.js';
import { emptyTensor, type Tensor } from '../src/tensor/tensor.js';

const skip = cudaAvailable() ? false : 'skipped: no CUDA';

function rel(a: Float32Array, b: Float32Array): number {
  let n = 0, d = 0;
  for (let i = 0; i < a.length; i++) { n += (a[i]! - b[i]!) ** 2; d += b[i]! ** 2; }
  return d === 0 ? Math.sqrt(n) : Math.sqrt(n / d);
}

interface Dims { B: number; Sq: number; Skv: number; H: number; Dn: number; Dr: number; Dv: number }

function run(be: Backend, dtype: DType, vals: Record<string, Float32Array>, dims: Dims, causal: boolean) {
  const { B, Sq, Skv, H, Dn, Dr, Dv } = dims;
  const t = (name: string, shape: number[]) => fromHost(be, vals[name]!, shape, dtype);
  const qn = t('qn', [B, Sq, H, Dn]), qp = t('qp', [B, Sq, H, Dr]), kn = t('kn', [B, Skv, H, Dn]), kp = t('kp', [B, Skv, 1, Dr]), v = t('v', [B, Skv, H, Dv]);
  const dout = t('do', [B, Sq, H, Dv]);
  const poison = (shape: number[], dt: DType): Tensor => { const x = emptyTensor(be, shape, dt); be.fill(x, NaN); return x; };
  const o = poison([B, Sq, H, Dv], dtype), lse = poison([B, H, Sq], 'f32');
  const opts = { causal, scale: 1 / Math.sqrt(Dn + Dr) };
  be.mlaAttention(o, lse, qn, qp, kn, kp, v, opts);
  const grads = { dqNope: poison(qn.shape as number[], dtype), dqPe: poison(qp.shape as number[], dtype), dkNope: poison(kn.shape as number[], dtype), dkPe: poison(kp.shape as number[], dtype), dv: poison(v.shape as number[], dtype) };
  be.mlaAttentionBackward(grads, dout, qn, qp, kn, kp, v, o, lse, opts);
  return { o: toHostF32(o), lse: toHostF32(lse), ...Object.fromEntries(Object.entries(grads).map(([k, x]) => [k, toHostF32(x)])) } as Record<string, Float32Array>;
}

const LENGTHS: [number, number, boolean][] = [[37, 37, true], [37, 37, false], [19, 44, false], [44, 9, false]];

for (const dtype of ['f32', 'bf16'] as const) {
  for (const [Sq, Skv, causal] of LENGTHS) {
    test(`generic MLA attention on CUDA matches the CPU backend (${dtype}, q ${Sq} × kv ${Skv} ${causal ? 'causal' : 'full'}, widths 16+8/24)`, { skip }, async () => {
      const { createCudaBackend } = await import('../src/backend/cuda/create.js');
      const gpu = createCudaBackend(), cpu = new CpuBackend();
      const dims: Dims = { B: 2, Sq, Skv, H: 3, Dn: 16, Dr: 8, Dv: 24 };
      const rng = new Rng(7);
      const n = (k: number) => Float32Array.from({ length: k }, () => rng.normal());
      const { B, H, Dn, Dr, Dv } = dims;
      const vals = { qn: n(B * Sq * H * Dn), qp: n(B * Sq * H * Dr), kn: n(B * Skv * H * Dn), kp: n(B * Skv * Dr), v: n(B * Skv * H * Dv), do: n(B * Sq * H * Dv) };
      const g = run(gpu, dtype, vals, dims, causal), c = run(cpu, dtype, vals, dims, causal);
      const tol = dtype === 'f32' ? 1e-4 : 2e-2;
      for (const k of Object.keys(c)) {
        assert.ok(g[k]!.every(Number.isFinite), `${k} has non-finite values (unwritten?)`);
        const e = rel(g[k]!, c[k]!);
        assert.ok(e < tol, `${k}: relative error ${e} ≥ ${tol}`);
      }
    });
  }
}
