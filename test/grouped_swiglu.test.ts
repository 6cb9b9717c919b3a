// The experts' fused gate/up/SwiGLU op (ops/grouped_swiglu.ts) on the CPU backend against the
// three ops it replaces (groupedLinear for the gate, for the up, then swiglu): the same output and
// the same gradients of x and of every gate and up weight, bit for bit, in f32 and bf16, with
// zero-row experts and offsets from a nonzero base; the backend is asked once (groupedSwiGLU),
// not for the separate products; and inconsistent operands are refused.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { CpuBackend } from '../src/backend/cpu/cpu_backend.js';
import { backward } from '../src/autograd/backward.js';
import { fromHost, toHostF32 } from '../src/ops/create.js';
import { groupedLinear } from '../src/ops/grouped_linear.js';
import { groupedSwiGLU } from '../src/ops/grouped_swiglu.js';
import { swiglu } from '../src/ops/swiglu.js';
import { sumAll } from '../src/ops/reduce.js';
import { mul, cast } from '../src/ops/elementwise.js';
import { tidy } from '../src/tensor/scope.js';
import type { Tensor } from '../src/tensor/tensor.js';
import type { DType } from '../src/tensor/dtype.js';
import { randomValues } from './helpers/grad_check.js';

/** A CPU backend that counts its grouped calls. */
class CountingCpu extends CpuBackend {
  calls = { groupedLinear: 0, groupedSwiGLU: 0 };
  override groupedLinear(...a: Parameters<CpuBackend['groupedLinear']>): void { this.calls.groupedLinear++; super.groupedLinear(...a); }
  override groupedSwiGLU(...a: Parameters<CpuBackend['groupedSwiGLU']>): void {
    this.calls.groupedSwiGLU++;
    const before = this.calls.groupedLinear;
    super.groupedSwiGLU(...a);
    this.calls.groupedLinear = before;  // the CPU composes it from groupedLinear: not the caller's calls
  }
}

interface Run { h: Float32Array; dx: Float32Array; dgates: Float32Array[]; dups: Float32Array[] }

function run(be: CpuBackend, counts: number[], K: number, N: number, dtype: DType, fused: boolean): Run {
  return tidy(() => {
    const E = counts.length, M = counts.reduce((a, b) => a + b, 0);
    const x = fromHost(be, randomValues(M * K, 3), [M, K], dtype);
    x.requiresGrad = true;
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
    return { h: toHostF32(h), dx: toHostF32(x.grad!), dgates: gates.map((w) => toHostF32(w.grad!)), dups: ups.map((w) => toHostF32(w.grad!)) };
  });
}

for (const [counts, K, N, dtype] of [[[0, 3, 11, 0, 6], 12, 10, 'f32'], [[4, 0, 9], 8, 16, 'bf16'], [[0, 2, 0], 8, 8, 'bf16']] as const) {
  test(`groupedSwiGLU = swiglu(groupedLinear(gates), groupedLinear(ups)) bit for bit, forward and every gradient: ${JSON.stringify({ counts, K, N, dtype })}`, () => {
    const be = new CountingCpu();
    const a = run(be, [...counts], K, N, dtype, true);
    assert.deepEqual(be.calls, { groupedLinear: 0, groupedSwiGLU: 1 }, 'one fused backend call in forward');
    const b = run(new CpuBackend(), [...counts], K, N, dtype, false);
    assert.deepEqual(a.h, b.h, 'h');
    assert.deepEqual(a.dx, b.dx, 'dx');
    a.dgates.forEach((g, e) => assert.deepEqual(g, b.dgates[e], `gate ${e} gradient`));
    a.dups.forEach((g, e) => assert.deepEqual(g, b.dups[e], `up ${e} gradient`));
    assert.ok(a.dx.some((v) => v !== 0), 'the gradient reached x');
  });
}

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
