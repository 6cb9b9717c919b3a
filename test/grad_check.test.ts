// Gradient checks of every differentiable op in src/ops against central finite differences
// (test/helpers/grad_check.ts explains the projection to a scalar and the 1e-2 tolerance), on
// awkward small shapes, in f32 on the CPU backend. Each check also asserts that the forward and
// backward released every tensor they made (live bytes back to where they started).
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { CpuBackend } from '../src/backend/cpu/cpu_backend.js';
import type { Backend } from '../src/backend/backend.js';
import { backward } from '../src/autograd/backward.js';
import { fromHost, toHostF32 } from '../src/ops/create.js';
import { add, sub, mul, div, scale, cast } from '../src/ops/elementwise.js';
import { sumAll, sumLastDim } from '../src/ops/reduce.js';
import { reshape, permute, transpose, contiguous, splitLastDim } from '../src/ops/shape.js';
import { linear, bmm } from '../src/ops/linear.js';
import { rmsNorm } from '../src/ops/rms_norm.js';
import { rope } from '../src/ops/rope.js';
import { swiglu } from '../src/ops/swiglu.js';
import { embedding } from '../src/ops/embedding.js';
import { crossEntropyMean } from '../src/ops/cross_entropy.js';
import { softmax } from '../src/ops/softmax.js';
import { topk } from '../src/ops/routing.js';
import { gatherRows, scatterAddRows, splitRows, concatRows } from '../src/ops/rows.js';
import { dispatchRows, combineRows } from '../src/ops/expert_rows.js';
import { mlaAttention } from '../src/ops/mla_attention.js';
import { ropeTables } from '../src/nn/rope_tables.js';
import { tidy } from '../src/tensor/scope.js';
import type { Tensor } from '../src/tensor/tensor.js';
import { gradCheck, randomValues, awayFromZero, GRAD_TOLERANCE, type GradCheckInput } from './helpers/grad_check.js';
import { StrictCpuBackend } from './helpers/strict_backend.js';

const be = new CpuBackend();
let seed = 1;
const input = (shape: number[], values?: Float32Array, preallocatedGrad?: number): GradCheckInput => {
  const n = shape.reduce((a, b) => a * b, 1);
  return { shape, values: values ?? randomValues(n, seed++), preallocatedGrad };
};

function check(name: string, inputs: GradCheckInput[], fn: (x: Tensor[]) => Tensor | readonly Tensor[], backend: Backend = be): void {
  const r = gradCheck(backend, inputs, fn);
  r.relErrors.forEach((e, i) => {
    assert.ok(e < GRAD_TOLERANCE, `${name}: input ${i} relative error ${e.toExponential(2)}\n autograd ${Array.from(r.autograd[i]!.slice(0, 8)).map((x) => x.toFixed(4))}\n fd       ${Array.from(r.finiteDiff[i]!.slice(0, 8)).map((x) => x.toFixed(4))}`);
  });
  assert.equal(r.leakedBytes, 0, `${name}: ${r.leakedBytes} bytes still live after forward+backward`);
}

describe('elementwise', () => {
  test('add with broadcasting', () => {
    check('add [2,3,5]+[3,1]', [input([2, 3, 5]), input([3, 1])], ([a, b]) => add(a!, b!));
    check('add [1,3,1]+[2,1,4]', [input([1, 3, 1]), input([2, 1, 4])], ([a, b]) => add(a!, b!));
    check('add [5]+[2,3,5]', [input([5]), input([2, 3, 5])], ([a, b]) => add(a!, b!));
    check('add x+x', [input([3, 4])], ([a]) => add(a!, a!));
  });
  test('sub with broadcasting', () => {
    check('sub [2,3,5]-[3,1]', [input([2, 3, 5]), input([3, 1])], ([a, b]) => sub(a!, b!));
    check('sub [1,5]-[4,1]', [input([1, 5]), input([4, 1])], ([a, b]) => sub(a!, b!));
  });
  test('mul with broadcasting', () => {
    check('mul [3,4]*[4]', [input([3, 4]), input([4])], ([a, b]) => mul(a!, b!));
    check('mul [2,1,3]*[4,1]', [input([2, 1, 3]), input([4, 1])], ([a, b]) => mul(a!, b!));
    check('mul x*x', [input([5])], ([a]) => mul(a!, a!));
  });
  test('div with broadcasting', () => {
    check('div [3,4]/[3,1]', [input([3, 4]), input([3, 1], awayFromZero(3, 77))], ([a, b]) => div(a!, b!));
    check('div [5]/[2,5]', [input([5]), input([2, 5], awayFromZero(10, 78))], ([a, b]) => div(a!, b!));
  });
  test('scale and cast f32→f32', () => {
    check('scale', [input([3, 5])], ([a]) => scale(a!, -1.7));
    check('cast', [input([2, 7])], ([a]) => cast(a!, 'f32'));
  });
});

describe('reductions and layout', () => {
  test('sumLastDim, sumAll (contiguous and permuted inputs)', () => {
    check('sumLastDim', [input([2, 3, 5])], ([a]) => sumLastDim(a!));
    check('sumLastDim of a permuted view', [input([2, 3, 5])], ([a]) => sumLastDim(permute(a!, [2, 0, 1])));
    check('sumAll', [input([3, 7])], ([a]) => sumAll(a!));
    check('sumAll of a transposed view', [input([3, 7])], ([a]) => sumAll(transpose(a!, 0, 1)));
  });
  test('reshape (view and copy), permute/transpose + contiguous', () => {
    check('reshape', [input([2, 3, 4])], ([a]) => reshape(a!, [6, -1]));
    check('reshape of a permuted view', [input([2, 3, 4])], ([a]) => reshape(permute(a!, [1, 2, 0]), [3, 8]));
    check('permute+contiguous', [input([2, 3, 4])], ([a]) => contiguous(permute(a!, [2, 0, 1])));
    check('transpose+contiguous', [input([3, 5])], ([a]) => contiguous(transpose(a!, 0, 1)));
  });
  test('splitLastDim (all pieces, and only some used)', () => {
    check('splitLastDim all', [input([2, 3, 7])], ([a]) => splitLastDim(a!, [2, 4, 1]));
    check('splitLastDim first only', [input([2, 3, 7])], ([a]) => splitLastDim(a!, [2, 4, 1])[1]!);
  });
});

describe('dense algebra', () => {
  test('linear: input and weight (new grad and preallocated grad paths)', () => {
    check('linear', [input([2, 3, 5]), input([4, 5])], ([x, w]) => linear(x!, w!));
    check('linear fused dW', [input([7, 5]), input([3, 5], undefined, 0.25)], ([x, w]) => linear(x!, w!));
    check('linear, weight only', [input([3, 5])], ([w]) => linear(fromHost(be, randomValues(10, 5), [2, 5], 'f32'), w!));
  });
  test('linear: the fused weight gradient accumulates across two backward calls (beta = 1)', () => {
    const N = 3, K = 5, M = 4;
    const wv = randomValues(N * K, 11), x1 = randomValues(M * K, 12), x2 = randomValues(2 * K, 13);
    const gy1 = randomValues(M * N, 14), gy2 = randomValues(2 * N, 15);
    const w = fromHost(be, wv, [N, K], 'f32');
    w.requiresGrad = true;
    w.grad = fromHost(be, new Float32Array(N * K).fill(0.5), [N, K], 'f32');
    const gradTensor = w.grad;
    for (const [xv, gv, rows] of [[x1, gy1, M], [x2, gy2, 2]] as const) {
      tidy(() => {
        const y = linear(fromHost(be, xv, [rows, K], 'f32'), w);
        backward(y, fromHost(be, gv, [rows, N], 'f32'));
      });
    }
    assert.equal(w.grad, gradTensor, 'the preallocated grad tensor is written in place, not replaced');
    const got = toHostF32(w.grad);
    for (let n = 0; n < N; n++) for (let k = 0; k < K; k++) {
      let want = 0.5;
      for (let m = 0; m < M; m++) want += gy1[m * N + n]! * x1[m * K + k]!;
      for (let m = 0; m < 2; m++) want += gy2[m * N + n]! * x2[m * K + k]!;
      assert.ok(Math.abs(got[n * K + k]! - want) < 1e-5, `dW[${n},${k}] ${got[n * K + k]} vs ${want}`);
    }
    w.grad.dispose(); w.dispose();
  });
  test('bmm, both transB values', () => {
    check('bmm', [input([2, 3, 4]), input([2, 4, 5])], ([a, b]) => bmm(a!, b!, false));
    check('bmm transB', [input([2, 3, 4]), input([2, 5, 4])], ([a, b]) => bmm(a!, b!, true));
  });
});

describe('model pieces', () => {
  test('rmsNorm: x and w (new and preallocated weight grad)', () => {
    const w = () => input([7], randomValues(7, seed++, 0.3, 1));
    check('rmsNorm', [input([3, 7]), w()], ([x, ww]) => rmsNorm(x!, ww!, 1e-6));
    check('rmsNorm fused dw', [input([2, 2, 7]), { ...w(), preallocatedGrad: -0.5 }], ([x, ww]) => rmsNorm(x!, ww!, 1e-6));
  });
  test('rope: gradient, and the forward against the interleaved formula', () => {
    const S = 3, D = 6;
    const cos = fromHost(be, randomValues(S * D / 2, 21), [S, D / 2], 'f32');
    const sin = fromHost(be, randomValues(S * D / 2, 22), [S, D / 2], 'f32');
    check('rope q', [input([2, S, 2, D])], ([x]) => rope(x!, cos, sin));
    check('rope k (one head)', [input([2, S, 1, D])], ([x]) => rope(x!, cos, sin));
    cos.dispose(); sin.dispose();

    // DeepSeek's layout: out[j] = x[2j]cos − x[2j+1]sin, out[j+D/2] = x[2j+1]cos + x[2j]sin.
    const S2 = 5, D2 = 8, B = 2, H = 3, half = D2 / 2;
    const tables = ropeTables(S2, D2, 10000, null);
    const xv = randomValues(B * S2 * H * D2, 23);
    tidy(() => {
      const out = toHostF32(rope(fromHost(be, xv, [B, S2, H, D2], 'f32'),
        fromHost(be, tables.cos, [S2, half], 'f32'), fromHost(be, tables.sin, [S2, half], 'f32')));
      for (let b = 0; b < B; b++) for (let s = 0; s < S2; s++) for (let h = 0; h < H; h++) {
        const base = ((b * S2 + s) * H + h) * D2;
        for (let j = 0; j < half; j++) {
          const theta = s * 10000 ** (-(2 * j) / D2);
          const c = Math.cos(theta), sn = Math.sin(theta);
          const xe = xv[base + 2 * j]!, xo = xv[base + 2 * j + 1]!;
          assert.ok(Math.abs(out[base + j]! - (xe * c - xo * sn)) < 1e-5);
          assert.ok(Math.abs(out[base + j + half]! - (xo * c + xe * sn)) < 1e-5);
        }
      }
    });
  });
  test('swiglu', () => {
    check('swiglu', [input([3, 5]), input([3, 5])], ([g, u]) => swiglu(g!, u!));
  });
  test('embedding weight gradient with repeated ids (new and preallocated grad)', () => {
    const ids = fromHost(be, [1, 3, 1, 1, 6, 0, 3, 3, 2, 1], [2, 5], 'i32');
    check('embedding', [input([7, 4])], ([w]) => embedding(ids, w!));
    check('embedding fused', [input([7, 4], undefined, 1.5)], ([w]) => embedding(ids, w!));
    ids.dispose();
  });
  test('crossEntropyMean with an ignored label (-100)', () => {
    const labels = fromHost(be, [2, -100, 6, 0, 3], [5], 'i32');
    check('crossEntropyMean', [input([5, 7])], ([x]) => crossEntropyMean(x!, labels, 4));
    // The value: mean over the 4 labelled rows of lse − logit[label].
    tidy(() => {
      const xv = randomValues(35, 31);
      const got = toHostF32(crossEntropyMean(fromHost(be, xv, [5, 7], 'f32'), labels, 4))[0]!;
      let want = 0;
      [2, -100, 6, 0, 3].forEach((y, n) => {
        if (y < 0) return;
        let s = 0;
        for (let j = 0; j < 7; j++) s += Math.exp(xv[n * 7 + j]!);
        want += Math.log(s) - xv[n * 7 + y]!;
      });
      assert.ok(Math.abs(got - want / 4) < 1e-5, `${got} vs ${want / 4}`);
    });
    labels.dispose();
  });
  test('crossEntropyMean: a label outside the vocabulary is an Error (as an out-of-range token id is)', () => {
    // labels come from the data like ids; a label ≥ V would silently read another row's logit.
    const before = be.memoryStats().liveBytes;
    assert.throws(() => tidy(() => {
      crossEntropyMean(fromHost(be, randomValues(14, 32), [2, 7], 'f32'), fromHost(be, [1, 7], [2], 'i32'), 2);
    }), /7/);
    assert.equal(be.memoryStats().liveBytes, before);
  });
  test('softmax', () => {
    check('softmax', [input([4, 6])], ([x]) => softmax(x!));
  });
  test('topk values', () => {
    // Distinct values at least 0.1 apart, so a ±1e-2 step never changes the selection.
    const N = 3, E = 6;
    const v = new Float32Array(N * E);
    for (let n = 0; n < N; n++) for (let e = 0; e < E; e++) v[n * E + e] = ((e * 5 + n * 2) % E) * 0.1 + 0.003 * n;
    check('topk', [input([N, E], v)], ([x]) => topk(x!, 3).values);
  });
  test('gatherRows and scatterAddRows: rows and weights', () => {
    const idx = fromHost(be, [0, 2, 2, 4, 1, 0, 3], [7], 'i32');
    check('gatherRows weighted', [input([5, 3]), input([7, 1])], ([x, w]) => gatherRows(x!, idx, w!));
    check('gatherRows unweighted', [input([5, 3])], ([x]) => gatherRows(x!, idx, null));
    const idx2 = fromHost(be, [4, 0, 4, 1, 1, 4, 0], [7], 'i32'); // rows 2 and 3 of the output get nothing
    check('scatterAddRows weighted', [input([7, 3]), input([7, 1])], ([s, w]) => scatterAddRows(s!, idx2, w!, 5));
    check('scatterAddRows unweighted', [input([7, 3])], ([s]) => scatterAddRows(s!, idx2, null, 5));
    idx.dispose(); idx2.dispose();
  });
  test('dispatchRows and combineRows: rows and router weights, slots without a row, a token without rows', () => {
    // N = 5 tokens, k = 2 slots each, 7 rows; slots 3, 6 and 7 belong to experts not owned (−1),
    // so token 3 has no row and tokens 1 and 4 have one.
    const rowOfSlot = fromHost(be, [0, 3, 5, -1, 1, 6, -1, -1, 2, 4], [10], 'i32');
    const tokenOfRow = fromHost(be, [0, 2, 4, 0, 4, 1, 2], [7], 'i32');
    check('dispatchRows', [input([5, 3])], ([x]) => dispatchRows(x!, tokenOfRow, rowOfSlot));
    check('combineRows', [input([7, 3]), input([7, 1])], ([y, w]) => combineRows(y!, tokenOfRow, rowOfSlot, w!, 5));
    rowOfSlot.dispose(); tokenOfRow.dispose();
  });
  test('splitRows and concatRows (empty blocks, reordering, an unused block)', () => {
    check('split/concat', [input([6, 3])], ([x]) => {
      const [p0, p1, p2, p3] = splitRows(x!, [2, 0, 3, 1]) as [Tensor, Tensor, Tensor, Tensor];
      return concatRows([p3, scale(p0, 2), p1, p2]);
    });
    check('split, one block unused', [input([6, 3])], ([x]) => {
      const parts = splitRows(x!, [2, 3, 1]);
      return concatRows([parts[2]!, parts[0]!]);
    });
    check('concat of leaves', [input([2, 3]), input([1, 3]), input([4, 3])], (ps) => concatRows(ps));
  });
  for (const causal of [true, false]) {
    test(`mlaAttention, all five inputs (${causal ? 'causal' : 'non-causal'})`, () => {
      const B = 2, S = 5, H = 3, Dn = 4, Dr = 2, Dv = 3;
      check(`mlaAttention causal=${causal}`,
        [input([B, S, H, Dn]), input([B, S, H, Dr]), input([B, S, H, Dn]), input([B, S, 1, Dr]), input([B, S, H, Dv])],
        ([qn, qp, kn, kp, v]) => mlaAttention(qn!, qp!, kn!, kp!, v!, { causal, scale: 1 / Math.sqrt(Dn + Dr) }).o);
    });
  }
});

// Gradients that reach an op through permute() are strided views. The Backend contract requires
// contiguous inputs except where a parameter says "view", so every rule must make its incoming
// gradient contiguous before handing it to the backend (the CPU backend tolerates views; a GPU
// kernel would read the wrong elements). These run on a backend that enforces the contract.
describe('gradients arriving as strided views (Backend layout contract)', () => {
  const strict = new StrictCpuBackend();
  const sIn = (shape: number[], values?: Float32Array) => input(shape, values);
  test('linear output consumed through a transpose', () => {
    check('linear→transpose', [sIn([6, 5]), sIn([4, 5])], ([x, w]) => contiguous(transpose(linear(x!, w!), 0, 1)), strict);
  });
  test('swiglu output consumed through a transpose', () => {
    check('swiglu→transpose', [sIn([3, 5]), sIn([3, 5])], ([g, u]) => contiguous(transpose(swiglu(g!, u!), 0, 1)), strict);
  });
  test('softmax output consumed through a transpose (the load-balance loss pattern)', () => {
    check('softmax→transpose', [sIn([4, 6])], ([x]) => sumLastDim(contiguous(transpose(softmax(x!), 0, 1))), strict);
  });
  test('rmsNorm output consumed through a permute', () => {
    check('rmsNorm→permute', [sIn([2, 3, 5]), sIn([5], randomValues(5, 91, 0.3, 1))], ([x, w]) => contiguous(permute(rmsNorm(x!, w!, 1e-6), [2, 0, 1])), strict);
  });
  test('dispatchRows and combineRows outputs consumed through a transpose', () => {
    const rowOfSlot = fromHost(strict, [0, 3, 5, -1, 1, 6, -1, -1, 2, 4], [10], 'i32');
    const tokenOfRow = fromHost(strict, [0, 2, 4, 0, 4, 1, 2], [7], 'i32');
    check('dispatchRows→transpose', [sIn([5, 3])], ([x]) => contiguous(transpose(dispatchRows(x!, tokenOfRow, rowOfSlot), 0, 1)), strict);
    check('combineRows→transpose', [sIn([7, 3]), sIn([7, 1])], ([y, w]) => contiguous(transpose(combineRows(y!, tokenOfRow, rowOfSlot, w!, 5), 0, 1)), strict);
    rowOfSlot.dispose(); tokenOfRow.dispose();
  });
  test('mlaAttention output consumed through a permute', () => {
    const B = 1, S = 3, H = 2, Dn = 2, Dr = 2, Dv = 3;
    check('mla→permute', [sIn([B, S, H, Dn]), sIn([B, S, H, Dr]), sIn([B, S, H, Dn]), sIn([B, S, 1, Dr]), sIn([B, S, H, Dv])],
      ([qn, qp, kn, kp, v]) => contiguous(permute(mlaAttention(qn!, qp!, kn!, kp!, v!, { causal: true, scale: 0.5 }).o, [0, 2, 1, 3])), strict);
  });
});
