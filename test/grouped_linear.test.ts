// The grouped expert linear (ops/grouped_linear.ts) on the CPU backend against the path it
// replaces: one linear per expert on its row block, forward and backward (dx and the fused
// per-expert dW accumulation), with zero-row experts, row tails, offsets that do not start at 0
// (a part owning a middle block of experts) and weights without a preallocated gradient. The CPU
// reference runs the same products per expert, so every comparison is bit for bit, in f32 and
// bf16. Also a finite-difference check through the strict (contiguity-enforcing) backend.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { CpuBackend } from '../src/backend/cpu/cpu_backend.js';
import type { Backend } from '../src/backend/backend.js';
import { backward } from '../src/autograd/backward.js';
import { fromHost, toHostF32 } from '../src/ops/create.js';
import { linear } from '../src/ops/linear.js';
import { groupedLinear } from '../src/ops/grouped_linear.js';
import { splitRows, concatRows } from '../src/ops/rows.js';
import { sumAll } from '../src/ops/reduce.js';
import { mul, cast } from '../src/ops/elementwise.js';
import { tidy } from '../src/tensor/scope.js';
import { emptyTensor, type Tensor } from '../src/tensor/tensor.js';
import type { DType } from '../src/tensor/dtype.js';
import { gradCheck, randomValues, GRAD_TOLERANCE } from './helpers/grad_check.js';
import { StrictCpuBackend } from './helpers/strict_backend.js';

const be = new CpuBackend();

/** A leaf weight of the given dtype with a preallocated f32 gradient holding `gradInit`, as Param makes. */
function leaf(b: Backend, values: Float32Array, shape: number[], dtype: DType, gradInit: Float32Array | null): Tensor {
  const w = fromHost(b, values, shape, dtype);
  w.requiresGrad = true;
  if (gradInit) { const g = fromHost(b, gradInit, shape, 'f32'); w.grad = g; }
  return w;
}

interface Case { counts: number[]; K: number; N: number; dtype: DType; base: number; preallocated: boolean }

function run(c: Case, grouped: boolean): { y: Float32Array; dx: Float32Array; dws: Float32Array[] } {
  return tidy(() => {
    const E = c.counts.length, M = c.counts.reduce((a, b) => a + b, 0);
    const x = fromHost(be, randomValues(M * c.K, 11), [M, c.K], c.dtype);
    x.requiresGrad = true;
    const ws = c.counts.map((_, e) => leaf(be, randomValues(c.N * c.K, 100 + e), [c.N, c.K], c.dtype,
      c.preallocated ? randomValues(c.N * c.K, 200 + e) : null));
    const probe = fromHost(be, randomValues(M * c.N, 7), [M, c.N], 'f32');
    let y: Tensor;
    if (grouped) {
      // Offsets as a view that starts at `base` rows (a part owning experts e0.. of a layer).
      const bounds = [0, c.base];
      for (const n of c.counts) bounds.push(bounds[bounds.length - 1]! + n);
      const all = fromHost(be, bounds, [bounds.length], 'i32');
      y = groupedLinear(x, ws, all.view([E + 1], [1], all.offset + 1));
    } else {
      const parts = splitRows(x, c.counts);
      y = concatRows(parts.map((p, e) => (c.counts[e]! > 0 ? linear(p, ws[e]!) : emptyTensor(be, [0, c.N], c.dtype))));
    }
    backward(sumAll(mul(cast(y, 'f32'), probe)));
    // A weight without a preallocated gradient and without rows gets none from the per-expert
    // path and zeros from the grouped one (it cannot tell on the host): compare as zeros.
    const gradOf = (w: Tensor) => (w.grad ? toHostF32(w.grad) : new Float32Array(c.N * c.K));
    return { y: toHostF32(y), dx: toHostF32(x.grad!), dws: ws.map(gradOf) };
  });
}

const cases: Case[] = [
  { counts: [0, 1, 13, 7, 0, 4], K: 12, N: 9, dtype: 'f32', base: 0, preallocated: true },
  { counts: [0, 1, 13, 7, 0, 4], K: 12, N: 9, dtype: 'bf16', base: 5, preallocated: true },
  { counts: [3, 0, 0, 9], K: 8, N: 16, dtype: 'bf16', base: 2, preallocated: false },
  { counts: [0, 2, 0], K: 8, N: 8, dtype: 'f32', base: 0, preallocated: true },
];

for (const c of cases) {
  test(`groupedLinear = per-expert linear, bit for bit: ${JSON.stringify(c)}`, () => {
    const a = run(c, true), b = run(c, false);
    assert.deepEqual(a.y, b.y, 'forward');
    assert.deepEqual(a.dx, b.dx, 'dx');
    a.dws.forEach((g, e) => assert.deepEqual(g, b.dws[e], `dW of expert ${e}`));
    if (c.preallocated) {
      // Zero-row experts keep their gradient as it was.
      c.counts.forEach((n, e) => { if (n === 0) assert.deepEqual(a.dws[e], randomValues(c.N * c.K, 200 + e), `expert ${e} (no rows) grad unchanged`); });
    }
  });
}

test('groupedLinear: finite differences through the strict backend (x and every weight)', () => {
  const strict = new StrictCpuBackend();
  const counts = [2, 0, 3, 1], K = 5, N = 4, E = counts.length, M = 6;
  const off = fromHost(strict, [0, 2, 2, 5, 6], [E + 1], 'i32');
  const r = gradCheck(strict, [
    { shape: [M, K], values: randomValues(M * K, 1) },
    ...counts.map((_, e) => ({ shape: [N, K], values: randomValues(N * K, 30 + e), preallocatedGrad: e === 1 ? 0.5 : undefined })),
  ], ([x, ...ws]) => groupedLinear(x!, ws, off));
  r.relErrors.forEach((e, i) => {
    // Expert 1 has no rows: its gradient is exactly 0 on both sides.
    assert.ok(e < GRAD_TOLERANCE || (i === 2 && !Number.isFinite(e)) || e === 0, `input ${i}: relative error ${e}`);
  });
});

test('groupedLinear over no rows: an empty output, gradients untouched', () => {
  tidy(() => {
    const x = fromHost(be, new Float32Array(0), [0, 8], 'f32');
    const w = leaf(be, randomValues(64, 3), [8, 8], 'f32', new Float32Array(64).fill(0.5));
    const y = groupedLinear(x, [w, w], fromHost(be, [4, 4, 4], [3], 'i32'));
    assert.deepEqual(y.shape, [0, 8]);
    assert.deepEqual(toHostF32(w.grad!), new Float32Array(64).fill(0.5));
  });
});

test('groupedLinear: the CPU reference refuses offsets that do not cover the rows', () => {
  tidy(() => {
    const x = fromHost(be, new Float32Array(12), [3, 4], 'f32');
    const w = fromHost(be, new Float32Array(8), [2, 4], 'f32');
    const off = fromHost(be, [0, 1, 2], [3], 'i32');
    const out = emptyTensor(be, [3, 2], 'f32');
    assert.throws(() => be.groupedLinear(out, x, [w, w], off), /cover 2 rows of 3/);
  });
});
