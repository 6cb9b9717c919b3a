// Ring MLA attention (src/parallel/ring_attention.ts) with every rank of a cp ring in this one
// process (test/helpers/replay_ring.ts: ranks run in turn over recorded sendRecv messages until
// they settle), against the CPU backend's whole-sequence causal mlaAttention and its gradients,
// split in the zigzag layout. On the CPU backend (f32, the generic widths, runs everywhere) it
// checks the replay itself against the multi-process test's tolerance; on CUDA (bf16, DeepSeek's
// 128/64/128 widths, the tensor-core kernels "auto" picks: Hopper's on an H100) it runs the
// ring's launches (one causal of 2c, then q 2c × kv c or q c × kv 2c unmasked) on the GPU,
// including B = 2, where kv half 0 is a copy. GPU tests skip with "skipped: no CUDA".
//
// Tolerance, ‖got − ref‖/‖ref‖: CPU 3e-5 (f32, sums in another order); CUDA 1e-2 for o and 2e-2
// for the gradients as test/cuda_attention.test.ts (bf16 P and dS), plus each launch's o and
// gradients rounded to bf16 once before their f32 merge or sum (≤ 2⁻⁹ relative each); lse
// (f32 throughout) 1e-4 absolute per unit of |lse|.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import type { Backend } from '../src/backend/backend.js';
import { CpuBackend } from '../src/backend/cpu/cpu_backend.js';
import { cudaAvailable } from '../src/backend/cuda/ffi/library.js';
import { backward } from '../src/autograd/backward.js';
import { Rng } from '../src/nn/rng.js';
import { fromHost, toHostF32 } from '../src/ops/create.js';
import { mlaAttention } from '../src/ops/mla_attention.js';
import { ringMlaAttention } from '../src/parallel/ring_attention.js';
import { zigzagSplit } from '../src/parallel/zigzag.js';
import { bf16ArrayToF32, f32ArrayToBf16, type DType } from '../src/tensor/dtype.js';
import { tidy } from '../src/tensor/scope.js';
import type { Tensor } from '../src/tensor/tensor.js';
import { replayRing } from './helpers/replay_ring.js';

const skip = cudaAvailable() ? false : 'skipped: no CUDA';

interface Widths { Dn: number; Dr: number; Dv: number }
interface Case { cp: number; B: number; c: number; H: number }

const NAMES = ['qNope', 'qPe', 'kNope', 'kPe', 'v', 'dout'] as const;
type Name = (typeof NAMES)[number];

function rel(got: Float32Array, want: Float32Array): number {
  let n = 0, d = 0;
  for (let i = 0; i < want.length; i++) { n += (got[i]! - want[i]!) ** 2; d += want[i]! ** 2; }
  return d === 0 ? Math.sqrt(n / want.length) : Math.sqrt(n / d);
}

/** Runs the ring for every rank on `be` in `dtype` and compares with the CPU whole-sequence reference. */
function check(be: Backend, dtype: DType, w: Widths, { cp, B, c, H }: Case, tol: { o: number; grad: number }): string {
  const S = 2 * cp * c, L = S / cp, { Dn, Dr, Dv } = w, scale = 1 / Math.sqrt(Dn + Dr);
  const width: Record<Name, number> = { qNope: H * Dn, qPe: H * Dr, kNope: H * Dn, kPe: Dr, v: H * Dv, dout: H * Dv };
  const shape = (k: Name, s: number): number[] => [B, s, k === 'kPe' ? 1 : H, k === 'qPe' || k === 'kPe' ? Dr : k === 'v' || k === 'dout' ? Dv : Dn];
  const rng = new Rng(17 * S + H + B);
  // bf16-exact values, so the CPU's f32 reference sees the GPU's inputs exactly.
  const host = Object.fromEntries(NAMES.map((k) => {
    const x = Float32Array.from({ length: B * S * width[k] }, () => rng.normal());
    return [k, bf16ArrayToF32(f32ArrayToBf16(x))];
  })) as Record<Name, Float32Array>;
  const cpu = new CpuBackend();
  const ref = tidy(() => {
    const xs = NAMES.slice(0, 5).map((k) => { const t = fromHost(cpu, host[k], shape(k, S), 'f32'); t.requiresGrad = true; return t; });
    const r = mlaAttention(xs[0]!, xs[1]!, xs[2]!, xs[3]!, xs[4]!, { causal: true, scale });
    backward(r.o, fromHost(cpu, host.dout, shape('dout', S), 'f32'));
    const out = { o: toHostF32(r.o), lse: toHostF32(r.lse), grads: xs.map((t) => toHostF32(t.grad!)) };
    for (const t of xs) t.grad!.dispose();
    return out;
  });
  const { results, passes } = replayRing(cp, (comm) => tidy(() => {
    const split = (x: Float32Array, k: Name) => zigzagSplit(x, B, S, cp, comm.rank, width[k]);
    const xs = NAMES.slice(0, 5).map((k) => { const t = fromHost(be, split(host[k], k), shape(k, L), dtype); t.requiresGrad = true; return t; });
    const r = ringMlaAttention(xs[0]!, xs[1]!, xs[2]!, xs[3]!, xs[4]!, { scale }, comm);
    backward(r.o, fromHost(be, split(host.dout, 'dout'), shape('dout', L), dtype));
    const out = { o: toHostF32(r.o), lse: toHostF32(r.lse), grads: xs.map((t: Tensor) => toHostF32(t.grad!)) };
    for (const t of xs) t.grad!.dispose();
    return out;
  }));
  const worst: Record<string, number> = {};
  const note = (what: string, e: number, bound: number) => {
    assert.ok(e <= bound, `cp${cp} B${B} c${c} H${H}: ${what} relative error ${e.toExponential(2)} > ${bound}`);
    worst[what] = Math.max(worst[what] ?? 0, e);
  };
  results.forEach((got, r) => {
    const split = (x: Float32Array, k: Name) => zigzagSplit(x, B, S, cp, r, width[k]);
    for (const x of [got.o, got.lse, ...got.grads]) assert.ok(x.every(Number.isFinite), `cp${cp} rank ${r}: a non-finite output (unwritten?)`);
    note('o', rel(got.o, split(ref.o, 'v')), tol.o);
    const lseRef = zigzagSplit(ref.lse, B * H, S, cp, r);
    let lseErr = 0;
    for (let i = 0; i < lseRef.length; i++) lseErr = Math.max(lseErr, Math.abs(got.lse[i]! - lseRef[i]!) / Math.max(1, Math.abs(lseRef[i]!)));
    note('lse', lseErr, 1e-4);
    NAMES.slice(0, 5).forEach((k, i) => note(`d${k}`, rel(got.grads[i]!, split(ref.grads[i]!, k)), tol.grad));
  });
  return `cp${cp} B${B} c${c} H${H} (${passes} passes): ` + Object.entries(worst).map(([k, e]) => `${k} ${e.toExponential(1)}`).join(' ');
}

const CPU_CASES: Case[] = [{ cp: 2, B: 1, c: 3, H: 2 }, { cp: 2, B: 2, c: 2, H: 3 }, { cp: 4, B: 2, c: 3, H: 2 }, { cp: 3, B: 1, c: 2, H: 1 }];

test('ring attention, all ranks replayed in one process on the CPU, equals whole-sequence attention', () => {
  const be = new CpuBackend();
  for (const c of CPU_CASES) console.log(check(be, 'f32', { Dn: 8, Dr: 4, Dv: 6 }, c, { o: 3e-5, grad: 3e-5 }));
});

// c = 80 and 200: chunks off the 64/128-row tiles; B = 2: kv half 0 copied; cp 4 with c = 128:
// every launch shape at full tiles.
const GPU_CASES: Case[] = [{ cp: 2, B: 1, c: 80, H: 2 }, { cp: 2, B: 2, c: 200, H: 2 }, { cp: 4, B: 1, c: 128, H: 2 }, { cp: 4, B: 2, c: 80, H: 1 }];

test('ring attention on CUDA (bf16, tensor-core kernels), all ranks replayed on one GPU, equals the CPU whole-sequence attention', { skip }, async () => {
  const { createCudaBackend } = await import('../src/backend/cuda/create.js');
  const be = createCudaBackend();
  for (const c of GPU_CASES) console.log(check(be, 'bf16', { Dn: 128, Dr: 64, Dv: 128 }, c, { o: 1e-2, grad: 2e-2 }));
});
