// sumOfSquares (src/ops/sum_squares.ts): Σ x² of several tensors into one f32 scalar, on the
// CPU backend (exact small cases, f32 accumulation of many small bf16 values, views) and on CUDA
// against the CPU (kernels/sum_squares.cu through its launcher; skipped without a GPU).
// Tolerance on CUDA: 1e-5 relative (f32 partial sums in another order; inputs are identical).
import assert from 'node:assert/strict';
import { test } from 'node:test';
import type { Backend } from '../src/backend/backend.js';
import { CpuBackend } from '../src/backend/cpu/cpu_backend.js';
import { cudaAvailable } from '../src/backend/cuda/ffi/library.js';
import { Rng } from '../src/nn/rng.js';
import { fromHost, toHostF32 } from '../src/ops/create.js';
import { sumOfSquares } from '../src/ops/sum_squares.js';
import type { DType } from '../src/tensor/dtype.js';

const cpu = new CpuBackend();

test('sumOfSquares adds every tensor\'s Σ x² into one f32 scalar', () => {
  const a = fromHost(cpu, [3, 4], [2], 'f32');
  const b = fromHost(cpu, [1, -2, 2, 0], [2, 2], 'bf16');
  const s = sumOfSquares([a, b]);
  assert.deepEqual([...toHostF32(s)], [34]);
  assert.equal(s.dtype, 'f32');
  // Into an existing accumulator: adds, does not overwrite.
  sumOfSquares([a], s);
  assert.deepEqual([...toHostF32(s)], [59]);
  for (const t of [a, b, s]) t.dispose();
});

test('sumOfSquares reads views (a transposed, strided tensor) and accumulates in f32', () => {
  const x = fromHost(cpu, [1, 2, 3, 4, 5, 6], [2, 3], 'f32');
  const xT = x.view([3, 2], [1, 3], 0);
  assert.ok(!xT.isContiguous());
  const s = sumOfSquares([xT]);
  assert.deepEqual([...toHostF32(s)], [91]);
  // 2^16 squares of 2^-8 sum to exactly 1 in f32; a bf16 accumulator would stop growing at 2^-8.
  const n = 1 << 16;
  const small = fromHost(cpu, new Float32Array(n).fill(2 ** -8), [n], 'bf16');
  const t = sumOfSquares([small]);
  assert.equal(toHostF32(t)[0], n * 2 ** -16);
  for (const u of [x, xT, s, small, t]) u.dispose();
});

test('sumOfSquares refuses an accumulator that is not f32 [1]', () => {
  const x = fromHost(cpu, [1, 2], [2], 'f32');
  const bad = fromHost(cpu, [0, 0], [2], 'f32');
  assert.throws(() => sumOfSquares([x], bad), /f32 \[1\] tensor/);
  x.dispose(); bad.dispose();
});

test('sumOfSquares on CUDA matches the CPU backend (f32, bf16, a view, a size no block divides)', { skip: cudaAvailable() ? false : 'skipped: no CUDA' }, async () => {
  const { createCudaBackend } = await import('../src/backend/cuda/create.js');
  const gpu = createCudaBackend();
  const rng = new Rng(11);
  const run = (be: Backend, values: Float32Array[], dtypes: DType[]): number => {
    const ts = values.map((v, i) => fromHost(be, v, [v.length], dtypes[i]!));
    const view = fromHost(be, values[0]!, [values[0]!.length / 7, 7], dtypes[0]!);
    const viewT = view.view([7, values[0]!.length / 7], [1, 7], 0);
    const s = sumOfSquares([...ts, viewT]);
    const out = toHostF32(s)[0]!;
    for (const t of [...ts, view, viewT, s]) t.dispose();
    return out;
  };
  const values = [7 * 1301, 100_003, 1].map((n) => Float32Array.from({ length: n }, () => rng.normal()));
  const dtypes: DType[] = ['bf16', 'f32', 'bf16'];
  const want = run(cpu, values, dtypes), got = run(gpu, values, dtypes);
  assert.ok(Math.abs(got - want) / want < 1e-5, `CUDA ${got} vs CPU ${want}`);
});
