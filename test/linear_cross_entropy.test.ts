// The chunked lm_head + cross-entropy (ops/linear_cross_entropy.ts) against the unchunked pair
// crossEntropyMean(linear(x, W)) on the CPU backend: loss, dx and dW, over chunk sizes that do and
// do not divide N, with ignored labels, with and without a preallocated f32 weight gradient (the
// Param path), in f32 and in bf16; the kept-logits path (the loss's gradient formed in forward
// by Backend.crossEntropyWithGrad, the upstream gradient applied as the products' alpha) under
// upstream gradients of 1, ½ and ⅓; crossEntropyWithGrad against the forward and backward it
// fuses; its gradient against finite differences; and no bytes left live afterwards.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { CpuBackend } from '../src/backend/cpu/cpu_backend.js';
import type { Backend } from '../src/backend/backend.js';
import { backward } from '../src/autograd/backward.js';
import { fromHost, toHostF32 } from '../src/ops/create.js';
import { linear } from '../src/ops/linear.js';
import { crossEntropyMean } from '../src/ops/cross_entropy.js';
import { scale } from '../src/ops/elementwise.js';
import { linearCrossEntropyMean, linearCrossEntropyChunkRows } from '../src/ops/linear_cross_entropy.js';
import { tidy, keep } from '../src/tensor/scope.js';
import { emptyTensor, type Tensor } from '../src/tensor/tensor.js';
import type { DType } from '../src/tensor/dtype.js';
import { gradCheck, randomValues, GRAD_TOLERANCE } from './helpers/grad_check.js';

const be = new CpuBackend();

interface Case { N: number; D: number; V: number; labels: number[] }

function makeCase(N: number, D: number, V: number, seed: number, ignoredEvery = 0): Case {
  const labels = Array.from({ length: N }, (_, i) => (ignoredEvery > 0 && i % ignoredEvery === 2 ? -100 : (i * 7 + seed) % V));
  return { N, D, V, labels };
}

interface Result { loss: number; dx: Float32Array; dw: Float32Array }

/** Loss, dx and dW of one implementation; dW lands in a preallocated f32 grad when `gradInit` is set (filled with it). */
function run(backend: Backend, c: Case, dtype: DType, chunked: boolean, chunkRows: number | undefined, gradInit: number | null, seed: number,
  keepLogits = false, upstream = 1): Result {
  return tidy(() => {
    const x = fromHost(backend, randomValues(c.N * c.D, seed, 1), [c.N, c.D], dtype);
    const w = fromHost(backend, randomValues(c.V * c.D, seed + 1, 0.5), [c.V, c.D], dtype);
    x.requiresGrad = true; w.requiresGrad = true;
    if (gradInit !== null) { w.grad = keep(emptyTensor(backend, w.shape, 'f32')); backend.fill(w.grad, gradInit); }
    const y = fromHost(backend, Int32Array.from(c.labels), [c.N], 'i32');
    const count = c.labels.filter((l) => l >= 0).length;
    const loss = chunked ? linearCrossEntropyMean(x, w, y, count, chunkRows, keepLogits) : crossEntropyMean(linear(x, w), y, count);
    const value = toHostF32(loss)[0]!;
    // upstream ≠ 1: the loss reaches backward through a scale, as the trainer's 1/micro-batches.
    backward(upstream === 1 ? loss : scale(loss, upstream));
    const out = { loss: value, dx: toHostF32(x.grad!), dw: toHostF32(w.grad!) };
    x.grad!.dispose(); w.grad!.dispose();
    return out;
  });
}

function relErr(a: Float32Array, b: Float32Array): number {
  let num = 0, den = 0;
  for (let i = 0; i < a.length; i++) { num += (a[i]! - b[i]!) ** 2; den += b[i]! ** 2; }
  return Math.sqrt(num / Math.max(den, 1e-30));
}

for (const dtype of ['f32', 'bf16'] as const) {
  for (const [label, c, chunkRows] of [
    ['N=37 in chunks of 8 (last chunk 5), ignored labels', makeCase(37, 24, 53, 3, 5), 8],
    ['N=40 in chunks of 8 (exact)', makeCase(40, 16, 31, 5), 8],
    ['N=13 in chunks of 1', makeCase(13, 8, 17, 2, 4), 1],
    ['N=29 in one chunk (chunk larger than N)', makeCase(29, 16, 19, 4, 3), 64],
  ] as const) {
    test(`linearCrossEntropyMean equals crossEntropyMean(linear) (${dtype}, ${label})`, () => {
      const before = be.memoryStats().liveBytes;
      for (const gradInit of [null, 0.25]) {
        const want = run(be, c, dtype, false, undefined, gradInit, 11);
        const got = run(be, c, dtype, true, chunkRows, gradInit, 11);
        // Per row, the logits, the loss and dx are computed by the same operations in both;
        // only dW sums its rows chunk by chunk. f32: equal up to a few ulp of that reordering.
        // bf16: the rows' logits and dlogits round to bf16 in both alike; dW's f32 sum over rows
        // in a different grouping differs by f32 rounding only, so 1e-5 relative still holds.
        assert.ok(Math.abs(got.loss - want.loss) <= 1e-6 * Math.abs(want.loss), `loss ${got.loss} vs ${want.loss}`);
        assert.ok(relErr(got.dx, want.dx) < 1e-6, `dx relative error ${relErr(got.dx, want.dx)}`);
        assert.ok(relErr(got.dw, want.dw) < 1e-5, `dW relative error ${relErr(got.dw, want.dw)}`);
        if (chunkRows >= c.N) {
          // One chunk is the unchunked pair operation for operation: bitwise equal.
          assert.equal(got.loss, want.loss);
          assert.deepEqual(got.dx, want.dx);
          assert.deepEqual(got.dw, want.dw);
        }
      }
      assert.equal(be.memoryStats().liveBytes, before, 'every tensor released');
    });
  }
}

for (const dtype of ['f32', 'bf16'] as const) {
  test(`keepLogits: the logits kept for backward give the unchunked pair's loss and gradients bit for bit, whatever chunk size is asked (${dtype})`, () => {
    const c = makeCase(37, 24, 53, 3, 5);
    const before = be.memoryStats().liveBytes;
    for (const gradInit of [null, 0.25]) {
      const want = run(be, c, dtype, false, undefined, gradInit, 11);
      // chunkRows 8 is ignored: kept logits are the whole micro-batch's, one chunk.
      const got = run(be, c, dtype, true, 8, gradInit, 11, true);
      assert.equal(got.loss, want.loss);
      assert.deepEqual(got.dx, want.dx);
      assert.deepEqual(got.dw, want.dw);
    }
    assert.equal(be.memoryStats().liveBytes, before, 'every tensor released, the kept logits too');
  });
}

test('keepLogits: an upstream gradient of ½ gives the unchunked pair\'s gradients bit for bit, one of ⅓ within f32 rounding (the kept path applies it as the products\' alpha)', () => {
  const c = makeCase(37, 24, 53, 3, 5);
  for (const dtype of ['f32', 'bf16'] as const) {
    for (const gradInit of [null, 0.25]) {
      const want = run(be, c, dtype, false, undefined, gradInit, 11, false, 0.5);
      const got = run(be, c, dtype, true, 8, gradInit, 11, true, 0.5);
      assert.deepEqual(got.dx, want.dx, `${dtype}: dx`);
      assert.deepEqual(got.dw, want.dw, `${dtype}: dW`);
      const want3 = run(be, c, dtype, false, undefined, gradInit, 11, false, 1 / 3);
      const got3 = run(be, c, dtype, true, 8, gradInit, 11, true, 1 / 3);
      // bf16: dlogits round before the ⅓ (kept) or after it (the pair): one bf16 rounding apart.
      const tol = dtype === 'f32' ? 1e-6 : 4e-3;
      assert.ok(relErr(got3.dx, want3.dx) < tol, `${dtype}: dx relative error ${relErr(got3.dx, want3.dx)}`);
      assert.ok(relErr(got3.dw, want3.dw) < tol, `${dtype}: dW relative error ${relErr(got3.dw, want3.dw)}`);
      assert.ok(relErr(got3.dx, want3.dx) > 0 || dtype === 'f32', 'the ⅓ case does take the other rounding (else this test checks nothing)');
    }
  }
});

for (const dtype of ['f32', 'bf16'] as const) {
  test(`crossEntropyWithGrad is crossEntropy then crossEntropyBackward with dloss = 1, bit for bit, in place or not (${dtype}, ignored labels)`, () => {
    const N = 11, V = 29, sc = 1 / 7;
    const labelsHost = Int32Array.from({ length: N }, (_, i) => (i % 4 === 1 ? -100 : (i * 5 + 3) % V));
    tidy(() => {
      const values = randomValues(N * V, 5, 3);
      const logits = fromHost(be, values, [N, V], dtype), labels = fromHost(be, labelsHost, [N], 'i32');
      const one = fromHost(be, [1], [1], 'f32');
      const wantLoss = emptyTensor(be, [N], 'f32'), wantLse = emptyTensor(be, [N], 'f32'), wantD = emptyTensor(be, [N, V], dtype);
      be.crossEntropy(wantLoss, wantLse, logits, labels);
      be.crossEntropyBackward(wantD, logits, labels, wantLse, one, sc);
      const loss = emptyTensor(be, [N], 'f32'), lse = emptyTensor(be, [N], 'f32'), d = emptyTensor(be, [N, V], dtype);
      be.fill(d, Number.NaN);
      be.crossEntropyWithGrad(loss, lse, d, logits, labels, sc);
      assert.deepEqual(toHostF32(loss), toHostF32(wantLoss));
      assert.deepEqual(toHostF32(lse), toHostF32(wantLse));
      assert.deepEqual(toHostF32(d), toHostF32(wantD));
      const inPlace = fromHost(be, values, [N, V], dtype);
      be.crossEntropyWithGrad(loss, lse, inPlace, inPlace, labels, sc);
      assert.deepEqual(toHostF32(inPlace), toHostF32(wantD), 'in place');
      assert.deepEqual(toHostF32(loss), toHostF32(wantLoss), 'in place: the loss read the logits before they were overwritten');
    });
  });
}

test('linearCrossEntropyMean: gradients against finite differences (f32, chunks of 3 over 10 rows, an ignored label)', () => {
  const labels = fromHost(be, Int32Array.from([1, 4, -100, 0, 6, 2, 2, 5, 3, 1]), [10], 'i32');
  const r = gradCheck(be, [
    { shape: [10, 6], values: randomValues(60, 21) },
    { shape: [7, 6], values: randomValues(42, 22, 0.5) },
  ], ([x, w]) => linearCrossEntropyMean(x!, w!, labels, 9, 3));
  labels.dispose();
  r.relErrors.forEach((e, i) => assert.ok(e < GRAD_TOLERANCE, `input ${i}: relative error ${e}`));
  assert.equal(r.leakedBytes, 0);
});

test('linearCrossEntropyMean: every label ignored gives loss 0 and zero gradients', () => {
  const got = run(be, { N: 9, D: 8, V: 11, labels: new Array(9).fill(-100) }, 'f32', true, 4, null, 3);
  assert.equal(got.loss, 0);
  assert.ok(got.dx.every((v) => v === 0) && got.dw.every((v) => v === 0));
});

test('chunk rows by bytes: 512 MiB of bf16 logits at DeepSeek-V2-Lite\'s vocabulary is 2560 rows; tiny vocabularies take every row', () => {
  assert.equal(linearCrossEntropyChunkRows(102400, 2), 2560);
  assert.equal(linearCrossEntropyChunkRows(102400, 4), 1280);
  assert.ok(linearCrossEntropyChunkRows(257, 2) > 100_000);
  assert.equal(linearCrossEntropyChunkRows(2 ** 40, 4), 1);
});

export type { Tensor };
