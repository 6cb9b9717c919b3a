// Grouped expert GEMM benchmark: the three products of one routed-expert projection for all 64
// experts of a DeepSeek-V2-Lite MoE layer (8192 tokens × top-6 = 49152 routed rows, ~768 per
// expert, skewed as routing skews them), timed as one grouped launch each, for each grouped
// kernel set (mma: kernels/grouped_gemm.cu; wgmma: kernels/grouped_gemm_wgmma.cu, sm_90a; tma:
// kernels/grouped_gemm_tma.cu, its own kernels for all three products, the weight product's
// persistent one included, sm_90a; tma_pair: tma with every product in 2-CTA clusters), against
// one cuBLASLt product per expert (the per-expert path), median of CUDA-event timings. A fourth row
// per shape times the weight product into bf16 gradients (the lean recipe) and a fifth the weight
// product with beta 0 (a step's first write into gradients marked logically zero,
// autograd/lazy_grad_zero.ts: written, not read); neither is in the six-product sum. On sm_90a
// it also times the SwiGLU forward (gate and up products and silu(g)·u in one launch, K = 2048 →
// N = 1408) on tma and tma_pair; and the gate-and-up data product (x's gradient through the gate
// and the up, dX = dG·Wg + dU·Wu, N = 1408 → K = 2048: one launch over the 2N-long reduction,
// Backend.groupedLinearBackwardDataPair) on tma and tma_pair against what autograd ran before it:
// the two data products and the add of their outputs (each part timed too); the gate-and-up
// weight product (both weights' gradients over the same x, Backend.groupedLinearWeightGradPair:
// one launch under tma_pair, two under tma) into f32 and bf16 gradients, beta 0; and it prints how
// many 2-CTA clusters each tma_pair kernel launched beside how many the GPU runs at once and its
// SM count (a grid short of SMs / 2 clusters would leave SMs idle).
//
//   moetrain bench gemm --grouped        (or: node dist/bench/gemm_grouped.js)
//
// Floor beside each row: FLOPs / 790 TFLOP/s (the measured bf16 ceiling of an H100 SXM). Each
// product is 2·M·N·K = 283.5 GFLOP ≈ 0.359 ms at the floor.
import { pathToFileURL } from 'node:url';
import { CudaBackend } from '../src/backend/cuda/cuda_backend.js';
import { defaultCudaContext } from '../src/backend/cuda/runtime/context.js';
import { cudaAvailable } from '../src/backend/cuda/ffi/library.js';
import { f32ArrayToBf16 } from '../src/tensor/dtype.js';
import { emptyTensor, type Tensor } from '../src/tensor/tensor.js';

const CEILING_FLOPS = 790e12;
const E = 64, M = 8192 * 6;
const REPS = 20;

/** Routed rows per expert: ~M/E each, linearly skewed from 0.4× to 1.6× the mean, summing to M. */
export function benchCounts(): number[] {
  const raw = Array.from({ length: E }, (_, e) => 0.4 + 1.2 * (e / (E - 1)));
  const sum = raw.reduce((a, b) => a + b, 0);
  const counts = raw.map((r) => Math.floor((r / sum) * M));
  counts[E - 1]! += M - counts.reduce((a, b) => a + b, 0);
  return counts;
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s.length % 2 ? s[s.length >> 1]! : (s[(s.length >> 1) - 1]! + s[s.length >> 1]!) / 2;
}

export interface GroupedGemmRow {
  product: string; K: number; N: number; floorMs: number;
  /** Milliseconds per kernel set (absent: the set does not run on this GPU). */
  grouped: { mma: number; wgmma?: number; tma?: number; tma_pair?: number };
  perExpertMs: number;
}

export function runGroupedGemmBench(opts: { log?: (line: string) => void } = {}): GroupedGemmRow[] {
  const log = opts.log ?? ((l: string) => console.log(l));
  if (!cudaAvailable()) throw new Error('bench gemm --grouped needs a CUDA GPU: libcuda did not load or no device is visible');
  const be = new CudaBackend(defaultCudaContext());
  const ctx = be.ctx;
  const counts = benchCounts();
  const hopper = ctx.arch === 'sm_90a';
  const starts = [0];
  for (const c of counts) starts.push(starts[starts.length - 1]! + c);
  log(`grouped GEMM bench on ${ctx.description}: E ${E}, M ${M} rows (per expert ${Math.min(...counts)}..${Math.max(...counts)}), bf16, f32 accumulation; median of ${REPS}`);
  // uniform(−scale, scale) noise: one random chunk of a prime length, tiled (quick at 10^8 elements).
  const chunk = new Float32Array(1_048_583);
  let s = 0x2545f491;
  for (let i = 0; i < chunk.length; i++) { s ^= s << 13; s >>>= 0; s ^= s >>> 17; s ^= s << 5; s >>>= 0; chunk[i] = (s / 2 ** 32) * 2 - 1; }
  let at = 0;
  const noise = (n: number, scale: number): Uint16Array => {
    const f = new Float32Array(n);
    for (let i = 0; i < n; i++) { f[i] = scale * chunk[at]!; if (++at === chunk.length) at = 0; }
    return f32ArrayToBf16(f);
  };
  const offsets = emptyTensor(be, [E + 1], 'i32');
  be.write(offsets, Int32Array.from(starts));
  const rowsOf = (t: Tensor, e: number) => t.view([counts[e]!, t.shape[1]!], [t.shape[1]!, 1], t.offset + starts[e]! * t.shape[1]!);
  const rows: GroupedGemmRow[] = [];
  let swigluLine = '', gateUpLine = '';
  const LEAN_WEIGHT = 'weight bf16 dW += dYᵀ·X', FIRST_WEIGHT = 'weight dW = dYᵀ·X (beta 0)';
  for (const [K, N] of [[2048, 1408], [1408, 2048]] as const) {
    const x = emptyTensor(be, [M, K], 'bf16'), dy = emptyTensor(be, [M, N], 'bf16');
    const y = emptyTensor(be, [M, N], 'bf16'), dx = emptyTensor(be, [M, K], 'bf16');
    be.write(x, noise(M * K, 1)); be.write(dy, noise(M * N, 1));
    const ws = counts.map(() => { const w = emptyTensor(be, [N, K], 'bf16'); be.write(w, noise(N * K, 0.05)); return w; });
    const gs = counts.map(() => { const g = emptyTensor(be, [N, K], 'f32'); be.fill(g, 0); return g; });
    // The lean recipe's bf16 gradients (the mma set runs them per expert).
    const gb = counts.map(() => { const g = emptyTensor(be, [N, K], 'bf16'); be.fill(g, 0); return g; });
    const xr = counts.map((_, e) => rowsOf(x, e)), dyr = counts.map((_, e) => rowsOf(dy, e));
    const yr = counts.map((_, e) => rowsOf(y, e)), dxr = counts.map((_, e) => rowsOf(dx, e));
    const products: [string, () => void, () => void][] = [
      ['forward  Y = X·Wᵀ', () => be.groupedLinear(y, x, ws, offsets),
        () => counts.forEach((c, e) => c > 0 && be.matmul(yr[e]!, xr[e]!, ws[e]!, { transB: true }))],
      ['data    dX = dY·W', () => be.groupedLinearBackwardData(dx, dy, ws, offsets),
        () => counts.forEach((c, e) => c > 0 && be.matmul(dxr[e]!, dyr[e]!, ws[e]!, {}))],
      ['weight dW += dYᵀ·X', () => be.groupedLinearWeightGrad(gs, dy, x, offsets),
        () => counts.forEach((c, e) => c > 0 && be.matmul(gs[e]!, dyr[e]!, xr[e]!, { transA: true, beta: 1 }))],
      [LEAN_WEIGHT, () => be.groupedLinearWeightGrad(gb, dy, x, offsets),
        () => counts.forEach((c, e) => c > 0 && be.matmul(gb[e]!, dyr[e]!, xr[e]!, { transA: true, beta: 1 }))],
      [FIRST_WEIGHT, () => be.groupedLinearWeightGrad(gs, dy, x, offsets, 0),
        () => counts.forEach((c, e) => c > 0 && be.matmul(gs[e]!, dyr[e]!, xr[e]!, { transA: true, beta: 0 }))],
    ];
    for (const [product, grouped, perExpert] of products) {
      const time = (fn: () => void) => { for (let i = 0; i < 3; i++) fn(); return median(Array.from({ length: REPS }, () => ctx.timeMs(fn))); };
      be.groupedGemmKernels = 'mma';
      const times: GroupedGemmRow['grouped'] = { mma: time(grouped) };
      if (hopper) {
        be.groupedGemmKernels = 'wgmma'; times.wgmma = time(grouped);
        be.groupedGemmKernels = 'tma'; times.tma = time(grouped);
        be.groupedGemmKernels = 'tma_pair'; times.tma_pair = time(grouped);
      }
      const perExpertMs = time(perExpert);
      rows.push({ product, K, N, floorMs: (2 * M * N * K) / CEILING_FLOPS * 1e3, grouped: times, perExpertMs });
    }
    if (hopper && K === 2048) {
      // The SwiGLU forward: ws as the gates, a second set of weights as the ups; y, and two more
      // [M, N] outputs, as G, U and H. 2 products' FLOPs.
      const ups = counts.map(() => { const w = emptyTensor(be, [N, K], 'bf16'); be.write(w, noise(N * K, 0.05)); return w; });
      const u = emptyTensor(be, [M, N], 'bf16'), h = emptyTensor(be, [M, N], 'bf16');
      const time = (fn: () => void) => { for (let i = 0; i < 3; i++) fn(); return median(Array.from({ length: REPS }, () => ctx.timeMs(fn))); };
      const tf = (ms: number) => ((4 * M * N * K) / (ms * 1e-3) / 1e12).toFixed(1);
      const floor = ((4 * M * N * K) / CEILING_FLOPS * 1e3).toFixed(3);
      const cells = (['tma', 'tma_pair'] as const).map((set) => {
        be.groupedGemmKernels = set;
        const ms = time(() => be.groupedSwiGLU(h, y, u, x, ws, ups, offsets));
        return `${set} ${ms.toFixed(3)} ms (${tf(ms)} TFLOP/s)`;
      });
      swigluLine = `SwiGLU forward (gate + up + silu(g)·u, K ${K} → N ${N}, 2 products, floor ${floor} ms): ${cells.join(', ')}`;
      // The gate-and-up data product: dy as dG, u as dU, ws and ups as the gates and ups. Against
      // the two data products (the up's into dx, the gate's into x as scratch) and the add.
      be.write(u, noise(M * N, 1));
      be.groupedGemmGateUpData = true;  // the default (GroupedGemmLauncher.gateUpData); said here as the comparison depends on it
      const gateUp = (['tma', 'tma_pair'] as const).map((set) => {
        be.groupedGemmKernels = set;
        const one = time(() => be.groupedLinearBackwardDataPair(dx, dy, u, ws, ups, offsets));
        const products = time(() => { be.groupedLinearBackwardData(dx, u, ups, offsets); be.groupedLinearBackwardData(x, dy, ws, offsets); });
        const add = time(() => be.binary('add', dx, dx, x));
        const two = time(() => { be.groupedLinearBackwardData(dx, u, ups, offsets); be.groupedLinearBackwardData(x, dy, ws, offsets); be.binary('add', dx, dx, x); });
        return `${set} ${one.toFixed(3)} ms (${tf(one)} TFLOP/s) vs ${two.toFixed(3)} ms (products ${products.toFixed(3)}, add ${add.toFixed(3)}): ${(one / two).toFixed(2)}×`;
      });
      gateUpLine = `gate-and-up data (dX = dG·Wg + dU·Wu, N ${N} → K ${K}, 2 products, floor ${floor} ms), one launch vs two products + add: ${gateUp.join('; ')}`;
      // The gate-and-up weight product: dy as dG, u as dU, into gs and a second f32 set (beta 0), then gb and a second bf16 set.
      const gs2 = counts.map(() => emptyTensor(be, [N, K], 'f32')), gb2 = counts.map(() => emptyTensor(be, [N, K], 'bf16'));
      const weightPair = (['f32', 'bf16'] as const).map((dtype) => {
        const [g1, g2] = dtype === 'f32' ? [gs, gs2] : [gb, gb2];
        const cells = (['tma', 'tma_pair'] as const).map((set) => {
          be.groupedGemmKernels = set;
          const ms = time(() => be.groupedLinearWeightGradPair(g1, g2, dy, u, x, offsets, 0));
          return `${set} ${ms.toFixed(3)} ms (${tf(ms)} TFLOP/s)`;
        });
        return `${dtype} ${cells.join(', ')}`;
      });
      gateUpLine += `\ngate-and-up weight (dWg = dGᵀ·X, dWu = dUᵀ·X, beta 0, K ${K}, N ${N}, 2 products, floor ${floor} ms; tma: two launches, tma_pair: one): ${weightPair.join('; ')}`;
      for (const t of [...gs2, ...gb2]) t.dispose();
      for (const t of [...ups, u, h]) t.dispose();
    }
    for (const t of [x, dy, y, dx, ...ws, ...gs, ...gb, ...xr, ...dyr, ...yr, ...dxr]) t.dispose();
  }
  offsets.dispose();
  const tflops = (r: GroupedGemmRow, ms: number) => ((2 * M * r.N * r.K) / (ms * 1e-3) / 1e12).toFixed(1);
  const header = ['product', 'K', 'N', 'floor ms', 'mma ms', 'mma TFLOP/s', 'wgmma ms', 'wgmma TFLOP/s', 'wgmma % of floor',
    'tma ms', 'tma TFLOP/s', 'tma % of floor', 'tma_pair ms', 'tma_pair TFLOP/s', 'tma_pair / tma', 'per-expert ms', 'per-expert TFLOP/s',
    'best speed-up'];
  const hopperCells = (r: GroupedGemmRow, ms: number | undefined) =>
    ms !== undefined ? [ms.toFixed(3), tflops(r, ms), `${((r.floorMs / ms) * 100).toFixed(0)}%`] : ['-', '-', '-'];
  const table = rows.map((r) => {
    const best = Math.min(r.grouped.mma, r.grouped.wgmma ?? Infinity, r.grouped.tma ?? Infinity, r.grouped.tma_pair ?? Infinity);
    const pair = r.grouped.tma_pair;
    return [
      r.product, String(r.K), String(r.N), r.floorMs.toFixed(3), r.grouped.mma.toFixed(3), tflops(r, r.grouped.mma),
      ...hopperCells(r, r.grouped.wgmma), ...hopperCells(r, r.grouped.tma), ...hopperCells(r, pair).slice(0, 2),
      pair !== undefined ? (pair / r.grouped.tma!).toFixed(2) : '-',
      r.perExpertMs.toFixed(3), tflops(r, r.perExpertMs), (r.perExpertMs / best).toFixed(2),
    ];
  });
  const widths = header.map((h, c) => Math.max(h.length, ...table.map((row) => row[c]!.length)));
  const fmt = (cells: string[]) => cells.map((cell, c) => (c === 0 ? cell.padEnd(widths[c]!) : cell.padStart(widths[c]!))).join('  ');
  log(fmt(header));
  for (const row of table) log(fmt(row));
  const sum = (f: (r: GroupedGemmRow) => number) => rows.reduce((a, r) => a + (r.product === LEAN_WEIGHT || r.product === FIRST_WEIGHT ? 0 : f(r)), 0);
  const pairSum = sum((r) => r.grouped.tma_pair ?? r.grouped.tma!);  // tma_pair runs tma's weight product
  const wgmmaSum = hopper ? `, wgmma ${sum((r) => r.grouped.wgmma!).toFixed(3)} ms, tma ${sum((r) => r.grouped.tma!).toFixed(3)} ms, tma_pair ${pairSum.toFixed(3)} ms` : '';
  if (hopper) {
    log(swigluLine);
    log(gateUpLine);
    const clusters = [...be.groupedGemmPairClusters].map(([k, c]) => `${k} ${c.launched} of ${c.resident}`).join(', ');
    log(`tma_pair: 2-CTA clusters launched of those resident at once (cuOccupancyMaxActiveClusters) on ${ctx.smCount} SMs: ${clusters}`);
  }
  log(`all six products: mma ${sum((r) => r.grouped.mma).toFixed(3)} ms${wgmmaSum}, per-expert ${sum((r) => r.perExpertMs).toFixed(3)} ms, floor ${sum((r) => r.floorMs).toFixed(3)} ms`);
  return rows;
}

if (process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href) runGroupedGemmBench();
