// The experts' fused gate/up/SwiGLU op (ops/grouped_swiglu.ts) on the CPU backend against the
// three ops it replaces (groupedLinear for the gate, for the up, then swiglu): the same output and
// the same gradients of x and of every gate and up weight, bit for bit, in f32 and bf16, with
// zero-row experts and offsets from a nonzero base, x a leaf (its f32 gradient adds the two
// products) and x made by an op (its gradient slot, in x's dtype, adds them: the model's case);
// the backend is asked for one forward (groupedSwiGLU) and, for an x made by an op, one pair data
// product (groupedLinearBackwardDataPair), not for the separate products; the CPU's pair data
// product is the two data products and binary('add') of them bit for bit
// (backend/grouped_data_pair.ts); and inconsistent operands are refused.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { CpuBackend } from '../src/backend/cpu/cpu_backend.js';
import { backward } from '../src/autograd/backward.js';
import { fromHost, toHostF32 } from '../src/ops/create.js';
import { groupedLinear } from '../src/ops/grouped_linear.js';
import { groupedSwiGLU } from '../src/ops/grouped_swiglu.js';
import { swiglu } from '../src/ops/swiglu.js';
import { sumAll } from '../src/ops/reduce.js';
import { mul, cast, scale } from '../src/ops/elementwise.js';
import { tidy } from '../src/tensor/scope.js';
import type { Tensor } from '../src/tensor/tensor.js';
import type { DType } from '../src/tensor/dtype.js';
import { randomValues } from './helpers/grad_check.js';

/** A CPU backend that counts its grouped calls. */
class CountingCpu extends CpuBackend {
  calls = { groupedLinear: 0, groupedSwiGLU: 0, groupedLinearBackwardData: 0, groupedLinearBackwardDataPair: 0, groupedLinearWeightGrad: 0, groupedLinearWeightGradPair: 0 };
  override groupedLinear(...a: Parameters<CpuBackend['groupedLinear']>): void { this.calls.groupedLinear++; super.groupedLinear(...a); }
  override groupedLinearBackwardData(...a: Parameters<CpuBackend['groupedLinearBackwardData']>): void {
    this.calls.groupedLinearBackwardData++;
    super.groupedLinearBackwardData(...a);
  }
  override groupedLinearBackwardDataPair(...a: Parameters<CpuBackend['groupedLinearBackwardDataPair']>): void {
    this.calls.groupedLinearBackwardDataPair++;
    const before = this.calls.groupedLinearBackwardData;
    super.groupedLinearBackwardDataPair(...a);
    this.calls.groupedLinearBackwardData = before;  // composed from the plain product on the CPU: not the caller's calls
  }
  override groupedLinearWeightGrad(...a: Parameters<CpuBackend['groupedLinearWeightGrad']>): boolean {
    this.calls.groupedLinearWeightGrad++;
    return super.groupedLinearWeightGrad(...a);
  }
  override groupedLinearWeightGradPair(...a: Parameters<CpuBackend['groupedLinearWeightGradPair']>): boolean {
    this.calls.groupedLinearWeightGradPair++;
    const before = this.calls.groupedLinearWeightGrad;
    const gave = super.groupedLinearWeightGradPair(...a);
    this.calls.groupedLinearWeightGrad = before;  // composed from the plain product on the CPU: not the caller's calls
    return gave;
  }
  override groupedSwiGLU(...a: Parameters<CpuBackend['groupedSwiGLU']>): void {
    this.calls.groupedSwiGLU++;
    const before = this.calls.groupedLinear;
    super.groupedSwiGLU(...a);
    this.calls.groupedLinear = before;  // the CPU composes it from groupedLinear: not the caller's calls
  }
}

interface Run { h: Float32Array; dx: Float32Array; dgates: Float32Array[]; dups: Float32Array[] }

/** leafX: x is the leaf; else x = scale(leaf, 1), whose gradient is x's bit for bit. */
function run(be: CpuBackend, counts: number[], K: number, N: number, dtype: DType, fused: boolean, leafX: boolean): Run {
  return tidy(() => {
    const E = counts.length, M = counts.reduce((a, b) => a + b, 0);
    const leaf = fromHost(be, randomValues(M * K, 3), [M, K], dtype);
    leaf.requiresGrad = true;
    const x = leafX ? leaf : scale(leaf, 1);
    const weight = (seed: number): Tensor => {
      const w = fromHost(be, randomValues(N * K, seed).map((v) => 0.5 * v), [N, K], dtype);
      w.requiresGrad = true;
      w.grad = fromHost(be, randomValues(N * K, seed + 1000), [N, K], 'f32');
      return w;
    };
    const gates = counts.map((_, e) => weight(100 + e)), ups = counts.map((_, e) => weight(200 + e));
    const bounds = [0, 5];
    for (const n of counts) bounds.push(bounds[bounds.length - 1]! + n);
    const all = fromHost(be, bounds, [bounds.length], 'i32');
    const off = all.view([E + 1], [1], all.offset + 1);
    const h = fused ? groupedSwiGLU(x, gates, ups, off) : swiglu(groupedLinear(x, gates, off), groupedLinear(x, ups, off));
    backward(sumAll(mul(cast(h, 'f32'), fromHost(be, randomValues(M * N, 9), [M, N], 'f32'))));
    return { h: toHostF32(h), dx: toHostF32(leaf.grad!), dgates: gates.map((w) => toHostF32(w.grad!)), dups: ups.map((w) => toHostF32(w.grad!)) };
  });
}

const shapes = [[[0, 3, 11, 0, 6], 12, 10, 'f32'], [[4, 0, 9], 8, 16, 'bf16'], [[0, 2, 0], 8, 8, 'bf16'], [[7, 1, 0, 13], 24, 40, 'bf16']] as const;
for (const [counts, K, N, dtype] of shapes) for (const leafX of [true, false]) {
  test(`groupedSwiGLU = swiglu(groupedLinear(gates), groupedLinear(ups)) bit for bit, forward and every gradient: ${JSON.stringify({ counts, K, N, dtype, leafX })}`, () => {
    const be = new CountingCpu();
    const a = run(be, [...counts], K, N, dtype, true, leafX);
    assert.deepEqual(be.calls, { groupedLinear: 0, groupedSwiGLU: 1, groupedLinearBackwardData: leafX ? 2 : 0, groupedLinearBackwardDataPair: leafX ? 0 : 1,
      groupedLinearWeightGrad: 0, groupedLinearWeightGradPair: 1 },
      'one fused forward; x made by an op: one pair data product; the two weight products in one call');
    const b = run(new CpuBackend(), [...counts], K, N, dtype, false, leafX);
    assert.deepEqual(a.h, b.h, 'h');
    assert.deepEqual(a.dx, b.dx, 'dx');
    a.dgates.forEach((g, e) => assert.deepEqual(g, b.dgates[e], `gate ${e} gradient`));
    a.dups.forEach((g, e) => assert.deepEqual(g, b.dups[e], `up ${e} gradient`));
    assert.ok(a.dx.some((v) => v !== 0), 'the gradient reached x');
  });
}

test('the CPU pair data product is the two data products (the second first) and binary add of them, bit for bit', () => {
  const be = new CpuBackend();
  for (const [counts, K, N, dtype] of shapes) {
    tidy(() => {
      const M = (counts as readonly number[]).reduce((a, b) => a + b, 0);
      const bounds = [3];
      for (const n of counts) bounds.push(bounds[bounds.length - 1]! + n);
      const off = fromHost(be, bounds, [bounds.length], 'i32');
      const dy1 = fromHost(be, randomValues(M * N, 1), [M, N], dtype), dy2 = fromHost(be, randomValues(M * N, 2), [M, N], dtype);
      const w1 = counts.map((_, e) => fromHost(be, randomValues(N * K, 10 + e), [N, K], dtype));
      const w2 = counts.map((_, e) => fromHost(be, randomValues(N * K, 20 + e), [N, K], dtype));
      const pair = fromHost(be, new Float32Array(M * K).fill(Number.NaN), [M, K], dtype);
      be.groupedLinearBackwardDataPair(pair, dy1, dy2, w1, w2, off);
      // What autograd did with two nodes: the up's (2) gradient in the slot, the gate's (1) added into it.
      const first = fromHost(be, new Float32Array(M * K), [M, K], dtype), second = fromHost(be, new Float32Array(M * K), [M, K], dtype);
      be.groupedLinearBackwardData(second, dy2, w2, off);
      be.groupedLinearBackwardData(first, dy1, w1, off);
      be.binary('add', second, second, first);
      assert.deepEqual(be.read(pair), be.read(second), `${JSON.stringify({ counts, K, N, dtype })}`);
      if (dtype === 'bf16') {
        // The sum of two rounded products differs from one rounding of the whole reduction (what
        // CUDA's tma kernel computes) in some element: the oracle did keep the two roundings.
        const x1 = toHostF32(dy1), x2 = toHostF32(dy2), p = toHostF32(pair);
        const W1 = w1.map(toHostF32), W2 = w2.map(toHostF32);
        let differs = 0;
        for (let e = 0, r = 0; e < counts.length; e++) {
          for (const end = r + counts[e]!; r < end; r++) {
            for (let k = 0; k < K; k++) {
              let s1 = 0, s2 = 0;
              for (let n = 0; n < N; n++) { s1 += x1[r * N + n]! * W1[e]![n * K + k]!; s2 += x2[r * N + n]! * W2[e]![n * K + k]!; }
              const once = toHostF32(fromHost(be, [s1 + s2], [1], 'bf16'))[0]!;
              // Three roundings against one, each within half a bf16 ulp (2^-9 relative) of its value.
              const bound = (Math.abs(s1) + Math.abs(s2) + 2 * Math.abs(s1 + s2)) * 2 ** -8 + 1e-6;
              assert.ok(Math.abs(p[r * K + k]! - once) <= bound, `dx[${r}, ${k}] = ${p[r * K + k]}, one rounding ${once}`);
              if (p[r * K + k] !== once) differs++;
            }
          }
        }
        if (M * K >= 200) assert.ok(differs > 0, 'no element of the composed sum differs from one rounding');
      }
    });
  }
});

test('groupedSwiGLU refuses gates and ups of different widths or counts', () => {
  tidy(() => {
    const be = new CpuBackend();
    const x = fromHost(be, new Float32Array(8), [2, 4], 'f32');
    const off = fromHost(be, [0, 1, 2], [3], 'i32');
    const w = (n: number) => fromHost(be, new Float32Array(n * 4), [n, 4], 'f32');
    assert.throws(() => groupedSwiGLU(x, [w(3), w(3)], [w(5), w(5)], off), /3 and 5|width 3 .* width 5/);
    assert.throws(() => groupedSwiGLU(x, [w(3), w(3)], [w(3)], off), /offsets|ups/);
  });
});
