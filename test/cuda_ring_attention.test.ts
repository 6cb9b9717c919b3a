// Ring MLA attention (src/parallel/ring_attention.ts) with every rank of a cp ring in this one
// process (test/helpers/replay_ring.ts: ranks run in turn over recorded sendRecv messages until
// they settle), against the CPU backend's whole-sequence causal mlaAttention and its gradients,
// split in the zigzag layout. On the CPU backend (f32, the generic widths, runs everywhere) it
// checks the replay itself against the multi-process test's tolerance; on CUDA (bf16, DeepSeek's
// 128/64/128 widths, the tensor-core kernels "auto" picks: Hopper's on an H100) it runs the
// ring's launches (one causal of 2c, then q 2c × kv c or q c × kv 2c unmasked) on the GPU,
// including B = 2, where kv half 0 is a copy, and, where c is a multiple of 128 on Hopper, the
// whole ring in one launch forward and one backward. GPU tests skip with "skipped: no CUDA".
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
import { chooseMlaKernels } from '../src/backend/cuda/ops/mla_kernel_choice.js';
import type { CudaBackend } from '../src/backend/cuda/cuda_backend.js';
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

// c = 80 and 200: chunks off the 64/128-row tiles, so one launch per ring step; B = 2: kv half 0
// copied. c a multiple of 128 on Hopper: the whole ring in one launch (Backend.mlaAttentionRing
// and its backward: every rank's slots, a lower rank's seen through half its keys), at cp 2, 3
// and 4, B = 1 and 2.
const GPU_CASES: Case[] = [{ cp: 2, B: 1, c: 80, H: 2 }, { cp: 2, B: 2, c: 200, H: 2 }, { cp: 4, B: 1, c: 128, H: 2 }, { cp: 4, B: 2, c: 80, H: 1 },
  { cp: 2, B: 2, c: 256, H: 2 }, { cp: 3, B: 1, c: 128, H: 3 }, { cp: 4, B: 2, c: 128, H: 1 }];

test('ring attention on CUDA (bf16, tensor-core kernels), all ranks replayed on one GPU, equals the CPU whole-sequence attention', { skip }, async () => {
  const { createCudaBackend } = await import('../src/backend/cuda/create.js');
  const be = createCudaBackend();
  const { ctx } = be as CudaBackend;
  const hopper = chooseMlaKernels({ arch: ctx.arch, computeCapability: ctx.computeCapability, dtype: 'bf16', dNope: 128, dRope: 64, dV: 128, request: 'auto' }) === 'hopper';
  // Count the rings that ran in one launch, so that a case meant for it cannot pass through the per-step path.
  const oneLaunch = { fwd: 0, bwd: 0 };
  const fwd = be.mlaAttentionRing.bind(be), bwd = be.mlaAttentionBackwardRing.bind(be);
  be.mlaAttentionRing = (...a) => { const done = fwd(...a); oneLaunch.fwd += done ? 1 : 0; return done; };
  be.mlaAttentionBackwardRing = (...a) => { const done = bwd(...a); oneLaunch.bwd += done ? 1 : 0; return done; };
  for (const c of GPU_CASES) {
    oneLaunch.fwd = oneLaunch.bwd = 0;
    console.log(check(be, 'bf16', { Dn: 128, Dr: 64, Dv: 128 }, c, { o: 1e-2, grad: 2e-2 }));
    const want = c.c % 128 === 0 && hopper ? 1 : 0;
    // Every rank's call once per replay pass (at least cp), or none where the chunk needs the per-step path.
    const took = (n: number) => (want ? n >= c.cp : n === 0);
    assert.ok(took(oneLaunch.fwd) && took(oneLaunch.bwd),
      `cp${c.cp} c${c.c}: ${oneLaunch.fwd} forward and ${oneLaunch.bwd} backward rings in one launch, expected ${want ? `at least ${c.cp}` : 'none'} each`);
  }
});

// Backend.mlaAttentionBackwardBlock on its own: a block of q 100 (B = 2) adds into rows 150..249
// of a 300-row accumulator that already holds values; the rows outside are left bit for bit, the
// rows inside grow by the block's dq / scale, and the kv gradients equal the whole backward's. On
// the CPU (the fallback through the whole backward) and on CUDA (Hopper: the kernel's reduce-adds
// through a tensor map of those rows) against the same CPU whole backward.
// With `ends` (the first and last block of a ring in one: the block covers all L = Sq rows), the
// accumulator's old values are overwritten and dq comes out rounded into the q dtype.
function checkBlock(be: Backend, dtype: DType, tol: number, ends = false): string {
  const B = 2, Sq = 100, Skv = 260, H = 2, Dn = 128, Dr = 64, Dv = 128, W = Dn + Dr, scale = 1 / Math.sqrt(W);
  const L = ends ? Sq : 300, qFrom = ends ? 0 : 150;
  const rng = new Rng(4242);
  const bf = (n: number) => bf16ArrayToF32(f32ArrayToBf16(Float32Array.from({ length: n }, () => rng.normal())));
  const shapes: Record<Name, number[]> = {
    qNope: [B, Sq, H, Dn], qPe: [B, Sq, H, Dr], kNope: [B, Skv, H, Dn], kPe: [B, Skv, 1, Dr], v: [B, Skv, H, Dv], dout: [B, Sq, H, Dv],
  };
  const host = Object.fromEntries(NAMES.map((k) => [k, bf(shapes[k].reduce((a, b) => a * b, 1))])) as Record<Name, Float32Array>;
  const accStart = Float32Array.from({ length: B * L * H * W }, () => rng.normal());
  const cpu = new CpuBackend();
  const opts = { causal: false, scale };
  // The reference: the CPU's whole backward of the block (o and lse from its forward).
  const ref = tidy(() => {
    const t = Object.fromEntries(NAMES.map((k) => [k, fromHost(cpu, host[k], shapes[k], 'f32')])) as Record<Name, Tensor>;
    const o = fromHost(cpu, new Float32Array(B * Sq * H * Dv), [B, Sq, H, Dv], 'f32'), lse = fromHost(cpu, new Float32Array(B * H * Sq), [B, H, Sq], 'f32');
    cpu.mlaAttention(o, lse, t.qNope, t.qPe, t.kNope, t.kPe, t.v, opts);
    const g = Object.fromEntries((['qNope', 'qPe', 'kNope', 'kPe', 'v'] as const).map((k) => [k, fromHost(cpu, new Float32Array(shapes[k].reduce((a, b) => a * b, 1)), shapes[k], 'f32')]));
    cpu.mlaAttentionBackward({ dqNope: g.qNope!, dqPe: g.qPe!, dkNope: g.kNope!, dkPe: g.kPe!, dv: g.v! }, t.dout, t.qNope, t.qPe, t.kNope, t.kPe, t.v, o, lse, opts);
    return { o: toHostF32(o), lse: toHostF32(lse), dq: [toHostF32(g.qNope!), toHostF32(g.qPe!)], dkv: [toHostF32(g.kNope!), toHostF32(g.kPe!), toHostF32(g.v!)] };
  });
  const got = tidy(() => {
    const t = Object.fromEntries(NAMES.map((k) => [k, fromHost(be, host[k], shapes[k], dtype)])) as Record<Name, Tensor>;
    // o and lse as the forward gave them on the CPU (the backward's inputs; bf16-rounded o on CUDA).
    const o = fromHost(be, ref.o, [B, Sq, H, Dv], dtype), lse = fromHost(be, ref.lse, [B, H, Sq], 'f32');
    const acc = fromHost(be, accStart, [B, L, H, W], 'f32');
    const g = { dkNope: fromHost(be, new Float32Array(B * Skv * H * Dn).fill(NaN), [B, Skv, H, Dn], dtype),
      dkPe: fromHost(be, new Float32Array(B * Skv * Dr).fill(NaN), [B, Skv, 1, Dr], dtype), dv: fromHost(be, new Float32Array(B * Skv * H * Dv).fill(NaN), [B, Skv, H, Dv], dtype) };
    const fin = { dqNope: fromHost(be, new Float32Array(B * L * H * Dn).fill(NaN), [B, L, H, Dn], dtype), dqPe: fromHost(be, new Float32Array(B * L * H * Dr).fill(NaN), [B, L, H, Dr], dtype) };
    be.mlaAttentionBackwardBlock(acc, qFrom, g, t.dout, t.qNope, t.qPe, t.kNope, t.kPe, t.v, o, lse, opts, ends ? { overwrite: true, finish: fin } : {});
    return { acc: toHostF32(acc), dkv: [toHostF32(g.dkNope), toHostF32(g.dkPe), toHostF32(g.dv)], dq: [toHostF32(fin.dqNope), toHostF32(fin.dqPe)] };
  });
  let outside = 0;
  const added = [new Float32Array(B * Sq * H * Dn), new Float32Array(B * Sq * H * Dr)];
  for (let b = 0; b < B; b++) for (let l = 0; l < L; l++) for (let h = 0; h < H; h++) for (let w = 0; w < W; w++) {
    const i = ((b * L + l) * H + h) * W + w;
    if (l < qFrom || l >= qFrom + Sq) { if (!Object.is(got.acc[i], accStart[i])) outside++; continue; }
    const row = (b * Sq + l - qFrom) * H + h, d = (got.acc[i]! - (ends ? 0 : accStart[i]!)) * scale;
    if (w < Dn) added[0]![row * Dn + w] = d; else added[1]![row * Dr + w - Dn] = d;
  }
  assert.equal(outside, 0, `${outside} accumulator elements outside the block's rows changed`);
  const errs = [rel(added[0]!, ref.dq[0]!), rel(added[1]!, ref.dq[1]!), ...got.dkv.map((x, i) => rel(x, ref.dkv[i]!))];
  if (ends) errs.push(rel(got.dq[0]!, ref.dq[0]!), rel(got.dq[1]!, ref.dq[1]!));
  errs.forEach((e, i) => assert.ok(e <= tol, `${['dqNope', 'dqPe', 'dkNope', 'dkPe', 'dv', 'finished dqNope', 'finished dqPe'][i]} relative error ${e.toExponential(2)} > ${tol}`));
  return `backward block${ends ? ' (overwrite, finish)' : ''}: dqNope ${errs[0]!.toExponential(1)} dqPe ${errs[1]!.toExponential(1)} dkNope ${errs[2]!.toExponential(1)} dkPe ${errs[3]!.toExponential(1)} dv ${errs[4]!.toExponential(1)}`;
}

test('a ring step\'s backward block adds its dq into its rows of a longer accumulator and leaves the others (CPU)', () => {
  console.log(checkBlock(new CpuBackend(), 'f32', 1e-5));
  console.log(checkBlock(new CpuBackend(), 'f32', 1e-5, true));
});

test('a ring step\'s backward block on CUDA adds into its rows of a longer accumulator and leaves the others', { skip }, async () => {
  const { createCudaBackend } = await import('../src/backend/cuda/create.js');
  const be = createCudaBackend();
  console.log(checkBlock(be, 'bf16', 2e-2));
  console.log(checkBlock(be, 'bf16', 2e-2, true));
});

// Backend.attentionMerge on CUDA against the CPU: o a half of a [B, 2c, H, Dv] block output (rows
// strided by batch, bf16), lse the matching half of [B, H, 2c]; lse gaps from 0 to far past f32
// exp overflow, and a running side with no keys yet (−∞).
test('attentionMerge on CUDA equals the CPU: strided bf16 block halves, large lse gaps, an empty side', { skip }, async () => {
  const { createCudaBackend } = await import('../src/backend/cuda/create.js');
  const gpu = createCudaBackend(), cpu = new CpuBackend();
  const B = 2, c = 37, H = 3, Dv = 128, rng = new Rng(77);
  const accO = Float32Array.from({ length: B * c * H * Dv }, () => rng.normal());
  const accLse = Float32Array.from({ length: B * H * c }, (_, i) => (i % 11 === 3 ? -Infinity : [0, 5, -700, 900, 2][i % 5]! + rng.normal()));
  const blockO = bf16ArrayToF32(f32ArrayToBf16(Float32Array.from({ length: B * 2 * c * H * Dv }, () => rng.normal())));
  const blockLse = Float32Array.from({ length: B * H * 2 * c }, (_, i) => [1, -3, 800, -600, 0][i % 5]! + rng.normal());
  const run = (be: Backend, dtype: DType): [Float32Array, Float32Array] => tidy(() => {
    const ao = fromHost(be, accO, [B, c, H, Dv], 'f32'), al = fromHost(be, accLse, [B, H, c], 'f32');
    const bo = fromHost(be, blockO, [B, 2 * c, H, Dv], dtype), bl = fromHost(be, blockLse, [B, H, 2 * c], 'f32');
    // Half 1 of the block: rows c..2c of each batch row.
    const o = bo.view([B, c, H, Dv], bo.strides, bo.offset + c * H * Dv), lse = bl.view([B, H, c], bl.strides, bl.offset + c);
    be.attentionMerge(ao, al, o, lse);
    return [toHostF32(ao), toHostF32(al)];
  });
  const [wantO, wantL] = run(cpu, 'f32'), [gotO, gotL] = run(gpu, 'bf16');
  assert.ok(gotO.every(Number.isFinite) && gotL.every(Number.isFinite), 'a non-finite merge result');
  let lseErr = 0;
  for (let i = 0; i < wantL.length; i++) lseErr = Math.max(lseErr, Math.abs(gotL[i]! - wantL[i]!) / Math.max(1, Math.abs(wantL[i]!)));
  assert.ok(lseErr <= 1e-6, `lse relative error ${lseErr}`);
  // The weights e^(lse − lse') come from f32 differences of numbers up to ~900 here, whose f32
  // spacing is 6e-5 (the CPU works in f64): 2e-4 bounds that; real lse values are ~10-20.
  assert.ok(rel(gotO, wantO) <= 2e-4, `o relative error ${rel(gotO, wantO)}`);
});
