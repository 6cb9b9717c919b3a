// The grouped expert GEMM kernels on the GPU through Backend.groupedLinear*, every test once per
// kernel set (mma: kernels/grouped_gemm.cu; wgmma: kernels/grouped_gemm_wgmma.cu, tma and
// tma_pair: kernels/grouped_gemm_tma.cu, all three sm_90a only), each product checked two ways:
// - awkward shapes (E = 5, counts [0, 1, 130, 7, 64], K = 192, N = 320: zero-row experts, a
//   1-row expert, row tails, widths that are 64- but not 128-multiples; offsets that start at a
//   nonzero base, as a part owning middle experts passes them) against the CPU backend;
// - the bench shapes (E = 64, 49152 rows skewed 0..~1.7× the mean 768, K = 2048 / N = 1408 and
//   K = 1408 / N = 2048) against one cuBLASLt product per expert (the path the kernels replace,
//   itself checked against the CPU in cuda_backend.test.ts), plus 256 sampled elements per
//   product against f64 dot products on the host.
// The tma set's forward and dX are also checked at K, N ∈ {64, 192, 1408, 2048} against the CPU
// (0-, 1- and 129-row experts: tiles that start mid-tile-grid and spill into the next expert),
// with rows that belong to no expert (they must keep their poison), and at the bench shapes
// against the wgmma set. tma_pair's forward and dX (CTA pairs, kernel header) run the same cases
// (pairs within one expert, across two, and beside a phantom slot past the last row tile) and at
// the bench shapes must equal tma's bit for bit (the same wgmmas over the same k-steps; only how
// the weight tile reaches shared memory differs). The weight product, on tma, on tma_pair (pairs of
// row tiles, a phantom beside an odd last one) and on tma_pair's two products in one launch
// (Backend.groupedLinearWeightGradPair, each against its own CPU product), likewise: against the
// CPU at K, N ∈ {64, 192, 320,
// 448, 1408} (a narrow column tile of 64 or 128 columns, a wide one of 192, a second row tile of
// 64 rows) over experts of 0, 1, 63, 64, 65, 129 and 130 rows (last steps of 1, 63 and 64 rows,
// whose next rows are the next expert's, or rows in no expert after the last), beta 0 into
// poisoned then beta 1 on top, f32 and bf16 gradients; and at the bench shapes against the wgmma
// set (f32 beta 0 and 1, bf16 beta 0 and 1), tma_pair's forms equal to tma's bit for bit (each
// tile's wgmmas and k-steps are tma's; only X's boxes arrive by multicast). With beta 0 it also gives the Σ of the squares of
// what it wrote (autograd/grad_squares.ts): checked against the host's f64 sum of the stored
// gradients at all those shapes (≤ 1e-5 relative), and beta 1 must decline and leave it alone.
// The tma set's SwiGLU forward (gate, up and silu(gate)·up in one launch) must give, bit for bit,
// what the tma forward product twice and the SwiGLU kernel give, at K, N ∈ {64, 192, 1408, 2048}
// (gate-and-up tiles of 64 and 128 valid columns) over the same awkward experts with rows past
// the last expert (poison kept), and at the bench shape; and the CPU's values within bf16
// tolerance; tma_pair's SwiGLU forward the same against tma_pair's forward product (which the
// bench-shape test holds to tma's bits).
// The tma and tma_pair sets' gate-and-up data product (dX = dG·Wg + dU·Wu, one reduction over 2N,
// rounded once) against the CPU's (two rounded products and their rounded sum, the numerics the
// CPU oracle keeps) within bf16 tolerance at K, N ∈ {64, 192, 1408, 2048} over the same awkward
// experts with rows past the last expert (poison kept); at the bench shape (E = 64, 49152 rows,
// N = 1408, K = 2048, plus rows in no expert) against the wgmma set's composed form (itself the
// two products and the add, bit for bit) and sampled f64 dots, and tma_pair's equal to tma's.
// Outputs are poisoned with NaN first, so an element no CTA wrote fails. Tolerances:
// - bf16 outputs (forward, dX), ‖gpu − ref‖/‖ref‖ ≤ 1e-2: both sides accumulate the same exact
//   bf16 products in f32 (or f64) in different orders (~1e-6 relative) and round once to bf16,
//   so an element near a rounding boundary lands one bf16 ulp (2^-8) apart; the sampled check is
//   per element: |gpu − ref| ≤ 2^-8·|ref| + 1e-5·Σ|terms|.
// - f32 dW (accumulated onto a random initial gradient, beta = 1), ≤ 1e-5: summation order only;
//   sampled: |gpu − ref| ≤ 1e-5·(Σ|terms| + |init|). Experts with no rows keep their gradient
//   bit for bit.
// - bf16 dW (the lean recipe's gradients), ≤ 1e-2 as the bf16 outputs: f32 sums, one rounding.
// - dW with beta = 0 (a step's first write into a gradient marked logically zero,
//   autograd/lazy_grad_zero.ts), f32 and bf16, into NaN-poisoned gradients: the same tolerances
//   against the CPU (awkward shapes, kernel widths and the per-expert path's odd widths, then a
//   beta = 1 product on top) and against per-expert cuBLASLt with beta 0 (bench shapes); experts
//   with no rows, and every expert of a product over no rows, must hold exactly +0.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import type { Backend } from '../src/backend/backend.js';
import { CpuBackend } from '../src/backend/cpu/cpu_backend.js';
import { CudaBackend } from '../src/backend/cuda/cuda_backend.js';
import type { GroupedGemmLauncher } from '../src/backend/cuda/ops/grouped_gemm.js';
import { devicePtr } from '../src/backend/cuda/runtime/device_buffer.js';
import { defaultCudaContext } from '../src/backend/cuda/runtime/context.js';
import { cudaAvailable } from '../src/backend/cuda/ffi/library.js';
import { bf16ArrayToF32, f32ArrayToBf16, type DType, type HostArray } from '../src/tensor/dtype.js';
import { emptyTensor, type Shape, type Tensor } from '../src/tensor/tensor.js';

const skip = cudaAvailable() ? false : 'skipped: no CUDA';
const BF16_TOL = 1e-2;
const F32_TOL = 1e-5;

const SEED = (Date.now() ^ (process.pid << 8)) >>> 0;
let state = SEED || 1;
function uniform(): number {
  state ^= state << 13; state >>>= 0; state ^= state >>> 17; state ^= state << 5; state >>>= 0;
  return state / 2 ** 32;
}
/** Uniform values in [−1, 1), rounded to bf16; a prime count, so tiling it lines up with no row or column. */
const POOL = (() => {
  const p = new Float32Array(1_048_583);
  for (let i = 0; i < p.length; i++) p[i] = 2 * uniform() - 1;
  return bf16ArrayToF32(f32ArrayToBf16(p));
})();
/**
 * n values: the pool tiled from a random start, times scale (a power of two, so they stay exact
 * bf16 and host references see the device's values). Tiling keeps the 10^8-element bench shapes
 * quick to make.
 */
function values(n: number, scale: number): Float32Array {
  const out = new Float32Array(n);
  let at = Math.floor(uniform() * POOL.length);
  for (let i = 0; i < n; i++) { out[i] = scale * POOL[at]!; if (++at === POOL.length) at = 0; }
  return out;
}

const cpu = new CpuBackend();
let cuda: CudaBackend | undefined;
function gpu(): CudaBackend {
  cuda ??= new CudaBackend(defaultCudaContext());
  return cuda;
}

function upload(b: Backend, v: Float32Array | Int32Array, shape: Shape, dtype: DType): Tensor {
  const t = emptyTensor(b, shape, dtype);
  const host: HostArray = dtype === 'bf16' ? f32ArrayToBf16(v as Float32Array) : dtype === 'i32' ? Int32Array.from(v) : Float32Array.from(v);
  b.write(t, host);
  return t;
}
function poisoned(shape: Shape, dtype: DType): Tensor {
  const t = emptyTensor(gpu(), shape, dtype);
  if (t.bytes > 0) gpu().ctx.fillWords(devicePtr(t), dtype === 'f32' ? 0x7fc00000 : 0x7fc07fc0, Math.ceil(t.bytes / 4));
  return t;
}
function readF32(b: Backend, t: Tensor): Float32Array {
  const a = b.read(t);
  return a instanceof Uint16Array ? bf16ArrayToF32(a) : a instanceof Int32Array ? Float32Array.from(a) : a;
}

function relErr(got: Float32Array, want: Float32Array, what: string): number {
  assert.equal(got.length, want.length, what);
  let num = 0, den = 0;
  for (let i = 0; i < want.length; i++) {
    if (Number.isNaN(got[i]!)) assert.fail(`${what}: element ${i} is NaN (unwritten?), expected ${want[i]} (seed ${SEED})`);
    const d = got[i]! - want[i]!;
    num += d * d; den += want[i]! * want[i]!;
  }
  return den === 0 ? Math.sqrt(num) : Math.sqrt(num / den);
}
function expectClose(got: Float32Array, want: Float32Array, tol: number, what: string): void {
  const err = relErr(got, want, what);
  assert.ok(err <= tol, `${what}: relative error ${err.toExponential(3)} > ${tol} (seed ${SEED})`);
}

/** Offsets [base, base + c0, …] as i32 [E+1], stored after `pad` leading entries (a view into a longer array). */
function offsetsOn(b: Backend, counts: readonly number[], base: number, pad: number): Tensor {
  const all = [...Array.from({ length: pad }, () => -7), base];
  for (const c of counts) all.push(all[all.length - 1]! + c);
  const t = upload(b, Int32Array.from(all), [all.length], 'i32');
  return t.view([counts.length + 1], [1], t.offset + pad);
}

/** The kernel sets this GPU runs (wgmma, tma and tma_pair on sm_90a only). */
function kernelSets(): ('mma' | 'wgmma' | 'tma' | 'tma_pair')[] {
  return gpu().ctx.arch === 'sm_90a' ? ['mma', 'wgmma', 'tma', 'tma_pair'] : ['mma'];
}
const skipHopper = skip || (!kernelSets().includes('tma') ? 'skipped: the tma set needs sm_90a' : false);

for (const set of ['mma', 'wgmma', 'tma', 'tma_pair'] as const) {
  const skipSet = skip || (set !== 'mma' && !kernelSets().includes(set) ? `skipped: ${set} needs sm_90a` : false);

  test(`grouped GEMM (${set}), awkward shapes: forward, dX and dW against the CPU backend`, { skip: skipSet }, () => {
    gpu().groupedGemmKernels = set;
    const counts = [0, 1, 130, 7, 64], E = counts.length, K = 192, N = 320;
    const M = counts.reduce((a, b) => a + b, 0);
    const xv = values(M * K, 1), dyv = values(M * N, 1);
    const wv = counts.map(() => values(N * K, 0.125)), gv = counts.map(() => values(N * K, 1));
    const side = (b: Backend) => ({
      x: upload(b, xv, [M, K], 'bf16'), dy: upload(b, dyv, [M, N], 'bf16'),
      ws: wv.map((v) => upload(b, v, [N, K], 'bf16')), gs: gv.map((v) => upload(b, v, [N, K], 'f32')),
      off: offsetsOn(b, counts, 1000, 3),
    });
    const c = side(cpu), g = side(gpu());
    const yc = emptyTensor(cpu, [M, N], 'bf16'), yg = poisoned([M, N], 'bf16');
    cpu.groupedLinear(yc, c.x, c.ws, c.off); gpu().groupedLinear(yg, g.x, g.ws, g.off);
    expectClose(readF32(gpu(), yg), readF32(cpu, yc), BF16_TOL, 'forward');
    const dxc = emptyTensor(cpu, [M, K], 'bf16'), dxg = poisoned([M, K], 'bf16');
    cpu.groupedLinearBackwardData(dxc, c.dy, c.ws, c.off); gpu().groupedLinearBackwardData(dxg, g.dy, g.ws, g.off);
    expectClose(readF32(gpu(), dxg), readF32(cpu, dxc), BF16_TOL, 'dX');
    cpu.groupedLinearWeightGrad(c.gs, c.dy, c.x, c.off); gpu().groupedLinearWeightGrad(g.gs, g.dy, g.x, g.off);
    for (let e = 0; e < E; e++) {
      const got = readF32(gpu(), g.gs[e]!);
      if (counts[e] === 0) assert.deepEqual(got, gv[e], `dW of expert ${e} (no rows) must be untouched`);
      else expectClose(got, readF32(cpu, c.gs[e]!), F32_TOL, `dW of expert ${e} (${counts[e]} rows)`);
    }
    // bf16 gradients (the lean recipe): the wgmma and tma sets' own kernels, the mma set's
    // per-expert fallback; all add in f32 and round once, as the CPU does, so bf16's tolerance.
    const cb = gv.map((v) => upload(cpu, v, [N, K], 'bf16')), gb = gv.map((v) => upload(gpu(), v, [N, K], 'bf16'));
    cpu.groupedLinearWeightGrad(cb, c.dy, c.x, c.off); gpu().groupedLinearWeightGrad(gb, g.dy, g.x, g.off);
    for (let e = 0; e < E; e++) {
      const got = readF32(gpu(), gb[e]!);
      if (counts[e] === 0) assert.deepEqual(got, readF32(cpu, upload(cpu, gv[e]!, [N, K], 'bf16')), `bf16 dW of expert ${e} (no rows) must be untouched`);
      else expectClose(got, readF32(cpu, cb[e]!), BF16_TOL, `bf16 dW of expert ${e} (${counts[e]} rows)`);
    }
  });

  test(`grouped GEMM (${set}), dW with beta 0 over poisoned f32 and bf16 gradients: the CPU's values, then beta 1 on top; zeros where an expert has no rows`, { skip: skipSet }, () => {
    gpu().groupedGemmKernels = set;
    const counts = [0, 1, 130, 7, 64, 0];
    // Kernel widths (64-multiples), and odd ones that go per expert through cuBLASLt.
    for (const [K, N] of [[192, 320], [40, 24]] as const) {
      const M = counts.reduce((a, b) => a + b, 0);
      const xv = values(M * K, 1), dyv = values(M * N, 1), dyv2 = values(M * N, 1);
      const side = (b: Backend) => ({
        x: upload(b, xv, [M, K], 'bf16'), dy: upload(b, dyv, [M, N], 'bf16'), dy2: upload(b, dyv2, [M, N], 'bf16'), off: offsetsOn(b, counts, 40, 2),
      });
      const c = side(cpu), g = side(gpu());
      for (const dtype of ['f32', 'bf16'] as const) {
        const what = `${set}, K = ${K}, N = ${N}, ${dtype} gradients`;
        const tol = dtype === 'f32' ? F32_TOL : BF16_TOL;
        const cg = counts.map(() => { const t = emptyTensor(cpu, [N, K], dtype); cpu.fill(t, Number.NaN); return t; });
        const gg = counts.map(() => poisoned([N, K], dtype));
        cpu.groupedLinearWeightGrad(cg, c.dy, c.x, c.off, 0); gpu().groupedLinearWeightGrad(gg, g.dy, g.x, g.off, 0);
        for (let e = 0; e < counts.length; e++) {
          const got = readF32(gpu(), gg[e]!);
          if (counts[e] === 0) assert.ok(got.every((v) => Object.is(v, 0)), `${what}: expert ${e} (no rows) holds zeros after beta 0`);
          else expectClose(got, readF32(cpu, cg[e]!), tol, `${what}: expert ${e} (${counts[e]} rows), beta 0`);
        }
        // The step's next micro-batch accumulates onto what the first wrote.
        cpu.groupedLinearWeightGrad(cg, c.dy2, c.x, c.off, 1); gpu().groupedLinearWeightGrad(gg, g.dy2, g.x, g.off, 1);
        for (let e = 0; e < counts.length; e++) {
          const got = readF32(gpu(), gg[e]!);
          if (counts[e] === 0) assert.ok(got.every((v) => Object.is(v, 0)), `${what}: expert ${e} (no rows) keeps its zeros under beta 1`);
          else expectClose(got, readF32(cpu, cg[e]!), tol, `${what}: expert ${e} (${counts[e]} rows), beta 0 then 1`);
        }
        for (const t of [...cg, ...gg]) t.dispose();
      }
      for (const t of [c.x, c.dy, c.dy2, c.off, g.x, g.dy, g.dy2, g.off]) t.dispose();
    }
    // A product over no rows at all: beta 0 writes zeros into every expert's gradient.
    const K = 64, N = 128;
    const x = upload(gpu(), new Float32Array(0), [0, K], 'bf16'), dy = upload(gpu(), new Float32Array(0), [0, N], 'bf16');
    const off = offsetsOn(gpu(), [0, 0], 5, 0);
    for (const dtype of ['f32', 'bf16'] as const) {
      const gs = [poisoned([N, K], dtype), poisoned([N, K], dtype)];
      gpu().groupedLinearWeightGrad(gs, dy, x, off, 0);
      gs.forEach((t, e) => { assert.ok(readF32(gpu(), t).every((v) => Object.is(v, 0)), `${set}: no rows at all, ${dtype} expert ${e} holds zeros after beta 0`); t.dispose(); });
    }
    for (const t of [x, dy, off]) t.dispose();
  });

  test(`grouped GEMM (${set}), no rows at all: nothing written, gradients untouched`, { skip: skipSet }, () => {
    gpu().groupedGemmKernels = set;
    const K = 64, N = 128;
    const x = upload(gpu(), new Float32Array(0), [0, K], 'bf16'), dy = upload(gpu(), new Float32Array(0), [0, N], 'bf16');
    const w = upload(gpu(), values(N * K, 1), [N, K], 'bf16');
    const init = values(N * K, 1);
    const gw = upload(gpu(), init, [N, K], 'f32');
    const off = offsetsOn(gpu(), [0, 0], 5, 0);
    gpu().groupedLinear(emptyTensor(gpu(), [0, N], 'bf16'), x, [w, w], off);
    gpu().groupedLinearWeightGrad([gw, gw], dy, x, off);
    assert.deepEqual(readF32(gpu(), gw), init);
  });

}

/** Skewed counts summing to M over E experts: expert e gets ~ (e/(E−1))·2 × the mean, a few get 0. */
function skewedCounts(E: number, M: number): number[] {
  const raw = Array.from({ length: E }, (_, e) => (e % 16 === 5 ? 0 : 0.15 + 1.7 * (e / (E - 1))));
  const sum = raw.reduce((a, b) => a + b, 0);
  const counts = raw.map((r) => Math.floor((r / sum) * M));
  counts[E - 1]! += M - counts.reduce((a, b) => a + b, 0);
  return counts;
}

for (const [K, N] of [[2048, 1408], [1408, 2048]] as const) {
  test(`grouped GEMM, bench shapes E = 64, M = 49152, K = ${K}, N = ${N}, every kernel set: against per-expert cuBLASLt and sampled f64 dots`, { skip }, () => {
    const be = gpu();
    const E = 64, M = 49152, counts = skewedCounts(E, M);
    const starts = [0];
    for (const c of counts) starts.push(starts[starts.length - 1]! + c);
    const expertOf = (m: number) => { let e = 0; while (starts[e + 1]! <= m) e++; return e; };
    const xv = values(M * K, 1), dyv = values(M * N, 1);
    const wv = counts.map(() => values(N * K, 0.0625)), gv = counts.map(() => values(N * K, 1));
    const x = upload(be, xv, [M, K], 'bf16'), dy = upload(be, dyv, [M, N], 'bf16');
    const ws = wv.map((v) => upload(be, v, [N, K], 'bf16'));
    const off = offsetsOn(be, counts, 0, 0);
    const rows = (t: Tensor, e: number) => t.view([counts[e]!, t.shape[1]!], [t.shape[1]!, 1], t.offset + starts[e]! * t.shape[1]!);

    // The per-expert path, once.
    const yRef = poisoned([M, N], 'bf16'), dxRef = poisoned([M, K], 'bf16');
    const gsRef = gv.map((v) => upload(be, v, [N, K], 'f32')), gbRef = gv.map((v) => upload(be, v, [N, K], 'bf16'));
    // beta 0 (the product alone; an expert without rows: zeros).
    const gzRef = gv.map(() => upload(be, new Float32Array(N * K), [N, K], 'f32'));
    for (let e = 0; e < E; e++) {
      if (counts[e] === 0) continue;
      be.matmul(rows(yRef, e), rows(x, e), ws[e]!, { transB: true });
      be.matmul(rows(dxRef, e), rows(dy, e), ws[e]!, {});
      be.matmul(gsRef[e]!, rows(dy, e), rows(x, e), { transA: true, beta: 1 });
      be.matmul(gbRef[e]!, rows(dy, e), rows(x, e), { transA: true, beta: 1 });
      be.matmul(gzRef[e]!, rows(dy, e), rows(x, e), { transA: true, beta: 0 });
    }
    const yRefH = readF32(be, yRef), dxRefH = readF32(be, dxRef), gRefH = gsRef.map((t) => readF32(be, t)), gbRefH = gbRef.map((t) => readF32(be, t));
    const gzRefH = gzRef.map((t) => readF32(be, t));
    for (const t of [yRef, dxRef, ...gsRef, ...gbRef, ...gzRef]) t.dispose();

    for (const set of kernelSets()) {
      be.groupedGemmKernels = set;
      const y = poisoned([M, N], 'bf16'), dx = poisoned([M, K], 'bf16');
      const gs = gv.map((v) => upload(be, v, [N, K], 'f32'));
      be.groupedLinear(y, x, ws, off);
      be.groupedLinearBackwardData(dx, dy, ws, off);
      be.groupedLinearWeightGrad(gs, dy, x, off);
      const yh = readF32(be, y), dxh = readF32(be, dx), gh = gs.map((t) => readF32(be, t));
      for (const t of [y, dx, ...gs]) t.dispose();
      expectClose(yh, yRefH, BF16_TOL, `${set}: forward vs cuBLASLt`);
      expectClose(dxh, dxRefH, BF16_TOL, `${set}: dX vs cuBLASLt`);
      for (let e = 0; e < E; e++) {
        if (counts[e] === 0) assert.deepEqual(gh[e], gv[e], `${set}: dW of expert ${e} (no rows) must be untouched`);
        else expectClose(gh[e]!, gRefH[e]!, F32_TOL, `${set}: dW of expert ${e} vs cuBLASLt`);
      }
      { // beta 0 into poisoned f32 gradients (a step's first write)
        const gz = gv.map(() => poisoned([N, K], 'f32'));
        be.groupedLinearWeightGrad(gz, dy, x, off, 0);
        gz.forEach((t, e) => {
          const got = readF32(be, t);
          if (counts[e] === 0) assert.ok(got.every((v) => Object.is(v, 0)), `${set}: beta 0 dW of expert ${e} (no rows) holds zeros`);
          else expectClose(got, gzRefH[e]!, F32_TOL, `${set}: beta 0 dW of expert ${e} vs cuBLASLt`);
          t.dispose();
        });
      }
      if (set !== 'mma') { // bf16 gradients (the lean recipe's kernel): one rounding on each side
        const gb = gv.map((v) => upload(be, v, [N, K], 'bf16'));
        be.groupedLinearWeightGrad(gb, dy, x, off);
        gb.forEach((t, e) => { expectClose(readF32(be, t), gbRefH[e]!, BF16_TOL, `${set}: bf16 dW of expert ${e} vs cuBLASLt`); t.dispose(); });
      }

      // Sampled elements against f64 dot products of the exact bf16 inputs.
      const pick = (n: number) => Math.floor(uniform() * n);
      for (let s = 0; s < 256; s++) {
        const m = pick(M), e = expertOf(m);
        { // forward y[m][n] = Σ_k x[m][k]·W_e[n][k]
          const n = pick(N);
          let ref = 0, abs = 0;
          for (let k = 0; k < K; k++) { const t = xv[m * K + k]! * wv[e]![n * K + k]!; ref += t; abs += Math.abs(t); }
          const got = yh[m * N + n]!;
          assert.ok(Math.abs(got - ref) <= 2 ** -8 * Math.abs(ref) + 1e-5 * abs, `${set}: forward y[${m}][${n}] (expert ${e}) = ${got}, f64 ${ref} (seed ${SEED})`);
        }
        { // dX[m][k] = Σ_n dy[m][n]·W_e[n][k]
          const k = pick(K);
          let ref = 0, abs = 0;
          for (let n = 0; n < N; n++) { const t = dyv[m * N + n]! * wv[e]![n * K + k]!; ref += t; abs += Math.abs(t); }
          const got = dxh[m * K + k]!;
          assert.ok(Math.abs(got - ref) <= 2 ** -8 * Math.abs(ref) + 1e-5 * abs, `${set}: dX[${m}][${k}] (expert ${e}) = ${got}, f64 ${ref} (seed ${SEED})`);
        }
        { // dW_e[n][k] = init + Σ_{m ∈ e} dy[m][n]·x[m][k]
          const ee = pick(E), n = pick(N), k = pick(K);
          let ref = gv[ee]![n * K + k]!, abs = Math.abs(ref);
          for (let r = starts[ee]!; r < starts[ee + 1]!; r++) { const t = dyv[r * N + n]! * xv[r * K + k]!; ref += t; abs += Math.abs(t); }
          const got = gh[ee]![n * K + k]!;
          assert.ok(Math.abs(got - ref) <= 1e-5 * abs + 1e-30, `${set}: dW[${ee}][${n}][${k}] = ${got}, f64 ${ref} (seed ${SEED})`);
        }
      }
    }
    for (const t of [x, dy, off, ...ws]) t.dispose();
  });
}

// ---- the tma set's forward and data kernels (kernels/grouped_gemm_tma.cu) ----

/** Forward and dX of `counts` rows (offsets from a nonzero base) on the GPU's tma or tma_pair set and the CPU backend. */
function tmaAgainstCpu(set: 'tma' | 'tma_pair', counts: readonly number[], K: number, N: number, what: string): void {
  const M = counts.reduce((a, b) => a + b, 0);
  const xv = values(M * K, 1), dyv = values(M * N, 1), wv = counts.map(() => values(N * K, 0.125));
  const side = (b: Backend) => ({
    x: upload(b, xv, [M, K], 'bf16'), dy: upload(b, dyv, [M, N], 'bf16'),
    ws: wv.map((v) => upload(b, v, [N, K], 'bf16')), off: offsetsOn(b, counts, 77, 1),
  });
  const c = side(cpu), g = side(gpu());
  gpu().groupedGemmKernels = set;
  const yc = emptyTensor(cpu, [M, N], 'bf16'), yg = poisoned([M, N], 'bf16');
  cpu.groupedLinear(yc, c.x, c.ws, c.off); gpu().groupedLinear(yg, g.x, g.ws, g.off);
  expectClose(readF32(gpu(), yg), readF32(cpu, yc), BF16_TOL, `${what}: forward`);
  const dxc = emptyTensor(cpu, [M, K], 'bf16'), dxg = poisoned([M, K], 'bf16');
  cpu.groupedLinearBackwardData(dxc, c.dy, c.ws, c.off); gpu().groupedLinearBackwardData(dxg, g.dy, g.ws, g.off);
  expectClose(readF32(gpu(), dxg), readF32(cpu, dxc), BF16_TOL, `${what}: dX`);
  for (const t of [g.x, g.dy, g.off, yg, dxg, ...g.ws]) t.dispose();
}

// Output widths: 64 (one narrow tile: at most 128 valid columns, wgmma n128), 192 (one wide tile
// with 64 zero-filled columns), 1408 (five 256-column tiles and a narrow one of 128), 2048 (eight
// whole tiles); the same numbers as reductions: 1, 3, 22 and 32 k-steps of 64. tma_pair: the E = 7
// case pairs row tiles within one expert (the 129- and 300-row experts), across two (the weight
// tile not shared) and beside a phantom slot; M = 1 is one pair whose CTA 1 computes zeros and
// stores nothing.
for (const set of ['tma', 'tma_pair'] as const) {
  for (const [K, N] of [[64, 64], [64, 2048], [2048, 64], [192, 1408], [1408, 192], [2048, 1408], [1408, 2048]] as const) {
    test(`grouped GEMM (${set}), K = ${K}, N = ${N}: forward and dX against the CPU backend (E = 7 with 0-, 1- and 129-row experts; M = 1; M = 2 over 3 experts)`, { skip: skipHopper }, () => {
      tmaAgainstCpu(set, [0, 1, 129, 0, 7, 300, 64], K, N, `${set}, E = 7, K = ${K}, N = ${N}`);
      tmaAgainstCpu(set, [1], K, N, `${set}, M = 1, K = ${K}, N = ${N}`);
      tmaAgainstCpu(set, [0, 2, 0], K, N, `${set}, M = 2, K = ${K}, N = ${N}`);
    });
  }
}

/** y = x·W_eᵀ and dx = dy·W_e on kernel set `set` into poisoned outputs; their bf16 bits. */
function forwardAndData(be: CudaBackend, set: 'wgmma' | 'tma' | 'tma_pair', x: Tensor, dy: Tensor, ws: Tensor[], off: Tensor, M: number, N: number, K: number) {
  be.groupedGemmKernels = set;
  const y = poisoned([M, N], 'bf16'), dx = poisoned([M, K], 'bf16');
  be.groupedLinear(y, x, ws, off);
  be.groupedLinearBackwardData(dx, dy, ws, off);
  const out = { y: be.read(y) as Uint16Array, dx: be.read(dx) as Uint16Array };
  y.dispose(); dx.dispose();
  return out;
}

for (const set of ['tma', 'tma_pair'] as const) {
  test(`grouped GEMM (${set}): rows past the last expert keep their poison; the covered rows match the wgmma set`, { skip: skipHopper }, () => {
    // The last expert's row tile runs past its end into rows that are in the tensor (loaded by the
    // copy engine, computed) but belong to no expert: they must not be stored.
    const be = gpu();
    const counts = [5, 0, 131, 1], covered = 137, M = covered + 50, K = 192, N = 1408;
    const x = upload(be, values(M * K, 1), [M, K], 'bf16'), dy = upload(be, values(M * N, 1), [M, N], 'bf16');
    const ws = counts.map(() => upload(be, values(N * K, 0.125), [N, K], 'bf16'));
    const off = offsetsOn(be, counts, 0, 0);
    const ref = forwardAndData(be, 'wgmma', x, dy, ws, off, M, N, K), got = forwardAndData(be, set, x, dy, ws, off, M, N, K);
    for (const [name, width] of [['y', N], ['dx', K]] as const) {
      const g = got[name], r = ref[name];
      for (let i = covered * width; i < M * width; i++) {
        if (g[i] !== 0x7fc0) assert.fail(`${set} ${name}: row ${Math.floor(i / width)} belongs to no expert but was written (${g[i]!.toString(16)})`);
      }
      expectClose(bf16ArrayToF32(g.subarray(0, covered * width)), bf16ArrayToF32(r.subarray(0, covered * width)), BF16_TOL, `${set} ${name} vs wgmma`);
    }
    for (const t of [x, dy, off, ...ws]) t.dispose();
  });
}

/** Where two bf16 arrays first differ, as a message; '' when they are equal bit for bit. */
function firstDifference(got: Uint16Array, want: Uint16Array, width: number): string {
  for (let i = 0; i < want.length; i++) {
    if (got[i] !== want[i]) return `[${Math.floor(i / width)}, ${i % width}] is ${got[i]!.toString(16)}, expected ${want[i]!.toString(16)}`;
  }
  return '';
}

for (const [K, N] of [[2048, 1408], [1408, 2048]] as const) {
  test(`grouped GEMM (tma, tma_pair), bench shapes E = 64, M = 49152, K = ${K}, N = ${N}: forward and dX match the wgmma set, tma_pair's tma's bit for bit`, { skip: skipHopper }, () => {
    const be = gpu();
    const E = 64, M = 49152, counts = skewedCounts(E, M);
    // A 1-row and a 129-row expert among the skewed ones; the last expert absorbs the difference.
    counts[E - 1]! += counts[3]! - 1 + counts[9]! - 129;
    counts[3] = 1; counts[9] = 129;
    const x = upload(be, values(M * K, 1), [M, K], 'bf16'), dy = upload(be, values(M * N, 1), [M, N], 'bf16');
    const ws = counts.map(() => upload(be, values(N * K, 0.0625), [N, K], 'bf16'));
    const off = offsetsOn(be, counts, 0, 0);
    const run = (set: 'wgmma' | 'tma' | 'tma_pair') => forwardAndData(be, set, x, dy, ws, off, M, N, K);
    const ref = run('wgmma'), got = run('tma'), pair = run('tma_pair');
    expectClose(bf16ArrayToF32(got.y), bf16ArrayToF32(ref.y), BF16_TOL, 'tma forward vs wgmma');
    expectClose(bf16ArrayToF32(got.dx), bf16ArrayToF32(ref.dx), BF16_TOL, 'tma dX vs wgmma');
    for (const [name, width] of [['y', N], ['dx', K]] as const) {
      const diff = firstDifference(pair[name], got[name], width);
      if (diff) assert.fail(`tma_pair ${name} differs from tma: ${diff} (seed ${SEED})`);
    }
    for (const t of [x, dy, off, ...ws]) t.dispose();
  });
}

// ---- the tma set's weight product (grouped_tma_dw_bf16 / _gbf16) ----

/**
 * The weight product said it gave the squares, and squares[0] is the Σ of the squares of the
 * gradients as stored, summed on the host in f64: within 1e-5 (the order of ~10⁶ f32 adds).
 */
function expectSquares(gave: boolean, got: number, grads: readonly Tensor[], what: string): void {
  assert.ok(gave, `${what}: the squares were given`);
  let want = 0;
  for (const t of grads) for (const v of readF32(gpu(), t)) want += v * v;
  assert.ok(Math.abs(got - want) <= 1e-5 * want + 1e-30, `${what}: squares ${got}, host Σ g² ${want}`);
}

/** How a weight-product test runs on the GPU: the tma set, tma_pair's one-product kernel, or tma_pair's two products in one launch (twin). */
type WeightForm = 'tma' | 'tma_pair' | 'twin';
const WEIGHT_FORMS: readonly WeightForm[] = ['tma', 'tma_pair', 'twin'];

/**
 * dW over `counts` rows (offsets from a nonzero base; `tail` rows after the last expert's, in no
 * expert) on the GPU in `form` and on the CPU: beta 0 into NaN-poisoned gradients, then beta 1
 * with other dYs on top, f32 and bf16 gradients. twin runs two products over the same rows in one
 * call (Backend.groupedLinearWeightGradPair: the first on dY, the second on dY2, then swapped for
 * beta 1), each against its own CPU product; the squares are the Σ over both. Experts with no
 * rows must hold exactly +0.
 */
function tmaWeightAgainstCpu(form: WeightForm, counts: readonly number[], K: number, N: number, tail: number, what: string): void {
  // The GPU sees `tail` rows in no expert after the last; the CPU reference, which requires the
  // offsets to cover every row, gets only the covered ones (the rows a correct kernel reads).
  const covered = counts.reduce((a, b) => a + b, 0), M = covered + tail;
  const xv = values(M * K, 1), dyv = values(M * N, 1), dyv2 = values(M * N, 1);
  const side = (b: Backend, rows: number) => ({
    x: upload(b, xv.subarray(0, rows * K), [rows, K], 'bf16'), dy: upload(b, dyv.subarray(0, rows * N), [rows, N], 'bf16'),
    dy2: upload(b, dyv2.subarray(0, rows * N), [rows, N], 'bf16'), off: offsetsOn(b, counts, 77, 1),
  });
  const c = side(cpu, covered), g = side(gpu(), M);
  gpu().groupedGemmKernels = form === 'tma' ? 'tma' : 'tma_pair';
  const products = form === 'twin' ? 2 : 1;
  for (const dtype of ['f32', 'bf16'] as const) {
    const tol = dtype === 'f32' ? F32_TOL : BF16_TOL;
    const cg = [0, 1].slice(0, products).map(() => counts.map(() => { const t = emptyTensor(cpu, [N, K], dtype); cpu.fill(t, Number.NaN); return t; }));
    const gg = [0, 1].slice(0, products).map(() => counts.map(() => poisoned([N, K], dtype)));
    for (const [beta, dyC, dyG, dyC2, dyG2] of [[0, c.dy, g.dy, c.dy2, g.dy2], [1, c.dy2, g.dy2, c.dy, g.dy]] as const) {
      const squares = poisoned([1], 'f32');
      cpu.groupedLinearWeightGrad(cg[0]!, dyC, c.x, c.off, beta);
      if (products === 2) cpu.groupedLinearWeightGrad(cg[1]!, dyC2, c.x, c.off, beta);
      const gave = products === 2
        ? gpu().groupedLinearWeightGradPair(gg[0]!, gg[1]!, dyG, dyG2, g.x, g.off, beta, squares)
        : gpu().groupedLinearWeightGrad(gg[0]!, dyG, g.x, g.off, beta, squares);
      // beta 0 also gives the Σ of the squares of what it wrote (as stored); beta 1 declines.
      const sq = readF32(gpu(), squares)[0]!;
      squares.dispose();
      if (beta === 0) expectSquares(gave, sq, gg.flat(), `${form} ${what}, ${dtype} gradients, beta 0`);
      else assert.ok(!gave && Number.isNaN(sq), `${form} ${what}, ${dtype} gradients, beta 1: squares declined and left alone (${gave}, ${sq})`);
      for (let p = 0; p < products; p++) for (let e = 0; e < counts.length; e++) {
        const got = readF32(gpu(), gg[p]![e]!);
        const name = `${form} ${what}, ${dtype} gradients, beta ${beta === 0 ? '0' : '0 then 1'}: product ${p + 1}, expert ${e} (${counts[e]} rows)`;
        if (counts[e] === 0) assert.ok(got.every((v) => Object.is(v, 0)), `${name} holds zeros`);
        else expectClose(got, readF32(cpu, cg[p]![e]!), tol, name);
      }
    }
    for (const t of gg.flat()) t.dispose();
  }
  for (const t of [g.x, g.dy, g.dy2, g.off]) t.dispose();
}

// dW [N, K]: N = 64 (one row tile, its second dY block outside the tensor; under tma_pair a
// phantom beside it), 192 (a second row tile of 64 rows), 1408 (11 row tiles: a pair with a
// phantom at the end); K = 64 and 320 (a narrow column tile of 64), 448 (a wide one of 192), 1408
// (five wide and a narrow one of 128).
for (const form of WEIGHT_FORMS) for (const [K, N] of [[64, 64], [320, 192], [448, 64], [1408, 192], [192, 1408]] as const) {
  test(`grouped GEMM (${form}), weight product K = ${K}, N = ${N}: beta 0 and 1, f32 and bf16 gradients against the CPU backend`, { skip: skipHopper }, () => {
    tmaWeightAgainstCpu(form, [0, 1, 65, 130, 0, 63, 64, 129, 7], K, N, 0, `E = 9, K = ${K}, N = ${N}`);
    tmaWeightAgainstCpu(form, [1], K, N, 0, `M = 1, K = ${K}, N = ${N}`);
    tmaWeightAgainstCpu(form, [3, 0, 65], K, N, 50, `rows in no expert after the last, K = ${K}, N = ${N}`);
  });
}

for (const [K, N] of [[2048, 1408], [1408, 2048]] as const) {
  test(`grouped GEMM (tma, tma_pair), bench shapes E = 64, M = 49152, K = ${K}, N = ${N}: the weight product matches the wgmma set (f32 and bf16, beta 0 and 1), tma_pair's (one product and two) tma's bit for bit, and the squares the host's`, { skip: skipHopper }, () => {
    const be = gpu();
    const E = 64, M = 49152, counts = skewedCounts(E, M);
    counts[E - 1]! += counts[3]! - 1 + counts[9]! - 129;
    counts[3] = 1; counts[9] = 129;
    const x = upload(be, values(M * K, 1), [M, K], 'bf16'), dy = upload(be, values(M * N, 1), [M, N], 'bf16');
    const dy2 = upload(be, values(M * N, 1), [M, N], 'bf16');
    const off = offsetsOn(be, counts, 0, 0);
    const init = counts.map(() => values(N * K, 1));
    // The gradients of dy (and, twin, of dy2 too: its list second) after the product.
    const run = (form: 'wgmma' | WeightForm, dtype: 'f32' | 'bf16', beta: 0 | 1, dyFirst = dy) => {
      be.groupedGemmKernels = form === 'twin' ? 'tma_pair' : form;
      const grads = () => init.map((v) => (beta === 0 ? poisoned([N, K], dtype) : upload(be, v, [N, K], dtype)));
      const gs = grads(), gs2 = form === 'twin' ? grads() : [];
      const squares = form !== 'wgmma' && beta === 0 ? poisoned([1], 'f32') : undefined;
      const gave = form === 'twin' ? be.groupedLinearWeightGradPair(gs, gs2, dy, dy2, x, off, beta, squares)
        : be.groupedLinearWeightGrad(gs, dyFirst, x, off, beta, squares);
      if (squares) { expectSquares(gave, readF32(be, squares)[0]!, [...gs, ...gs2], `${form} ${dtype} dW beta 0`); squares.dispose(); }
      const out = [...gs, ...gs2].map((t) => readF32(be, t));
      for (const t of [...gs, ...gs2]) t.dispose();
      return out;
    };
    for (const [dtype, beta] of [['f32', 0], ['f32', 1], ['bf16', 1], ['bf16', 0]] as const) {
      const ref = run('wgmma', dtype, beta), got = run('tma', dtype, beta);
      for (let e = 0; e < E; e++) {
        const name = `tma ${dtype} dW (beta ${beta}) of expert ${e} (${counts[e]} rows) vs wgmma`;
        if (counts[e] === 0) assert.deepEqual(got[e], ref[e], `${name}: no rows`);
        else expectClose(got[e]!, ref[e]!, dtype === 'f32' ? F32_TOL : BF16_TOL, name);
      }
      // tma_pair: the same wgmmas over the same k-steps per tile, only X's boxes arrive by multicast.
      const pair = run('tma_pair', dtype, beta);
      for (let e = 0; e < E; e++) assert.deepEqual(pair[e], got[e], `tma_pair ${dtype} dW (beta ${beta}) of expert ${e} equals tma's bit for bit`);
      if (N === 1408) {
        // twin (both at once, the experts' gate and up shape): each product equals tma's run of it alone.
        const twin = run('twin', dtype, beta), second = run('tma', dtype, beta, dy2);
        for (let e = 0; e < E; e++) {
          assert.deepEqual(twin[e], got[e], `twin ${dtype} dW (beta ${beta}), first product, expert ${e} equals tma's bit for bit`);
          assert.deepEqual(twin[E + e], second[e], `twin ${dtype} dW (beta ${beta}), second product, expert ${e} equals tma's bit for bit`);
        }
      }
    }
    for (const t of [x, dy, dy2, off]) t.dispose();
  });
}

// ---- the tma set's SwiGLU forward (grouped_tma_fwd_swiglu_bf16; tma_pair: grouped_tma_pair_fwd_swiglu_bf16) ----

/**
 * g, u, h from the tma SwiGLU launch (called on the launcher, which must say it ran) against the
 * tma forward product twice and the SwiGLU kernel, bit for bit over all M rows (rows past the
 * experts keep their poison in both), and against the CPU backend within bf16 tolerance.
 */
function swigluAgainstUnfused(set: 'tma' | 'tma_pair', counts: readonly number[], extra: number, K: number, N: number, what: string,
                              againstCpu = true): void {
  const covered = counts.reduce((a, b) => a + b, 0), M = covered + extra;
  const xv = values(M * K, 1), gv = counts.map(() => values(N * K, 0.125)), uv = counts.map(() => values(N * K, 0.125));
  const side = (b: Backend) => ({
    x: upload(b, xv, [M, K], 'bf16'), gates: gv.map((v) => upload(b, v, [N, K], 'bf16')), ups: uv.map((v) => upload(b, v, [N, K], 'bf16')),
    off: offsetsOn(b, counts, 77, 1),
  });
  const be = gpu(), d = side(be);
  be.groupedGemmKernels = set;
  const launcher = (be as unknown as { groupedGemm: GroupedGemmLauncher }).groupedGemm;
  const fused = { g: poisoned([M, N], 'bf16'), u: poisoned([M, N], 'bf16'), h: poisoned([M, N], 'bf16') };
  assert.ok(launcher.groupedSwiGLU(fused.h, fused.g, fused.u, d.x, d.gates, d.ups, d.off), `${what}: the ${set} set declined the SwiGLU launch`);
  const plain = { g: poisoned([M, N], 'bf16'), u: poisoned([M, N], 'bf16'), h: poisoned([M, N], 'bf16') };
  be.groupedLinear(plain.g, d.x, d.gates, d.off);
  be.groupedLinear(plain.u, d.x, d.ups, d.off);
  const gc = plain.g.view([covered, N], [N, 1], 0), uc = plain.u.view([covered, N], [N, 1], 0), hc = plain.h.view([covered, N], [N, 1], 0);
  be.swiglu(hc, gc, uc);
  for (const k of ['g', 'u', 'h'] as const) {
    const got = be.read(fused[k]) as Uint16Array, want = be.read(plain[k]) as Uint16Array;
    for (let i = 0; i < got.length; i++) {
      if (got[i] !== want[i]) assert.fail(`${what}: ${k}[${Math.floor(i / N)}, ${i % N}] is ${got[i]!.toString(16)}, unfused ${want[i]!.toString(16)} (seed ${SEED})`);
    }
  }
  if (againstCpu) {
    const c = side(cpu);
    const ref = { g: emptyTensor(cpu, [covered, N], 'bf16'), u: emptyTensor(cpu, [covered, N], 'bf16'), h: emptyTensor(cpu, [covered, N], 'bf16') };
    const xc = c.x.view([covered, K], [K, 1], 0);
    cpu.groupedSwiGLU(ref.h, ref.g, ref.u, xc, c.gates, c.ups, c.off);
    for (const k of ['g', 'u', 'h'] as const) {
      expectClose(readF32(be, fused[k]).subarray(0, covered * N), readF32(cpu, ref[k]), BF16_TOL, `${what}: ${k} against the CPU`);
    }
  }
  for (const t of [d.x, d.off, ...d.gates, ...d.ups, ...Object.values(fused), ...Object.values(plain), gc, uc, hc]) t.dispose();
}

for (const set of ['tma', 'tma_pair'] as const) {
  for (const [K, N] of [[64, 64], [192, 192], [2048, 1408], [1408, 2048], [64, 1408]] as const) {
    test(`grouped GEMM (${set}) SwiGLU forward, K = ${K}, N = ${N}: the unfused products and SwiGLU bit for bit, the CPU within bf16 (E = 7 with 0-, 1- and 129-row experts and rows past them; M = 1)`, { skip: skipHopper }, () => {
      swigluAgainstUnfused(set, [0, 1, 129, 0, 7, 300, 64], 45, K, N, `${set}, E = 7, K = ${K}, N = ${N}`);
      swigluAgainstUnfused(set, [1], 0, K, N, `${set}, M = 1, K = ${K}, N = ${N}`);
    });
  }

  test(`grouped GEMM (${set}) SwiGLU forward, bench shape E = 64, M = 49152, K = 2048, N = 1408: the unfused products and SwiGLU bit for bit (no CPU reference at this size)`, { skip: skipHopper }, () => {
    swigluAgainstUnfused(set, skewedCounts(64, 49152), 0, 2048, 1408, `${set}, bench shape`, false);
  });
}

// ---- the tma set's gate-and-up data product (grouped_tma_dx_gate_up_bf16; tma_pair: grouped_tma_pair_dx_gate_up_bf16) ----

/** The launcher's gate-and-up data product on `set` into a poisoned dx; it must say it ran. */
function gateUpData(set: 'tma' | 'tma_pair', dg: Tensor, du: Tensor, gates: Tensor[], ups: Tensor[], off: Tensor, M: number, K: number, what: string): Tensor {
  const be = gpu();
  be.groupedGemmKernels = set;
  const launcher = (be as unknown as { groupedGemm: GroupedGemmLauncher }).groupedGemm;
  const dx = poisoned([M, K], 'bf16');
  assert.ok(launcher.groupedLinearBackwardDataPair(dx, dg, du, gates, ups, off), `${what}: the ${set} set declined the gate-and-up data product`);
  return dx;
}

/**
 * dX = dG·Wg + dU·Wu (one reduction over 2N, rounded once) against the CPU's pair data product
 * (two rounded products and their rounded sum: backend/grouped_data_pair.ts) within bf16
 * tolerance, over `counts` rows and `extra` rows past the last expert, which must keep their poison.
 */
function gateUpAgainstCpu(set: 'tma' | 'tma_pair', counts: readonly number[], extra: number, K: number, N: number, what: string): void {
  const covered = counts.reduce((a, b) => a + b, 0), M = covered + extra;
  const gv = values(M * N, 1), uv = values(M * N, 1), wg = counts.map(() => values(N * K, 0.125)), wu = counts.map(() => values(N * K, 0.125));
  const side = (b: Backend, rows: number) => ({
    dg: upload(b, gv.subarray(0, rows * N), [rows, N], 'bf16'), du: upload(b, uv.subarray(0, rows * N), [rows, N], 'bf16'),
    gates: wg.map((v) => upload(b, v, [N, K], 'bf16')), ups: wu.map((v) => upload(b, v, [N, K], 'bf16')), off: offsetsOn(b, counts, 77, 1),
  });
  const d = side(gpu(), M);
  const dx = gateUpData(set, d.dg, d.du, d.gates, d.ups, d.off, M, K, what);
  const got = gpu().read(dx) as Uint16Array;
  for (let i = covered * K; i < M * K; i++) {
    if (got[i] !== 0x7fc0) assert.fail(`${what}: row ${Math.floor(i / K)} belongs to no expert but was written (${got[i]!.toString(16)})`);
  }
  const c = side(cpu, covered), ref = emptyTensor(cpu, [covered, K], 'bf16');
  cpu.groupedLinearBackwardDataPair(ref, c.dg, c.du, c.gates, c.ups, c.off);
  expectClose(bf16ArrayToF32(got.subarray(0, covered * K)), readF32(cpu, ref), BF16_TOL, `${what}: dX against the CPU`);
  for (const t of [d.dg, d.du, d.off, dx, ...d.gates, ...d.ups]) t.dispose();
}

// Reductions of 2N: 2 k-steps (N = 64: one gate step, one up step), 6, 44 and 64; output widths
// K as the data product's (a narrow tile of 64, a wide one with 64 zero columns, 5 wide + 1
// narrow, 8 wide). tma_pair: pairs within one expert, across two, and beside a phantom slot.
for (const set of ['tma', 'tma_pair'] as const) {
  for (const [K, N] of [[64, 64], [192, 192], [2048, 1408], [1408, 2048], [64, 1408], [1408, 64]] as const) {
    test(`grouped GEMM (${set}) gate-and-up data product, K = ${K}, N = ${N}: against the CPU within bf16, rows past the experts keep their poison (E = 7 with 0-, 1- and 129-row experts; M = 1; M = 2 over 3 experts)`, { skip: skipHopper }, () => {
      gateUpAgainstCpu(set, [0, 1, 129, 0, 7, 300, 64], 45, K, N, `${set}, E = 7, K = ${K}, N = ${N}`);
      gateUpAgainstCpu(set, [1], 0, K, N, `${set}, M = 1, K = ${K}, N = ${N}`);
      gateUpAgainstCpu(set, [0, 2, 0], 3, K, N, `${set}, M = 2, K = ${K}, N = ${N}`);
    });
  }
}

test('grouped GEMM gate-and-up data product, bench shape E = 64, M = 49152 (+ 77 rows in no expert), K = 2048, N = 1408: tma against the wgmma set\'s two products and their sum and sampled f64 dots, tma_pair tma\'s bit for bit, poison kept; other sets compose it bit for bit', { skip: skipHopper }, () => {
  const be = gpu();
  const E = 64, covered = 49152, M = covered + 77, K = 2048, N = 1408, counts = skewedCounts(E, covered);
  counts[E - 1]! += counts[3]! - 1 + counts[9]! - 129;
  counts[3] = 1; counts[9] = 129;
  const starts = [0];
  for (const c of counts) starts.push(starts[starts.length - 1]! + c);
  const expertOf = (m: number) => { let e = 0; while (starts[e + 1]! <= m) e++; return e; };
  const gv = values(M * N, 1), uv = values(M * N, 1), wg = counts.map(() => values(N * K, 0.0625)), wu = counts.map(() => values(N * K, 0.0625));
  const dg = upload(be, gv, [M, N], 'bf16'), du = upload(be, uv, [M, N], 'bf16');
  const gates = wg.map((v) => upload(be, v, [N, K], 'bf16')), ups = wu.map((v) => upload(be, v, [N, K], 'bf16'));
  const off = offsetsOn(be, counts, 0, 0);
  const dgc = dg.view([covered, N], [N, 1], dg.offset), duc = du.view([covered, N], [N, 1], du.offset);

  // The wgmma set composes it (the launcher declines): the bits of its two products and the add,
  // in autograd's order (the up's product, then the gate's added into it).
  be.groupedGemmKernels = 'wgmma';
  const launcher = (be as unknown as { groupedGemm: GroupedGemmLauncher }).groupedGemm;
  const composed = poisoned([covered, K], 'bf16');
  assert.ok(!launcher.groupedLinearBackwardDataPair(composed, dgc, duc, gates, ups, off), 'the wgmma set must decline');
  be.groupedLinearBackwardDataPair(composed, dgc, duc, gates, ups, off);
  const byHand = poisoned([covered, K], 'bf16'), fromGate = poisoned([covered, K], 'bf16');
  be.groupedLinearBackwardData(byHand, duc, ups, off);
  be.groupedLinearBackwardData(fromGate, dgc, gates, off);
  be.binary('add', byHand, byHand, fromGate);
  const ref = be.read(composed) as Uint16Array;
  const diff = firstDifference(ref, be.read(byHand) as Uint16Array, K);
  if (diff) assert.fail(`wgmma: the composed pair differs from the two products and the add: ${diff}`);

  const tmaDx = gateUpData('tma', dg, du, gates, ups, off, M, K, 'tma, bench shape');
  const got = be.read(tmaDx) as Uint16Array;
  for (let i = covered * K; i < M * K; i++) if (got[i] !== 0x7fc0) assert.fail(`tma: row ${Math.floor(i / K)} belongs to no expert but was written`);
  const gotF = bf16ArrayToF32(got);
  expectClose(gotF.subarray(0, covered * K), bf16ArrayToF32(ref), BF16_TOL, 'tma gate-and-up dX vs wgmma products and sum');
  // One rounding of the whole reduction: per element within half an ulp of the exact sum, plus the f32 accumulation's order.
  const pick = (n: number) => Math.floor(uniform() * n);
  for (let s = 0; s < 256; s++) {
    const m = pick(covered), k = pick(K), e = expertOf(m);
    let exact = 0, abs = 0;
    for (let n = 0; n < N; n++) {
      const a = gv[m * N + n]! * wg[e]![n * K + k]!, b = uv[m * N + n]! * wu[e]![n * K + k]!;
      exact += a + b; abs += Math.abs(a) + Math.abs(b);
    }
    const v = gotF[m * K + k]!;
    assert.ok(Math.abs(v - exact) <= 2 ** -8 * Math.abs(exact) + 1e-5 * abs, `tma: dX[${m}][${k}] (expert ${e}) = ${v}, f64 ${exact} (seed ${SEED})`);
  }

  const pairDx = gateUpData('tma_pair', dg, du, gates, ups, off, M, K, 'tma_pair, bench shape');
  const pd = firstDifference(be.read(pairDx) as Uint16Array, got, K);
  if (pd) assert.fail(`tma_pair gate-and-up dX differs from tma: ${pd} (seed ${SEED})`);
  for (const t of [dg, du, dgc, duc, off, composed, byHand, fromGate, tmaDx, pairDx, ...gates, ...ups]) t.dispose();
});
