// MLA attention benchmark: our CUDA kernels (src/backend/cuda/ops/mla_attention.ts, the set
// "auto" picks on this GPU) at b=1, h=16,
// dq=192 (128+64), dv=128, causal, bf16, s = 2048..32768, next to cuDNN through PyTorch
// (bench/attention_peer.py, when python3 with a CUDA torch is present) and the targets of
// TARGETS.md. Times are the median of CUDA-event timings after a warm-up, with inputs rotated
// among enough sets that L2 never serves a repeat. The whole measurement (ours at every s, then
// cuDNN at every s) runs `rounds` times (default 3) and each cell is the median over the rounds:
// on an H100 either side's time at s ≥ 16384 moved by up to ±5% from one minute to the next,
// more than the differences the table is read for; the per-round backward ratios are printed.
//
//   node dist/bench/attention.js          (or: moetrain bench attention)
//
// FLOPs (FlashAttention convention): forward = b·h·s²·(dq+dv) for causal, backward = 2.5×.
// Floor: forward FLOPs / 790 TFLOP/s (the measured bf16 GEMM ceiling of an H100 SXM).
// Measured tables, with the card and date of each: bench/attention_notes.md and TARGETS.md.
import { spawnSync } from 'node:child_process';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { CudaBackend } from '../src/backend/cuda/cuda_backend.js';
import { cudaAvailable } from '../src/backend/cuda/ffi/library.js';
import { MlaAttentionLauncher, type MlaGrads, type MlaTensorCoreKernels } from '../src/backend/cuda/ops/mla_attention.js';
import { chooseMlaKernels } from '../src/backend/cuda/ops/mla_kernel_choice.js';
import { CudaContext } from '../src/backend/cuda/runtime/context.js';
import { devicePtr } from '../src/backend/cuda/runtime/device_buffer.js';
import { packageRoot } from '../src/package_root.js';
import { bf16ArrayToF32, f32ArrayToBf16 } from '../src/tensor/dtype.js';
import { emptyTensor, type Shape, type Tensor } from '../src/tensor/tensor.js';

const D_NOPE = 128, D_ROPE = 64, D_V = 128;
const CEILING_FLOPS = 790e12;
const L2_BYTES = 50 * 2 ** 20;

/** TARGETS.md, "MLA attention, one H100": TFLOP/s at least, per s. */
const TARGET_TFLOPS: Record<number, { fwd: number; bwd: number }> = {
  2048: { fwd: 430, bwd: 280 }, 4096: { fwd: 580, bwd: 390 }, 8192: { fwd: 620, bwd: 450 },
  16384: { fwd: 645, bwd: 500 }, 32768: { fwd: 645, bwd: 520 },
};

export function attentionFlops(b: number, h: number, s: number, backward = false): number {
  const f = b * h * s * s * (D_NOPE + D_ROPE + D_V);
  return backward ? 2.5 * f : f;
}

export interface AttentionTiming { ms: number; tflops: number }

export interface AttentionBenchRow {
  s: number;
  fwd: AttentionTiming;
  bwd: AttentionTiming;
  bwdDeterministic: AttentionTiming;
  /** Worst relative difference of o and the gradients from the mma.sync kernels'. */
  agreement: number;
  peerFwd?: AttentionTiming;
  peerBwd?: AttentionTiming;
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const h = s.length >> 1;
  return s.length % 2 ? s[h]! : (s[h - 1]! + s[h]!) / 2;
}

function randomBf16Chunk(n: number, seed: number): Uint16Array {
  const f = new Float32Array(n);
  let s = seed >>> 0 || 1;
  for (let i = 0; i < n; i++) {
    s ^= s << 13; s >>>= 0; s ^= s >>> 17; s ^= s << 5; s >>>= 0;
    f[i] = ((s / 2 ** 32) * 2 - 1) * 1.7; // uniform with unit variance
  }
  return f32ArrayToBf16(f);
}

/** Fills a bf16 tensor with noise by uploading slices of one random chunk (never zeros). */
function fillRandom(ctx: CudaContext, t: Tensor, chunk: Uint16Array, start: number): void {
  const base = devicePtr(t);
  for (let at = 0; at < t.size;) {
    const from = (start + at) % (chunk.length - 1);
    const n = Math.min(chunk.length - from, t.size - at);
    ctx.upload(base + BigInt(at * 2), chunk.subarray(from, from + n), n * 2);
    at += n;
  }
}

interface InputSet {
  qNope: Tensor; qPe: Tensor; kNope: Tensor; kPe: Tensor; v: Tensor; dout: Tensor; o: Tensor; lse: Tensor; grads: MlaGrads;
}

/** Median milliseconds of `call(i)` over `reps` repetitions (i rotates the input set). */
function timeMs(ctx: CudaContext, reps: number, call: (i: number) => void): number {
  for (let i = 0; i < 3; i++) call(i);
  const starts = Array.from({ length: reps }, () => ctx.createEvent());
  const ends = Array.from({ length: reps }, () => ctx.createEvent());
  for (let i = 0; i < reps; i++) {
    starts[i]!.record();
    call(i);
    ends[i]!.record();
  }
  const ms = median(ends.map((e, i) => e.elapsedSince(starts[i]!)));
  for (const e of [...starts, ...ends]) e.destroy();
  return ms;
}

/** The backend, its tensor-core MLA launcher and the kernel set timed. */
interface Ours { be: CudaBackend; attention: MlaAttentionLauncher; kernels: MlaTensorCoreKernels }

/** Our timings at one s; `agreement` (NaN unless withAgreement) compares with the mma.sync kernels. */
function timeOurs({ be, attention, kernels }: Ours, b: number, h: number, s: number, chunk: Uint16Array,
  withAgreement: boolean): Omit<AttentionBenchRow, 's'> {
  const ctx = be.ctx;
  const setBytes = b * s * h * (2 * D_NOPE + D_ROPE + 2 * D_V) * 2;
  const nSets = Math.max(2, Math.min(8, Math.ceil((3 * L2_BYTES) / setBytes)));
  const owned: Tensor[] = [];
  const make = (shape: Shape, dtype: 'bf16' | 'f32' = 'bf16'): Tensor => { const t = emptyTensor(be, shape, dtype); owned.push(t); return t; };
  const opts = { causal: true, scale: 1 / Math.sqrt(D_NOPE + D_ROPE) };
  try {
    const sets: InputSet[] = [];
    let seedOffset = 0;
    for (let i = 0; i < nSets; i++) {
      const set: InputSet = {
        qNope: make([b, s, h, D_NOPE]), qPe: make([b, s, h, D_ROPE]), kNope: make([b, s, h, D_NOPE]), kPe: make([b, s, 1, D_ROPE]),
        v: make([b, s, h, D_V]), dout: make([b, s, h, D_V]), o: make([b, s, h, D_V]), lse: make([b, h, s], 'f32'),
        grads: {
          dqNope: make([b, s, h, D_NOPE]), dqPe: make([b, s, h, D_ROPE]), dkNope: make([b, s, h, D_NOPE]),
          dkPe: make([b, s, 1, D_ROPE]), dv: make([b, s, h, D_V]),
        },
      };
      for (const t of [set.qNope, set.qPe, set.kNope, set.kPe, set.v, set.dout]) fillRandom(ctx, t, chunk, (seedOffset += 7919));
      attention.forward(kernels, set.o, set.lse, set.qNope, set.qPe, set.kNope, set.kPe, set.v, opts);
      sets.push(set);
    }
    const reps = s <= 8192 ? 30 : 10;
    const fwdMs = timeMs(ctx, reps, (i) => {
      const x = sets[i % nSets]!;
      attention.forward(kernels, x.o, x.lse, x.qNope, x.qPe, x.kNope, x.kPe, x.v, opts);
    });
    const bwd = (deterministic: boolean) => timeMs(ctx, reps, (i) => {
      const x = sets[i % nSets]!;
      attention.backward(kernels, x.grads, x.dout, x.qNope, x.qPe, x.kNope, x.kPe, x.v, x.o, x.lse, { ...opts, deterministic });
    });
    const bwdMs = bwd(false);
    const detMs = bwd(true);
    const f = attentionFlops(b, h, s), fb = attentionFlops(b, h, s, true);
    return {
      agreement: withAgreement ? agreement({ be, attention, kernels }, sets[0]!, opts) : NaN,
      fwd: { ms: fwdMs, tflops: f / fwdMs / 1e9 },
      bwd: { ms: bwdMs, tflops: fb / bwdMs / 1e9 },
      bwdDeterministic: { ms: detMs, tflops: fb / detMs / 1e9 },
    };
  } finally {
    for (const t of owned) t.dispose();
  }
}

/**
 * Worst ‖x − y‖/‖y‖ over o and the five gradients between the timed kernels and the mma.sync
 * ones on one input set: on Hopper this checks the wgmma kernels at benchmark sizes.
 */
function agreement({ be, attention, kernels }: Ours, x: InputSet, opts: { causal: boolean; scale: number }): number {
  const outputs = (set: MlaTensorCoreKernels): Float32Array[] => {
    attention.forward(set, x.o, x.lse, x.qNope, x.qPe, x.kNope, x.kPe, x.v, opts);
    attention.backward(set, x.grads, x.dout, x.qNope, x.qPe, x.kNope, x.kPe, x.v, x.o, x.lse, opts);
    const g = x.grads;
    return [x.o, g.dqNope, g.dqPe, g.dkNope, g.dkPe, g.dv].map((t) => bf16ArrayToF32(be.read(t) as Uint16Array));
  };
  const simple = outputs('mma'), ours = outputs(kernels);
  let worst = 0;
  ours.forEach((a, i) => {
    const ref = simple[i]!;
    let num = 0, den = 0;
    for (let j = 0; j < a.length; j++) { const d = a[j]! - ref[j]!; num += d * d; den += ref[j]! * ref[j]!; }
    const e = Math.sqrt(num / den);
    worst = Math.max(worst, Number.isNaN(e) ? Infinity : e);
  });
  return worst;
}

export interface PeerRow { s: number; fwd_ms: number; bwd_ms: number; fwd_tflops: number; bwd_tflops: number }

/** cuDNN's timings per s from bench/attention_peer.py, or the reason there are none. */
function timePeer(b: number, h: number, seqs: readonly number[]): Map<number, PeerRow> | string {
  const probe = spawnSync('python3', ['-c', 'import torch; assert torch.cuda.is_available()'], { encoding: 'utf8' });
  if (probe.status !== 0) return 'python3 with a CUDA build of torch not found';
  const script = join(packageRoot(), 'bench', 'attention_peer.py');
  const run = spawnSync('python3', [script, '--seqs', seqs.join(','), '--heads', String(h), '--batch', String(b)],
    { encoding: 'utf8', maxBuffer: 1 << 24 });
  if (run.status !== 0) return `attention_peer.py failed: ${run.stderr.trim().split('\n').slice(-3).join(' | ')}`;
  const rows = new Map<number, PeerRow>();
  for (const line of run.stdout.trim().split('\n')) {
    if (!line.startsWith('{')) continue;
    const r = JSON.parse(line) as PeerRow;
    rows.set(r.s, r);
  }
  return rows;
}

/**
 * Rows from `rounds` of measurements (ours[round][i], peers[round]: s = seqs[i]): each time the
 * median over the rounds; cuDNN's cells only where every round has them. Also one line per s
 * with the per-round cuDNN/ours time ratios (above 1: ours faster).
 */
export function combineRounds(b: number, h: number, seqs: readonly number[], ours: Omit<AttentionBenchRow, 's'>[][],
  peers: ReadonlyMap<number, PeerRow>[]): { rows: AttentionBenchRow[]; ratios: string[] } {
  const timing = (ms: number[], flops: number): AttentionTiming => {
    const m = median(ms);
    return { ms: m, tflops: flops / m / 1e9 };
  };
  const ratios: string[] = [];
  const rows = seqs.map((s, i) => {
    const f = attentionFlops(b, h, s), fb = attentionFlops(b, h, s, true);
    const row: AttentionBenchRow = {
      s, agreement: ours[0]![i]!.agreement,
      fwd: timing(ours.map((r) => r[i]!.fwd.ms), f),
      bwd: timing(ours.map((r) => r[i]!.bwd.ms), fb),
      bwdDeterministic: timing(ours.map((r) => r[i]!.bwdDeterministic.ms), fb),
    };
    const p = peers.map((m) => m.get(s));
    if (p.length > 0 && p.every((x) => x !== undefined)) {
      const q = p as PeerRow[];
      row.peerFwd = timing(q.map((x) => x.fwd_ms), f);
      row.peerBwd = timing(q.map((x) => x.bwd_ms), fb);
      const by = (pick: (x: PeerRow) => number, mine: (k: number) => number) =>
        q.map((x, k) => `${(pick(x) / mine(k)).toFixed(2)}x`).join(' ');
      ratios.push(`s=${s}: cuDNN/ours by round: bwd ${by((x) => x.bwd_ms, (k) => ours[k]![i]!.bwd.ms)}, ` +
        `fwd ${by((x) => x.fwd_ms, (k) => ours[k]![i]!.fwd.ms)}`);
    }
    return row;
  });
  return { rows, ratios };
}

export interface AttentionBenchOptions {
  /** Sequence lengths (default 2048..32768). */
  seqs?: readonly number[];
  /** Run bench/attention_peer.py for cuDNN's numbers (default true). */
  peer?: boolean;
  /** Times the whole measurement is repeated; cells are medians over the rounds (default 3). */
  rounds?: number;
  log?: (line: string) => void;
}

/** Runs the benchmark on this process's GPU and prints the TARGETS.md table; returns the rows. */
export async function runAttentionBench(opts: AttentionBenchOptions = {}): Promise<AttentionBenchRow[]> {
  const log = opts.log ?? ((l: string) => console.log(l));
  if (!cudaAvailable()) throw new Error('bench attention needs a CUDA GPU: libcuda did not load or no device is visible');
  const b = 1, h = 16;
  const seqs = opts.seqs ?? [2048, 4096, 8192, 16384, 32768];
  const be = new CudaBackend(new CudaContext());
  const kernels = chooseMlaKernels({ arch: be.ctx.arch, computeCapability: be.ctx.computeCapability, dtype: 'bf16',
    dNope: D_NOPE, dRope: D_ROPE, dV: D_V, request: 'auto' });
  if (kernels === 'generic') throw new Error(`bench attention times the tensor-core MLA kernels; ${be.ctx.name} has none (compute capability 8.0 or later)`);
  const ours: Ours = { be, attention: new MlaAttentionLauncher(be.ctx, be.allocator), kernels };
  const rounds = opts.rounds ?? 3;
  if (!Number.isInteger(rounds) || rounds < 1) throw new Error(`bench attention: rounds must be a positive integer, got ${rounds}`);
  log(`attention bench on ${be.ctx.description}: MLA b=${b} h=${h} dq=192 dv=128 causal bf16, ${kernels} kernels; ` +
    `median of CUDA-event timings, median of ${rounds} rounds`);
  const chunk = randomBf16Chunk(1 << 22, 0x9e3779b9);
  // timed[round][i], peers[round]: s = seqs[i]. The agreement check runs in the first round only.
  const timed: Omit<AttentionBenchRow, 's'>[][] = [];
  const peers: Map<number, PeerRow>[] = [];
  let peerMissing: string | undefined;
  for (let round = 0; round < rounds; round++) {
    timed.push(seqs.map((s) => timeOurs(ours, b, h, s, chunk, round === 0)));
    be.allocator.releaseCached();
    if (opts.peer === false) peerMissing = 'not requested';
    if (peerMissing) continue;
    const peer = timePeer(b, h, seqs);
    if (typeof peer === 'string') peerMissing = peer;
    else peers.push(peer);
  }
  if (peerMissing) log(`cuDNN peer: ${peerMissing}`);
  const { rows, ratios } = combineRounds(b, h, seqs, timed, peerMissing ? [] : peers);
  for (const line of ratios) log(line);
  const cell = (t?: AttentionTiming): string => (t ? `${t.ms.toFixed(3)} / ${t.tflops.toFixed(0)}` : '-');
  const header = ['s', 'floor fwd ms', 'ours fwd ms / TFLOPS', 'cuDNN fwd', 'ours bwd ms / TFLOPS', 'det bwd ms', 'cuDNN bwd',
    'target fwd', 'target bwd', 'fwd vs cuDNN', 'bwd vs cuDNN', 'rel diff vs mma.sync'];
  const table = rows.map((r) => [
    String(r.s), (attentionFlops(b, h, r.s) / CEILING_FLOPS * 1e3).toFixed(3), cell(r.fwd), cell(r.peerFwd), cell(r.bwd),
    r.bwdDeterministic.ms.toFixed(3), cell(r.peerBwd),
    TARGET_TFLOPS[r.s] ? `>= ${TARGET_TFLOPS[r.s]!.fwd}` : '-', TARGET_TFLOPS[r.s] ? `>= ${TARGET_TFLOPS[r.s]!.bwd}` : '-',
    r.peerFwd ? `${(r.fwd.tflops / r.peerFwd.tflops).toFixed(2)}x` : '-',
    r.peerBwd ? `${(r.bwd.tflops / r.peerBwd.tflops).toFixed(2)}x` : '-',
    r.agreement.toExponential(1),
  ]);
  log(`| ${header.join(' | ')} |`);
  log(`|${header.map(() => '---').join('|')}|`);
  for (const row of table) log(`| ${row.join(' | ')} |`);
  return rows;
}

if (process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href) {
  const seqs = process.argv[2]?.split(',').map(Number);
  await runAttentionBench(seqs ? { seqs } : {});
}
