// GEMM benchmark: bf16 × bf16 → bf16 through cuBLASLt (f32 accumulation) at 8192³ and at the
// linear layers of DeepSeek-V2-Lite for 8192 tokens, timed with CUDA events (warm-up, then the
// median of many repetitions). Beside each shape: the floor FLOPs / 790 TFLOP/s (the measured
// bf16 ceiling of an H100 SXM) and, when python3 has torch, PyTorch's torch.matmul on the same
// card with the same timing (bench/gemm_peer.py).
//
//   node dist/bench/gemm.js          (or: moetrain bench gemm)
//
// Acceptance for the project: our 8192³ ≥ 95% of PyTorch's in the same run.
//
// Measured 2026-11-25, NVIDIA H100 80GB HBM3 (driver 580, cuBLASLt 13.1, PyTorch 2.11), one run:
//   shape                    ours TFLOP/s  torch TFLOP/s  ours/torch  % of 790 floor
//   square 8192^3                   725.1          732.6       0.990   92%
//   q_proj 2048->3072               739.1          670.9       1.102   94%
//   kv_a 2048->576                  616.3          404.4       1.524   78%
//   kv_b 512->4096                  559.7          556.8       1.005   71%
//   o_proj 2048->2048               728.9          715.1       1.019   92%
//   lm_head 2048->102400            687.2          694.3       0.990   87%
//   expert 2048->1408               662.1          656.5       1.009   84%
//   expert down 1408->2048          635.0          626.8       1.013   80%
// Same buffers every repetition (operands up to 420 MB, so L2 reuse across calls is small).
import { spawnSync } from 'node:child_process';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { CachingAllocator, type GpuBlock } from '../src/backend/cuda/runtime/allocator.js';
import { CublasLt } from '../src/backend/cuda/ffi/cublaslt.js';
import { CudaContext } from '../src/backend/cuda/runtime/context.js';
import { cudaAvailable } from '../src/backend/cuda/ffi/library.js';
import { packageRoot } from '../src/package_root.js';
import { f32ArrayToBf16 } from '../src/tensor/dtype.js';

/** The bf16 dense ceiling used for floors (TFLOP/s measured for a large GEMM on an H100). */
const CEILING_FLOPS = 790e12;

/** out[m,n] = x[m,k] · W[n,k]ᵀ (nn.Linear's layout) unless transB is false (plain [k,n]). */
export interface GemmShape {
  name: string;
  m: number;
  n: number;
  k: number;
  transB: boolean;
}

const TOKENS = 8192;

export const GEMM_SHAPES: readonly GemmShape[] = [
  { name: 'square 8192^3', m: 8192, n: 8192, k: 8192, transB: false },
  { name: 'q_proj 2048->3072', m: TOKENS, n: 3072, k: 2048, transB: true },
  { name: 'kv_a 2048->576', m: TOKENS, n: 576, k: 2048, transB: true },
  { name: 'kv_b 512->4096', m: TOKENS, n: 4096, k: 512, transB: true },
  { name: 'o_proj 2048->2048', m: TOKENS, n: 2048, k: 2048, transB: true },
  { name: 'lm_head 2048->102400', m: TOKENS, n: 102400, k: 2048, transB: true },
  { name: 'expert 2048->1408', m: TOKENS, n: 1408, k: 2048, transB: true },
  { name: 'expert down 1408->2048', m: TOKENS, n: 2048, k: 1408, transB: true },
];

export interface GemmTiming {
  /** Median milliseconds per GEMM. */
  ms: number;
  tflops: number;
}

export interface GemmBenchRow extends GemmShape {
  floorMs: number;
  ours: GemmTiming;
  peer?: GemmTiming;
}

/** Repetitions so that one shape takes ~150 ms of device time at the floor (10 to 200). */
export function repetitionsFor(s: GemmShape): number {
  const floorMs = (2 * s.m * s.n * s.k) / CEILING_FLOPS * 1e3;
  return Math.max(10, Math.min(200, Math.ceil(150 / floorMs)));
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const h = s.length >> 1;
  return s.length % 2 ? s[h]! : (s[h - 1]! + s[h]!) / 2;
}

/** Fills `elements` bf16 values with uniform(-1,1) noise by repeating one uploaded random chunk. */
function fillRandomBf16(ctx: CudaContext, block: GpuBlock, elements: number, chunk: Uint16Array): void {
  for (let at = 0; at < elements; at += chunk.length) {
    const n = Math.min(chunk.length, elements - at);
    ctx.upload(block.ptr + BigInt(at * 2), chunk, n * 2);
  }
}

function randomBf16Chunk(n: number): Uint16Array {
  const f = new Float32Array(n);
  let s = 0x9e3779b9;
  for (let i = 0; i < n; i++) {
    s ^= s << 13; s >>>= 0; s ^= s >>> 17; s ^= s << 5; s >>>= 0;
    f[i] = (s / 2 ** 32) * 2 - 1;
  }
  return f32ArrayToBf16(f);
}

function timeOurs(ctx: CudaContext, alloc: CachingAllocator, lt: CublasLt, s: GemmShape, chunk: Uint16Array): GemmTiming {
  const a = alloc.alloc(s.m * s.k * 2);
  const b = alloc.alloc(s.k * s.n * 2);
  const out = alloc.alloc(s.m * s.n * 2);
  try {
    fillRandomBf16(ctx, a, s.m * s.k, chunk);
    fillRandomBf16(ctx, b, s.k * s.n, chunk.subarray(12345));
    const opts = { m: s.m, n: s.n, k: s.k, transB: s.transB, dtypeIn: 'bf16', dtypeOut: 'bf16' } as const;
    const reps = repetitionsFor(s);
    for (let i = 0; i < Math.max(5, reps >> 2); i++) lt.gemm(out.ptr, a.ptr, b.ptr, opts);
    const starts = Array.from({ length: reps }, () => ctx.createEvent());
    const ends = Array.from({ length: reps }, () => ctx.createEvent());
    for (let i = 0; i < reps; i++) {
      starts[i]!.record();
      lt.gemm(out.ptr, a.ptr, b.ptr, opts);
      ends[i]!.record();
    }
    const ms = median(ends.map((e, i) => e.elapsedSince(starts[i]!)));
    for (const e of [...starts, ...ends]) e.destroy();
    return { ms, tflops: (2 * s.m * s.n * s.k) / (ms * 1e-3) / 1e12 };
  } finally {
    alloc.free(a);
    alloc.free(b);
    alloc.free(out);
  }
}

/** PyTorch's timings for the same shapes, or a reason why there are none. */
function timePeer(shapes: readonly GemmShape[]): GemmTiming[] | string {
  const probe = spawnSync('python3', ['-c', 'import torch; assert torch.cuda.is_available()'], { encoding: 'utf8' });
  if (probe.status !== 0) return 'python3 with a CUDA build of torch not found';
  const script = join(packageRoot(), 'bench', 'gemm_peer.py');
  const spec = shapes.map((s) => ({ ...s, reps: repetitionsFor(s) }));
  const run = spawnSync('python3', [script, JSON.stringify(spec)], { encoding: 'utf8', maxBuffer: 1 << 24 });
  if (run.status !== 0) return `gemm_peer.py failed: ${run.stderr.trim().split('\n').slice(-3).join(' | ')}`;
  const lines = run.stdout.trim().split('\n');
  return JSON.parse(lines[lines.length - 1]!) as GemmTiming[];
}

export interface GemmBenchOptions {
  /** Run bench/gemm_peer.py for PyTorch's numbers (default true). */
  peer?: boolean;
  /** Only shapes whose name contains this text. */
  filter?: string;
  log?: (line: string) => void;
}

/** Runs the benchmark on this process's GPU and prints a table; returns the rows. */
export function runGemmBench(opts: GemmBenchOptions = {}): GemmBenchRow[] {
  const log = opts.log ?? ((l: string) => console.log(l));
  if (!cudaAvailable()) throw new Error('bench gemm needs a CUDA GPU: libcuda did not load or no device is visible');
  const ctx = new CudaContext();
  const alloc = new CachingAllocator(ctx);
  const lt = new CublasLt(ctx, alloc);
  const shapes = GEMM_SHAPES.filter((s) => !opts.filter || s.name.includes(opts.filter));
  log(`gemm bench on ${ctx.description}; bf16 x bf16 -> bf16, f32 accumulation, cuBLASLt ${lt.version()}; median of CUDA-event timings`);
  const chunk = randomBf16Chunk(1 << 22);
  const rows: GemmBenchRow[] = shapes.map((s) => {
    const floorMs = (2 * s.m * s.n * s.k) / CEILING_FLOPS * 1e3;
    return { ...s, floorMs, ours: timeOurs(ctx, alloc, lt, s, chunk) };
  });
  alloc.releaseCached();
  const peer = opts.peer === false ? 'not requested' : timePeer(shapes);
  if (typeof peer === 'string') log(`PyTorch peer: ${peer}`);
  else rows.forEach((r, i) => (r.peer = peer[i]));

  const header = ['shape', 'M', 'N', 'K', 'floor ms', 'ours ms', 'ours TFLOP/s', '% of floor', 'torch ms', 'torch TFLOP/s', 'ours/torch'];
  const table = rows.map((r) => [
    r.name, String(r.m), String(r.n), String(r.k), r.floorMs.toFixed(3), r.ours.ms.toFixed(3), r.ours.tflops.toFixed(1),
    `${((r.floorMs / r.ours.ms) * 100).toFixed(0)}%`,
    r.peer ? r.peer.ms.toFixed(3) : '-', r.peer ? r.peer.tflops.toFixed(1) : '-',
    r.peer ? (r.ours.tflops / r.peer.tflops).toFixed(3) : '-',
  ]);
  const widths = header.map((h, c) => Math.max(h.length, ...table.map((row) => row[c]!.length)));
  const fmt = (cells: string[]): string => cells.map((cell, c) => (c === 0 ? cell.padEnd(widths[c]!) : cell.padStart(widths[c]!))).join('  ');
  log(fmt(header));
  for (const row of table) log(fmt(row));
  const square = rows.find((r) => r.name.startsWith('square'));
  if (square?.peer) {
    const ratio = square.ours.tflops / square.peer.tflops;
    log(`acceptance (8192^3 >= 95% of PyTorch): ${(ratio * 100).toFixed(1)}% -> ${ratio >= 0.95 ? 'PASS' : 'FAIL'}`);
  }
  return rows;
}

if (process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href) {
  runGemmBench({ filter: process.argv[2] });
}
