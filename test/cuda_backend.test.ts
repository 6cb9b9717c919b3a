// CudaBackend against the CPU oracle, method by method: fresh random inputs (the seed is printed
// with every failure), shapes that are no tile's multiple (rows 37, widths 53/129/1408, V 1000,
// 1001 and 102400, E 64 with k 6; the MoE's routed rows also at the bench shape N 8192, k 6,
// D 2048), GPU outputs poisoned with NaN (or an i32 sentinel) before the call so an unwritten
// element fails, and a tolerance per dtype:
// - f32 results: ‖gpu − cpu‖/‖cpu‖ ≤ 1e-5. Both sides compute in f32 (the CPU partly in f64 and
//   rounds once); only summation order and the last ulp of exp/log differ, ~1e-7..1e-6.
//   Where the GPU uses __expf (cross-entropy), 2e-5: ex2.approx plus the rounding of x·log2(e)
//   is ~2e-6 relative for arguments up to ~20.
// - bf16 results: ≤ 1e-2. Both sides round the (nearly) same f32 value once; a value near a
//   rounding boundary may land one bf16 ulp (2^-8 ≈ 4e-3 relative) apart, on a few elements.
// - integer results (indices, counts, orders): exact. topk values: exact (they are copies).
// Every test skips with "skipped: no CUDA" where no GPU is visible.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import type { Backend } from '../src/backend/backend.js';
import { CpuBackend } from '../src/backend/cpu/cpu_backend.js';
import { CudaBackend } from '../src/backend/cuda/cuda_backend.js';
import { CudaDeviceBuffer, devicePtr } from '../src/backend/cuda/runtime/device_buffer.js';
import { defaultCudaContext } from '../src/backend/cuda/runtime/context.js';
import { cudaAvailable } from '../src/backend/cuda/ffi/library.js';
import { TensorList } from '../src/backend/tensor_list.js';
import { bf16ArrayToF32, f32ArrayToBf16, type DType, type HostArray } from '../src/tensor/dtype.js';
import { emptyTensor, type Shape, type Tensor } from '../src/tensor/tensor.js';

const skip = cudaAvailable() ? false : 'skipped: no CUDA';
const F32_TOL = 1e-5;
const EXP_TOL = 2e-5;
const BF16_TOL = 1e-2;

const SEED = (Date.now() ^ (process.pid << 8)) >>> 0;
let state = SEED || 1;
function uniform(): number {
  state ^= state << 13; state >>>= 0; state ^= state >>> 17; state ^= state << 5; state >>>= 0;
  return state / 2 ** 32;
}
function randn(n: number, scale = 1): Float32Array {
  const out = new Float32Array(n);
  for (let i = 0; i < n; i++) out[i] = scale * Math.sqrt(-2 * Math.log(1 - uniform())) * Math.cos(2 * Math.PI * uniform());
  return out;
}
function randint(n: number, lo: number, hi: number): Int32Array {
  const out = new Int32Array(n);
  for (let i = 0; i < n; i++) out[i] = lo + Math.floor(uniform() * (hi - lo));
  return out;
}
const numel = (shape: Shape): number => shape.reduce((a, b) => a * b, 1);

const cpu = new CpuBackend();
let cuda: CudaBackend | undefined;
function gpu(): CudaBackend {
  cuda ??= new CudaBackend(defaultCudaContext());
  return cuda;
}

/** The same tensor on both backends. */
interface Pair { c: Tensor; g: Tensor }

function hostOf(dtype: DType, values: Float32Array | Int32Array): HostArray {
  switch (dtype) {
    case 'f32': return values instanceof Float32Array ? values : Float32Array.from(values);
    case 'bf16': return f32ArrayToBf16(values instanceof Float32Array ? values : Float32Array.from(values));
    case 'i32': return values instanceof Int32Array ? values : Int32Array.from(values, (x) => Math.round(x));
    default: return dtype satisfies never;
  }
}

/** An input with the given values (random normal when omitted), identical bits on both sides. */
function input(shape: Shape, dtype: DType, values?: Float32Array | Int32Array): Pair {
  const host = hostOf(dtype, values ?? randn(numel(shape)));
  const c = emptyTensor(cpu, shape, dtype), g = emptyTensor(gpu(), shape, dtype);
  cpu.write(c, host);
  gpu().write(g, host);
  return { c, g };
}

const NAN_WORD = 0x7fc00000;
const BF16_NAN_WORDS = 0x7fc07fc0;
const I32_POISON = -123456789;

/** An output: zeros on the CPU, poison on the GPU (set through the driver, not the fill kernel). */
function output(shape: Shape, dtype: DType): Pair {
  const c = emptyTensor(cpu, shape, dtype), g = emptyTensor(gpu(), shape, dtype);
  cpu.fill(c, 0);
  poison(g);
  return { c, g };
}

function poison(t: Tensor): void {
  const word = t.dtype === 'f32' ? NAN_WORD : t.dtype === 'bf16' ? BF16_NAN_WORDS : I32_POISON;
  if (t.bytes > 0) gpu().ctx.fillWords(devicePtr(t), word >>> 0, Math.ceil(t.bytes / 4));
}

function view(p: Pair, shape: Shape, strides: readonly number[], offset = 0): Pair {
  return { c: p.c.view(shape, strides, offset), g: p.g.view(shape, strides, offset) };
}

function asF32(a: HostArray): Float32Array {
  if (a instanceof Uint16Array) return bf16ArrayToF32(a);
  if (a instanceof Int32Array) return Float32Array.from(a);
  return a;
}

function read(b: Backend, t: Tensor): Float32Array { return asF32(b.read(t)); }

function expectClose(p: Pair, tol: number, what: string): void {
  gpu().synchronize();
  const want = read(cpu, p.c), got = read(gpu(), p.g);
  assert.equal(got.length, want.length, what);
  let num = 0, den = 0;
  for (let i = 0; i < want.length; i++) {
    if (Number.isNaN(got[i]!) && !Number.isNaN(want[i]!)) assert.fail(`${what}: element ${i} is NaN (unwritten?), expected ${want[i]} (seed ${SEED})`);
    const d = got[i]! - want[i]!;
    num += d * d;
    den += want[i]! * want[i]!;
  }
  const err = den === 0 ? Math.sqrt(num) : Math.sqrt(num / den);
  assert.ok(err <= tol, `${what}: relative error ${err.toExponential(3)} > ${tol} (seed ${SEED})`);
}

function expectExact(p: Pair, what: string): void {
  gpu().synchronize();
  const want = cpu.read(p.c), got = gpu().read(p.g);
  assert.equal(got.length, want.length, what);
  for (let i = 0; i < want.length; i++) {
    if (got[i] !== want[i]) assert.fail(`${what}: element ${i} is ${got[i]}, expected ${want[i]} (seed ${SEED})`);
  }
}

// ---- memory and movement ----

test('memory: alloc/free move liveBytes, write/read round trip per dtype, read of a view', { skip }, () => {
  const b = gpu();
  const before = b.memoryStats().liveBytes;
  const buf = b.alloc(1000);
  assert.ok(b.memoryStats().liveBytes >= before + 1000);
  assert.ok(b.memoryStats().peakBytes >= b.memoryStats().liveBytes);
  b.free(buf);
  assert.equal(b.memoryStats().liveBytes, before);
  for (const dtype of ['f32', 'bf16', 'i32'] as const) {
    const p = input([37, 53], dtype, dtype === 'i32' ? randint(37 * 53, -1e6, 1e6) : undefined);
    expectExact(p, `round trip ${dtype}`);
    expectExact(view(p, [53, 37], [1, 53]), `read of a transposed ${dtype} view`);
  }
});

test('copy: transposed, broadcast, dtype conversions, rank-5 permutation, reshape', { skip }, () => {
  const run = (dst: Pair, src: Pair): void => { cpu.copy(dst.c, src.c); gpu().copy(dst.g, src.g); };
  const x = input([37, 53], 'f32');
  let o = output([53, 37], 'bf16');
  run(o, view(x, [53, 37], [1, 53]));
  expectExact(o, 'f32 transposed → bf16');
  const row = input([53], 'bf16');
  o = output([37, 53], 'f32');
  run(o, view(row, [37, 53], [0, 1]));
  expectExact(o, 'bf16 broadcast row → f32');
  const scaled = input([37, 53], 'f32', randn(37 * 53, 100));
  o = output([37, 53], 'i32');
  run(o, scaled);
  expectExact(o, 'f32 → i32 (round half up)');
  const ints = input([37, 53], 'i32', randint(37 * 53, -(2 ** 30), 2 ** 30));
  o = output([37, 53], 'i32');
  run(o, view(ints, [37, 53], [53, 1]));
  expectExact(o, 'i32 → i32 (bits, beyond 2^24)');
  o = output([37, 53], 'bf16');
  run(o, ints);
  expectExact(o, 'i32 → bf16');
  const five = input([2, 3, 4, 5, 7], 'bf16');
  o = output([7, 5, 4, 3, 2], 'bf16');
  run(o, view(five, [7, 5, 4, 3, 2], [1, 7, 35, 140, 420]));
  expectExact(o, 'rank-5 reversed permutation');
  // A strided destination: every other column of a wider buffer.
  const wide = output([37, 106], 'f32');
  cpu.fill(wide.c, 0); gpu().fill(wide.g, 0);
  run(view(wide, [37, 53], [106, 2], 1), x);
  expectExact(wide, 'strided destination');
  o = output([53, 37], 'f32');
  run(o, x);
  expectExact(o, 'reshape of a contiguous source');
  o = output([53, 37], 'f32');
  run(o, view(x, [53, 37], [1, 53]));
  expectExact(o, 'transposed source, reshape target (same shape)');
  o = output([37 * 53], 'f32');
  run(o, view(x, [53, 37], [1, 53]));
  expectExact(o, 'transposed source into a flat destination (staged)');
});

test('copy and binary, 8-wide paths: split views, row blocks, a 192-wide pack, and views that must fall back (odd width, misaligned start)', { skip }, () => {
  const run = (dst: Pair, src: Pair): void => { cpu.copy(dst.c, src.c); gpu().copy(dst.g, src.g); };
  for (const [td, ts] of [['bf16', 'bf16'], ['f32', 'f32'], ['bf16', 'f32'], ['f32', 'bf16']] as const) {
    // q [B·S, H, 192] split into its first 128 and last 64 columns (the MLA split), as in attention.
    const q = input([6, 3, 192], ts);
    for (const [first, width] of [[0, 128], [128, 64]] as const) {
      const o = output([6, 3, width], td);
      run(o, view(q, [6, 3, width], [576, 192, 1], first));
      expectExact(o, `${ts} → ${td}: columns ${first}..${first + width} of a 192-wide pack`);
    }
    // Into a strided destination: the pack rebuilt from its pieces (the split's backward).
    const pack = output([6, 3, 192], td);
    run(view(pack, [6, 3, 128], [576, 192, 1], 0), view(q, [6, 3, 128], [576, 192, 1], 0));
    run(view(pack, [6, 3, 64], [576, 192, 1], 128), view(q, [6, 3, 64], [576, 192, 1], 128));
    expectExact(pack, `${ts} → ${td}: a pack written through two strided views`);
    // A row block at an offset of whole vectors, and fallbacks: a width of 12 and a start 4 elements in.
    const rows = input([9, 40], ts);
    let o = output([5, 40], td);
    run(o, view(rows, [5, 40], [40, 1], 80));
    expectExact(o, `${ts} → ${td}: a row block`);
    o = output([9, 12], td);
    run(o, view(rows, [9, 12], [40, 1], 8));
    expectExact(o, `${ts} → ${td}: width 12 (scalar path)`);
    o = output([5, 32], td);
    run(o, view(rows, [5, 32], [40, 1], 4));
    expectExact(o, `${ts} → ${td}: a start 4 elements past alignment (scalar path)`);
  }
  // Same-type copies move bits: NaN payloads survive the 8-wide path.
  const nan = input([2, 64], 'f32', Float32Array.from({ length: 128 }, (_, i) => (i % 5 === 0 ? Number.NaN : i)));
  const on = output([2, 64], 'f32');
  run(on, nan);
  gpu().synchronize();
  const bits = (a: HostArray) => new Uint32Array(a.buffer, a.byteOffset, a.length);
  assert.deepEqual(bits(gpu().read(on.g)), bits(cpu.read(nan.c)), 'f32 → f32 with NaNs: the same bits');
  for (const op of ['add', 'sub', 'mul', 'div'] as const) {
    for (const [to, ta, tb] of [['bf16', 'bf16', 'bf16'], ['f32', 'f32', 'f32'], ['f32', 'bf16', 'f32'], ['bf16', 'f32', 'bf16']] as const) {
      const tol = to === 'f32' ? F32_TOL : BF16_TOL, away = (v: number) => Math.sign(v) * (Math.abs(v) + 0.5);
      // Contiguous [R, 2048]-like rows, a row-broadcast operand (stride 0 over rows) and a split view.
      const a = input([7, 64], ta), b = input([7, 64], tb, randn(7 * 64).map(away));
      let o = output([7, 64], to);
      cpu.binary(op, o.c, a.c, b.c); gpu().binary(op, o.g, a.g, b.g);
      expectClose(o, tol, `binary ${op} ${ta},${tb}→${to}: contiguous`);
      const row = input([64], tb, randn(64).map(away));
      o = output([7, 64], to);
      cpu.binary(op, o.c, a.c, view(row, [7, 64], [0, 1]).c); gpu().binary(op, o.g, a.g, view(row, [7, 64], [0, 1]).g);
      expectClose(o, tol, `binary ${op} ${ta},${tb}→${to}: a row broadcast over rows`);
      const wide = input([7, 96], ta);
      o = output([7, 64], to);
      cpu.binary(op, o.c, view(wide, [7, 64], [96, 1], 32).c, b.c); gpu().binary(op, o.g, view(wide, [7, 64], [96, 1], 32).g, b.g);
      expectClose(o, tol, `binary ${op} ${ta},${tb}→${to}: columns 32..96 of a 96-wide operand`);
      o = output([7, 60], to);
      cpu.binary(op, o.c, view(wide, [7, 60], [96, 1], 4).c, view(b, [7, 60], [64, 1], 0).c);
      gpu().binary(op, o.g, view(wide, [7, 60], [96, 1], 4).g, view(b, [7, 60], [64, 1], 0).g);
      expectClose(o, tol, `binary ${op} ${ta},${tb}→${to}: width 60 at a misaligned start (scalar path)`);
    }
  }
});

test('fill: f32, bf16, i32, and a strided view', { skip }, () => {
  for (const [dtype, value] of [['f32', 1.25], ['bf16', 0.3], ['i32', -5], ['f32', -0.1]] as const) {
    const o = output([37, 129], dtype);
    cpu.fill(o.c, value); gpu().fill(o.g, value);
    expectExact(o, `fill ${dtype} ${value}`);
  }
  // The contract's fill takes a contiguous tensor (the CPU oracle insists); the GPU kernel also
  // takes views, checked here against the expected elements directly.
  const base = input([37, 53], 'bf16');
  gpu().fill(base.g.view([37, 2], [53, 3], 5), 7);
  const want = cpu.read(base.c) as Uint16Array;
  for (let r = 0; r < 37; r++) for (const c of [5, 8]) want[r * 53 + c] = 0x40e0; // 7 in bf16
  assert.deepEqual(gpu().read(base.g), want, `fill of a strided view (seed ${SEED})`);
});

// ---- elementwise and reductions ----

test('unary: every op, f32 and bf16, contiguous and transposed inputs', { skip }, () => {
  const ops = ['neg', 'exp', 'log', 'sqrt', 'rsqrt', 'square', 'silu', 'scale', 'addScalar'] as const;
  for (const op of ops) {
    const positive = op === 'log' || op === 'sqrt' || op === 'rsqrt';
    const values = randn(37 * 129).map((v) => (positive ? Math.abs(v) + 0.1 : v));
    for (const [outType, inType] of [['f32', 'f32'], ['bf16', 'bf16'], ['f32', 'bf16'], ['bf16', 'f32']] as const) {
      const x = input([37, 129], inType, values);
      const o = output([129, 37], outType);
      const xt = view(x, [129, 37], [1, 129]);
      cpu.unary(op, o.c, xt.c, 0.37); gpu().unary(op, o.g, xt.g, 0.37);
      expectClose(o, outType === 'f32' ? F32_TOL : BF16_TOL, `unary ${op} ${inType}→${outType}`);
    }
  }
  const ints = input([37, 53], 'i32', randint(37 * 53, -100, 100));
  const o = output([37, 53], 'f32');
  cpu.unary('square', o.c, ints.c); gpu().unary('square', o.g, ints.g);
  expectExact(o, 'unary square of i32');
});

test('binary: every op, broadcast views, mixed dtypes, i32', { skip }, () => {
  for (const op of ['add', 'sub', 'mul', 'div'] as const) {
    for (const [to, ta, tb] of [['f32', 'f32', 'f32'], ['bf16', 'bf16', 'bf16'], ['f32', 'bf16', 'f32'], ['bf16', 'f32', 'bf16']] as const) {
      const a = input([37, 53], ta);
      const bRow = input([53], tb, randn(53).map((v) => (op === 'div' ? Math.sign(v) * (Math.abs(v) + 0.5) : v)));
      const o = output([37, 53], to);
      const bb = view(bRow, [37, 53], [0, 1]);
      cpu.binary(op, o.c, a.c, bb.c); gpu().binary(op, o.g, a.g, bb.g);
      expectClose(o, to === 'f32' ? F32_TOL : BF16_TOL, `binary ${op} ${ta},${tb}→${to} (row broadcast)`);
      // a transposed, b a broadcast column, out of rank 3.
      const a3 = input([4, 53, 37], ta);
      const bCol = input([37], tb, randn(37).map((v) => Math.abs(v) + 0.5));
      const o3 = output([4, 37, 53], to);
      const at = view(a3, [4, 37, 53], [53 * 37, 1, 37]), bc = view(bCol, [4, 37, 53], [0, 1, 0]);
      cpu.binary(op, o3.c, at.c, bc.c); gpu().binary(op, o3.g, at.g, bc.g);
      expectClose(o3, to === 'f32' ? F32_TOL : BF16_TOL, `binary ${op} ${ta},${tb}→${to} (transposed, column broadcast)`);
    }
    const ia = input([37, 53], 'i32', randint(37 * 53, -1000, 1000));
    const ib = input([37, 53], 'i32', randint(37 * 53, 1, 50));
    const io = output([37, 53], 'i32');
    cpu.binary(op, io.c, ia.c, ib.c); gpu().binary(op, io.g, ia.g, ib.g);
    expectExact(io, `binary ${op} i32`);
  }
});

test('sumLastDim: warp rows (53, 1000) and block rows (1408 as [*,5000])', { skip }, () => {
  for (const [R, C] of [[37, 53], [37, 1000], [37, 1408], [5, 5000], [1000, 1]] as const) {
    for (const dtype of ['f32', 'bf16'] as const) {
      const x = input([R, C], dtype);
      const o = output([R], 'f32');
      cpu.sumLastDim(o.c, x.c); gpu().sumLastDim(o.g, x.g);
      expectClose(o, F32_TOL, `sumLastDim [${R},${C}] ${dtype}`);
    }
  }
  const x = input([37, 129], 'f32');
  const o = output([37], 'bf16');
  cpu.sumLastDim(o.c, x.c); gpu().sumLastDim(o.g, x.g);
  expectClose(o, BF16_TOL, 'sumLastDim into bf16');
});

test('sumSquaresInto accumulates Σx² in f32', { skip }, () => {
  for (const [n, dtype] of [[100003, 'f32'], [100003, 'bf16'], [7, 'f32']] as const) {
    const x = input([n], dtype);
    const o = input([1], 'f32', Float32Array.of(2.5));
    cpu.sumSquaresInto(o.c, x.c); gpu().sumSquaresInto(o.g, x.g);
    expectClose(o, F32_TOL, `sumSquaresInto n=${n} ${dtype}`);
  }
});

// ---- dense algebra ----

test('matmul: f32, bf16, transposes, shared operands across a batch, alpha/beta', { skip }, () => {
  interface Case { a: Shape; b: Shape; out: Shape; dt: 'f32' | 'bf16'; ot: 'f32' | 'bf16'; transA?: boolean; transB?: boolean; alpha?: number; beta?: number }
  const cases: Case[] = [
    { a: [37, 53], b: [53, 129], out: [37, 129], dt: 'f32', ot: 'f32' },
    { a: [53, 37], b: [129, 53], out: [37, 129], dt: 'bf16', ot: 'bf16', transA: true, transB: true },
    { a: [3, 37, 53], b: [53, 129], out: [3, 37, 129], dt: 'bf16', ot: 'f32' },
    { a: [37, 53], b: [3, 129, 53], out: [3, 37, 129], dt: 'bf16', ot: 'f32', transB: true, alpha: 2, beta: 0.5 },
    { a: [3, 53, 37], b: [53, 129], out: [3, 37, 129], dt: 'bf16', ot: 'bf16', transA: true },
    { a: [3, 37, 53], b: [3, 53, 129], out: [3, 37, 129], dt: 'f32', ot: 'f32', beta: 1 },
  ];
  for (const k of cases) {
    const a = input(k.a, k.dt), b = input(k.b, k.dt);
    const o = k.beta ? input(k.out, k.ot) : output(k.out, k.ot);
    const opts = { transA: k.transA, transB: k.transB, alpha: k.alpha, beta: k.beta };
    cpu.matmul(o.c, a.c, b.c, opts); gpu().matmul(o.g, a.g, b.g, opts);
    // f32 outputs: f32 accumulation over K=53 in another order (cuBLASLt, no TF32 with COMPUTE_32F).
    expectClose(o, k.ot === 'f32' ? F32_TOL : BF16_TOL, `matmul ${JSON.stringify(k)}`);
  }
});

// ---- model pieces ----

test('rmsNorm forward and backward (dw accumulated across rows)', { skip }, () => {
  for (const [R, D, xt, wt] of [[37, 53, 'f32', 'f32'], [37, 1408, 'bf16', 'f32'], [19, 2048, 'bf16', 'bf16'], [600, 129, 'f32', 'bf16'], [3, 13000, 'f32', 'f32'], [2000, 256, 'bf16', 'f32']] as const) {
    const x = input([R, D], xt, randn(R * D, 2));
    const w = input([D], wt, randn(D).map((v) => 1 + 0.1 * v));
    const y = output([R, D], xt), rstd = output([R], 'f32');
    cpu.rmsNorm(y.c, rstd.c, x.c, w.c, 1e-6); gpu().rmsNorm(y.g, rstd.g, x.g, w.g, 1e-6);
    const what = `rmsNorm [${R},${D}] x ${xt} w ${wt}`;
    expectClose(y, xt === 'f32' ? F32_TOL : BF16_TOL, `${what} y`);
    expectClose(rstd, F32_TOL, `${what} rstd`);
    const rs = input([R], 'f32', read(cpu, rstd.c)); // the same statistics on both sides
    const dy = input([R, D], xt);
    const dx = output([R, D], xt);
    const dw = input([D], 'f32');
    cpu.rmsNormBackward(dx.c, dw.c, dy.c, x.c, w.c, rs.c); gpu().rmsNormBackward(dx.g, dw.g, dy.g, x.g, w.g, rs.g);
    expectClose(dx, xt === 'f32' ? F32_TOL : BF16_TOL, `${what} dx`);
    expectClose(dw, F32_TOL, `${what} dw`);
  }
});

test('rope forward and backward (interleaved in, de-interleaved out)', { skip }, () => {
  for (const [shape, xt, ot] of [[[2, 37, 3, 64], 'bf16', 'bf16'], [[1, 5, 16, 64], 'f32', 'f32'], [[3, 7, 1, 10], 'f32', 'bf16']] as const) {
    const [, S, , D] = shape;
    const angles = randn(S * (D / 2), 3);
    const cos = input([S, D / 2], 'f32', angles.map(Math.cos)), sin = input([S, D / 2], 'f32', angles.map(Math.sin));
    const x = input(shape, xt);
    const o = output(shape, ot);
    cpu.rope(o.c, x.c, cos.c, sin.c); gpu().rope(o.g, x.g, cos.g, sin.g);
    expectClose(o, ot === 'f32' ? F32_TOL : BF16_TOL, `rope [${shape}] ${xt}→${ot}`);
    const dx = output(shape, ot);
    cpu.ropeBackward(dx.c, x.c, cos.c, sin.c); gpu().ropeBackward(dx.g, x.g, cos.g, sin.g);
    expectClose(dx, ot === 'f32' ? F32_TOL : BF16_TOL, `ropeBackward [${shape}] ${xt}→${ot}`);
  }
});

test('swiglu forward and backward', { skip }, () => {
  for (const [R, F, it, ot, dt] of [[37, 1408, 'bf16', 'bf16', 'bf16'], [37, 129, 'f32', 'f32', 'f32'], [37, 53, 'bf16', 'f32', 'f32']] as const) {
    const gate = input([R, F], it, randn(R * F, 3)), up = input([R, F], it);
    const o = output([R, F], ot);
    cpu.swiglu(o.c, gate.c, up.c); gpu().swiglu(o.g, gate.g, up.g);
    const tol = ot === 'f32' ? F32_TOL : BF16_TOL;
    expectClose(o, tol, `swiglu [${R},${F}] ${it}→${ot}`);
    const dout = input([R, F], dt);
    const dg = output([R, F], ot), du = output([R, F], ot);
    cpu.swigluBackward(dg.c, du.c, dout.c, gate.c, up.c); gpu().swigluBackward(dg.g, du.g, dout.g, gate.g, up.g);
    expectClose(dg, tol, `swigluBackward dgate [${R},${F}]`);
    expectClose(du, tol, `swigluBackward dup [${R},${F}]`);
  }
});

test('embedding forward and backward (repeated ids accumulate)', { skip }, () => {
  const V = 1000, D = 129;
  for (const [wt, ot] of [['f32', 'bf16'], ['bf16', 'bf16'], ['f32', 'f32']] as const) {
    const weight = input([V, D], wt);
    const ids = input([37], 'i32', randint(37, 0, V));
    const o = output([37, D], ot);
    cpu.embedding(o.c, ids.c, weight.c); gpu().embedding(o.g, ids.g, weight.g);
    expectExact(o, `embedding ${wt}→${ot}`);
  }
  for (const dt of ['f32', 'bf16'] as const) {
    const ids = input([300], 'i32', randint(300, 0, 50)); // many repeats
    const dout = input([300, D], dt);
    const dweight = input([V, D], 'f32');
    cpu.embeddingBackward(dweight.c, ids.c, dout.c); gpu().embeddingBackward(dweight.g, ids.g, dout.g);
    expectClose(dweight, F32_TOL, `embeddingBackward dout ${dt}`);
  }
});

test('embeddingBackward into a zero gradient, f32 or bf16 (the lean recipe\'s), leaves Σ g² of the whole gradient (repeated and invalid ids; 8192 tokens over V 102400)', { skip }, () => {
  for (const [N, V, D, gt] of [[300, 1000, 129, 'f32'], [8192, 102400, 64, 'f32'], [300, 1000, 129, 'bf16'], [8192, 102400, 64, 'bf16']] as const) {
    const idValues = randint(N, 0, Math.min(V, 50 + N / 4));  // many repeats
    idValues[3] = -1; idValues[N - 2] = V;                    // skipped by the scatter, and by the squares
    const ids = input([N], 'i32', idValues);
    const dout = input([N, D], 'bf16');
    const dweight = output([V, D], gt);
    cpu.fill(dweight.c, 0); gpu().fill(dweight.g, 0);
    const squares = output([1], 'f32');
    assert.equal(cpu.embeddingBackward(dweight.c, ids.c, dout.c, squares.c), false, 'the CPU leaves no squares');
    assert.equal(gpu().embeddingBackward(dweight.g, ids.g, dout.g, squares.g), true, 'CUDA leaves the squares');
    cpu.fill(squares.c, 0);
    cpu.sumSquaresInto(squares.c, dweight.c);  // the norm's pass over the whole gradient
    // bf16: the sums' f32 order differs (atomics), so an element may round to the other neighbour.
    const tol = gt === 'f32' ? F32_TOL : 2e-3;
    expectClose(dweight, tol, `embeddingBackward N=${N} V=${V} ${gt}`);
    expectClose(squares, tol, `embeddingBackward squares N=${N} V=${V} ${gt}`);
    if (gt === 'bf16') {
      // A second scatter into the now nonzero bf16 rows: each adds its sum to the stored value.
      cpu.embeddingBackward(dweight.c, ids.c, dout.c); gpu().embeddingBackward(dweight.g, ids.g, dout.g);
      expectClose(dweight, tol, `embeddingBackward N=${N} V=${V} bf16, added to stored rows`);
    }
  }
});

test('cross-entropy forward and backward, V 1000 / 1001 / 102400, ignored labels', { skip }, () => {
  for (const [N, V, lt, dt] of [[37, 1000, 'f32', 'f32'], [13, 1001, 'bf16', 'bf16'], [7, 102400, 'bf16', 'bf16'], [5, 102400, 'f32', 'f32'], [9, 1001, 'bf16', 'f32']] as const) {
    const logits = input([N, V], lt, randn(N * V, 3));
    const labelValues = randint(N, 0, V);
    labelValues[1] = -1; labelValues[N - 1] = -100;
    const labels = input([N], 'i32', labelValues);
    const loss = output([N], 'f32'), lse = output([N], 'f32');
    cpu.crossEntropy(loss.c, lse.c, logits.c, labels.c); gpu().crossEntropy(loss.g, lse.g, logits.g, labels.g);
    const what = `crossEntropy N=${N} V=${V} ${lt}`;
    expectClose(loss, EXP_TOL, `${what} loss`);
    expectClose(lse, EXP_TOL, `${what} lse`);
    const lseIn = input([N], 'f32', read(cpu, lse.c));
    const dloss = input([1], 'f32', Float32Array.of(0.7));
    const dlogits = output([N, V], dt);
    cpu.crossEntropyBackward(dlogits.c, logits.c, labels.c, lseIn.c, dloss.c, 1 / N);
    gpu().crossEntropyBackward(dlogits.g, logits.g, labels.g, lseIn.g, dloss.g, 1 / N);
    expectClose(dlogits, dt === 'f32' ? EXP_TOL : BF16_TOL, `${what} dlogits ${dt}`);
  }
});

test('crossEntropyWithGrad: the forward and backward kernels\' bits (dloss = 1), in place or not, the row cached in shared memory (bf16 at V 102400) or read twice (f32 at V 102400); and the CPU\'s values', { skip }, () => {
  for (const [N, V, dt, inPlace] of [[13, 1001, 'bf16', true], [7, 102400, 'bf16', true], [5, 102400, 'f32', true], [9, 1001, 'f32', false], [6, 102400, 'bf16', false]] as const) {
    const values = randn(N * V, 3);
    const logits = input([N, V], dt, values);
    const labelValues = randint(N, 0, V);
    labelValues[1] = -1; labelValues[N - 1] = -100;
    const labels = input([N], 'i32', labelValues);
    const what = `crossEntropyWithGrad N=${N} V=${V} ${dt}${inPlace ? ' in place' : ''}`;
    // The two kernels on the GPU: the bits to match.
    const one = input([1], 'f32', Float32Array.of(1));
    const wantLoss = output([N], 'f32'), wantLse = output([N], 'f32'), wantD = output([N, V], dt);
    gpu().crossEntropy(wantLoss.g, wantLse.g, logits.g, labels.g);
    gpu().crossEntropyBackward(wantD.g, logits.g, labels.g, wantLse.g, one.g, 1 / N);
    const loss = output([N], 'f32'), lse = output([N], 'f32');
    const d = inPlace ? logits : output([N, V], dt);
    cpu.crossEntropyWithGrad(loss.c, lse.c, d.c, logits.c, labels.c, 1 / N);
    gpu().crossEntropyWithGrad(loss.g, lse.g, d.g, logits.g, labels.g, 1 / N);
    gpu().synchronize();
    assert.deepEqual(gpu().read(loss.g), gpu().read(wantLoss.g), `${what}: loss bits`);
    assert.deepEqual(gpu().read(lse.g), gpu().read(wantLse.g), `${what}: lse bits`);
    assert.deepEqual(gpu().read(d.g), gpu().read(wantD.g), `${what}: dlogits bits`);
    expectClose(loss, EXP_TOL, `${what} loss`);
    expectClose(d, dt === 'f32' ? EXP_TOL : BF16_TOL, `${what} dlogits`);
  }
});

test('softmax forward and backward (router widths)', { skip }, () => {
  for (const [R, C] of [[37, 64], [37, 300], [5, 7]] as const) {
    const x = input([R, C], 'f32', randn(R * C, 3));
    const y = output([R, C], 'f32');
    cpu.softmax(y.c, x.c); gpu().softmax(y.g, x.g);
    expectClose(y, F32_TOL, `softmax [${R},${C}]`);
    const yIn = input([R, C], 'f32', read(cpu, y.c));
    const dy = input([R, C], 'f32');
    const dx = output([R, C], 'f32');
    cpu.softmaxBackward(dx.c, dy.c, yIn.c); gpu().softmaxBackward(dx.g, dy.g, yIn.g);
    expectClose(dx, F32_TOL, `softmaxBackward [${R},${C}]`);
  }
});

test('topk: descending, ties to the lower index', { skip }, () => {
  for (const [N, E, k, ties] of [[37, 64, 6, false], [37, 256, 16, false], [37, 64, 6, true], [3, 5, 5, true], [37, 160, 8, false]] as const) {
    const values = randn(N * E).map((v) => (ties ? Math.round(v * 2) / 2 : v));
    const x = input([N, E], 'f32', values);
    const v = output([N, k], 'f32'), i = output([N, k], 'i32');
    cpu.topk(v.c, i.c, x.c, k); gpu().topk(v.g, i.g, x.g, k);
    expectExact(v, `topk values N=${N} E=${E} k=${k}${ties ? ' with ties' : ''}`);
    expectExact(i, `topk indices N=${N} E=${E} k=${k}${ties ? ' with ties' : ''}`);
  }
});

test('bincount per group and expertOrder (stable)', { skip }, () => {
  for (const [G, M, E] of [[3, 1000, 64], [1, 222, 64], [2, 50000, 7]] as const) {
    const idx = input([G, M], 'i32', randint(G * M, 0, E));
    const counts = output([G, E], 'i32');
    cpu.bincount(counts.c, idx.c); gpu().bincount(counts.g, idx.g);
    expectExact(counts, `bincount [${G},${M}] E=${E}`);
  }
  for (const [M, E] of [[222, 64], [36000, 64], [5000, 7], [100, 300], [300000, 64]] as const) {
    const slots = input([M], 'i32', randint(M, 0, E));
    const order = output([M], 'i32'), offsets = output([E + 1], 'i32');
    cpu.expertOrder(order.c, offsets.c, slots.c, E); gpu().expertOrder(order.g, offsets.g, slots.g, E);
    expectExact(offsets, `expertOrder offsets M=${M} E=${E}`);
    expectExact(order, `expertOrder order M=${M} E=${E}`);
  }
});

test('gatherRows and scatterAddRows, with and without weights', { skip }, () => {
  // D 129: element path; D 256: the gather's 16-byte vector path.
  for (const D of [129, 256]) scatterGatherCases(37, D, 222);
  // Narrower than a warp: one thread per element. D 1 over 49,157 rows: the router's weights in
  // expert order at the bench's 8192 tokens × top-6, plus an awkward tail.
  scatterGatherCases(8192, 1, 49157);
  scatterGatherCases(37, 31, 222);
});

function scatterGatherCases(N: number, D: number, M: number): void {
  for (const [xt, ot, weighted] of [['bf16', 'bf16', false], ['f32', 'f32', true], ['bf16', 'f32', true], ['f32', 'bf16', false]] as const) {
    const x = input([N, D], xt);
    const idx = input([M], 'i32', randint(M, 0, N));
    const w = weighted ? input([M], 'f32', randn(M).map(Math.abs)) : null;
    const o = output([M, D], ot);
    cpu.gatherRows(o.c, x.c, idx.c, w?.c ?? null); gpu().gatherRows(o.g, x.g, idx.g, w?.g ?? null);
    expectClose(o, ot === 'f32' ? F32_TOL : BF16_TOL, `gatherRows D=${D} ${xt}→${ot}${weighted ? ' weighted' : ''}`);
  }
  for (const [st, ot, weighted] of [['bf16', 'f32', true], ['f32', 'f32', false], ['bf16', 'bf16', true], ['f32', 'bf16', false]] as const) {
    const src = input([M, D], st);
    const idx = input([M], 'i32', randint(M, 0, N));
    const w = weighted ? input([M], 'f32', randn(M).map(Math.abs)) : null;
    const o = input([N, D], ot);
    cpu.scatterAddRows(o.c, src.c, idx.c, w?.c ?? null); gpu().scatterAddRows(o.g, src.g, idx.g, w?.g ?? null);
    expectClose(o, ot === 'f32' ? F32_TOL : BF16_TOL, `scatterAddRows D=${D} ${st}→${ot}${weighted ? ' weighted' : ''}`);
  }
}

/** N tokens' k distinct experts out of E (expert 4 never, when E > 4: an expert without rows), as slots [N·k]. */
function routedSlots(N: number, k: number, E: number): Int32Array {
  const slots = new Int32Array(N * k);
  for (let n = 0; n < N; n++) {
    for (let j = 0; j < k; j++) {
      let e: number;
      do e = Math.floor(uniform() * E); while ((E > 4 && e === 4) || slots.subarray(n * k, n * k + j).includes(e));
      slots[n * k + j] = e;
    }
  }
  return slots;
}

test('expertOrderInverse, sumSlotRows and sumSlotRowsBackward: awkward shapes and the bench shape', { skip }, () => {
  // [N, k, D, E]: widths 53 (element path) and 256 (16-byte path), one token, the bench shape.
  for (const [N, k, D, E] of [[37, 3, 53, 7], [37, 3, 256, 7], [1, 6, 16, 64], [8192, 6, 2048, 64]] as const) {
    const bench = N === 8192;
    const slots = input([N * k], 'i32', routedSlots(N, k, E));
    const order = output([N * k], 'i32'), offsets = output([E + 1], 'i32');
    cpu.expertOrder(order.c, offsets.c, slots.c, E); gpu().expertOrder(order.g, offsets.g, slots.g, E);
    expectExact(order, `expertOrder N=${N} k=${k}`);
    const bounds = cpu.read(offsets.c) as Int32Array, orderHost = cpu.read(order.c) as Int32Array;
    for (const [e0, e1] of [[0, E], [2, Math.min(5, E)]] as const) {
      const first = bounds[e0]!, M = bounds[e1]! - first, what = `N=${N} k=${k} D=${D} experts [${e0},${e1}) M=${M}`;
      const inv = output([N * k], 'i32');
      cpu.expertOrderInverse(inv.c, order.c, first, M); gpu().expertOrderInverse(inv.g, order.g, first, M);
      expectExact(inv, `expertOrderInverse ${what}`);
      const tok = input([M], 'i32', Int32Array.from(orderHost.subarray(first, first + M), (s) => Math.floor(s / k)));
      const fwdCases = bench ? [['bf16', 'bf16', true], ['bf16', 'bf16', false]] as const
        : [['bf16', 'bf16', true], ['f32', 'f32', true], ['bf16', 'bf16', false], ['f32', 'bf16', false], ['bf16', 'f32', true]] as const;
      for (const [rt, ot, weighted] of fwdCases) {
        const rows = input([M, D], rt), w = weighted ? input([M], 'f32', randn(M).map(Math.abs)) : null;
        const out = output([N, D], ot);
        cpu.sumSlotRows(out.c, rows.c, inv.c, w?.c ?? null); gpu().sumSlotRows(out.g, rows.g, inv.g, w?.g ?? null);
        expectClose(out, ot === 'f32' ? F32_TOL : BF16_TOL, `sumSlotRows ${what} ${rt}→${ot}${weighted ? ' weighted' : ''}`);
        for (const t of [rows, w, out]) if (t) { t.c.dispose(); t.g.dispose(); }
      }
      // [drows, dout, rows] dtypes, and which outputs are asked for.
      const bwdCases = bench ? [['bf16', 'bf16', 'bf16', true, true]] as const
        : [['bf16', 'bf16', 'bf16', true, true], ['f32', 'f32', 'f32', true, true], ['f32', 'bf16', 'bf16', true, false], ['bf16', 'bf16', 'f32', false, true]] as const;
      for (const [dt, gt, rt, wantRows, wantWeights] of bwdCases) {
        const dout = input([N, D], gt), rows = input([M, D], rt), w = input([M], 'f32', randn(M).map(Math.abs));
        const drows = wantRows ? output([M, D], dt) : null, dw = wantWeights ? output([M, 1], 'f32') : null;
        cpu.sumSlotRowsBackward(drows?.c ?? null, dw?.c ?? null, dout.c, rows.c, tok.c, w.c);
        gpu().sumSlotRowsBackward(drows?.g ?? null, dw?.g ?? null, dout.g, rows.g, tok.g, w.g);
        if (drows) expectClose(drows, dt === 'f32' ? F32_TOL : BF16_TOL, `sumSlotRowsBackward drows ${what} ${gt}→${dt}`);
        if (dw) expectClose(dw, F32_TOL, `sumSlotRowsBackward dweights ${what} ${gt}·${rt}`);
        for (const t of [dout, rows, w, drows, dw]) if (t) { t.c.dispose(); t.g.dispose(); }
      }
    }
  }
});

test('adam and adamw over f32 masters with the bf16 copy', { skip }, () => {
  const n = 10007;
  for (const [decoupled, withLowp] of [[true, true], [false, false], [true, false]] as const) {
    const param = input([n], 'f32', randn(n, 0.02));
    const grad = input([n], 'f32', randn(n, 1e-3));
    const m = input([n], 'f32', randn(n, 1e-4));
    const v = input([n], 'f32', randn(n, 1e-3).map((x) => x * x));
    const lowp = withLowp ? output([n], 'bf16') : null;
    const h = { lr: 1e-3, beta1: 0.9, beta2: 0.95, eps: 1e-8, weightDecay: 0.1, decoupled, step: 7, gradScale: 0.5 };
    cpu.adam(param.c, grad.c, m.c, v.c, lowp?.c ?? null, h); gpu().adam(param.g, grad.g, m.g, v.g, lowp?.g ?? null, h);
    const what = decoupled ? 'adamw' : 'adam';
    expectClose(param, F32_TOL, `${what} param`);
    expectClose(m, F32_TOL, `${what} m`);
    expectClose(v, F32_TOL, `${what} v`);
    if (lowp) expectClose(lowp, BF16_TOL, `${what} bf16 copy`);
  }
});

test('MLA attention through the backend (forward, lse, the five gradients)', { skip }, () => {
  // The kernels' own tests (cuda_attention.test.ts) cover lengths and modes; this checks the
  // wiring. B=1, S=70 (one full and one partial tile), H=2, bf16 inputs. Tolerances: o and the
  // gradients pass through bf16 probabilities inside the kernel's products (two chained bf16
  // roundings), so 2e-2; lse comes from f32 scores, 1e-4.
  const B = 1, S = 70, H = 2;
  const qn = input([B, S, H, 128], 'bf16'), qp = input([B, S, H, 64], 'bf16');
  const kn = input([B, S, H, 128], 'bf16'), kp = input([B, S, 1, 64], 'bf16'), v = input([B, S, H, 128], 'bf16');
  const o = output([B, S, H, 128], 'bf16'), lse = output([B, H, S], 'f32');
  const opts = { causal: true, scale: 1 / Math.sqrt(192) };
  cpu.mlaAttention(o.c, lse.c, qn.c, qp.c, kn.c, kp.c, v.c, opts);
  gpu().mlaAttention(o.g, lse.g, qn.g, qp.g, kn.g, kp.g, v.g, opts);
  expectClose(o, 2e-2, 'mlaAttention o');
  expectClose(lse, 1e-4, 'mlaAttention lse');
  const dout = input([B, S, H, 128], 'bf16');
  const grads = {
    dqNope: output([B, S, H, 128], 'bf16'), dqPe: output([B, S, H, 64], 'bf16'), dkNope: output([B, S, H, 128], 'bf16'),
    dkPe: output([B, S, 1, 64], 'bf16'), dv: output([B, S, H, 128], 'bf16'),
  };
  const side = (k: 'c' | 'g') => ({ dqNope: grads.dqNope[k], dqPe: grads.dqPe[k], dkNope: grads.dkNope[k], dkPe: grads.dkPe[k], dv: grads.dv[k] });
  cpu.mlaAttentionBackward(side('c'), dout.c, qn.c, qp.c, kn.c, kp.c, v.c, o.c, lse.c, opts);
  gpu().mlaAttentionBackward(side('g'), dout.g, qn.g, qp.g, kn.g, kp.g, v.g, o.g, lse.g, opts);
  for (const [name, p] of Object.entries(grads)) expectClose(p, 2e-2, `mlaAttentionBackward ${name}`);
});

// ---- bandwidth (MOETRAIN_BENCH=1 only; prints, asserts nothing) ----

const bench = skip || (process.env.MOETRAIN_BENCH === '1' ? false : 'set MOETRAIN_BENCH=1 to time the kernels');

/** A device tensor filled with random values by uploading one random chunk repeatedly. */
function randomDevice(shape: Shape, dtype: DType, values?: Float32Array | Int32Array): Tensor {
  const t = emptyTensor(gpu(), shape, dtype);
  const chunk = hostOf(dtype, values ?? randn(Math.min(t.size, 1 << 22)));
  const chunkBytes = Math.min(chunk.byteLength, t.bytes);
  for (let at = 0; at < t.bytes; at += chunkBytes) gpu().ctx.upload(devicePtr(t) + BigInt(at), chunk, Math.min(chunkBytes, t.bytes - at));
  return t;
}

test('bandwidth of the memory-bound kernels', { skip: bench }, (t) => {
  const b = gpu(), ctx = b.ctx;
  const time = (fn: () => void): number => {
    fn(); fn();
    const ms: number[] = [];
    for (let i = 0; i < 10; i++) ms.push(ctx.timeMs(fn));
    ms.sort((x, y) => x - y);
    return ms[5]!;
  };
  const rows: string[] = [];
  const report = (what: string, bytes: number, ms: number): void => {
    rows.push(`${what.padEnd(58)} ${ms.toFixed(3).padStart(8)} ms ${(bytes / ms / 1e6).toFixed(0).padStart(6)} GB/s  floor ${(bytes / 3e12 * 1e3).toFixed(3)} ms`);
  };
  const big = b.alloc(2 ** 30) as CudaDeviceBuffer, big2 = b.alloc(2 ** 30) as CudaDeviceBuffer;
  report('device-to-device copy 1 GiB (read + write)', 2 * 2 ** 30, time(() => ctx.copyDeviceToDevice(big2.ptr, big.ptr, 2 ** 30)));
  b.free(big); b.free(big2);

  const N = 4096, V = 102400;
  const logits = randomDevice([N, V], 'bf16', randn(1 << 22, 3));
  const labels = randomDevice([N], 'i32', randint(N, 0, V));
  const loss = emptyTensor(b, [N], 'f32'), lse = emptyTensor(b, [N], 'f32'), dloss = randomDevice([1], 'f32', Float32Array.of(1));
  report(`crossEntropy fwd [${N},${V}] bf16`, N * V * 2, time(() => b.crossEntropy(loss, lse, logits, labels)));
  const dlogits = emptyTensor(b, [N, V], 'bf16');
  report(`crossEntropy bwd [${N},${V}] bf16`, N * V * 4, time(() => b.crossEntropyBackward(dlogits, logits, labels, lse, dloss, 1 / N)));
  // In place, as the kept lm_head logits (the values change each run; the row's work does not).
  report(`crossEntropyWithGrad [${N},${V}] bf16 in place`, N * V * 4, time(() => b.crossEntropyWithGrad(loss, lse, logits, logits, labels, 1 / N)));
  logits.dispose(); dlogits.dispose();

  const R = 16384, D = 2048;
  const x = randomDevice([R, D], 'bf16'), w = randomDevice([D], 'bf16'), y = emptyTensor(b, [R, D], 'bf16'), rstd = emptyTensor(b, [R], 'f32');
  report(`rmsNorm fwd [${R},${D}] bf16`, R * D * 4, time(() => b.rmsNorm(y, rstd, x, w, 1e-6)));
  const dw = randomDevice([D], 'f32'), dx = emptyTensor(b, [R, D], 'bf16');
  report(`rmsNorm bwd [${R},${D}] bf16`, R * D * 6, time(() => b.rmsNormBackward(dx, dw, y, x, w, rstd)));
  const wide = emptyTensor(b, [R, D], 'f32');
  report(`copy bf16 → f32 [${R},${D}]`, R * D * 6, time(() => b.copy(wide, x)));
  report(`binary add bf16 [${R},${D}]`, R * D * 6, time(() => b.binary('add', dx, x, y)));
  const sq = randomDevice([1], 'f32', Float32Array.of(0));
  report(`sumSquaresInto f32 [${R},${D}]`, R * D * 4, time(() => b.sumSquaresInto(sq, wide)));

  const M = 6 * R, F = 1408;
  const gate = randomDevice([M, F], 'bf16'), up = randomDevice([M, F], 'bf16'), act = emptyTensor(b, [M, F], 'bf16');
  report(`swiglu fwd [${M},${F}] bf16`, M * F * 6, time(() => b.swiglu(act, gate, up)));
  const dgate = emptyTensor(b, [M, F], 'bf16'), dup = emptyTensor(b, [M, F], 'bf16');
  report(`swiglu bwd [${M},${F}] bf16`, M * F * 10, time(() => b.swigluBackward(dgate, dup, act, gate, up)));
  for (const u of [gate, up, act, dgate, dup]) u.dispose();

  const slotsToken = randomDevice([M], 'i32', randint(M, 0, R));
  const probs = randomDevice([M], 'f32');
  const dispatched = emptyTensor(b, [M, D], 'bf16');
  report(`gatherRows [${M},${D}] from [${R},${D}] bf16`, M * D * 4, time(() => b.gatherRows(dispatched, x, slotsToken, null)));
  const combined = randomDevice([R, D], 'f32');
  report(`scatterAddRows [${M},${D}] bf16 → f32 [${R},${D}] weighted`, M * D * 2 + R * D * 8, time(() => b.scatterAddRows(combined, dispatched, slotsToken, probs)));
  // The MoE combine without atomics: R tokens' k = 6 slots, rows a random permutation of them.
  const perm = Int32Array.from({ length: M }, (_, i) => i);
  for (let i = M - 1; i > 0; i--) { const j = Math.floor(uniform() * (i + 1)); [perm[i], perm[j]] = [perm[j]!, perm[i]!]; }
  const tokenOfRowHost = new Int32Array(M);
  perm.forEach((row, slot) => { tokenOfRowHost[row] = Math.floor(slot / 6); });
  const rowOfSlot = randomDevice([M], 'i32', perm), tokenOfRow = randomDevice([M], 'i32', tokenOfRowHost);
  const tokensOut = emptyTensor(b, [R, D], 'bf16'), rowWeights = randomDevice([M], 'f32'), dweights = emptyTensor(b, [M], 'f32');
  report(`sumSlotRows [${M},${D}] bf16 → [${R},${D}] weighted, k=6`, M * D * 2 + R * D * 2, time(() => b.sumSlotRows(tokensOut, dispatched, rowOfSlot, rowWeights)));
  const drows = emptyTensor(b, [M, D], 'bf16');
  report(`sumSlotRowsBackward [${M},${D}] bf16, drows and dweights`, M * D * 6, time(() => b.sumSlotRowsBackward(drows, dweights, tokensOut, dispatched, tokenOfRow, rowWeights)));
  for (const u of [rowOfSlot, tokenOfRow, tokensOut, rowWeights, dweights, drows]) u.dispose();
  dispatched.dispose();

  const experts = randomDevice([M], 'i32', randint(M, 0, 64));
  const order = emptyTensor(b, [M], 'i32'), offsets = emptyTensor(b, [65], 'i32');
  report(`expertOrder M=${M} E=64`, M * 8, time(() => b.expertOrder(order, offsets, experts, 64)));
  const router = randomDevice([R, 64], 'f32'), probsRE = emptyTensor(b, [R, 64], 'f32');
  const topv = emptyTensor(b, [R, 6], 'f32'), topi = emptyTensor(b, [R, 6], 'i32');
  report(`softmax [${R},64] f32`, R * 64 * 8, time(() => b.softmax(probsRE, router)));
  report(`topk [${R},64] k=6`, R * 64 * 4, time(() => b.topk(topv, topi, probsRE, 6)));

  const P = 100_000_000;
  const param = randomDevice([P], 'f32'), grad = randomDevice([P], 'f32'), mom = randomDevice([P], 'f32'), vel = randomDevice([P], 'f32');
  const lowp = emptyTensor(b, [P], 'bf16');
  const h = { lr: 1e-4, beta1: 0.9, beta2: 0.95, eps: 1e-8, weightDecay: 0.1, decoupled: true, step: 3, gradScale: 1 };
  report(`adamw ${P / 1e6}M params, bf16 copy`, P * 30, time(() => b.adam(param, grad, mom, vel, lowp, h)));
  // The same parameters as a list of expert-sized tensors (2048×1408), one launch per list.
  const E = 2048 * 1408, parts = Math.floor(P / E);
  const part = (t: Tensor, i: number) => t.view([E], [1], t.offset + i * E);
  const slots = Array.from({ length: parts }, (_, i) => ({
    param: part(param, i), grad: part(grad, i), m: part(mom, i), v: part(vel, i), lowp: part(lowp, i), decay: true,
  }));
  const list = new TensorList(slots), grads = new TensorList(slots.map((s) => s.grad));
  report(`adamMulti ${parts} × ${E} params, bf16 copy, grads zeroed`, parts * E * 34, time(() => b.adamMulti(list, h)));
  report(`adamMulti ${parts} × ${E} params, bf16 copy, grads kept`, parts * E * 30, time(() => b.adamMulti(list, h, 'keep')));
  report(`sumSquaresMulti ${parts} × ${E} f32`, parts * E * 4, time(() => b.sumSquaresMulti(sq, grads)));
  list.dispose(); grads.dispose();
  for (const s of slots) for (const t of [s.param, s.grad, s.m, s.v, s.lowp]) t.dispose();
  t.diagnostic(`${ctx.description}\n${rows.join('\n')}`);
  console.log(`\n${ctx.description}\n${rows.join('\n')}`);
});
